//! Azure Blob Storage: `https://<account>.blob.core.windows.net/<container>/<blob>` and Azurite-style
//! `http://127.0.0.1:PORT/<account>/<container>/<blob>` URLs, with a SAS in the URL, anonymous (public
//! container) access, or an Entra ID bearer token (the seed's `azure_url_private: true`) from an IMDS managed
//! identity or Azure Workload Identity, through [`attest::credential::TokenProvider`] (the same definition the
//! vault client uses).
//!
//! **Why not the official SDK (`azure_storage_blob`)**: the three REST calls needed (ranged `GET` with
//! `x-ms-version`, `If-Match`, and the IMDS token request) are a thin layer over [`HttpSource`], which already
//! carries the retry, timeout, short-body and pinning logic the SDK would need wrapping for anyway. The SDK has no
//! shared-key auth, refuses token credentials over plain http (so it cannot talk to Azurite with a token), and
//! pulls a second HTTP stack and its TLS backend into the daemon (see `crate-probes.md` §2). Bearer tokens are
//! only sent over https, or plain http to a loopback address ([`attest::transport::check_endpoint`]).

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;

use attest::credential::TokenProvider;
use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue};

use super::http::{Authorizer, HttpSource, HttpSourceError, RetryPolicy};
use super::{BlobError, BlobKey, BlobMeta, BlobSource, ETag};
use crate::metrics::Metrics;

/// The storage REST version sent with every request.
pub(crate) const X_MS_VERSION: &str = "2021-08-06";

/// The resource of Blob Storage tokens.
pub(crate) const STORAGE_RESOURCE: &str = "https://storage.azure.com/";

/// How requests are authorized.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum AzureAuth {
    /// Whatever the URL carries: a SAS query, or nothing (public container).
    #[default]
    UrlOrAnonymous,
    /// Entra ID tokens for [`STORAGE_RESOURCE`] from this provider (a managed identity or Workload Identity); share
    /// it with the vault client and the other sources so one cached token serves them.
    Entra(Arc<TokenProvider>),
}

/// True if `url` looks like Azure Blob Storage: a `*.blob.core.windows.net` host, or an Azurite path whose
/// first segment is the well-known `devstoreaccount1` account.
pub(crate) fn is_azure_url(url: &str) -> bool {
    let Some(rest) = url.split_once("://").map(|(_, r)| r) else {
        return false;
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = host.rsplit('@').next().unwrap_or(host);
    let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
    host.ends_with(".blob.core.windows.net") || path.starts_with("devstoreaccount1/")
}

/// Reads Azure blobs: an [`HttpSource`] that sends `x-ms-version` and, with [`AzureAuth::Entra`], a bearer token.
#[derive(Clone, Debug)]
pub struct AzureSource {
    http: HttpSource,
    sends_token: bool,
}

impl AzureSource {
    /// A source with `auth`.
    pub fn new(policy: RetryPolicy, metrics: Arc<Metrics>, auth: AzureAuth) -> Result<Self, HttpSourceError> {
        let mut http = HttpSource::new(policy, metrics)?.with_header(
            HeaderName::from_static("x-ms-version"),
            HeaderValue::from_static(X_MS_VERSION),
        );
        let sends_token = matches!(auth, AzureAuth::Entra(_));
        if let AzureAuth::Entra(provider) = auth {
            http = http.with_authorizer(Arc::new(EntraToken(provider)));
        }
        Ok(Self { http, sends_token })
    }

    fn check(&self, key: &BlobKey) -> Result<(), BlobError<HttpSourceError>> {
        if self.sends_token {
            attest::transport::check_endpoint("private blob (bearer token)", key.as_str(), false)
                .map_err(|e| BlobError::Backend(HttpSourceError::Config(e.to_string())))?;
        }
        Ok(())
    }
}

impl BlobSource for AzureSource {
    type Error = HttpSourceError;

    async fn stat(&self, key: &BlobKey) -> Result<BlobMeta, BlobError<HttpSourceError>> {
        self.check(key)?;
        self.http.stat(key).await
    }

    async fn read_range(
        &self,
        key: &BlobKey,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> Result<Bytes, BlobError<HttpSourceError>> {
        self.check(key)?;
        self.http.read_range(key, range, if_match).await
    }

    async fn read_range_into(
        &self,
        key: &BlobKey,
        range: Range<u64>,
        if_match: Option<&ETag>,
        buf: &mut Vec<u8>,
    ) -> Result<(), BlobError<HttpSourceError>> {
        self.check(key)?;
        self.http.read_range_into(key, range, if_match, buf).await
    }
}

/// The `Authorization` header from an Entra ID token for [`STORAGE_RESOURCE`] (cached by the provider; never
/// logged: the header value is marked sensitive).
#[derive(Debug)]
struct EntraToken(Arc<TokenProvider>);

impl Authorizer for EntraToken {
    fn authorization(&self) -> Pin<Box<dyn Future<Output = Result<Option<HeaderValue>, HttpSourceError>> + Send + '_>> {
        Box::pin(async move {
            let token = self.0.token(STORAGE_RESOURCE).await.map_err(HttpSourceError::Token)?;
            let mut bearer = zeroize::Zeroizing::new(b"Bearer ".to_vec());
            bearer.extend_from_slice(token.expose());
            let mut value = HeaderValue::from_bytes(&bearer)
                .map_err(|_| HttpSourceError::Config("the token is not a valid header value".into()))?;
            value.set_sensitive(true);
            Ok(Some(value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_azure_and_azurite_urls() {
        assert!(is_azure_url("https://acct.blob.core.windows.net/c/b.img?sv=1"));
        assert!(is_azure_url("http://127.0.0.1:10000/devstoreaccount1/c/b.img"));
        assert!(!is_azure_url("http://127.0.0.1:8080/models/b.img"));
        assert!(!is_azure_url("/srv/devstoreaccount1/x"));
    }
}
