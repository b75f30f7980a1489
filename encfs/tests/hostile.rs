//! The daemon against a hostile storage provider and careless input (issue 17): no crash from any answer, no
//! secret in errors, logs or the process table, bounded memory before the image is authenticated, safe key files.
//! Real FUSE mounts, real HTTP servers on loopback (`fixtures/hostile_server.rs` answers as each test tells it).

#![allow(clippy::unwrap_used)]

mod common;
#[path = "fixtures/hostile_server.rs"]
mod hostile_server;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Fixture, pattern, wait_for};
use encfs::source::{BlobError, BlobKey, BlobMeta, BlobSource, ETag, MemSource};
use encfs::testing::{Content, TreeBuilder};
use hostile_server::{Answer, HostileServer, partial, status};

const CS: u32 = 64 << 10;

/// A fixture with one 4 MiB file.
fn fixture() -> (Fixture, Vec<u8>) {
    let data = pattern(4 << 20, 17);
    let mut tree = TreeBuilder::new();
    tree.file("weights.bin", Content::Bytes(data.clone()));
    (Fixture::build(tree, CS), data)
}

/// Reads `len` bytes at `off` of `path` on another thread; `None` if it takes longer than `limit` (a dead or
/// wedged mount must fail the test, not hang it).
fn read_at_within(path: &Path, off: u64, len: usize, limit: Duration) -> Option<std::io::Result<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let r = File::open(&path).and_then(|f| {
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, off).map(|()| buf)
        });
        let _ = tx.send(r);
    });
    rx.recv_timeout(limit).ok()
}

/// The `major:minor` device of the mount on top at `mnt`, from the mount table (which never asks the mount).
fn mount_dev(mnt: &Path) -> Option<(u32, u32)> {
    let want = mnt.canonicalize().ok()?.to_string_lossy().replace(' ', "\\040");
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = table
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(want.as_str()))?;
    let (a, b) = line.split(' ').nth(2)?.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Makes sure the FUSE control filesystem is mounted (to abort a connection as a dying daemon would leave it).
fn fusectl() -> PathBuf {
    let dir = PathBuf::from("/sys/fs/fuse/connections");
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    if !table
        .lines()
        .any(|l| l.contains(" /sys/fs/fuse/connections ") && l.contains(" - fusectl "))
    {
        let out = std::process::Command::new("mount")
            .args(["-t", "fusectl", "none"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting fusectl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// Aborts the FUSE connection of the mount at `mnt`: its request threads see the device gone, the mount stays
/// in the table answering ENOTCONN (what a daemon whose threads all died leaves behind).
fn abort_connection(mnt: &Path) {
    let (_, minor) = mount_dev(mnt).expect("a mount");
    std::fs::write(fusectl().join(minor.to_string()).join("abort"), "1").unwrap();
}

// ---------------------------------------------------------------------------------------------------------------
// Item 1: no panic from the network.

#[test]
fn retry_after_of_u64_max_is_eio_and_the_daemon_serves_on() {
    let (fx, data) = fixture();
    let image = Arc::new(std::fs::read(&fx.image).unwrap());
    let total = image.len() as u64;
    let img = image.clone();
    let srv = HostileServer::start(move |r| partial(&img, total, r.range));
    let url = format!("{}/m.img", srv.base);
    let guard = fx.mount_image(
        Path::new(&url),
        &[
            "--threads",
            "2",
            "--read-ahead-kb",
            "0",
            "--retry-budget",
            "5",
            "--request-timeout",
            "2",
        ],
    );
    let path = fx.mnt.join("weights.bin");
    // Every read now gets 503 with the largest Retry-After there is (u64::MAX seconds).
    srv.set(|_| status(503, &["Retry-After: 18446744073709551615"]));
    // More reads than request threads: each is EIO at once (the wait is past the budget), none kills a thread.
    for i in 0..6u64 {
        let t = Instant::now();
        let r = read_at_within(&path, i * (512 << 10), 4096, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("read {i} hangs: the mount is wedged"));
        let err = r.expect_err("a 503 forever cannot be data");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "read {i}: {err}");
        assert!(t.elapsed() < Duration::from_secs(5), "read {i} took {:?}", t.elapsed());
    }
    // The provider recovers: the same mount serves the right bytes.
    srv.set(move |r| partial(&image, total, r.range));
    let got = read_at_within(&path, 3 << 20, 8192, Duration::from_secs(20))
        .expect("read hangs")
        .unwrap();
    assert!(got[..] == data[3 << 20..(3 << 20) + 8192]);
    assert!(!fx.log().contains("panicked"), "{}", fx.log());
    guard.unmount();
}

/// A source that panics on every read while `panic` is set (a bug anywhere below the FUSE adapter).
struct PanickySource {
    inner: MemSource,
    panic: Arc<AtomicBool>,
}

impl BlobSource for PanickySource {
    type Error = std::convert::Infallible;

    async fn stat(&self, key: &BlobKey) -> Result<BlobMeta, BlobError<Self::Error>> {
        self.inner.stat(key).await
    }

    async fn read_range(
        &self,
        key: &BlobKey,
        range: std::ops::Range<u64>,
        if_match: Option<&ETag>,
    ) -> Result<Bytes, BlobError<Self::Error>> {
        assert!(!self.panic.load(Ordering::SeqCst), "injected panic in read_range");
        self.inner.read_range(key, range, if_match).await
    }
}

#[test]
fn a_panicking_request_is_eio_and_never_shrinks_the_request_threads() {
    let (fx, data) = fixture();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let inner = MemSource::new();
    let key = BlobKey::new("img");
    inner.put(key.clone(), std::fs::read(&fx.image).unwrap());
    let panic = Arc::new(AtomicBool::new(false));
    let src = PanickySource {
        inner,
        panic: panic.clone(),
    };
    let fs = rt
        .block_on(encfs::fs::EncFs::open(
            src,
            key,
            &fx.key,
            None,
            encfs::fs::EncFsConfig::default(),
        ))
        .unwrap();
    let cfg = encfs::fuse::MountConfig {
        threads: 2,
        ..encfs::fuse::MountConfig::default()
    };
    let session = encfs::fuse::mount(Arc::new(fs), rt.handle().clone(), &fx.mnt, &cfg).unwrap();
    let path = fx.mnt.join("weights.bin");
    panic.store(true, Ordering::SeqCst);
    // Three times as many panics as request threads: each read is EIO and the next is still served.
    for i in 0..6u64 {
        let r = read_at_within(&path, i * (512 << 10), 4096, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("read {i} hangs: no request thread left"));
        let err = r.expect_err("a panicking source cannot give data");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "read {i}: {err}");
    }
    assert!(!session.is_finished());
    panic.store(false, Ordering::SeqCst);
    let got = read_at_within(&path, 1 << 20, 4096, Duration::from_secs(10))
        .expect("read hangs")
        .unwrap();
    assert!(got[..] == data[1 << 20..(1 << 20) + 4096]);
    session.unmount().unwrap();
}

#[test]
fn a_daemon_whose_filesystem_dies_detaches_it_and_exits() {
    let (fx, _) = fixture();
    let guard = fx.mount();
    abort_connection(&fx.mnt);
    // The daemon notices its request threads ended, detaches the dead mount and exits with an error in its log.
    assert!(
        wait_for(Duration::from_secs(10), || !common::is_mounted(&fx.mnt)),
        "a dead mount is left behind: {}",
        fx.log()
    );
    assert!(
        wait_for(Duration::from_secs(5), || fx.log().contains("stopped serving")),
        "{}",
        fx.log()
    );
    drop(guard);
}

// ---------------------------------------------------------------------------------------------------------------
// Item 2: no secret in errors, logs, status files or the process table.

/// Every process's command line (NUL-separated arguments joined by spaces).
fn all_cmdlines() -> Vec<(i32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")))
        })
        .collect()
}

#[test]
fn a_url_that_cannot_be_reached_shows_no_credentials_and_is_named_once() {
    let (fx, _) = fixture();
    // A closed port: every request fails to be sent (a transport error, which names its URL).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://reader:PASSWORD@127.0.0.1:{port}/models/m.img?sv=2024&sig=SECRETSIG");
    let out = fx.mount_cmd(Path::new(&url), &["--retry-budget", "1", "--request-timeout", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let everything = format!("{err}\n{}", fx.log());
    for secret in ["SECRETSIG", "PASSWORD", "reader:", "sv=2024"] {
        assert!(!everything.contains(secret), "{secret} shown:\n{everything}");
    }
    let shown = format!("http://127.0.0.1:{port}/models/m.img");
    let line = err
        .lines()
        .find(|l| l.contains("gave up"))
        .unwrap_or_else(|| panic!("{err}"));
    assert_eq!(
        line.matches(&shown).count(),
        1,
        "the URL is named more than once: {line}"
    );
    assert!(line.contains("Connection refused"), "{line}");
}

#[test]
fn a_url_with_credentials_stays_out_of_the_process_table_and_the_mount_table() {
    let (fx, data) = fixture();
    let image = Arc::new(std::fs::read(&fx.image).unwrap());
    let total = image.len() as u64;
    let srv = HostileServer::start(move |r| partial(&image, total, r.range));
    let port = srv.base.rsplit(':').next().unwrap().to_string();
    let url = format!("http://reader:TABLEPASS@127.0.0.1:{port}/m.img?sig=TABLESECRET");
    // On the command line (the caller is warned), then on standard input.
    for via_stdin in [false, true] {
        let log = fx.dir.path().join("daemon.log");
        let mut cmd = common::encfs_bin();
        cmd.arg("mount")
            .arg(if via_stdin { "-" } else { &url })
            .arg(&fx.mnt)
            .arg("--key-file")
            .arg(&fx.key_file)
            .arg("--log-file")
            .arg(&log)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().unwrap();
            if via_stdin {
                writeln!(stdin, "{url}").unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert_eq!(err.contains("warning: the URL's credentials"), !via_stdin, "{err}");
        let guard = common::MountGuard { mnt: fx.mnt.clone() };
        assert!(std::fs::read(fx.mnt.join("weights.bin")).unwrap() == data);
        // The daemon serves, and no process's command line holds the credentials.
        for (pid, cmd) in all_cmdlines() {
            assert!(
                !cmd.contains("TABLESECRET") && !cmd.contains("TABLEPASS"),
                "process {pid} shows the credentials: {cmd}"
            );
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains("TABLESECRET") && !mounts.contains("TABLEPASS"),
            "{mounts}"
        );
        assert!(
            !fx.log().contains("TABLESECRET") && !fx.log().contains("TABLEPASS"),
            "{}",
            fx.log()
        );
        guard.unmount();
        assert!(wait_for(Duration::from_secs(10), || !all_cmdlines().iter().any(
            |(_, c)| c.contains("--daemon-child") && c.contains(fx.mnt.to_str().unwrap())
        )));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Item 4: an unauthenticated header cannot make the daemon allocate.

/// Runs `cmd` to completion and returns its exit code and peak RSS in KiB (`wait4`'s `ru_maxrss`).
#[allow(unsafe_code)]
fn run_measuring_rss(cmd: &mut std::process::Command) -> (Option<i32>, u64) {
    let child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value to be overwritten by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not waited for yet; status and usage are valid for writes.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid);
    std::mem::forget(child);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, usage.ru_maxrss as u64)
}

#[test]
fn a_header_raising_the_index_length_to_1_gib_is_refused_within_the_cache_budget() {
    let (fx, _) = fixture();
    let image = std::fs::read(&fx.image).unwrap();
    let root = hex::encode(fx.built.root);
    // Keep everything (the key check stays valid), but declare a 1 GiB index; the provider announces a blob long
    // enough to hold it and serves zeros past the real bytes.
    let mut header = encfs::format::Header::decode(image[..encfs::format::HEADER_LEN].try_into().unwrap()).unwrap();
    header.index_len = 1 << 30;
    let total = header.image_len();
    let mut forged = image;
    forged[..encfs::format::HEADER_LEN].copy_from_slice(&header.encode().unwrap());
    let forged = Arc::new(forged);
    let srv = HostileServer::start(move |r| partial(&forged, total, r.range));
    let url = format!("{}/m.img", srv.base);
    let t = Instant::now();
    let (code, rss_kib) = run_measuring_rss(
        common::encfs_bin()
            .arg("mount")
            .arg(&url)
            .arg(&fx.mnt)
            .arg("--key-file")
            .arg(&fx.key_file)
            .args(["--foreground", "--cache-size", "64", "--expect-root", &root])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    eprintln!(
        "forged 1 GiB index: exit {code:?} after {:?}, peak RSS {} MiB, {} requests",
        t.elapsed(),
        rss_kib >> 10,
        srv.requests()
    );
    assert_eq!(code, Some(1), "a forged header must be refused");
    assert!(!common::is_mounted(&fx.mnt));
    assert!(
        rss_kib < 64 << 10,
        "peak RSS {} MiB before refusal, over the 64 MiB budget",
        rss_kib >> 10
    );
    // The message says why, before anything past the header was read.
    let out = fx.mount_cmd(Path::new(&url), &["--cache-size", "64", "--expect-root", &root]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("index length 1073741824 exceeds") && err.contains("--cache-size"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Item 7: key files and outputs handled safely.

/// Runs `cmd`, killing it after `limit`; returns its output, or `None` if it had to be killed.
fn output_within(cmd: &mut std::process::Command, limit: Duration) -> Option<std::process::Output> {
    use std::os::unix::process::CommandExt as _;
    // Bounds a daemon that would read /dev/zero until memory runs out (4 GiB of address space).
    #[allow(unsafe_code)]
    // SAFETY: setrlimit is async-signal-safe; the closure touches no other state.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 4 << 30,
                rlim_max: 4 << 30,
            };
            libc::setrlimit(libc::RLIMIT_AS, &lim);
            Ok(())
        });
    }
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while t.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn key_files_that_are_devices_or_fifos_are_refused_at_once_and_open_ones_are_warned_about() {
    let (fx, data) = fixture();
    let fifo = fx.dir.path().join("key.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    #[allow(unsafe_code)]
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0);
    for (key, kind) in [(Path::new("/dev/zero"), "character device"), (fifo.as_path(), "FIFO")] {
        let out = output_within(
            common::encfs_bin()
                .arg("mount")
                .arg(&fx.image)
                .arg(&fx.mnt)
                .arg("--key-file")
                .arg(key),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("mount with key file {} hangs", key.display()));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(&format!("is a {kind}, not a regular file")), "{err}");
        assert!(!common::is_mounted(&fx.mnt));
    }
    // No daemon was left behind waiting on the FIFO.
    assert!(!all_cmdlines().iter().any(|(_, c)| c.contains("key.fifo")));
    // A key file others may read still mounts, with a warning where the operator sees it.
    std::fs::set_permissions(&fx.key_file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = fx.mount_cmd(&fx.image, &[]);
    let guard = common::MountGuard { mnt: fx.mnt.clone() };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("mode 0644"), "{err}");
    assert!(std::fs::read(fx.mnt.join("weights.bin")).unwrap() == data);
    guard.unmount();
}

#[test]
fn the_disk_cache_never_writes_through_planted_symlinks_and_keeps_its_files_private() {
    use std::os::unix::fs::PermissionsExt;
    let (fx, data) = fixture();
    let image = Arc::new(std::fs::read(&fx.image).unwrap());
    let total = image.len() as u64;
    let srv = HostileServer::start(move |r| partial(&image, total, r.range));
    let url = format!("{}/m.img", srv.base);
    let cache = tempfile::tempdir().unwrap();
    // Someone who can write in the cache directory plants symlinks where the daemon will write.
    let id = encfs::cache::disk::identity(&url, "\"v1\"", total);
    let idir = cache.path().join(&id);
    std::fs::create_dir(&idir).unwrap();
    std::fs::set_permissions(&idir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let victim = fx.dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    for part in 0..4 {
        for name in [format!("{part}.d"), format!("{part}.m.tmp")] {
            std::os::unix::fs::symlink(&victim, idir.join(name)).unwrap();
        }
    }
    let dir = cache.path().to_str().unwrap();
    let guard = fx.mount_image(Path::new(&url), &["--read-ahead-kb", "0", "--cache-dir", dir]);
    assert!(std::fs::read(fx.mnt.join("weights.bin")).unwrap() == data);
    guard.unmount();
    assert!(wait_for(Duration::from_secs(10), || !all_cmdlines().iter().any(
        |(_, c)| c.contains("--daemon-child") && c.contains(fx.mnt.to_str().unwrap())
    )));
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"precious",
        "the cache wrote through a symlink"
    );
    // A fresh cache: directories 0700, files 0600, set at creation.
    let fresh = cache.path().join("fresh");
    let guard = fx.mount_image(
        Path::new(&url),
        &["--read-ahead-kb", "0", "--cache-dir", fresh.to_str().unwrap()],
    );
    assert!(std::fs::read(fx.mnt.join("weights.bin")).unwrap() == data);
    guard.unmount();
    assert!(wait_for(Duration::from_secs(10), || !all_cmdlines().iter().any(
        |(_, c)| c.contains("--daemon-child") && c.contains(fx.mnt.to_str().unwrap())
    )));
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fresh), 0o700);
    let idir = fresh.join(&id);
    assert_eq!(mode(&idir), 0o700);
    let files: Vec<_> = std::fs::read_dir(&idir).unwrap().flatten().map(|e| e.path()).collect();
    assert!(files.len() > 2, "{files:?}");
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    // A cache directory others can write to is not used (the mount still works).
    let open = cache.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let guard = fx.mount_image(
        Path::new(&url),
        &["--read-ahead-kb", "0", "--cache-dir", open.to_str().unwrap()],
    );
    assert!(std::fs::read(fx.mnt.join("weights.bin")).unwrap() == data);
    guard.unmount();
    assert!(fx.log().contains("writable by group or others"), "{}", fx.log());
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
}

// ---------------------------------------------------------------------------------------------------------------
// Item 5: mount and unmount that do what they say.

/// Mounts a tmpfs on `dir` (unmounted again by the returned guard).
fn tmpfs(dir: &Path) -> impl Drop {
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "cinfer-test-tmpfs"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
    Umount(dir.to_path_buf())
}

#[test]
fn unmount_refuses_what_is_not_a_cinfer_mount() {
    let (fx, _) = fixture();
    let t = fx.dir.path().join("tmpfs");
    let _tmpfs = tmpfs(&t);
    let bind = fx.dir.path().join("bind");
    std::fs::create_dir(&bind).unwrap();
    assert!(
        std::process::Command::new("mount")
            .args(["--bind"])
            .arg(fx.dir.path().join("mnt"))
            .arg(&bind)
            .status()
            .unwrap()
            .success()
    );
    for (p, what) in [(&t, "tmpfs"), (&bind, "not a cinfer-encfs mount")] {
        let out = common::encfs_bin().arg("unmount").arg(p).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(what) && err.contains("refusing to unmount"), "{err}");
        assert!(common::is_mounted(p), "{} was unmounted", p.display());
    }
    let _ = std::process::Command::new("umount").arg("-l").arg(&bind).status();
    // Ours is unmounted, also after its daemon was killed.
    let guard = fx.mount();
    guard.unmount();
}

#[test]
fn a_second_mount_on_a_mounted_point_is_refused_and_nothing_stacks() {
    let (fx, data) = fixture();
    let guard = fx.mount_image(&fx.image, &["--expect-root", &hex::encode(fx.built.root)]);
    let out = fx.mount_cmd(&fx.image, &["--expect-root", &hex::encode(fx.built.root)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("already a cinfer-encfs mount"), "{err}");
    let want = fx.mnt.canonicalize().unwrap();
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let stacked = table
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(want.to_str().unwrap()))
        .count();
    assert_eq!(stacked, 1, "mounts at {}: {stacked}", want.display());
    assert!(std::fs::read(fx.mnt.join("weights.bin")).unwrap() == data);
    guard.unmount();
}

#[test]
fn threads_are_validated_and_clamped_to_the_open_file_limit_never_wedging_the_mount() {
    use std::os::unix::process::CommandExt as _;
    let (fx, data) = fixture();
    for bad in ["0", "65", "100000"] {
        let out = fx.mount_cmd(&fx.image, &["--threads", bad]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "--threads {bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // 64 threads need 64 cloned /dev/fuse fds; the limit is 40, hard. That also leaves no room for the io_uring
    // transport's rings (the 64 descriptors kept spare come first), so `auto` takes the classic one and
    // `uring` is refused, naming the limit.
    let log = fx.dir.path().join("daemon.log");
    let limited = |transport: &str| {
        let mut cmd = common::encfs_bin();
        cmd.arg("mount")
            .arg(&fx.image)
            .arg(&fx.mnt)
            .arg("--key-file")
            .arg(&fx.key_file)
            .arg("--log-file")
            .arg(&log)
            .args(["--threads", "64", "--transport", transport]);
        #[allow(unsafe_code)]
        // SAFETY: setrlimit is async-signal-safe; the closure touches no other state.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 40,
                    rlim_max: 40,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                Ok(())
            });
        }
        cmd
    };
    let refused = limited("uring").output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("io_uring transport is not available") && !common::is_mounted(&fx.mnt),
        "{stderr}"
    );
    if common::expected_transport() == "uring" {
        assert!(stderr.contains("open-file limit (40)"), "{stderr}");
    }
    let mut cmd = limited("auto");
    let guard = common::MountGuard { mnt: fx.mnt.clone() };
    let Some(out) = output_within(&mut cmd, Duration::from_secs(20)) else {
        // The daemon is wedged on a mount nobody serves: abort it so the test can clean up, then fail.
        abort_connection(&fx.mnt);
        panic!(
            "mount with --threads 64 under a 40-fd limit never returned: {}",
            fx.log()
        );
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = read_at_within(&fx.mnt.join("weights.bin"), 0, data.len(), Duration::from_secs(20))
        .expect("the mount hangs")
        .unwrap();
    assert!(got == data);
    assert!(fx.log().contains("fewer FUSE request threads"), "{}", fx.log());
    assert!(fx.log().contains("transport=classic"), "{}", fx.log());
    guard.unmount();
}

#[test]
fn unsupported_schemes_are_named_and_file_urls_mount() {
    let (fx, data) = fixture();
    for (src, scheme) in [
        ("ftp://h/m.img", "ftp"),
        ("file://host/m.img", "file"),
        ("s3://b/m.img", "s3"),
    ] {
        let out = fx.mount_cmd(Path::new(src), &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(&format!("unsupported source {scheme}://")), "{err}");
        assert!(!err.contains("not found"), "{err}");
    }
    let url = format!("file://{}", fx.image.display());
    let guard = fx.mount_image(Path::new(&url), &[]);
    assert!(std::fs::read(fx.mnt.join("weights.bin")).unwrap() == data);
    guard.unmount();
}

#[test]
fn an_unpinned_mount_warns_loudly_and_the_sidecar_refuses_a_relative_mount_point() {
    let (fx, _) = fixture();
    let out = fx.mount_cmd(&fx.image, &[]);
    let guard = common::MountGuard { mnt: fx.mnt.clone() };
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("UNPINNED MOUNT"), "{err}");
    assert!(fx.log().contains("UNPINNED MOUNT"), "{}", fx.log());
    guard.unmount();
    let out = fx.mount_cmd(&fx.image, &["--expect-root", &hex::encode(fx.built.root)]);
    let guard = common::MountGuard { mnt: fx.mnt };
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("UNPINNED"));
    guard.unmount();

    let json = r#"{"azure_filesystems":[{"azure_url":"file:///srv/m.img","azure_url_private":false,
        "mount_point":"models","key":{"kid":"k","kty":"oct-HSM","authority":{"endpoint":"https://maa.example"},
        "akv":{"endpoint":"https://kv.example"}}}]}"#;
    let e = encfs::sidecar::config::SidecarConfig::from_json(json.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("mount_point models is relative"), "{e}");
    let ok = json.replace("\"models\"", "\"/mnt/models\"");
    encfs::sidecar::config::SidecarConfig::from_json(ok.as_bytes()).unwrap();
}

// ---------------------------------------------------------------------------------------------------------------
// Item 3: keys out of core dumps and freed when done.

/// How many times `needle` occurs in the readable memory of process `pid` (read through /proc/PID/mem, as root).
fn occurrences_in_memory(pid: i32, needle: &[u8]) -> usize {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut found = 0;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (u64::from_str_radix(a, 16).unwrap(), u64::from_str_radix(b, 16).unwrap());
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        found += buf.windows(needle.len()).filter(|w| *w == needle).count();
    }
    found
}

/// The pid of the background daemon serving `mnt`.
fn daemon_pid(mnt: &Path) -> i32 {
    let want = mnt.to_str().unwrap();
    all_cmdlines()
        .into_iter()
        .find(|(_, c)| c.contains("--daemon-child") && c.split(' ').any(|a| a == want))
        .map(|(p, _)| p)
        .expect("the daemon")
}

#[test]
fn a_ready_daemon_holds_no_copy_of_the_model_key_and_is_not_dumpable() {
    let (fx, data) = fixture();
    let guard = fx.mount_image(&fx.image, &["--expect-root", &hex::encode(fx.built.root)]);
    assert!(std::fs::read(fx.mnt.join("weights.bin")).unwrap() == data);
    let pid = daemon_pid(&fx.mnt);
    let copies = occurrences_in_memory(pid, fx.key.expose());
    eprintln!("raw model key copies in the ready daemon: {copies}");
    assert_eq!(copies, 0, "the ready daemon still holds the raw model key");
    assert!(fx.log().contains("process not dumpable"), "{}", fx.log());
    guard.unmount();
    // The same for a remote image (another source, a part cache, HTTP).
    let image = Arc::new(std::fs::read(&fx.image).unwrap());
    let total = image.len() as u64;
    let srv = HostileServer::start(move |r| partial(&image, total, r.range));
    let url = format!("{}/m.img", srv.base);
    let guard = fx.mount_image(Path::new(&url), &["--expect-root", &hex::encode(fx.built.root)]);
    assert!(std::fs::read(fx.mnt.join("weights.bin")).unwrap() == data);
    let copies = occurrences_in_memory(daemon_pid(&fx.mnt), fx.key.expose());
    assert_eq!(
        copies, 0,
        "the ready daemon of a remote image still holds the raw model key"
    );
    guard.unmount();
}

// ---------------------------------------------------------------------------------------------------------------
// Item 6: waits a reader can live with, recovery without amplification.

#[test]
fn a_stalled_server_gives_eio_within_the_retry_budget_and_recovery_is_immediate() {
    let (fx, data) = fixture();
    let image = Arc::new(std::fs::read(&fx.image).unwrap());
    let total = image.len() as u64;
    let img = image.clone();
    let srv = HostileServer::start(move |r| partial(&img, total, r.range));
    let url = format!("{}/m.img", srv.base);
    // The default kernel readahead (2 MiB): a failed readahead READ is followed by the kernel's own page READ.
    let guard = fx.mount_image(Path::new(&url), &["--retry-budget", "4", "--request-timeout", "1"]);
    let path = fx.mnt.join("weights.bin");
    // The server stalls: it takes requests and never answers.
    srv.set(|_| {
        std::thread::sleep(Duration::from_secs(60));
        Answer::Close
    });
    let t = Instant::now();
    let r = read_at_within(&path, 2 << 20, 4096, Duration::from_secs(30)).expect("the read hangs");
    let took = t.elapsed();
    eprintln!("stalled server: EIO after {took:?} with --retry-budget 4");
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EIO));
    assert!(
        took < Duration::from_millis(5500),
        "EIO after {took:?}, more than the 4 s budget"
    );
    // While it stays down, a further read makes one attempt (1 s here) rather than spend a budget, and reads
    // alongside it fail at once.
    let t = Instant::now();
    let r = read_at_within(&path, 3 << 20, 4096, Duration::from_secs(30)).expect("the read hangs");
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EIO));
    eprintln!("a read during the outage: EIO after {:?}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "a read during a known outage took {:?}",
        t.elapsed()
    );
    // It answers again: the next read succeeds at once (within a probe interval).
    srv.set(move |r| partial(&image, total, r.range));
    let t = Instant::now();
    let got = loop {
        match read_at_within(&path, 3 << 20, 4096, Duration::from_secs(30)).expect("the read hangs") {
            Ok(b) => break b,
            Err(e) if t.elapsed() < Duration::from_secs(3) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO));
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("still {e} {:?} after the server recovered", t.elapsed()),
        }
    };
    eprintln!("recovered {:?} after the server answered again", t.elapsed());
    assert!(got[..] == data[3 << 20..(3 << 20) + 4096]);
    guard.unmount();
}

#[test]
fn page_by_page_rereads_fetch_each_chunk_once() {
    let (fx, data) = fixture();
    let image = Arc::new(std::fs::read(&fx.image).unwrap());
    let total = image.len() as u64;
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (img, n) = (image, served.clone());
    let srv = HostileServer::start(move |r| {
        if let Some((a, b)) = r.range {
            n.fetch_add(b.min(total) - a.min(total), Ordering::SeqCst);
        }
        partial(&img, total, r.range)
    });
    let url = format!("{}/m.img", srv.base);
    let guard = fx.mount_image(Path::new(&url), &["--read-ahead-kb", "0"]);
    // What the kernel does after a failed readahead: one 4 KiB READ per page (no readahead: FADV_RANDOM).
    let f = File::open(fx.mnt.join("weights.bin")).unwrap();
    {
        use std::os::fd::AsRawFd as _;
        #[allow(unsafe_code)]
        // SAFETY: a valid fd; advice only.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        assert_eq!(rc, 0);
    }
    let (before_bytes, before_reqs) = (served.load(Ordering::SeqCst), srv.requests());
    let span = 1u64 << 20;
    let mut buf = vec![0u8; 4096];
    for off in (0..span).step_by(4096) {
        f.read_exact_at(&mut buf, off).unwrap();
        assert!(buf[..] == data[off as usize..off as usize + 4096]);
    }
    let fetched = served.load(Ordering::SeqCst) - before_bytes;
    let reqs = srv.requests() - before_reqs;
    eprintln!("1 MiB read in 4 KiB pages: {reqs} requests, {fetched} bytes fetched");
    assert!(
        fetched < 2 * span,
        "{fetched} bytes fetched for a 1 MiB page-by-page read"
    );
    drop(f);
    guard.unmount();
}
