//! `verify`: opens every chunk, checks every tag and every file digest, and reports the first failure with the
//! chunk index and the file it belongs to.

use std::os::unix::fs::FileExt;
use std::path::Path;

use encfs::format::{EntryKind, ModelKey, TAG_LEN, open_chunk_into};
use sha2::{Digest, Sha256};

use crate::image_file::{ImageFile, ImageFileError};

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The image could not be read, or its header/index were refused.
    #[error(transparent)]
    Image(#[from] ImageFileError),
    /// A chunk failed authentication.
    #[error("chunk {index} of /{file} (file bytes {start}..{end}) failed authentication")]
    Chunk {
        /// Global chunk index.
        index: u64,
        /// The file it belongs to.
        file: String,
        /// First plaintext byte of the chunk within the file.
        start: u64,
        /// End of the chunk within the file.
        end: u64,
    },
    /// Every chunk opened but the file's SHA-256 differs from the index (cannot happen without the key).
    #[error("/{file}: content digest differs from the index")]
    Digest {
        /// The file.
        file: String,
    },
}

/// What a successful verification saw.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// Root digest.
    pub root: [u8; 32],
    /// Chunks opened.
    pub chunks: u64,
    /// Plaintext bytes checked.
    pub bytes: u64,
    /// Files checked.
    pub files: u64,
}

/// Verifies every chunk and file digest of the image at `path`.
pub fn verify(path: &Path, key: &ModelKey) -> Result<VerifyReport, VerifyError> {
    let img = ImageFile::open(path)?;
    let (opened, keys) = img.open_with_key(key)?;
    let cs = opened.header.chunk_size;
    let mut report = VerifyReport {
        root: opened.root,
        chunks: 0,
        bytes: 0,
        files: 0,
    };
    let mut sealed = vec![0u8; cs as usize + TAG_LEN];
    let mut plain = vec![0u8; cs as usize];
    for (i, e) in opened.index.entries.iter().enumerate() {
        let EntryKind::File { sha256, .. } = &e.kind else {
            continue;
        };
        let Some(fl) = opened.layout.file(i) else { continue };
        let mut hasher = Sha256::new();
        for n in 0..fl.chunk_count {
            let loc = fl.chunk(n, cs);
            let sealed = &mut sealed[..loc.sealed_len as usize];
            let plain = &mut plain[..loc.plain_len as usize];
            img.file
                .read_exact_at(sealed, loc.offset)
                .map_err(|source| ImageFileError::Io {
                    path: path.to_owned(),
                    source,
                })?;
            open_chunk_into(&keys, loc.index, sealed, plain).map_err(|_| VerifyError::Chunk {
                index: loc.index,
                file: opened.index.path_of(i),
                start: loc.file_offset,
                end: loc.file_offset + loc.plain_len,
            })?;
            hasher.update(&*plain);
            report.chunks += 1;
            report.bytes += loc.plain_len;
        }
        if hasher.finalize().as_slice() != sha256 {
            return Err(VerifyError::Digest {
                file: opened.index.path_of(i),
            });
        }
        report.files += 1;
    }
    Ok(report)
}
