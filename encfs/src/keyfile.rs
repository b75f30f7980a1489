//! Reading a model key file: exactly 32 raw bytes in a regular file.
//!
//! A key file is opened without blocking (a FIFO would otherwise wait forever for a writer) and must be a regular
//! file (`/dev/zero` would otherwise be read until memory runs out); at most one byte more than a key is read.
//! Symlinks are followed: orchestrators mount secrets as symlinks (Kubernetes' `..data/`). A key readable or
//! writable by group or others is accepted with a [`KeyFile::warning`], because secret volumes are often
//! mounted 0644 inside a container that is the only reader; `chmod 600` silences it.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::format::{KEY_LEN, ModelKey};

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Opening or reading the file failed.
    #[error("key file {path}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not a regular file (a FIFO, a device, a directory, a socket).
    #[error("key file {path} is a {kind}, not a regular file")]
    NotRegular {
        /// The key file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The file does not hold exactly 32 bytes.
    #[error("key file {path} has {len} bytes, not {KEY_LEN} bytes: a key file holds exactly the raw key")]
    WrongLength {
        /// The key file.
        path: PathBuf,
        /// Its length (a lower bound when it kept growing while read).
        len: u64,
    },
}

/// A key read from a key file.
#[derive(Debug)]
pub struct KeyFile {
    /// The key.
    pub key: ModelKey,
    /// The file's permission bits.
    pub mode: u32,
    /// The key file.
    pub path: PathBuf,
}

impl KeyFile {
    /// A warning to show when the file is readable or writable by group or others, else `None`.
    pub fn warning(&self) -> Option<String> {
        (self.mode & 0o077 != 0).then(|| {
            format!(
                "key file {} has mode {:04o}: group or others may read or replace the model key (chmod 600)",
                self.path.display(),
                self.mode & 0o7777
            )
        })
    }
}

/// Reads `path`: a regular file of exactly [`KEY_LEN`] bytes (see the module docs).
pub fn read(path: &Path) -> Result<KeyFile, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    let kind = file_kind(&meta);
    if kind != "regular file" {
        return Err(KeyFileError::NotRegular {
            path: path.to_owned(),
            kind,
        });
    }
    let wrong = |len| KeyFileError::WrongLength {
        path: path.to_owned(),
        len,
    };
    if meta.len() != KEY_LEN as u64 {
        return Err(wrong(meta.len()));
    }
    // Straight into the key's own memory (no other copy), then one byte more, so a file that grew since `stat`
    // is noticed; never more.
    let mut f = f;
    let key = ModelKey::new_with(|buf| {
        let mut n = 0;
        while n < KEY_LEN {
            match f.read(&mut buf[n..]) {
                Ok(0) => return Err(wrong(n as u64)),
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        let mut extra = [0u8; 1];
        match f.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err(wrong(KEY_LEN as u64 + 1)),
            Err(e) => Err(io(e)),
        }
    })?;
    Ok(KeyFile {
        key,
        mode: meta.permissions().mode(),
        path: path.to_owned(),
    })
}

/// Names the kind of file `meta` describes.
pub fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        "regular file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_and_wrong_lengths_are_refused_without_blocking_or_reading_on() {
        let e = read(Path::new("/dev/zero")).unwrap_err();
        assert!(
            matches!(
                e,
                KeyFileError::NotRegular {
                    kind: "character device",
                    ..
                }
            ),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0);
        let e = read(&fifo).unwrap_err();
        assert!(matches!(e, KeyFileError::NotRegular { kind: "FIFO", .. }), "{e}");
        let short = dir.path().join("short");
        std::fs::write(&short, [1u8; 31]).unwrap();
        assert!(read(&short).unwrap_err().to_string().contains("31 bytes"));
        let ok = dir.path().join("ok");
        std::fs::write(&ok, [7u8; 32]).unwrap();
        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o644)).unwrap();
        let k = read(&ok).unwrap();
        assert_eq!(k.key.expose(), &[7u8; 32]);
        assert!(k.warning().unwrap().contains("0644"));
        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read(&ok).unwrap().warning().is_none());
    }
}
