//! The read-only tree that the FUSE session ([`crate::fuse`]) serves: one interface, implemented by the image
//! filesystem (`fs::ImageTree`, an [`EncFs`](crate::fs::EncFs) read through its decrypt-ahead) and by the legacy
//! LUKS2 + ext4 reader (`legacy::mount::LegacyFs`), so one dispatcher answers FUSE requests for both.
//!
//! Plain types only, no FUSE ones. A failed operation answers an [`Errno`] that the tree has already logged:
//! it knows what deserves a line and how often (a chunk that fails authentication is logged once per chunk, a
//! corrupt ext4 inode once per inode, a missing name not at all). Nothing here imports the rest of the crate.

use std::time::SystemTime;

/// The kind of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
}

/// Attributes of one entry, as `stat` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Kind.
    pub kind: FileKind,
    /// Size in bytes (target length for symlinks).
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// Permission bits.
    pub perm: u16,
    /// Link count: 1 for files and symlinks, 2 + subdirectories for directories.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (also reported as access and change time).
    pub mtime: SystemTime,
    /// Preferred I/O size (`st_blksize`; for images, [`crate::fs::preferred_io_size`]).
    pub blksize: u32,
}

/// One directory entry, as [`ReadOnlyTree::readdir`] (and `EncFs::readdir`) gives them.
#[derive(Clone, Copy, Debug)]
pub struct DirEntry<'a> {
    /// Inode of the entry.
    pub ino: u64,
    /// Offset to pass to `readdir` to continue after this entry.
    pub next_offset: u64,
    /// Kind.
    pub kind: FileKind,
    /// Name (bytes; `.` and `..` included).
    pub name: &'a [u8],
}

/// Totals for `statfs`.
#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    /// Plaintext bytes of all files.
    pub bytes: u64,
    /// Number of entries.
    pub files: u64,
}

/// An errno to answer a request with, already logged by the tree that returned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

/// Where the outcome of one read goes: its bytes or an errno, exactly once, from any thread.
pub trait ReadReply: Send + 'static {
    /// The bytes read (fewer than asked at end of file, none past it).
    fn data(self, data: &[u8]);
    /// The read failed.
    fn error(self, errno: Errno);
    /// The transport's own reply buffer (at least the size asked), when it has one (io_uring: the ring entry's
    /// payload): a tree may write the bytes there and answer with [`Self::filled`], saving a copy.
    fn buffer(&mut self) -> Option<&mut [u8]> {
        None
    }
    /// Answers with the first `len` bytes written into [`Self::buffer`].
    fn filled(self, len: usize)
    where
        Self: Sized,
    {
        let _ = len;
        self.error(Errno(libc::EIO));
    }
}

/// A read-only tree of directories, files and symlinks, addressed by inode number (the root is 1).
pub trait ReadOnlyTree: Send + Sync + 'static {
    /// Attributes of `ino`.
    fn getattr(&self, ino: u64) -> Result<Attr, Errno>;

    /// Looks `name` up in directory `parent` (`.` and `..` included).
    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, Errno>;

    /// The target of symlink `ino`.
    fn readlink(&self, ino: u64) -> Result<&[u8], Errno>;

    /// Opens file `ino` for reading; returns the handle its reads carry (a tree that follows each reader, for
    /// decrypt-ahead, gives each open its own).
    fn open_file(&self, ino: u64) -> Result<u64, Errno>;

    /// The handle of an open is closed.
    fn release(&self, fh: u64) {
        let _ = fh;
    }

    /// Checks that directory `ino` can be listed.
    fn open_dir(&self, ino: u64) -> Result<(), Errno>;

    /// Hands the entries of directory `ino` from `offset` on (0 = start: `.` and `..` first) to `add`, until it
    /// returns true (the reply is full).
    fn readdir(&self, ino: u64, offset: u64, add: &mut dyn FnMut(DirEntry<'_>) -> bool) -> Result<(), Errno>;

    /// Totals for `statfs`.
    fn statfs(&self) -> StatFs;

    /// Reads up to `size` bytes of file `ino` (open as `fh`) at `offset` and answers `reply`, on this thread or
    /// later on another.
    fn read(&self, ino: u64, fh: u64, offset: u64, size: u32, reply: impl ReadReply);
}
