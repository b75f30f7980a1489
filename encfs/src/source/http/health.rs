//! Whether a source answers: the start of the current outage, if any, shared by every read of one source.
//!
//! Without it each read spends the whole retry budget on a source that is down, and the kernel, whose readahead
//! READ failed, asks again page by page: a reader waited twice the budget for its EIO, and a third time for the
//! next read. With it, reads that start during an outage give up when the outage is a budget old; after that a
//! read waits at most half a second for a probe (one 1-byte request, started at once and every half second) to
//! see the source answer, and goes on if it does, fails if not.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The outage state of one source (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Health {
    failing_since: Mutex<Option<Instant>>,
    probing: AtomicBool,
    /// Wakes the reads waiting for the outage to end.
    recovered: tokio::sync::Notify,
    /// When the last probe request went out.
    last_probe: Mutex<Option<Instant>>,
}

impl Health {
    /// The source answered (any HTTP response): the outage, if any, is over.
    pub(crate) fn answered(&self) {
        let was = self.failing_since.lock().unwrap_or_else(|e| e.into_inner()).take();
        if was.is_some() {
            self.recovered.notify_waiters();
        }
    }

    /// Resolves when an outage ends (enable it before looking at [`Self::failing_since`], so an end in between is
    /// not missed).
    pub(crate) fn recovered(&self) -> tokio::sync::futures::Notified<'_> {
        self.recovered.notified()
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

    /// True if a probe request may go out now: none went out in the last `gap` (the caller sends it).
    pub(crate) fn probe_due(&self, gap: std::time::Duration) -> bool {
        let mut last = self.last_probe.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.saturating_duration_since(t) < gap) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// The probe has ended.
    pub(crate) fn probe_done(&self) {
        self.probing.store(false, Ordering::Release);
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
