//! Extraction: an opened, authenticated image written out as plain files, for platforms where FUSE cannot run
//! (AKS confidential containers: no `/dev/fuse`, no mount propagation between containers).
//!
//! Every byte written came from a chunk that passed authentication against the image's index
//! ([`EncFs::read_into`]), and every file's plaintext is checked against the SHA-256 the authenticated index
//! records for it before extraction counts as done. The tree is written into a fresh staging directory (mode
//! 0700) and renamed into place only when every file has been written and checked, so a consumer never sees a
//! partial or unchecked tree; on failure the staging directory is removed. Files and directories get the
//! image's permission bits without write bits: the extracted tree is read-only, like the mount.
//!
//! The destination is meant to be a memory-backed volume inside the confidential VM (a Kubernetes `emptyDir`
//! with `medium: Memory`, which lives in the utility VM's encrypted memory): the plaintext costs its size in
//! memory, and the consumer starts only after the whole image was fetched and decrypted.

use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest as _, Sha256};

use crate::format::EntryKind;
use crate::fs::{EncFs, FileKind, FsError};
use crate::source::BlobSource;

/// Bytes asked of the filesystem per read while extracting.
const READ_SIZE: u32 = 4 << 20;

/// Why an extraction failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    /// A chunk failed authentication or could not be read from the source.
    #[error("reading {path}: {source} (nothing was extracted)")]
    Read {
        /// The file, relative to the image root.
        path: String,
        /// What the filesystem reported.
        #[source]
        source: FsError,
    },
    /// A file's plaintext does not have the SHA-256 the index records.
    #[error("{path}: content digest {got} differs from the index's {want} (nothing was extracted)")]
    Digest {
        /// The file, relative to the image root.
        path: String,
        /// SHA-256 of what was read (hex).
        got: String,
        /// SHA-256 the authenticated index records (hex).
        want: String,
    },
    /// A name in the image cannot be a path component here.
    #[error("the image holds an entry named {name:?} under {parent}: not a valid file name")]
    BadName {
        /// The parent directory, relative to the image root.
        parent: String,
        /// The name, lossily decoded.
        name: String,
    },
    /// The destination lacks room for the plaintext.
    #[error(
        "{dir} has {free} bytes free, the image's files need {need}: give the volume more room (for a \
         memory-backed emptyDir: its sizeLimit and the container's memory limit)"
    )]
    NoRoom {
        /// The destination's parent directory.
        dir: String,
        /// Bytes free there.
        free: u64,
        /// Bytes the files need.
        need: u64,
    },
    /// Writing the tree failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ExtractError + use<'a> {
    move |source| ExtractError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// What an extraction wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Regular files written.
    pub files: u64,
    /// Directories made (the root included).
    pub dirs: u64,
    /// Symbolic links made.
    pub symlinks: u64,
    /// Plaintext bytes written.
    pub bytes: u64,
    /// Wall time, milliseconds.
    pub ms: u64,
}

/// Writes the tree of `fs` to `dest` (which must not exist; its parent must), reading through `rt`. Must not be
/// called on a runtime worker thread without `block_in_place`.
pub fn extract<B: BlobSource>(
    fs: &EncFs<B>,
    dest: &Path,
    rt: &tokio::runtime::Handle,
) -> Result<ExtractStats, ExtractError> {
    let t = Instant::now();
    let parent = dest.parent().unwrap_or(Path::new("."));
    let need = fs.statfs().bytes;
    let free = free_bytes(parent).map_err(io("checking free space on", parent))?;
    if free < need {
        return Err(ExtractError::NoRoom {
            dir: parent.display().to_string(),
            free,
            need,
        });
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = parent.join(format!(".{name}.partial"));
    remove_tree(&staging)?;
    let mut x = Extractor {
        fs,
        rt,
        stats: ExtractStats::default(),
        modes: Vec::new(),
        buf: Vec::new(),
    };
    let result = x.tree(&staging).and_then(|()| {
        // Final modes bottom-up (children before their directory loses its write bit).
        for (path, mode) in x.modes.iter().rev() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))
                .map_err(io("setting mode of", path))?;
        }
        std::fs::rename(&staging, dest).map_err(io("renaming into place", dest))
    });
    if let Err(e) = result {
        let _ = remove_tree(&staging);
        return Err(e);
    }
    x.stats.ms = t.elapsed().as_millis() as u64;
    Ok(x.stats)
}

/// Removes `path` and everything under it, if it exists (write bits are restored first: an extracted tree is
/// read-only).
pub(crate) fn remove_tree(path: &Path) -> Result<(), ExtractError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("inspecting", path)(e)),
        Ok(m) if m.is_dir() => {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
            for entry in std::fs::read_dir(path).map_err(io("listing", path))? {
                let entry = entry.map_err(io("listing", path))?;
                remove_tree(&entry.path())?;
            }
            std::fs::remove_dir(path).map_err(io("removing", path))
        }
        Ok(_) => std::fs::remove_file(path).map_err(io("removing", path)),
    }
}

fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = nix_statvfs(dir)?;
    Ok(s.0.saturating_mul(s.1))
}

/// (available blocks, fragment size) of the filesystem holding `dir`.
fn nix_statvfs(dir: &Path) -> std::io::Result<(u64, u64)> {
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    #[allow(unsafe_code)]
    // SAFETY: `c` is a valid NUL-terminated path; `st` is writable and statvfs fills it on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok((st.f_bavail, st.f_frsize))
}

struct Extractor<'a, B: BlobSource> {
    fs: &'a EncFs<B>,
    rt: &'a tokio::runtime::Handle,
    stats: ExtractStats,
    /// Final modes, in creation order (parents first).
    modes: Vec<(PathBuf, u32)>,
    buf: Vec<u8>,
}

impl<B: BlobSource> Extractor<'_, B> {
    /// Walks the tree from the root (inode 1), depth first. Paths are built only from directories made here and
    /// names checked to be single components, so nothing outside `root` is written and no symlink is followed.
    fn tree(&mut self, root: &Path) -> Result<(), ExtractError> {
        let mut stack = vec![(1u64, root.to_path_buf(), String::new())];
        while let Some((ino, dir, rel)) = stack.pop() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(io("creating", &dir))?;
            self.stats.dirs += 1;
            let attr = self.fs.getattr(ino).map_err(|source| ExtractError::Read {
                path: shown(&rel),
                source,
            })?;
            self.modes.push((dir.clone(), u32::from(attr.perm) & 0o555));
            let kids: Vec<(u64, FileKind, Vec<u8>)> = self
                .fs
                .readdir(ino, 2)
                .map_err(|source| ExtractError::Read {
                    path: shown(&rel),
                    source,
                })?
                .map(|e| (e.ino, e.kind, e.name.to_vec()))
                .collect();
            for (kid, kind, name) in kids {
                let name_str = check_name(&name).ok_or_else(|| ExtractError::BadName {
                    parent: shown(&rel),
                    name: String::from_utf8_lossy(&name).into_owned(),
                })?;
                let path = dir.join(name_str);
                let shown_name = name_str.to_string_lossy();
                let kid_rel = if rel.is_empty() {
                    shown_name.into_owned()
                } else {
                    format!("{rel}/{shown_name}")
                };
                match kind {
                    FileKind::Dir => stack.push((kid, path, kid_rel)),
                    FileKind::Symlink => {
                        let target = self.fs.readlink(kid).map_err(|source| ExtractError::Read {
                            path: kid_rel.clone(),
                            source,
                        })?;
                        let target = OsStr::from_bytes(target);
                        std::os::unix::fs::symlink(target, &path).map_err(io("creating symlink", &path))?;
                        self.stats.symlinks += 1;
                    }
                    FileKind::File => self.file(kid, &path, &kid_rel)?,
                }
            }
        }
        Ok(())
    }

    fn file(&mut self, ino: u64, path: &Path, rel: &str) -> Result<(), ExtractError> {
        let read_err = |source| ExtractError::Read {
            path: rel.to_owned(),
            source,
        };
        let attr = self.fs.getattr(ino).map_err(read_err)?;
        let want = match &self.fs.index().entries[(ino - 1) as usize].kind {
            EntryKind::File { sha256, .. } => *sha256,
            _ => return Err(read_err(FsError::NotFile)),
        };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io("creating", path))?;
        let mut hash = Sha256::new();
        let mut offset = 0u64;
        while offset < attr.size {
            let want_len = (attr.size - offset).min(u64::from(READ_SIZE)) as u32;
            self.rt
                .block_on(self.fs.read_into(ino, offset, want_len, &mut self.buf))
                .map_err(|source| ExtractError::Read {
                    path: rel.to_owned(),
                    source,
                })?;
            if self.buf.is_empty() {
                break;
            }
            hash.update(&self.buf);
            out.write_all(&self.buf).map_err(io("writing", path))?;
            offset += self.buf.len() as u64;
        }
        let got: [u8; 32] = hash.finalize().into();
        if got != want || offset != attr.size {
            return Err(ExtractError::Digest {
                path: rel.to_owned(),
                got: hex::encode(got),
                want: hex::encode(want),
            });
        }
        out.set_modified(attr.mtime).map_err(io("setting mtime of", path))?;
        out.sync_all().map_err(io("syncing", path))?;
        self.modes.push((path.to_path_buf(), u32::from(attr.perm) & 0o555));
        self.stats.files += 1;
        self.stats.bytes += attr.size;
        Ok(())
    }
}

/// The path shown for an entry (`/` for the root).
fn shown(rel: &str) -> String {
    if rel.is_empty() { "/".into() } else { rel.to_owned() }
}

/// `name` as a single path component, or None (empty, `.`, `..`, with a slash or NUL).
fn check_name(name: &[u8]) -> Option<&OsStr> {
    (!name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0))
        .then(|| OsStr::from_bytes(name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::MetadataExt as _;

    use super::*;
    use crate::source::MemSource;
    use crate::testing::{Content, TreeBuilder};

    const CS: u32 = 4096;

    fn data(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + seed + i / 4096) as u8).collect()
    }

    /// A runtime and an opened image of a small tree; `tamper` flips one byte at that offset of the image.
    fn open(tree: &TreeBuilder, tamper: Option<usize>) -> (tokio::runtime::Runtime, EncFs<MemSource>) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let fs = tree
            .open_in_memory(&rt, CS, |image| {
                if let Some(at) = tamper {
                    image[at] ^= 1;
                }
            })
            .unwrap();
        (rt, fs)
    }

    fn tree() -> TreeBuilder {
        let mut t = TreeBuilder::new();
        t.file(
            "models/resnet/1/model.onnx",
            Content::Bytes(data(10 * CS as usize + 77, 1)),
        );
        t.file_with_mode(
            "models/resnet/config.pbtxt",
            Content::Bytes(b"name: \"resnet\"\n".to_vec()),
            0o640,
        );
        t.file("models/empty", Content::Bytes(Vec::new()));
        t.file("tools/run.sh", Content::Bytes(b"#!/bin/sh\n".to_vec()));
        t.file_with_mode("tools/run2.sh", Content::Bytes(b"#!/bin/sh\nexit 0\n".to_vec()), 0o755);
        t.symlink("latest", "models/resnet/1/model.onnx");
        t
    }

    #[test]
    fn the_tree_is_written_byte_exact_and_read_only() {
        let t = tree();
        let (rt, fs) = open(&t, None);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        let stats = extract(&fs, &dest, rt.handle()).unwrap();
        assert_eq!((stats.files, stats.symlinks), (5, 1));
        assert_eq!(stats.dirs, 5, "root, models, models/resnet, models/resnet/1, tools");
        assert_eq!(stats.bytes, fs.statfs().bytes);
        assert_eq!(
            std::fs::read(dest.join("models/resnet/1/model.onnx")).unwrap(),
            data(10 * CS as usize + 77, 1)
        );
        assert_eq!(
            std::fs::read(dest.join("models/resnet/config.pbtxt")).unwrap(),
            b"name: \"resnet\"\n"
        );
        assert_eq!(std::fs::read(dest.join("models/empty")).unwrap(), b"");
        assert_eq!(
            std::fs::read_link(dest.join("latest")).unwrap(),
            Path::new("models/resnet/1/model.onnx")
        );
        // The image's modes without write bits; mtimes as recorded.
        let mode = |p: &str| std::fs::symlink_metadata(dest.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("models/resnet/config.pbtxt"), 0o440);
        assert_eq!(mode("tools/run2.sh"), 0o555);
        assert_eq!(mode("models"), 0o555);
        assert_eq!(mode(""), 0o555);
        let mtime = std::fs::metadata(dest.join("tools/run.sh"))
            .unwrap()
            .modified()
            .unwrap();
        let tools = fs.lookup(1, b"tools").unwrap().ino;
        assert_eq!(mtime, fs.lookup(tools, b"run.sh").unwrap().mtime);
        // Nothing else is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out"]);
        // A second extraction over a finished tree (a restarted init container) is the caller's to clear.
        remove_tree(&dest).unwrap();
        assert!(!dest.exists());
    }

    /// A flipped ciphertext byte anywhere in a file's chunks: the extraction fails naming the file, and neither
    /// the destination nor a partial tree is left.
    #[test]
    fn a_tampered_chunk_leaves_nothing() {
        let t = tree();
        // The first file's data starts right after the 4096-byte header; chunk 3, byte 100.
        let (rt, fs) = open(&t, Some(4096 + 3 * (CS as usize + 16) + 100));
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        let e = extract(&fs, &dest, rt.handle()).unwrap_err();
        assert!(matches!(e, ExtractError::Read { .. }), "{e}");
        assert!(e.to_string().contains("models/resnet/1/model.onnx"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "something was left");
    }

    #[test]
    fn too_little_room_is_refused_before_writing() {
        // A 1 MiB tmpfs cannot hold 2 MiB of files (needs root, which the FUSE tests have anyway).
        let dir = tempfile::tempdir().unwrap();
        let c = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                c.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"size=1m".as_ptr().cast(),
            )
        };
        if rc != 0 {
            eprintln!(
                "skipping: cannot mount a tmpfs here ({})",
                std::io::Error::last_os_error()
            );
            return;
        }
        let mut t = TreeBuilder::new();
        t.file("big", Content::Bytes(data(2 << 20, 3)));
        let (rt, fs) = open(&t, None);
        let e = extract(&fs, &dir.path().join("out"), rt.handle()).unwrap_err();
        let shown = e.to_string();
        #[allow(unsafe_code)]
        // SAFETY: as above.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH)
        };
        assert!(matches!(e, ExtractError::NoRoom { need: 2097152, .. }), "{shown}");
        assert!(shown.contains("sizeLimit"), "{shown}");
    }

    #[test]
    fn names_that_are_not_one_component_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(check_name(bad).is_none(), "{bad:?}");
        }
        assert_eq!(check_name(b"model.onnx"), Some(OsStr::new("model.onnx")));
        assert_eq!(check_name(b"\xff"), Some(OsStr::from_bytes(b"\xff")));
    }
}
