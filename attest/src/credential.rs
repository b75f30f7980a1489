//! Entra ID access tokens for Azure resources (Key Vault, managed HSM, Blob Storage): the one definition used by
//! the key-release client ([`crate::client::VaultAuth::Entra`]) and by encfs's Azure Blob source.
//!
//! Two credentials, chosen explicitly (never one as a fallback for the other):
//!
//! * **Managed identity** (ACI, VMs): `GET` [`IMDS_TOKEN_URL`]`?api-version=2018-02-01&resource=R[&client_id=C]`
//!   with `Metadata: true` (plain http to the link-local metadata address, answered by the host).
//! * **Workload Identity** (AKS, where the node's IMDS serves only node-pool identities): the pod's projected
//!   service-account token, federated with an Entra application or user-assigned identity, is a client assertion.
//!   `POST {AZURE_AUTHORITY_HOST}/{AZURE_TENANT_ID}/oauth2/v2.0/token` with the form
//!   `grant_type=client_credentials`, `client_id`, `scope=R/.default`,
//!   `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`, `client_assertion=<file>`.
//!   The file is read again for every exchange: kubelet rotates it. The four variables are what the AKS
//!   webhook injects into a pod labelled `azure.workload.identity/use: "true"`; all are required.
//!
//! Tokens are cached per resource until 5 minutes before they expire (half their lifetime when that is shorter).
//! Neither a token nor an assertion appears in an error or a log line; errors carry the endpoint, the HTTP
//! status and Entra's `error`/`error_description`.
//!
//! **Why the environment may choose these.** The token only authorizes the call; the key itself is released
//! only to attested evidence matching the key's release policy, and blobs are authenticated by the image's keys.
//! A host that rewrites the variables can at worst make the exchange fail or send the pod's own service-account
//! token (which the platform minted) elsewhere; the authority must still be https (or loopback).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use zeroize::Zeroizing;

use crate::error::chain;
use crate::secret::SecretBytes;

/// IMDS's managed-identity token endpoint.
pub const IMDS_TOKEN_URL: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// The client id of the federated identity.
pub const ENV_CLIENT_ID: &str = "AZURE_CLIENT_ID";
/// The Entra tenant.
pub const ENV_TENANT_ID: &str = "AZURE_TENANT_ID";
/// The projected service-account token (the client assertion).
pub const ENV_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
/// The Entra authority, e.g. `https://login.microsoftonline.com/`.
pub const ENV_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";
/// The four variables the AKS workload-identity webhook injects.
pub const WORKLOAD_IDENTITY_ENV: [&str; 4] = [
    ENV_CLIENT_ID,
    ENV_TENANT_ID,
    ENV_FEDERATED_TOKEN_FILE,
    ENV_AUTHORITY_HOST,
];
/// The client assertion type of a federated credential.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Attempts per token; transport errors, 408, 429 and 5xx are retried after 1 s, then 4 s.
const ATTEMPTS: u32 = 3;
/// Per request.
const TIMEOUT: Duration = Duration::from_secs(10);
/// A cached token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// Entra's error text, at most this long, goes into an error.
const MAX_DETAIL: usize = 400;

pub use crate::error::CredentialError;

impl CredentialError {
    /// Worth retrying later (no answer, 408, 429, 5xx) rather than final.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// Which credential gets the tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// A managed identity from IMDS: the user-assigned one with this client id, else the system-assigned one.
    ManagedIdentity {
        /// Client id of a user-assigned identity.
        client_id: Option<String>,
    },
    /// Azure Workload Identity.
    WorkloadIdentity(WorkloadIdentity),
}

/// Azure Workload Identity settings (what the AKS webhook injects).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadIdentity {
    /// `AZURE_CLIENT_ID`.
    pub client_id: String,
    /// `AZURE_TENANT_ID`.
    pub tenant_id: String,
    /// `AZURE_FEDERATED_TOKEN_FILE`.
    pub token_file: PathBuf,
    /// `AZURE_AUTHORITY_HOST`.
    pub authority_host: String,
}

impl WorkloadIdentity {
    /// From the process environment; fails naming the first missing or empty variable.
    pub fn from_env() -> Result<Self, CredentialError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// From `get(variable name)`, checked as [`Self::new`] checks.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, CredentialError> {
        let var = |name: &'static str| {
            get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .ok_or(CredentialError::MissingEnv { var: name })
        };
        Self::new(
            var(ENV_CLIENT_ID)?,
            var(ENV_TENANT_ID)?,
            PathBuf::from(var(ENV_FEDERATED_TOKEN_FILE)?),
            var(ENV_AUTHORITY_HOST)?,
        )
    }

    /// Checked settings: the tenant is a GUID or domain name (it becomes a URL path segment), the authority an
    /// `https://` URL (or `http://` on loopback).
    pub fn new(
        client_id: String,
        tenant_id: String,
        token_file: PathBuf,
        authority_host: String,
    ) -> Result<Self, CredentialError> {
        if tenant_id.is_empty()
            || !tenant_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(CredentialError::Invalid(format!(
                "{ENV_TENANT_ID} {tenant_id:?} is not a tenant id or domain name"
            )));
        }
        let lower = authority_host.to_ascii_lowercase();
        if !lower.starts_with("https://") && !lower.starts_with("http://") {
            return Err(CredentialError::Invalid(format!(
                "{ENV_AUTHORITY_HOST} {authority_host:?} is not an https:// URL"
            )));
        }
        crate::transport::check_endpoint(ENV_AUTHORITY_HOST, &authority_host, false)?;
        Ok(Self {
            client_id,
            tenant_id,
            token_file,
            authority_host,
        })
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn token_endpoint(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority_host.trim_end_matches('/'),
            self.tenant_id
        )
    }

    /// The current federated token, read now (kubelet rotates the file).
    fn assertion(&self) -> Result<Zeroizing<String>, CredentialError> {
        let err = |detail: String| CredentialError::TokenFile {
            path: self.token_file.clone(),
            detail,
        };
        let text = Zeroizing::new(std::fs::read_to_string(&self.token_file).map_err(|e| err(e.to_string()))?);
        let token = Zeroizing::new(text.trim().to_owned());
        if token.is_empty() {
            return Err(err("empty".into()));
        }
        Ok(token)
    }
}

/// The scope of a v2.0 token for `resource`: `https://vault.azure.net` → `https://vault.azure.net/.default`.
pub fn scope_for(resource: &str) -> String {
    format!("{}/.default", resource.trim_end_matches('/'))
}

struct Cached {
    token: SecretBytes,
    renew_at: Instant,
}

/// Tokens from one [`Credential`], cached per resource; share it (`Arc`) between the clients of one process.
pub struct TokenProvider {
    credential: Credential,
    imds_url: String,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenProvider")
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl TokenProvider {
    /// A provider for `credential` (nothing is contacted yet).
    pub fn new(credential: Credential) -> Result<Self, CredentialError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| CredentialError::Invalid(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            credential,
            imds_url: IMDS_TOKEN_URL.to_owned(),
            http,
            cache: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Managed identity tokens from another IMDS address (tests): the metadata address, loopback or https only.
    pub fn with_imds_url(mut self, url: &str) -> Result<Self, CredentialError> {
        crate::transport::check_metadata_endpoint("IMDS", url, false)?;
        self.imds_url = url.to_owned();
        Ok(self)
    }

    /// The credential.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// A token for `resource` (e.g. `https://vault.azure.net`, `https://storage.azure.com/`): the cached one while it
    /// is fresh, else a new one.
    pub async fn token(&self, resource: &str) -> Result<SecretBytes, CredentialError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.get(resource)
            && Instant::now() < c.renew_at
        {
            return Ok(c.token.clone());
        }
        let (token, lifetime) = self.fetch_with_retry(resource).await?;
        let renew_in = lifetime.saturating_sub(RENEW_BEFORE.min(lifetime / 2));
        cache.insert(
            resource.to_owned(),
            Cached {
                token: token.clone(),
                renew_at: Instant::now().checked_add(renew_in).unwrap_or_else(Instant::now),
            },
        );
        tracing::debug!(resource, renew_in_s = renew_in.as_secs(), "access token obtained");
        Ok(token)
    }

    async fn fetch_with_retry(&self, resource: &str) -> Result<(SecretBytes, Duration), CredentialError> {
        let mut attempt = 1;
        loop {
            match self.fetch(resource).await {
                Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                    tracing::warn!(resource, attempt, "{e}; retrying");
                    tokio::time::sleep(Duration::from_secs(u64::from(attempt * attempt))).await;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    async fn fetch(&self, resource: &str) -> Result<(SecretBytes, Duration), CredentialError> {
        let (credential, endpoint, request) = match &self.credential {
            Credential::ManagedIdentity { client_id } => {
                let mut query = vec![("api-version", "2018-02-01"), ("resource", resource)];
                if let Some(c) = client_id {
                    query.push(("client_id", c));
                }
                let rb = self.http.get(&self.imds_url).header("Metadata", "true").query(&query);
                ("managed identity (IMDS)", self.imds_url.clone(), rb)
            }
            Credential::WorkloadIdentity(wi) => {
                let assertion = wi.assertion()?;
                let scope = scope_for(resource);
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_id", wi.client_id.as_str()),
                    ("scope", scope.as_str()),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", assertion.as_str()),
                ];
                let endpoint = wi.token_endpoint();
                let rb = self.http.post(&endpoint).form(&form);
                ("workload identity", endpoint, rb)
            }
        };
        let resp = request.send().await.map_err(|e| CredentialError::Unreachable {
            credential,
            endpoint: endpoint.clone(),
            detail: chain(&e.without_url()),
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| CredentialError::Unreachable {
            credential,
            endpoint: endpoint.clone(),
            detail: chain(&e.without_url()),
        })?;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            return Err(CredentialError::Status {
                credential,
                endpoint,
                status: status.as_u16(),
                detail: json.as_ref().map(entra_error).unwrap_or_default(),
            });
        }
        let bad = |detail: &str| CredentialError::Response {
            credential,
            endpoint: endpoint.clone(),
            detail: detail.to_owned(),
        };
        let json = json.ok_or_else(|| bad("not JSON"))?;
        let token = json
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no access_token"))?;
        // IMDS sends a string, Entra a number; without one the token is used once and not cached.
        let lifetime = json
            .get("expires_in")
            .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())))
            .unwrap_or(0);
        Ok((SecretBytes::from_slice(token.as_bytes()), Duration::from_secs(lifetime)))
    }
}

/// `: error: description` of an OAuth error body (Entra and IMDS both answer so), shortened; never the request.
fn entra_error(v: &Value) -> String {
    let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
    let (code, description) = (field("error"), field("error_description"));
    if code.is_empty() && description.is_empty() {
        return String::new();
    }
    let mut text = format!(": {code}: {description}");
    if text.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    const ALL: [(&str, &str); 4] = [
        (ENV_CLIENT_ID, "11111111-2222-3333-4444-555555555555"),
        (ENV_TENANT_ID, "72f988bf-86f1-41af-91ab-2d7cd011db47"),
        (
            ENV_FEDERATED_TOKEN_FILE,
            "/var/run/secrets/azure/tokens/azure-identity-token",
        ),
        (ENV_AUTHORITY_HOST, "https://login.microsoftonline.com/"),
    ];

    #[test]
    fn every_webhook_variable_is_required_and_named_when_missing() {
        let wi = WorkloadIdentity::from_vars(vars(&ALL)).unwrap();
        assert_eq!(
            wi.token_endpoint(),
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token"
        );
        for skip in 0..ALL.len() {
            let mut some: Vec<(&str, &str)> = ALL.to_vec();
            let (missing, _) = some.remove(skip);
            let e = WorkloadIdentity::from_vars(vars(&some)).unwrap_err().to_string();
            assert!(e.contains(&format!("{missing} is not set")), "{e}");
            some.insert(skip, (missing, "  "));
            let e = WorkloadIdentity::from_vars(vars(&some)).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{missing} is not set")),
                "empty counts as missing: {e}"
            );
        }
    }

    #[test]
    fn the_authority_must_be_https_or_loopback_and_the_tenant_a_name() {
        let with = |k: &str, v: &str| {
            let mut all = ALL.to_vec();
            all.iter_mut().find(|(n, _)| *n == k).unwrap().1 = v;
            WorkloadIdentity::from_vars(vars(&all))
        };
        let e = with(ENV_AUTHORITY_HOST, "http://login.example.net/").unwrap_err();
        assert!(matches!(e, CredentialError::Transport(_)), "{e}");
        assert!(with(ENV_AUTHORITY_HOST, "login.microsoftonline.com").is_err());
        assert!(with(ENV_AUTHORITY_HOST, "http://127.0.0.1:9/").is_ok());
        let e = with(ENV_TENANT_ID, "../common").unwrap_err().to_string();
        assert!(e.contains("AZURE_TENANT_ID") && e.contains("not a tenant id"), "{e}");
        assert!(with(ENV_TENANT_ID, "contoso.onmicrosoft.com").is_ok());
    }

    #[test]
    fn scopes_and_error_bodies() {
        assert_eq!(scope_for("https://vault.azure.net"), "https://vault.azure.net/.default");
        assert_eq!(
            scope_for("https://storage.azure.com/"),
            "https://storage.azure.com/.default"
        );
        let v: Value = serde_json::json!({"error":"invalid_client","error_description":"AADSTS700213: No matching federated identity record found"});
        assert_eq!(
            entra_error(&v),
            ": invalid_client: AADSTS700213: No matching federated identity record found"
        );
        assert_eq!(entra_error(&serde_json::json!({"x":1})), "");
        let long = serde_json::json!({"error":"e","error_description":"é".repeat(400)});
        assert!(entra_error(&long).chars().count() < 300);
    }
}
