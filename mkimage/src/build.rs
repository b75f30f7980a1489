//! `build`: model directory → encrypted image.
//!
//! The pipeline is walk → read (one thread, in file order) → hash (one thread, in file order) → seal in place (one
//! worker per core) → write; the three stages overlap (`seal.rs`). Every chunk's position in the image follows from
//! the file sizes, which the walk already knows, so workers write sealed chunks straight to their final offsets in
//! any order, and memory stays bounded by a fixed ring of batch buffers whatever the model size. The index and header are written last; the image is built under a temporary name
//! and renamed into place only when complete, so a failed build leaves nothing behind.

mod pipeline;
mod seal;
mod walk;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use encfs::format::{DEFAULT_CHUNK_SIZE, FormatError};
use encfs::signature::{SignatureError, SigningKey};

pub use pipeline::{BuildSummary, DiskTree, build, build_tree};
pub use walk::{Walked, walk};

/// Where a build's entries and file contents come from: the model directory on disk ([`DiskTree`]), or another
/// image's filesystem (the legacy ext4 volume `convert` streams from). Only the calling thread uses it, so it need
/// not be `Send`.
pub trait Tree {
    /// The entries in index order (the root first, then depth-first with children sorted by name bytes), file
    /// digests zero. Each file's [`Walked::path`] is what [`Tree::open`] is given.
    fn walk(&self) -> Result<Vec<Walked>, BuildError>;

    /// Opens the file at `path` for sequential reading. It must yield exactly the `size` bytes the walk saw (the
    /// pipeline refuses a file that is shorter or longer).
    fn open(&self, path: &Path, size: u64) -> Result<Box<dyn Read + '_>, BuildError>;
}

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The model directory.
    pub src: PathBuf,
    /// The image to write.
    pub output: PathBuf,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Overwrite an existing image.
    pub force: bool,
    /// The key id recorded in the header (names the key; never key material).
    pub key_id: String,
    /// Sealing threads (0 = one per core).
    pub threads: usize,
    /// Sign the model while building (OMS signature over the digests the build pass computes) and embed the
    /// signature in the index (extension 1, docs/FORMAT.md §6).
    pub sign_key: Option<Arc<SigningKey>>,
    /// When signing: follow symlinks to files (`allow_symlinks` in the signature); otherwise a symlink fails.
    pub sign_allow_symlinks: bool,
}

impl BuildOptions {
    /// Options with the defaults: 64 KiB chunks, no overwrite, one thread per core.
    pub fn new(src: impl Into<PathBuf>, output: impl Into<PathBuf>, key_id: impl Into<String>) -> Self {
        Self {
            src: src.into(),
            output: output.into(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            force: false,
            key_id: key_id.into(),
            threads: 0,
            sign_key: None,
            sign_allow_symlinks: false,
        }
    }
}

/// Why a build failed. Every variant names the path concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The output exists and `--force` was not given.
    #[error("{0} exists; pass --force to overwrite it")]
    OutputExists(PathBuf),
    /// The source is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// Reading a path of the source tree failed.
    #[error("reading {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the image failed (e.g. no space left on the device).
    #[error("writing {path}")]
    Write {
        /// The image (temporary) path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The tree holds a socket, device or FIFO, which an image cannot carry.
    #[error("{path} is a {kind}; only regular files, directories and symlinks can go into an image")]
    SpecialFile {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A symlink points outside the tree (absolute, or escaping with `..`).
    #[error("symlink {path} -> {target} points outside the model directory")]
    SymlinkOutside {
        /// The symlink.
        path: PathBuf,
        /// Its target.
        target: String,
    },
    /// A name or symlink target is too long for the format.
    #[error("{path}: {what} is too long")]
    TooLong {
        /// The path.
        path: PathBuf,
        /// "name" or "symlink target".
        what: &'static str,
    },
    /// A file changed size while it was being read.
    #[error("{0} changed while the image was being built")]
    Changed(PathBuf),
    /// The format refused a value (e.g. an invalid chunk size).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The model cannot be signed as asked (a symlink without `--allow-symlinks`, a non-UTF-8 name).
    #[error("signing: {0}")]
    Signature(#[from] SignatureError),
}
