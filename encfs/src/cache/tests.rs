//! Tests of the cache: its paths against an in-memory source, most through a failure-injecting one.

use std::sync::atomic::AtomicU64;

use super::*;
use crate::source::faulty::{FaultError, Op};
use crate::source::{Fault, FaultySource, MemSource, Rule};

/// Counts what the inner source is asked for. With `gate`, every read also waits (up to two seconds) until
/// that many reads are in flight together, and counts it in `alone` if they never are.
#[derive(Debug, Default)]
struct Counting {
    mem: MemSource,
    requests: AtomicU64,
    bytes: AtomicU64,
    largest: AtomicU64,
    ranges: Mutex<Vec<Range<u64>>>,
    gate: Option<tokio::sync::Barrier>,
    alone: AtomicU64,
}

impl BlobSource for Counting {
    type Error = std::convert::Infallible;

    async fn stat(&self, key: &BlobKey) -> Result<BlobMeta, BlobError<Self::Error>> {
        self.mem.stat(key).await
    }

    async fn read_range(
        &self,
        key: &BlobKey,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> Result<Bytes, BlobError<Self::Error>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(range.end - range.start, Ordering::Relaxed);
        self.largest.fetch_max(range.end - range.start, Ordering::Relaxed);
        self.ranges.lock().unwrap().push(range.clone());
        if let Some(gate) = &self.gate
            && tokio::time::timeout(std::time::Duration::from_secs(2), gate.wait())
                .await
                .is_err()
        {
            self.alone.fetch_add(1, Ordering::Relaxed);
        }
        tokio::task::yield_now().await;
        self.mem.read_range(key, range, if_match).await
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn sequential_reads_prefetch_within_the_memory_bound_and_return_exact_bytes() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let blob = data(64 << 20);
    let key = BlobKey::new("b");
    let inner = Counting::default();
    inner.mem.put(key.clone(), blob.clone());
    let cfg = CacheConfig {
        capacity: 8 << 20,
        part_size: 1 << 20,
        max_window: 4 << 20,
        max_streams: 4,
        max_requests: 8,
        split: DEFAULT_SPLIT,
        disk: None,
    };
    let cache = CachingSource::new(inner, cfg, Arc::default());
    rt.block_on(async {
        let meta = cache.stat(&key).await.unwrap();
        let step = 128 << 10;
        let mut off = 0u64;
        while off < meta.len {
            let end = (off + step).min(meta.len);
            let got = cache.read_range(&key, off..end, meta.etag.as_ref()).await.unwrap();
            assert!(got[..] == blob[off as usize..end as usize], "bytes differ at {off}");
            off = end;
        }
    });
    let inner = cache.inner();
    // The first 2 MiB as read (16 exact reads, 4 requests each), then whole 1 MiB parts; nothing much twice.
    assert!(
        inner.requests.load(Ordering::Relaxed) <= 4 + 16 * 4 + 64,
        "{}",
        inner.requests.load(Ordering::Relaxed)
    );
    assert!(inner.bytes.load(Ordering::Relaxed) <= (64 << 20) + (2 << 20));
    assert!(cache.high_water() <= 8 << 20, "high water {}", cache.high_water());
    assert!(
        cache.high_water() >= 3 << 20,
        "no read-ahead happened: {}",
        cache.high_water()
    );
}

#[test]
fn random_reads_fetch_exactly_their_range_in_pieces_of_at_least_the_minimum() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let blob = data(32 << 20);
    let key = BlobKey::new("b");
    let inner = Counting::default();
    inner.mem.put(key.clone(), blob.clone());
    let cache = CachingSource::new(inner, CacheConfig::default(), Arc::default());
    let mut want = Vec::new();
    rt.block_on(async {
        let meta = cache.stat(&key).await.unwrap();
        // Distinct 2 MiB slots in shuffled order: no read continues another.
        for i in 0..16u64 {
            let off = ((i * 5) % 16) * (2 << 20) + 12_345;
            assert!(off + 131_072 <= meta.len);
            let got = cache.read_range(&key, off..off + 131_072, None).await.unwrap();
            assert!(got[..] == blob[off as usize..off as usize + 131_072]);
            want.push(off..off + 131_072);
        }
    });
    // Besides the first stat's one-byte warm-up reads (at offset 0), the requests tile exactly the ranges
    // read, each in four pieces of 32 KiB.
    let mut got: Vec<Range<u64>> = cache.inner().ranges.lock().unwrap().clone();
    got.retain(|r| r.start >= 12_345);
    got.sort_by_key(|r| r.start);
    assert_eq!(got.len(), 16 * 4, "{got:?}");
    assert!(got.iter().all(|r| r.end - r.start == 32 << 10), "{got:?}");
    let mut merged: Vec<Range<u64>> = Vec::new();
    for r in got {
        match merged.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => merged.push(r),
        }
    }
    want.sort_by_key(|r| r.start);
    assert_eq!(merged, want);
}

#[test]
fn the_first_stat_warms_up_connections_and_a_cold_read_sends_its_pieces_at_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let blob = data(4 << 20);
    let key = BlobKey::new("b");
    // Every request waits until four are in flight: requests sent one after another would time out.
    let inner = Counting {
        gate: Some(tokio::sync::Barrier::new(DEFAULT_SPLIT.max)),
        ..Counting::default()
    };
    inner.mem.put(key.clone(), blob.clone());
    let cache = CachingSource::new(inner, CacheConfig::default(), Arc::default());
    let counting = |n| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while cache.inner().requests.load(Ordering::Relaxed) < n && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        cache.inner().requests.load(Ordering::Relaxed)
    };
    let meta = rt.block_on(cache.stat(&key)).unwrap();
    // The stat starts one tiny request per connection a split read will use, together, in the background.
    assert_eq!(counting(4), 4);
    assert!(cache.inner().largest.load(Ordering::Relaxed) <= 1);
    // The kernel's first READ of a file (128 KiB, here two sealed 64 KiB chunks): four requests at once,
    // none larger than a quarter of it.
    let range = 4096..4096 + 2 * 65_552;
    let got = rt
        .block_on(cache.read_range(&key, range.clone(), meta.etag.as_ref()))
        .unwrap();
    assert!(got[..] == blob[range.start as usize..range.end as usize]);
    assert_eq!(cache.inner().requests.load(Ordering::Relaxed), 8);
    assert_eq!(cache.inner().largest.load(Ordering::Relaxed), 65_552 / 2);
    assert_eq!(
        cache.inner().alone.load(Ordering::Relaxed),
        0,
        "requests ran one after another"
    );
}

// ---- Paths of the cache through a failure-injecting source ----

const MIB: u64 = 1 << 20;
const BLOB: u64 = 16 * MIB;

type Faulty = FaultySource<MemSource>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap()
}

/// 1 MiB parts, 8 MiB held, windows up to 4 MiB, no split (one request per read), no disk.
fn small() -> CacheConfig {
    CacheConfig {
        capacity: 8 * MIB,
        part_size: MIB,
        max_window: 4 * MIB,
        max_streams: 4,
        max_requests: 8,
        split: Split { max: 1, min: 1 },
        disk: None,
    }
}

/// A [`BLOB`]-byte blob behind a failure-injecting source, cached with `cfg`.
fn faulty_cache(cfg: CacheConfig) -> (CachingSource<Faulty>, BlobKey, Vec<u8>) {
    let blob = data(BLOB as usize);
    let key = BlobKey::new("https://store.example/c/b.img?sig=x");
    let mem = MemSource::new();
    mem.put(key.clone(), blob.clone());
    (
        CachingSource::new(FaultySource::new(mem), cfg, Arc::default()),
        key,
        blob,
    )
}

fn count(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The part of 1 MiB parts that holds blob offset `off`, as a range.
fn part(i: u64) -> Range<u64> {
    i * MIB..(i + 1) * MIB
}

/// How many reads of the source overlapped `range`.
fn reads_over(src: &Faulty, range: &Range<u64>) -> usize {
    src.reads()
        .iter()
        .filter(|r| r.start < range.end && range.start < r.end)
        .count()
}

/// Makes the blob's one stream sequential: reads `0..2 MiB` (a random read, fetched exactly), so the next read
/// from 2 MiB on goes through parts, the first of them part 2, with parts ahead of it prefetched.
async fn go_sequential(cache: &CachingSource<Faulty>, key: &BlobKey, etag: Option<&ETag>, blob: &[u8]) {
    let got = cache.read_range(key, 0..2 * MIB, etag).await.unwrap();
    assert!(got[..] == blob[..2 * MIB as usize]);
}

/// Waits up to 5 s for `cond`.
fn eventually(cond: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !cond() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    true
}

fn injected<T: std::fmt::Debug>(r: &Result<T, BlobError<CacheError<FaultError<std::convert::Infallible>>>>) -> bool {
    matches!(r, Err(BlobError::Backend(CacheError::Source(e))) if matches!(**e, FaultError::Injected { .. }))
}

#[test]
fn a_random_read_misses_once_then_the_reads_inside_it_hit_without_a_request() {
    let (cache, key, blob) = faulty_cache(small());
    let m = cache.metrics.clone();
    runtime().block_on(async {
        let etag = cache.stat(&key).await.unwrap().etag;
        let got = cache.read_range(&key, 100_000..300_000, etag.as_ref()).await.unwrap();
        assert!(got[..] == blob[100_000..300_000]);
        assert_eq!((count(&m.cache_misses), count(&m.cache_hits)), (1, 0));
        // A 4 KiB page inside it, as the kernel asks after a failed readahead: kept, so no request.
        let got = cache.read_range(&key, 200_000..204_096, etag.as_ref()).await.unwrap();
        assert!(got[..] == blob[200_000..204_096]);
    });
    assert_eq!(
        cache.inner().reads(),
        vec![100_000..300_000],
        "the page was fetched again"
    );
    assert_eq!(
        (count(&m.cache_misses), count(&m.cache_hits)),
        (1, 1),
        "a read served from memory is a hit and only a hit"
    );
    assert_eq!(count(&m.prefetch_bytes), 0, "a random read prefetches nothing");
}

#[test]
fn a_sequential_stream_prefetches_within_its_window_and_prefetched_parts_serve_the_reads_after() {
    let (cache, key, blob) = faulty_cache(small());
    let m = cache.metrics.clone();
    let src = cache.inner();
    runtime().block_on(async {
        let etag = cache.stat(&key).await.unwrap().etag;
        go_sequential(&cache, &key, etag.as_ref(), &blob).await;
        let mut off = 2 * MIB;
        while off < BLOB {
            let end = off + 256 * 1024;
            let got = cache.read_range(&key, off..end, etag.as_ref()).await.unwrap();
            assert!(got[..] == blob[off as usize..end as usize], "bytes differ at {off}");
            // Nothing is asked for beyond the largest window past the part being read.
            let furthest = src.reads().iter().map(|r| r.end).max().unwrap();
            assert!(
                furthest <= (end + 4 * MIB).div_ceil(MIB) * MIB,
                "fetched up to {furthest} while at {end}"
            );
            off = end;
        }
    });
    // From 2 MiB on, whole parts, each fetched once.
    let mut parts: Vec<Range<u64>> = src.reads().into_iter().filter(|r| r.start >= 2 * MIB).collect();
    parts.sort_by_key(|r| r.start);
    assert_eq!(parts, (2..16).map(part).collect::<Vec<_>>());
    assert!(
        count(&m.prefetch_bytes) >= 10 * MIB,
        "prefetched {}",
        count(&m.prefetch_bytes)
    );
    // Each part is a miss once (when the reader reached one still missing) or a hit; every later lookup a hit.
    assert!(count(&m.cache_hits) >= 40, "hits {}", count(&m.cache_hits));
    assert!(count(&m.cache_misses) <= 1 + 14, "misses {}", count(&m.cache_misses));
    assert!(cache.high_water() <= 8 * MIB);
    // A random read inside parts held now is served from them.
    let before = src.reads().len();
    let got = runtime()
        .block_on(cache.read_range(&key, BLOB - 3 * MIB + 5..BLOB - MIB - 7, None))
        .unwrap();
    assert!(got[..] == blob[(BLOB - 3 * MIB + 5) as usize..(BLOB - MIB - 7) as usize]);
    assert_eq!(src.reads().len(), before, "a read of cached parts went to the source");
}

#[test]
fn readers_of_a_part_in_flight_wait_for_its_one_request() {
    let (cache, key, blob) = faulty_cache(small());
    let cache = Arc::new(cache);
    let rt = runtime();
    let etag = rt.block_on(cache.stat(&key)).unwrap().etag;
    rt.block_on(go_sequential(&cache, &key, etag.as_ref(), &blob));
    cache
        .inner()
        .add(Rule::read(Fault::Delay(std::time::Duration::from_millis(200))).overlapping(part(2)));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (cache, key, etag) = (cache.clone(), key.clone(), etag.clone());
            rt.spawn(async move { cache.read_range(&key, 2 * MIB..2 * MIB + 4096, etag.as_ref()).await })
        })
        .collect();
    for r in readers {
        let got = rt.block_on(r).unwrap().unwrap();
        assert!(got[..] == blob[2 * MIB as usize..2 * MIB as usize + 4096]);
    }
    assert_eq!(reads_over(cache.inner(), &part(2)), 1, "{:?}", cache.inner().reads());
}

#[test]
fn part_requests_in_flight_never_exceed_max_requests() {
    let (cache, key, blob) = faulty_cache(CacheConfig {
        max_requests: 2,
        ..small()
    });
    cache
        .inner()
        .add(Rule::read(Fault::Delay(std::time::Duration::from_millis(30))));
    runtime().block_on(async {
        let etag = cache.stat(&key).await.unwrap().etag;
        go_sequential(&cache, &key, etag.as_ref(), &blob).await;
        for off in (2 * MIB..BLOB).step_by(MIB as usize) {
            let got = cache.read_range(&key, off..off + MIB, etag.as_ref()).await.unwrap();
            assert!(got[..] == blob[off as usize..(off + MIB) as usize]);
        }
    });
    // The window asks for up to four parts at once; two go out, the others wait their turn.
    assert_eq!(cache.inner().most_in_flight(), 2);
}

#[test]
fn a_failed_part_is_forgotten_and_its_budget_freed_so_the_next_read_fetches_it_again() {
    let (cache, key, blob) = faulty_cache(small());
    cache.inner().add(Rule::read(Fault::Fail).overlapping(part(2)).times(1));
    let rt = runtime();
    let etag = rt.block_on(cache.stat(&key)).unwrap().etag;
    rt.block_on(go_sequential(&cache, &key, etag.as_ref(), &blob));
    let range = 2 * MIB..2 * MIB + 65_536;
    let r = rt.block_on(cache.read_range(&key, range.clone(), etag.as_ref()));
    assert!(injected(&r), "{r:?}");
    {
        let st = cache.lock();
        assert!(!st.parts.contains_key(&(key.clone(), 2)), "a failed part stays");
        assert_eq!(
            st.used,
            st.parts.values().map(|p| p.len).sum::<u64>(),
            "budget not given back"
        );
    }
    let got = rt
        .block_on(cache.read_range(&key, range.clone(), etag.as_ref()))
        .unwrap();
    assert!(got[..] == blob[range.start as usize..range.end as usize]);
    assert_eq!(reads_over(cache.inner(), &part(2)), 2);
}

#[test]
fn a_fetch_that_panics_is_aborted_for_its_readers_and_fetched_again_after() {
    let (cache, key, blob) = faulty_cache(small());
    cache
        .inner()
        .add(Rule::read(Fault::Panic).overlapping(part(2)).times(1));
    let rt = runtime();
    let etag = rt.block_on(cache.stat(&key)).unwrap().etag;
    rt.block_on(go_sequential(&cache, &key, etag.as_ref(), &blob));
    let range = 2 * MIB + 10..2 * MIB + 20;
    let r = rt.block_on(cache.read_range(&key, range.clone(), etag.as_ref()));
    assert!(matches!(r, Err(BlobError::Backend(CacheError::Aborted))), "{r:?}");
    assert!(!cache.lock().parts.contains_key(&(key.clone(), 2)));
    let got = rt
        .block_on(cache.read_range(&key, range.clone(), etag.as_ref()))
        .unwrap();
    assert!(got[..] == blob[range.start as usize..range.end as usize]);
}

#[test]
fn failures_of_random_reads_keep_their_kind_and_nothing_of_them_is_kept() {
    let (cache, key, blob) = faulty_cache(CacheConfig {
        split: DEFAULT_SPLIT,
        ..small()
    });
    let src = cache.inner();
    let rt = runtime();
    let etag = rt.block_on(cache.stat(&key)).unwrap().etag;
    assert!(eventually(|| src.reads().len() == DEFAULT_SPLIT.max), "warm-up reads");
    src.clear_log();
    // One of the four pieces of a cold read fails: the read fails.
    let range = 5 * MIB..5 * MIB + 131_072;
    src.add(
        Rule::read(Fault::Fail)
            .overlapping(range.start + 70_000..range.start + 70_001)
            .times(1),
    );
    let r = rt.block_on(cache.read_range(&key, range.clone(), etag.as_ref()));
    assert!(injected(&r), "{r:?}");
    src.add(Rule::read(Fault::NotFound).times(1));
    let r = rt.block_on(cache.read_range(&key, range.clone(), etag.as_ref()));
    assert!(matches!(r, Err(BlobError::NotFound)), "{r:?}");
    src.add(Rule::read(Fault::PreconditionFailed).times(1));
    let r = rt.block_on(cache.read_range(&key, range.clone(), etag.as_ref()));
    assert!(matches!(r, Err(BlobError::PreconditionFailed)), "{r:?}");
    let reads = src.reads().len();
    let got = rt
        .block_on(cache.read_range(&key, range.clone(), etag.as_ref()))
        .unwrap();
    assert!(got[..] == blob[range.start as usize..range.end as usize]);
    assert_eq!(
        src.reads().len(),
        reads + 4,
        "the read after failures is fetched whole again"
    );
    assert_eq!(count(&cache.metrics.cache_hits), 0);
}

#[test]
fn a_short_answer_is_an_error_never_short_or_kept_bytes() {
    let (cache, key, blob) = faulty_cache(small());
    let src = cache.inner();
    let rt = runtime();
    let etag = rt.block_on(cache.stat(&key)).unwrap().etag;
    // A random read answered short: an error, and nothing kept for the reads inside it.
    let range = 300_000..400_000;
    src.add(Rule::read(Fault::Short { keep: 50_000 }).times(1));
    let r = rt.block_on(cache.read_range(&key, range, etag.as_ref()));
    assert!(
        matches!(
            r,
            Err(BlobError::Backend(CacheError::WrongLength {
                got: 50_000,
                want: 100_000
            }))
        ),
        "{r:?}"
    );
    let got = rt
        .block_on(cache.read_range(&key, 340_000..360_000, etag.as_ref()))
        .unwrap();
    assert!(got[..] == blob[340_000..360_000]);
    // A part answered short: an error, and the part is fetched again by the next read.
    let (cache, key, blob) = faulty_cache(small());
    let etag = rt.block_on(cache.stat(&key)).unwrap().etag;
    rt.block_on(go_sequential(&cache, &key, etag.as_ref(), &blob));
    cache
        .inner()
        .add(Rule::read(Fault::Short { keep: 1000 }).overlapping(part(2)).times(1));
    let range = 2 * MIB + 500..2 * MIB + 5000;
    let r = rt.block_on(cache.read_range(&key, range.clone(), etag.as_ref()));
    assert!(
        matches!(r, Err(BlobError::Backend(CacheError::WrongLength { .. }))),
        "{r:?}"
    );
    let got = rt
        .block_on(cache.read_range(&key, range.clone(), etag.as_ref()))
        .unwrap();
    assert!(got[..] == blob[range.start as usize..range.end as usize]);
}

#[test]
fn an_auth_failure_drops_the_copies_it_came_from_so_the_next_read_fetches_afresh() {
    let (cache, key, blob) = faulty_cache(small());
    let src = cache.inner();
    let m = cache.metrics.clone();
    let rt = runtime();
    let etag = rt.block_on(cache.stat(&key)).unwrap().etag;
    rt.block_on(go_sequential(&cache, &key, etag.as_ref(), &blob));
    // Part 2 arrives damaged once. The cache does not authenticate: it hands the bytes on as they came.
    let bad = 2 * MIB + 1234;
    src.add(Rule::read(Fault::Corrupt { at: bad }).overlapping(part(2)).times(1));
    let range = 2 * MIB..2 * MIB + 65_536;
    let got = rt
        .block_on(cache.read_range(&key, range.clone(), etag.as_ref()))
        .unwrap();
    assert_eq!(got[1234], blob[bad as usize] ^ 0xff);
    // The reader says so: the part goes (and is counted), and the next read gets the bytes afresh.
    assert!(cache.on_auth_failure(&key, range.clone()));
    assert_eq!(count(&m.decrypt_failures), 1);
    let got = rt
        .block_on(cache.read_range(&key, range.clone(), etag.as_ref()))
        .unwrap();
    assert!(got[..] == blob[range.start as usize..range.end as usize]);
    assert_eq!(reads_over(src, &part(2)), 2);
    // Nothing held there: nothing to drop (the reader then knows a new read would see the same bytes).
    assert!(!cache.on_auth_failure(&key, 14 * MIB..14 * MIB + 10));
    assert_eq!(count(&m.decrypt_failures), 2);
}

#[test]
fn an_auth_failure_drops_a_kept_random_read_so_the_pages_after_it_fetch_afresh() {
    let (cache, key, blob) = faulty_cache(small());
    let src = cache.inner();
    let rt = runtime();
    let etag = rt.block_on(cache.stat(&key)).unwrap().etag;
    let range = 9 * MIB + 7..9 * MIB + 70_000;
    src.add(Rule::read(Fault::Corrupt { at: range.start + 5 }).times(1));
    let got = rt
        .block_on(cache.read_range(&key, range.clone(), etag.as_ref()))
        .unwrap();
    assert_eq!(got[5], blob[range.start as usize + 5] ^ 0xff);
    let page = range.start..range.start + 4096;
    assert_eq!(
        rt.block_on(cache.read_range(&key, page.clone(), etag.as_ref()))
            .unwrap()[5],
        got[5]
    );
    assert_eq!(src.reads().len(), 1, "the page inside the kept read was fetched");
    assert!(cache.on_auth_failure(&key, page.clone()));
    let again = rt
        .block_on(cache.read_range(&key, page.clone(), etag.as_ref()))
        .unwrap();
    assert!(again[..] == blob[page.start as usize..page.end as usize]);
    assert_eq!(src.reads(), vec![range, page]);
}

#[test]
fn after_the_blob_changes_held_parts_still_serve_and_a_miss_is_a_precondition_failure() {
    let (cache, key, blob) = faulty_cache(small());
    let src = cache.inner();
    let rt = runtime();
    let etag = rt.block_on(cache.stat(&key)).unwrap().etag;
    rt.block_on(go_sequential(&cache, &key, etag.as_ref(), &blob));
    let held = 2 * MIB..2 * MIB + 4096;
    rt.block_on(cache.read_range(&key, held.clone(), etag.as_ref()))
        .unwrap();
    assert!(
        eventually(|| reads_over(src, &part(4)) == 1),
        "prefetch of parts 3 and 4"
    );
    // The blob is replaced (a new ETag) before the next request reaches the source.
    src.add(Rule::read(Fault::ChangeEtag).times(1));
    let got = rt
        .block_on(cache.read_range(&key, held.clone(), etag.as_ref()))
        .unwrap();
    assert!(
        got[..] == blob[held.start as usize..held.end as usize],
        "bytes of the pinned version"
    );
    let r = rt.block_on(cache.read_range(&key, 12 * MIB..12 * MIB + 10, etag.as_ref()));
    assert!(matches!(r, Err(BlobError::PreconditionFailed)), "{r:?}");
    let r = rt.block_on(cache.read_range(&key, 13 * MIB..13 * MIB + 10, etag.as_ref()));
    assert!(
        matches!(r, Err(BlobError::PreconditionFailed)),
        "the change is for good: {r:?}"
    );
    assert!(
        src.log().iter().all(|r| r.op == Op::Stat || r.if_match == etag),
        "a read went out unpinned"
    );
}

#[test]
fn reads_past_the_end_fail_without_a_request_and_empty_reads_pass_through() {
    let (cache, key, _) = faulty_cache(small());
    let rt = runtime();
    rt.block_on(cache.stat(&key)).unwrap();
    let r = rt.block_on(cache.read_range(&key, BLOB - 10..BLOB + 1, None));
    assert!(
        matches!(r, Err(BlobError::OutOfRange { start, end, len }) if start == BLOB - 10 && end == BLOB + 1 && len == BLOB),
        "{r:?}"
    );
    assert!(cache.inner().reads().is_empty());
    assert!(rt.block_on(cache.read_range(&key, 7..7, None)).unwrap().is_empty());
}

// ---- The on-disk cache under the part cache ----

fn disk_cache(dir: &std::path::Path, src: Faulty) -> CachingSource<Faulty> {
    let cfg = CacheConfig {
        disk: Some(DiskConfig {
            dir: dir.to_path_buf(),
            limit: 64 * MIB,
        }),
        ..small()
    };
    CachingSource::new(src, cfg, Arc::default())
}

/// A fresh source holding `blob` (the same ETag as any other fresh one: a restarted daemon on the same blob).
fn fresh(key: &BlobKey, blob: &[u8]) -> Faulty {
    let mem = MemSource::new();
    mem.put(key.clone(), blob.to_vec());
    FaultySource::new(mem)
}

/// Reads the whole blob as one sequential stream (2 MiB reads) on its own runtime, then (with a disk cache)
/// waits until every part was read from disk or stored there: a runtime dropped earlier would cancel the fetch
/// tasks before they store their parts.
fn read_all(cache: &CachingSource<Faulty>, key: &BlobKey, blob: &[u8]) {
    runtime().block_on(async {
        let etag = cache.stat(key).await.unwrap().etag;
        for off in (0..BLOB).step_by(2 * MIB as usize) {
            let got = cache.read_range(key, off..off + 2 * MIB, etag.as_ref()).await.unwrap();
            assert!(
                got[..] == blob[off as usize..(off + 2 * MIB) as usize],
                "bytes differ at {off}"
            );
        }
        let m = &cache.metrics;
        for _ in 0..500 {
            if cache.disk(key).is_none() || count(&m.disk_written_bytes) + count(&m.disk_read_bytes) >= BLOB {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
}

/// A first daemon reads the whole blob, storing every part in the disk cache at `dir`, and stops.
fn fill_disk(dir: &std::path::Path, key: &BlobKey, blob: &[u8]) {
    let first = disk_cache(dir, fresh(key, blob));
    read_all(&first, key, blob);
    let written = count(&first.metrics.disk_written_bytes);
    assert_eq!(written, BLOB, "each part stored once");
}

#[test]
fn a_restarted_cache_reads_what_its_disk_holds_without_asking_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, key, blob) = faulty_cache(small());
    fill_disk(tmp.path(), &key, &blob);
    let second = disk_cache(tmp.path(), fresh(&key, &blob));
    read_all(&second, &key, &blob);
    assert_eq!(
        second.inner().reads(),
        Vec::<Range<u64>>::new(),
        "the source was asked again"
    );
    assert_eq!(count(&second.metrics.disk_read_bytes), BLOB);
}

#[test]
fn a_random_read_is_stored_in_whole_blocks_and_served_from_disk_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, key, blob) = faulty_cache(small());
    let range = 100_000..150_000;
    let first = disk_cache(tmp.path(), fresh(&key, &blob));
    // The runtime outlives the wait below: the disk write is a blocking task of it, and a runtime dropped before
    // such a task has started drops the task (seen under load: the write never came).
    let rt = runtime();
    rt.block_on(async {
        let etag = first.stat(&key).await.unwrap().etag;
        let got = first.read_range(&key, range.clone(), etag.as_ref()).await.unwrap();
        assert!(got[..] == blob[100_000..150_000]);
    });
    assert_eq!(
        first.inner().reads(),
        vec![BLOCK..3 * BLOCK],
        "rounded out to 64 KiB blocks"
    );
    assert!(eventually(|| count(&first.metrics.disk_written_bytes) == 2 * BLOCK));
    drop(rt);
    drop(first);
    let second = disk_cache(tmp.path(), fresh(&key, &blob));
    runtime().block_on(async {
        let etag = second.stat(&key).await.unwrap().etag;
        let got = second.read_range(&key, range.clone(), etag.as_ref()).await.unwrap();
        assert!(got[..] == blob[100_000..150_000]);
    });
    assert!(second.inner().reads().is_empty());
    assert_eq!(count(&second.metrics.disk_read_bytes), 50_000);
}

#[test]
fn a_damaged_disk_part_is_discarded_and_fetched_from_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, key, blob) = faulty_cache(small());
    fill_disk(tmp.path(), &key, &blob);
    let id = disk::identity(&key.to_string(), "v0", BLOB);
    let data = tmp.path().join(&id).join("5.d");
    assert!(data.is_file(), "no part file at {}", data.display());
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[blob[5 * MIB as usize + 777] ^ 1], 777).unwrap();
    let second = disk_cache(tmp.path(), fresh(&key, &blob));
    read_all(&second, &key, &blob);
    assert_eq!(second.inner().reads(), vec![part(5)]);
    assert_eq!(count(&second.metrics.disk_discarded), 1);
    assert_eq!(count(&second.metrics.disk_read_bytes), BLOB - MIB);
}

#[test]
fn an_auth_failure_drops_the_disk_copy_too() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, key, blob) = faulty_cache(small());
    let src = fresh(&key, &blob);
    src.add(
        Rule::read(Fault::Corrupt { at: 6 * MIB + 3 })
            .overlapping(6 * MIB + 3..6 * MIB + 4)
            .times(1),
    );
    let cache = disk_cache(tmp.path(), src);
    read_all(
        &cache,
        &key,
        &blob
            .iter()
            .enumerate()
            .map(|(i, b)| if i as u64 == 6 * MIB + 3 { b ^ 0xff } else { *b })
            .collect::<Vec<_>>(),
    );
    assert!(eventually(|| count(&cache.metrics.disk_written_bytes) == BLOB));
    let disk = cache.disk(&key).unwrap();
    assert!(disk.has(6, 0..MIB));
    assert!(cache.on_auth_failure(&key, 6 * MIB..6 * MIB + 65_552));
    assert!(!disk.has(6, 0..1), "the damaged copy is still on disk");
    let got = runtime()
        .block_on(cache.read_range(&key, 6 * MIB..6 * MIB + 10, None))
        .unwrap();
    assert!(got[..] == blob[6 * MIB as usize..6 * MIB as usize + 10]);
}

#[test]
fn a_replaced_blob_never_reads_the_old_copy_and_a_blob_without_etag_gets_no_disk_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, key, blob) = faulty_cache(small());
    fill_disk(tmp.path(), &key, &blob);
    // Same URL and length, another ETag: another identity, nothing read from the old one.
    let src = fresh(&key, &blob);
    src.add(Rule::stat(Fault::ChangeEtag).times(1));
    let second = disk_cache(tmp.path(), src);
    read_all(&second, &key, &blob);
    assert_eq!(count(&second.metrics.disk_read_bytes), 0);
    assert_eq!(
        second.inner().reads().iter().map(|r| r.end - r.start).sum::<u64>(),
        BLOB
    );
    drop(second);
    let src = fresh(&key, &blob);
    src.add(Rule::stat(Fault::DropEtag));
    let third = disk_cache(tmp.path(), src);
    read_all(&third, &key, &blob);
    assert!(third.disk(&key).is_none());
    assert_eq!(
        count(&third.metrics.disk_read_bytes) + count(&third.metrics.disk_written_bytes),
        0
    );
}

#[test]
fn a_second_cache_on_a_blob_in_use_runs_without_the_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, key, blob) = faulty_cache(small());
    let first = disk_cache(tmp.path(), fresh(&key, &blob));
    let second = disk_cache(tmp.path(), fresh(&key, &blob));
    let rt = runtime();
    rt.block_on(first.stat(&key)).unwrap();
    rt.block_on(second.stat(&key)).unwrap();
    assert!(first.disk(&key).is_some());
    assert!(second.disk(&key).is_none(), "two daemons share one cache directory");
    let got = rt.block_on(second.read_range(&key, 10..20, None)).unwrap();
    assert!(got[..] == blob[10..20]);
}
