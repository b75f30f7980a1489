//! Model signing on the model owner's machine: OpenSSF Model Signing (OMS) signatures of a model directory or
//! single file, interoperable with `model_signing` 1.1.x (`model_signing sign key` / `verify key`).
//!
//! The format itself (bundle, DSSE, statement, keys, manifest comparison) is [`encfs::signature`]; this module does
//! what needs the file system: walking the model ([`crate::build::walk`], so signing sees exactly the tree `build`
//! would put into an image), hashing every file with SHA-256 on every core, resolving ignore paths, and the seed's
//! per-file `signature.bin` check for migration ([`verify_seed`]).

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use encfs::format::{Entry, EntryKind, Index};
use encfs::signature::{
    self, DEFAULT_IGNORE_PATHS, FileDigest, ManifestOptions, SEED_SIGNATURE_FILE, SINGLE_FILE, SeedDigest,
    SignatureError, SignedManifest, SigningKey, VerifyingKey, is_ignored, is_seed_signed,
};
use sha2::{Digest, Sha256};

use crate::build::{BuildError, walk};

/// Read size of the hashing loop.
const HASH_BUF: usize = 4 << 20;

/// Why signing or checking a signature failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// Reading a file failed.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Walking the model failed (special file, symlink leaving the tree, ...).
    #[error(transparent)]
    Walk(#[from] BuildError),
    /// The signature format refused the key, the bundle or the files.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The signer declared paths as ignored that are not `model_signing`'s defaults; files there are unsigned.
    #[error(
        "signature check refused: the signer declared these paths as ignored (not covered by the signature): {}; \
         pass --allow-signer-ignores to accept unsigned files there",
        paths.join(", ")
    )]
    SignerIgnores {
        /// The non-default ignore paths.
        paths: Vec<String>,
    },
    /// A seed `model*` file has no `signature.bin` beside it, or the check failed.
    #[error("seed signature check failed for {path}: {reason}")]
    Seed {
        /// The `model*` file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// The files of a model with their digests, as a manifest lists them.
#[derive(Clone, Debug)]
pub struct HashedModel {
    /// The subject name: the directory's (or single file's) name.
    pub name: String,
    /// Every file not ignored, with its SHA-256 (path [`SINGLE_FILE`] for a single-file model).
    pub files: Vec<FileDigest>,
    /// Plaintext bytes hashed.
    pub bytes: u64,
}

/// Which paths to leave out and whether to follow symlinks, when hashing a model directory.
#[derive(Clone, Debug, Default)]
pub struct HashOptions {
    /// Paths relative to the model root to leave out (whole subtrees).
    pub ignore_paths: Vec<String>,
    /// Follow symlinks to files inside the model (`model_signing --allow_symlinks`); otherwise a symlink fails.
    pub allow_symlinks: bool,
    /// Hashing threads (0 = one per core).
    pub threads: usize,
}

/// Options of [`sign_model`].
#[derive(Clone, Debug)]
pub struct SignOptions {
    /// Leave out `.git`, `.gitattributes`, `.github`, `.gitignore` at the top (the `model_signing` default).
    pub ignore_git_paths: bool,
    /// More paths to leave out, relative to the model root.
    pub ignore_paths: Vec<String>,
    /// Where the signature will be written: left out (and recorded as ignored) when inside the model.
    pub signature_path: Option<PathBuf>,
    /// Follow symlinks to files inside the model.
    pub allow_symlinks: bool,
}

impl Default for SignOptions {
    fn default() -> Self {
        Self {
            ignore_git_paths: true,
            ignore_paths: Vec::new(),
            signature_path: None,
            allow_symlinks: false,
        }
    }
}

/// A successful signature check of a model directory.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// The verified manifest.
    pub manifest: SignedManifest,
    /// Ignore paths the signer declared (files there are not covered by the signature).
    pub signer_ignores: Vec<String>,
    /// Files checked.
    pub files: usize,
    /// Bytes hashed.
    pub bytes: u64,
}

/// `path` relative to `root` as a `/`-joined UTF-8 string, if it lies inside.
fn relative_to(root: &Path, path: &Path) -> Option<String> {
    let root = std::fs::canonicalize(root).ok()?;
    let abs = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => std::fs::canonicalize(parent).ok()?.join(path.file_name()?),
        None => std::env::current_dir().ok()?.join(path),
    };
    let rel = abs.strip_prefix(&root).ok()?;
    let parts: Option<Vec<&str>> = rel.iter().map(|c| c.to_str()).collect();
    let parts = parts?;
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Resolves an ignore path the way `model_signing`'s CLI does (relative to the working directory) when that lands
/// inside the model, and otherwise as relative to the model root.
pub fn resolve_ignore_path(model: &Path, p: &str) -> String {
    relative_to(model, Path::new(p)).unwrap_or_else(|| p.trim_end_matches('/').to_owned())
}

fn model_name(model: &Path) -> String {
    std::fs::canonicalize(model)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// Hashes a model: every regular file of the directory (or the single file) that is not ignored, on every core.
pub fn hash_model(model: &Path, opts: &HashOptions) -> Result<HashedModel, SignError> {
    let name = model_name(model);
    let meta = std::fs::metadata(model).map_err(|source| SignError::Read {
        path: model.to_owned(),
        source,
    })?;
    if meta.is_file() {
        let (sha256, bytes) = hash_file(model)?;
        return Ok(HashedModel {
            name,
            files: vec![FileDigest {
                path: SINGLE_FILE.into(),
                sha256,
            }],
            bytes,
        });
    }
    let walked = walk(model)?;
    let mut index = Index {
        entries: walked.iter().map(|w| w.entry.clone()).collect(),
        extensions: Vec::new(),
    };
    // Which files to hash: those listed (directly or through a symlink) once ignores apply. Listing with zero
    // digests first also refuses symlinks and non-UTF-8 names before any hashing.
    signature::index_files(&index, opts.allow_symlinks, &opts.ignore_paths)?;
    let mut jobs: Vec<(usize, &Path, u64)> = Vec::new();
    for (i, w) in walked.iter().enumerate() {
        if let (Some(path), EntryKind::File { size, .. }) = (&w.path, &w.entry.kind)
            && !is_ignored(&index.path_of(i), &opts.ignore_paths)
        {
            jobs.push((i, path, *size));
        }
    }
    let digests = hash_files(&jobs, opts.threads)?;
    let mut bytes = 0;
    for ((i, _, size), d) in jobs.iter().zip(digests) {
        bytes += size;
        if let EntryKind::File { sha256, .. } = &mut index.entries[*i].kind {
            *sha256 = d;
        }
    }
    let files = signature::index_files(&index, opts.allow_symlinks, &opts.ignore_paths)?;
    Ok(HashedModel { name, files, bytes })
}

/// SHA-256 of one file, streaming.
fn hash_file(path: &Path) -> Result<([u8; 32], u64), SignError> {
    let rerr = |source| SignError::Read {
        path: path.to_owned(),
        source,
    };
    let mut f = File::open(path).map_err(rerr)?;
    let mut buf = vec![0u8; HASH_BUF];
    let mut h = Sha256::new();
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf).map_err(rerr)?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        n += got as u64;
    }
    Ok((h.finalize().into(), n))
}

/// One file's digest, or why it could not be hashed.
type HashResult = Result<[u8; 32], SignError>;

/// Hashes files in parallel, largest first; returns the digests in the order of `jobs`.
fn hash_files(jobs: &[(usize, &Path, u64)], threads: usize) -> Result<Vec<[u8; 32]>, SignError> {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        threads
    }
    .min(jobs.len().max(1));
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&j| std::cmp::Reverse(jobs[j].2));
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<HashResult>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&j) = order.get(k) else { break };
                    let r = hash_file(jobs[j].1).and_then(|(d, n)| {
                        if n == jobs[j].2 {
                            Ok(d)
                        } else {
                            Err(SignError::Walk(BuildError::Changed(jobs[j].1.to_owned())))
                        }
                    });
                    out.lock().unwrap_or_else(|p| p.into_inner())[j] = Some(r);
                }
            });
        }
    });
    out.into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(SignError::Walk(BuildError::Changed(PathBuf::new())))))
        .collect()
}

/// Signs a model directory or single file. Returns the bundle JSON that `model_signing verify key` accepts.
pub fn sign_model(model: &Path, key: &SigningKey, opts: &SignOptions) -> Result<Vec<u8>, SignError> {
    let mut ignore: Vec<String> = Vec::new();
    if opts.ignore_git_paths {
        ignore.extend(DEFAULT_IGNORE_PATHS.iter().map(|s| (*s).to_owned()));
    }
    ignore.extend(opts.ignore_paths.iter().map(|p| resolve_ignore_path(model, p)));
    if let Some(sig) = &opts.signature_path
        && let Some(rel) = relative_to(model, sig)
    {
        ignore.push(rel);
    }
    ignore.sort();
    ignore.dedup();
    let single = std::fs::metadata(model).is_ok_and(|m| m.is_file());
    let hashed = hash_model(
        model,
        &HashOptions {
            ignore_paths: if single { Vec::new() } else { ignore.clone() },
            allow_symlinks: opts.allow_symlinks,
            threads: 0,
        },
    )?;
    let mopts = ManifestOptions {
        ignore_paths: ignore,
        allow_symlinks: opts.allow_symlinks,
    };
    Ok(signature::sign(key, &hashed.name, &hashed.files, &mopts))
}

/// Options of [`verify_model`].
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Accept signer-declared ignore paths beyond `model_signing`'s defaults (files there stay unsigned).
    pub allow_signer_ignores: bool,
    /// The signature file, left out of the model's files when it lies inside the model.
    pub signature_path: Option<PathBuf>,
}

/// Checks a model directory or single file against a bundle: the signature, then that the files present (less the
/// signer's ignore paths) are exactly the signed ones with the signed digests.
pub fn verify_model(
    model: &Path,
    bundle: &[u8],
    key: &VerifyingKey,
    opts: &VerifyOptions,
) -> Result<VerifyReport, SignError> {
    let manifest = signature::verify(bundle, key)?;
    let sig_rel = opts.signature_path.as_deref().and_then(|s| relative_to(model, s));
    let unusual: Vec<String> = manifest
        .ignore_paths
        .iter()
        .filter(|p| !DEFAULT_IGNORE_PATHS.contains(&p.trim_end_matches('/')) && Some(*p) != sig_rel.as_ref())
        .cloned()
        .collect();
    if !unusual.is_empty() && !opts.allow_signer_ignores {
        return Err(SignError::SignerIgnores { paths: unusual });
    }
    let mut ignore = manifest.ignore_paths.clone();
    ignore.extend(sig_rel);
    let single = std::fs::metadata(model).is_ok_and(|m| m.is_file());
    let hashed = hash_model(
        model,
        &HashOptions {
            ignore_paths: if single { Vec::new() } else { ignore },
            allow_symlinks: manifest.allow_symlinks,
            threads: 0,
        },
    )?;
    manifest.check(&hashed.files)?;
    Ok(VerifyReport {
        signer_ignores: manifest.ignore_paths.clone(),
        files: hashed.files.len(),
        bytes: hashed.bytes,
        manifest,
    })
}

/// The result of a seed (`signature.bin`, SHA-1) check.
#[derive(Clone, Debug, Default)]
pub struct SeedReport {
    /// The `model*` files whose signature verified.
    pub signed: Vec<PathBuf>,
    /// Files the seed scheme leaves unsigned (everything that is not `model*`, e.g. `config.pbtxt`).
    pub unsigned: Vec<PathBuf>,
}

/// Checks the seed's signatures: every file named `model*` against the `signature.bin` in its directory (ECDSA
/// over SHA-1 of the content), as the seed's `verify.py` did. Only for migration: SHA-1 is broken for collisions,
/// and names and other files are unsigned (listed in the report so the caller can warn).
pub fn verify_seed(model: &Path, key: &VerifyingKey) -> Result<SeedReport, SignError> {
    let walked = walk(model)?;
    let mut report = SeedReport::default();
    for w in &walked {
        let Some(path) = &w.path else { continue };
        let name = path.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        if name == SEED_SIGNATURE_FILE.as_bytes() {
            continue;
        }
        if !is_seed_signed(&String::from_utf8_lossy(name)) {
            report.unsigned.push(path.clone());
            continue;
        }
        let sig_path = path.with_file_name(SEED_SIGNATURE_FILE);
        let sig = std::fs::read(&sig_path).map_err(|e| SignError::Seed {
            path: path.clone(),
            reason: format!("reading {}: {e}", sig_path.display()),
        })?;
        let mut f = File::open(path).map_err(|source| SignError::Read {
            path: path.clone(),
            source,
        })?;
        let mut d = SeedDigest::new();
        let mut buf = vec![0u8; HASH_BUF];
        loop {
            let n = f.read(&mut buf).map_err(|source| SignError::Read {
                path: path.clone(),
                source,
            })?;
            if n == 0 {
                break;
            }
            d.update(&buf[..n]);
        }
        d.verify(key, &sig).map_err(|e| SignError::Seed {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        report.signed.push(path.clone());
    }
    if report.signed.is_empty() {
        return Err(SignError::Seed {
            path: model.to_owned(),
            reason: "no file named model* found: nothing is signed".into(),
        });
    }
    Ok(report)
}

/// The manifest files of a build (entries with the digests the build pass computed): what `build --sign-key`
/// signs. The same function lists an image's files at mount time, so both sides agree by construction.
pub fn entries_files(entries: &[Entry], allow_symlinks: bool) -> Result<Vec<FileDigest>, SignatureError> {
    let index = Index {
        entries: entries.to_vec(),
        extensions: Vec::new(),
    };
    signature::index_files(&index, allow_symlinks, &[])
}
