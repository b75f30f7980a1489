//! Legacy images: the seed's LUKS2 (`aes-xts-plain64`) + ext4 images, read in userspace.
//!
//! The seed's `generatefs.sh` makes images with `cryptsetup luksFormat --type luks2 --sector-size 4096 --cipher
//! aes-xts-plain64 --pbkdf pbkdf2`, the 32-byte released key as the *passphrase*, then `mkfs.ext4` and the model
//! files. Opening them normally needs dm-crypt, a loop device and a privileged mount. This module does the same
//! with no kernel help and no async, so both the daemon and `mkimage convert` use it:
//!
//! 1. [`luks2`]: both header copies (binary + JSON), checksum, the valid copy with the higher sequence id;
//! 2. [`kdf`] + [`af`]: a keyslot's PBKDF2 / Argon2 area key, the anti-forensic merge, the digest check;
//! 3. [`xts`] + [`device`]: the data segment decrypted per sector with dm-crypt's exact `plain64` IVs;
//! 4. [`ext4`]: the filesystem, read-only, through `ext4-view`;
//! 5. `mount` (feature `fuse`): the tree served by the daemon, from the same sources and mount settings.
//!
//! **There is no integrity.** XTS is unauthenticated: whoever controls storage can change sectors (to garbage)
//! or replay old ones undetected. The daemon logs [`NO_INTEGRITY_WARNING`] once; `mkimage convert` moves images
//! to the authenticated v1 format.

pub mod af;
pub mod device;
mod error;
pub mod ext4;
pub mod kdf;
pub mod luks2;
#[cfg(feature = "fuse")]
pub mod mount;
pub mod xts;

use std::sync::{Arc, Once};

pub use device::{DecryptedDevice, ReadAt, SegmentParams};
pub use error::LegacyError;
pub use ext4::{Ext4File, Ext4Volume, TreeEntry, TreeKind};
pub use luks2::{Luks2Header, probe};

/// The warning logged (once) when a legacy image is opened.
pub(crate) const NO_INTEGRITY_WARNING: &str = "legacy LUKS2 image (aes-xts-plain64): XTS gives no integrity; whoever \
     controls storage can change or replay sectors undetected. Convert it with `cinfer-mkimage convert`.";

/// Logs [`NO_INTEGRITY_WARNING`] at `warn` level, the first time only (per process).
pub fn warn_no_integrity_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| tracing::warn!("{NO_INTEGRITY_WARNING}"));
}

/// An unlocked legacy image: its header and the decrypted data segment, shareable across threads.
pub struct LegacyImage<R> {
    header: Luks2Header,
    keyslot: u32,
    device: Arc<DecryptedDevice<R>>,
}

impl<R> std::fmt::Debug for LegacyImage<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyImage")
            .field("uuid", &self.header.uuid)
            .field("keyslot", &self.keyslot)
            .field("device", &self.device)
            .finish()
    }
}

impl<R: ReadAt + 'static> LegacyImage<R> {
    /// Reads the header of `image`, opens a keyslot with `passphrase` (the key file's bytes, as cryptsetup takes
    /// them) and sets up the decrypted data segment. Fails with [`LegacyError::WrongKey`] ("no keyslot opened with
    /// this key"), or an error naming an unsupported cipher, KDF, LUKS version, …
    pub fn open(image: R, passphrase: &[u8]) -> Result<Self, LegacyError> {
        let header = Luks2Header::read(&image)?;
        let segment = header.data_segment()?;
        let (key, keyslot) = header.unlock(&image, passphrase)?;
        let image_len = image.size().map_err(|source| LegacyError::Io { offset: 0, source })?;
        let params = segment.params(image_len)?;
        let device = DecryptedDevice::new(image, key.as_bytes(), params)?;
        tracing::debug!(uuid = %header.uuid, keyslot, ?params, "opened legacy LUKS2 image");
        Ok(Self {
            header,
            keyslot,
            device: Arc::new(device),
        })
    }

    /// The header copy in use.
    pub fn header(&self) -> &Luks2Header {
        &self.header
    }

    /// The keyslot that opened.
    pub fn keyslot(&self) -> u32 {
        self.keyslot
    }

    /// The decrypted data segment (what `/dev/mapper/NAME` would be).
    pub fn device(&self) -> &Arc<DecryptedDevice<R>> {
        &self.device
    }

    /// A view of the ext4 filesystem, for the calling thread ([`Ext4Volume`] is `!Send`; make one per thread).
    pub fn ext4(&self) -> Result<Ext4Volume, LegacyError> {
        Ext4Volume::load(self.device.clone())
    }
}
