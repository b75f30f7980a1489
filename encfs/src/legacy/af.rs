//! The LUKS anti-forensic splitter, merge direction (`AF_merge` in cryptsetup).
//!
//! A keyslot stores the volume key expanded to `stripes` blocks of `key_size` bytes. Merging XORs the blocks
//! together, running the accumulator through the diffusion function `H` after every block but the last:
//! `d = 0; for s in stripes[..n-1] { d = H(d ^ s) }; key = d ^ stripes[n-1]`. `H` hashes the buffer in
//! digest-sized pieces, each prefixed with its big-endian 32-bit index, keeping as many output bytes as the piece.

use zeroize::Zeroizing;

use super::LegacyError;
use super::kdf::HashAlg;

/// Largest stripe count accepted (cryptsetup always writes 4000).
pub(crate) const MAX_STRIPES: u32 = 4000;

/// Bytes of keyslot material for a key of `key_size` bytes split into `stripes`, rounded up to whole 512-byte
/// sectors as cryptsetup stores it.
pub(crate) fn material_len(key_size: usize, stripes: u32) -> usize {
    (key_size * stripes as usize).div_ceil(512) * 512
}

/// Merges `material` (at least `key_size * stripes` bytes) into the `key_size`-byte key.
pub(crate) fn merge(
    material: &[u8],
    key_size: usize,
    stripes: u32,
    hash: HashAlg,
) -> Result<Zeroizing<Vec<u8>>, LegacyError> {
    if stripes == 0 || stripes > MAX_STRIPES || key_size == 0 {
        return Err(LegacyError::unsupported("af stripes", stripes.to_string()));
    }
    let need = key_size * stripes as usize;
    if material.len() < need {
        return Err(LegacyError::header(format!(
            "keyslot material is {} bytes, needs {need}",
            material.len()
        )));
    }
    let mut d = Zeroizing::new(vec![0u8; key_size]);
    let mut blocks = material[..need].chunks_exact(key_size);
    for _ in 0..stripes - 1 {
        if let Some(block) = blocks.next() {
            d.iter_mut().zip(block).for_each(|(a, b)| *a ^= b);
            diffuse(&mut d, hash);
        }
    }
    if let Some(last) = blocks.next() {
        d.iter_mut().zip(last).for_each(|(a, b)| *a ^= b);
    }
    Ok(d)
}

fn diffuse(buf: &mut [u8], hash: HashAlg) {
    let ds = hash.len();
    for (i, piece) in buf.chunks_mut(ds).enumerate() {
        let iv = (i as u32).to_be_bytes();
        let h = Zeroizing::new(hash.digest(&[&iv, piece]));
        let n = piece.len();
        piece.copy_from_slice(&h[..n]);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The split direction, for the round trip: random stripes but the last, which makes the merge give `key`.
    fn split(key: &[u8], stripes: u32, hash: HashAlg) -> Vec<u8> {
        let n = key.len();
        let mut out = Vec::new();
        let mut d = vec![0u8; n];
        for s in 0..stripes - 1 {
            let block: Vec<u8> = (0..n).map(|i| (i as u8) ^ (s as u8).wrapping_mul(13)).collect();
            d.iter_mut().zip(&block).for_each(|(a, b)| *a ^= b);
            diffuse(&mut d, hash);
            out.extend_from_slice(&block);
        }
        out.extend(d.iter().zip(key).map(|(a, b)| a ^ b));
        out
    }

    #[test]
    fn merge_inverts_split_for_every_hash_and_odd_key_sizes() {
        for hash in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512] {
            for key_size in [32usize, 64, 33] {
                let key: Vec<u8> = (0..key_size as u8).collect();
                let material = split(&key, 40, hash);
                assert_eq!(*merge(&material, key_size, 40, hash).unwrap(), key);
            }
        }
    }

    #[test]
    fn refuses_short_material() {
        assert!(merge(&[0u8; 100], 32, 4000, HashAlg::Sha256).is_err());
        assert_eq!(material_len(64, 4000), 256_000);
        assert_eq!(material_len(32, 4000), 128_000);
    }
}
