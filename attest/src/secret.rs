//! Key material holders: zeroized on drop, redacted in `Debug`, never `Display`.

use zeroize::Zeroizing;

/// Secret bytes (a released key, a KEK, a private key encoding). Zeroized on drop; `Debug` prints only
/// the length.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Take ownership of bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }
    /// Copy from a slice.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }
    /// Borrow the bytes. Callers must not log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes([REDACTED; {}])", self.0.len())
    }
}

/// The 32-byte symmetric model key that encfs uses. Zeroized on drop; `Debug` is redacted.
///
/// The bytes live in one heap allocation that never moves: moving a `ModelKey` (into a `Result`, through an
/// async function's state, which the runtime may keep on the heap) moves a pointer, so no stale copy of the key
/// is left behind in freed memory. Build it in place with [`Self::from_slice`] or [`Self::new_with`].
#[derive(Clone, PartialEq, Eq)]
pub struct ModelKey(Box<Zeroizing<[u8; 32]>>);

impl ModelKey {
    /// Wrap 32 bytes (a copy: the caller wipes `bytes`).
    pub fn new(bytes: [u8; 32]) -> Self {
        let mut key = Self::zeroed();
        key.0.copy_from_slice(&bytes);
        key
    }
    /// From a slice that must be exactly 32 bytes, copied straight into the key's own memory.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 32 {
            return None;
        }
        let mut key = Self::zeroed();
        key.0.copy_from_slice(bytes);
        Some(key)
    }
    /// Build a key in place: `fill` writes the 32 bytes into the key's own memory.
    pub fn new_with<E>(fill: impl FnOnce(&mut [u8; 32]) -> Result<(), E>) -> Result<Self, E> {
        let mut key = Self::zeroed();
        fill(&mut key.0)?;
        Ok(key)
    }
    fn zeroed() -> Self {
        Self(Box::new(Zeroizing::new([0u8; 32])))
    }
    /// Borrow the key. Callers must not log it.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for ModelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelKey([REDACTED])")
    }
}

/// Random bytes from the OS.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS RNG failing is not recoverable; getrandom only fails on misconfigured systems.
    if getrandom::fill(&mut b).is_err() {
        panic!("OS random number generator unavailable");
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretBytes::from_slice(b"supersecretvalue");
        assert_eq!(format!("{s:?}"), "SecretBytes([REDACTED; 16])");
        let k = ModelKey::new([0x41; 32]);
        assert!(!format!("{k:?}").contains("41"));
    }
}
