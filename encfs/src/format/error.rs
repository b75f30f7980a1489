//! Errors of the image format: each names what failed, so a refused mount says why.

/// Why an image (or part of it) was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The first bytes are not the cinfer image magic.
    #[error("not a cinfer image (bad magic)")]
    BadMagic,
    /// The header declares a format version this reader does not know.
    #[error("unsupported image format version {0} (this reader knows version 1)")]
    UnsupportedVersion(u16),
    /// The header sets flags this reader does not know.
    #[error("unsupported header flags {0:#06x}")]
    UnsupportedFlags(u16),
    /// The header names an AEAD or KDF this reader does not know.
    #[error("unsupported {what} algorithm id {id}")]
    UnsupportedAlgorithm {
        /// Which algorithm slot ("aead" or "kdf").
        what: &'static str,
        /// The id found.
        id: u16,
    },
    /// A header or index field is out of its allowed range or inconsistent.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// Which structure ("header", "index").
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A structure ended before its declared length.
    #[error("{what} truncated: expected {expected} bytes, found {actual}")]
    Truncated {
        /// Which structure.
        what: &'static str,
        /// Bytes expected.
        expected: u64,
        /// Bytes found.
        actual: u64,
    },
    /// The image's length differs from what its header declares (truncated, or bytes appended).
    #[error("image length mismatch: header declares {expected} bytes, source has {actual}")]
    LengthMismatch {
        /// Length the header implies.
        expected: u64,
        /// Length of the source.
        actual: u64,
    },
    /// The key check value in the header does not match the given key.
    #[error("wrong key: the key check value in the header does not match this key")]
    WrongKey,
    /// The index failed authentication although the key check passed: the index or header was modified.
    #[error("index authentication failed: the index or header was modified")]
    IndexAuthFailed,
    /// The root digest differs from the pinned one.
    #[error("root digest mismatch: expected {expected}, image has {actual}")]
    RootMismatch {
        /// The pinned digest (hex).
        expected: String,
        /// The image's digest (hex).
        actual: String,
    },
    /// A chunk failed authentication: modified, moved, or from another image.
    #[error("chunk {index} failed authentication")]
    ChunkAuthFailed {
        /// Global chunk index.
        index: u64,
    },
    /// A key had the wrong length.
    #[error("key must be {expected} bytes, got {actual}")]
    KeyLength {
        /// Expected length.
        expected: usize,
        /// Actual length.
        actual: usize,
    },
}

impl FormatError {
    pub(crate) fn corrupt(what: &'static str, detail: impl Into<String>) -> Self {
        Self::Corrupt {
            what,
            detail: detail.into(),
        }
    }
}
