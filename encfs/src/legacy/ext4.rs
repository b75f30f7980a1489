//! Read-only ext4 on a decrypted device, through `ext4-view` (pure Rust, maintained, no kernel, no unsafe).
//!
//! `ext4_view::Ext4` is `Rc` + `RefCell` inside, so an [`Ext4Volume`] is `!Send`: make one per thread from the
//! shared (`Send + Sync`) device ([`Ext4Volume::load`] reads only the superblock and group descriptors; it costs
//! about a millisecond). Its API is path-based: [`Ext4Volume::walk`] lists the whole tree once, with the paths to
//! open files later, and [`Ext4File`] keeps its position so sequential reads do not re-resolve anything.
//!
//! A corrupt inode or directory (ext4 metadata checksums catch most) makes that entry
//! [`TreeKind::Unreadable`] and its reads fail with [`LegacyError::Ext4`]; the rest of the tree still reads.

use std::sync::Arc;

use ext4_view::{Ext4, Ext4Read, Metadata};

use super::LegacyError;
use super::device::ReadAt;

/// What an entry of the tree is.
#[derive(Clone, Debug, Eq, PartialEq)]
#[non_exhaustive]
pub enum TreeKind {
    /// A directory.
    Dir,
    /// A regular file of `size` bytes.
    File {
        /// Length in bytes.
        size: u64,
    },
    /// A symbolic link.
    Symlink {
        /// The target, as stored.
        target: Vec<u8>,
    },
    /// A device node, FIFO or socket.
    Special {
        /// Which kind.
        kind: &'static str,
    },
    /// An entry whose inode (or, for a directory, whose contents) could not be read.
    Unreadable {
        /// The ext4 error.
        reason: String,
    },
}

/// One entry of the tree, in walk order.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TreeEntry {
    /// Absolute path inside the filesystem (`/` for the root).
    pub path: Vec<u8>,
    /// Index of the parent entry in the walk (0 for the root itself).
    pub parent: usize,
    /// Name in the parent directory (empty for the root).
    pub name: Vec<u8>,
    /// What it is.
    pub kind: TreeKind,
    /// Permission bits (`0o7777` mask).
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
}

/// A directory entry's name and its inode's metadata.
type Child = (Vec<u8>, Result<Metadata, ext4_view::Ext4Error>);

/// `ext4_view` reads through this: any [`ReadAt`], shared.
struct Reader(Arc<dyn ReadAt>);

impl Ext4Read for Reader {
    fn read(&mut self, start_byte: u64, dst: &mut [u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.0.read_exact_at(dst, start_byte).map_err(Into::into)
    }
}

/// A read-only ext4 filesystem (one per thread: `!Send`).
pub struct Ext4Volume {
    fs: Ext4,
}

impl std::fmt::Debug for Ext4Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ext4Volume").finish_non_exhaustive()
    }
}

fn ext4_err(path: &[u8]) -> impl FnOnce(ext4_view::Ext4Error) -> LegacyError + '_ {
    move |source| LegacyError::Ext4 {
        path: String::from_utf8_lossy(path).into_owned(),
        source,
    }
}

impl Ext4Volume {
    /// Loads the filesystem on `device` (superblock, group descriptors, journal replay in memory if needed).
    pub fn load(device: Arc<dyn ReadAt>) -> Result<Self, LegacyError> {
        let fs = Ext4::load(Box::new(Reader(device))).map_err(ext4_err(b"/"))?;
        Ok(Self { fs })
    }

    /// Lists the whole tree: the root first, then depth-first with each directory's children sorted by name
    /// bytes (the order `mkimage` indexes a directory in). Symlinks are not followed. Entries that cannot be read
    /// are [`TreeKind::Unreadable`]; only an unreadable root is an error.
    pub fn walk(&self) -> Result<Vec<TreeEntry>, LegacyError> {
        let root_meta = self.fs.metadata(b"/").map_err(ext4_err(b"/"))?;
        let mut out = vec![entry(b"/".to_vec(), 0, Vec::new(), TreeKind::Dir, Some(&root_meta))];
        let root_children = self.children(b"/").map_err(ext4_err(b"/"))?;
        let mut pending: Vec<(Child, usize)> = root_children.into_iter().rev().map(|c| (c, 0)).collect();
        while let Some(((name, meta), parent)) = pending.pop() {
            let mut path = out[parent].path.clone();
            if path.len() > 1 {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            let number = out.len();
            // The inode, read straight from the directory entry (no second path resolution).
            let meta = match meta {
                Ok(m) => m,
                Err(e) => {
                    let kind = TreeKind::Unreadable { reason: e.to_string() };
                    out.push(entry(path, parent, name, kind, None));
                    continue;
                }
            };
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                match self.children(&path) {
                    Ok(children) => {
                        pending.extend(children.into_iter().rev().map(|n| (n, number)));
                        TreeKind::Dir
                    }
                    Err(e) => TreeKind::Unreadable { reason: e.to_string() },
                }
            } else if ft.is_regular_file() {
                TreeKind::File { size: meta.len() }
            } else if ft.is_symlink() {
                match self.fs.read_link(path.as_slice()) {
                    Ok(t) => TreeKind::Symlink {
                        target: t.as_ref().to_vec(),
                    },
                    Err(e) => TreeKind::Unreadable { reason: e.to_string() },
                }
            } else {
                let kind = if ft.is_fifo() {
                    "FIFO"
                } else if ft.is_socket() {
                    "socket"
                } else if ft.is_block_dev() {
                    "block device"
                } else {
                    "character device"
                };
                TreeKind::Special { kind }
            };
            out.push(entry(path, parent, name, kind, Some(&meta)));
        }
        Ok(out)
    }

    /// The entries of directory `path` with their inode metadata (or why it could not be read), sorted by name
    /// bytes, without `.` and `..`.
    fn children(&self, path: &[u8]) -> Result<Vec<Child>, ext4_view::Ext4Error> {
        let mut out = Vec::new();
        for e in self.fs.read_dir(path)? {
            let e = e?;
            let name = e.file_name();
            let name = name.as_ref();
            if name != b"." && name != b".." {
                out.push((name.to_vec(), e.metadata()));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Opens the regular file at `path` (absolute).
    pub fn open(&self, path: &[u8]) -> Result<Ext4File, LegacyError> {
        let file = self.fs.open(path).map_err(ext4_err(path))?;
        Ok(Ext4File {
            file,
            path: path.to_vec(),
        })
    }

    /// Reads the whole regular file at `path`.
    pub fn read(&self, path: &[u8]) -> Result<Vec<u8>, LegacyError> {
        self.fs.read(path).map_err(ext4_err(path))
    }
}

fn entry(path: Vec<u8>, parent: usize, name: Vec<u8>, kind: TreeKind, meta: Option<&Metadata>) -> TreeEntry {
    TreeEntry {
        path,
        parent,
        name,
        kind,
        mode: meta.map_or(0, Metadata::mode),
        uid: meta.map_or(0, Metadata::uid),
        gid: meta.map_or(0, Metadata::gid),
        mtime: meta.map_or(0, |m| m.modified().seconds()),
        mtime_nsec: meta.map_or(0, |m| m.modified().nanoseconds().min(999_999_999)),
    }
}

/// An open regular file. Reads at its current position continue without re-walking the extent tree.
pub struct Ext4File {
    file: ext4_view::File,
    path: Vec<u8>,
}

impl std::fmt::Debug for Ext4File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ext4File")
            .field("path", &String::from_utf8_lossy(&self.path))
            .finish_non_exhaustive()
    }
}

impl Ext4File {
    /// Length in bytes.
    pub fn size(&self) -> u64 {
        self.file.metadata().len()
    }

    /// Where the next read continues without a seek (`ext4-view` seeks by walking the extents from the start, so
    /// callers with several handles should pick the one already at the offset they want).
    pub fn position(&self) -> u64 {
        self.file.position()
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many (fewer only at the end of the file).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, LegacyError> {
        if self.file.position() != offset {
            self.file.seek_to(offset).map_err(ext4_err(&self.path))?;
        }
        let mut done = 0;
        while done < buf.len() {
            let n = self.file.read_bytes(&mut buf[done..]).map_err(ext4_err(&self.path))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }
}
