//! encfs: mounts an encrypted, read-only cinfer model image in userspace.
//!
//! The image format (module [`format`](mod@format)) is pure: no I/O and no async, so the model owner's tool
//! (`mkimage`) and the daemon share one implementation. The daemon part is behind the `fuse` feature (on by default):
//!
//! * [`source`]: the [`source::BlobSource`] trait (async ranged reads) and its backends;
//! * [`fs`]: the filesystem logic, generic over the source, with no FUSE types;
//! * [`tree`]: the read-only tree trait that both images ([`fs::ImageTree`]) and legacy LUKS2 images implement;
//! * [`fuse`]: the project's own FUSE session over any such tree (classic `/dev/fuse` and io_uring), and the
//!   mount calls.
//!
//! The feature `testing` adds the module `testing`, an in-process image builder for tests.

pub mod format;
pub mod keyfile;
pub mod legacy;
pub mod signature;

#[cfg(feature = "fuse")]
pub mod cache;
#[cfg(feature = "fuse")]
mod errchain;
#[cfg(feature = "fuse")]
pub mod extract;
#[cfg(feature = "fuse")]
pub mod fs;
#[cfg(feature = "fuse")]
pub mod fuse;
#[cfg(feature = "fuse")]
pub mod gate;
#[cfg(feature = "fuse")]
pub mod metrics;
#[cfg(feature = "fuse")]
pub mod pipeline;
#[cfg(feature = "fuse")]
pub(crate) mod pool;
#[cfg(feature = "fuse")]
pub mod sidecar;
#[cfg(feature = "fuse")]
pub mod source;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(feature = "fuse")]
pub mod tree;
