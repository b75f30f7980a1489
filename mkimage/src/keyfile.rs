//! Key files: exactly 32 raw bytes, created with mode 0600 when missing.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use encfs::format::{KEY_LEN, ModelKey};

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Reading or creating the file failed.
    #[error("key file {path}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but does not hold exactly 32 bytes.
    #[error("key file {path} has {len} bytes; a key file must hold exactly {KEY_LEN} raw bytes")]
    WrongLength {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
}

/// Reads a 32-byte key file.
pub fn read(path: &Path) -> Result<ModelKey, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    if len != KEY_LEN as u64 {
        return Err(KeyFileError::WrongLength {
            path: path.to_owned(),
            len,
        });
    }
    let mut buf = zeroize::Zeroizing::new([0u8; KEY_LEN]);
    f.read_exact(&mut buf[..]).map_err(io)?;
    Ok(ModelKey::new(*buf))
}

/// Reads the key file, or creates it with 32 random bytes and mode 0600 if it does not exist.
/// Returns the key and whether it was created.
pub fn read_or_create(path: &Path) -> Result<(ModelKey, bool), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut f) => {
            let key = ModelKey::generate();
            let written = f.write_all(key.expose()).and_then(|()| f.sync_all());
            if let Err(e) = written {
                let _ = std::fs::remove_file(path);
                return Err(io(e));
            }
            Ok((key, true))
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok((read(path)?, false)),
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn created_key_file_is_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let (k1, created) = read_or_create(&p).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let (k2, created) = read_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(k1.expose(), k2.expose());
    }

    #[test]
    fn wrong_length_key_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("short");
        std::fs::write(&p, [1u8; 31]).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("short") && e.contains("31 bytes"), "{e}");
    }
}
