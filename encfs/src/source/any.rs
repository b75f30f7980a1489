//! One source type for "a path or a URL": [`open`] picks the backend from the spec, [`AnySource`] dispatches.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::azure::{AzureAuth, AzureSource, is_azure_url};
use super::http::{HttpSource, HttpSourceError, RetryPolicy};
use super::{BlobError, BlobKey, BlobMeta, BlobSource, ETag, FileSource, FileSourceError, MmapSource};
use crate::metrics::Metrics;

/// How a local file is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LocalIo {
    /// Positioned reads ([`FileSource`]).
    #[default]
    Pread,
    /// A read-only memory map ([`MmapSource`]).
    Mmap,
}

/// Settings for [`open`]. `Default` gives `pread` for files, the default [`RetryPolicy`] and fresh counters.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SourceOptions {
    /// How local files are read.
    pub local_io: LocalIo,
    /// Retries, timeouts and budget of remote reads.
    pub retry: RetryPolicy,
    /// Counters the source updates (share them with a cache and a metrics endpoint).
    pub metrics: Arc<Metrics>,
    /// How Azure Blob URLs are authorized (a token credential also makes any URL an Azure one).
    pub azure_auth: AzureAuth,
}

/// Errors of [`AnySource`]: the backend's own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnySourceError {
    /// A local file.
    #[error(transparent)]
    File(#[from] FileSourceError),
    /// An HTTP(S) URL.
    #[error(transparent)]
    Http(#[from] HttpSourceError),
    /// A URL of a scheme no source reads (`ftp://`, `s3://`, `file://host/...`).
    #[error(
        "unsupported source {scheme}:// URL (a source is a path, a file:///PATH URL, or an http:// or https:// URL)"
    )]
    Scheme {
        /// The scheme, as given.
        scheme: String,
    },
}

/// Any of the sources [`open`] can return.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnySource {
    /// A local file read with `pread`.
    File(FileSource),
    /// A local file mapped read-only.
    Mmap(MmapSource),
    /// An HTTP(S) URL with Range support (plain or presigned).
    Http(HttpSource),
    /// An Azure Blob URL (SAS, anonymous or managed identity).
    Azure(AzureSource),
}

/// Opens a source for `spec` and returns it with the [`BlobKey`] to read.
///
/// **Stable API** (the CLI and the sidecar call it). `spec` is one of:
///
/// * `https://<account>.blob.core.windows.net/<container>/<blob>[?SAS]` or an Azurite URL
///   `http://HOST:PORT/devstoreaccount1/<container>/<blob>[?SAS]`: Azure Blob ([`AzureSource`]), authorized by
///   the SAS in the URL, anonymously, or with a managed identity ([`SourceOptions::azure_auth`]).
/// * any other `http://...` or `https://...`: a URL that serves `Range` requests (presigned URLs, plain
///   servers). The key is the URL as given.
/// * `file:///PATH` (or `file://localhost/PATH`): the local file `PATH`.
/// * any other `scheme://...`: refused, naming the scheme ([`AnySourceError::Scheme`]), rather than taken for a
///   relative path that does not exist.
/// * anything else: a local file path (made absolute), read per [`SourceOptions::local_io`].
///
/// Nothing is fetched here; the first request is the caller's `stat`.
pub fn open(spec: &str, opts: &SourceOptions) -> Result<(AnySource, BlobKey), AnySourceError> {
    if let Some(scheme) = url_scheme(spec)
        && !is_url(spec)
    {
        let local = spec
            .get(scheme.len() + 3..)
            .filter(|_| scheme.eq_ignore_ascii_case("file"))
            .and_then(|rest| rest.strip_prefix("localhost").or(Some(rest)))
            .filter(|rest| rest.starts_with('/'));
        return match local {
            Some(path) => open(path, opts),
            None => Err(AnySourceError::Scheme {
                scheme: scheme.to_string(),
            }),
        };
    }
    if is_url(spec) && (is_azure_url(spec) || !matches!(opts.azure_auth, AzureAuth::UrlOrAnonymous)) {
        let src = AzureSource::new(opts.retry.clone(), opts.metrics.clone(), opts.azure_auth.clone())?;
        return Ok((AnySource::Azure(src), BlobKey::new(spec)));
    }
    if is_url(spec) {
        let src = HttpSource::new(opts.retry.clone(), opts.metrics.clone())?;
        return Ok((AnySource::Http(src), BlobKey::new(spec)));
    }
    let path = std::path::absolute(spec).map_err(|source| FileSourceError::Io {
        op: "resolving",
        path: spec.to_string(),
        source,
    })?;
    let key = BlobKey::new(path.to_string_lossy());
    let src = match opts.local_io {
        LocalIo::Pread => AnySource::File(FileSource::new()),
        LocalIo::Mmap => AnySource::Mmap(MmapSource::new()),
    };
    Ok((src, key))
}

/// The scheme of `spec` if it starts with `scheme://` (letters, digits, `+-.`, starting with a letter).
fn url_scheme(spec: &str) -> Option<&str> {
    let (scheme, _) = spec.split_once("://")?;
    (scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)))
    .then_some(scheme)
}

/// True if `spec` names a remote source (an `http://` or `https://` URL) rather than a path.
pub fn is_url(spec: &str) -> bool {
    let lower = spec.get(..8).unwrap_or(spec).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn lift<T, E: Into<AnySourceError>>(r: Result<T, BlobError<E>>) -> Result<T, BlobError<AnySourceError>> {
    r.map_err(|e| match e {
        BlobError::NotFound => BlobError::NotFound,
        BlobError::PreconditionFailed => BlobError::PreconditionFailed,
        BlobError::OutOfRange { start, end, len } => BlobError::OutOfRange { start, end, len },
        BlobError::Backend(e) => BlobError::Backend(e.into()),
    })
}

impl BlobSource for AnySource {
    type Error = AnySourceError;

    async fn stat(&self, key: &BlobKey) -> Result<BlobMeta, BlobError<AnySourceError>> {
        match self {
            Self::File(s) => lift(s.stat(key).await),
            Self::Mmap(s) => lift(s.stat(key).await),
            Self::Http(s) => lift(s.stat(key).await),
            Self::Azure(s) => lift(s.stat(key).await),
        }
    }

    async fn read_range(
        &self,
        key: &BlobKey,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> Result<Bytes, BlobError<AnySourceError>> {
        match self {
            Self::File(s) => lift(s.read_range(key, range, if_match).await),
            Self::Mmap(s) => lift(s.read_range(key, range, if_match).await),
            Self::Http(s) => lift(s.read_range(key, range, if_match).await),
            Self::Azure(s) => lift(s.read_range(key, range, if_match).await),
        }
    }

    async fn read_range_into(
        &self,
        key: &BlobKey,
        range: Range<u64>,
        if_match: Option<&ETag>,
        buf: &mut Vec<u8>,
    ) -> Result<(), BlobError<AnySourceError>> {
        match self {
            Self::File(s) => lift(s.read_range_into(key, range, if_match, buf).await),
            Self::Mmap(s) => lift(s.read_range_into(key, range, if_match, buf).await),
            Self::Http(s) => lift(s.read_range_into(key, range, if_match, buf).await),
            Self::Azure(s) => lift(s.read_range_into(key, range, if_match, buf).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_pick_the_backend() {
        let opts = SourceOptions::default();
        let (s, k) = open("https://acct.blob.core.windows.net/c/model.img?sv=x", &opts).unwrap();
        assert!(matches!(s, AnySource::Azure(_)));
        assert_eq!(k.as_str(), "https://acct.blob.core.windows.net/c/model.img?sv=x");
        let (s, _) = open("https://example.org/model.img", &opts).unwrap();
        assert!(matches!(s, AnySource::Http(_)));
        let (s, k) = open("rel/model.img", &opts).unwrap();
        assert!(matches!(s, AnySource::File(_)));
        assert!(k.as_str().starts_with('/') && k.as_str().ends_with("rel/model.img"));
        assert!(is_url("HTTP://x") && !is_url("/srv/http://x"));
        let (s, k) = open("file:///srv/m.img", &opts).unwrap();
        assert!(matches!(s, AnySource::File(_)) && k.as_str() == "/srv/m.img");
        let (_, k) = open("file://localhost/srv/m.img", &opts).unwrap();
        assert_eq!(k.as_str(), "/srv/m.img");
        for bad in ["ftp://h/m.img", "file://host/m.img", "file://rel/m.img", "s3://b/k"] {
            let e = open(bad, &opts).unwrap_err().to_string();
            let scheme = bad.split("://").next().unwrap();
            assert!(e.contains(&format!("unsupported source {scheme}://")), "{bad}: {e}");
        }
    }
}
