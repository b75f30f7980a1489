//! `convert`: a legacy image (the seed's LUKS2 `aes-xts-plain64` + ext4) → an authenticated v1 image.
//!
//! Streamed and unprivileged: [`encfs::legacy`] opens the LUKS2 keyslot with the old key file and reads the ext4
//! filesystem in userspace (no root, no device-mapper, no loop device, no temporary plaintext copy), and the
//! normal build pipeline ([`crate::build::build_tree`]) seals every file as it is read. Names, modes, symlinks,
//! modification times and contents are preserved; an empty `/lost+found` (an `mkfs` artefact, not model content)
//! is left out. What the v1 format cannot carry (device nodes, FIFOs, sockets, symlinks pointing outside the tree)
//! and unreadable (corrupt) entries are refused by path, like `build` refuses them.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use encfs::format::{Entry, EntryKind, MAX_NAME_LEN, MAX_SYMLINK_LEN, ModelKey};
use encfs::legacy::{Ext4File, Ext4Volume, LegacyError, LegacyImage, TreeEntry, TreeKind};

use crate::build::{BuildError, BuildOptions, BuildSummary, Tree, Walked, build_tree};

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// The legacy image could not be opened (wrong key, unsupported cipher, LUKS1, corrupt ext4, …).
    #[error("legacy image {path}")]
    Legacy {
        /// The legacy image.
        path: PathBuf,
        /// What the legacy reader refused.
        #[source]
        source: LegacyError,
    },
    /// Opening the legacy image file failed.
    #[error("opening {path}")]
    Open {
        /// The legacy image.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Building the new image failed (paths in the message are inside the legacy filesystem).
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Converts the legacy image at `legacy` (opened with `passphrase`, the old key file's bytes) into the image
/// `opts.output` sealed with `key`. `opts.src` is not used. `progress` gets the plaintext bytes read so far.
pub fn convert(
    legacy: &Path,
    passphrase: &[u8],
    opts: &BuildOptions,
    key: &ModelKey,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<BuildSummary, ConvertError> {
    let lerr = |source| ConvertError::Legacy {
        path: legacy.to_owned(),
        source,
    };
    if !opts.force && std::fs::symlink_metadata(&opts.output).is_ok() {
        return Err(BuildError::OutputExists(opts.output.clone()).into());
    }
    let file = File::open(legacy).map_err(|source| ConvertError::Open {
        path: legacy.to_owned(),
        source,
    })?;
    let image = LegacyImage::open(file, passphrase).map_err(lerr)?;
    encfs::legacy::warn_no_integrity_once();
    let tree = Ext4Tree {
        fs: image.ext4().map_err(lerr)?,
    };
    Ok(build_tree(&tree, opts, key, progress)?)
}

/// The ext4 volume of a legacy image as a build [`Tree`]. `Walked::path` holds the absolute path inside ext4.
pub struct Ext4Tree {
    /// The filesystem.
    pub fs: Ext4Volume,
}

impl Tree for Ext4Tree {
    fn walk(&self) -> Result<Vec<Walked>, BuildError> {
        let tree = self.fs.walk().map_err(|e| BuildError::Read {
            path: PathBuf::from("/"),
            source: io::Error::other(e),
        })?;
        walked_from_ext4(&tree)
    }

    fn open(&self, path: &Path, size: u64) -> Result<Box<dyn Read + '_>, BuildError> {
        let file = self
            .fs
            .open(path.as_os_str().as_bytes())
            .map_err(|e| BuildError::Read {
                path: path.to_owned(),
                source: io::Error::other(e),
            })?;
        if file.size() != size {
            return Err(BuildError::Changed(path.to_owned()));
        }
        Ok(Box::new(Ext4Reader { file, pos: 0 }))
    }
}

/// Sequential [`Read`] over an [`Ext4File`].
struct Ext4Reader {
    file: Ext4File,
    pos: u64,
}

impl Read for Ext4Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(self.pos, buf).map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Maps the ext4 walk (already in index order) to build entries, refusing what an image cannot carry.
fn walked_from_ext4(tree: &[TreeEntry]) -> Result<Vec<Walked>, BuildError> {
    let mut out = Vec::with_capacity(tree.len());
    // ext4 walk index -> index in `out` (None: left out).
    let mut number: Vec<Option<u64>> = Vec::with_capacity(tree.len());
    let mut depth: Vec<usize> = Vec::with_capacity(tree.len());
    for (i, e) in tree.iter().enumerate() {
        let path = PathBuf::from(OsStr::from_bytes(&e.path));
        let is_lost_found =
            e.parent == 0 && i != 0 && e.name == b"lost+found" && tree.iter().skip(i + 1).all(|c| c.parent != i);
        let parent = if i == 0 { Some(0) } else { number[e.parent] };
        let (Some(parent), false) = (parent, is_lost_found) else {
            number.push(None);
            depth.push(0);
            continue;
        };
        let d = if i == 0 { 0 } else { depth[e.parent] + 1 };
        if e.name.len() > MAX_NAME_LEN {
            return Err(BuildError::TooLong { path, what: "name" });
        }
        let (kind, src) = match &e.kind {
            TreeKind::Dir => (EntryKind::Dir, None),
            TreeKind::File { size } => (
                EntryKind::File {
                    size: *size,
                    sha256: [0; 32],
                },
                Some(path.clone()),
            ),
            TreeKind::Symlink { target } => {
                if target.len() > MAX_SYMLINK_LEN {
                    return Err(BuildError::TooLong {
                        path,
                        what: "symlink target",
                    });
                }
                if escapes(target, d - 1) {
                    return Err(BuildError::SymlinkOutside {
                        path,
                        target: String::from_utf8_lossy(target).into_owned(),
                    });
                }
                (EntryKind::Symlink { target: target.clone() }, None)
            }
            TreeKind::Special { kind } => return Err(BuildError::SpecialFile { path, kind }),
            TreeKind::Unreadable { reason } => {
                return Err(BuildError::Read {
                    path,
                    source: io::Error::other(reason.clone()),
                });
            }
            other => {
                return Err(BuildError::Read {
                    path,
                    source: io::Error::other(format!("unsupported entry {other:?}")),
                });
            }
        };
        number.push(Some(out.len() as u64));
        depth.push(d);
        out.push(Walked {
            entry: Entry {
                parent,
                name: e.name.clone(),
                mode: u32::from(e.mode) & 0o7777,
                mtime: e.mtime,
                mtime_nsec: e.mtime_nsec,
                kind,
            },
            path: src,
        });
    }
    Ok(out)
}

/// Whether a symlink in a directory `dir_depth` levels below the root, pointing at `target`, leaves the tree
/// (absolute, or more `..` than levels at any point). Lexical, as the target may not exist.
fn escapes(target: &[u8], dir_depth: usize) -> bool {
    if target.first() == Some(&b'/') {
        return true;
    }
    let mut level = dir_depth as i64;
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => level -= 1,
            _ => level += 1,
        }
        if level < 0 {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::escapes;

    #[test]
    fn symlinks_that_leave_the_tree_are_caught_lexically() {
        assert!(escapes(b"/etc/passwd", 3));
        assert!(escapes(b"../x", 0));
        assert!(!escapes(b"../x", 1));
        assert!(escapes(b"a/../../../x", 1));
        assert!(!escapes(b"./a/./b", 0));
    }
}
