//! Key handling: the model key and the per-image keys derived from it with HKDF-SHA256.

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::cipher::ChunkCipher;
use super::header::KEY_CHECK_LEN;
use super::{FormatError, HEADER_LEN, Header, IMAGE_ID_LEN, TAG_LEN};

/// Length of the model key.
pub const KEY_LEN: usize = 32;

/// Keeps the pages holding `len` bytes at `ptr` out of core dumps (`MADV_DONTDUMP`) and, where the memory-lock
/// limit allows, out of swap (`mlock`). Best effort: failures leave the key usable (the daemons are non-dumpable
/// as well). Other small allocations sharing those pages are excluded with it, which costs nothing.
fn exclude_from_dumps(ptr: *const u8, len: usize) {
    #[allow(unsafe_code)]
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .unwrap_or(4096)
        .max(1);
    let start = (ptr as usize) & !(page - 1);
    let end = (ptr as usize).saturating_add(len).div_ceil(page) * page;
    let span = end - start;
    #[allow(unsafe_code)]
    // SAFETY: [start, start + span) covers pages of a live heap allocation; madvise(MADV_DONTDUMP) and mlock only
    // change how the kernel treats those pages, never their contents or mapping.
    unsafe {
        let _ = libc::madvise(start as *mut libc::c_void, span, libc::MADV_DONTDUMP);
        let _ = libc::mlock(start as *const libc::c_void, span);
    }
}

const LABEL_CHUNK: &[u8] = b"cinfer-image-v1 chunk key";
const LABEL_INDEX: &[u8] = b"cinfer-image-v1 index key";
const LABEL_CHECK: &[u8] = b"cinfer-image-v1 key check";
const INDEX_AAD_LABEL: &[u8] = b"cinfer-image-v1 index\0";

/// The 32-byte model key: released after attestation, or read from a key file. Zeroized on drop; its `Debug`
/// never prints the bytes.
///
/// The bytes live in one heap allocation that never moves (moving a `ModelKey` moves a pointer), so the process
/// holds exactly one copy, which dropping the key wipes. Build it in place with [`Self::new_with`] or
/// [`Self::from_slice`]; [`Self::new`] takes an array the caller must wipe.
#[derive(Clone)]
pub struct ModelKey(Box<Zeroizing<[u8; KEY_LEN]>>);

impl ModelKey {
    /// Wraps 32 key bytes (a copy: wipe `bytes` afterwards).
    pub fn new(bytes: [u8; KEY_LEN]) -> Self {
        let mut key = Self::zeroed();
        key.0.copy_from_slice(&bytes);
        key
    }

    /// Builds a key in place: `fill` writes the 32 bytes straight into the key's own memory (a key file read,
    /// for example), so no other copy is made.
    pub(crate) fn new_with<E>(fill: impl FnOnce(&mut [u8; KEY_LEN]) -> Result<(), E>) -> Result<Self, E> {
        let mut key = Self::zeroed();
        fill(&mut key.0)?;
        Ok(key)
    }

    fn zeroed() -> Self {
        let key = Self(Box::new(Zeroizing::new([0u8; KEY_LEN])));
        exclude_from_dumps(key.0.as_ptr(), KEY_LEN);
        key
    }

    /// Takes a key from a slice, refusing any length other than 32.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() != KEY_LEN {
            return Err(FormatError::KeyLength {
                expected: KEY_LEN,
                actual: bytes.len(),
            });
        }
        let mut key = Self::zeroed();
        key.0.copy_from_slice(bytes);
        Ok(key)
    }

    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut key = Self::zeroed();
        rand::fill(&mut key.0[..]);
        key
    }

    /// The key bytes (for writing a new key file; never log them).
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// Overwrites the calling thread's stack below the caller's frame (64 KiB) with zeros: key derivation leaves the
/// model key and derived keys in the dead frames of the hash and cipher code it ran (SHA-256 block buffers, key
/// expansion). Call it right after deriving keys, from a frame at or above the one that derived them.
#[inline(never)]
pub fn scrub_stack() {
    let mut area = [0u8; 64 << 10];
    area.zeroize();
    std::hint::black_box(&area);
}

impl std::fmt::Debug for ModelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelKey(<redacted>)")
    }
}

/// The keys of one image, derived from the model key and the image id.
pub struct ImageKeys {
    chunk: ChunkCipher,
    index: Aes256GcmSiv,
    check: [u8; KEY_CHECK_LEN],
    image_id: [u8; IMAGE_ID_LEN],
}

impl std::fmt::Debug for ImageKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ImageKeys(<redacted>)")
    }
}

impl ImageKeys {
    /// Derives the chunk key, index key and key check value: HKDF-SHA256 with the image id as salt and one label
    /// per purpose.
    pub fn derive(key: &ModelKey, image_id: &[u8; IMAGE_ID_LEN]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(image_id), key.expose());
        let mut chunk = Zeroizing::new([0u8; 32]);
        let mut index = Zeroizing::new([0u8; 32]);
        let mut check = [0u8; KEY_CHECK_LEN];
        // INVARIANT: HKDF-SHA256 can expand up to 8160 bytes; 32 always fits.
        hk.expand(LABEL_CHUNK, &mut chunk[..]).expect("32-byte HKDF output");
        hk.expand(LABEL_INDEX, &mut index[..]).expect("32-byte HKDF output");
        hk.expand(LABEL_CHECK, &mut check).expect("32-byte HKDF output");
        drop(hk);
        let keys = Self {
            chunk: ChunkCipher::new(&chunk),
            // INVARIANT: the slice is 32 bytes, AES-256-GCM-SIV's key length.
            index: Aes256GcmSiv::new_from_slice(&index[..]).expect("a 32-byte key"),
            check,
            image_id: *image_id,
        };
        scrub_stack();
        keys
    }

    /// The key check value to store in a new image's header.
    pub fn key_check(&self) -> [u8; KEY_CHECK_LEN] {
        self.check
    }

    /// The image id these keys were derived for.
    pub fn image_id(&self) -> &[u8; IMAGE_ID_LEN] {
        &self.image_id
    }

    /// Compares the header's key check value with ours (constant time).
    pub fn check(&self, header: &Header) -> Result<(), FormatError> {
        if bool::from(subtle::ConstantTimeEq::ct_eq(&header.key_check[..], &self.check[..])) {
            Ok(())
        } else {
            Err(FormatError::WrongKey)
        }
    }

    pub(crate) fn chunk_cipher(&self) -> &ChunkCipher {
        &self.chunk
    }

    /// Seals an encoded index; the associated data is a label and the whole header region.
    pub(crate) fn seal_index(&self, header: &[u8; HEADER_LEN], plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plain.len() + TAG_LEN);
        out.extend_from_slice(plain);
        let aad = index_aad(header);
        // INVARIANT: encryption only fails for inputs over 2^36 bytes; an index is far smaller.
        let tag = self
            .index
            .encrypt_inout_detached(&Nonce::default(), &aad, out.as_mut_slice().into())
            .expect("index shorter than 2^36 bytes");
        out.extend_from_slice(&tag);
        out
    }

    /// Opens the sealed index.
    pub(crate) fn open_index(
        &self,
        header: &[u8; HEADER_LEN],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, FormatError> {
        let split = sealed.len().checked_sub(TAG_LEN).ok_or(FormatError::IndexAuthFailed)?;
        let (ct, tag) = sealed.split_at(split);
        let mut buf = Zeroizing::new(ct.to_vec());
        let aad = index_aad(header);
        let tag = Tag::try_from(tag).map_err(|_| FormatError::IndexAuthFailed)?;
        self.index
            .decrypt_inout_detached(&Nonce::default(), &aad, buf.as_mut_slice().into(), &tag)
            .map_err(|_| FormatError::IndexAuthFailed)?;
        Ok(buf)
    }
}

fn index_aad(header: &[u8; HEADER_LEN]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(INDEX_AAD_LABEL.len() + HEADER_LEN);
    aad.extend_from_slice(INDEX_AAD_LABEL);
    aad.extend_from_slice(header);
    aad
}

#[cfg(test)]
mod dump_tests {
    #![allow(clippy::unwrap_used)]

    use super::ModelKey;

    /// The page holding a model key is marked "do not dump" (VmFlags `dd` in /proc/self/smaps).
    #[test]
    fn model_key_pages_are_excluded_from_core_dumps() {
        let key = ModelKey::new([7u8; 32]);
        let addr = key.expose().as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        let mut flags = None;
        for line in smaps.lines() {
            let range = line.split_once(' ').and_then(|(r, _)| r.split_once('-'));
            if let Some((a, b)) = range
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = (a..b).contains(&addr);
            } else if inside && let Some(f) = line.strip_prefix("VmFlags:") {
                flags = Some(f.to_owned());
            }
        }
        let flags = flags.unwrap();
        assert!(
            flags.split_whitespace().any(|f| f == "dd"),
            "VmFlags of the key's page: {flags:?}"
        );
    }
}
