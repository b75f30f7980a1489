//! Serving a legacy image with FUSE (feature `fuse`): the daemon's sources, mount options, threads and session
//! ([`crate::fuse::mount_filesystem`]), with a `fuser` filesystem over the ext4 tree.
//!
//! * The image is read through any [`BlobSource`] ([`BlobReadAt`] blocks on the daemon's runtime, pinned to
//!   the ETag seen at open), so legacy images come from the same places as v1 images.
//! * The tree is walked once at mount; inode `n + 1` is entry `n` of [`Ext4Volume::walk`] (the root is 1).
//! * `Ext4Volume` is `!Send`: each FUSE thread loads its own (cheap) over the shared decrypted device, and keeps
//!   its recently read files open, so sequential reads continue without re-walking extents.
//! * A file whose inode or data cannot be read (corrupt ext4) answers `EIO`, logged once per inode; nothing
//!   panics. Device nodes, FIFOs and sockets are not shown. Everything is owned by the mounting user, as with
//!   v1 images.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use tracing::{debug, error};

use super::{Ext4File, Ext4Volume, LegacyError, LegacyImage, ReadAt, TreeEntry, TreeKind};
use crate::source::{BlobKey, BlobSource, ETag};

/// How long the kernel may cache attributes and lookups: the image is pinned and read-only.
const TTL: Duration = Duration::from_secs(24 * 3600);
/// Open files kept per FUSE thread.
const OPEN_FILES_PER_THREAD: usize = 16;

/// A blocking [`ReadAt`] over a [`BlobSource`]: each read runs on `rt` (never call it from a runtime thread).
pub struct BlobReadAt<B: BlobSource> {
    source: B,
    key: BlobKey,
    etag: Option<ETag>,
    len: u64,
    rt: tokio::runtime::Handle,
}

impl<B: BlobSource> std::fmt::Debug for BlobReadAt<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReadAt")
            .field("key", &self.key)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<B: BlobSource> BlobReadAt<B> {
    /// Stats `key` in `source` and pins its ETag for every later read.
    pub fn open(source: B, key: BlobKey, rt: tokio::runtime::Handle) -> io::Result<Self> {
        let meta = rt.block_on(source.stat(&key)).map_err(io::Error::other)?;
        Ok(Self {
            source,
            key,
            etag: meta.etag,
            len: meta.len,
            rt,
        })
    }

    /// The source back (to open the blob another way when it is not a legacy image).
    pub fn into_source(self) -> B {
        self.source
    }

    /// Whether the blob starts with the LUKS magic (any version: LUKS1 is then refused by name on open).
    pub fn is_luks(&self) -> io::Result<bool> {
        if self.len < 8 {
            return Ok(false);
        }
        let mut head = [0u8; 8];
        self.read_exact_at(&mut head, 0)?;
        Ok(super::probe(&head).is_some())
    }
}

impl<B: BlobSource> ReadAt for BlobReadAt<B> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let bytes = self
            .rt
            .block_on(self.source.read_range(&self.key, offset..end, self.etag.as_ref()))
            .map_err(io::Error::other)?;
        if bytes.len() != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("source returned {} of {} bytes", bytes.len(), buf.len()),
            ));
        }
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.len)
    }
}

/// Why a legacy mount failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LegacyMountError {
    /// The image was refused (wrong key, unsupported cipher, LUKS1, unreadable ext4, …).
    #[error(transparent)]
    Legacy(#[from] LegacyError),
    /// The FUSE mount failed.
    #[error("mounting")]
    Mount(#[source] io::Error),
}

/// Opens the legacy image `reader` with `passphrase` (the key file's or released key's bytes), logs the
/// no-integrity warning once, walks the tree and mounts it read-only at `mountpoint` with the daemon's settings.
/// Returns the session and the LUKS2 UUID.
pub fn mount<B: BlobSource>(
    reader: BlobReadAt<B>,
    passphrase: &[u8],
    uid: u32,
    gid: u32,
    mountpoint: &std::path::Path,
    cfg: &crate::fuse::MountConfig,
) -> Result<(crate::fuse::MountSession, String), LegacyMountError> {
    let image = LegacyImage::open(reader, passphrase)?;
    super::warn_no_integrity_once();
    let uuid = image.header().uuid.clone();
    let fs = LegacyFs::new(image, uid, gid)?;
    tracing::info!(uuid, entries = fs.nodes.len(), "legacy LUKS2 image opened");
    let session = crate::fuse::mount_filesystem(fs, mountpoint, cfg).map_err(LegacyMountError::Mount)?;
    Ok((session, uuid))
}

/// One node of the served tree.
struct Node {
    entry: TreeEntry,
    /// Inode of the parent (the root's is itself).
    parent: u64,
    /// Children by name (directories only), sorted by name bytes.
    children: Vec<(Vec<u8>, u64)>,
}

/// What one FUSE thread holds: its own ext4 view and recently used open files (most recent last).
struct ThreadView {
    fs: Ext4Volume,
    files: Vec<(u64, Ext4File)>,
}

thread_local! {
    /// Per-thread views, by filesystem instance id (several mounts can live in one process).
    static VIEWS: RefCell<HashMap<u64, ThreadView>> = RefCell::new(HashMap::new());
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A legacy image's ext4 tree as a read-only `fuser` filesystem.
pub struct LegacyFs<R> {
    image: LegacyImage<R>,
    id: u64,
    nodes: Vec<Node>,
    uid: u32,
    gid: u32,
    bytes: u64,
    logged: Mutex<HashSet<u64>>,
}

impl<R> std::fmt::Debug for LegacyFs<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyFs")
            .field("image", &self.image)
            .field("entries", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl<R: ReadAt + 'static> LegacyFs<R> {
    /// Walks the tree of `image` (on this thread) and serves it with every entry owned by `uid`:`gid`.
    pub fn new(image: LegacyImage<R>, uid: u32, gid: u32) -> Result<Self, LegacyError> {
        let tree = image.ext4()?.walk()?;
        let mut nodes: Vec<Node> = Vec::with_capacity(tree.len());
        let mut bytes = 0;
        for (i, entry) in tree.into_iter().enumerate() {
            let ino = i as u64 + 1;
            let parent = entry.parent as u64 + 1;
            if let TreeKind::File { size } = entry.kind {
                bytes += size;
            }
            let shown = !matches!(entry.kind, TreeKind::Special { .. });
            if i != 0 && shown {
                let name = entry.name.clone();
                if let Some(p) = nodes.get_mut(entry.parent) {
                    p.children.push((name, ino));
                }
            }
            nodes.push(Node {
                entry,
                parent,
                children: Vec::new(),
            });
        }
        for n in &mut nodes {
            n.children.sort();
        }
        Ok(Self {
            image,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            nodes,
            uid,
            gid,
            bytes,
            logged: Mutex::new(HashSet::new()),
        })
    }

    /// The image being served.
    pub fn image(&self) -> &LegacyImage<R> {
        &self.image
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        ino.checked_sub(1)
            .and_then(|i| self.nodes.get(i as usize))
            .ok_or(Errno::ENOENT)
    }

    fn attr(&self, ino: u64, n: &Node) -> FileAttr {
        let e = &n.entry;
        let (kind, size, perm) = match &e.kind {
            TreeKind::Dir => (FileType::Directory, 4096, e.mode),
            TreeKind::File { size } => (FileType::RegularFile, *size, e.mode),
            TreeKind::Symlink { target } => (FileType::Symlink, target.len() as u64, 0o777),
            // Shown as an empty read-only file whose open fails with EIO.
            _ => (FileType::RegularFile, 0, 0o444),
        };
        let subdirs = n
            .children
            .iter()
            .filter(|(_, c)| self.node(*c).is_ok_and(|c| matches!(c.entry.kind, TreeKind::Dir)))
            .count() as u32;
        let mtime = if e.mtime >= 0 {
            SystemTime::UNIX_EPOCH + Duration::new(e.mtime as u64, e.mtime_nsec)
        } else {
            SystemTime::UNIX_EPOCH
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm: perm & 0o7777,
            nlink: if kind == FileType::Directory { 2 + subdirs } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Logs a read failure once per inode and returns EIO.
    fn eio(&self, op: &'static str, ino: u64, err: &dyn std::fmt::Display) -> Errno {
        let first = self.logged.lock().unwrap_or_else(|e| e.into_inner()).insert(ino);
        if first {
            error!(op, ino, "legacy image: {err}: returning EIO");
        }
        Errno::EIO
    }

    /// Runs `f` with this thread's view of the filesystem and the open file `ino` (opened on first use).
    fn with_file<T>(
        &self,
        ino: u64,
        path: &[u8],
        f: impl FnOnce(&mut Ext4File) -> Result<T, LegacyError>,
    ) -> Result<T, LegacyError> {
        VIEWS.with_borrow_mut(|views| {
            let view = match views.entry(self.id) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(ThreadView {
                    fs: self.image.ext4()?,
                    files: Vec::new(),
                }),
            };
            let pos = view.files.iter().position(|(i, _)| *i == ino);
            let mut file = match pos {
                Some(p) => view.files.remove(p).1,
                None => view.fs.open(path)?,
            };
            let r = f(&mut file);
            if view.files.len() >= OPEN_FILES_PER_THREAD {
                view.files.remove(0);
            }
            view.files.push((ino, file));
            r
        })
    }
}

impl<R: ReadAt + 'static> fuser::Filesystem for LegacyFs<R> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_readahead(crate::fuse::MAX_READ);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.node(parent.0).and_then(|p| {
            p.children
                .binary_search_by(|(n, _)| n.as_slice().cmp(name.as_bytes()))
                .map(|i| p.children[i].1)
                .map_err(|_| Errno::ENOENT)
        });
        match found.and_then(|ino| Ok((ino, self.node(ino)?))) {
            Ok((ino, n)) => reply.entry(&TTL, &self.attr(ino, n), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino.0) {
            Ok(n) => reply.attr(&TTL, &self.attr(ino.0, n)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino.0).map(|n| &n.entry.kind) {
            Ok(TreeKind::Symlink { target }) => reply.data(target),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != fuser::OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        match self.node(ino.0).map(|n| &n.entry.kind) {
            Ok(TreeKind::File { .. }) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Ok(TreeKind::Dir) => reply.error(Errno::EISDIR),
            Ok(TreeKind::Unreadable { reason }) => reply.error(self.eio("open", ino.0, reason)),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let n = match self.node(ino.0) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let TreeKind::File { size: len } = n.entry.kind else {
            return reply.error(Errno::EINVAL);
        };
        let want = u64::from(size.min(crate::fuse::MAX_READ)).min(len.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; want];
        match self.with_file(ino.0, &n.entry.path, |f| f.read_at(offset, &mut buf)) {
            Ok(got) => reply.data(&buf[..got]),
            Err(e) => reply.error(self.eio("read", ino.0, &e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: fuser::LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino.0).map(|n| &n.entry.kind) {
            Ok(TreeKind::Dir) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Ok(TreeKind::Unreadable { reason }) => reply.error(self.eio("opendir", ino.0, reason)),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let n = match self.node(ino.0) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let dots = [(b".".to_vec(), ino.0), (b"..".to_vec(), n.parent)];
        for (i, (name, child)) in dots.iter().chain(n.children.iter()).enumerate().skip(offset as usize) {
            let kind = self
                .node(*child)
                .map_or(FileType::RegularFile, |c| self.attr(*child, c).kind);
            if reply.add(INodeNo(*child), i as u64 + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(
            self.bytes.div_ceil(4096),
            0,
            0,
            self.nodes.len() as u64,
            0,
            4096,
            255,
            4096,
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

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        match self.node(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => {
                debug!(ino = ino.0, "access: no such inode");
                reply.error(e)
            }
        }
    }
}
