//! Real FUSE mounts of seed-style legacy images (LUKS2 aes-xts-plain64 + ext4, `fixtures/make-luks2.sh`)
//! through the `cinfer-encfs` binary: byte-exact reads of every file, the no-integrity warning, refusals.
//! Needs root (or /dev/fuse + fusermount3), like `tests/mount.rs`.

#![allow(clippy::unwrap_used)]

#[path = "fixtures/legacy_fixture.rs"]
mod legacy_fixture;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use legacy_fixture::{Fixture, Node, disk_tree, make};

fn encfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cinfer-encfs"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn is_mounted(mnt: &Path) -> bool {
    let want = mnt.canonicalize().unwrap().to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Unmounts on drop (lazily if a test failed half-way).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = encfs().arg("unmount").arg("--lazy").arg(&self.0).output();
        }
    }
}

fn mount(fx: &Fixture, key: &Path, extra: &[&str]) -> (Output, PathBuf, PathBuf) {
    let mnt = fx.dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let log = fx.dir.path().join("daemon.log");
    let out = encfs()
        .arg("mount")
        .arg(&fx.image)
        .arg(&mnt)
        .arg("--key-file")
        .arg(key)
        .arg("--log-file")
        .arg(&log)
        .args(extra)
        .output()
        .unwrap();
    (out, mnt, log)
}

/// The mounted tree (lost+found left out), files read with `std::fs::read`.
fn mounted_tree(mnt: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut tree = disk_tree(mnt);
    tree.retain(|k, _| !k.starts_with(b"lost+found"));
    tree
}

#[test]
fn legacy_image_mounts_and_reads_byte_exact() {
    for sector in [4096, 512] {
        let fx = make(sector, "pbkdf2", None);
        let (out, mnt, log) = mount(&fx, &fx.key, &[]);
        assert!(out.status.success(), "{}", text(&out));
        let _guard = Mounted(mnt.clone());
        assert!(is_mounted(&mnt));

        assert_eq!(mounted_tree(&mnt), disk_tree(&fx.src), "sector size {sector}");

        // Random positioned reads in the big file, including across the end.
        let want = std::fs::read(fx.src.join("weights/big.bin")).unwrap();
        let f = std::fs::File::open(mnt.join("weights/big.bin")).unwrap();
        for (off, len) in [(0usize, 1usize), (4095, 2), (1 << 20, 300_000), (want.len() - 5, 100)] {
            let mut buf = vec![0u8; len];
            let n = f.read_at(&mut buf, off as u64).unwrap();
            let end = (off + len).min(want.len());
            assert_eq!(&buf[..n], &want[off..end], "pread at {off}+{len}");
        }
        // Read-only.
        assert!(std::fs::OpenOptions::new().write(true).open(mnt.join("one")).is_err());
        drop(f);
        let meta = std::fs::metadata(mnt.join("bin/run.sh")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);

        let un = encfs().arg("unmount").arg(&mnt).output().unwrap();
        assert!(un.status.success(), "{}", text(&un));
        assert!(!is_mounted(&mnt));
        let log = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            log.matches("XTS gives no integrity").count(),
            1,
            "the no-integrity warning, exactly once: {log}"
        );
    }
}

#[test]
fn legacy_mount_with_the_wrong_key_is_refused() {
    let fx = make(4096, "pbkdf2", None);
    let wrong = fx.dir.path().join("wrong.key");
    std::fs::write(&wrong, [1u8; 32]).unwrap();
    let (out, mnt, _) = mount(&fx, &wrong, &[]);
    let _guard = Mounted(mnt.clone());
    assert!(!out.status.success());
    assert!(text(&out).contains("no keyslot opened with this key"), "{}", text(&out));
    assert!(!is_mounted(&mnt));
}

#[test]
fn legacy_mount_refuses_a_root_pin() {
    let fx = make(4096, "pbkdf2", None);
    let (out, mnt, _) = mount(&fx, &fx.key, &["--expect-root", &"00".repeat(32)]);
    let _guard = Mounted(mnt.clone());
    assert!(!out.status.success());
    assert!(text(&out).contains("legacy LUKS2 image"), "{}", text(&out));
    assert!(!is_mounted(&mnt));
}

#[test]
fn corrupt_file_is_eio_and_the_rest_reads() {
    let fx = make(4096, "pbkdf2", Some("/weights/big.bin"));
    let (out, mnt, _) = mount(&fx, &fx.key, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let _guard = Mounted(mnt.clone());
    let err = std::fs::read(mnt.join("weights/big.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    for (path, node) in disk_tree(&fx.src) {
        if path == b"weights/big.bin" {
            continue;
        }
        if let Node::File(_, data) = node {
            let p = mnt.join(std::ffi::OsStr::from_bytes(&path));
            assert_eq!(std::fs::read(&p).unwrap(), data, "{}", p.display());
        }
    }
    // The daemon is still serving after the failures.
    assert!(std::fs::read(mnt.join("one")).is_ok());
}
