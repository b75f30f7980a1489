//! The seed's `signature.bin`: for each file whose name starts with `model`, an ECDSA signature over the SHA-1 of
//! its content, in the file's directory (one `signature.bin` per directory, so a second `model*` file in the same
//! directory overwrote the first one's signature). File names, `config.pbtxt` and every other file are unsigned, and
//! SHA-1 is broken for collisions. Kept only to check old models while migrating to OMS signatures; callers must
//! make the user opt in and warn.

use sha1::{Digest, Sha1};

use super::{SignatureError, VerifyingKey};

/// Name of the seed's per-directory signature file.
pub const SEED_SIGNATURE_FILE: &str = "signature.bin";

/// True for the file names the seed signed (`model*`).
pub fn is_seed_signed(name: &str) -> bool {
    name.starts_with("model")
}

/// Streams a file's content, then checks a seed `signature.bin` over it.
#[derive(Clone, Debug, Default)]
pub struct SeedDigest(Sha1);

impl SeedDigest {
    /// A fresh digest.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds content.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// Checks the DER ECDSA signature `sig` (the bytes of `signature.bin`) over SHA-1 of the content.
    pub fn verify(self, key: &VerifyingKey, sig: &[u8]) -> Result<(), SignatureError> {
        key.verify_prehash_any(&self.0.finalize(), sig)
    }
}
