//! The 4096-byte plaintext header: what the image is and which key it needs, never key material.

use super::codec::{Reader, Writer};
use super::{FormatError, IMAGE_ID_LEN, TAG_LEN};

/// Magic bytes at offset 0 of every image.
pub const MAGIC: [u8; 8] = *b"CINFIMG\x01";
/// The format version this module reads and writes.
pub const VERSION: u16 = 1;
/// Size of the header region; the data region starts right after it.
pub const HEADER_LEN: usize = 4096;
/// AEAD id for AES-256-GCM-SIV (RFC 8452), the only AEAD of version 1.
pub const AEAD_AES_256_GCM_SIV: u16 = 1;
/// KDF id for HKDF-SHA256 (RFC 5869), the only KDF of version 1.
pub const KDF_HKDF_SHA256: u16 = 1;
/// Smallest allowed chunk size.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest allowed chunk size.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Default chunk size: 64 KiB (see `docs/FORMAT.md`, "Choice of the chunk size", for the measurements).
pub const DEFAULT_CHUNK_SIZE: u32 = 64 << 10;
/// Longest key id the header can hold.
pub const MAX_KEY_ID_LEN: usize = 1024;
/// Length of the key check value.
pub(crate) const KEY_CHECK_LEN: usize = 32;

/// Byte offset where the key id starts; the fixed fields come before it.
const FIXED_LEN: usize = 8 + 2 + 2 + 4 + 2 + 2 + 4 + IMAGE_ID_LEN + KEY_CHECK_LEN + 8 + 8 + 8 + 2;

/// The parsed header of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Random per-image id: the HKDF salt and part of every chunk's associated data.
    pub image_id: [u8; IMAGE_ID_LEN],
    /// Plaintext bytes per chunk (a power of two between [`MIN_CHUNK_SIZE`] and [`MAX_CHUNK_SIZE`]).
    pub chunk_size: u32,
    /// Key check value: proves a key is the right one before anything is decrypted.
    pub key_check: [u8; KEY_CHECK_LEN],
    /// Number of chunks in the data region.
    pub chunk_count: u64,
    /// Byte offset of the sealed index (= end of the data region).
    pub index_offset: u64,
    /// Length of the sealed index in bytes (encoded index + tag).
    pub index_len: u64,
    /// Names the model key (a key id or URI, e.g. an Azure Key Vault key id); UTF-8, at most 1024 bytes.
    pub key_id: String,
}

impl Header {
    /// Total image length this header implies.
    pub fn image_len(&self) -> u64 {
        self.index_offset.saturating_add(self.index_len)
    }

    /// Bytes a sealed chunk with `plain_len` plaintext bytes occupies.
    pub fn sealed_len(plain_len: u64) -> u64 {
        plain_len + TAG_LEN as u64
    }

    /// Encodes the header into its 4096-byte region (zero padded).
    pub fn encode(&self) -> Result<[u8; HEADER_LEN], FormatError> {
        validate_chunk_size(self.chunk_size)?;
        if self.key_id.len() > MAX_KEY_ID_LEN {
            return Err(FormatError::corrupt(
                "header",
                format!("key id longer than {MAX_KEY_ID_LEN} bytes"),
            ));
        }
        let mut v = Vec::with_capacity(HEADER_LEN);
        v.extend_from_slice(&MAGIC);
        v.put_u16(VERSION);
        v.put_u16(0); // flags
        v.put_u32((FIXED_LEN + self.key_id.len()) as u32);
        v.put_u16(AEAD_AES_256_GCM_SIV);
        v.put_u16(KDF_HKDF_SHA256);
        v.put_u32(self.chunk_size);
        v.extend_from_slice(&self.image_id);
        v.extend_from_slice(&self.key_check);
        v.put_u64(self.chunk_count);
        v.put_u64(self.index_offset);
        v.put_u64(self.index_len);
        v.put_u16(self.key_id.len() as u16);
        v.extend_from_slice(self.key_id.as_bytes());
        let mut out = [0u8; HEADER_LEN];
        out[..v.len()].copy_from_slice(&v);
        Ok(out)
    }

    /// Parses and validates a header region. Refuses unknown versions, flags and algorithms, and non-zero padding.
    pub fn decode(buf: &[u8; HEADER_LEN]) -> Result<Self, FormatError> {
        let mut r = Reader::new(buf, "header");
        if r.array::<8>()? != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = r.u16()?;
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let flags = r.u16()?;
        if flags != 0 {
            return Err(FormatError::UnsupportedFlags(flags));
        }
        let used = r.u32()? as usize;
        let aead = r.u16()?;
        if aead != AEAD_AES_256_GCM_SIV {
            return Err(FormatError::UnsupportedAlgorithm { what: "aead", id: aead });
        }
        let kdf = r.u16()?;
        if kdf != KDF_HKDF_SHA256 {
            return Err(FormatError::UnsupportedAlgorithm { what: "kdf", id: kdf });
        }
        let chunk_size = r.u32()?;
        validate_chunk_size(chunk_size)?;
        let image_id = r.array()?;
        let key_check = r.array()?;
        let chunk_count = r.u64()?;
        let index_offset = r.u64()?;
        let index_len = r.u64()?;
        let key_id_len = r.u16()? as usize;
        if key_id_len > MAX_KEY_ID_LEN {
            return Err(FormatError::corrupt(
                "header",
                format!("key id length {key_id_len} exceeds {MAX_KEY_ID_LEN}"),
            ));
        }
        let key_id = std::str::from_utf8(r.take(key_id_len)?)
            .map_err(|_| FormatError::corrupt("header", "key id is not UTF-8"))?
            .to_owned();
        if used != r.position() {
            return Err(FormatError::corrupt(
                "header",
                format!("declared length {used} != {}", r.position()),
            ));
        }
        if r.remaining().iter().any(|&b| b != 0) {
            return Err(FormatError::corrupt("header", "non-zero bytes in the padding"));
        }
        if index_offset < HEADER_LEN as u64 {
            return Err(FormatError::corrupt("header", "index offset inside the header"));
        }
        if index_len < TAG_LEN as u64 {
            return Err(FormatError::corrupt("header", "index shorter than its tag"));
        }
        index_offset
            .checked_add(index_len)
            .ok_or_else(|| FormatError::corrupt("header", "index offset + length overflows"))?;
        Ok(Self {
            image_id,
            chunk_size,
            key_check,
            chunk_count,
            index_offset,
            index_len,
            key_id,
        })
    }
}

fn validate_chunk_size(cs: u32) -> Result<(), FormatError> {
    if !cs.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
        return Err(FormatError::corrupt(
            "header",
            format!("chunk size {cs} is not a power of two in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            image_id: [7; IMAGE_ID_LEN],
            chunk_size: DEFAULT_CHUNK_SIZE,
            key_check: [9; KEY_CHECK_LEN],
            chunk_count: 3,
            index_offset: 5000,
            index_len: 100,
            key_id: "file:model.key".into(),
        }
    }

    #[test]
    fn header_round_trips() {
        let h = sample();
        assert_eq!(Header::decode(&h.encode().unwrap()).unwrap(), h);
    }

    #[test]
    fn header_rejects_unknown_version_and_flags() {
        let mut b = sample().encode().unwrap();
        b[8] = 2;
        assert!(matches!(Header::decode(&b), Err(FormatError::UnsupportedVersion(2))));
        let mut b = sample().encode().unwrap();
        b[10] = 1;
        assert!(matches!(Header::decode(&b), Err(FormatError::UnsupportedFlags(1))));
    }

    #[test]
    fn header_rejects_nonzero_padding_and_bad_chunk_size() {
        let mut b = sample().encode().unwrap();
        b[HEADER_LEN - 1] = 1;
        assert!(Header::decode(&b).unwrap_err().to_string().contains("padding"));
        let mut h = sample();
        h.chunk_size = 5000;
        assert!(h.encode().is_err());
    }
}
