//! The filesystem over a failure-injecting source, alone and under the part cache: what a reader sees when the
//! source fails, answers short, changes or damages bytes (no FUSE, no root).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;

use super::*;
use crate::cache::{CacheConfig, CachingSource, Split};
use crate::metrics::Metrics;
use crate::source::faulty::FaultError;
use crate::source::{Fault, FaultySource, MemSource, Rule};
use crate::testing::{Content, TreeBuilder};

type Faulty = FaultySource<MemSource>;
type Cached = CachingSource<Faulty>;

const CS: u32 = 4096;

struct Image {
    bytes: Vec<u8>,
    key: ModelKey,
    data: Vec<u8>,
}

/// One image for every test: `f` (600 000 bytes in 4 KiB chunks) and `g` (3 bytes).
fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let data: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let mut tree = TreeBuilder::new();
        tree.file("f", Content::Bytes(data.clone()));
        tree.file("g", Content::Bytes(vec![1, 2, 3]));
        let key = ModelKey::generate();
        let mut bytes = Vec::new();
        tree.write_image(&mut bytes, &key, CS).unwrap();
        Image { bytes, key, data }
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap()
}

fn faulty() -> Faulty {
    let mem = MemSource::new();
    mem.put(BlobKey::new("img"), image().bytes.clone());
    FaultySource::new(mem)
}

fn open_with<B: BlobSource>(rt: &tokio::runtime::Runtime, source: B) -> Result<EncFs<B>, OpenError<B::Error>> {
    rt.block_on(EncFs::open(
        source,
        BlobKey::new("img"),
        &image().key,
        None,
        EncFsConfig::default(),
    ))
}

/// The filesystem over the cache (64 KiB parts, no split) over a failure-injecting source, and the cache's
/// counters.
fn cached(rt: &tokio::runtime::Runtime) -> (EncFs<Cached>, Arc<Metrics>) {
    let cfg = CacheConfig {
        capacity: 1 << 20,
        part_size: 64 << 10,
        max_window: 256 << 10,
        split: Split { max: 1, min: 1 },
        ..CacheConfig::default()
    };
    let metrics = Arc::new(Metrics::default());
    let fs = open_with(rt, CachingSource::new(faulty(), cfg, metrics.clone())).unwrap();
    (fs, metrics)
}

fn ino(fs: &EncFs<impl BlobSource>, name: &str) -> u64 {
    fs.lookup(ROOT_INO, name.as_bytes()).unwrap().ino
}

/// The image range of chunk `n` of file `f`.
fn sealed_chunk(fs: &EncFs<impl BlobSource>, n: u64) -> Range<u64> {
    let i = (ino(fs, "f") - 1) as usize;
    let loc = fs.image.layout.file(i).unwrap().chunk(n, CS);
    loc.offset..loc.offset + loc.sealed_len
}

fn reads_over(src: &Faulty, range: &Range<u64>) -> usize {
    src.reads()
        .iter()
        .filter(|r| r.start < range.end && range.start < r.end)
        .count()
}

fn source_error<E: std::error::Error + Send + Sync + 'static>(
    r: &Result<impl std::fmt::Debug, OpenError<E>>,
    part: &str,
) -> bool {
    matches!(r, Err(OpenError::Source { what, .. }) if *what == part)
}

#[test]
fn open_names_the_read_that_failed_and_refuses_what_came_back_wrong() {
    let rt = runtime();
    let index_at = HEADER_LEN as u64 + 10;
    let index = image().bytes.len() as u64 - 1..image().bytes.len() as u64;
    let cases: Vec<(Rule, &str)> = vec![
        (Rule::stat(Fault::NotFound), "length"),
        (Rule::stat(Fault::Fail), "length"),
        (Rule::read(Fault::Fail).overlapping(0..1), "header"),
        (Rule::read(Fault::NotFound).overlapping(index.clone()), "index"),
        // The image replaced between reading its header and its index.
        (Rule::read(Fault::ChangeEtag).after(1).times(1), "index"),
    ];
    for (rule, part) in cases {
        let src = faulty();
        src.add(rule.clone());
        let r = open_with(&rt, src);
        assert!(source_error(&r, part), "{rule:?}: {r:?}");
    }
    let src = faulty();
    src.add(Rule::read(Fault::ChangeEtag).after(1).times(1));
    let r = open_with(&rt, src);
    assert!(
        matches!(
            r,
            Err(OpenError::Source {
                source: BlobError::PreconditionFailed,
                ..
            })
        ),
        "{r:?}"
    );
    // Short or damaged answers are refused as a bad image, whatever the source said.
    for rule in [
        Rule::read(Fault::Short { keep: 10 }).overlapping(0..1),
        Rule::read(Fault::Short { keep: 10 }).overlapping(index.clone()),
        Rule::read(Fault::Corrupt { at: 40 }),
        Rule::read(Fault::Corrupt { at: index.start }),
    ] {
        let src = faulty();
        src.add(rule.clone());
        let r = open_with(&rt, src);
        assert!(matches!(r, Err(OpenError::Format(_))), "{rule:?}: {r:?}");
    }
    // A slow source only takes longer; so does damage where open does not read (the chunks).
    let src = faulty();
    src.add(Rule::read(Fault::Delay(Duration::from_millis(20))));
    src.add(Rule::read(Fault::Corrupt { at: index_at }));
    assert!(open_with(&rt, src).is_ok());
}

#[test]
fn a_failing_or_short_source_is_eio_and_leaves_no_plaintext_in_the_buffer() {
    let rt = runtime();
    let fs = open_with(&rt, faulty()).unwrap();
    let f = ino(&fs, "f");
    for fault in [
        Fault::Fail,
        Fault::NotFound,
        Fault::PreconditionFailed,
        Fault::Short { keep: 5000 },
    ] {
        fs.source().add(Rule::read(fault.clone()).times(1));
        let mut out = vec![0xaa; 100];
        let r = rt.block_on(fs.read_into(f, 10_000, 20_000, &mut out));
        assert!(matches!(r, Err(FsError::Source(_))), "{fault:?}: {r:?}");
        assert_eq!(r.unwrap_err().errno(), libc::EIO);
        assert!(out.is_empty(), "{fault:?} left {} bytes", out.len());
    }
    let got = rt.block_on(fs.read(f, 10_000, 20_000)).unwrap();
    assert!(got[..] == image().data[10_000..30_000]);
}

#[test]
fn a_damaged_chunk_fails_every_read_touching_it_and_no_byte_of_them_is_returned() {
    let rt = runtime();
    let fs = open_with(&rt, faulty()).unwrap();
    let f = ino(&fs, "f");
    let bad = sealed_chunk(&fs, 10);
    fs.source().add(Rule::read(Fault::Corrupt { at: bad.start + 100 }));
    // Chunks 9 to 11: chunk 10 fails the whole read.
    let mut out = Vec::new();
    let r = rt.block_on(fs.read_into(f, 9 * 4096 + 1, 3 * 4096 - 2, &mut out));
    assert!(matches!(r, Err(FsError::ChunkAuth { index: 10 })), "{r:?}");
    assert_eq!(r.unwrap_err().errno(), libc::EIO);
    assert!(out.is_empty());
    // A source that keeps no copies is not asked again: a new read would get the same bytes.
    assert_eq!(reads_over(fs.source(), &bad), 1);
    // Chunks either side are fine.
    let got = rt.block_on(fs.read(f, 9 * 4096, 4096)).unwrap();
    assert!(got[..] == image().data[9 * 4096..10 * 4096]);
    let got = rt.block_on(fs.read(f, 11 * 4096, 4096)).unwrap();
    assert!(got[..] == image().data[11 * 4096..12 * 4096]);
}

#[test]
fn over_the_cache_a_chunk_damaged_once_reads_right_and_one_damaged_for_good_is_eio_after_one_refetch() {
    let rt = runtime();
    let (fs, m) = cached(&rt);
    let f = ino(&fs, "f");
    let src = fs.source().inner();
    // Damaged once: the cache drops its copy and the filesystem reads it again, right.
    let once = sealed_chunk(&fs, 20);
    src.add(Rule::read(Fault::Corrupt { at: once.start + 7 }).times(1));
    let got = rt.block_on(fs.read(f, 20 * 4096, 4096)).unwrap();
    assert!(got[..] == image().data[20 * 4096..21 * 4096]);
    assert_eq!(m.decrypt_failures.load(Ordering::Relaxed), 1);
    assert_eq!(reads_over(src, &once), 2);
    // Damaged for good: one refetch, then EIO, and the reader is not kept retrying.
    let always = sealed_chunk(&fs, 120);
    src.add(Rule::read(Fault::Corrupt { at: always.end - 1 }));
    let mut out = Vec::new();
    let r = rt.block_on(fs.read_into(f, 120 * 4096 + 5, 100, &mut out));
    assert!(matches!(r, Err(FsError::ChunkAuth { index: 120 })), "{r:?}");
    assert!(out.is_empty());
    assert_eq!(reads_over(src, &always), 2);
    assert_eq!(m.decrypt_failures.load(Ordering::Relaxed), 3);
}

#[test]
fn an_image_replaced_under_the_mount_is_eio_for_every_read_not_yet_cached() {
    let rt = runtime();
    let fs = open_with(&rt, faulty()).unwrap();
    let f = ino(&fs, "f");
    fs.source().add(Rule::read(Fault::ChangeEtag).times(1));
    for off in [0, 300_000, 4096] {
        let r = rt.block_on(fs.read(f, off, 4096));
        let Err(FsError::Source(e)) = &r else { panic!("{r:?}") };
        let e = e.downcast_ref::<BlobError<FaultError<std::convert::Infallible>>>();
        assert!(matches!(e, Some(BlobError::PreconditionFailed)), "{e:?}");
    }
}

/// A fault for the property test: its kind, where (an offset into `f`'s sealed bytes) and a size.
fn fault_of(kind: u8, at: u64, n: u64) -> Fault {
    match kind % 5 {
        0 => Fault::Fail,
        1 => Fault::Short { keep: n },
        2 => Fault::Corrupt { at },
        3 => Fault::Delay(Duration::from_micros(n % 3000)),
        _ => Fault::PreconditionFailed,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Whatever goes wrong at the source, a read returns exactly the file's bytes or an error; and once the
    /// source behaves again, every read is right (nothing bad was kept).
    #[test]
    fn reads_under_injected_faults_are_right_or_errors_and_nothing_bad_is_kept(
        faults in prop::collection::vec((any::<u8>(), 0u64..620_000, 0u64..70_000, 1u64..3), 0..12),
        reads in prop::collection::vec((0u64..600_000, 1u32..200_000), 1..24),
    ) {
        let rt = runtime();
        let (fs, _) = cached(&rt);
        let f = ino(&fs, "f");
        let src = fs.source().inner();
        for &(kind, at, n, times) in &faults {
            let at = HEADER_LEN as u64 + at;
            src.add(Rule::read(fault_of(kind, at, n)).overlapping(at..at + 1).times(times));
        }
        let data = &image().data;
        let want = |off: u64, len: u32| &data[off as usize..(off + u64::from(len)).min(data.len() as u64) as usize];
        for &(off, len) in &reads {
            if let Ok(got) = rt.block_on(fs.read(f, off, len)) {
                prop_assert!(got[..] == *want(off, len), "wrong bytes at {}+{}", off, len);
            }
        }
        src.clear_rules();
        for &(off, len) in &reads {
            let got = rt.block_on(fs.read(f, off, len));
            prop_assert!(got.as_ref().is_ok_and(|g| g[..] == *want(off, len)), "after the faults: {:?}", got.err());
        }
    }
}
