//! The filesystem logic without FUSE: `EncFs` over an in-memory source.

#![allow(clippy::unwrap_used)]

mod common;

use common::pattern;
use encfs::format::{FormatError, ModelKey};
use encfs::fs::{EncFs, EncFsConfig, FileKind, FsError, OpenError, ROOT_INO};
use encfs::source::{BlobError, BlobKey, MemSource};
use encfs::testing::{Content, TreeBuilder};
use proptest::prelude::*;

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn open(tree: &TreeBuilder, cs: u32) -> (EncFs<MemSource>, Vec<u8>, ModelKey) {
    let key = ModelKey::generate();
    let mut image = Vec::new();
    tree.write_image(&mut image, &key, cs).unwrap();
    let fs = open_bytes(image.clone(), &key).unwrap();
    (fs, image, key)
}

fn open_bytes(image: Vec<u8>, key: &ModelKey) -> Result<EncFs<MemSource>, OpenError<std::convert::Infallible>> {
    let src = MemSource::new();
    src.put(BlobKey::new("img"), image);
    block_on(EncFs::open(src, BlobKey::new("img"), key, None, EncFsConfig::default()))
}

fn ino_of(fs: &EncFs<MemSource>, path: &str) -> u64 {
    path.split('/')
        .fold(ROOT_INO, |dir, name| fs.lookup(dir, name.as_bytes()).unwrap().ino)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_reads_match_the_plaintext(
        sizes in prop::collection::vec(0usize..200_000, 1..5),
        cs_log in 12u32..15,
        reads in prop::collection::vec((any::<prop::sample::Index>(), 0u64..220_000, 0u32..(1 << 20)), 1..40),
    ) {
        let cs = 1u32 << cs_log;
        let mut tree = TreeBuilder::new();
        let datas: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| pattern(n, i as u64 + 100)).collect();
        for (i, d) in datas.iter().enumerate() {
            tree.file(format!("d/f{i}"), Content::Bytes(d.clone()));
        }
        let (fs, _, _) = open(&tree, cs);
        for (which, off, len) in reads {
            let i = which.index(datas.len());
            let data = &datas[i];
            let got = block_on(fs.read(ino_of(&fs, &format!("d/f{i}")), off, len)).unwrap();
            let start = (off as usize).min(data.len());
            let end = start.saturating_add(len as usize).min(data.len());
            prop_assert_eq!(got.len(), end - start);
            prop_assert!(got[..] == data[start..end], "file {} at {}+{}", i, off, len);
        }
    }
}

#[test]
fn readdir_resumes_at_every_offset() {
    let mut tree = TreeBuilder::new();
    for i in 0..50 {
        tree.file(format!("dir/n{i:02}"), Content::Bytes(vec![]));
    }
    tree.dir("dir/sub");
    let (fs, _, _) = open(&tree, 4096);
    let dir = ino_of(&fs, "dir");
    let all: Vec<(u64, u64, Vec<u8>)> = fs
        .readdir(dir, 0)
        .unwrap()
        .map(|e| (e.ino, e.next_offset, e.name.to_vec()))
        .collect();
    assert_eq!(all.len(), 53);
    assert_eq!(all[0].2, b".");
    assert_eq!(all[1].2, b"..");
    assert_eq!(all[1].0, ROOT_INO);
    let mut names: Vec<_> = all[2..].iter().map(|e| e.2.clone()).collect();
    let sorted = {
        let mut s = names.clone();
        s.sort();
        s
    };
    assert_eq!(names, sorted, "children come sorted by name");
    names.dedup();
    assert_eq!(names.len(), 51);
    for (k, e) in all.iter().enumerate() {
        let rest: Vec<_> = fs.readdir(dir, e.1).unwrap().map(|e| e.name.to_vec()).collect();
        let want: Vec<_> = all[k + 1..].iter().map(|e| e.2.clone()).collect();
        assert_eq!(rest, want, "resume after entry {k}");
    }
    assert_eq!(fs.readdir(dir, 1000).unwrap().count(), 0);
}

#[test]
fn lookup_and_attributes() {
    let mut tree = TreeBuilder::new();
    tree.file("a/b/c.bin", Content::Bytes(pattern(5000, 1)));
    tree.symlink("a/l", "b/c.bin");
    let (fs, _, _) = open(&tree, 4096);
    let a = ino_of(&fs, "a");
    let b = ino_of(&fs, "a/b");
    assert_eq!(fs.lookup(b, b"..").unwrap().ino, a);
    assert_eq!(fs.lookup(b, b".").unwrap().ino, b);
    assert_eq!(fs.lookup(ROOT_INO, b"..").unwrap().ino, ROOT_INO);
    let c = fs.lookup(b, b"c.bin").unwrap();
    assert_eq!(
        (c.kind, c.size, c.blocks, c.nlink, c.perm),
        (FileKind::File, 5000, 10, 1, 0o644)
    );
    assert!(matches!(fs.lookup(b, b"nope"), Err(FsError::NotFound)));
    assert!(matches!(fs.lookup(c.ino, b"x"), Err(FsError::NotDir)));
    assert!(matches!(fs.getattr(0), Err(FsError::NotFound)));
    assert!(matches!(fs.getattr(10_000), Err(FsError::NotFound)));
    assert!(matches!(block_on(fs.read(a, 0, 10)), Err(FsError::NotFile)));
    assert!(matches!(fs.open_file(a), Err(FsError::NotFile)));
    let l = ino_of(&fs, "a/l");
    assert_eq!(fs.readlink(l).unwrap(), b"b/c.bin");
    assert!(matches!(fs.readlink(c.ino), Err(FsError::NotSymlink)));
    assert_eq!(fs.getattr(a).unwrap().nlink, 3);
    assert_eq!(fs.statfs().bytes, 5000);
    // Past the end: empty, not an error.
    assert!(block_on(fs.read(c.ino, 5000, 10)).unwrap().is_empty());
    assert!(block_on(fs.read(c.ino, u64::MAX - 1, 10)).unwrap().is_empty());
}

#[test]
fn a_tampered_chunk_fails_only_reads_that_touch_it() {
    let data = pattern(10 * 4096, 5);
    let mut tree = TreeBuilder::new();
    tree.file("f", Content::Bytes(data.clone()));
    let (_, mut image, key) = open(&tree, 4096);
    // Chunk 4 of the only file sits after the header and four sealed 4096-byte chunks.
    let at = 4096 + 4 * (4096 + 16) + 100;
    image[at] ^= 1;
    let fs = open_bytes(image, &key).unwrap();
    let f = ino_of(&fs, "f");
    assert_eq!(block_on(fs.read(f, 0, 4 * 4096)).unwrap(), data[..4 * 4096]);
    assert_eq!(block_on(fs.read(f, 5 * 4096, 5 * 4096)).unwrap(), data[5 * 4096..]);
    for (off, len) in [(4 * 4096, 1), (0, 10 * 4096), (4 * 4096 - 1, 2), (5 * 4096 - 1, 1)] {
        match block_on(fs.read(f, off, len)) {
            Err(FsError::ChunkAuth { index: 4 }) => {}
            other => panic!("read {off}+{len}: expected ChunkAuth(4), got {other:?}"),
        }
    }
}

#[test]
fn a_tampered_chunk_fails_a_read_decrypted_in_parallel() {
    // 64 chunks of 4 KiB: a whole-file read covers more than `parallel_min_chunks` (32) and is split over the
    // rayon pool; a bad chunk in any run fails the whole read.
    let data = pattern(64 * 4096, 6);
    let mut tree = TreeBuilder::new();
    tree.file("f", Content::Bytes(data.clone()));
    let (fs, image, key) = open(&tree, 4096);
    let f = ino_of(&fs, "f");
    assert_eq!(block_on(fs.read(f, 0, 64 * 4096)).unwrap(), data);
    for bad in [3usize, 40, 63] {
        let mut img = image.clone();
        img[4096 + bad * (4096 + 16) + 7] ^= 0x80;
        let fs = open_bytes(img, &key).unwrap();
        let f = ino_of(&fs, "f");
        match block_on(fs.read(f, 0, 64 * 4096)) {
            Err(FsError::ChunkAuth { index }) if index == bad as u64 => {}
            other => panic!("chunk {bad}: expected ChunkAuth, got {other:?}"),
        }
    }
}

#[test]
fn open_refuses_bad_images_with_typed_errors() {
    let mut tree = TreeBuilder::new();
    tree.file("f", Content::Bytes(pattern(9000, 6)));
    let (_, image, key) = open(&tree, 4096);
    let wrong = ModelKey::new([3; 32]);
    assert!(matches!(
        open_bytes(image.clone(), &wrong),
        Err(OpenError::Format(FormatError::WrongKey))
    ));
    assert!(matches!(
        open_bytes(image[..image.len() - 1].to_vec(), &key),
        Err(OpenError::Format(FormatError::LengthMismatch { .. }))
    ));
    assert!(matches!(
        open_bytes(image[..100].to_vec(), &key),
        Err(OpenError::Format(FormatError::Truncated { what: "header", .. }))
    ));
    let src = MemSource::new();
    let r = block_on(EncFs::open(
        src,
        BlobKey::new("missing"),
        &key,
        None,
        EncFsConfig::default(),
    ));
    assert!(matches!(
        r,
        Err(OpenError::Source {
            what: "length",
            source: BlobError::NotFound
        })
    ));
    let mut root = [0u8; 32];
    root[5] = 1;
    let src = MemSource::new();
    src.put(BlobKey::new("img"), image);
    let r = block_on(EncFs::open(
        src,
        BlobKey::new("img"),
        &key,
        Some(&root),
        EncFsConfig::default(),
    ));
    assert!(matches!(r, Err(OpenError::Format(FormatError::RootMismatch { .. }))));
}
