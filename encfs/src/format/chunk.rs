//! Sealing and opening single chunks. Plaintext leaves this module only inside an [`OpenedChunk`] or a buffer
//! that was authenticated as a whole.

use super::cipher::NONCE_LEN;
use super::{FormatError, IMAGE_ID_LEN, ImageKeys, TAG_LEN};

const CHUNK_AAD_LABEL: &[u8] = b"cinfer-image-v1 chunk\0";

/// Length of a chunk's associated data.
const CHUNK_AAD_LEN: usize = CHUNK_AAD_LABEL.len() + IMAGE_ID_LEN + 8;

/// The associated data of chunk `index`: a label, the image id and the global chunk index (u64 little-endian).
pub fn chunk_aad(image_id: &[u8; IMAGE_ID_LEN], index: u64) -> [u8; CHUNK_AAD_LEN] {
    let mut aad = [0u8; CHUNK_AAD_LEN];
    aad[..CHUNK_AAD_LABEL.len()].copy_from_slice(CHUNK_AAD_LABEL);
    aad[CHUNK_AAD_LABEL.len()..CHUNK_AAD_LABEL.len() + IMAGE_ID_LEN].copy_from_slice(image_id);
    aad[CHUNK_AAD_LABEL.len() + IMAGE_ID_LEN..].copy_from_slice(&index.to_le_bytes());
    aad
}

/// The nonce of chunk `index`: the index as u64 little-endian followed by four zero bytes.
pub fn chunk_nonce(index: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..8].copy_from_slice(&index.to_le_bytes());
    n
}

/// Seals `buf` (plaintext of chunk `index`) in place and appends the tag.
pub fn seal_chunk(keys: &ImageKeys, index: u64, buf: &mut Vec<u8>) {
    let tag = seal_chunk_detached(keys, index, buf);
    buf.extend_from_slice(&tag);
}

/// Seals `plain` (plaintext of chunk `index`) in place and returns the tag that must follow it. The result is
/// byte for byte what [`seal_chunk`] writes; it lets a builder seal chunks inside a larger buffer laid out as
/// the image is (each chunk followed by room for its tag) without copying them.
pub fn seal_chunk_detached(keys: &ImageKeys, index: u64, plain: &mut [u8]) -> [u8; TAG_LEN] {
    let aad = chunk_aad(keys.image_id(), index);
    keys.chunk_cipher().seal(&chunk_nonce(index), &aad, plain)
}

/// Opens sealed chunk `index` from `sealed` into `out` (which must be exactly `sealed.len() - 16` bytes).
///
/// On failure `out` is zeroed: a caller can never see unauthenticated plaintext.
pub fn open_chunk_into(keys: &ImageKeys, index: u64, sealed: &[u8], out: &mut [u8]) -> Result<(), FormatError> {
    let fail = FormatError::ChunkAuthFailed { index };
    let split = sealed
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(FormatError::ChunkAuthFailed { index })?;
    let (ct, tag) = sealed.split_at(split);
    let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| FormatError::ChunkAuthFailed { index })?;
    let aad = chunk_aad(keys.image_id(), index);
    match keys.chunk_cipher().open(&chunk_nonce(index), &aad, ct, tag, out) {
        Ok(()) => Ok(()),
        Err(_) => {
            out.fill(0);
            Err(fail)
        }
    }
}

/// The plaintext of one chunk, which exists only after its seal was verified.
#[derive(Clone)]
pub struct OpenedChunk {
    index: u64,
    data: bytes::Bytes,
}

impl OpenedChunk {
    /// Opens sealed chunk `index`; the plaintext is returned only if authentication succeeds.
    pub fn open(keys: &ImageKeys, index: u64, sealed: &[u8]) -> Result<Self, FormatError> {
        let len = sealed
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(FormatError::ChunkAuthFailed { index })?;
        let mut out = vec![0u8; len];
        open_chunk_into(keys, index, sealed, &mut out)?;
        Ok(Self {
            index,
            data: out.into(),
        })
    }

    /// The global chunk index.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The authenticated plaintext.
    pub fn data(&self) -> &bytes::Bytes {
        &self.data
    }
}

impl std::fmt::Debug for OpenedChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedChunk")
            .field("index", &self.index)
            .field("len", &self.data.len())
            .finish()
    }
}
