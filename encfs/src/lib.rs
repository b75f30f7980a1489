//! encfs: mounts an encrypted, read-only cinfer model image in userspace.
//!
//! The image format (module [`format`]) is pure: no I/O and no async, so the model owner's tool (`mkimage`) and
//! the daemon share one implementation. The daemon part (FUSE adapter, sources) is behind the `fuse` feature.

pub mod format;
