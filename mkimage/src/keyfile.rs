//! Key files: exactly 32 raw bytes in a regular file ([`encfs::keyfile`] reads them), created with mode 0600 when
//! missing.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use encfs::format::ModelKey;
pub use encfs::keyfile::{KeyFile, KeyFileError};

/// Reads a 32-byte key file (a regular file; see [`encfs::keyfile`]).
pub fn read(path: &Path) -> Result<KeyFile, KeyFileError> {
    encfs::keyfile::read(path)
}

/// Reads the key file, or creates it with 32 random bytes and mode 0600 if it does not exist (`O_EXCL`, so a
/// symlink or a file created meanwhile is never written through). Returns the key and whether it was created.
pub fn read_or_create(path: &Path) -> Result<(KeyFile, bool), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(mut f) => {
            let key = ModelKey::generate();
            let written = f.write_all(key.expose()).and_then(|()| f.sync_all());
            if let Err(e) = written {
                let _ = std::fs::remove_file(path);
                return Err(io(e));
            }
            let file = KeyFile {
                key,
                mode: 0o600,
                path: path.to_owned(),
            };
            Ok((file, true))
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok((read(path)?, false)),
        Err(e) => Err(io(e)),
    }
}

/// An output that is a key file.
#[derive(Debug, thiserror::Error)]
#[error("the output {} is the key file {}: refusing to overwrite the key", output.display(), key.display())]
pub struct OutputIsKey {
    /// The output.
    pub output: PathBuf,
    /// The key file it names.
    pub key: PathBuf,
}

/// Refuses an output path that is the key file (the same file, or the same path once resolved): writing the output
/// would destroy the key (`build -o K --key-file K --force` created the key, then overwrote it with the image).
pub fn ensure_not_key(output: &Path, key_files: &[&Path]) -> Result<(), OutputIsKey> {
    match key_files.iter().find(|k| same_file(output, k)) {
        Some(k) => Err(OutputIsKey {
            output: output.to_owned(),
            key: k.to_path_buf(),
        }),
        None => Ok(()),
    }
}

/// True if `a` and `b` name the same file: the same inode when both exist, else the same path once made absolute
/// with its parent directory resolved.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return x.dev() == y.dev() && x.ino() == y.ino();
    }
    let resolve = |p: &Path| -> Option<PathBuf> {
        let abs = std::path::absolute(p).ok()?;
        let parent = abs.parent()?.canonicalize().ok()?;
        Some(parent.join(abs.file_name()?))
    };
    resolve(a).is_some_and(|x| resolve(b).is_some_and(|y| x == y))
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
        assert_eq!(k1.key.expose(), k2.key.expose());
    }

    #[test]
    fn wrong_length_key_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("short");
        std::fs::write(&p, [1u8; 31]).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("short") && e.contains("31 bytes"), "{e}");
    }

    #[test]
    fn an_output_that_is_the_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        assert!(ensure_not_key(&k, &[&k]).is_err(), "same missing path");
        std::fs::write(&k, [0u8; 32]).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&k, &link).unwrap();
        assert!(ensure_not_key(&link, &[&k]).is_err(), "a symlink to the key");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(
            ensure_not_key(&sub.join("../k"), &[&k]).is_err(),
            "a dotted path to the key"
        );
        assert!(ensure_not_key(&dir.path().join("img"), &[&k]).is_ok());
    }
}
