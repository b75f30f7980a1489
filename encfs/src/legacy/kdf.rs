//! Keyslot and digest KDFs as LUKS2 names them: `pbkdf2` (with the header's hash) and `argon2i` / `argon2id`.

use argon2::{Algorithm, Argon2, Params, Version};

use super::LegacyError;

/// Largest Argon2 memory cost accepted, in KiB (cryptsetup's own maximum: 4 GiB). A forged header cannot make the
/// daemon allocate more.
pub(crate) const MAX_ARGON2_MEMORY_KIB: u32 = 4 * 1024 * 1024;

/// Largest Argon2 parallelism accepted (cryptsetup's maximum).
pub(crate) const MAX_ARGON2_CPUS: u32 = 32;

/// A hash named in a LUKS2 header (`af.hash`, `kdf.hash`, `digest.hash`, `checksum_alg`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[non_exhaustive]
pub enum HashAlg {
    /// SHA-1.
    Sha1,
    /// SHA-256 (cryptsetup's default).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlg {
    /// The hash called `name` in the header (case-insensitive), or an error naming it.
    pub fn parse(name: &str) -> Result<Self, LegacyError> {
        match name.to_ascii_lowercase().as_str() {
            "sha1" => Ok(Self::Sha1),
            "sha256" => Ok(Self::Sha256),
            "sha384" => Ok(Self::Sha384),
            "sha512" => Ok(Self::Sha512),
            _ => Err(LegacyError::unsupported("hash", name)),
        }
    }

    /// Output length in bytes.
    pub fn len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// Never true (every hash has output); present because `len` is.
    pub fn is_empty(self) -> bool {
        false
    }

    /// The hash of the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: sha2::Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut h = D::new();
            for p in parts {
                h.update(p);
            }
            h.finalize().to_vec()
        }
        match self {
            Self::Sha1 => run::<sha1::Sha1>(parts),
            Self::Sha256 => run::<sha2::Sha256>(parts),
            Self::Sha384 => run::<sha2::Sha384>(parts),
            Self::Sha512 => run::<sha2::Sha512>(parts),
        }
    }

    /// PBKDF2-HMAC with this hash, filling `out`.
    pub fn pbkdf2(self, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
        match self {
            Self::Sha1 => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, out),
            Self::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, out),
            Self::Sha384 => pbkdf2::pbkdf2_hmac::<sha2::Sha384>(password, salt, iterations, out),
            Self::Sha512 => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, out),
        }
    }
}

/// Which Argon2 variant a keyslot uses.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[non_exhaustive]
pub(crate) enum Argon2Variant {
    /// `argon2i`.
    Argon2i,
    /// `argon2id` (cryptsetup's default for LUKS2).
    Argon2id,
}

/// A keyslot KDF with its parameters, as validated from the header.
#[derive(Clone, Debug, Eq, PartialEq)]
#[non_exhaustive]
pub(crate) enum Kdf {
    /// PBKDF2-HMAC.
    Pbkdf2 {
        /// The HMAC hash.
        hash: HashAlg,
        /// Iteration count.
        iterations: u32,
        /// Salt.
        salt: Vec<u8>,
    },
    /// Argon2 (version 0x13).
    Argon2 {
        /// Variant.
        variant: Argon2Variant,
        /// Time cost (passes).
        time: u32,
        /// Memory cost in KiB.
        memory_kib: u32,
        /// Parallelism (lanes).
        cpus: u32,
        /// Salt.
        salt: Vec<u8>,
    },
}

impl Kdf {
    /// Derives `out.len()` bytes from `passphrase`.
    pub(crate) fn derive(&self, passphrase: &[u8], out: &mut [u8]) -> Result<(), LegacyError> {
        match self {
            Self::Pbkdf2 { hash, iterations, salt } => {
                hash.pbkdf2(passphrase, salt, *iterations, out);
                Ok(())
            }
            Self::Argon2 {
                variant,
                time,
                memory_kib,
                cpus,
                salt,
            } => {
                if *memory_kib > MAX_ARGON2_MEMORY_KIB || *cpus > MAX_ARGON2_CPUS {
                    return Err(LegacyError::unsupported(
                        "argon2 cost",
                        format!("memory {memory_kib} KiB, cpus {cpus}"),
                    ));
                }
                let params = Params::new(*memory_kib, *time, *cpus, Some(out.len()))
                    .map_err(|e| LegacyError::unsupported("argon2 parameters", e.to_string()))?;
                let algorithm = match variant {
                    Argon2Variant::Argon2i => Algorithm::Argon2i,
                    Argon2Variant::Argon2id => Algorithm::Argon2id,
                };
                Argon2::new(algorithm, Version::V0x13, params)
                    .hash_password_into(passphrase, salt, out)
                    .map_err(|e| LegacyError::unsupported("argon2 parameters", e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn pbkdf2_sha256_rfc7914_vector() {
        // RFC 7914 §11: PBKDF2-HMAC-SHA256("passwd", "salt", 1, 64).
        let mut out = [0u8; 64];
        HashAlg::Sha256.pbkdf2(b"passwd", b"salt", 1, &mut out);
        assert_eq!(hex::encode(&out[..16]), "55ac046e56e3089fec1691c22544b605");
    }

    #[test]
    fn argon2id_rfc9106_shape_is_deterministic_and_salted() {
        let kdf = |salt: &[u8]| Kdf::Argon2 {
            variant: Argon2Variant::Argon2id,
            time: 1,
            memory_kib: 64,
            cpus: 1,
            salt: salt.to_vec(),
        };
        let (mut a, mut b, mut c) = ([0u8; 32], [0u8; 32], [0u8; 32]);
        kdf(b"saltsaltsalt").derive(b"pw", &mut a).unwrap();
        kdf(b"saltsaltsalt").derive(b"pw", &mut b).unwrap();
        kdf(b"othersaltsalt").derive(b"pw", &mut c).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn refuses_huge_argon2_memory_and_unknown_hashes() {
        let kdf = Kdf::Argon2 {
            variant: Argon2Variant::Argon2id,
            time: 1,
            memory_kib: MAX_ARGON2_MEMORY_KIB + 1,
            cpus: 1,
            salt: vec![0; 16],
        };
        assert!(matches!(
            kdf.derive(b"x", &mut [0u8; 32]),
            Err(LegacyError::Unsupported { .. })
        ));
        let err = HashAlg::parse("whirlpool").unwrap_err();
        assert_eq!(err.to_string(), "unsupported LUKS2 hash: whirlpool");
    }
}
