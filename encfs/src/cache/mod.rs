//! A prefetching, memory-bounded cache of **ciphertext** parts in front of any [`BlobSource`].
//!
//! The blob is cut into aligned parts ([`CacheConfig::part_size`], 2 MiB by default: 32 chunks of 64 KiB).
//! Reads are classified by stream, mountpoint-s3 style but keyed by position rather than file handle (the
//! filesystem reads sealed ranges, so a stream is "the next read starts where the last one ended"):
//!
//! * A read that continues a known stream (starting up to 1 MiB before or 16 MiB after where it ended,
//!   which absorbs the kernel's out-of-order readahead) once the stream has read [`SEQUENTIAL_AFTER`] (2 MiB)
//!   contiguously is **sequential**: its window grows with the run, from one part up
//!   to [`CacheConfig::max_window`], and every part from the read to the window's end is requested at once, so
//!   several range requests are in flight, each fetched in the background while the reader decrypts.
//! * Any other read is **random**: served from cached parts if they are all there, otherwise fetched exactly
//!   (no read-ahead, nothing evicted for it), cut into a few concurrent requests ([`CacheConfig::split`]) so a
//!   cold read is not held up by the small windows of new or idle connections; the first `stat` of a blob opens
//!   that many connections ahead, so the first read after mount takes one round trip.
//!
//! Memory: parts held plus parts in flight never exceed [`CacheConfig::capacity`] except for the parts a reader
//! is waiting for right now; least recently used parts go first, and prefetch stops growing when nothing can
//! be evicted. [`CacheConfig::for_budget`] turns the `--cache-size` (256 MiB by default) into that capacity
//! after setting aside [`RESERVED`] for everything else the daemon holds (FUSE and HTTP buffers, reads being
//! assembled or decrypted, the program), so the daemon's peak RSS stays near `--cache-size`. Part buffers
//! come from a pool and go back to it when the last reader drops them, and response bodies are read straight
//! into them ([`BlobSource::read_range_into`]): a long read reuses the same memory instead of faulting in
//! fresh pages and fragmenting the allocator.
//!
//! With [`CacheConfig::disk`] (`--cache-dir`), parts and random reads (rounded out to 64 KiB blocks) are
//! also written to a bounded on-disk cache keyed by the blob's pinned identity ([`disk`]), and read from it
//! before the network. Only ciphertext is cached, in memory or on disk: every byte is still authenticated by
//! the filesystem on every read, and a range that fails ([`BlobSource::on_auth_failure`]) is dropped from
//! both, so reading it again fetches it afresh.

pub mod disk;
mod split;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;
use tracing::warn;

use self::disk::{BLOCK, Lookup};
pub use self::disk::{DiskConfig, DiskError, DiskStore};
pub use self::split::Split;
use crate::metrics::Metrics;
use crate::pool::BufPool;
use crate::source::{BlobError, BlobKey, BlobMeta, BlobSource, ETag};

/// A stream prefetches once it has read this much contiguously (so touching 1 MiB, plus the kernel's own
/// readahead, fetches about 1 MiB).
pub(crate) const SEQUENTIAL_AFTER: u64 = 2 << 20;

/// Default memory bound: 256 MiB of ciphertext parts.
pub(crate) const DEFAULT_CAPACITY: u64 = 256 << 20;

/// Default memory budget of a daemon reading a remote image, MiB ([`CacheConfig::for_budget`]): the default of
/// `mount --cache-size` and of the sidecar's `cinfer_cache_mb`.
pub const DEFAULT_BUDGET_MIB: u64 = 256;

/// Of a memory budget ([`CacheConfig::for_budget`]), what is set aside for everything but cached parts.
pub(crate) const RESERVED: u64 = 48 << 20;

/// Default cut of a cold random read: up to 4 requests of at least 32 KiB. A 128 KiB READ (the kernel's first
/// of a file) becomes four 32 KiB requests, each within the 64 KiB a new Linux connection may receive in its
/// first round trip.
pub const DEFAULT_SPLIT: Split = Split { max: 4, min: 32 << 10 };

/// Sizes of a [`CachingSource`].
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Most bytes of parts held or in flight.
    pub capacity: u64,
    /// Bytes per part (aligned in the blob; rounded to a multiple of 64 KiB, at most 4 MiB).
    pub part_size: u64,
    /// Largest read-ahead window of one sequential stream.
    pub max_window: u64,
    /// Sequential streams tracked at once.
    pub max_streams: usize,
    /// Part requests in flight at once (more wait their turn, in order): enough to fill a long fat link, few
    /// enough that the part a reader needs next is not starved by the ones behind it.
    pub max_requests: usize,
    /// How a random read that misses is cut into concurrent requests (each of at least `split.min` bytes, at
    /// most `split.max` of them); also how many connections the first `stat` of a blob opens.
    pub split: Split,
    /// The on-disk ciphertext cache, if any.
    pub disk: Option<DiskConfig>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            part_size: 2 << 20,
            max_window: 64 << 20,
            max_streams: 16,
            max_requests: 8,
            split: DEFAULT_SPLIT,
            disk: None,
        }
    }
}

impl CacheConfig {
    /// The defaults, with parts held within `budget` bytes minus [`RESERVED`] (at least 8 MiB): the
    /// `--cache-size`, a bound on the whole daemon's memory rather than on the parts alone.
    pub fn for_budget(budget: u64) -> Self {
        Self {
            capacity: budget.saturating_sub(RESERVED).max(8 << 20),
            ..Self::default()
        }
    }
}

/// Errors of [`CachingSource`]: the wrapped source's error, shared by every reader of a part.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError<E: std::error::Error + 'static> {
    /// The source failed.
    #[error(transparent)]
    Source(Arc<E>),
    /// The background fetch of a part ended without a result (it panicked); the part is forgotten, so the next
    /// read tries again.
    #[error("the fetch of a cache part ended without a result")]
    Aborted,
    /// The source answered a range with another number of bytes than asked for (a broken backend): nothing of
    /// the answer is kept or returned.
    #[error("the source returned {got} bytes for a {want}-byte range")]
    WrongLength {
        /// Bytes received.
        got: u64,
        /// Bytes asked for.
        want: u64,
    },
}

/// A part's outcome, shareable between every reader waiting for it.
#[derive(Debug)]
enum Shared<E> {
    NotFound,
    PreconditionFailed,
    OutOfRange { start: u64, end: u64, len: u64 },
    WrongLength { got: u64, want: u64 },
    Backend(Arc<E>),
}

impl<E> Clone for Shared<E> {
    fn clone(&self) -> Self {
        match self {
            Self::NotFound => Self::NotFound,
            Self::PreconditionFailed => Self::PreconditionFailed,
            Self::OutOfRange { start, end, len } => Self::OutOfRange {
                start: *start,
                end: *end,
                len: *len,
            },
            Self::WrongLength { got, want } => Self::WrongLength { got: *got, want: *want },
            Self::Backend(e) => Self::Backend(e.clone()),
        }
    }
}

type PartResult<E> = Option<Result<Bytes, Shared<E>>>;

struct Part<E> {
    rx: watch::Receiver<PartResult<E>>,
    len: u64,
    last_use: u64,
}

struct Stream {
    key: BlobKey,
    /// Where the last read ended.
    next: u64,
    /// Contiguous bytes read so far.
    run: u64,
    /// Current read-ahead window (0 until the stream has proven sequential).
    window: u64,
    last_use: u64,
}

struct Inner<E> {
    parts: HashMap<(BlobKey, u64), Part<E>>,
    /// Bytes of parts held or in flight.
    used: u64,
    streams: Vec<Stream>,
    lens: HashMap<BlobKey, u64>,
    clock: u64,
}

/// A prefetching, bounded part cache in front of `B`; see the module docs.
pub struct CachingSource<B: BlobSource> {
    inner: Arc<B>,
    config: CacheConfig,
    state: Arc<Mutex<Inner<B::Error>>>,
    metrics: Arc<Metrics>,
    high_water: Arc<AtomicU64>,
    /// Part buffers.
    pool: Arc<BufPool>,
    /// Buffers of reads that span parts.
    joins: Arc<BufPool>,
    /// The disk cache of each blob, opened at its first `stat` (None: not configured, or could not open).
    disks: Mutex<HashMap<BlobKey, Option<Arc<DiskStore>>>>,
    /// Permits for part requests to the source (FIFO, so parts are fetched in the order they were asked for).
    requests: Arc<tokio::sync::Semaphore>,
    /// The last few random reads fetched ([`RECENT_READS`]).
    recent: Mutex<std::collections::VecDeque<(BlobKey, Range<u64>, Bytes)>>,
}

/// Random reads kept after they were fetched, for the reads inside them that follow, and the most bytes they
/// hold together (counted in [`RESERVED`], not in the part capacity). After a failed readahead the kernel asks
/// again page by page: each 4 KiB READ needs the whole sealed chunk around it, which was fetched again for every
/// page (16 times the bytes for 64 KiB chunks) until the last fetch was kept.
pub(crate) const RECENT_READS: usize = 8;
const RECENT_MAX_BYTES: usize = 4 << 20;

impl<B: BlobSource> std::fmt::Debug for CachingSource<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingSource")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<B: BlobSource> CachingSource<B> {
    /// Wraps `inner`; counters go to `metrics`.
    pub fn new(inner: B, config: CacheConfig, metrics: Arc<Metrics>) -> Self {
        let mut config = config;
        config.part_size = config.part_size.clamp(BLOCK, 64 * BLOCK) / BLOCK * BLOCK;
        config.capacity = config.capacity.max(2 * config.part_size);
        config.max_window = config.max_window.clamp(config.part_size, config.capacity / 2);
        let parts = usize::try_from(config.capacity / config.part_size).unwrap_or(usize::MAX);
        Self {
            inner: Arc::new(inner),
            state: Arc::new(Mutex::new(Inner {
                parts: HashMap::new(),
                used: 0,
                streams: Vec::new(),
                lens: HashMap::new(),
                clock: 0,
            })),
            metrics,
            high_water: Arc::default(),
            pool: BufPool::new(parts),
            joins: BufPool::new(16),
            disks: Mutex::new(HashMap::new()),
            requests: Arc::new(tokio::sync::Semaphore::new(config.max_requests.max(1))),
            recent: Mutex::default(),
            config,
        }
    }

    /// The disk cache of `key`, if one is open.
    pub fn disk(&self, key: &BlobKey) -> Option<Arc<DiskStore>> {
        self.disks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
            .flatten()
    }

    /// Opens the disk cache for `key` at `meta` once (a blob without an ETag gets none).
    async fn open_disk(&self, key: &BlobKey, meta: &BlobMeta) {
        let Some(cfg) = &self.config.disk else { return };
        if self.disks.lock().unwrap_or_else(|e| e.into_inner()).contains_key(key) {
            return;
        }
        let shown = key.to_string();
        let store = match &meta.etag {
            None => {
                warn!(blob = %shown, "the source gives no ETag: no disk cache (a replaced blob could not be told apart)");
                None
            }
            Some(etag) => {
                let (cfg, part, len) = (cfg.clone(), self.config.part_size, meta.len);
                let id = disk::identity(&shown, etag.as_str(), len);
                match tokio::task::spawn_blocking(move || DiskStore::open(&cfg, &id, len, part)).await {
                    Ok(Ok(s)) => Some(Arc::new(s)),
                    Ok(Err(e)) => {
                        warn!(blob = %shown, "no disk cache: {e}");
                        None
                    }
                    Err(e) => {
                        warn!(blob = %shown, "no disk cache: {e}");
                        None
                    }
                }
            }
        };
        self.disks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_insert(store);
    }

    /// The wrapped source.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The most bytes of parts ever held or in flight at once.
    pub fn high_water(&self) -> u64 {
        self.high_water.load(Ordering::Relaxed)
    }

    /// The sizes in force (after clamping).
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<B::Error>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn blob_len(&self, key: &BlobKey) -> Result<u64, BlobError<CacheError<B::Error>>> {
        if let Some(len) = self.lock().lens.get(key) {
            return Ok(*len);
        }
        Ok(self.stat(key).await?.len)
    }

    /// Classifies a read: the read-ahead window (bytes past its end) for a sequential one, `None` for random.
    fn classify(&self, st: &mut Inner<B::Error>, key: &BlobKey, range: &Range<u64>) -> Option<u64> {
        st.clock += 1;
        let now = st.clock;
        let ps = self.config.part_size;
        if let Some(s) = st.streams.iter_mut().find(|s| {
            // Forward skips up to 16 MiB keep a proven stream; a new one must continue within 1 MiB.
            let ahead: u64 = if s.window == 0 { 1 << 20 } else { 16 << 20 };
            s.key == *key && range.start + (1 << 20) >= s.next && range.start <= s.next.saturating_add(ahead)
        }) {
            s.run += range.end.saturating_sub(s.next);
            s.next = s.next.max(range.end);
            s.last_use = now;
            if s.run < SEQUENTIAL_AFTER {
                return None;
            }
            // The window grows with the run (doubling as the reader proves it reads on), from one part.
            s.window = s.run.clamp(ps, self.config.max_window);
            return Some(s.window);
        }
        let fresh = Stream {
            key: key.clone(),
            next: range.end,
            run: range.end - range.start,
            window: 0,
            last_use: now,
        };
        if st.streams.len() < self.config.max_streams {
            st.streams.push(fresh);
        } else if let Some(old) = st.streams.iter_mut().min_by_key(|s| s.last_use) {
            *old = fresh;
        }
        None
    }

    /// Frees least recently used finished parts until `need` more bytes fit; false if they cannot.
    fn make_room(&self, st: &mut Inner<B::Error>, need: u64) -> bool {
        while st.used + need > self.config.capacity {
            let victim = st
                .parts
                .iter()
                .filter(|(_, p)| p.rx.borrow().is_some())
                .min_by_key(|(_, p)| p.last_use)
                .map(|(k, _)| k.clone());
            let Some(k) = victim else { return false };
            if let Some(p) = st.parts.remove(&k) {
                st.used -= p.len;
            }
        }
        true
    }

    /// Returns the receiver of part `i`, starting its fetch if needed (`force`: even beyond the budget).
    fn ensure_part(
        &self,
        st: &mut Inner<B::Error>,
        key: &BlobKey,
        i: u64,
        blob_len: u64,
        if_match: Option<&ETag>,
        force: bool,
    ) -> Option<watch::Receiver<PartResult<B::Error>>> {
        st.clock += 1;
        let now = st.clock;
        if let Some(p) = st.parts.get_mut(&(key.clone(), i)) {
            p.last_use = now;
            return Some(p.rx.clone());
        }
        let ps = self.config.part_size;
        let range = i * ps..((i + 1) * ps).min(blob_len);
        let len = range.end - range.start;
        if !self.make_room(st, len) && !force {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        st.parts.insert(
            (key.clone(), i),
            Part {
                rx: rx.clone(),
                len,
                last_use: now,
            },
        );
        st.used += len;
        self.high_water.fetch_max(st.used, Ordering::Relaxed);
        let fetch = PartFetch {
            inner: self.inner.clone(),
            state: self.state.clone(),
            pool: self.pool.clone(),
            disk: self.disk(key),
            metrics: self.metrics.clone(),
            requests: self.requests.clone(),
            key: key.clone(),
            etag: if_match.cloned(),
        };
        tokio::spawn(fetch.run(i, range, tx));
        Some(rx)
    }

    /// `range` from a recent random read that holds all of it.
    fn recent_hit(&self, key: &BlobKey, range: &Range<u64>) -> Option<Bytes> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let (_, r, b) = recent
            .iter()
            .find(|(k, r, _)| k == key && r.start <= range.start && range.end <= r.end)?;
        Metrics::add(&self.metrics.cache_hits, 1);
        // INVARIANT: range lies inside r, whose bytes b holds.
        Some(b.slice((range.start - r.start) as usize..(range.end - r.start) as usize))
    }

    /// Keeps a random read's bytes for the reads inside it that follow (newest first, within the bounds).
    fn remember(&self, key: &BlobKey, range: Range<u64>, bytes: &Bytes) {
        if bytes.len() > RECENT_MAX_BYTES / 2 {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.push_front((key.clone(), range, bytes.clone()));
        while recent.len() > RECENT_READS || recent.iter().map(|(_, _, b)| b.len()).sum::<usize>() > RECENT_MAX_BYTES {
            recent.pop_back();
        }
    }

    /// `range` from the source, cut per [`CacheConfig::split`].
    async fn fetch_split(
        &self,
        key: &BlobKey,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> Result<Bytes, BlobError<CacheError<B::Error>>> {
        let len = (range.end - range.start) as usize;
        let asked = split::pieces(range.clone(), self.config.split);
        let pieces = split::read(&*self.inner, key, range, if_match, self.config.split)
            .await
            .map_err(lift)?;
        // A piece of another length than asked would shift every byte after it: the read fails instead.
        if let Some((got, want)) = pieces
            .iter()
            .zip(&asked)
            .map(|(p, r)| (p.len() as u64, r.end - r.start))
            .find(|(got, want)| got != want)
        {
            return Err(BlobError::Backend(CacheError::WrongLength { got, want }));
        }
        Ok(self.join(pieces, len))
    }

    /// A random read: exactly its range from the source, or, with a disk cache, from disk when every block is
    /// there, else fetched rounded out to whole blocks and stored.
    async fn read_direct(
        &self,
        key: &BlobKey,
        range: Range<u64>,
        blob_len: u64,
        if_match: Option<&ETag>,
    ) -> Result<Bytes, BlobError<CacheError<B::Error>>> {
        let Some(disk) = self.disk(key) else {
            return self.fetch_split(key, range, if_match).await;
        };
        let ps = self.config.part_size;
        // The parts a blob range touches, each with the range's offsets within it.
        let pieces = |r: &Range<u64>| -> Vec<(u64, Range<u64>)> {
            (r.start / ps..=(r.end - 1) / ps)
                .map(|p| (p, r.start.max(p * ps) - p * ps..r.end.min((p + 1) * ps) - p * ps))
                .collect()
        };
        if pieces(&range).into_iter().all(|(p, r)| disk.has(p, r)) {
            let (d, want) = (disk.clone(), pieces(&range));
            let len = (range.end - range.start) as usize;
            let read = tokio::task::spawn_blocking(move || {
                let mut out = Vec::with_capacity(len);
                let all = want.into_iter().all(|(p, r)| d.read(p, r, &mut out) == Lookup::Hit);
                (all, out)
            })
            .await;
            match read {
                Ok((true, out)) => {
                    Metrics::add(&self.metrics.disk_read_bytes, out.len() as u64);
                    return Ok(Bytes::from(out));
                }
                Ok((false, _)) => Metrics::add(&self.metrics.disk_discarded, 1),
                Err(_) => {}
            }
        }
        let wide = range.start / BLOCK * BLOCK..range.end.div_ceil(BLOCK).saturating_mul(BLOCK).min(blob_len);
        let got = self.fetch_split(key, wide.clone(), if_match).await?;
        let out = got.slice((range.start - wide.start) as usize..(range.end - wide.start) as usize);
        let (metrics, stored) = (self.metrics.clone(), got);
        let parts = pieces(&wide);
        tokio::task::spawn_blocking(move || {
            for (p, r) in parts {
                let at = (p * ps + r.start - wide.start) as usize;
                disk.write(p, r.start, &stored[at..at + (r.end - r.start) as usize]);
                Metrics::add(&metrics.disk_written_bytes, r.end - r.start);
            }
        });
        Ok(out)
    }

    async fn read_parts(
        &self,
        key: &BlobKey,
        range: Range<u64>,
        blob_len: u64,
        if_match: Option<&ETag>,
        window: Option<u64>,
    ) -> Result<Bytes, BlobError<CacheError<B::Error>>> {
        let ps = self.config.part_size;
        let first = range.start / ps;
        let last = (range.end - 1) / ps;
        let mut wanted = Vec::new();
        let direct = {
            let mut st = self.lock();
            match window {
                Some(w) => {
                    for i in first..=last {
                        let hit = st.parts.contains_key(&(key.clone(), i));
                        Metrics::add(
                            if hit {
                                &self.metrics.cache_hits
                            } else {
                                &self.metrics.cache_misses
                            },
                            1,
                        );
                        // INVARIANT: force = true always yields a receiver.
                        if let Some(rx) = self.ensure_part(&mut st, key, i, blob_len, if_match, true) {
                            wanted.push((i, rx));
                        }
                    }
                    let ahead_end = range.end.saturating_add(w).min(blob_len);
                    let ahead_last = if ahead_end == 0 { 0 } else { (ahead_end - 1) / ps };
                    for i in last + 1..=ahead_last {
                        if st.parts.contains_key(&(key.clone(), i)) {
                            continue;
                        }
                        if self.ensure_part(&mut st, key, i, blob_len, if_match, false).is_none() {
                            break;
                        }
                        let end = ((i + 1) * ps).min(blob_len);
                        Metrics::add(&self.metrics.prefetch_bytes, end - i * ps);
                    }
                    false
                }
                None => {
                    let all_cached = (first..=last).all(|i| {
                        st.parts
                            .get(&(key.clone(), i))
                            .is_some_and(|p| matches!(*p.rx.borrow(), Some(Ok(_))))
                    });
                    if all_cached {
                        Metrics::add(&self.metrics.cache_hits, 1);
                        for i in first..=last {
                            if let Some(rx) = self.ensure_part(&mut st, key, i, blob_len, if_match, true) {
                                wanted.push((i, rx));
                            }
                        }
                    }
                    !all_cached
                }
            }
        };
        if direct {
            if let Some(b) = self.recent_hit(key, &range) {
                return Ok(b);
            }
            // Counted here, not before the recent reads were looked at: a read they hold is a hit only.
            Metrics::add(&self.metrics.cache_misses, 1);
            let got = self.read_direct(key, range.clone(), blob_len, if_match).await?;
            self.remember(key, range, &got);
            return Ok(got);
        }
        let mut pieces = Vec::with_capacity(wanted.len());
        for (i, mut rx) in wanted {
            let got = match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone(),
                Err(_) => None,
            };
            let bytes = match got {
                Some(Ok(b)) => b,
                Some(Err(e)) => return Err(unshare(e)),
                None => return Err(BlobError::Backend(CacheError::Aborted)),
            };
            let base = i * ps;
            let s = range.start.max(base) - base;
            let e = range.end.min(base + bytes.len() as u64) - base;
            if s > e || e > bytes.len() as u64 {
                return Err(BlobError::OutOfRange {
                    start: range.start,
                    end: range.end,
                    len: blob_len,
                });
            }
            // INVARIANT: s <= e <= part length, a usize.
            pieces.push(bytes.slice(s as usize..e as usize));
        }
        Ok(self.join(pieces, (range.end - range.start) as usize))
    }

    /// The bytes of `pieces` in order, as one [`Bytes`]: the single piece itself, or a copy into a pooled buffer
    /// of `len` bytes (the pieces' total, given by the caller).
    fn join(&self, mut pieces: Vec<Bytes>, len: usize) -> Bytes {
        if pieces.len() == 1 {
            return pieces.swap_remove(0);
        }
        let mut out = self.joins.take(len);
        for p in &pieces {
            out.extend_from_slice(p);
        }
        BufPool::freeze(&self.joins, out)
    }
}

/// What the background fetch of one part needs.
struct PartFetch<B: BlobSource> {
    inner: Arc<B>,
    state: Arc<Mutex<Inner<B::Error>>>,
    pool: Arc<BufPool>,
    disk: Option<Arc<DiskStore>>,
    metrics: Arc<Metrics>,
    requests: Arc<tokio::sync::Semaphore>,
    key: BlobKey,
    etag: Option<ETag>,
}

impl<B: BlobSource> PartFetch<B> {
    /// Fills part `i` (blob `range`) from disk or the source into a pooled buffer, publishes it on `tx`, then
    /// stores a fetched part on disk.
    async fn run(self, i: u64, range: Range<u64>, tx: watch::Sender<PartResult<B::Error>>) {
        // Unless the part is published, it is forgotten, also when this task panics or is dropped: a part left
        // in the map without a sender would fail every later read of it and keep its bytes counted.
        let mut forget = ForgetPart {
            state: &self.state,
            key: &self.key,
            part: Some(i),
        };
        let len = range.end - range.start;
        // INVARIANT: a part is at most 4 MiB.
        let mut buf = self.pool.take(len as usize);
        let mut from_disk = false;
        if let Some(d) = self.disk.clone().filter(|d| d.has(i, 0..len)) {
            let read = tokio::task::spawn_blocking(move || {
                let r = d.read(i, 0..len, &mut buf);
                (r, buf)
            })
            .await;
            buf = match read {
                Ok((Lookup::Hit, b)) => {
                    Metrics::add(&self.metrics.disk_read_bytes, len);
                    from_disk = true;
                    b
                }
                Ok((r, mut b)) => {
                    if r == Lookup::Discarded {
                        Metrics::add(&self.metrics.disk_discarded, 1);
                    }
                    b.clear();
                    b
                }
                Err(_) => self.pool.take(len as usize),
            };
        }
        let r = if from_disk {
            Ok(())
        } else {
            // The semaphore is never closed; without a permit the request goes ahead anyway.
            let _permit = self.requests.acquire().await.ok();
            self.inner
                .read_range_into(&self.key, range, self.etag.as_ref(), &mut buf)
                .await
                .map_err(share)
                .and_then(|()| match buf.len() as u64 {
                    got if got == len => Ok(()),
                    got => Err(Shared::WrongLength { got, want: len }),
                })
        };
        let r = match r {
            Ok(()) => {
                forget.part = None;
                Ok(BufPool::freeze(&self.pool, buf))
            }
            Err(e) => {
                // A failed part is forgotten, so the next read tries again.
                self.pool.give(buf);
                drop(forget);
                Err(e)
            }
        };
        let stored = r.as_ref().ok().cloned();
        let _ = tx.send(Some(r));
        if let (false, Some(d), Some(bytes)) = (from_disk, self.disk, stored) {
            let metrics = self.metrics;
            tokio::task::spawn_blocking(move || {
                d.write(i, 0, &bytes);
                Metrics::add(&metrics.disk_written_bytes, bytes.len() as u64);
            });
        }
    }
}

/// Removes a part from the map when dropped armed (`part` set).
struct ForgetPart<'a, E> {
    state: &'a Mutex<Inner<E>>,
    key: &'a BlobKey,
    part: Option<u64>,
}

impl<E> Drop for ForgetPart<'_, E> {
    fn drop(&mut self) {
        if let Some(i) = self.part.take() {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = st.parts.remove(&(self.key.clone(), i)) {
                st.used -= p.len;
            }
        }
    }
}

fn share<E>(e: BlobError<E>) -> Shared<E> {
    match e {
        BlobError::NotFound => Shared::NotFound,
        BlobError::PreconditionFailed => Shared::PreconditionFailed,
        BlobError::OutOfRange { start, end, len } => Shared::OutOfRange { start, end, len },
        BlobError::Backend(e) => Shared::Backend(Arc::new(e)),
    }
}

fn unshare<E: std::error::Error + 'static>(e: Shared<E>) -> BlobError<CacheError<E>> {
    match e {
        Shared::NotFound => BlobError::NotFound,
        Shared::PreconditionFailed => BlobError::PreconditionFailed,
        Shared::OutOfRange { start, end, len } => BlobError::OutOfRange { start, end, len },
        Shared::WrongLength { got, want } => BlobError::Backend(CacheError::WrongLength { got, want }),
        Shared::Backend(e) => BlobError::Backend(CacheError::Source(e)),
    }
}

fn lift<E: std::error::Error + 'static>(e: BlobError<E>) -> BlobError<CacheError<E>> {
    unshare(share(e))
}

impl<B: BlobSource> BlobSource for CachingSource<B> {
    type Error = CacheError<B::Error>;

    /// The wrapped source's `stat`. The first one of a blob also opens, in the background, a connection per
    /// piece of a split read ([`CacheConfig::split`]) with one-byte reads, and runs the split-read code once.
    async fn stat(&self, key: &BlobKey) -> Result<BlobMeta, BlobError<Self::Error>> {
        if self.config.split.max > 1 && !self.lock().lens.contains_key(key) {
            let (inner, key, n) = (self.inner.clone(), key.clone(), self.config.split.max);
            tokio::spawn(async move { split::warm_up(&*inner, &key, n).await });
        }
        let meta = self.inner.stat(key).await.map_err(lift)?;
        self.lock().lens.insert(key.clone(), meta.len);
        self.open_disk(key, &meta).await;
        Ok(meta)
    }

    /// Counts a decryption failure and drops every cached copy (memory and disk) of the parts overlapping
    /// `range`, so the next read fetches them again.
    fn on_auth_failure(&self, key: &BlobKey, range: Range<u64>) -> bool {
        Metrics::add(&self.metrics.decrypt_failures, 1);
        if range.start >= range.end {
            return false;
        }
        let mut dropped_recent = false;
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(k, r, _)| {
                let keep = k != key || r.end <= range.start || range.end <= r.start;
                dropped_recent |= !keep;
                keep
            });
        let ps = self.config.part_size;
        let mut dropped = false;
        {
            let mut st = self.lock();
            for i in range.start / ps..=(range.end - 1) / ps {
                let done = st.parts.get(&(key.clone(), i)).is_some_and(|p| p.rx.borrow().is_some());
                if done && let Some(p) = st.parts.remove(&(key.clone(), i)) {
                    st.used -= p.len;
                    dropped = true;
                }
            }
        }
        if let Some(d) = self.disk(key) {
            dropped |= d.discard(range);
        }
        dropped || dropped_recent
    }

    async fn read_range(
        &self,
        key: &BlobKey,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> Result<Bytes, BlobError<Self::Error>> {
        if range.start >= range.end {
            return self.inner.read_range(key, range, if_match).await.map_err(lift);
        }
        let blob_len = self.blob_len(key).await?;
        if range.end > blob_len {
            return Err(BlobError::OutOfRange {
                start: range.start,
                end: range.end,
                len: blob_len,
            });
        }
        let window = {
            let mut st = self.lock();
            self.classify(&mut st, key, &range)
        };
        self.read_parts(key, range, blob_len, if_match, window).await
    }
}

#[cfg(test)]
mod tests;
