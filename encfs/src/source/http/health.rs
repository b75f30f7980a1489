//! Whether a source answers: the start of the current outage, if any, shared by every read of one source.
//!
//! Without it each read spends the whole retry budget on a source that is down, and the kernel, whose readahead
//! READ failed, asks again page by page: a reader waited twice the budget for its EIO, and a third time for the
//! next read. With it, reads that start during an outage give up when the outage is a budget old; after that one
//! read at a time makes a single attempt (the others fail at once), and a background probe notices within
//! half a second when the source answers again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The outage state of one source (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Health {
    failing_since: Mutex<Option<Instant>>,
    probing: AtomicBool,
    /// A read is making the one attempt allowed during a spent outage.
    read_probing: AtomicBool,
}

impl Health {
    /// The source answered (any HTTP response): the outage, if any, is over.
    pub(crate) fn answered(&self) {
        *self.failing_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// An attempt started at `at` got no usable answer (transport error, timeout, 5xx, short body).
    pub(crate) fn failed(&self, at: Instant) {
        let mut since = self.failing_since.lock().unwrap_or_else(|e| e.into_inner());
        if since.is_none_or(|s| at < s) {
            *since = Some(at);
        }
    }

    /// When the current outage started, if the source is failing.
    pub(crate) fn failing_since(&self) -> Option<Instant> {
        *self.failing_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if the caller should start the probe (none is running); it calls [`Self::probe_done`] when done.
    pub(crate) fn start_probe(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    /// The probe has ended.
    pub(crate) fn probe_done(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// True if the calling read may make one attempt during a spent outage (no other read is making one); it
    /// calls [`Self::read_probe_done`] after.
    pub(crate) fn start_read_probe(&self) -> bool {
        !self.read_probing.swap(true, Ordering::AcqRel)
    }

    /// The read's attempt has ended.
    pub(crate) fn read_probe_done(&self) {
        self.read_probing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_outage_starts_at_its_first_failure_and_ends_with_any_answer() {
        let h = Health::default();
        assert!(h.failing_since().is_none());
        let t0 = Instant::now();
        h.failed(t0 + Duration::from_secs(1));
        h.failed(t0);
        h.failed(t0 + Duration::from_secs(2));
        assert_eq!(h.failing_since(), Some(t0));
        h.answered();
        assert!(h.failing_since().is_none());
        assert!(h.start_probe() && !h.start_probe());
        h.probe_done();
        assert!(h.start_probe());
    }
}
