//! Mounting any [`ReadOnlyTree`] ([`ImageTree`], an [`EncFs`], and legacy LUKS2 + ext4 images alike) and the
//! session behind a mount: the project's own FUSE session (`own`), which answers each request through one
//! dispatcher (`serve`) over either transport, `/dev/fuse` (classic) or io_uring.
//!
//! It holds no filesystem logic and no logging policy: a tree answers a failure with an errno it has logged
//! (a chunk that fails authentication once per chunk index, the kernel retrying a failed readahead page by page
//! would otherwise flood the log), and a read that fails gets that errno with no data.
//!
//! Performance settings (see `perf-anchors.md` §3.3–3.4): several request threads, each with its own cloned
//! `/dev/fuse` fd; `max_background` 64; reads of up to 1 MiB (`max_read`), served through decrypt-ahead for
//! sequential readers when configured (`fs::readahead`, one file handle per open); `FOPEN_KEEP_CACHE` on every
//! open, since the image is immutable and pinned, so the page cache survives close and reopen; and long attribute
//! and entry TTLs for the same reason. The kernel's readahead can only be raised after the mount, through
//! the bdi in sysfs ([`MountSession::set_read_ahead_kb`]).

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::{error, info, warn};

pub mod abi;
pub mod fusermount;
pub mod mountinfo;
mod own;
pub mod proto;
mod serve;

use crate::fs::readahead::ReadAheadConfig;
use crate::fs::{EncFs, ImageTree};
use crate::source::BlobSource;
use crate::tree::ReadOnlyTree;

/// The kernel readahead a mount gets by default, in KiB (written to sysfs after mounting, when allowed).
///
/// 2 MiB, measured on the project's 2-core machines: with a 1 MiB window the kernel keeps one 1 MiB READ in flight
/// and a cold sequential read leaves a core idle (decrypt-ahead, [`crate::fs::readahead`], fills that gap at some
/// cost in hand-offs); with 2 MiB it keeps two, each decrypted on its own request thread, which read 1 GiB ~20 %
/// faster with ~10 % less daemon CPU. 4 MiB was no faster. The window is also what an `mmap` page fault reads
/// around (2 MiB per cold fault), which is why it is not larger.
pub const DEFAULT_READ_AHEAD_KB: u32 = 2048;

/// FUSE request threads for a remote image (and [`MountConfig`]'s default): its reads wait on the network, so
/// more threads than cores keep more requests in flight.
pub const REMOTE_THREADS: usize = 8;

/// FUSE request threads for a mount of a local image file: one per core, at least 2 and at most 16.
///
/// Reading a local image is CPU-bound (decrypt and the kernel's copies), so more threads than cores only
/// time-slice the READs the reader is waiting for, and leave cores idle meanwhile. On 2 cores a cold 1 GiB `dd`
/// read ran at 2.62 GB/s with 2 threads, 2.52 with 3, 2.48 with 4 and 2.30 with 8 (interleaved fresh mounts).
/// A remote source waits on the network instead ([`REMOTE_THREADS`]).
pub fn local_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    cores.clamp(2, 16)
}

/// Most FUSE request threads a mount runs (`--threads` is refused above it). Each holds a cloned `/dev/fuse` fd
/// and a 128 KiB request buffer (and, once it serves a READ, a 1 MiB reply buffer); beyond the kernel's `max_background` (64 by default) more threads
/// only wait.
pub const MAX_THREADS: usize = 64;

/// File descriptors kept free for everything but the request threads (sources, sockets, logs, the cache).
const FD_RESERVE: u64 = 64;

/// The request threads a mount can start: `wanted`, at most [`MAX_THREADS`], and no more than the open-file
/// limit allows (each thread needs its own cloned `/dev/fuse` fd; threads that cannot have one would share a
/// descriptor, and its queue). Raises the soft `RLIMIT_NOFILE` to the hard one first if that is needed.
fn threads_within_fd_limit(wanted: usize) -> usize {
    let wanted = wanted.clamp(1, MAX_THREADS);
    let (threads, nofile) = fd_room(wanted);
    if threads < wanted {
        warn!(
            wanted,
            threads,
            nofile,
            "the open-file limit leaves room for fewer FUSE request threads; raise `ulimit -n` for more"
        );
    }
    threads
}

/// How many of `wanted` more file descriptors this process may open, keeping [`FD_RESERVE`] spare (at least 1),
/// after raising the soft limit toward the hard one if needed; and the limit.
fn fd_room(wanted: usize) -> (usize, u64) {
    let open = std::fs::read_dir("/proc/self/fd").map_or(FD_RESERVE, |d| d.count() as u64);
    let need = open + FD_RESERVE + wanted as u64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: `lim` is a valid rlimit to write to.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (wanted, u64::MAX);
    }
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < need {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max.min(need.max(lim.rlim_cur)),
            rlim_max: lim.rlim_max,
        };
        #[allow(unsafe_code)]
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = raised.rlim_cur;
        }
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        return (wanted, u64::MAX);
    }
    let room = lim.rlim_cur.saturating_sub(open + FD_RESERVE);
    ((wanted as u64).min(room).max(1) as usize, lim.rlim_cur)
}

/// Decrypt-ahead pays off only when the kernel keeps a single READ in flight, i.e. with readahead windows up to
/// this size (KiB).
pub(crate) const DECRYPT_AHEAD_MAX_WINDOW_KB: u32 = 1024;

/// How requests travel between the kernel and this daemon.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// io_uring when the kernel offers it (and this process is root), else classic.
    #[default]
    Auto,
    /// FUSE over io_uring (Linux 6.14+, `fuse.enable_uring`): per-CPU queues, no system call per request.
    Uring,
    /// `/dev/fuse` read/write, one request per system call pair, one request thread per cloned descriptor.
    Classic,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" => Ok(Self::Uring),
            "classic" => Ok(Self::Classic),
            other => Err(format!("unknown transport {other:?} (auto, uring or classic)")),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Uring => "uring",
            Self::Classic => "classic",
        })
    }
}

/// Mount settings; plain data, [`Default`] gives the tuned values.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// FUSE request threads (default [`REMOTE_THREADS`]; see [`local_threads`] for local images).
    pub threads: usize,
    /// Give each request thread its own `/dev/fuse` fd (`FUSE_DEV_IOC_CLONE`).
    pub clone_fd: bool,
    /// Asynchronous requests the kernel may keep in flight.
    pub max_background: u16,
    /// Let users other than the mounting one access the mount (`allow_other`; non-root needs
    /// `user_allow_other` in `/etc/fuse.conf`).
    pub allow_other: bool,
    /// Source name shown in `/proc/mounts`.
    pub fs_name: String,
    /// Decrypt-ahead for sequential readers (`fs::readahead::ReadAhead`); off by default, the daemon turns it on for local
    /// images ([`ReadAheadConfig::LOCAL`]).
    pub read_ahead: ReadAheadConfig,
    /// Which transport carries requests ([`Transport::Auto`] by default).
    pub transport: Transport,
}

impl Default for MountConfig {
    fn default() -> Self {
        Self {
            threads: REMOTE_THREADS,
            clone_fd: true,
            max_background: 64,
            allow_other: false,
            fs_name: "cinfer-encfs".into(),
            read_ahead: ReadAheadConfig::default(),
            transport: Transport::default(),
        }
    }
}

/// Counts and logs a request handler's panic (its request is answered `EIO`).
fn note_panic(op: &'static str, panic: &(dyn std::any::Any + Send)) {
    let msg = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    PANICS.fetch_add(1, Ordering::Relaxed);
    error!(
        op,
        "request handler panicked, answered EIO (the request thread serves on): {msg}"
    );
}

/// Mounts made by this process, by transport: io_uring, classic.
static MOUNTS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// How many mounts this process has made over io_uring and over the classic transport.
pub fn mounts_by_transport() -> (u64, u64) {
    (MOUNTS[0].load(Ordering::Relaxed), MOUNTS[1].load(Ordering::Relaxed))
}

/// Request handlers that panicked in this process (`serve::dispatch_guarded`).
static PANICS: AtomicU64 = AtomicU64::new(0);

/// How many FUSE request handlers have panicked in this process (each answered `EIO`).
pub fn handler_panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// A live mount: dropping it unmounts.
#[derive(Debug)]
pub struct MountSession {
    session: own::OwnSession,
    mountpoint: PathBuf,
    /// The mount's ID and device in the mount table, if it could be found there right after mounting.
    mount_id: Option<(u64, (u32, u32))>,
}

/// Mounts `fs` read-only at `mountpoint` and serves it from background threads. Returns once the kernel has
/// the mount, so files are visible when this returns.
pub fn mount<B: BlobSource>(
    fs: Arc<EncFs<B>>,
    rt: tokio::runtime::Handle,
    mountpoint: &Path,
    cfg: &MountConfig,
) -> io::Result<MountSession> {
    mount_tree(ImageTree::new(fs, rt, cfg.read_ahead), mountpoint, cfg)
}

/// Mounts any [`ReadOnlyTree`] with the same adapter, options, threads and session handling as [`mount`] (used
/// for legacy LUKS2 images, `crate::legacy::mount::LegacyFs`).
pub fn mount_tree<T: ReadOnlyTree>(tree: T, mountpoint: &Path, cfg: &MountConfig) -> io::Result<MountSession> {
    // As the mount table will list it (read before mounting: resolving the mount point afterwards would ask the
    // new filesystem).
    let canonical = mountpoint.canonicalize()?;
    let threads = cfg.threads.clamp(1, MAX_THREADS);
    // The rings' layout, only when io_uring may carry the mount.
    let shape = match cfg.transport {
        Transport::Classic => None,
        Transport::Auto | Transport::Uring => {
            let shape = own::Shape::for_threads(threads);
            let available = own::uring_available().and_then(|()| {
                let need = shape.fds();
                match fd_room(need) {
                    (room, _) if room >= need => Ok(()),
                    (_, nofile) => Err(format!(
                        "the open-file limit ({nofile}) leaves no room for its {need} descriptors (two per ring)"
                    )),
                }
            });
            match (cfg.transport, available) {
                (_, Ok(())) => Some(shape),
                (Transport::Uring, Err(why)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("the io_uring transport is not available: {why}"),
                    ));
                }
                (_, Err(why)) => {
                    info!("FUSE over io_uring not available, using the classic transport: {why}");
                    None
                }
            }
        }
    };
    // Classic request threads, counted only if the mount may be served through /dev/fuse (an io_uring mount
    // whose INIT or rings fail falls back to it).
    let classic_threads = threads_within_fd_limit(threads);
    let session = own::mount(tree, mountpoint, cfg, shape.clone(), classic_threads)?;
    let mount_id = mountinfo::top_at(&canonical)
        .ok()
        .flatten()
        .filter(mountinfo::MountEntry::is_cinfer)
        .map(|e| (e.id, e.dev));
    let session = MountSession {
        session,
        mountpoint: mountpoint.to_path_buf(),
        mount_id,
    };
    session.check_serving()?;
    if cfg.transport == Transport::Uring && !session.uses_uring() {
        let _ = session.unmount();
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the io_uring transport was asked for, but the kernel did not offer it at INIT",
        ));
    }
    let transport = session.transport();
    MOUNTS[usize::from(transport != Transport::Uring)].fetch_add(1, Ordering::Relaxed);
    match shape {
        Some(shape) if transport == Transport::Uring => info!(
            mountpoint = %mountpoint.display(),
            transport = %transport,
            queues = shape.queues,
            threads = shape.threads(),
            queue_depth = shape.depth,
            "mounted"
        ),
        _ => info!(mountpoint = %mountpoint.display(), transport = %transport, threads = classic_threads, "mounted"),
    }
    Ok(session)
}

/// The `fusermount3` program, found on the image's `PATH`. Never taken from `FUSERMOUNT_PATH`: a host able to add
/// environment to the container must not choose which program the (root) daemon runs; `main` also removes that
/// variable (libfuse and `fuser`, which this daemon no longer uses, read it).
pub const FUSERMOUNT: &str = "fusermount3";

/// Unmounts `path` (`lazy`: detaches it even while files are open): `umount2`, and on `EPERM` (not root, or a mount
/// made through `fusermount3`) `fusermount3 -u [-z]`. Any other `umount2` error is returned as it is, so callers can
/// tell `EINVAL` (not a mountpoint) and `EBUSY` (files open) apart.
pub fn unmount_path(path: &Path, lazy: bool) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    #[allow(unsafe_code)]
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call; umount2 does not keep it.
    let rc = unsafe { libc::umount2(c.as_ptr(), flags) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    fusermount::unmount(path, lazy)
}

/// Detaches the mount at `path` lazily ([`unmount_path`] with `lazy`).
pub fn detach(path: &Path) -> io::Result<()> {
    unmount_path(path, true)
}

impl MountSession {
    /// The mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Waits until the new mount answers an open of its root (its request threads run), or fails if the session ended
    /// first (no request thread could start): the mount is then detached and
    /// the session's error returned, so no mount is left that nobody serves.
    fn check_serving(&self) -> io::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mp = self.mountpoint.clone();
        std::thread::spawn(move || {
            // Any answer, even an error, means a request thread served it (opening the root always asks the daemon;
            // a `stat` might be answered from the kernel's attribute cache).
            let _ = tx.send(std::fs::read_dir(&mp).is_ok());
        });
        let start = std::time::Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            if self.is_finished() {
                // Detach first (lazily: the probe above may hold the mount busy), then end the session: closing
                // its /dev/fuse fd releases the probe.
                let detached = detach(&self.mountpoint);
                return Err(io::Error::other(format!(
                    "the FUSE session ended before serving (no request thread started){}",
                    match detached {
                        Ok(()) => "; the mount was detached".to_string(),
                        Err(e) => format!("; detaching the mount failed: {e}"),
                    }
                )));
            }
            if start.elapsed() > Duration::from_secs(30) {
                warn!(mountpoint = %self.mountpoint.display(), "the new mount has not answered in 30 s");
                return Ok(());
            }
        }
    }

    /// True once the session has ended (for example after an external `umount`).
    pub fn is_finished(&self) -> bool {
        self.session.is_finished()
    }

    /// Whether requests travel over io_uring.
    fn uses_uring(&self) -> bool {
        self.session.uses_uring()
    }

    /// The transport that carries this mount's requests ([`Transport::Uring`] or [`Transport::Classic`]).
    pub fn transport(&self) -> Transport {
        if self.uses_uring() {
            Transport::Uring
        } else {
            Transport::Classic
        }
    }

    /// Sets the kernel readahead of this mount (`/sys/class/bdi/<maj:min>/read_ahead_kb`). Needs root and a
    /// writable `/sys`.
    pub(crate) fn set_read_ahead_kb(&self, kb: u32) -> io::Result<()> {
        let dev = std::fs::metadata(&self.mountpoint)?.dev();
        let (major, minor) = dev_major_minor(dev);
        let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
        std::fs::write(&path, format!("{kb}\n")).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
    }

    /// Unmounts and waits for the request threads to finish.
    pub fn unmount(self) -> io::Result<()> {
        self.session.unmount()
    }

    /// Ends a session that was unmounted from outside (`umount`, `fusermount3 -u`) without touching the
    /// mountpoint again: the session would otherwise detach the path once more on drop, which could hit a new
    /// mount made there since.
    pub(crate) fn finish_after_external_unmount(self) {
        self.session.forget();
    }

    /// Ends a session that has finished ([`Self::is_finished`]) without this process unmounting it. Either it
    /// was unmounted from outside, or its request threads ended with the mount still in place: a dead mount that
    /// nobody serves, which is detached here. Returns [`Ended::Dead`] in that case, so the caller can exit with an
    /// error rather than report a clean unmount.
    ///
    /// Mount IDs and device numbers are reused at once, so a new mount on the same path may carry ours: a mount
    /// there is taken for ours only if its ID and device match and opening it fails with `ENOTCONN`
    /// (connection gone) or gets no answer (connection up, no request thread). A mount that answers is someone
    /// else's and is left alone. The session is never dropped (it would detach the path again on drop, and
    /// could hit that new mount); its fd goes with the process.
    pub fn finish_ended(self) -> Ended {
        let Some((id, dev)) = self.mount_id else {
            self.finish_after_external_unmount();
            return Ended::Unmounted;
        };
        let mp = self
            .mountpoint
            .canonicalize()
            .unwrap_or_else(|_| self.mountpoint.clone());
        let present = mountinfo::read()
            .unwrap_or_default()
            .into_iter()
            .any(|e| e.id == id && e.dev == dev && e.mount_point == mp);
        let dead = present && !answers_stat(&self.mountpoint);
        let mountpoint = self.mountpoint.clone();
        self.finish_after_external_unmount();
        if dead {
            Ended::Dead {
                detached: detach(&mountpoint),
            }
        } else {
            Ended::Unmounted
        }
    }
}

/// True if opening the directory `path` answers within 2 s with anything but `ENOTCONN`: a request thread served
/// it. (Not `stat`: the kernel answers that from its attribute cache without asking the daemon.)
fn answers_stat(path: &Path) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_dir(&path).err().and_then(|e| e.raw_os_error()));
    });
    match rx.recv_timeout(Duration::from_secs(2)) {
        Ok(errno) => errno != Some(libc::ENOTCONN),
        Err(_) => false,
    }
}

/// How a session that finished on its own ended ([`MountSession::finish_ended`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum Ended {
    /// Unmounted from outside.
    Unmounted,
    /// The request threads ended with the mount in place; it was detached (or why not).
    Dead {
        /// The outcome of detaching it.
        detached: io::Result<()>,
    },
}

/// Splits a Linux `dev_t` into major and minor numbers (glibc's encoding).
fn dev_major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers_split_like_glibc() {
        assert_eq!(dev_major_minor(0x0000_0000_0000_0801), (8, 1));
        assert_eq!(dev_major_minor(0x35), (0, 53));
        assert_eq!(dev_major_minor((0x123 << 8) | 0x45 | (0xabc00 << 12)), (0x123, 0xabc45));
    }
}
