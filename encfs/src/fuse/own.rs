//! The project's own FUSE session, for both transports: it mounts (mount(2) as root, [`super::fusermount`]
//! otherwise), answers INIT and serves requests through [`serve::dispatch`], over `/dev/fuse` (classic) or over
//! io_uring (Linux 6.14+, `CONFIG_FUSE_IO_URING`, module parameter `fuse.enable_uring`). `fuser` 0.18, which
//! carried the classic transport before, has no io_uring transport and its session cannot host a second one (it
//! answers INIT itself and refuses `FUSE_OVER_IO_URING`); one session for both keeps one INIT, one set of mount
//! options and one dispatcher, whose request parsing ([`super::proto`]) is fuzzed. The mount counts as io_uring
//! once every queue thread has registered its ring ([`Registrations`]): the kernel moves requests to the rings
//! only then.
//!
//! Classic: after INIT, request threads (`--threads`, as many as the open-file limit allows) each read and answer
//! requests on their own clone of the `/dev/fuse` descriptor (`FUSE_DEV_IOC_CLONE`: each clone has its own queue of
//! requests being processed, so the threads do not contend on one; a reply goes back on the descriptor its request
//! came from). A thread serves one request at a time.
//!
//! Shape (after the kernel's `Documentation/filesystems/fuse-io-uring.rst` and libfuse 3.18): one thread reads
//! `/dev/fuse`, which carries INIT, FORGET and INTERRUPT always, and every request until the rings are ready;
//! once INIT has agreed on io_uring, each queue (one per possible CPU: the kernel queues a request on the queue of
//! the CPU that issued it, and needs every queue registered before it uses any) is served by two or more threads,
//! each owning a ring with one entry ([`Shape`]: at least `--threads` threads in all). A thread serves one request
//! at a time, as a classic request thread does. One entry per ring matters: the kernel hands a request to the
//! first free entry of its queue, so a thread holding several entries would take a second request while busy with
//! the first, and it would wait there while another thread of the queue idles (measured: a lone reader's two
//! READs in flight were all served by one thread, one core busy and the other half idle). With one entry each, a
//! busy thread has no free entry and the next request goes to an idle thread. A lone reader's requests all come
//! from its CPU, hence two threads per queue at least: the two READs the kernel keeps in flight for a 2 MiB
//! readahead window are decrypted at once.
//! An entry is a header buffer and a payload buffer of `max_pages` pages: the kernel
//! writes a request into it and completes the entry's command; the queue thread answers in the same buffers and
//! sends COMMIT_AND_FETCH, which hands the reply over and waits for the next request, no system call per request
//! beyond the ring's. A READ is decrypted straight into the entry's payload ([`crate::tree::ReadReply::buffer`]),
//! so the plaintext is copied once, by the kernel, as on the classic transport. A read answered later on another
//! thread fills its entry there and wakes the queue thread through an eventfd read held in its ring.
//!
//! Unstable knobs, for measurements (a warning is logged when one is set): `CINFER_UNSTABLE_URING_DEPTH`
//! (entries per ring),
//! `CINFER_UNSTABLE_URING_THREADS_PER_QUEUE` (threads, each with its own ring, registered on the same queue),
//! `CINFER_UNSTABLE_URING_PIN=1` (pin each queue thread to its CPU, as libfuse does).

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use tracing::{debug, info, warn};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::MountConfig;
use super::abi::{self, init};
use super::proto;
use super::serve::{self, Responder};
use crate::fs::MAX_READ;
use crate::tree::ReadOnlyTree;

/// Serving threads per queue at least: a lone reader's requests all land on one queue (see the module docs).
const MIN_THREADS_PER_QUEUE: usize = 2;
/// Pages of one request's data (1 MiB, `FUSE_MAX_MAX_PAGES`): the payload buffer of every ring entry.
const MAX_PAGES: u16 = 256;
/// Buffer for one `/dev/fuse` request: a read-only filesystem gets no write data, only names and xattr values
/// (the kernel wants room for a header and `max_write`, 4 KiB, at least 8 KiB in all).
const DEV_BUFFER: usize = 128 << 10;
/// `FUSE_DEV_IOC_CLONE` (`_IOR(229, 0, uint32_t)`): attaches a newly opened `/dev/fuse` descriptor to the
/// connection of the descriptor whose number it is given.
const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;
/// The ring's user data for the eventfd read.
const WAKE: u64 = u64::MAX;

/// The module parameter that lets the kernel offer FUSE over io_uring.
pub(crate) const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether the kernel will offer FUSE over io_uring: `Err` says why not.
pub(crate) fn uring_available() -> Result<(), String> {
    match std::fs::read_to_string(ENABLE_URING) {
        Ok(v) if v.trim() == "Y" || v.trim() == "1" => {}
        Ok(_) => return Err(format!("{ENABLE_URING} is off (root: echo Y > {ENABLE_URING})")),
        Err(e) => {
            return Err(format!(
                "{ENABLE_URING}: {e} (kernel without CONFIG_FUSE_IO_URING, before 6.14)"
            ));
        }
    }
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // 0: anyone may make rings; 1: root and `kernel.io_uring_group` only; 2: nobody (Linux 6.6+).
    match std::fs::read_to_string(IO_URING_DISABLED).map(|v| v.trim().to_string()) {
        Ok(v) if v == "2" => return Err(format!("io_uring is disabled ({IO_URING_DISABLED} is 2)")),
        Ok(v) if v == "1" && !root => {
            return Err(format!(
                "io_uring is limited to privileged processes ({IO_URING_DISABLED} is 1)"
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Who may make io_uring rings (`kernel.io_uring_disabled`).
const IO_URING_DISABLED: &str = "/proc/sys/kernel/io_uring_disabled";

/// How long INIT waits for the queue threads to register their rings before serving through `/dev/fuse`.
const REGISTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The queue threads' registrations, counted as they are made: the kernel carries requests over io_uring only
/// once every queue has registered, so the mount is reported as io_uring only then.
#[derive(Default)]
struct Registrations {
    /// Threads that registered, and threads that failed before they could.
    done: Mutex<(usize, usize)>,
    cv: std::sync::Condvar,
}

impl Registrations {
    fn report(&self, ok: bool) {
        let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            d.0 += 1;
        } else {
            d.1 += 1;
        }
        self.cv.notify_all();
    }

    /// Waits until `threads` threads have reported (or `timeout` passed): whether all of them registered.
    fn all_registered(&self, threads: usize, timeout: std::time::Duration) -> bool {
        let d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        let (d, _) = self
            .cv
            .wait_timeout_while(d, timeout, |d| d.0 + d.1 < threads)
            .unwrap_or_else(|p| p.into_inner());
        d.0 == threads
    }
}

/// Reports a queue thread's registration as failed unless it was reported done.
struct ReportOnDrop<'a> {
    regs: &'a Registrations,
    reported: bool,
}

impl ReportOnDrop<'_> {
    fn registered(&mut self) {
        self.reported = true;
        self.regs.report(true);
    }
}

impl Drop for ReportOnDrop<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.regs.report(false);
        }
    }
}

/// The CPUs the kernel counts queues for (`num_possible_cpus`): one more than the highest in
/// `/sys/devices/system/cpu/possible` ("0-15", "0,2-3").
fn possible_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| cpu_list(&s))
        .and_then(|l| l.into_iter().max())
        .map_or_else(
            || std::thread::available_parallelism().map_or(1, usize::from),
            |m| m + 1,
        )
}

/// Which of the first `n` CPUs are online (`/sys/devices/system/cpu/online`); all of them if that is unreadable.
fn online_cpus(n: usize) -> Vec<bool> {
    let Some(list) = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| cpu_list(&s))
    else {
        return vec![true; n];
    };
    let mut online = vec![false; n];
    for cpu in list.into_iter().filter(|&c| c < n) {
        online[cpu] = true;
    }
    online
}

/// The CPUs of a kernel CPU list ("0-15", "0,2-3"); `None` if it is malformed or empty.
fn cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let a = part.parse::<usize>().ok()?;
                (a, a)
            }
        };
        // The kernel has at most a few thousand CPUs; a larger range is not a CPU list.
        if b < a || b > 1 << 16 {
            return None;
        }
        cpus.extend(a..=b);
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// How a mount's rings are laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Queues: one per possible CPU.
    pub(crate) queues: usize,
    /// Serving threads of the queue of an online CPU, each with its own ring (a thread serves one request at a
    /// time, as a classic request thread does). A possible CPU that is not online (a hotplug slot) issues no
    /// request, so its queue, which the kernel needs registered all the same, gets one thread.
    pub(crate) threads_per_queue: usize,
    /// Entries per ring.
    pub(crate) depth: usize,
    /// Pin each queue's threads to the queue's CPU (libfuse does; off by default, see [`queue_loop`]).
    pub(crate) pin: bool,
    /// Whether each queue's CPU is online.
    online: Vec<bool>,
}

impl Shape {
    /// At least `threads` serving threads in all over the online CPUs' queues (the classic transport's request
    /// threads: what may block at once, e.g. on the network) and [`MIN_THREADS_PER_QUEUE`] per such queue, each
    /// ring with one entry. `CINFER_UNSTABLE_URING_THREADS_PER_QUEUE` and `CINFER_UNSTABLE_URING_DEPTH` override.
    pub(crate) fn for_threads(threads: usize) -> Self {
        let queues = possible_cpus();
        let shape = Self::of(online_cpus(queues), threads);
        let threads_per_queue =
            env_usize("CINFER_UNSTABLE_URING_THREADS_PER_QUEUE", shape.threads_per_queue).clamp(1, 16);
        let depth = env_usize("CINFER_UNSTABLE_URING_DEPTH", shape.depth).clamp(1, 64);
        let pin = env_usize("CINFER_UNSTABLE_URING_PIN", 0) == 1;
        Self {
            threads_per_queue,
            depth,
            pin,
            ..shape
        }
    }

    /// The layout for one queue per entry of `online` (whether its CPU is online) and `threads` serving threads
    /// wanted.
    fn of(mut online: Vec<bool>, threads: usize) -> Self {
        if online.is_empty() {
            online.push(true);
        }
        let serving = online.iter().filter(|&&o| o).count().max(1);
        Self {
            queues: online.len(),
            threads_per_queue: threads.div_ceil(serving).clamp(MIN_THREADS_PER_QUEUE, 16),
            depth: 1,
            pin: false,
            online,
        }
    }

    /// Serving threads of queue `qid`.
    fn threads_of(&self, qid: usize) -> usize {
        if self.online.get(qid).copied().unwrap_or(true) {
            self.threads_per_queue
        } else {
            1
        }
    }

    /// Serving threads in all.
    pub(crate) fn threads(&self) -> usize {
        (0..self.queues).map(|q| self.threads_of(q)).sum()
    }

    /// File descriptors the mount opens: `/dev/fuse`, and a ring and an eventfd per serving thread.
    pub(crate) fn fds(&self) -> usize {
        1 + 2 * self.threads()
    }
}

/// A mount served by this module.
#[derive(Debug)]
pub(crate) struct OwnSession {
    mountpoint: std::path::PathBuf,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    dev_done: Arc<AtomicBool>,
    uring: Arc<Decision>,
    keep_mount: bool,
}

/// Whether a mount's requests travel over io_uring, decided by the `/dev/fuse` thread once INIT was answered and
/// the queues registered (or failed to), or when the connection ended before.
#[derive(Debug, Default)]
struct Decision {
    uring: Mutex<Option<bool>>,
    cv: std::sync::Condvar,
}

impl Decision {
    /// Records the outcome; only the first one counts.
    fn decide(&self, uring: bool) {
        let mut d = self.uring.lock().unwrap_or_else(|p| p.into_inner());
        if d.is_none() {
            *d = Some(uring);
            self.cv.notify_all();
        }
    }

    /// The outcome, waiting up to `timeout` for it; not decided by then counts as no.
    fn wait(&self, timeout: std::time::Duration) -> bool {
        let d = self.uring.lock().unwrap_or_else(|p| p.into_inner());
        let (d, _) = self
            .cv
            .wait_timeout_while(d, timeout, |d| d.is_none())
            .unwrap_or_else(|p| p.into_inner());
        d.unwrap_or(false)
    }
}

struct Shared<T> {
    tree: T,
    /// The connection's `/dev/fuse` descriptor (INIT's; the classic request threads may hold clones).
    dev: Arc<OwnedFd>,
    cfg: MountConfig,
    /// The rings' layout when io_uring is wanted (`None`: classic only).
    shape: Option<Shape>,
    /// Request threads when the mount is served through `/dev/fuse`.
    classic_threads: usize,
    uring: Arc<Decision>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// An unstable tuning knob from the environment (`CINFER_UNSTABLE_URING_*`, for measurements), else `default`.
fn env_usize(name: &str, default: usize) -> usize {
    let Ok(v) = std::env::var(name) else {
        return default;
    };
    match v.parse() {
        Ok(n) => {
            warn!(value = n, "{name} is set");
            n
        }
        Err(e) => {
            warn!(value = %v, "{name} ignored: {e}");
            default
        }
    }
}

/// Mounts `tree` read-only at `mountpoint` and serves it: over io_uring laid out as `shape` when one is given and
/// INIT offers it, else through `/dev/fuse` with `classic_threads` request threads.
pub(crate) fn mount<T: ReadOnlyTree>(
    tree: T,
    mountpoint: &Path,
    cfg: &MountConfig,
    shape: Option<Shape>,
    classic_threads: usize,
) -> io::Result<OwnSession> {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let dev = Arc::new(if root {
        mount_as_root(mountpoint, cfg)?
    } else {
        let options = format!(
            "ro,nosuid,nodev,subtype=cinfer-encfs,fsname={},{}",
            super::fusermount::escape_option(&cfg.fs_name),
            fuse_options(cfg)
        );
        super::fusermount::mount(mountpoint, &options)?
    });
    let uring = Arc::new(Decision::default());
    let threads = Arc::new(Mutex::new(Vec::new()));
    let dev_done = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared {
        tree,
        dev,
        cfg: cfg.clone(),
        shape,
        classic_threads: classic_threads.max(1),
        uring: uring.clone(),
        threads: threads.clone(),
    });
    let done = dev_done.clone();
    let spawned = std::thread::Builder::new().name("encfs-fuse-0".into()).spawn(move || {
        dev_loop(&shared, &shared.dev.clone());
        // The connection ended, INIT or not.
        shared.uring.decide(false);
        done.store(true, Ordering::Release);
    });
    let handle = match spawned {
        Ok(h) => h,
        Err(e) => {
            // Nobody would serve the new mount: take it away again.
            let _ = super::detach(mountpoint);
            return Err(e);
        }
    };
    threads.lock().unwrap_or_else(|p| p.into_inner()).push(handle);
    Ok(OwnSession {
        mountpoint: mountpoint.to_path_buf(),
        threads,
        dev_done,
        uring,
        keep_mount: false,
    })
}

impl OwnSession {
    /// True once the connection has ended (`/dev/fuse` answers `ENODEV`).
    pub(crate) fn is_finished(&self) -> bool {
        self.dev_done.load(Ordering::Acquire)
    }

    /// Whether requests travel over io_uring: waits (up to the queues' registration time) for the `/dev/fuse`
    /// thread to know, once INIT was answered.
    pub(crate) fn uses_uring(&self) -> bool {
        self.uring.wait(REGISTER_TIMEOUT + std::time::Duration::from_secs(1))
    }

    /// Unmounts and waits for the serving threads.
    pub(crate) fn unmount(mut self) -> io::Result<()> {
        match super::unmount_path(&self.mountpoint, false) {
            // EINVAL: no longer mounted.
            Err(e) if e.raw_os_error() != Some(libc::EINVAL) => return Err(e),
            _ => {}
        }
        self.keep_mount = true;
        self.join();
        Ok(())
    }

    /// Ends the session without touching the mount point again (it was unmounted from outside).
    pub(crate) fn forget(mut self) {
        self.keep_mount = true;
        // Closing our fd ends nothing while threads hold theirs; they end with the connection.
        drop(std::mem::take(
            &mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()),
        ));
    }

    fn join(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for OwnSession {
    /// Detaches the mount lazily; the serving threads end with the connection (not joined here: a detached mount
    /// stays connected while files on it are open).
    fn drop(&mut self) {
        if self.keep_mount {
            return;
        }
        let _ = super::detach(&self.mountpoint);
    }
}

/// The FUSE mount options either way of mounting passes: permission checks by the kernel, the largest read, and
/// `allow_other` when asked.
fn fuse_options(cfg: &MountConfig) -> String {
    let mut options = format!("default_permissions,max_read={MAX_READ}");
    if cfg.allow_other {
        options.push_str(",allow_other");
    }
    options
}

/// Opens `/dev/fuse` and mounts it at `mountpoint` with mount(2) (root).
fn mount_as_root(mountpoint: &Path, cfg: &MountConfig) -> io::Result<OwnedFd> {
    let path = CString::new("/dev/fuse").map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated path; the returned fd is owned below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("/dev/fuse: {e}")));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let dev = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let data = format!(
        "fd={fd},rootmode=40000,user_id={uid},group_id={gid},{}",
        fuse_options(cfg)
    );
    let source = CString::new(cfg.fs_name.as_bytes()).map_err(io::Error::other)?;
    let target = CString::new(mountpoint.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let fstype = CString::new("fuse.cinfer-encfs").map_err(io::Error::other)?;
    let data = CString::new(data).map_err(io::Error::other)?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("mount {}: {e}", mountpoint.display())));
    }
    Ok(dev)
}

/// Writes one reply to `/dev/fuse`. `ENOENT` (the request was interrupted) is not an error.
fn write_reply(dev: &OwnedFd, unique: u64, error: i32, args: &[&[u8]]) {
    let len: usize = args.iter().map(|a| a.len()).sum();
    let h = proto::out_header(unique, error, if error == 0 { len } else { 0 });
    let mut iov = Vec::with_capacity(1 + args.len());
    iov.push(libc::iovec {
        iov_base: h.as_bytes().as_ptr() as *mut _,
        iov_len: h.as_bytes().len(),
    });
    if error == 0 {
        for a in args {
            iov.push(libc::iovec {
                iov_base: a.as_ptr() as *mut _,
                iov_len: a.len(),
            });
        }
    }
    // SAFETY: every iovec points into a live slice for the duration of the call.
    let rc = unsafe { libc::writev(dev.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            debug!(unique, "FUSE reply not taken: {e}");
        }
    }
}

/// A request thread's READ reply buffer: [`MAX_READ`] bytes starting on a page boundary, as the rings' payload
/// buffers do. The kernel copies a READ reply into page-cache pages; from a source at another offset within its
/// page that copy costs much more on the project's AMD EPYC machines (the copy FS, which only preads its file into
/// the buffer and replies: 0.41 instead of 0.29 daemon CPU-s per GiB with the buffer 16 bytes past a page
/// boundary, which is where glibc puts a block it maps on its own). A READ of an image is decrypted straight into it.
struct ReplyBuf {
    bytes: Vec<u8>,
    start: usize,
}

impl ReplyBuf {
    const PAGE: usize = 4096;

    fn new() -> Self {
        let bytes = vec![0u8; MAX_READ as usize + Self::PAGE];
        let start = bytes.as_ptr().align_offset(Self::PAGE);
        Self { bytes, start }
    }

    fn payload(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + MAX_READ as usize]
    }
}

/// Where a request thread keeps its [`ReplyBuf`] between requests: a reply takes it and puts it back once sent (a
/// reply sent later, from another thread, leaves the thread's next request without one, answered from the tree's
/// own buffer then).
type ReplyBufHome = Arc<Mutex<Option<ReplyBuf>>>;

/// A reply over `/dev/fuse`, on the descriptor its request came from.
struct DevResponder {
    dev: Arc<OwnedFd>,
    unique: u64,
    done: bool,
    buf: Option<ReplyBuf>,
    home: Option<ReplyBufHome>,
}

impl DevResponder {
    /// A responder for request `unique` read from `dev`, with the reply buffer kept in `home` if it is there.
    fn new(dev: &Arc<OwnedFd>, unique: u64, home: Option<&ReplyBufHome>) -> Self {
        let buf = home.and_then(|h| h.lock().unwrap_or_else(|p| p.into_inner()).take());
        Self {
            dev: dev.clone(),
            unique,
            done: false,
            buf,
            home: home.cloned(),
        }
    }
}

impl Responder for DevResponder {
    fn send(mut self, error: i32, args: &[&[u8]]) {
        self.done = true;
        write_reply(&self.dev, self.unique, error, args);
    }

    fn silent(mut self) {
        self.done = true;
    }

    fn buffer(&mut self) -> Option<&mut [u8]> {
        self.buf.as_mut().map(ReplyBuf::payload)
    }

    fn send_filled(mut self, len: usize) {
        self.done = true;
        match self.buf.as_mut() {
            Some(b) => {
                let payload = b.payload();
                write_reply(&self.dev, self.unique, 0, &[&payload[..len.min(payload.len())]]);
            }
            None => write_reply(&self.dev, self.unique, -libc::EIO, &[]),
        }
    }
}

impl Drop for DevResponder {
    fn drop(&mut self) {
        if !self.done {
            write_reply(&self.dev, self.unique, -libc::EIO, &[]);
        }
        if let (Some(buf), Some(home)) = (self.buf.take(), self.home.as_ref()) {
            *home.lock().unwrap_or_else(|p| p.into_inner()) = Some(buf);
        }
    }
}

/// Reads requests from `dev` (the connection's descriptor or a clone of it) until the connection ends: INIT, then
/// whatever the kernel sends this way. Each reply goes back on `dev`.
fn dev_loop<T: ReadOnlyTree>(shared: &Arc<Shared<T>>, dev: &Arc<OwnedFd>) {
    let mut buf = vec![0u8; DEV_BUFFER];
    // This thread's READ reply buffer, made for the first READ it serves (over io_uring, READs do not come this way).
    let mut home: Option<ReplyBufHome> = None;
    loop {
        // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(dev.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => continue,
                Some(libc::ENODEV) => return,
                _ => {
                    warn!("reading /dev/fuse failed, the session ends: {e}");
                    return;
                }
            }
        }
        let msg = &buf[..n as usize];
        let (header, req) = match proto::parse_message(msg) {
            Ok(p) => p,
            Err(e) => {
                warn!("malformed FUSE request: {e}");
                if let Ok((h, _)) = abi::InHeader::read_from_prefix(msg) {
                    write_reply(dev, h.unique, -libc::EIO, &[]);
                }
                continue;
            }
        };
        // Only a READ takes the reply buffer; other requests' replies are a few bytes.
        let reply_buf = matches!(req, proto::Request::Read { .. })
            .then(|| &*home.get_or_insert_with(|| Arc::new(Mutex::new(Some(ReplyBuf::new())))));
        let r = DevResponder::new(dev, header.unique, reply_buf);
        match req {
            proto::Request::Init(init_in) => answer_init(shared, &init_in, r),
            req => serve::dispatch_guarded(&shared.tree, header.nodeid, req, r),
        }
    }
}

/// Answers INIT (protocol 7.x, the capabilities a read-only tree wants) and, when io_uring was agreed, starts
/// the queue threads.
fn answer_init<T: ReadOnlyTree>(shared: &Arc<Shared<T>>, init_in: &abi::InitIn, r: DevResponder) {
    if init_in.major != abi::KERNEL_VERSION {
        warn!(major = init_in.major, "unsupported FUSE protocol");
        r.send(-libc::EPROTO, &[]);
        return;
    }
    let offered = u64::from(init_in.flags) | (u64::from(init_in.flags2) << 32);
    let mut wanted = init::ASYNC_READ
        | init::BIG_WRITES
        | init::PARALLEL_DIROPS
        | init::MAX_PAGES
        | init::CACHE_SYMLINKS
        | init::INIT_EXT;
    let want_uring = shared.shape.is_some();
    let uring = want_uring && offered & init::OVER_IO_URING != 0;
    if uring {
        wanted |= init::OVER_IO_URING;
    }
    let flags = offered & wanted;
    let max_background = shared.cfg.max_background;
    let out = abi::InitOut {
        major: abi::KERNEL_VERSION,
        minor: init_in.minor.min(abi::KERNEL_MINOR_VERSION),
        max_readahead: init_in.max_readahead.min(MAX_READ),
        flags: flags as u32,
        max_background,
        congestion_threshold: (u32::from(max_background) * 3 / 4) as u16,
        max_write: 4096,
        time_gran: 1,
        max_pages: MAX_PAGES,
        flags2: (flags >> 32) as u32,
        ..Default::default()
    };
    r.send(0, &[out.as_bytes()]);
    let shape = match &shared.shape {
        Some(shape) if uring => shape,
        _ => {
            if want_uring {
                info!("the kernel did not offer FUSE over io_uring: serving through /dev/fuse");
            }
            serve_classic(shared);
            return;
        }
    };
    let arena = match PayloadArena::new(shape.threads() * shape.depth, usize::from(MAX_PAGES) * 4096) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            // No queue registers, so the kernel keeps every request on /dev/fuse.
            warn!("cannot map the io_uring payload buffers, serving through /dev/fuse: {e}");
            serve_classic(shared);
            return;
        }
    };
    let regs = Arc::new(Registrations::default());
    {
        let mut threads = shared.threads.lock().unwrap_or_else(|p| p.into_inner());
        let (depth, pin) = (shape.depth, shape.pin);
        let mut n = 0;
        for qid in 0..shape.queues {
            for _ in 0..shape.threads_of(qid) {
                let s = shared.clone();
                let (arena, mine) = (arena.clone(), regs.clone());
                let slots = n * depth..(n + 1) * depth;
                let spawned = std::thread::Builder::new()
                    .name(format!("encfs-uring-{n}"))
                    .spawn(move || {
                        let mut report = ReportOnDrop {
                            regs: &mine,
                            reported: false,
                        };
                        if let Err(e) = queue_loop(&s, qid, &arena, slots, pin, &mut report) {
                            warn!(queue = qid, "FUSE io_uring queue ended: {e}");
                        }
                    });
                match spawned {
                    Ok(h) => threads.push(h),
                    Err(e) => {
                        warn!(queue = qid, "cannot start a FUSE io_uring queue thread: {e}");
                        regs.report(false);
                    }
                }
                n += 1;
            }
        }
    }
    // Requests keep coming through /dev/fuse until every queue has registered; the mount counts as io_uring from
    // then on. A queue that failed leaves the kernel on /dev/fuse for good (the registered queues wait unused).
    if regs.all_registered(shape.threads(), REGISTER_TIMEOUT) {
        debug!(?shape, "FUSE io_uring queues registered");
        shared.uring.decide(true);
    } else {
        warn!("not every FUSE io_uring queue registered: serving through /dev/fuse");
        serve_classic(shared);
    }
}

/// Serves the mount through `/dev/fuse` from now on: the calling thread (`encfs-fuse-0`, which answered INIT) goes
/// on reading the connection's descriptor, and `classic_threads - 1` more request threads start (`encfs-fuse-1`,
/// ...), each on its own clone of it (or on the same descriptor where a clone cannot be made).
fn serve_classic<T: ReadOnlyTree>(shared: &Arc<Shared<T>>) {
    shared.uring.decide(false);
    let mut threads = shared.threads.lock().unwrap_or_else(|p| p.into_inner());
    for n in 1..shared.classic_threads {
        let dev = if shared.cfg.clone_fd {
            match clone_dev(&shared.dev) {
                Ok(fd) => Arc::new(fd),
                Err(e) => {
                    debug!("cannot clone the /dev/fuse descriptor, sharing it: {e}");
                    shared.dev.clone()
                }
            }
        } else {
            shared.dev.clone()
        };
        let s = shared.clone();
        match std::thread::Builder::new()
            .name(format!("encfs-fuse-{n}"))
            .spawn(move || dev_loop(&s, &dev))
        {
            Ok(h) => threads.push(h),
            Err(e) => {
                warn!(started = n, "cannot start more FUSE request threads: {e}");
                break;
            }
        }
    }
}

/// A new `/dev/fuse` descriptor attached to the connection of `dev` (`FUSE_DEV_IOC_CLONE`).
fn clone_dev(dev: &OwnedFd) -> io::Result<OwnedFd> {
    let path = c"/dev/fuse";
    // SAFETY: a valid NUL-terminated path; the returned fd is owned below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let clone = unsafe { OwnedFd::from_raw_fd(fd) };
    let master = dev.as_raw_fd() as u32;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the descriptor number) from the pointer, which is valid for it.
    if unsafe { libc::ioctl(clone.as_raw_fd(), FUSE_DEV_IOC_CLONE, &raw const master) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(clone)
}

/// The payload buffers of a mount's ring entries: one anonymous mapping, aligned to 2 MiB and marked for
/// transparent huge pages (`MADV_HUGEPAGE`; a hint, which `transparent_hugepage=never` ignores), so the kernel
/// pins and copies a reply's pages through a few huge pages rather than 256 small ones per READ (measured on 2 vCPUs:
/// ~4 % less daemon CPU per GiB read). Two 1 MiB buffers share a huge page; the memory is zero until a read uses it,
/// as before, and resident in huge pages from then on.
struct PayloadArena {
    map: *mut libc::c_void,
    map_len: usize,
    base: *mut u8,
    each: usize,
    count: usize,
}

// SAFETY: plain memory; which part of it whom may touch is decided by the entries that own the slots.
unsafe impl Send for PayloadArena {}
// SAFETY: as above; the arena itself is never written through `&self`.
unsafe impl Sync for PayloadArena {}

/// Huge page size the arena aligns to (x86-64 and arm64 with 4 KiB pages).
const HUGE_PAGE: usize = 2 << 20;

impl PayloadArena {
    /// `count` buffers of `each` bytes.
    fn new(count: usize, each: usize) -> io::Result<Self> {
        let len = count
            .checked_mul(each)
            .ok_or_else(|| io::Error::other("arena size overflows"))?;
        let map_len = len.next_multiple_of(HUGE_PAGE) + HUGE_PAGE;
        // SAFETY: an anonymous private mapping at an address of the kernel's choice; checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let skip = (map as usize).next_multiple_of(HUGE_PAGE) - map as usize;
        // SAFETY: `skip < HUGE_PAGE`, so the aligned base and `len` bytes after it lie inside the mapping.
        let base = unsafe { map.cast::<u8>().add(skip) };
        // SAFETY: advice on memory of this mapping; failure (no THP support) is harmless.
        unsafe { libc::madvise(base.cast(), len.next_multiple_of(HUGE_PAGE), libc::MADV_HUGEPAGE) };
        Ok(Self {
            map,
            map_len,
            base,
            each,
            count,
        })
    }

    /// Buffer `i` (`i < count`): `each` bytes, zero until written.
    fn slot(&self, i: usize) -> *mut u8 {
        assert!(i < self.count, "payload slot {i} of {}", self.count);
        // SAFETY: in bounds: i * each + each <= count * each, inside the mapping.
        unsafe { self.base.add(i * self.each) }
    }
}

impl Drop for PayloadArena {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; every entry (which holds an `Arc` of the arena) is
        // gone, and the rings that used the buffers with them.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// One ring entry's buffers, at fixed addresses the kernel reads and writes while the entry is registered: a
/// header of its own and a payload buffer from the mount's [`PayloadArena`].
struct Entry {
    header: *mut abi::UringReqHeader,
    payload: *mut u8,
    payload_len: usize,
    iov: Box<[libc::iovec; 2]>,
    /// Keeps the payload buffer mapped.
    _arena: Arc<PayloadArena>,
}

// SAFETY: the buffers are plain memory; who may touch them is decided by the entry's state (kernel between
// submit and completion, then exactly one responder), never by the thread.
unsafe impl Send for Entry {}

impl Entry {
    /// An entry with slot `slot` of `arena` as its payload buffer (each slot is given to one entry).
    fn new(arena: &Arc<PayloadArena>, slot: usize) -> Self {
        let header = Box::into_raw(Box::new(abi::UringReqHeader::new_zeroed()));
        let payload = arena.slot(slot);
        let payload_len = arena.each;
        let iov = Box::new([
            libc::iovec {
                iov_base: header.cast(),
                iov_len: size_of::<abi::UringReqHeader>(),
            },
            libc::iovec {
                iov_base: payload.cast(),
                iov_len: payload_len,
            },
        ]);
        Self {
            header,
            payload,
            payload_len,
            iov,
            _arena: arena.clone(),
        }
    }

    /// The header and payload, while this thread owns the entry (between its completion and its next commit).
    fn bufs(&mut self) -> (&mut abi::UringReqHeader, &mut [u8]) {
        // SAFETY: the header lives as long as `self`, the payload slot as long as the arena `self` holds; the
        // kernel does not touch them while the entry is owned, no other entry has this slot, and `&mut self`
        // makes this the only reference.
        unsafe {
            (
                &mut *self.header,
                std::slice::from_raw_parts_mut(self.payload, self.payload_len),
            )
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` by `Box::into_raw`, freed once here (the payload belongs to the arena).
        unsafe { drop(Box::from_raw(self.header)) };
    }
}

/// What a queue's entries share with responders on other threads.
struct Queue {
    entries: Vec<Mutex<Entry>>,
    /// Entries answered, waiting for their COMMIT_AND_FETCH.
    answered: Mutex<Vec<usize>>,
    wake: OwnedFd,
    /// The queue thread (a reply made on it needs no wake-up).
    thread: std::thread::ThreadId,
}

/// A reply into a ring entry.
struct RingResponder {
    queue: Arc<Queue>,
    idx: usize,
    unique: u64,
    done: bool,
    /// The entry's payload buffer (for [`Responder::buffer`]).
    payload: *mut u8,
    payload_len: usize,
}

// SAFETY: the payload pointer is the entry's, which this request owns until its reply is committed; the
// responder is used by one thread at a time.
unsafe impl Send for RingResponder {}

impl RingResponder {
    fn answer(&mut self, error: i32, args: &[&[u8]]) {
        self.done = true;
        {
            let mut e = self.queue.entries[self.idx].lock().unwrap_or_else(|p| p.into_inner());
            let (header, payload) = e.bufs();
            let mut len = 0usize;
            let mut error = error;
            if error == 0 {
                for a in args {
                    let Some(dst) = payload.get_mut(len..len + a.len()) else {
                        warn!(unique = self.unique, "FUSE reply larger than the ring buffer");
                        error = -libc::EIO;
                        len = 0;
                        break;
                    };
                    dst.copy_from_slice(a);
                    len += a.len();
                }
            }
            Self::set_header(header, self.unique, error, len);
        }
        self.commit_later();
    }

    /// Answers with the first `len` bytes already in the payload.
    fn answer_in_place(&mut self, len: usize) {
        self.done = true;
        {
            let mut e = self.queue.entries[self.idx].lock().unwrap_or_else(|p| p.into_inner());
            let (header, payload) = e.bufs();
            let len = len.min(payload.len());
            Self::set_header(header, self.unique, 0, len);
        }
        self.commit_later();
    }

    fn set_header(header: &mut abi::UringReqHeader, unique: u64, error: i32, len: usize) {
        let out = proto::out_header(unique, error, len);
        header.in_out[..size_of::<abi::OutHeader>()].copy_from_slice(out.as_bytes());
        header.ring_ent_in_out.payload_sz = len as u32;
    }

    /// Queues the entry's COMMIT_AND_FETCH on its queue thread (woken through the eventfd from elsewhere).
    fn commit_later(&mut self) {
        self.queue
            .answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.idx);
        if self.queue.thread != std::thread::current().id() {
            let one = 1u64;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd.
            unsafe { libc::write(self.queue.wake.as_raw_fd(), (&raw const one).cast(), 8) };
        }
    }
}

impl Responder for RingResponder {
    fn send(mut self, error: i32, args: &[&[u8]]) {
        self.answer(error, args);
    }

    fn buffer(&mut self) -> Option<&mut [u8]> {
        // SAFETY: the entry's payload allocation lives as long as its queue (held by `self.queue`), the kernel
        // does not touch it until this reply is committed, and `&mut self` makes this the only reference.
        Some(unsafe { std::slice::from_raw_parts_mut(self.payload, self.payload_len) })
    }

    fn send_filled(mut self, len: usize) {
        self.answer_in_place(len);
    }

    fn silent(mut self) {
        // Nothing that takes no reply travels over the ring; the entry still has to go back.
        self.answer(0, &[]);
    }
}

impl Drop for RingResponder {
    fn drop(&mut self) {
        if !self.done {
            self.answer(-libc::EIO, &[]);
        }
    }
}

/// The `IORING_OP_URING_CMD` entry for `entry` (register or commit-and-fetch).
fn command(dev: RawFd, cmd_op: u32, qid: u16, commit_id: u64, entry: &Entry, idx: usize) -> squeue::Entry128 {
    let req = abi::UringCmdReq {
        flags: 0,
        commit_id,
        qid,
        padding: [0; 6],
    };
    let mut cmd = [0u8; 80];
    cmd[..size_of::<abi::UringCmdReq>()].copy_from_slice(req.as_bytes());
    let sqe = opcode::UringCmd80::new(types::Fd(dev), cmd_op)
        .cmd(cmd)
        .addr(Some(entry.iov.as_ptr() as u64))
        .build()
        .user_data(idx as u64);
    with_iov_count(sqe, 2)
}

/// Sets the submission entry's `len` (the number of iovecs FUSE reads from `addr`), which `io-uring` 0.7's
/// `UringCmd80` builder does not expose.
fn with_iov_count(sqe: squeue::Entry128, n: u32) -> squeue::Entry128 {
    const LEN_OFFSET: usize = 24; // `struct io_uring_sqe`: opcode, flags, ioprio, fd, off, addr, then len.
    const _: () = assert!(size_of::<squeue::Entry128>() == 128);
    // SAFETY: `Entry128` is `repr(C)`: the kernel's 128-byte `io_uring_sqe` (plain integers and byte arrays, any
    // bit pattern valid); the bytes are changed only at the `len` field.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[LEN_OFFSET..LEN_OFFSET + 4].copy_from_slice(&n.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// Pins the calling thread to `cpu` (the kernel routes a CPU's requests to its queue); failure is harmless.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it; the syscall reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Serves queue `qid` with one entry per slot of `arena` in `slots`, until the connection ends.
fn queue_loop<T: ReadOnlyTree>(
    shared: &Arc<Shared<T>>,
    qid: usize,
    arena: &Arc<PayloadArena>,
    slots: std::ops::Range<usize>,
    pin: bool,
    report: &mut ReportOnDrop<'_>,
) -> io::Result<()> {
    let depth = slots.len();
    // Not pinned by default (libfuse pins): a lone sequential reader's requests all land on the queue of its
    // CPU, and a queue thread pinned there shares that core with the reader (measured on 2 cores: 1.5 GB/s
    // pinned, 2.1 GB/s not; see issue 23's note).
    if pin {
        pin_to(qid);
    }
    let dev = shared.dev.as_raw_fd();
    // SAFETY: eventfd has no memory preconditions; the fd is owned below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(io::Error::last_os_error());
    }
    let queue = Arc::new(Queue {
        entries: slots.map(|i| Mutex::new(Entry::new(arena, i))).collect(),
        answered: Mutex::new(Vec::new()),
        // SAFETY: just created, owned by nothing else.
        wake: unsafe { OwnedFd::from_raw_fd(efd) },
        thread: std::thread::current().id(),
    });
    let qid16 = qid as u16;
    let mut wake_buf = Box::new(0u64);
    // Made after the buffers its commands point at, so it is dropped (closed) before them, also on an early
    // return.
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = IoUring::builder()
        .setup_single_issuer()
        .build((depth as u32 + 1).next_power_of_two())?;
    let wake_read = |buf: &mut u64| {
        opcode::Read::new(types::Fd(queue.wake.as_raw_fd()), (buf as *mut u64).cast(), 8)
            .build()
            .user_data(WAKE)
            .into()
    };
    {
        let mut sq = ring.submission();
        for (idx, e) in queue.entries.iter().enumerate() {
            let e = e.lock().unwrap_or_else(|p| p.into_inner());
            let sqe = command(dev, abi::URING_CMD_REGISTER, qid16, 0, &e, idx);
            // SAFETY: the entry's buffers and iovecs live in `queue`, which outlives the ring's use of them
            // (the loop below runs until every entry has completed for good).
            unsafe { sq.push(&sqe) }.map_err(|_| io::Error::other("ring full"))?;
        }
        // SAFETY: `wake_buf` lives until the loop ends.
        unsafe { sq.push(&wake_read(&mut wake_buf)) }.map_err(|_| io::Error::other("ring full"))?;
    }
    // A registration the kernel refuses completes at once, with the error. Anything else that completed already
    // (a request, once the last queue has registered) is kept for the loop.
    let mut completions: Vec<(u64, i32)> = Vec::with_capacity(depth + 1);
    ring.submit()?;
    completions.extend(ring.completion().map(|c| (c.user_data(), c.result())));
    if let Some(&(_, res)) = completions.iter().find(|&&(ud, r)| ud != WAKE && r < 0) {
        return Err(io::Error::other(format!(
            "registering the ring: {}",
            io::Error::from_raw_os_error(-res)
        )));
    }
    report.registered();
    let mut live = depth;
    let mut scratch = Vec::with_capacity(4096);
    let mut served = 0u64;
    while live > 0 {
        if completions.is_empty() {
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            completions.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        }
        let mut rearm_wake = false;
        for (i, &(ud, res)) in completions.iter().enumerate() {
            if ud == WAKE {
                rearm_wake = true;
                continue;
            }
            let idx = ud as usize;
            if res < 0 {
                live -= 1;
                if ![libc::ENOTCONN, libc::ECONNABORTED, libc::ENODEV, libc::ECANCELED].contains(&-res) {
                    warn!(
                        queue = qid,
                        "FUSE io_uring entry ended: {}",
                        io::Error::from_raw_os_error(-res)
                    );
                }
                continue;
            }
            served += 1;
            handle_entry(shared, &queue, idx, &mut scratch);
            // Hand a reply over as soon as it is made when another request of this batch is still to be served
            // (it may take a while, decrypting a MiB, and the reader waits on this one); else the commit goes with
            // the next wait, in the same system call.
            let more = completions[i + 1..].iter().any(|&(u, r)| u != WAKE && r >= 0);
            if more && queue_commits(&mut ring, &queue, dev, qid16)? {
                ring.submit()?;
            }
        }
        queue_commits(&mut ring, &queue, dev, qid16)?;
        if rearm_wake {
            // SAFETY: `wake_buf` lives until the loop ends.
            unsafe { push_or_flush(&mut ring, &wake_read(&mut wake_buf)) }?;
        }
        completions.clear();
    }
    debug!(queue = qid, served, "FUSE io_uring queue done");
    Ok(())
}

/// Queues a COMMIT_AND_FETCH for every entry of `queue` answered since the last call; whether there was any.
fn queue_commits(
    ring: &mut IoUring<squeue::Entry128, cqueue::Entry>,
    queue: &Queue,
    dev: RawFd,
    qid: u16,
) -> io::Result<bool> {
    let answered = std::mem::take(&mut *queue.answered.lock().unwrap_or_else(|p| p.into_inner()));
    for &idx in &answered {
        let mut e = queue.entries[idx].lock().unwrap_or_else(|p| p.into_inner());
        let commit_id = e.bufs().0.ring_ent_in_out.commit_id;
        let sqe = command(dev, abi::URING_CMD_COMMIT_AND_FETCH, qid, commit_id, &e, idx);
        // SAFETY: the entry's buffers and iovecs live in `queue`, which outlives the ring's use of them.
        unsafe { push_or_flush(ring, &sqe) }?;
    }
    Ok(!answered.is_empty())
}

/// Queues `sqe`, first submitting what is queued when the submission queue is full.
///
/// # Safety
/// Whatever `sqe` points at must stay valid until its completion is reaped.
unsafe fn push_or_flush(ring: &mut IoUring<squeue::Entry128, cqueue::Entry>, sqe: &squeue::Entry128) -> io::Result<()> {
    // SAFETY: the caller keeps the entry's buffers alive.
    if unsafe { ring.submission().push(sqe) }.is_err() {
        ring.submit()?;
        // SAFETY: as above.
        unsafe { ring.submission().push(sqe) }.map_err(|_| io::Error::other("ring full"))?;
    }
    Ok(())
}

/// Parses the request in entry `idx` and dispatches it; the reply (now or later) queues the entry's commit. The
/// request is copied out of the entry first (headers and names: a few hundred bytes; a READ has no payload), so
/// no borrow of the entry is held while the tree answers into it.
fn handle_entry<T: ReadOnlyTree>(shared: &Arc<Shared<T>>, queue: &Arc<Queue>, idx: usize, scratch: &mut Vec<u8>) {
    let (in_out, op_in, payload_sz, payload, payload_len) = {
        let mut e = queue.entries[idx].lock().unwrap_or_else(|p| p.into_inner());
        let (ptr, len) = (e.payload, e.payload_len);
        let (header, payload) = e.bufs();
        let payload_sz = header.ring_ent_in_out.payload_sz as usize;
        scratch.clear();
        scratch.extend_from_slice(&payload[..payload_sz.min(payload.len())]);
        (header.in_out, header.op_in, payload_sz, ptr, len)
    };
    let unique = abi::InHeader::read_from_prefix(&in_out[..])
        .map(|(h, _)| h.unique)
        .unwrap_or(0);
    let r = RingResponder {
        queue: queue.clone(),
        idx,
        unique,
        done: false,
        payload,
        payload_len,
    };
    match proto::parse_uring(&in_out, &op_in, scratch, payload_sz) {
        Ok((h, req)) => serve::dispatch_guarded(&shared.tree, h.nodeid, req, r),
        Err(err) => {
            warn!("malformed FUSE request on the ring: {err}");
            drop(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_ranges_and_single_cpus() {
        assert_eq!(cpu_list("0-3\n"), Some(vec![0, 1, 2, 3]));
        assert_eq!(cpu_list("0"), Some(vec![0]));
        assert_eq!(cpu_list("0,2-3"), Some(vec![0, 2, 3]));
        for bad in ["", "x", "3-1", "0-", "0-99999999"] {
            assert_eq!(cpu_list(bad), None, "{bad:?}");
        }
    }

    fn all_online(n: usize) -> Vec<bool> {
        vec![true; n]
    }

    /// At least the classic transport's request threads in all and two per queue, one entry per ring.
    #[test]
    fn shapes_serve_at_least_the_asked_threads_two_a_queue_one_entry_each() {
        let s = Shape::of(all_online(2), 2);
        assert_eq!((s.queues, s.threads_per_queue, s.depth, s.pin), (2, 2, 1, false));
        assert_eq!(s.threads(), 4);
        let s = Shape::of(all_online(2), 8);
        assert_eq!((s.threads_per_queue, s.depth), (4, 1));
        let s = Shape::of(all_online(16), 8);
        assert_eq!((s.threads_per_queue, s.depth), (2, 1));
        let s = Shape::of(all_online(2), 5);
        assert_eq!((s.threads_per_queue, s.depth), (3, 1));
        assert!(s.threads() >= 5);
        assert_eq!(s.fds(), 1 + 2 * 6);
        assert_eq!(Shape::of(Vec::new(), 0).queues, 1);
        assert_eq!(
            Shape::of(all_online(1), 64).threads_per_queue,
            16,
            "at most 16 threads a queue"
        );
    }

    /// A possible CPU that is not online gets a queue (the kernel wants every one registered) with one thread;
    /// the threads asked for are spread over the online CPUs' queues.
    #[test]
    fn queues_of_offline_cpus_get_one_thread() {
        let mut online = vec![false; 64];
        online[..4].fill(true);
        let s = Shape::of(online, 16);
        assert_eq!((s.queues, s.threads_per_queue), (64, 4));
        assert_eq!(
            (s.threads_of(0), s.threads_of(3), s.threads_of(4), s.threads_of(63)),
            (4, 4, 1, 1)
        );
        assert_eq!(s.threads(), 4 * 4 + 60);
        assert_eq!(
            Shape::of(vec![false; 2], 2).threads_per_queue,
            2,
            "none online: spread as over one"
        );
    }

    /// The arena's buffers are 2 MiB aligned as a whole, disjoint, zero and writable; a slot past the end is
    /// refused.
    #[test]
    fn payload_slots_are_disjoint_zeroed_and_huge_page_aligned() {
        let each = 1 << 20;
        let arena = PayloadArena::new(3, each).unwrap();
        assert_eq!(arena.slot(0) as usize % HUGE_PAGE, 0);
        for i in 0..3 {
            assert_eq!(arena.slot(i) as usize - arena.slot(0) as usize, i * each);
            // SAFETY: slot i is `each` bytes of the arena's mapping, used by nothing else here.
            let buf = unsafe { std::slice::from_raw_parts_mut(arena.slot(i), each) };
            assert!(buf.iter().all(|&b| b == 0));
            buf.fill(i as u8 + 1);
        }
        // SAFETY: as above.
        let first = unsafe { std::slice::from_raw_parts(arena.slot(0), each) };
        assert!(first.iter().all(|&b| b == 1), "slot 0 overwritten by its neighbours");
        assert!(std::panic::catch_unwind(|| arena.slot(3)).is_err());
    }

    /// The submission entry keeps everything the builder set and gets `len` = 2 at the kernel's offset.
    #[test]
    fn a_classic_read_reply_buffer_is_page_aligned_and_comes_back_after_the_reply() {
        let null = std::fs::OpenOptions::new().write(true).open("/dev/null").unwrap();
        let dev = Arc::new(OwnedFd::from(null));
        let home: ReplyBufHome = Arc::new(Mutex::new(Some(ReplyBuf::new())));
        let mut first = DevResponder::new(&dev, 1, Some(&home));
        let buf = first.buffer().unwrap();
        assert_eq!(buf.as_ptr() as usize % 4096, 0, "reply buffer not page-aligned");
        assert_eq!(buf.len(), MAX_READ as usize);
        buf[..3].copy_from_slice(b"abc");
        // While the first reply is pending (answered later, say), the next request has no buffer to share.
        let mut second = DevResponder::new(&dev, 2, Some(&home));
        assert!(second.buffer().is_none());
        first.send_filled(3);
        assert!(home.lock().unwrap().is_some(), "the buffer went home with the reply");
        drop(second);
        let mut third = DevResponder::new(&dev, 3, Some(&home));
        assert_eq!(&third.buffer().unwrap()[..3], b"abc", "the same buffer again");
        third.silent();
    }

    #[test]
    fn the_iov_count_lands_in_the_sqe_len_field_only() {
        let entry = Entry::new(&Arc::new(PayloadArena::new(1, 4096).unwrap()), 0);
        let built = command(7, abi::URING_CMD_COMMIT_AND_FETCH, 3, 99, &entry, 5);
        // SAFETY: the kernel's 128-byte SQE, plain bytes.
        let a: [u8; 128] = unsafe { std::mem::transmute(built) };
        assert_eq!(u32::from_ne_bytes(a[24..28].try_into().unwrap()), 2, "len");
        assert_eq!(u32::from(a[0]), u32::from(opcode::UringCmd80::CODE), "opcode");
        assert_eq!(i32::from_ne_bytes(a[4..8].try_into().unwrap()), 7, "fd");
        assert_eq!(
            u32::from_ne_bytes(a[8..12].try_into().unwrap()),
            abi::URING_CMD_COMMIT_AND_FETCH,
            "cmd_op"
        );
        assert_eq!(
            u64::from_ne_bytes(a[16..24].try_into().unwrap()),
            entry.iov.as_ptr() as u64,
            "addr"
        );
        assert_eq!(u64::from_ne_bytes(a[32..40].try_into().unwrap()), 5, "user_data");
        let req = abi::UringCmdReq::read_from_prefix(&a[48..]).unwrap().0;
        assert_eq!((req.commit_id, req.qid), (99, 3));
    }
}
