//! mkimage: the model owner's side of cinfer. It turns a model directory (a Triton model repository) into one
//! encrypted, authenticated image file ([`build`]), shows what an image holds ([`inspect`]) and checks every
//! chunk of one ([`verify`]). [`convert`] moves a legacy image (the seed's LUKS2 + ext4) to the authenticated format.
//! [`sign`] makes and checks OpenSSF Model Signing signatures (`model_signing`
//! interoperable); `build` can sign in its single pass over the data and embed the signature in the image.
//!
//! It uses the image format from the `encfs` crate with its FUSE feature off, so a model owner's machine needs no
//! FUSE. Keys are 32 random bytes in a key file ([`keyfile`]); later the key is imported into a key broker with a
//! release policy, and only an attested container gets it back.

pub mod build;
pub mod convert;
pub mod image_file;
pub mod inspect;
pub mod keyfile;
pub mod keys;
pub mod sign;
pub mod upload;
pub mod verify;
