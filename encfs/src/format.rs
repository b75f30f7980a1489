//! The cinfer encrypted image format, version 1. The normative specification is `docs/FORMAT.md`; this module
//! is its only implementation, shared by the builder (`mkimage`) and the reader (the FUSE daemon).
//!
//! An image is three regions, in this order:
//!
//! ```text
//! +--------------------+------------------------------------------+-------------------------+
//! | header (4096 B)    | data: each file's chunks, file after file | sealed index            |
//! | plaintext, no keys | AES-256-GCM-SIV, one seal per chunk       | AES-256-GCM-SIV, 1 seal |
//! +--------------------+------------------------------------------+-------------------------+
//! ```
//!
//! * The **header** names the key the image needs (never holds key material), the chunk size, a random
//!   per-image id, a key check value, and where the index is.
//! * The 32-byte **model key** (the key released after attestation) never encrypts anything itself: HKDF-SHA256
//!   salted with the image id derives the chunk key, the index key and the key check value ([`ImageKeys`]).
//! * Each **chunk** seals up to `chunk_size` plaintext bytes with associated data binding the image id and the
//!   chunk's global index, so a chunk cannot be reordered, moved to another image or replaced by a chunk of an
//!   older image made with the same key. The nonce is the chunk index (GCM-SIV keeps this safe even if a chunk
//!   index were ever reused), so no nonce is stored and every chunk's offset can be computed.
//! * The **index** (directory tree, names, modes, sizes, symlinks, per-file SHA-256) is sealed as one message whose
//!   associated data is the whole header, so the header cannot be changed without the index failing to open.
//!   File chunk ranges are not stored: they follow from the file sizes in index order ([`Layout`]).
//! * The **root digest** is SHA-256 over the header and the sealed index ([`root_digest`]). It pins the exact image,
//!   like a dm-verity root hash: the per-file SHA-256 values in the index commit to the content as well.
//!
//! Nothing in this module does I/O or runs async: callers hand it bytes.

mod chunk;
mod cipher;
mod codec;
mod error;
mod header;
mod index;
mod keys;
mod layout;
mod memory;

pub use chunk::{OpenedChunk, chunk_aad, chunk_nonce, open_chunk_into, seal_chunk, seal_chunk_detached};
pub use cipher::NONCE_LEN;
pub use error::FormatError;
pub use header::{
    AEAD_AES_256_GCM_SIV, DEFAULT_CHUNK_SIZE, HEADER_LEN, Header, KDF_HKDF_SHA256, MAGIC, MAX_CHUNK_SIZE,
    MAX_KEY_ID_LEN, MIN_CHUNK_SIZE, VERSION,
};
pub use index::{Entry, EntryKind, Extension, Index, MAX_NAME_LEN, MAX_SYMLINK_LEN};
pub use keys::{ImageKeys, KEY_LEN, ModelKey, scrub_stack};
pub use layout::{ChunkLoc, FileLayout, Layout};
pub use memory::{MemNode, build_image};

use sha2::{Digest, Sha256};

/// Length in bytes of the authentication tag that follows every sealed chunk and the sealed index.
pub const TAG_LEN: usize = 16;

/// Length in bytes of the random per-image id.
pub const IMAGE_ID_LEN: usize = 32;

/// Domain label hashed in front of the root digest input.
const ROOT_LABEL: &[u8] = b"cinfer-image-v1 root\0";

/// The root digest of an image: SHA-256 over a fixed label, the 4096-byte header and the sealed index.
///
/// `build` prints it and `mount --expect-root` enforces it, so a deployment can pin the exact image.
pub fn root_digest(header: &[u8; HEADER_LEN], sealed_index: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(ROOT_LABEL);
    h.update(header);
    h.update(sealed_index);
    h.finalize().into()
}

/// Seals the encoded index with the index key; the associated data is the whole encoded header.
pub fn seal_index(keys: &ImageKeys, header: &[u8; HEADER_LEN], index: &Index) -> Vec<u8> {
    keys.seal_index(header, &index.encode())
}

/// Everything a reader needs after the header and index have been authenticated.
#[derive(Debug)]
pub struct OpenedImage {
    /// The parsed header.
    pub header: Header,
    /// The decrypted, validated index.
    pub index: Index,
    /// Where each file's chunks are.
    pub layout: Layout,
    /// The root digest of this image.
    pub root: [u8; 32],
}

impl OpenedImage {
    /// Authenticates and parses an image from its header region and sealed index.
    ///
    /// Checks, in order: header syntax and version; the root pin (when given); the key check value (a wrong key
    /// fails here with [`FormatError::WrongKey`]); the index seal; index syntax; that the layout the index implies
    /// matches the header's chunk count and index offset; and, when `image_len` is given, that the image has
    /// exactly the expected length (no truncation, nothing appended).
    pub fn open(
        header_bytes: &[u8; HEADER_LEN],
        sealed_index: &[u8],
        key: &ModelKey,
        expect_root: Option<&[u8; 32]>,
        image_len: Option<u64>,
    ) -> Result<(Self, ImageKeys), FormatError> {
        let header = Header::decode(header_bytes)?;
        if sealed_index.len() as u64 != header.index_len {
            return Err(FormatError::Truncated {
                what: "index",
                expected: header.index_len,
                actual: sealed_index.len() as u64,
            });
        }
        let root = root_digest(header_bytes, sealed_index);
        if let Some(expected) = expect_root
            && !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &root[..]))
        {
            return Err(FormatError::RootMismatch {
                expected: hex::encode(expected),
                actual: hex::encode(root),
            });
        }
        let keys = ImageKeys::derive(key, &header.image_id);
        keys.check(&header)?;
        let plain = keys.open_index(header_bytes, sealed_index)?;
        let index = Index::decode(&plain)?;
        let layout = Layout::compute(&header, &index)?;
        if let Some(len) = image_len {
            let expected = header.image_len();
            if len != expected {
                return Err(FormatError::LengthMismatch { expected, actual: len });
            }
        }
        Ok((
            Self {
                header,
                index,
                layout,
                root,
            },
            keys,
        ))
    }
}
