//! The FUSE adapter: translates `fuser` requests into calls of a [`ReadOnlyTree`] and results into replies; one
//! adapter for images ([`ImageTree`], an [`EncFs`]) and legacy LUKS2 + ext4 images alike.
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

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig, MountOption,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request, SessionACL,
};
use tracing::{error, info, instrument, warn};

pub mod abi;
pub mod fusermount;
pub mod mountinfo;
mod own;
pub mod proto;
mod serve;

use crate::fs::readahead::ReadAheadConfig;
use crate::fs::{EncFs, ImageTree, MAX_READ};
use crate::source::BlobSource;
use crate::tree::{self, Attr, FileKind, ReadOnlyTree, ReadReply};

/// How long the kernel may cache attributes and lookups: the image never changes under a mount.
const TTL: Duration = Duration::from_secs(24 * 3600);

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
/// and a read buffer of up to [`MAX_READ`]; beyond the kernel's `max_background` (64 by default) more threads
/// only wait.
pub const MAX_THREADS: usize = 64;

/// File descriptors kept free for everything but the request threads (sources, sockets, logs, the cache).
const FD_RESERVE: u64 = 64;

/// The request threads a mount can start: `wanted`, at most [`MAX_THREADS`], and no more than the open-file
/// limit allows (each thread needs its own cloned `/dev/fuse` fd; fuser starts none if one clone fails, which
/// left a mount nobody serves). Raises the soft `RLIMIT_NOFILE` to the hard one first if that is needed.
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
    /// `/dev/fuse` read/write, one request per system call pair (`fuser`).
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

/// The `fuser` filesystem over any [`ReadOnlyTree`]: each request becomes one tree call, each result one reply.
/// The tree has logged whatever it answers with an errno.
struct FuseAdapter<T> {
    tree: T,
    max_background: u16,
}

impl<T: std::fmt::Debug> std::fmt::Debug for FuseAdapter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseAdapter")
            .field("tree", &self.tree)
            .finish_non_exhaustive()
    }
}

impl<T: ReadOnlyTree> FuseAdapter<T> {
    /// Serves `tree`, letting the kernel keep `max_background` asynchronous requests in flight.
    fn new(tree: T, max_background: u16) -> Self {
        Self { tree, max_background }
    }
}

impl ReadReply for ReplyData {
    fn data(self, data: &[u8]) {
        Self::data(self, data);
    }

    fn error(self, errno: tree::Errno) {
        Self::error(self, errno_of(errno));
    }
}

fn errno_of(e: tree::Errno) -> Errno {
    Errno::from_i32(e.0)
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Dir => FileType::Directory,
        FileKind::File => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: a.blksize,
        flags: 0,
    }
}

impl<T: ReadOnlyTree> fuser::Filesystem for FuseAdapter<T> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if let Err(max) = config.set_max_background(self.max_background) {
            warn!(requested = self.max_background, max, "kernel refused max_background");
        }
        // The kernel only lets INIT lower readahead; raising it goes through sysfs after the mount.
        let _ = config.set_max_readahead(MAX_READ);
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_CACHE_SYMLINKS);
        Ok(())
    }

    #[instrument(level = "debug", skip_all, fields(parent = parent.0, name = ?name))]
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.tree.lookup(parent.0, name.as_bytes()) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno_of(e)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0))]
    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno_of(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.tree.readlink(ino.0) {
            Ok(t) => reply.data(t),
            Err(e) => reply.error(errno_of(e)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0))]
    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != fuser::OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        // The image never changes under a mount: the page cache may outlive an open.
        match self.tree.open_file(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno_of(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.tree.release(fh.0);
        reply.ok();
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0, offset, size))]
    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        self.tree.read(ino.0, fh.0, offset, size.min(MAX_READ), reply);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: fuser::LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.tree.open_dir(ino.0) {
            Ok(()) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Err(e) => reply.error(errno_of(e)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0, offset))]
    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listed = self.tree.readdir(ino.0, offset, &mut |e| {
            reply.add(
                INodeNo(e.ino),
                e.next_offset,
                file_type(e.kind),
                OsStr::from_bytes(e.name),
            )
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno_of(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.tree.statfs();
        let bsize = 4096u32;
        reply.statfs(
            s.bytes.div_ceil(u64::from(bsize)),
            0,
            0,
            s.files,
            0,
            bsize,
            crate::format::MAX_NAME_LEN as u32,
            bsize,
        );
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    /// No ioctls: `ENOTTY`, as a regular file on a disk filesystem answers (Python's `open` asks `TCGETS` of
    /// every file; fuser's default would log a warning for each).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permission bits are enforced by the kernel (`default_permissions`); this only checks existence.
        match self.tree.getattr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno_of(e)),
        }
    }
}

/// Runs each request of the wrapped filesystem under `catch_unwind`: a panic while serving one request is logged,
/// the request is answered `EIO` (its reply, dropped while unwinding, sends it) and the request thread goes on
/// serving. Without it a panic ends the thread, silently shrinking the pool until no thread is left and the
/// mount is dead (`ENOTCONN`).
///
/// Delegates every method that [`FuseAdapter`] implements (for any other the wrapped filesystem has fuser's
/// default, as the wrapper does); a method added there must be added here.
struct PanicGuard<F>(F);

impl<F> PanicGuard<F> {
    fn run(op: &'static str, f: impl FnOnce()) {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            note_panic(op, panic.as_ref());
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

/// Request handlers that panicked in this process ([`PanicGuard`]).
static PANICS: AtomicU64 = AtomicU64::new(0);

/// How many FUSE request handlers have panicked in this process (each answered `EIO`).
pub fn handler_panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

impl<F: fuser::Filesystem> fuser::Filesystem for PanicGuard<F> {
    fn init(&mut self, req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        self.0.init(req, config)
    }

    fn destroy(&mut self) {
        self.0.destroy();
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        Self::run("lookup", || self.0.lookup(req, parent, name, reply));
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        Self::run("getattr", || self.0.getattr(req, ino, fh, reply));
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        Self::run("readlink", || self.0.readlink(req, ino, reply));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        Self::run("open", || self.0.open(req, ino, flags, reply));
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: OpenFlags,
        lock_owner: Option<fuser::LockOwner>,
        flush: bool,
        reply: ReplyEmpty,
    ) {
        Self::run("release", || {
            self.0.release(req, ino, fh, flags, lock_owner, flush, reply)
        });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        Self::run("read", || {
            self.0.read(req, ino, fh, offset, size, flags, lock_owner, reply)
        });
    }

    fn flush(&self, req: &Request, ino: INodeNo, fh: FileHandle, lock_owner: fuser::LockOwner, reply: ReplyEmpty) {
        Self::run("flush", || self.0.flush(req, ino, fh, lock_owner, reply));
    }

    fn opendir(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        Self::run("opendir", || self.0.opendir(req, ino, flags, reply));
    }

    fn readdir(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, reply: ReplyDirectory) {
        Self::run("readdir", || self.0.readdir(req, ino, fh, offset, reply));
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        Self::run("statfs", || self.0.statfs(req, ino, reply));
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        Self::run("getxattr", || self.0.getxattr(req, ino, name, size, reply));
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        Self::run("listxattr", || self.0.listxattr(req, ino, size, reply));
    }

    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: fuser::IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        Self::run("ioctl", || {
            self.0.ioctl(req, ino, fh, flags, cmd, in_data, out_size, reply)
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        Self::run("access", || self.0.access(req, ino, mask, reply));
    }
}

/// A live mount: dropping it unmounts.
#[derive(Debug)]
pub struct MountSession {
    session: Session,
    mountpoint: PathBuf,
    /// The mount's ID and device in the mount table, if it could be found there right after mounting.
    mount_id: Option<(u64, (u32, u32))>,
}

/// The session behind a mount, by transport.
#[derive(Debug)]
enum Session {
    /// `fuser` on `/dev/fuse`.
    Fuser(fuser::BackgroundSession),
    /// This crate's own session (io_uring).
    Own(own::OwnSession),
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
    let shape = own::Shape::for_threads(cfg.threads.clamp(1, MAX_THREADS));
    let available = own::uring_available().and_then(|()| {
        let need = shape.fds();
        match fd_room(need) {
            (room, _) if room >= need => Ok(()),
            (_, nofile) => Err(format!(
                "the open-file limit ({nofile}) leaves no room for its {need} descriptors (two per ring)"
            )),
        }
    });
    let use_own = match (cfg.transport, available) {
        (Transport::Classic, _) => false,
        (_, Ok(())) => true,
        (Transport::Uring, Err(why)) => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the io_uring transport is not available: {why}"),
            ));
        }
        (Transport::Auto, Err(why)) => {
            info!("FUSE over io_uring not available, using the classic transport: {why}");
            false
        }
    };
    let (session, threads) = if use_own {
        let threads = shape.threads();
        let s = own::mount(tree, mountpoint, cfg, shape.clone())?;
        (Session::Own(s), threads)
    } else {
        spawn_fuser(tree, mountpoint, cfg)?
    };
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
    if transport == Transport::Uring {
        info!(
            mountpoint = %mountpoint.display(),
            transport = %transport,
            queues = shape.queues,
            threads,
            queue_depth = shape.depth,
            "mounted"
        );
    } else {
        info!(mountpoint = %mountpoint.display(), transport = %transport, threads, "mounted");
    }
    Ok(session)
}

/// Mounts through `fuser` (classic transport).
fn spawn_fuser<T: ReadOnlyTree>(tree: T, mountpoint: &Path, cfg: &MountConfig) -> io::Result<(Session, usize)> {
    let filesystem = FuseAdapter::new(tree, cfg.max_background);
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
        MountOption::FSName(cfg.fs_name.clone()),
        MountOption::Subtype("cinfer-encfs".into()),
        MountOption::CUSTOM(format!("max_read={MAX_READ}")),
    ];
    config.acl = if cfg.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let threads = threads_within_fd_limit(cfg.threads);
    config.n_threads = Some(threads);
    config.clone_fd = cfg.clone_fd;
    let session = fuser::spawn_mount(PanicGuard(filesystem), mountpoint, &config)?;
    Ok((Session::Fuser(session), threads))
}

/// The `fusermount3` program, found on the image's `PATH`. Never taken from `FUSERMOUNT_PATH`: a host able to add
/// environment to the container must not choose which program the (root) daemon runs; `main` also removes that
/// variable for `fuser`, which reads it.
pub const FUSERMOUNT: &str = "fusermount3";

/// Detaches the mount at `path` lazily (`umount2(MNT_DETACH)`; as non-root, or on `EPERM`, `fusermount3 -u -z`).
pub fn detach(path: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    #[allow(unsafe_code)]
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call; umount2 does not keep it.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    fusermount::unmount(path, true)
}

impl MountSession {
    /// The mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Waits until the new mount answers an open of its root (its request threads run), or fails if the session ended
    /// first (fuser starts no request thread when it cannot set them all up): the mount is then detached and
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
        match &self.session {
            Session::Fuser(s) => s.guard.is_finished(),
            Session::Own(s) => s.is_finished(),
        }
    }

    /// Whether requests travel over io_uring.
    fn uses_uring(&self) -> bool {
        matches!(&self.session, Session::Own(s) if s.uses_uring())
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
        match self.session {
            Session::Fuser(s) => s.umount_and_join(),
            Session::Own(s) => s.unmount(),
        }
    }

    /// Ends a session that was unmounted from outside (`umount`, `fusermount3 -u`) without touching the
    /// mountpoint again: fuser would otherwise try to unmount the path once more on drop, which could hit a new
    /// mount made there since.
    pub(crate) fn finish_after_external_unmount(self) {
        match self.session {
            Session::Fuser(s) => std::mem::forget(s),
            Session::Own(s) => s.forget(),
        }
    }

    /// Ends a session that has finished ([`Self::is_finished`]) without this process unmounting it. Either it
    /// was unmounted from outside, or its request threads ended with the mount still in place: a dead mount that
    /// nobody serves, which is detached here. Returns [`Ended::Dead`] in that case, so the caller can exit with an
    /// error rather than report a clean unmount.
    ///
    /// Mount IDs and device numbers are reused at once, so a new mount on the same path may carry ours: a mount
    /// there is taken for ours only if its ID and device match and opening it fails with `ENOTCONN`
    /// (connection gone) or gets no answer (connection up, no request thread). A mount that answers is someone
    /// else's and is left alone. The session is never dropped (fuser would unmount the path again on drop, and
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
