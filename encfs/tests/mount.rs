//! Real FUSE mounts of in-process built images through the `cinfer-encfs` binary (root and /dev/fuse needed).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::fs::File;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Fixture, MountGuard, encfs_bin, is_mounted, pattern, wait_for};
use encfs::format::{EntryKind, HEADER_LEN, Header, Layout};
use encfs::testing::{Content, TreeBuilder};
use rand::{Rng, SeedableRng};

const CS: u32 = 64 << 10;

fn sizes_tree() -> (TreeBuilder, Vec<(String, Vec<u8>)>) {
    let cs = CS as usize;
    let sizes = [0, 1, cs - 1, cs, cs + 1, 3 * cs + 17, (5 << 20) + 12345];
    let mut tree = TreeBuilder::new();
    let mut files = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let name = format!("data/f{i}_{n}.bin");
        let data = pattern(n, i as u64 + 1);
        tree.file(&name, Content::Bytes(data.clone()));
        files.push((name, data));
    }
    (tree, files)
}

fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

#[test]
fn round_trip_sizes_byte_for_byte_and_random_reads() {
    let (tree, files) = sizes_tree();
    let fx = Fixture::build(tree, CS);
    let _m = fx.mount();
    for (name, data) in &files {
        let got = std::fs::read(fx.mnt.join(name)).unwrap();
        assert_eq!(got.len(), data.len(), "{name}: length");
        assert!(got == *data, "{name}: content differs");
    }
    // Random offsets and lengths with pread, including past the end.
    let (name, data) = &files[files.len() - 1];
    let f = File::open(fx.mnt.join(name)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..300 {
        let off = rng.random_range(0..data.len() as u64 + 100);
        let len = rng.random_range(0..300_000usize);
        let mut buf = vec![0u8; len];
        let n = read_full_at(&f, &mut buf, off).unwrap();
        let start = (off as usize).min(data.len());
        let end = (start + len).min(data.len());
        assert_eq!(n, end - start, "pread length at {off}+{len}");
        assert!(buf[..n] == data[start..end], "pread content at {off}+{len}");
    }
}

#[test]
#[allow(unsafe_code)]
fn mmap_reads_match() {
    let (tree, files) = sizes_tree();
    let fx = Fixture::build(tree, CS);
    let _m = fx.mount();
    for (name, data) in files.iter().filter(|(_, d)| !d.is_empty()) {
        let f = File::open(fx.mnt.join(name)).unwrap();
        // SAFETY: the mount is read-only and immutable for the life of the map.
        let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(data.len() as u64);
        for _ in 0..200 {
            let i = rng.random_range(0..data.len());
            assert_eq!(map[i], data[i], "{name}: mmap byte {i}");
        }
        assert!(map[..] == data[..], "{name}: mmap content differs");
    }
}

/// The threads of the daemon `pid` named `prefix` + a number (the `/dev/fuse` request threads are `encfs-fuse-0`,
/// `encfs-fuse-1`, ..., the io_uring queues' `encfs-uring-0`, ...), once there are `want` of them or 10 s have
/// passed (both start them after the mount).
fn numbered_threads(pid: i32, prefix: &str, want: usize) -> usize {
    let count = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter(|t| {
                let comm = std::fs::read_to_string(t.as_ref().unwrap().path().join("comm")).unwrap_or_default();
                comm.trim()
                    .strip_prefix(prefix)
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .count()
    };
    wait_for(Duration::from_secs(10), || count() == want);
    count()
}

/// Checks that the daemon `pid` serves with what its transport promises: on the classic transport `threads`
/// request threads, over io_uring `threads` or more spread over the online CPUs' queues, two a queue at least (and one
/// `/dev/fuse` thread, for INIT, FORGET and INTERRUPT). The daemon's log
/// names the transport it picked, which must be the one this run expects.
fn assert_serving_threads(pid: i32, log: &str, threads: usize) {
    let transport = common::expected_transport();
    assert!(
        log.contains(&format!("transport={transport}")),
        "expected {transport}: {log}"
    );
    if transport == "uring" {
        // As many serving threads in all as classic request threads asked for, or more: spread evenly over the
        // queues of the online CPUs, at least two per queue (a lone reader's requests all land on its CPU's
        // queue), and one for the queue of each possible CPU that is not online.
        let (possible, online) = (common::possible_cpus(), common::online_cpus());
        let want = online * threads.div_ceil(online).max(2) + (possible - online);
        assert_eq!(
            numbered_threads(pid, "encfs-uring-", want),
            want,
            "io_uring queue threads"
        );
        assert_eq!(
            numbered_threads(pid, "encfs-fuse-", 1),
            1,
            "/dev/fuse threads over io_uring"
        );
    } else {
        assert_eq!(
            numbered_threads(pid, "encfs-fuse-", threads),
            threads,
            "request threads"
        );
    }
}

#[test]
fn parallel_readers_get_correct_bytes_and_the_daemon_runs_the_requested_request_threads() {
    let (tree, files) = sizes_tree();
    let fx = Fixture::build(tree, CS);
    // 5: neither the local default (2 to 16 by cores) nor the remote one (8).
    let m = fx.mount_image(&fx.image, &["--threads", "5"]);
    let (name, data) = files.last().unwrap();
    let path = fx.mnt.join(name);
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let path = &path;
            s.spawn(move || {
                let f = File::open(path).unwrap();
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                for _ in 0..50 {
                    let off = rng.random_range(0..data.len() as u64);
                    let mut buf = vec![0u8; rng.random_range(1..(1 << 20))];
                    let n = read_full_at(&f, &mut buf, off).unwrap();
                    assert!(buf[..n] == data[off as usize..off as usize + n], "thread {t} at {off}");
                }
            });
        }
    });
    let pid = daemon_pid(&fx.mnt).expect("daemon process");
    assert_serving_threads(pid, &fx.log(), 5);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mounts.lines().find(|l| l.contains(fx.mnt.to_str().unwrap())).unwrap();
    assert!(line.contains(" ro,") || line.contains(" ro "), "not read-only: {line}");
    assert!(line.contains("max_read=1048576"), "max_read not set: {line}");
    m.unmount();
    assert!(
        wait_for(Duration::from_secs(10), || !Path::new(&format!("/proc/{pid}")).exists()),
        "daemon {pid} still runs after unmount"
    );
    // A local image by default: one request thread per core, 2 to 16.
    let _m = fx.mount();
    let cores = std::thread::available_parallelism().unwrap().get();
    let pid = daemon_pid(&fx.mnt).expect("daemon process");
    assert_serving_threads(pid, &fx.log(), cores.clamp(2, 16));
}

#[test]
fn file_over_4_gib_reads_correctly_around_and_past_the_4_gib_boundary() {
    const MIB: u64 = 1 << 20;
    let size = (4 << 30) + 3 * MIB + 12345;
    let cs = MIB as u32;
    let mut tree = TreeBuilder::new();
    tree.file("small.bin", Content::Bytes(pattern(1000, 1)));
    tree.file("huge.bin", Content::Zeros(size));
    // Global chunk 0 is small.bin; chunk 1 + n is chunk n of huge.bin. Seal only the chunks read below.
    let boundary = (4 << 30) / MIB;
    let last = size.div_ceil(MIB) - 1;
    let wanted = move |n: u64| n <= 1 || (boundary - 1..=boundary + 1).contains(&n) || n + 2 >= last;
    let keep = move |g: u64| g == 0 || wanted(g - 1);
    let fx = Fixture::build_sparse(tree, cs, &keep);
    let _m = fx.mount();
    let path = fx.mnt.join("huge.bin");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), size);
    assert_eq!(meta.blocks(), size.div_ceil(512));
    let f = File::open(&path).unwrap();
    let check = |off: u64, len: usize| {
        let mut buf = vec![0xaau8; len];
        let n = read_full_at(&f, &mut buf, off).unwrap_or_else(|e| panic!("read at {off}: {e}"));
        let expect = (size.saturating_sub(off) as usize).min(len);
        assert_eq!(n, expect, "length at {off}");
        assert!(buf[..n].iter().all(|&b| b == 0), "non-zero byte at {off}");
    };
    check(0, 2 * MIB as usize);
    check((4 << 30) - MIB, 2 * MIB as usize);
    check((4 << 30) - 7, 100);
    check(size - 2 * MIB, 3 * MIB as usize);
    check(size - 1, 10);
    // A chunk that was never sealed (a hole in the image) is EIO, never zeros.
    let err = read_full_at(&f, &mut [0u8; 4096], 100 * MIB).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert_eq!(std::fs::read(fx.mnt.join("small.bin")).unwrap(), pattern(1000, 1));
}

/// Reads `path` in 4 KiB pieces and checks that every piece overlapping `bad` is EIO and every other piece the
/// right bytes. Chunks start at multiples of the chunk size, so no piece straddles a good and a bad chunk: EIO
/// anywhere else (a whole file failed for one bad chunk) fails the check.
fn check_no_wrong_bytes(path: &Path, data: &[u8], bad: &[Range<u64>]) {
    let f = File::open(path).unwrap();
    let piece = 4096u64;
    let mut off = 0u64;
    while off < data.len() as u64 {
        let end = (off + piece).min(data.len() as u64);
        let mut buf = vec![0u8; (end - off) as usize];
        let overlaps = bad.iter().any(|r| r.start < end && off < r.end);
        match read_full_at(&f, &mut buf, off) {
            Ok(n) => {
                assert!(
                    !overlaps,
                    "{}: read of tampered range {off}..{end} succeeded",
                    path.display()
                );
                assert_eq!(n, buf.len(), "{}: short read at {off}", path.display());
                assert!(
                    buf == data[off as usize..end as usize],
                    "{}: WRONG BYTES at {off}",
                    path.display()
                );
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{}: {e} at {off}", path.display());
                assert!(
                    overlaps,
                    "{}: EIO at {off}, outside every tampered chunk",
                    path.display()
                );
            }
        }
        off = end;
    }
}

struct TamperFixture {
    fx: Fixture,
    files: Vec<(String, Vec<u8>)>,
    image: Vec<u8>,
    /// (entry name, global chunk index, image offset, sealed length, file offset, plain length)
    chunks: Vec<(String, u64, u64, u64, u64, u64)>,
}

fn tamper_fixture() -> TamperFixture {
    let cs = CS as usize;
    let mut tree = TreeBuilder::new();
    let files = vec![
        ("a.bin".to_string(), pattern(10 * cs + 100, 11)),
        ("dir/b.bin".to_string(), pattern(3 * cs, 12)),
        ("c.bin".to_string(), pattern(cs / 2, 13)),
    ];
    for (n, d) in &files {
        tree.file(n, Content::Bytes(d.clone()));
    }
    let fx = Fixture::build(tree, CS);
    let image = std::fs::read(&fx.image).unwrap();
    let header = Header::decode(image[..HEADER_LEN].try_into().unwrap()).unwrap();
    let layout = Layout::compute(&header, &fx.built.index).unwrap();
    let mut chunks = Vec::new();
    for (i, e) in fx.built.index.entries.iter().enumerate() {
        if let EntryKind::File { .. } = e.kind {
            let fl = layout.file(i).unwrap();
            for n in 0..fl.chunk_count {
                let c = fl.chunk(n, CS);
                chunks.push((
                    fx.built.index.path_of(i),
                    c.index,
                    c.offset,
                    c.sealed_len,
                    c.file_offset,
                    c.plain_len,
                ));
            }
        }
    }
    assert_eq!(chunks.len(), 15);
    TamperFixture {
        fx,
        files,
        image,
        chunks,
    }
}

impl TamperFixture {
    fn write(&self, bytes: &[u8]) -> PathBuf {
        let p = self.fx.dir.path().join("tampered.img");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Mounts `bytes` and checks every file: EIO exactly on the chunks in `bad` (global indices), right
    /// bytes everywhere else.
    fn expect_eio_only_on(&self, bytes: &[u8], bad: &[u64]) {
        let img = self.write(bytes);
        let m = self.fx.mount_image(&img, &[]);
        for (name, data) in &self.files {
            let ranges: Vec<Range<u64>> = self
                .chunks
                .iter()
                .filter(|c| c.0 == *name && bad.contains(&c.1))
                .map(|c| c.4..c.4 + c.5)
                .collect();
            check_no_wrong_bytes(&self.fx.mnt.join(name), data, &ranges);
        }
        m.unmount();
    }

    fn expect_refused(&self, bytes: &[u8], what: &str) {
        self.expect_refused_any(bytes, &[what]);
    }

    fn expect_refused_any(&self, bytes: &[u8], any_of: &[&str]) {
        let what = any_of.join(" | ");
        let img = self.write(bytes);
        let _guard = MountGuard {
            mnt: self.fx.mnt.clone(),
        };
        let out = self.fx.mount_cmd(&img, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "expected refusal ({what}), got {:?}: {err}",
            out.status
        );
        assert!(err.contains("refusing to mount"), "message lacks context: {err}");
        assert!(
            any_of.iter().any(|w| err.to_lowercase().contains(w)),
            "message should say {what:?}: {err}"
        );
        assert!(!is_mounted(&self.fx.mnt), "refused image got mounted");
        assert_eq!(std::fs::read_dir(&self.fx.mnt).unwrap().count(), 0);
    }
}

#[test]
fn tampered_header_is_refused_and_says_why() {
    let t = tamper_fixture();
    let flip = |at: usize| {
        let mut b = t.image.clone();
        b[at] ^= 0x01;
        b
    };
    t.expect_refused(&flip(0), "bad magic");
    t.expect_refused(&flip(30), "wrong key"); // image id: derived keys change
    t.expect_refused(&flip(60), "wrong key"); // key check value
    t.expect_refused(&flip(90), "index authentication failed"); // chunk count (header is the index's AAD)
    t.expect_refused(&flip(4000), "padding");
    // Index length: longer than the image, or shorter so the index no longer authenticates.
    t.expect_refused_any(&flip(105), &["length mismatch", "index authentication failed"]);
    let mut b = t.image.clone();
    b[110] ^= 0x10;
    t.expect_refused(&b, "corrupt header: index length");
}

#[test]
fn tampered_index_truncation_and_appended_bytes_are_refused() {
    let t = tamper_fixture();
    let mut b = t.image.clone();
    let n = b.len();
    b[n - 40] ^= 0x80;
    t.expect_refused(&b, "index authentication failed");
    t.expect_refused(&t.image[..n - 1], "length mismatch");
    t.expect_refused(&t.image[..n / 2], "length mismatch");
    t.expect_refused(&t.image[..2000], "header truncated");
    let mut b = t.image.clone();
    b.extend_from_slice(b"garbage");
    t.expect_refused(&b, "length mismatch");
}

#[test]
fn tampered_first_middle_and_last_chunks_give_eio_only_there_and_are_logged_once() {
    let t = tamper_fixture();
    for &g in &[0u64, 5, 14] {
        let c = t.chunks.iter().find(|c| c.1 == g).unwrap();
        let mut b = t.image.clone();
        b[(c.2 + c.3 / 2) as usize] ^= 0x04;
        t.expect_eio_only_on(&b, &[g]);
    }
    let log = t.fx.log();
    for g in [0, 5, 14] {
        let needle = format!("chunk={g}");
        let n = log
            .lines()
            .filter(|l| l.contains("failed authentication") && l.trim_end().ends_with(&needle))
            .count();
        assert_eq!(n, 1, "chunk {g} should be logged exactly once per mount:\n{log}");
    }
}

#[test]
fn swapped_chunks_and_a_chunk_spliced_from_another_image_give_eio() {
    let t = tamper_fixture();
    // Swap chunks 2 and 3 of a.bin (same sealed size).
    let (c2, c3) = (&t.chunks[2], &t.chunks[3]);
    assert_eq!(c2.3, c3.3);
    let mut b = t.image.clone();
    let (o2, o3, l) = (c2.2 as usize, c3.2 as usize, c2.3 as usize);
    let tmp = b[o2..o2 + l].to_vec();
    b.copy_within(o3..o3 + l, o2);
    b[o3..o3 + l].copy_from_slice(&tmp);
    t.expect_eio_only_on(&b, &[2, 3]);
    // Splice chunk 7 from another image of the same tree built with the same key.
    let mut other = Vec::new();
    t.fx.tree.write_image(&mut other, &t.fx.key, CS).unwrap();
    let c7 = &t.chunks[7];
    let mut b = t.image.clone();
    let (o, l) = (c7.2 as usize, c7.3 as usize);
    b[o..o + l].copy_from_slice(&other[o..o + l]);
    assert_ne!(b, t.image);
    t.expect_eio_only_on(&b, &[7]);
}

#[test]
fn wrong_key_and_root_pin_are_enforced() {
    let t = tamper_fixture();
    let fx = &t.fx;
    // Right root: mounts.
    let root = hex::encode(fx.built.root);
    fx.mount_image(&fx.image, &["--expect-root", &root]).unmount();
    // Wrong root.
    let mut wrong = fx.built.root;
    wrong[0] ^= 1;
    let out = fx.mount_cmd(&fx.image, &["--expect-root", &hex::encode(wrong)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("root digest mismatch"));
    assert!(!is_mounted(&fx.mnt));
    let out = fx.mount_cmd(&fx.image, &["--expect-root", "abc"]);
    assert_eq!(out.status.code(), Some(1));
    // Wrong key.
    std::fs::write(&fx.key_file, [7u8; 32]).unwrap();
    let out = fx.mount_cmd(&fx.image, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong key"));
    assert!(!is_mounted(&fx.mnt));
    // A key file of the wrong length.
    std::fs::write(&fx.key_file, [7u8; 31]).unwrap();
    let out = fx.mount_cmd(&fx.image, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("32 bytes"));
}

#[test]
fn tree_shapes_names_symlinks_and_stat_attributes() {
    let mut tree = TreeBuilder::new();
    tree.dir("empty");
    tree.file("empty.bin", Content::Bytes(Vec::new()));
    tree.file_with_mode("exec.sh", Content::Bytes(b"#!/bin/sh\n".to_vec()), 0o750);
    tree.file_with_mode("secret", Content::Bytes(pattern(1000, 3)), 0o600);
    tree.file(b"caf\xe9 \n.bin", Content::Bytes(b"latin-1 name".to_vec()));
    tree.symlink("link", "exec.sh");
    tree.symlink("dangling", "../nowhere/at/all");
    let deep: Vec<String> = (0..60).map(|i| format!("d{i}")).collect();
    let deep_path = deep.join("/");
    tree.file(format!("{deep_path}/leaf.txt"), Content::Bytes(b"deep".to_vec()));
    tree.dir("sub/a").dir("sub/b").dir("sub/c/x");
    let fx = Fixture::build(tree, 4096);
    let _m = fx.mount();
    let m = &fx.mnt;

    let names: HashSet<Vec<u8>> = std::fs::read_dir(m)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    let expect: HashSet<Vec<u8>> = [
        &b"empty"[..],
        b"empty.bin",
        b"exec.sh",
        b"secret",
        b"caf\xe9 \n.bin",
        b"link",
        b"dangling",
        b"d0",
        b"sub",
    ]
    .iter()
    .map(|n| n.to_vec())
    .collect();
    assert_eq!(names, expect);
    assert_eq!(std::fs::read_dir(m.join("empty")).unwrap().count(), 0);
    let latin = m.join(std::ffi::OsStr::from_bytes(b"caf\xe9 \n.bin"));
    assert_eq!(std::fs::read(latin).unwrap(), b"latin-1 name");
    assert_eq!(std::fs::read(m.join(&deep_path).join("leaf.txt")).unwrap(), b"deep");
    assert_eq!(std::fs::read_link(m.join("link")).unwrap(), Path::new("exec.sh"));
    assert_eq!(std::fs::read(m.join("link")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(
        std::fs::read_link(m.join("dangling")).unwrap(),
        Path::new("../nowhere/at/all")
    );
    assert_eq!(std::fs::read(m.join("empty.bin")).unwrap(), b"");

    let st = |p: &str| std::fs::symlink_metadata(m.join(p)).unwrap();
    let secret = st("secret");
    assert!(secret.is_file());
    assert_eq!((secret.len(), secret.mode() & 0o7777, secret.nlink()), (1000, 0o600, 1));
    assert_eq!(secret.blocks(), 2);
    assert_eq!(secret.uid(), 0);
    assert_eq!(st("exec.sh").mode() & 0o7777, 0o750);
    assert_eq!(st("empty.bin").blocks(), 0);
    let link = st("link");
    assert!(link.file_type().is_symlink());
    assert_eq!(link.len(), 7);
    // Directories: 2 + number of subdirectories.
    assert_eq!(st("sub").nlink(), 5);
    assert_eq!(st("sub/c").nlink(), 3);
    assert_eq!(st("empty").nlink(), 2);
    assert_eq!(std::fs::metadata(m).unwrap().nlink(), 2 + 3); // empty, d0, sub
    assert_eq!(st("sub").mode() & 0o7777, 0o755);
    // mtime from the index (nanoseconds included).
    let e = fx.built.index.entries.iter().find(|e| e.name == b"secret").unwrap();
    assert_eq!(
        (secret.mtime(), secret.mtime_nsec()),
        (e.mtime, i64::from(e.mtime_nsec))
    );
    // Read-only.
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(m.join("secret"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(
        std::fs::create_dir(m.join("new")).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    assert_eq!(
        std::fs::metadata(m.join("nope")).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    // Terminal ioctls (which Python's `open` and `stty` issue) get ENOTTY, as from a disk filesystem, and leave
    // no "not implemented" warning in the log.
    let stty = Command::new("stty").arg("-F").arg(m.join("secret")).output().unwrap();
    let err = String::from_utf8_lossy(&stty.stderr);
    assert!(
        !stty.status.success() && err.contains("Inappropriate ioctl"),
        "stty: {err}"
    );
    assert!(!fx.log().contains("Not Implemented"), "{}", fx.log());
}

#[test]
fn readdir_with_many_entries_lists_each_exactly_once() {
    let mut tree = TreeBuilder::new();
    let n = 5000;
    for i in 0..n {
        tree.file(
            format!("many/entry-with-a-longish-name-{i:05}"),
            Content::Bytes(vec![i as u8]),
        );
    }
    let fx = Fixture::build(tree, 4096);
    let _m = fx.mount();
    let mut seen = HashSet::new();
    for e in std::fs::read_dir(fx.mnt.join("many")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(seen.insert(name.clone()), "{name} listed twice");
    }
    assert_eq!(seen.len(), n);
    assert_eq!(
        std::fs::read(fx.mnt.join("many/entry-with-a-longish-name-04242")).unwrap(),
        [4242u32 as u8]
    );
}

/// The pid of the background daemon serving `mnt`.
fn daemon_pid(mnt: &Path) -> Option<i32> {
    let want = mnt.as_os_str().as_bytes();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.contains(&&b"--daemon-child"[..]) && args.contains(&want) {
            return Some(pid);
        }
    }
    None
}

fn kill(pid: i32, sig: &str) {
    assert!(
        Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success()
    );
}

fn pid_gone(pid: i32) -> bool {
    // A zombie counts as gone: it no longer serves anything.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.split(' ').nth(2) == Some("Z"),
        Err(_) => true,
    }
}

#[test]
fn sigterm_and_sigint_unmount_cleanly_and_the_unmount_command_too() {
    let (tree, files) = sizes_tree();
    let fx = Fixture::build(tree, CS);
    for how in ["-TERM", "-INT", "unmount"] {
        let m = fx.mount();
        assert_eq!(std::fs::read(fx.mnt.join(&files[3].0)).unwrap(), files[3].1);
        let pid = daemon_pid(&fx.mnt).expect("daemon pid");
        if how == "unmount" {
            m.unmount();
        } else {
            kill(pid, how);
            assert!(
                wait_for(Duration::from_secs(10), || !is_mounted(&fx.mnt)),
                "{how}: still mounted"
            );
        }
        assert!(
            wait_for(Duration::from_secs(10), || pid_gone(pid)),
            "{how}: daemon still running"
        );
        assert!(fx.log().contains(if how == "unmount" {
            "unmounted externally"
        } else {
            "unmounting"
        }));
    }
}

#[test]
fn a_killed_daemon_leaves_a_mountpoint_that_unmount_cleans_up() {
    let (tree, _) = sizes_tree();
    let fx = Fixture::build(tree, CS);
    let m = fx.mount();
    let pid = daemon_pid(&fx.mnt).expect("daemon pid");
    kill(pid, "-KILL");
    assert!(wait_for(Duration::from_secs(10), || pid_gone(pid)));
    assert!(is_mounted(&fx.mnt));
    let err = std::fs::read_dir(&fx.mnt).unwrap_err();
    // Over io_uring, a request that reaches a queue while the dead daemon's ring is still being torn down (the
    // kernel does that after the process is gone) ends with ECANCELED; later ones with ENOTCONN.
    let uring = common::expected_transport() == "uring";
    assert!(
        matches!(err.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED))
            || (uring && err.raw_os_error() == Some(libc::ECANCELED)),
        "stale mount should fail with ENOTCONN or ECONNABORTED: {err}"
    );
    let again = std::fs::read_dir(&fx.mnt).unwrap_err();
    assert!(
        matches!(
            again.raw_os_error(),
            Some(libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED)
        ),
        "{again}"
    );
    m.unmount();
    // The mountpoint is usable again.
    fx.mount().unmount();
}

#[test]
fn foreground_mode_serves_until_sigint() {
    let (tree, files) = sizes_tree();
    let fx = Fixture::build(tree, CS);
    let _guard = MountGuard { mnt: fx.mnt.clone() };
    let mut child = encfs_bin()
        .arg("mount")
        .arg(&fx.image)
        .arg(&fx.mnt)
        .arg("--key-file")
        .arg(&fx.key_file)
        .arg("--foreground")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(20), || is_mounted(&fx.mnt)));
    assert_eq!(std::fs::read(fx.mnt.join(&files[4].0)).unwrap(), files[4].1);
    kill(child.id() as i32, "-INT");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&fx.mnt));
}

#[test]
fn refuses_a_missing_image_and_a_missing_mountpoint() {
    let (tree, _) = sizes_tree();
    let fx = Fixture::build(tree, CS);
    let out = fx.mount_cmd(&fx.dir.path().join("nope.img"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = encfs_bin()
        .arg("mount")
        .arg(&fx.image)
        .arg(fx.dir.path().join("no-such-dir"))
        .arg("--key-file")
        .arg(&fx.key_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = encfs_bin().arg("unmount").arg(fx.dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a mountpoint"));
}

/// Restores the mode of /dev/fuse on drop.
struct DevFuseMode(u32);

impl Drop for DevFuseMode {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(self.0));
    }
}

#[test]
fn a_non_root_user_can_mount_read_and_unmount_through_fusermount3() {
    const NOBODY: u32 = 65534;
    if !Path::new("/usr/bin/fusermount3").exists() && !Path::new("/bin/fusermount3").exists() {
        panic!("fusermount3 is missing: install the fuse3 package (scripts/setup.sh does)");
    }
    let data = pattern(300_000, 9);
    let mut tree = TreeBuilder::new();
    tree.file("model.bin", Content::Bytes(data.clone()));
    let fx = Fixture::build(tree, CS);
    let mode = std::fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777;
    let _restore = DevFuseMode(mode);
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
    for p in [fx.dir.path(), &fx.image, &fx.key_file] {
        let m = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    std::os::unix::fs::chown(&fx.mnt, Some(NOBODY), Some(NOBODY)).unwrap();
    let logs = tempfile::tempdir().unwrap();
    std::fs::set_permissions(logs.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let log = logs.path().join("daemon.log");
    let _guard = MountGuard { mnt: fx.mnt.clone() };
    let as_nobody = |cmd: &mut Command| {
        use std::os::unix::process::CommandExt;
        cmd.uid(NOBODY)
            .gid(NOBODY)
            .env_remove("HOME")
            .current_dir("/")
            .output()
            .unwrap()
    };
    let out = as_nobody(
        encfs_bin()
            .arg("mount")
            .arg(&fx.image)
            .arg(&fx.mnt)
            .arg("--key-file")
            .arg(&fx.key_file)
            .arg("--log-file")
            .arg(&log),
    );
    assert!(
        out.status.success(),
        "non-root mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&fx.mnt));
    // A non-root daemon gets io_uring too (mounted through fusermount3, which hands it the /dev/fuse descriptor).
    let text = std::fs::read_to_string(&log).unwrap();
    let transport = common::expected_transport();
    assert!(
        text.contains(&format!("transport={transport}")),
        "expected {transport}: {text}"
    );
    let out = as_nobody(Command::new("sha256sum").arg(fx.mnt.join("model.bin")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    use sha2::Digest;
    let want = hex::encode(sha2::Sha256::digest(&data));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&want));
    let out = as_nobody(encfs_bin().arg("unmount").arg(&fx.mnt));
    assert!(
        out.status.success(),
        "non-root unmount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&fx.mnt));
}

#[test]
fn the_mmap_source_serves_the_same_bytes_and_detects_tampering() {
    let t = tamper_fixture();
    let m = t.fx.mount_image(&t.fx.image, &["--io", "mmap"]);
    for (name, data) in &t.files {
        assert!(std::fs::read(t.fx.mnt.join(name)).unwrap() == *data, "{name}");
    }
    m.unmount();
    let c = t.chunks.iter().find(|c| c.1 == 9).unwrap();
    let mut b = t.image.clone();
    b[(c.2 + 5) as usize] ^= 0x40;
    let img = t.write(&b);
    let m = t.fx.mount_image(&img, &["--io", "mmap"]);
    let bad = c.4..c.4 + c.5;
    check_no_wrong_bytes(&t.fx.mnt.join("a.bin"), &t.files[0].1, std::slice::from_ref(&bad));
    m.unmount();
}
