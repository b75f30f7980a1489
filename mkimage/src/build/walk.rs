//! Walks the model directory into index entries: depth-first, children sorted by name, nothing followed.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use encfs::format::{Entry, EntryKind, MAX_NAME_LEN, MAX_SYMLINK_LEN};

use super::BuildError;

/// One walked entry: the index entry (file digests still zero) and, for files, where to read it.
#[derive(Clone, Debug)]
pub struct Walked {
    /// The index entry.
    pub entry: Entry,
    /// Source path (files only).
    pub path: Option<PathBuf>,
}

/// Walks `root` (which must be a directory) in index order: the root first, then depth-first with children
/// sorted by name bytes. Refuses special files and symlinks that point outside the tree.
pub fn walk(root: &Path) -> Result<Vec<Walked>, BuildError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| BuildError::Read { path, source }
    };
    let meta = std::fs::metadata(root).map_err(read_err(root))?;
    if !meta.is_dir() {
        return Err(BuildError::NotADirectory(root.to_owned()));
    }
    let canon_root = std::fs::canonicalize(root).map_err(read_err(root))?;
    let mut out = vec![Walked {
        entry: entry_for(0, Vec::new(), &meta, EntryKind::Dir),
        path: None,
    }];
    // Stack of (directory path, its entry number, depth below root), children pushed in reverse order.
    let mut pending: Vec<(PathBuf, u64, usize)> = Vec::new();
    push_children(root, 0, 0, &mut pending)?;
    while let Some((path, parent, depth)) = pending.pop() {
        let name = path.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
        if name.len() > MAX_NAME_LEN {
            return Err(BuildError::TooLong { path, what: "name" });
        }
        let meta = std::fs::symlink_metadata(&path).map_err(read_err(&path))?;
        let ft = meta.file_type();
        let number = out.len() as u64;
        if ft.is_dir() {
            out.push(Walked {
                entry: entry_for(parent, name, &meta, EntryKind::Dir),
                path: None,
            });
            push_children(&path, number, depth + 1, &mut pending)?;
        } else if ft.is_file() {
            let kind = EntryKind::File {
                size: meta.len(),
                sha256: [0; 32],
            };
            out.push(Walked {
                entry: entry_for(parent, name, &meta, kind),
                path: Some(path),
            });
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(read_err(&path))?;
            let bytes = target.as_os_str().as_bytes().to_vec();
            if bytes.len() > MAX_SYMLINK_LEN {
                return Err(BuildError::TooLong {
                    path,
                    what: "symlink target",
                });
            }
            check_symlink_inside(&canon_root, &path, &target, depth)?;
            out.push(Walked {
                entry: entry_for(parent, name, &meta, EntryKind::Symlink { target: bytes }),
                path: None,
            });
        } else {
            let kind = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "FIFO"
            } else if ft.is_block_device() {
                "block device"
            } else if ft.is_char_device() {
                "character device"
            } else {
                "special file"
            };
            return Err(BuildError::SpecialFile { path, kind });
        }
    }
    Ok(out)
}

fn entry_for(parent: u64, name: Vec<u8>, meta: &std::fs::Metadata, kind: EntryKind) -> Entry {
    Entry {
        parent,
        name,
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime(),
        mtime_nsec: u32::try_from(meta.mtime_nsec()).unwrap_or(0).min(999_999_999),
        kind,
    }
}

fn push_children(
    dir: &Path,
    number: u64,
    depth: usize,
    pending: &mut Vec<(PathBuf, u64, usize)>,
) -> Result<(), BuildError> {
    let err = |source| BuildError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(err)? {
        names.push(e.map_err(err)?.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for n in names.into_iter().rev() {
        pending.push((dir.join(n), number, depth));
    }
    Ok(())
}

/// A symlink must resolve inside the tree. Existing targets are resolved for real (so chains of links are
/// followed as the kernel will follow them in the mount); dangling ones are checked lexically.
fn check_symlink_inside(canon_root: &Path, link: &Path, target: &Path, depth: usize) -> Result<(), BuildError> {
    let outside = || BuildError::SymlinkOutside {
        path: link.to_owned(),
        target: target.display().to_string(),
    };
    if target.is_absolute() {
        return Err(outside());
    }
    let mut level = depth as i64;
    for c in target.components() {
        match c {
            Component::ParentDir => level -= 1,
            Component::Normal(_) => level += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(outside()),
        }
        if level < 0 {
            return Err(outside());
        }
    }
    let parent = link.parent().unwrap_or(Path::new("."));
    if let Ok(resolved) = std::fs::canonicalize(parent.join(target))
        && !resolved.starts_with(canon_root)
    {
        return Err(outside());
    }
    Ok(())
}
