//! Shared helpers for encfs integration tests: build images in process, run the real binary, clean up mounts.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use encfs::format::ModelKey;
use encfs::testing::{BuiltImage, TreeBuilder};

/// The binary under test.
pub fn encfs_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cinfer-encfs"))
}

/// A tempdir holding an image, its key file and a mountpoint.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub key_file: PathBuf,
    pub key: ModelKey,
    pub mnt: PathBuf,
    pub built: BuiltImage,
    pub tree: TreeBuilder,
    pub chunk_size: u32,
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

impl Fixture {
    /// Builds `tree` into a new tempdir (under `/dev/shm` when `in_shm`, else the default temp dir).
    pub fn build_in(tree: TreeBuilder, chunk_size: u32, in_shm: bool) -> Self {
        let dir = if in_shm && Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm").unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let key = ModelKey::generate();
        let key_file = dir.path().join("model.key");
        std::fs::write(&key_file, key.expose()).unwrap();
        let image = dir.path().join("model.img");
        let mut w = std::io::BufWriter::with_capacity(4 << 20, std::fs::File::create(&image).unwrap());
        let built = tree.write_image(&mut w, &key, chunk_size).unwrap();
        std::io::Write::flush(&mut w).unwrap();
        drop(w);
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        Self {
            dir,
            image,
            key_file,
            key,
            mnt,
            built,
            tree,
            chunk_size,
        }
    }

    /// Builds a sparse image of `tree` under `/dev/shm` (or the temp dir), sealing only chunks where `keep`.
    pub fn build_sparse(tree: TreeBuilder, chunk_size: u32, keep: &dyn Fn(u64) -> bool) -> Self {
        let dir = if Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm").unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let key = ModelKey::generate();
        let key_file = dir.path().join("model.key");
        std::fs::write(&key_file, key.expose()).unwrap();
        let image = dir.path().join("model.img");
        let mut f = std::fs::File::create(&image).unwrap();
        let built = tree.write_sparse_image(&mut f, &key, chunk_size, keep).unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        Self {
            dir,
            image,
            key_file,
            key,
            mnt,
            built,
            tree,
            chunk_size,
        }
    }

    /// Builds `tree` in the default temp dir.
    pub fn build(tree: TreeBuilder, chunk_size: u32) -> Self {
        Self::build_in(tree, chunk_size, false)
    }

    /// Runs `cinfer-encfs mount IMAGE MNT --key-file KEY` plus `extra` and returns its output.
    pub fn mount_cmd(&self, image: &Path, extra: &[&str]) -> Output {
        let log = self.dir.path().join("daemon.log");
        encfs_bin()
            .arg("mount")
            .arg(image)
            .arg(&self.mnt)
            .arg("--key-file")
            .arg(&self.key_file)
            .arg("--log-file")
            .arg(&log)
            .args(extra)
            .output()
            .unwrap()
    }

    /// Mounts the fixture's image; panics with the daemon's message on failure.
    pub fn mount(&self) -> MountGuard {
        self.mount_image(&self.image, &[])
    }

    /// Mounts `image` (maybe a tampered copy) with the fixture's key.
    pub fn mount_image(&self, image: &Path, extra: &[&str]) -> MountGuard {
        let guard = MountGuard { mnt: self.mnt.clone() };
        let out = self.mount_cmd(image, extra);
        assert!(
            out.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            is_mounted(&self.mnt),
            "mount returned but nothing is mounted; stderr: {}; daemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        guard
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }
}

/// The FUSE transport the daemon picks in this run (`--transport auto`, the default): `classic` when
/// `CINFER_ENCFS_TRANSPORT=classic` (the test script's second pass) or when the kernel does not offer io_uring
/// (`fuse.enable_uring` off, or a kernel before 6.14), else `uring`.
pub fn expected_transport() -> &'static str {
    let asked = std::env::var("CINFER_ENCFS_TRANSPORT").unwrap_or_default();
    let offered = std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|v| v.trim() == "Y" || v.trim() == "1");
    if asked == "classic" || !offered {
        "classic"
    } else {
        "uring"
    }
}

/// The CPUs the kernel keeps FUSE io_uring queues for (`/sys/devices/system/cpu/possible`).
pub fn possible_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    s.trim()
        .split(',')
        .filter_map(|r| r.rsplit('-').next()?.parse::<usize>().ok())
        .max()
        .unwrap()
        + 1
}

/// How many of the possible CPUs are online (`/sys/devices/system/cpu/online`, a list such as "0-3,8").
pub fn online_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    s.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// True if `mnt` is a mountpoint (per /proc/self/mountinfo).
pub fn is_mounted(mnt: &Path) -> bool {
    let canon = mnt.canonicalize().unwrap_or_else(|_| mnt.to_path_buf());
    let want = canon.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Waits until `cond` holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Unmounts on drop (lazily, so a failing test never leaves a mount behind).
pub struct MountGuard {
    pub mnt: PathBuf,
}

impl MountGuard {
    /// Unmounts through the CLI, asserting success.
    pub fn unmount(self) {
        let out = encfs_bin().arg("unmount").arg(&self.mnt).output().unwrap();
        assert!(
            out.status.success(),
            "unmount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!is_mounted(&self.mnt));
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = encfs_bin().arg("unmount").arg("--lazy").arg(&self.mnt).output();
        }
    }
}
