//! Where image bytes come from: the [`BlobSource`] trait and its backends.
//!
//! The filesystem ([`crate::fs::EncFs`]) never does I/O itself: it asks a source for byte ranges of the sealed
//! image and authenticates every byte it gets back, so a source is trusted for availability only, never for
//! integrity. The trait is shaped for remote object stores (HTTP range GETs, Azure Blob): reads are async,
//! addressed by a [`BlobKey`] plus a byte range, and can be pinned to the [`ETag`] seen at mount so the image
//! cannot change underneath a mount. Backends:
//!
//! * [`FileSource`]: a local file, read with `pread` (no `mmap`, so a file truncated under a mount gives an error
//!   instead of `SIGBUS`).
//! * [`MmapSource`]: a local file mapped read-only (zero-copy; `SIGBUS` if the file is truncated under it).
//! * [`MemSource`]: bytes in memory, for tests and for wrapping in fault-injecting sources.
//! * `FaultySource` (feature `testing`): wraps any source and injects errors, delays, short or corrupted
//!   answers and new ETags, request by request, for tests of the cache and the filesystem.
//! * [`HttpSource`]: any HTTP(S) URL with `Range` support (plain servers, presigned and SAS URLs), with retries.
//! * [`AzureSource`]: Azure Blob Storage (and Azurite) with a SAS, anonymously, or with a managed identity.
//!
//! [`open`] turns a path or URL into an [`AnySource`] (the CLI's `SOURCE`); a cache or prefetcher wraps a
//! source and is itself generic over `B: BlobSource`.

mod any;
pub mod azure;
#[cfg(any(test, feature = "testing"))]
pub mod faulty;
mod file;
pub mod http;
mod mem;
mod mmap;

use std::fmt;
use std::future::Future;
use std::ops::Range;

use bytes::Bytes;

pub use any::{AnySource, AnySourceError, LocalIo, SourceOptions, is_url, open};
pub use azure::{AzureAuth, AzureSource};
#[cfg(any(test, feature = "testing"))]
pub use faulty::{Fault, FaultySource, Rule};
pub use file::{FileSource, FileSourceError};
pub use http::{HttpSource, HttpSourceError, RetryPolicy};
pub use mem::MemSource;
pub use mmap::MmapSource;

/// Names one blob (one image) within a source: a path for [`FileSource`], a URL for remote ones.
///
/// A URL may carry credentials (a SAS or presigned query, `user:password@`): `Display` and `Debug` show it
/// without userinfo, query and fragment, so a key can go into any message, log line, status file or mount table
/// as is. Only [`Self::as_str`] gives the whole key, for the request itself.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BlobKey(String);

impl BlobKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The whole key, credentials included: for opening or requesting the blob, never for showing it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as it may be shown: a URL without userinfo, query and fragment; anything else as is.
    pub fn redacted(&self) -> std::borrow::Cow<'_, str> {
        redact(&self.0)
    }
}

impl fmt::Display for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BlobKey").field(&self.redacted()).finish()
    }
}

/// `scheme://host[:port]/path` of a URL (userinfo, query and fragment dropped); a string that is not a URL (no
/// `scheme://` prefix) as is.
fn redact(s: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.into();
    };
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !is_scheme {
        return s.into();
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path = tail.split(['?', '#']).next().unwrap_or_default();
    format!("{scheme}://{host}{path}").into()
}

/// An opaque version tag of a blob (an HTTP ETag, or identity and mtime of a local file). Reads pinned to it
/// fail with [`BlobError::PreconditionFailed`] once the blob changes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ETag(String);

impl ETag {
    /// Wraps a tag.
    pub fn new(tag: impl Into<String>) -> Self {
        Self(tag.into())
    }

    /// The tag as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a source knows about a blob before reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobMeta {
    /// Length in bytes.
    pub len: u64,
    /// Version tag, if the backend has one.
    pub etag: Option<ETag>,
}

/// Why a source could not deliver. `E` is the backend's own error type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError<E> {
    /// The blob does not exist.
    #[error("blob not found")]
    NotFound,
    /// The blob changed since its [`ETag`] was taken.
    #[error("blob changed since it was opened (version tag mismatch)")]
    PreconditionFailed,
    /// The range is not inside the blob (or the blob shrank).
    #[error("range {start}..{end} is outside the blob (length {len})")]
    OutOfRange {
        /// First byte asked for.
        start: u64,
        /// End (exclusive) asked for.
        end: u64,
        /// The blob's length.
        len: u64,
    },
    /// Any other backend failure (I/O, network, service).
    #[error(transparent)]
    Backend(E),
}

/// A source of immutable blobs that can be read by byte range.
///
/// Implementations must return exactly the bytes of `range` (or an error); they need not be fast for tiny
/// ranges, since callers read whole runs of chunks. Futures must be `Send` so they can run on a multi-threaded
/// runtime; a backend that blocks (like [`FileSource`]) documents it.
pub trait BlobSource: Send + Sync + 'static {
    /// The backend's own error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Length and version tag of the blob.
    fn stat(&self, key: &BlobKey) -> impl Future<Output = Result<BlobMeta, BlobError<Self::Error>>> + Send;

    /// Reads `range` of the blob; when `if_match` is given, fails with [`BlobError::PreconditionFailed`] if the
    /// blob's current tag differs.
    fn read_range(
        &self,
        key: &BlobKey,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> impl Future<Output = Result<Bytes, BlobError<Self::Error>>> + Send;

    /// As [`Self::read_range`], into `buf` (cleared first, its allocation reused), so a caller that keeps
    /// buffers (the part cache) reads a response body straight into memory it already owns. On error `buf`
    /// holds no complete range. The default reads with [`Self::read_range`] and copies.
    fn read_range_into(
        &self,
        key: &BlobKey,
        range: Range<u64>,
        if_match: Option<&ETag>,
        buf: &mut Vec<u8>,
    ) -> impl Future<Output = Result<(), BlobError<Self::Error>>> + Send {
        async move {
            buf.clear();
            let bytes = self.read_range(key, range, if_match).await?;
            buf.extend_from_slice(&bytes);
            Ok(())
        }
    }

    /// Told by the reader that bytes of `range`, as this source returned them, failed authentication. A source
    /// that keeps copies (memory or disk cache) drops every copy overlapping `range` and returns true, so that
    /// reading the range again fetches it afresh; a source without copies returns false (the default), and a
    /// new read would see the same bytes.
    fn on_auth_failure(&self, key: &BlobKey, range: Range<u64>) -> bool {
        let _ = (key, range);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_show_urls_without_credentials() {
        let k = BlobKey::new("https://user:pa%40ss@acct.blob.core.windows.net:443/c/b.img?sv=1&sig=SECRET#frag");
        assert_eq!(k.to_string(), "https://acct.blob.core.windows.net:443/c/b.img");
        assert!(!format!("{k:?}").contains("SECRET") && !format!("{k:?}").contains("pa%40ss"));
        assert_eq!(BlobKey::new("http://h?sig=x").to_string(), "http://h");
        assert_eq!(BlobKey::new("http://u:p@h").to_string(), "http://h");
        assert_eq!(BlobKey::new("/srv/http://x?y").to_string(), "/srv/http://x?y");
        assert_eq!(BlobKey::new("model.img").to_string(), "model.img");
        assert!(k.as_str().contains("sig=SECRET"));
    }
}
