//! AES-XTS sector decryption with dm-crypt's `plain64` IV.
//!
//! `plain64` is the little-endian 64-bit sector number, zero-padded to the 16-byte XTS tweak. Which number is
//! dm-crypt's business ([`IvMode`]): by default it counts **512-byte units** whatever the encryption sector size
//! (so 4096-byte sectors have IVs 0, 8, 16, …), and only with the `iv_large_sectors` table option does it count
//! whole sectors. cryptsetup sets that option for plain and BitLocker mappings only, never for LUKS2: a LUKS2
//! data segment always uses [`IvMode::Sectors512`], and keyslot areas are always 512-byte sectors from IV 0.
//!
//! The `xts-mode` crate does one AES block at a time (≈0.64 GB/s on this machine); here the tweaks of up to
//! [`BATCH_BLOCKS`] blocks are computed first (tweak doubling on a `u128`), then the blocks go through AES in one
//! `decrypt_blocks` call, which pipelines AES-NI. Both halves of the key schedule are zeroized on drop.

use aes::cipher::consts::U16;
use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, BlockSizeUser, KeyInit};
use aes::{Aes128, Aes256, Block};

use super::LegacyError;

/// Blocks handed to AES at once (512 bytes: a whole 512-byte sector, an eighth of a 4096-byte one).
pub(crate) const BATCH_BLOCKS: usize = 32;

/// How dm-crypt numbers sectors for the `plain64` IV.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
#[non_exhaustive]
pub enum IvMode {
    /// The IV counts 512-byte units (dm-crypt's default; always the case for LUKS2).
    #[default]
    Sectors512,
    /// The IV counts encryption sectors (dm-crypt's `iv_large_sectors`, cryptsetup `--iv-large-sectors`).
    LargeSectors,
}

/// The IV of the sector at `byte_offset` (relative to the start of the encrypted area), as dm-crypt computes it:
/// `iv_offset` (the table's IV offset, in 512-byte units) is added before a large-sector shift.
pub(crate) fn plain64_iv(byte_offset: u64, sector_size: u32, mode: IvMode, iv_offset: u64) -> u64 {
    let units = (byte_offset >> 9).wrapping_add(iv_offset);
    match mode {
        IvMode::Sectors512 => units,
        IvMode::LargeSectors => units >> (sector_size / 512).trailing_zeros(),
    }
}

// Boxed as a whole in `AesXts`, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Ciphers {
    Aes128 { data: Aes128, tweak: Aes128 },
    Aes256 { data: Aes256, tweak: Aes256 },
}

/// AES-XTS with a 32-byte (AES-128) or 64-byte (AES-256) key: the first half encrypts data, the second the tweak.
pub struct AesXts {
    ciphers: Box<Ciphers>,
}

impl std::fmt::Debug for AesXts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bits = match *self.ciphers {
            Ciphers::Aes128 { .. } => 256,
            Ciphers::Aes256 { .. } => 512,
        };
        write!(f, "AesXts({bits}-bit key, redacted)")
    }
}

impl AesXts {
    /// A cipher for `key` (32 or 64 bytes).
    pub fn new(key: &[u8]) -> Result<Self, LegacyError> {
        let half = key.len() / 2;
        let (k1, k2) = key.split_at(half);
        let bad = |_| LegacyError::unsupported("aes-xts key size (bytes)", key.len().to_string());
        let ciphers = match key.len() {
            32 => Ciphers::Aes128 {
                data: Aes128::new_from_slice(k1).map_err(bad)?,
                tweak: Aes128::new_from_slice(k2).map_err(bad)?,
            },
            64 => Ciphers::Aes256 {
                data: Aes256::new_from_slice(k1).map_err(bad)?,
                tweak: Aes256::new_from_slice(k2).map_err(bad)?,
            },
            n => return Err(LegacyError::unsupported("aes-xts key size (bytes)", n.to_string())),
        };
        Ok(Self {
            ciphers: Box::new(ciphers),
        })
    }

    /// Decrypts one sector in place with IV `iv`. `sector.len()` must be a non-zero multiple of 16 (every
    /// dm-crypt sector size is), else the trailing partial block is left as it is.
    pub(crate) fn decrypt_sector(&self, sector: &mut [u8], iv: u64) {
        match &*self.ciphers {
            Ciphers::Aes128 { data, tweak } => xts_sector(data, tweak, sector, iv, Direction::Decrypt),
            Ciphers::Aes256 { data, tweak } => xts_sector(data, tweak, sector, iv, Direction::Decrypt),
        }
    }

    /// Encrypts one sector in place with IV `iv` (the inverse of [`AesXts::decrypt_sector`]; used by tests and
    /// tools that build fixtures).
    pub fn encrypt_sector(&self, sector: &mut [u8], iv: u64) {
        match &*self.ciphers {
            Ciphers::Aes128 { data, tweak } => xts_sector(data, tweak, sector, iv, Direction::Encrypt),
            Ciphers::Aes256 { data, tweak } => xts_sector(data, tweak, sector, iv, Direction::Encrypt),
        }
    }

    /// Decrypts consecutive sectors of `sector_size` bytes in place; the first has IV `first_iv` and each next one
    /// `iv_step` more (1, or `sector_size / 512` for LUKS2).
    pub fn decrypt_sectors(&self, buf: &mut [u8], sector_size: usize, first_iv: u64, iv_step: u64) {
        let mut iv = first_iv;
        for sector in buf.chunks_mut(sector_size) {
            self.decrypt_sector(sector, iv);
            iv = iv.wrapping_add(iv_step);
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Decrypt,
    Encrypt,
}

/// Multiplies the tweak by the primitive element α of GF(2^128) (XTS little-endian convention), branch-free.
#[inline]
fn mul_alpha(t: u128) -> u128 {
    let carry = t >> 127;
    (t << 1) ^ (carry * 0x87)
}

fn xts_sector<C>(data: &C, tweak: &C, sector: &mut [u8], iv: u64, dir: Direction)
where
    C: BlockCipherEncrypt + BlockCipherDecrypt + BlockSizeUser<BlockSize = U16>,
{
    let mut t = Block::default();
    t[..8].copy_from_slice(&iv.to_le_bytes());
    tweak.encrypt_block(&mut t);
    let mut tw = u128::from_le_bytes(t.into());

    let mut blocks = [Block::default(); BATCH_BLOCKS];
    let mut tweaks = [0u128; BATCH_BLOCKS];
    let whole = sector.len() / 16 * 16;
    for chunk in sector[..whole].chunks_mut(BATCH_BLOCKS * 16) {
        let n = chunk.len() / 16;
        for ((src, block), slot) in chunk.chunks_exact(16).zip(blocks.iter_mut()).zip(tweaks.iter_mut()) {
            let mut b = [0u8; 16];
            b.copy_from_slice(src);
            *slot = tw;
            *block = (u128::from_le_bytes(b) ^ tw).to_le_bytes().into();
            tw = mul_alpha(tw);
        }
        match dir {
            Direction::Decrypt => data.decrypt_blocks(&mut blocks[..n]),
            Direction::Encrypt => data.encrypt_blocks(&mut blocks[..n]),
        }
        for ((dst, block), t) in chunk.chunks_exact_mut(16).zip(blocks.iter()).zip(tweaks.iter()) {
            let v = u128::from_le_bytes((*block).into()) ^ t;
            dst.copy_from_slice(&v.to_le_bytes());
        }
    }
    // Plaintext copies on the stack are not key material, but leave nothing behind anyway.
    blocks.iter_mut().for_each(|b| *b = Block::default());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use aes::cipher::KeyInit;
    use xts_mode::{Xts128, get_tweak_default};

    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn matches_xts_mode_crate_for_both_key_sizes_and_sector_sizes() {
        for key_len in [32usize, 64] {
            let key = pattern(key_len, 7);
            let ours = AesXts::new(&key).unwrap();
            for sector_size in [512usize, 4096] {
                let plain = pattern(sector_size * 3, 1);
                let mut reference = plain.clone();
                // xts-mode numbers sectors itself: sector i gets tweak get_tweak_default(first + i).
                if key_len == 32 {
                    let x = Xts128::new(
                        Aes128::new_from_slice(&key[..16]).unwrap(),
                        Aes128::new_from_slice(&key[16..]).unwrap(),
                    );
                    x.encrypt_area(&mut reference, sector_size, 1000, get_tweak_default);
                } else {
                    let x = Xts128::new(
                        Aes256::new_from_slice(&key[..32]).unwrap(),
                        Aes256::new_from_slice(&key[32..]).unwrap(),
                    );
                    x.encrypt_area(&mut reference, sector_size, 1000, get_tweak_default);
                }
                let mut ours_ct = plain.clone();
                for (i, s) in ours_ct.chunks_mut(sector_size).enumerate() {
                    ours.encrypt_sector(s, 1000 + i as u64);
                }
                assert_eq!(ours_ct, reference, "encrypt, key {key_len}, sector {sector_size}");
                ours.decrypt_sectors(&mut ours_ct, sector_size, 1000, 1);
                assert_eq!(ours_ct, plain, "decrypt, key {key_len}, sector {sector_size}");
            }
        }
    }

    #[test]
    fn ieee_1619_vector_2() {
        // IEEE P1619 XTS-AES-128 vector 2: key1 = 11.., key2 = 22.., sequence number 0x3333333333, data 44..
        let mut key = vec![0x11u8; 16];
        key.extend_from_slice(&[0x22; 16]);
        let x = AesXts::new(&key).unwrap();
        let mut buf = [0x44u8; 32];
        x.encrypt_sector(&mut buf, 0x33_3333_3333);
        assert_eq!(
            hex::encode(buf),
            "c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0"
        );
        x.decrypt_sector(&mut buf, 0x33_3333_3333);
        assert_eq!(buf, [0x44u8; 32]);
    }

    #[test]
    fn plain64_iv_counts_512_byte_units_unless_large_sectors() {
        assert_eq!(plain64_iv(0, 4096, IvMode::Sectors512, 0), 0);
        assert_eq!(plain64_iv(4096, 4096, IvMode::Sectors512, 0), 8);
        assert_eq!(plain64_iv(3 * 4096, 4096, IvMode::LargeSectors, 0), 3);
        assert_eq!(plain64_iv(3 * 512, 512, IvMode::LargeSectors, 0), 3);
        assert_eq!(plain64_iv(4096, 4096, IvMode::Sectors512, 5), 13);
        // dm-crypt adds the IV offset before shifting.
        assert_eq!(plain64_iv(4096, 4096, IvMode::LargeSectors, 16), 3);
    }

    #[test]
    fn refuses_other_key_sizes() {
        assert!(AesXts::new(&[0u8; 48]).is_err());
        assert!(AesXts::new(&[0u8; 16]).is_err());
    }
}
