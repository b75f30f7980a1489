//! A failure-injecting wrapper around any source, for tests of the layers above it (the cache, the filesystem)
//! without FUSE, servers or root (feature `testing`, and this crate's own tests).
//!
//! A [`FaultySource`] passes every request to the source it wraps, except where a [`Rule`] matches: each rule
//! names the requests it applies to (stats or reads, reads overlapping a blob range, the n-th match on, a number of
//! times) and a [`Fault`]: an error, a delay, a short or corrupted answer, a new ETag, a panic. Every matching rule
//! applies, in the order added, so a delay can come before a corruption. Every request is logged
//! ([`FaultySource::log`]) with the faults it got, so a test can assert what went to the source and when.
//!
//! A short answer breaks the [`BlobSource`] contract on purpose: it stands for a buggy or hostile backend, which
//! the layers above must turn into an error, never into wrong or missing bytes.

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::{BlobError, BlobKey, BlobMeta, BlobSource, ETag};

/// What a matching request gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fails with [`BlobError::Backend`] ([`FaultError::Injected`]): a transient backend failure.
    Fail,
    /// Fails with [`BlobError::NotFound`].
    NotFound,
    /// Fails with [`BlobError::PreconditionFailed`] (whatever the ETag).
    PreconditionFailed,
    /// Answers with only the first `keep` bytes of the range (a broken backend).
    Short {
        /// Bytes kept.
        keep: u64,
    },
    /// Flips every bit of the byte at blob offset `at` when the range holds it (damage in transit or at rest).
    Corrupt {
        /// Blob offset of the damaged byte.
        at: u64,
    },
    /// Waits this long (on the tokio timer) before the request goes on.
    Delay(Duration),
    /// The blob gets a new version from this request on: `stat` reports another ETag and reads pinned to an
    /// earlier one fail with [`BlobError::PreconditionFailed`] (its bytes stay the same).
    ChangeEtag,
    /// `stat` reports no ETag (a backend without versions).
    DropEtag,
    /// Panics inside the request's future.
    Panic,
}

/// Which requests a [`Rule`] is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `stat`.
    Stat,
    /// `read_range` (and `read_range_into`).
    Read,
}

/// A fault and the requests it applies to.
#[derive(Clone, Debug)]
pub struct Rule {
    op: Op,
    overlapping: Option<Range<u64>>,
    skip: u64,
    times: Option<u64>,
    fault: Fault,
}

impl Rule {
    /// `fault` for every read (narrow it with the other methods).
    pub fn read(fault: Fault) -> Self {
        Self {
            op: Op::Read,
            overlapping: None,
            skip: 0,
            times: None,
            fault,
        }
    }

    /// `fault` for every `stat`.
    pub fn stat(fault: Fault) -> Self {
        Self {
            op: Op::Stat,
            ..Self::read(fault)
        }
    }

    /// Only reads whose range overlaps `range` (blob offsets).
    pub fn overlapping(mut self, range: Range<u64>) -> Self {
        self.overlapping = Some(range);
        self
    }

    /// Not the first `n` requests that match otherwise: `after(2).times(1)` is the third one only.
    pub fn after(mut self, n: u64) -> Self {
        self.skip = n;
        self
    }

    /// At most `n` requests (default: every one).
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }
}

/// One request as the wrapper saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Stat or read.
    pub op: Op,
    /// The range read (`0..0` for a stat).
    pub range: Range<u64>,
    /// The ETag the read was pinned to.
    pub if_match: Option<ETag>,
    /// The faults it got, in order.
    pub faults: Vec<Fault>,
}

/// Errors of a [`FaultySource`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FaultError<E: std::error::Error + 'static> {
    /// A [`Fault::Fail`].
    #[error("injected failure of request {request}")]
    Injected {
        /// The request's number (from 0, in the order requests arrived).
        request: u64,
    },
    /// The wrapped source failed.
    #[error(transparent)]
    Inner(E),
}

/// A source that injects [`Fault`]s into the requests to `B`; see the module docs.
#[derive(Debug)]
pub struct FaultySource<B> {
    inner: B,
    rules: Mutex<Vec<(Rule, u64)>>,
    log: Mutex<Vec<Request>>,
    /// Versions the blob moved on by ([`Fault::ChangeEtag`]); 0: the wrapped source's own ETag.
    version: AtomicU64,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl<B: BlobSource> FaultySource<B> {
    /// Wraps `inner`, with no rules yet (every request passes).
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            rules: Mutex::default(),
            log: Mutex::default(),
            version: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        }
    }

    /// The wrapped source.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Adds a rule, applied after those added before.
    pub fn add(&self, rule: Rule) -> &Self {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).push((rule, 0));
        self
    }

    /// Removes every rule (the log stays).
    pub fn clear_rules(&self) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Every request so far, in arrival order.
    pub fn log(&self) -> Vec<Request> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The ranges read so far, in arrival order.
    pub fn reads(&self) -> Vec<Range<u64>> {
        self.log()
            .into_iter()
            .filter(|r| r.op == Op::Read)
            .map(|r| r.range)
            .collect()
    }

    /// Forgets the log.
    pub fn clear_log(&self) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The most requests that were in flight at once.
    pub fn most_in_flight(&self) -> usize {
        self.most_in_flight.load(Ordering::Relaxed)
    }

    /// Logs a request and returns its number and the faults of the rules it matches (using them up).
    fn arrive(&self, op: Op, range: &Range<u64>, if_match: Option<&ETag>) -> (u64, Vec<Fault>) {
        let mut faults = Vec::new();
        for (rule, seen) in self.rules.lock().unwrap_or_else(|e| e.into_inner()).iter_mut() {
            let overlaps = rule
                .overlapping
                .as_ref()
                .is_none_or(|o| op == Op::Read && o.start < range.end && range.start < o.end);
            if rule.op != op || !overlaps {
                continue;
            }
            *seen += 1;
            let n = *seen - 1;
            if n >= rule.skip && rule.times.is_none_or(|t| n - rule.skip < t) {
                faults.push(rule.fault.clone());
            }
        }
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.push(Request {
            op,
            range: range.clone(),
            if_match: if_match.cloned(),
            faults: faults.clone(),
        });
        (log.len() as u64 - 1, faults)
    }

    /// The ETag this wrapper reports for `inner`'s tag, at the current version.
    fn tag(&self, inner: Option<ETag>) -> Option<ETag> {
        let v = self.version.load(Ordering::Relaxed);
        inner.map(|t| {
            if v == 0 {
                t
            } else {
                ETag::new(format!("{}~{v}", t.as_str()))
            }
        })
    }

    /// Applies the faults that come before the inner call; `Err` ends the request.
    async fn before(&self, request: u64, faults: &[Fault]) -> Result<(), BlobError<FaultError<B::Error>>> {
        for f in faults {
            match f {
                Fault::Delay(d) => tokio::time::sleep(*d).await,
                Fault::ChangeEtag => {
                    self.version.fetch_add(1, Ordering::Relaxed);
                }
                Fault::Fail => return Err(BlobError::Backend(FaultError::Injected { request })),
                Fault::NotFound => return Err(BlobError::NotFound),
                Fault::PreconditionFailed => return Err(BlobError::PreconditionFailed),
                Fault::Panic => panic!("injected panic in request {request}"),
                Fault::Short { .. } | Fault::Corrupt { .. } | Fault::DropEtag => {}
            }
        }
        Ok(())
    }
}

/// Counts a request in flight while alive.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize, most: &AtomicUsize) -> Self {
        let now = count.fetch_add(1, Ordering::Relaxed) + 1;
        most.fetch_max(now, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn inner_err<E: std::error::Error + 'static>(e: BlobError<E>) -> BlobError<FaultError<E>> {
    match e {
        BlobError::NotFound => BlobError::NotFound,
        BlobError::PreconditionFailed => BlobError::PreconditionFailed,
        BlobError::OutOfRange { start, end, len } => BlobError::OutOfRange { start, end, len },
        BlobError::Backend(e) => BlobError::Backend(FaultError::Inner(e)),
    }
}

impl<B: BlobSource> BlobSource for FaultySource<B> {
    type Error = FaultError<B::Error>;

    async fn stat(&self, key: &BlobKey) -> Result<BlobMeta, BlobError<Self::Error>> {
        let (n, faults) = self.arrive(Op::Stat, &(0..0), None);
        let _busy = InFlight::enter(&self.in_flight, &self.most_in_flight);
        self.before(n, &faults).await?;
        let mut meta = self.inner.stat(key).await.map_err(inner_err)?;
        meta.etag = self.tag(meta.etag);
        if faults.contains(&Fault::DropEtag) {
            meta.etag = None;
        }
        Ok(meta)
    }

    async fn read_range(
        &self,
        key: &BlobKey,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> Result<Bytes, BlobError<Self::Error>> {
        let (n, faults) = self.arrive(Op::Read, &range, if_match);
        let _busy = InFlight::enter(&self.in_flight, &self.most_in_flight);
        self.before(n, &faults).await?;
        // A read pinned to a version this wrapper has moved past fails; one pinned to the current version goes to
        // the wrapped source pinned to its own tag.
        let inner_tag = match if_match {
            Some(t) if self.version.load(Ordering::Relaxed) > 0 => {
                let meta = self.inner.stat(key).await.map_err(inner_err)?;
                if self.tag(meta.etag.clone()).as_ref() != Some(t) {
                    return Err(BlobError::PreconditionFailed);
                }
                meta.etag
            }
            other => other.cloned(),
        };
        let mut bytes = self
            .inner
            .read_range(key, range.clone(), inner_tag.as_ref())
            .await
            .map_err(inner_err)?;
        for f in &faults {
            match *f {
                // (After a `Short` fault the byte may be gone.)
                Fault::Corrupt { at } if range.contains(&at) && ((at - range.start) as usize) < bytes.len() => {
                    let mut v = bytes.to_vec();
                    v[(at - range.start) as usize] ^= 0xff;
                    bytes = Bytes::from(v);
                }
                Fault::Short { keep } => bytes.truncate(usize::try_from(keep).unwrap_or(usize::MAX)),
                _ => {}
            }
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemSource;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn source() -> (FaultySource<MemSource>, BlobKey) {
        let mem = MemSource::new();
        let key = BlobKey::new("b");
        mem.put(key.clone(), (0..100u8).collect::<Vec<_>>());
        (FaultySource::new(mem), key)
    }

    #[test]
    fn rules_apply_to_the_requests_they_name_and_are_logged() {
        let (s, key) = source();
        s.add(Rule::read(Fault::Fail).overlapping(50..60).after(1).times(1));
        s.add(Rule::read(Fault::Corrupt { at: 10 }));
        s.add(Rule::read(Fault::Short { keep: 3 }).overlapping(90..91));
        block_on(async {
            assert!(
                s.read_range(&key, 40..55, None).await.is_ok(),
                "the first match is skipped"
            );
            let e = s.read_range(&key, 55..70, None).await.unwrap_err();
            assert!(
                matches!(e, BlobError::Backend(FaultError::Injected { request: 1 })),
                "{e:?}"
            );
            assert_eq!(
                &s.read_range(&key, 50..52, None).await.unwrap()[..],
                &[50, 51],
                "used up"
            );
            let got = s.read_range(&key, 8..12, None).await.unwrap();
            assert_eq!(&got[..], &[8, 9, 10 ^ 0xff, 11]);
            assert_eq!(&s.read_range(&key, 85..95, None).await.unwrap()[..], &[85, 86, 87]);
        });
        let log = s.log();
        assert_eq!(s.reads(), vec![40..55, 55..70, 50..52, 8..12, 85..95]);
        assert_eq!(log[1].faults, vec![Fault::Fail, Fault::Corrupt { at: 10 }]);
        assert_eq!(log[3].faults, vec![Fault::Corrupt { at: 10 }]);
    }

    #[test]
    fn a_changed_etag_fails_reads_pinned_to_the_old_one() {
        let (s, key) = source();
        block_on(async {
            let old = s.stat(&key).await.unwrap().etag;
            assert!(s.read_range(&key, 0..10, old.as_ref()).await.is_ok());
            s.add(Rule::stat(Fault::ChangeEtag).times(1));
            let new = s.stat(&key).await.unwrap().etag;
            assert!(new.is_some() && new != old);
            assert!(matches!(
                s.read_range(&key, 0..10, old.as_ref()).await,
                Err(BlobError::PreconditionFailed)
            ));
            assert_eq!(s.read_range(&key, 0..2, new.as_ref()).await.unwrap()[..], [0, 1]);
            assert_eq!(s.stat(&key).await.unwrap().etag, new, "one change only");
            s.add(Rule::stat(Fault::DropEtag));
            assert_eq!(s.stat(&key).await.unwrap().etag, None);
        });
    }
}
