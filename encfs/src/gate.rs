//! The mount-time signature gate: nothing is exposed until the image's embedded model signature checks out.
//!
//! Two steps, both before the mount becomes visible:
//!
//! 1. **Manifest** ([`check_manifest`]): the OMS signature embedded in the index (extension 1) verifies with the
//!    signer's public key from the mount configuration, and its manifest lists exactly the image's files with
//!    exactly the SHA-256 values `build` recorded in the index. A missing, extra or mismatched file refuses the
//!    mount, naming the file. Reads no file content.
//! 2. **Content** ([`verify_content`], `--verify full`, the default): every file is read through the same
//!    decrypting read path the mount serves ([`EncFs::read_into`]) and hashed; any digest that differs from the
//!    index refuses the mount, naming the file. Fetch + decrypt run on one thread per file while SHA-256 runs on
//!    another (a bounded pipeline), and several files go in parallel, largest first. Reading every chunk also warms
//!    the cache below the source (the page cache of the image file), so the model server's load that follows is
//!    local.
//!
//! Since the image is authenticated chunk by chunk and the root digest pins the index (which holds the digests), the
//! bytes the mount serves later are the bytes checked here: nothing is re-read from mutable plaintext storage.
//!
//! `--verify manifest` skips step 2. That is sound where the model-key owner is the signer (or trusts the
//! builder): AEAD plus the pinned root already guarantee that the content is what the key holder built, and the
//! manifest check proves the signer vouched for exactly those digests. What it does not catch is a builder that
//! recorded digests not matching the data it sealed (a buggy or malicious tool run by someone holding the model
//! key, but not the signing key); step 2 does.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::info;

use crate::format::EntryKind;
use crate::fs::{EncFs, FsError};
use crate::signature::{self, SignatureError, SignedManifest, VerifyingKey};
use crate::source::BlobSource;

/// Plaintext bytes per read in the content pass (128 chunks of the default size, decrypted in parallel).
const READ_BYTES: u32 = 8 << 20;

/// How much the gate checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VerifyMode {
    /// Manifest, then every file's content (hashed through the decrypting read path).
    #[default]
    Full,
    /// Manifest only: signature and the index's digests, no content pass.
    Manifest,
}

/// Why the gate refused the image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    /// The signature or the manifest check failed (the message names the files).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A file's content does not hash to the digest in the (signed) index.
    #[error("content check failed: {path}: SHA-256 {actual} differs from the signed {expected}")]
    ContentMismatch {
        /// The file.
        path: String,
        /// The signed digest (hex).
        expected: String,
        /// The digest of the content read (hex).
        actual: String,
    },
    /// Reading a file failed (source error, or a chunk failed authentication).
    #[error("content check failed: reading {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: FsError,
    },
}

/// What the content pass did.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ContentReport {
    /// Files hashed.
    pub files: usize,
    /// Plaintext bytes hashed.
    pub bytes: u64,
    /// Wall time of the pass.
    pub elapsed: Duration,
}

/// Step 1: the embedded signature verifies with `key` and lists exactly the image's files and digests.
pub(crate) fn check_manifest<B: BlobSource>(fs: &EncFs<B>, key: &VerifyingKey) -> Result<SignedManifest, GateError> {
    Ok(signature::check_index(fs.index(), key)?)
}

/// Step 2: hashes every regular file through `fs`'s decrypting read path and compares with the index digests.
/// `threads` files are verified at once (0 = one per core); `rt` runs the source's async reads.
pub(crate) fn verify_content<B: BlobSource>(
    fs: &EncFs<B>,
    rt: &tokio::runtime::Handle,
    threads: usize,
) -> Result<ContentReport, GateError> {
    let start = Instant::now();
    let index = fs.index();
    let mut files: Vec<(usize, u64, [u8; 32])> = index
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e.kind {
            EntryKind::File { size, sha256 } => Some((i, size, sha256)),
            _ => None,
        })
        .collect();
    files.sort_by_key(|&(_, size, _)| std::cmp::Reverse(size));
    let bytes = files.iter().map(|f| f.1).sum();
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        threads
    }
    .clamp(1, files.len().max(1));
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<GateError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    if first_error.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                        break;
                    }
                    let Some(&(i, size, expected)) = files.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    let r = hash_file(fs, rt, i, size).and_then(|actual| {
                        if actual == expected {
                            Ok(())
                        } else {
                            Err(GateError::ContentMismatch {
                                path: index.path_of(i),
                                expected: hex::encode(expected),
                                actual: hex::encode(actual),
                            })
                        }
                    });
                    if let Err(e) = r {
                        first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let elapsed = start.elapsed();
    Ok(ContentReport {
        files: files.len(),
        bytes,
        elapsed,
    })
}

/// Reads entry `i` (a file of `size` bytes) on a reader thread and hashes it on this one.
fn hash_file<B: BlobSource>(
    fs: &EncFs<B>,
    rt: &tokio::runtime::Handle,
    i: usize,
    size: u64,
) -> Result<[u8; 32], GateError> {
    let ino = i as u64 + 1;
    let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(2);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..3 {
        let _ = empty_tx.send(Vec::with_capacity(READ_BYTES as usize));
    }
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<(), FsError> {
            let mut offset = 0u64;
            while offset < size {
                let Ok(mut buf) = empty_rx.recv() else { break };
                rt.block_on(fs.read_into(ino, offset, READ_BYTES, &mut buf))?;
                if buf.is_empty() {
                    break;
                }
                offset += buf.len() as u64;
                if full_tx.send(buf).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let mut h = Sha256::new();
        let mut n = 0u64;
        for buf in full_rx.iter() {
            h.update(&buf);
            n += buf.len() as u64;
            let _ = empty_tx.send(buf);
        }
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(FsError::Source("content reader panicked".into())));
        read.map_err(|source| GateError::Read {
            path: fs.index().path_of(i),
            source,
        })?;
        if n != size {
            return Err(GateError::Read {
                path: fs.index().path_of(i),
                source: FsError::Source(format!("read {n} of {size} bytes").into()),
            });
        }
        Ok(h.finalize().into())
    })
}

/// Runs the gate: the manifest check, then (in [`VerifyMode::Full`]) the content pass, logging what it did.
pub fn run<B: BlobSource>(
    fs: &EncFs<B>,
    key: &VerifyingKey,
    mode: VerifyMode,
    rt: &tokio::runtime::Handle,
) -> Result<SignedManifest, GateError> {
    let manifest = check_manifest(fs, key)?;
    info!(
        files = manifest.files.len(),
        signer = %key.hint(),
        subject = %manifest.model_name,
        "model signature verified; the signed manifest matches the image index"
    );
    if mode == VerifyMode::Full {
        let r = verify_content(fs, rt, 0)?;
        let secs = r.elapsed.as_secs_f64();
        info!(
            files = r.files,
            bytes = r.bytes,
            secs = format!("{secs:.3}"),
            gb_per_s = format!("{:.2}", r.bytes as f64 / secs.max(1e-9) / 1e9),
            "content verified: every file hashes to its signed digest"
        );
    }
    Ok(manifest)
}
