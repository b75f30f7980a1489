//! Serving a legacy image with FUSE (feature `fuse`): the ext4 tree as a [`ReadOnlyTree`] ([`LegacyFs`]), served
//! by the one FUSE adapter with the daemon's sources, mount options, threads and session
//! ([`crate::fuse::mount_tree`]). Only what differs from an image lives here: the block device and the ext4 walk.
//!
//! * The image is read through any [`BlobSource`] ([`BlobReadAt`] blocks on the daemon's runtime, pinned to
//!   the ETag seen at open), so legacy images come from the same places as v1 images.
//! * The tree is walked once at mount; inode `n + 1` is entry `n` of [`super::Ext4Volume::walk`] (the root is 1).
//! * `Ext4Volume` is `!Send`, and `ext4-view` seeks by walking a file's extents from its start. So reads go to
//!   reader threads, each with its own (cheap) view over the shared decrypted device, and every inode always to
//!   the same reader, which keeps a few open handles per file and picks the one already at the requested offset:
//!   a sequential stream never seeks, whichever FUSE thread the kernel handed each request to.
//! * A file whose inode or data cannot be read (corrupt ext4) answers `EIO`, logged once per inode; nothing
//!   panics. Device nodes, FIFOs and sockets are not shown. Everything is owned by the mounting user, as with
//!   v1 images.

use std::collections::HashSet;
use std::io;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tracing::error;

use super::{Ext4File, LegacyError, LegacyImage, ReadAt, TreeEntry, TreeKind};
use crate::source::{BlobKey, BlobSource, ETag};
use crate::tree::{Attr, DirEntry, Errno, FileKind, ReadOnlyTree, ReadReply, StatFs};
/// Open handles kept per reader thread.
const OPEN_FILES_PER_READER: usize = 32;
/// Open handles kept per file (at different positions).
const HANDLES_PER_FILE: usize = 4;

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
    pub(crate) fn into_source(self) -> B {
        self.source
    }

    /// Whether the blob starts with the LUKS magic (any version: LUKS1 is then refused by name on open).
    pub(crate) fn is_luks(&self) -> io::Result<bool> {
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

/// What a legacy image cannot prove: it has no root digest and no model signature, so a mount configured to pin
/// the root or to check a signer refuses it ([`check_demands`]) instead of serving it unchecked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Unverifiable {
    /// A root pin is configured.
    #[error(
        "the image is a legacy LUKS2 image: it has no root digest to pin (drop the root pin, or convert it with \
         `cinfer-mkimage convert`)"
    )]
    RootPin,
    /// A model signer is configured.
    #[error("the image is a legacy LUKS2 image: it carries no model signature (convert it with a signed build)")]
    Signature,
}

/// Checks what the mount demands of a legacy image: refused if a root pin (`root_pinned`) or a model signer
/// (`signer_set`) is configured; the daemon and the sidecar share this so both refuse the same way.
pub(crate) fn check_demands(root_pinned: bool, signer_set: bool) -> Result<(), Unverifiable> {
    if root_pinned {
        Err(Unverifiable::RootPin)
    } else if signer_set {
        Err(Unverifiable::Signature)
    } else {
        Ok(())
    }
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
    let readers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(cfg.threads.max(1));
    let fs = LegacyFs::new(image, uid, gid, readers)?;
    tracing::info!(
        uuid,
        entries = fs.shared.nodes.len(),
        readers,
        "legacy LUKS2 image opened"
    );
    let session = crate::fuse::mount_tree(fs, mountpoint, cfg).map_err(LegacyMountError::Mount)?;
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

/// What the FUSE threads and the reader threads share.
struct Shared<R> {
    image: LegacyImage<R>,
    nodes: Vec<Node>,
    /// Inodes whose failure was already logged.
    logged: Mutex<HashSet<u64>>,
}

impl<R> Shared<R> {
    /// Logs a read failure once per inode and returns EIO.
    fn eio(&self, op: &'static str, ino: u64, err: &dyn std::fmt::Display) -> Errno {
        let first = self.logged.lock().unwrap_or_else(|e| e.into_inner()).insert(ino);
        if first {
            error!(op, ino, "legacy image: {err}: returning EIO");
        }
        Errno(libc::EIO)
    }
}

/// Where a read's outcome goes.
type Reply = Box<dyn FnOnce(Result<&[u8], Errno>) + Send>;

/// One read, handed to the reader thread that owns the inode; the reader replies.
struct Job {
    ino: u64,
    offset: u64,
    len: usize,
    reply: Reply,
}

/// A reader thread: its own ext4 view, and open handles (least recently used first).
fn reader<R: ReadAt + 'static>(shared: Arc<Shared<R>>, jobs: Receiver<Job>) {
    let fs = match shared.image.ext4() {
        Ok(fs) => Some(fs),
        Err(e) => {
            error!("legacy image: cannot load ext4 in a reader thread: {e}");
            None
        }
    };
    let mut open: Vec<(u64, Ext4File)> = Vec::new();
    for job in jobs {
        let Some(fs) = &fs else {
            (job.reply)(Err(Errno(libc::EIO)));
            continue;
        };
        let Some(node) = job.ino.checked_sub(1).and_then(|i| shared.nodes.get(i as usize)) else {
            (job.reply)(Err(Errno(libc::ENOENT)));
            continue;
        };
        // A handle already at the offset; else a new one while the file has few; else its least recent.
        let at = open
            .iter()
            .position(|(i, f)| *i == job.ino && f.position() == job.offset);
        let count = open.iter().filter(|(i, _)| *i == job.ino).count();
        let taken = match at {
            Some(p) => Ok(open.remove(p).1),
            None if count < HANDLES_PER_FILE => fs.open(&node.entry.path),
            None => match open.iter().position(|(i, _)| *i == job.ino) {
                Some(p) => Ok(open.remove(p).1),
                None => fs.open(&node.entry.path),
            },
        };
        let mut buf = vec![0u8; job.len];
        let result = taken.and_then(|mut f| {
            let n = f.read_at(job.offset, &mut buf);
            if open.len() >= OPEN_FILES_PER_READER {
                open.remove(0);
            }
            open.push((job.ino, f));
            n
        });
        match result {
            Ok(n) => (job.reply)(Ok(&buf[..n])),
            Err(e) => (job.reply)(Err(shared.eio("read", job.ino, &e))),
        }
    }
}

/// A legacy image's ext4 tree as a [`ReadOnlyTree`].
pub struct LegacyFs<R> {
    shared: Arc<Shared<R>>,
    readers: Vec<Mutex<Sender<Job>>>,
    uid: u32,
    gid: u32,
    bytes: u64,
}

impl<R> std::fmt::Debug for LegacyFs<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyFs")
            .field("image", &self.shared.image)
            .field("entries", &self.shared.nodes.len())
            .field("readers", &self.readers.len())
            .finish_non_exhaustive()
    }
}

impl<R: ReadAt + 'static> LegacyFs<R> {
    /// Walks the tree of `image` (on this thread) and serves it with every entry owned by `uid`:`gid`, reading
    /// with `readers` threads (at least 1; each file is always read by the same one).
    pub fn new(image: LegacyImage<R>, uid: u32, gid: u32, readers: usize) -> Result<Self, LegacyError> {
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
        let shared = Arc::new(Shared {
            image,
            nodes,
            logged: Mutex::new(HashSet::new()),
        });
        let mut senders = Vec::new();
        for i in 0..readers.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("legacy-read-{i}"))
                .spawn(move || reader(shared, rx))
                .map_err(|source| LegacyError::Io { offset: 0, source })?;
            senders.push(Mutex::new(tx));
        }
        Ok(Self {
            shared,
            readers: senders,
            uid,
            gid,
            bytes,
        })
    }

    /// The image being served.
    pub fn image(&self) -> &LegacyImage<R> {
        &self.shared.image
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        ino.checked_sub(1)
            .and_then(|i| self.shared.nodes.get(i as usize))
            .ok_or(Errno(libc::ENOENT))
    }

    fn attr(&self, ino: u64, n: &Node) -> Attr {
        let e = &n.entry;
        let (kind, size, perm) = match &e.kind {
            TreeKind::Dir => (FileKind::Dir, 4096, e.mode),
            TreeKind::File { size } => (FileKind::File, *size, e.mode),
            TreeKind::Symlink { target } => (FileKind::Symlink, target.len() as u64, 0o777),
            // Shown as an empty read-only file whose open fails with EIO.
            _ => (FileKind::File, 0, 0o444),
        };
        let subdirs = n
            .children
            .iter()
            .filter(|(_, c)| self.node(*c).is_ok_and(|c| matches!(c.entry.kind, TreeKind::Dir)))
            .count() as u32;
        let mtime = if e.mtime >= 0 {
            // Saturating: `SystemTime + Duration` panics on overflow (i64::MAX seconds plus nanoseconds).
            SystemTime::UNIX_EPOCH
                .checked_add(Duration::new(e.mtime as u64, 0))
                .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(e.mtime_nsec))))
                .unwrap_or(SystemTime::UNIX_EPOCH)
        } else {
            SystemTime::UNIX_EPOCH
        };
        Attr {
            ino,
            kind,
            size,
            blocks: size.div_ceil(512),
            perm: perm & 0o7777,
            nlink: if kind == FileKind::Dir { 2 + subdirs } else { 1 },
            uid: self.uid,
            gid: self.gid,
            mtime,
            blksize: 4096,
        }
    }
}

impl<R: ReadAt + Send + Sync + 'static> ReadOnlyTree for LegacyFs<R> {
    fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        Ok(self.attr(ino, self.node(ino)?))
    }

    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, Errno> {
        let p = self.node(parent)?;
        let ino = match name {
            b"." => parent,
            b".." => p.parent,
            _ => p
                .children
                .binary_search_by(|(n, _)| n.as_slice().cmp(name))
                .map(|i| p.children[i].1)
                .map_err(|_| Errno(libc::ENOENT))?,
        };
        Ok(self.attr(ino, self.node(ino)?))
    }

    fn readlink(&self, ino: u64) -> Result<&[u8], Errno> {
        match &self.node(ino)?.entry.kind {
            TreeKind::Symlink { target } => Ok(target),
            _ => Err(Errno(libc::EINVAL)),
        }
    }

    fn open_file(&self, ino: u64) -> Result<u64, Errno> {
        match &self.node(ino)?.entry.kind {
            TreeKind::File { .. } => Ok(0),
            TreeKind::Dir => Err(Errno(libc::EISDIR)),
            TreeKind::Unreadable { reason } => Err(self.shared.eio("open", ino, reason)),
            _ => Err(Errno(libc::EINVAL)),
        }
    }

    fn open_dir(&self, ino: u64) -> Result<(), Errno> {
        match &self.node(ino)?.entry.kind {
            TreeKind::Dir => Ok(()),
            TreeKind::Unreadable { reason } => Err(self.shared.eio("opendir", ino, reason)),
            _ => Err(Errno(libc::ENOTDIR)),
        }
    }

    fn readdir(&self, ino: u64, offset: u64, add: &mut dyn FnMut(DirEntry<'_>) -> bool) -> Result<(), Errno> {
        let n = self.node(ino)?;
        let dots: [(&[u8], u64); 2] = [(b".", ino), (b"..", n.parent)];
        let kids = n.children.iter().map(|(name, child)| (name.as_slice(), *child));
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (name, child)) in dots.into_iter().chain(kids).enumerate().skip(skip) {
            let kind = self.node(child).map_or(FileKind::File, |c| self.attr(child, c).kind);
            let entry = DirEntry {
                ino: child,
                next_offset: i as u64 + 1,
                kind,
                name,
            };
            if add(entry) {
                break;
            }
        }
        Ok(())
    }

    fn statfs(&self) -> StatFs {
        StatFs {
            bytes: self.bytes,
            files: self.shared.nodes.len() as u64,
        }
    }

    fn read(&self, ino: u64, _fh: u64, offset: u64, size: u32, reply: impl ReadReply) {
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let TreeKind::File { size: len } = n.entry.kind else {
            return reply.error(Errno(libc::EINVAL));
        };
        let want = u64::from(size).min(len.saturating_sub(offset)) as usize;
        if want == 0 {
            return reply.data(&[]);
        }
        let job = Job {
            ino,
            offset,
            len: want,
            reply: Box::new(move |r| match r {
                Ok(data) => reply.data(data),
                Err(e) => reply.error(e),
            }),
        };
        let reader = &self.readers[(ino % self.readers.len() as u64) as usize];
        let sent = reader.lock().unwrap_or_else(|e| e.into_inner()).send(job);
        if let Err(std::sync::mpsc::SendError(job)) = sent {
            (job.reply)(Err(self.shared.eio("read", ino, &"reader thread gone")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A legacy image passes only when nothing is demanded of it, and each refusal names what it lacks.
    #[test]
    fn legacy_images_are_refused_when_a_root_pin_or_signer_is_configured() {
        assert_eq!(check_demands(false, false), Ok(()));
        assert_eq!(check_demands(true, false), Err(Unverifiable::RootPin));
        assert_eq!(check_demands(false, true), Err(Unverifiable::Signature));
        assert_eq!(check_demands(true, true), Err(Unverifiable::RootPin));
        assert!(Unverifiable::RootPin.to_string().contains("no root digest"));
        assert!(Unverifiable::Signature.to_string().contains("no model signature"));
    }
}
