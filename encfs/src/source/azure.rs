//! Azure Blob Storage: `https://<account>.blob.core.windows.net/<container>/<blob>` and Azurite-style
//! `http://127.0.0.1:PORT/<account>/<container>/<blob>` URLs, with a SAS in the URL, anonymous (public
//! container) access, or a managed-identity bearer token from IMDS (the seed's `azure_url_private: true`).
//!
//! **Why not the official SDK (`azure_storage_blob`)**: the three REST calls needed (ranged `GET` with
//! `x-ms-version`, `If-Match`, and the IMDS token request) are a thin layer over [`HttpSource`], which already
//! carries the retry, timeout, short-body and pinning logic the SDK would need wrapping for anyway. The SDK has no
//! shared-key auth, refuses token credentials over plain http (so it cannot talk to Azurite with a token), and
//! pulls a second HTTP stack and its TLS backend into the daemon (see `crate-probes.md` §2). Bearer tokens are
//! likewise only sent over https here.

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue};

use super::http::{Authorizer, HttpSource, HttpSourceError, RetryPolicy};
use super::{BlobError, BlobKey, BlobMeta, BlobSource, ETag};
use crate::metrics::Metrics;

/// The storage REST version sent with every request.
pub const X_MS_VERSION: &str = "2021-08-06";

/// The IMDS token endpoint (link-local, reachable only inside Azure).
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

/// How requests are authorized.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AzureAuth {
    /// Whatever the URL carries: a SAS query, or nothing (public container).
    #[default]
    UrlOrAnonymous,
    /// A managed-identity token from IMDS, for the given user-assigned identity (client id) or the system one.
    ManagedIdentity {
        /// Client id of a user-assigned identity.
        client_id: Option<String>,
    },
}

/// True if `url` looks like Azure Blob Storage: a `*.blob.core.windows.net` host, or an Azurite path whose
/// first segment is the well-known `devstoreaccount1` account.
pub fn is_azure_url(url: &str) -> bool {
    let Some(rest) = url.split_once("://").map(|(_, r)| r) else {
        return false;
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = host.rsplit('@').next().unwrap_or(host);
    let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
    host.ends_with(".blob.core.windows.net") || path.starts_with("devstoreaccount1/")
}

/// Reads Azure blobs: an [`HttpSource`] that sends `x-ms-version` and, with a managed identity, a bearer token.
#[derive(Clone, Debug)]
pub struct AzureSource {
    http: HttpSource,
    token_over_https_only: bool,
}

impl AzureSource {
    /// A source with `auth`.
    pub fn new(policy: RetryPolicy, metrics: Arc<Metrics>, auth: AzureAuth) -> Result<Self, HttpSourceError> {
        let mut http = HttpSource::new(policy, metrics)?.with_header(
            HeaderName::from_static("x-ms-version"),
            HeaderValue::from_static(X_MS_VERSION),
        );
        let mut token_over_https_only = false;
        if let AzureAuth::ManagedIdentity { client_id } = auth {
            http = http.with_authorizer(Arc::new(ImdsToken::new(client_id)?));
            token_over_https_only = true;
        }
        Ok(Self {
            http,
            token_over_https_only,
        })
    }

    fn check(&self, key: &BlobKey) -> Result<(), BlobError<HttpSourceError>> {
        if self.token_over_https_only && !key.as_str().to_ascii_lowercase().starts_with("https://") {
            return Err(BlobError::Backend(HttpSourceError::Config(
                "managed-identity tokens are only sent over https".into(),
            )));
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

/// A managed-identity token for `https://storage.azure.com/`, fetched from IMDS and reused until 5 minutes before
/// it expires. The token is never logged.
struct ImdsToken {
    client: reqwest::Client,
    client_id: Option<String>,
    cached: tokio::sync::Mutex<Option<(HeaderValue, Instant)>>,
}

impl std::fmt::Debug for ImdsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImdsToken")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl ImdsToken {
    fn new(client_id: Option<String>) -> Result<Self, HttpSourceError> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| HttpSourceError::Config(format!("building the IMDS client: {e}")))?;
        Ok(Self {
            client,
            client_id,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    async fn fetch(&self) -> Result<(HeaderValue, Instant), HttpSourceError> {
        self.fetch_token().await.map_err(|e| HttpSourceError::Imds {
            endpoint: IMDS_ENDPOINT,
            source: Box::new(e),
        })
    }

    async fn fetch_token(&self) -> Result<(HeaderValue, Instant), HttpSourceError> {
        let mut q = vec![
            ("api-version", "2018-02-01"),
            ("resource", "https://storage.azure.com/"),
        ];
        if let Some(id) = &self.client_id {
            q.push(("client_id", id));
        }
        let url = reqwest::Url::parse_with_params(IMDS_ENDPOINT, &q)
            .map_err(|e| HttpSourceError::Config(format!("IMDS URL: {e}")))?;
        let err = |reason: String| HttpSourceError::BadResponse { reason };
        let resp = self
            .client
            .get(url)
            .header("Metadata", "true")
            .send()
            .await
            .map_err(HttpSourceError::transport)?;
        if !resp.status().is_success() {
            return Err(HttpSourceError::Status {
                status: resp.status().as_u16(),
            });
        }
        let body = resp.bytes().await.map_err(HttpSourceError::transport)?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| err(format!("token JSON: {e}")))?;
        let token = v["access_token"]
            .as_str()
            .ok_or_else(|| err("no access_token".into()))?;
        let expires_in = v["expires_in"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .or_else(|| v["expires_in"].as_u64())
            .unwrap_or(3600);
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| err("bad token".into()))?;
        value.set_sensitive(true);
        // `expires_in` comes from the response: saturate, an `Instant` panics on overflow.
        let fresh_until =
            super::http::response::deadline(Instant::now(), Duration::from_secs(expires_in.saturating_sub(300)));
        Ok((value, fresh_until))
    }
}

impl Authorizer for ImdsToken {
    fn authorization(&self) -> Pin<Box<dyn Future<Output = Result<Option<HeaderValue>, HttpSourceError>> + Send + '_>> {
        Box::pin(async move {
            let mut cached = self.cached.lock().await;
            if let Some((v, until)) = cached.as_ref()
                && Instant::now() < *until
            {
                return Ok(Some(v.clone()));
            }
            let (v, until) = self.fetch().await?;
            *cached = Some((v.clone(), until));
            Ok(Some(v))
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
