//! Errors of the legacy (LUKS2 + ext4) reader: each names what was refused, so a failed mount says why.

use std::io;

/// Why a legacy image (or a file in it) could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LegacyError {
    /// The image starts with neither LUKS magic.
    #[error("not a LUKS image (no LUKS magic at offset 0)")]
    NotLuks,
    /// A LUKS1 header: only LUKS2 (what the seed's `generatefs.sh` makes) is read.
    #[error("LUKS1 image: only LUKS2 is supported (`cryptsetup convert --type luks2` upgrades it)")]
    Luks1,
    /// A LUKS header of a version other than 1 or 2.
    #[error("unsupported LUKS version {version}")]
    UnsupportedVersion {
        /// The version field found.
        version: u16,
    },
    /// Neither header copy is valid (magic, checksum or JSON).
    #[error("no valid LUKS2 header: primary: {primary}; secondary: {secondary}")]
    NoValidHeader {
        /// Why the primary copy was refused.
        primary: String,
        /// Why the secondary copy was refused.
        secondary: String,
    },
    /// One header copy is malformed.
    #[error("invalid LUKS2 header: {reason}")]
    InvalidHeader {
        /// What is wrong.
        reason: String,
    },
    /// The data segment (or a keyslot area) uses a cipher this reader does not implement.
    #[error("unsupported cipher {cipher}: only aes-xts-plain64 is supported")]
    UnsupportedCipher {
        /// The cipher specification found, e.g. `serpent-xts-plain64`.
        cipher: String,
    },
    /// A LUKS2 feature this reader does not implement (named by `what`, with the value found).
    #[error("unsupported LUKS2 {what}: {value}")]
    Unsupported {
        /// Which feature, e.g. "kdf", "hash", "segment type", "requirement".
        what: &'static str,
        /// The value found.
        value: String,
    },
    /// No keyslot could be opened with the passphrase (key file) given.
    #[error("no keyslot opened with this key")]
    WrongKey,
    /// Reading the image failed.
    #[error("reading the image at offset {offset}")]
    Io {
        /// Byte offset of the read.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The ext4 filesystem inside the volume is unreadable at `path` (corrupt, or a feature ext4-view refuses).
    #[error("ext4: {path}: {source}")]
    Ext4 {
        /// The path concerned (`/` for the filesystem itself).
        path: String,
        /// The ext4-view error.
        #[source]
        source: ext4_view::Ext4Error,
    },
}

impl LegacyError {
    pub(crate) fn header(reason: impl Into<String>) -> Self {
        Self::InvalidHeader { reason: reason.into() }
    }

    pub(crate) fn unsupported(what: &'static str, value: impl Into<String>) -> Self {
        Self::Unsupported {
            what,
            value: value.into(),
        }
    }
}
