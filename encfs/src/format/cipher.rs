//! The chunk AEAD, AES-256-GCM-SIV, behind one small type so its implementation is chosen at build time.
//!
//! With the `aws-lc` feature (the default) chunks are sealed and opened by AWS-LC (`aws-lc-rs`); without it by
//! RustCrypto's `aes-gcm-siv`. Both produce the same bytes (a test below checks them against each other). Why
//! AWS-LC: chunk crypto is the largest CPU cost of a cold read and of `mkimage build`, and on the project's
//! machines AWS-LC opens 64 KiB chunks 1.7× faster than RustCrypto (6.4 vs 3.7 GB/s per core on a VAES/AVX-512
//! Xeon; 3.3 vs 2.2 on Zen 3; `cargo bench -p encfs --bench chunk`). ring, which the TLS stack already uses, has
//! no GCM-SIV.

use super::TAG_LEN;

/// Length of a GCM-SIV nonce.
pub const NONCE_LEN: usize = 12;

/// AES-256-GCM-SIV with one key, for sealing and opening chunks.
pub(crate) struct ChunkCipher(Imp);

#[cfg(feature = "aws-lc")]
type Imp = aws_lc_rs::aead::LessSafeKey;
#[cfg(not(feature = "aws-lc"))]
type Imp = aes_gcm_siv::Aes256GcmSiv;

/// The AEAD rejected a sealed chunk (wrong key, tampered bytes or wrong associated data); nothing more is known.
#[derive(Debug)]
pub(crate) struct Rejected;

impl ChunkCipher {
    /// A cipher under the 32-byte `key`.
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        #[cfg(feature = "aws-lc")]
        {
            use aws_lc_rs::aead::{AES_256_GCM_SIV, LessSafeKey, UnboundKey};
            // INVARIANT: AES-256-GCM-SIV takes exactly 32-byte keys, and `key` is one.
            let key = UnboundKey::new(&AES_256_GCM_SIV, key).expect("32-byte AES-256-GCM-SIV key");
            Self(LessSafeKey::new(key))
        }
        #[cfg(not(feature = "aws-lc"))]
        {
            use aes_gcm_siv::KeyInit;
            Self(aes_gcm_siv::Aes256GcmSiv::new(key.into()))
        }
    }

    /// Encrypts `buf` in place and returns the tag.
    pub(crate) fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        #[cfg(feature = "aws-lc")]
        {
            use aws_lc_rs::aead::{Aad, Nonce};
            // INVARIANT: sealing fails only for inputs over the algorithm's length limit (2^36 bytes); chunks are
            // at most 16 MiB.
            let tag = self
                .0
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
                .expect("chunk shorter than 2^36 bytes");
            let mut out = [0u8; TAG_LEN];
            out.copy_from_slice(tag.as_ref());
            out
        }
        #[cfg(not(feature = "aws-lc"))]
        {
            use aes_gcm_siv::aead::AeadInOut;
            // INVARIANT: as above, chunks are far below GCM-SIV's 2^36-byte limit.
            self.0
                .encrypt_inout_detached(nonce.into(), aad, buf.into())
                .expect("chunk shorter than 2^36 bytes")
                .into()
        }
    }

    /// Authenticates `ct` with `tag` and decrypts it into `out` (exactly `ct.len()` bytes). On failure the content
    /// of `out` is unspecified: the caller must wipe it.
    pub(crate) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ct: &[u8],
        tag: &[u8; TAG_LEN],
        out: &mut [u8],
    ) -> Result<(), Rejected> {
        if ct.len() != out.len() {
            return Err(Rejected);
        }
        #[cfg(feature = "aws-lc")]
        {
            use aws_lc_rs::aead::{Aad, Nonce};
            self.0
                .open_separate_gather(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), ct, tag, out)
                .map_err(|_| Rejected)
        }
        #[cfg(not(feature = "aws-lc"))]
        {
            use aes_gcm_siv::aead::AeadInOut;
            use aes_gcm_siv::aead::inout::InOutBuf;
            let buf = InOutBuf::new(ct, out).map_err(|_| Rejected)?;
            self.0
                .decrypt_inout_detached(nonce.into(), aad, buf, tag.into())
                .map_err(|_| Rejected)
        }
    }
}

#[cfg(all(test, feature = "aws-lc"))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use aes_gcm_siv::Aes256GcmSiv;
    use aes_gcm_siv::aead::inout::InOutBuf;
    use aes_gcm_siv::aead::{AeadInOut, KeyInit};

    use super::*;

    /// AWS-LC and RustCrypto seal to the same bytes and open each other's chunks, over lengths that cover
    /// partial blocks, and both refuse a flipped bit.
    #[test]
    fn aws_lc_and_rustcrypto_agree() {
        let key: [u8; 32] = std::array::from_fn(|i| (i * 31 + 7) as u8);
        let ours = ChunkCipher::new(&key);
        let theirs = Aes256GcmSiv::new(&key.into());
        for len in [0usize, 1, 15, 16, 17, 255, 4096, 65_536, 65_537, 200_003] {
            let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| (len + i) as u8);
            let aad = format!("aad {len}");
            let plain: Vec<u8> = (0..len).map(|i| (i * 13 + i / 251) as u8).collect();

            let mut a = plain.clone();
            let tag_a = ours.seal(&nonce, aad.as_bytes(), &mut a);
            let mut b = plain.clone();
            let tag_b: [u8; TAG_LEN] = theirs
                .encrypt_inout_detached(&nonce.into(), aad.as_bytes(), b.as_mut_slice().into())
                .unwrap()
                .into();
            assert_eq!((&a, tag_a), (&b, tag_b), "len {len}");

            let mut out = vec![0u8; len];
            ours.open(&nonce, aad.as_bytes(), &b, &tag_b, &mut out).unwrap();
            assert_eq!(out, plain, "len {len}");
            let mut out2 = vec![0u8; len];
            let buf = InOutBuf::new(&a, &mut out2).unwrap();
            theirs
                .decrypt_inout_detached(&nonce.into(), aad.as_bytes(), buf, &tag_a.into())
                .unwrap();
            assert_eq!(out2, plain, "len {len}");

            let mut bad_tag = tag_a;
            bad_tag[len % TAG_LEN] ^= 0x10;
            assert!(ours.open(&nonce, aad.as_bytes(), &a, &bad_tag, &mut out).is_err());
            if len > 0 {
                let mut bad = a.clone();
                bad[len / 2] ^= 1;
                assert!(ours.open(&nonce, aad.as_bytes(), &bad, &tag_a, &mut out).is_err());
            }
            assert!(ours.open(&nonce, b"other aad", &a, &tag_a, &mut out).is_err());
        }
    }
}
