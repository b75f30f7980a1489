//! Clients: attestation (MAA or `cinfer-attest serve`) and secure key release (AKV/mHSM or the local
//! broker), plus the one-call flow encfs uses: [`secure_key_release`].
//!
//! Endpoints are URLs (`https://myattest.eus2.attest.azure.net`, `http://127.0.0.1:8443`); a bare host
//! name gets `https://`.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE as B64URL_PAD;
use serde_json::{Value, json};

use crate::error::{ClientError, KeyWrapError};
use crate::evidence::{Attester, Evidence};
use crate::keywrap::{KeyDerivation, ReleasedKey, RuntimeKey};
use crate::policy::ReleasePolicy;
use crate::secret::{ModelKey, SecretBytes};
use crate::service::B64URL_ANY;
use crate::token::{Jwks, verify_jws_rs256};
use crate::verify::maa_report_data;

/// MAA API version the seed uses.
pub const MAA_API_VERSION: &str = "2020-10-01";
/// AKV API version the seed uses.
pub const AKV_API_VERSION: &str = "7.4";
/// IMDS token endpoint.
pub const IMDS_TOKEN_URL: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

fn base_url(endpoint: &str) -> String {
    let e = endpoint.trim().trim_end_matches('/');
    if e.starts_with("http://") || e.starts_with("https://") {
        e.to_string()
    } else {
        format!("https://{e}")
    }
}

fn http_client() -> Result<reqwest::Client, ClientError> {
    // One process-wide rustls provider (ring); ignore "already installed".
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|source| ClientError::Http {
            context: "building HTTP client".into(),
            source,
        })
}

async fn check(resp: reqwest::Response, context: &str) -> Result<reqwest::Response, ClientError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let mut body = resp.text().await.unwrap_or_default();
    body.truncate(2000);
    Err(ClientError::Status {
        context: context.to_string(),
        status,
        body,
    })
}

/// Client of an MAA-compatible attestation service.
#[derive(Clone, Debug)]
pub struct AttestationClient {
    http: reqwest::Client,
    base: String,
}

impl AttestationClient {
    /// A client for `endpoint`.
    pub fn new(endpoint: &str) -> Result<Self, ClientError> {
        Ok(Self {
            http: http_client()?,
            base: base_url(endpoint),
        })
    }

    /// The base URL (the expected token issuer for `cinfer-attest serve`; MAA's issuer is the same URL).
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The MAA request body for evidence and runtime data (padded base64url everywhere, as the seed sends).
    pub fn request_body(evidence: &Evidence, runtime_data: &[u8]) -> Value {
        let mut report = json!({
            "SnpReport": B64URL_PAD.encode(&evidence.report),
            "VcekCertChain": B64URL_PAD.encode(evidence.cert_chain_pem.as_bytes()),
        });
        if let Some(uvm) = &evidence.uvm_endorsements {
            let endorsements = json!({"Uvm": [B64URL_PAD.encode(uvm)]});
            report["Endorsements"] = Value::String(B64URL_PAD.encode(endorsements.to_string()));
        }
        json!({
            "report": B64URL_PAD.encode(report.to_string()),
            "runtimeData": {"data": B64URL_PAD.encode(runtime_data), "dataType": "JSON"},
            "initTimeData": {"data": "", "dataType": ""},
            "nonce": u64::from_le_bytes(crate::secret::random_bytes::<8>()),
        })
    }

    /// `POST /attest/SevSnpVm`: evidence (whose report_data must be `SHA-256(runtime_data) ‖ 0³²`) → JWT.
    pub async fn attest(&self, evidence: &Evidence, runtime_data: &[u8]) -> Result<String, ClientError> {
        let url = format!("{}/attest/SevSnpVm?api-version={MAA_API_VERSION}", self.base);
        let ctx = "attestation";
        let resp = self
            .http
            .post(&url)
            .json(&Self::request_body(evidence, runtime_data))
            .send()
            .await
            .map_err(|source| ClientError::Http {
                context: ctx.into(),
                source,
            })?;
        let v: Value = check(resp, ctx)
            .await?
            .json()
            .await
            .map_err(|source| ClientError::Http {
                context: ctx.into(),
                source,
            })?;
        v.get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or_else(|| ClientError::Response {
                context: ctx.into(),
                detail: "no token".into(),
            })
    }

    /// Run `attester` for `runtime_data` and attest the evidence.
    pub async fn attest_with(&self, attester: &dyn Attester, runtime_data: &[u8]) -> Result<String, ClientError> {
        let evidence = attester.evidence(&maa_report_data(runtime_data))?;
        self.attest(&evidence, runtime_data).await
    }

    /// The service's token-signing keys, via OpenID metadata (`jwks_uri`), falling back to `/certs`.
    pub async fn jwks(&self) -> Result<Jwks, ClientError> {
        let ctx = "fetching JWKS";
        let meta = format!("{}/.well-known/openid-configuration", self.base);
        let jwks_uri = match self.http.get(&meta).send().await {
            Ok(r) if r.status().is_success() => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v.get("jwks_uri").and_then(Value::as_str).map(str::to_string)),
            _ => None,
        }
        .unwrap_or_else(|| format!("{}/certs", self.base));
        let resp = self
            .http
            .get(&jwks_uri)
            .send()
            .await
            .map_err(|source| ClientError::Http {
                context: ctx.into(),
                source,
            })?;
        let bytes = check(resp, ctx)
            .await?
            .bytes()
            .await
            .map_err(|source| ClientError::Http {
                context: ctx.into(),
                source,
            })?;
        Jwks::from_json(&bytes).map_err(|e| ClientError::Response {
            context: ctx.into(),
            detail: e.to_string(),
        })
    }
}

/// How the key release client authenticates to the vault.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum VaultAuth {
    /// No `Authorization` header (the local broker's release route).
    None,
    /// A given bearer token (AAD token, or the local broker's admin token for imports).
    Bearer(SecretBytes),
    /// Managed identity from IMDS (`Metadata: true`), optionally a user-assigned client id.
    Imds {
        /// User-assigned identity client id.
        client_id: Option<String>,
    },
}

/// How to check the signature of a release response (a JWS).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ResponseVerification {
    /// Pinned keys (the local broker's JWKS, from [`AttestationClient::jwks`]).
    Pinned(Jwks),
    /// Verify with the leaf of the JWS `x5c` header only. AKV's chain to public roots is NOT checked; the
    /// key itself is protected by the wrap to the runtime key, but a network attacker could substitute a
    /// different key wrapped to it. Use only over TLS to the real vault.
    DangerX5cLeafOnly,
}

/// Client of AKV/mHSM secure key release or the local broker.
#[derive(Clone, Debug)]
pub struct KeyReleaseClient {
    http: reqwest::Client,
    base: String,
    auth: VaultAuth,
    verification: ResponseVerification,
}

/// A key reference: name and optional version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRef {
    /// Key name.
    pub name: String,
    /// Version; latest when `None`.
    pub version: Option<String>,
}

impl KeyRef {
    /// Parse `name` or `name/version`.
    pub fn parse(s: &str) -> Self {
        match s.split_once('/') {
            Some((n, v)) => Self {
                name: n.to_string(),
                version: Some(v.to_string()),
            },
            None => Self {
                name: s.to_string(),
                version: None,
            },
        }
    }
    fn path(&self) -> String {
        match &self.version {
            Some(v) => format!("{}/{v}", self.name),
            None => self.name.clone(),
        }
    }
}

impl KeyReleaseClient {
    /// A client for `endpoint` (vault URL or bare host).
    pub fn new(endpoint: &str, auth: VaultAuth, verification: ResponseVerification) -> Result<Self, ClientError> {
        Ok(Self {
            http: http_client()?,
            base: base_url(endpoint),
            auth,
            verification,
        })
    }

    async fn bearer(&self) -> Result<Option<SecretBytes>, ClientError> {
        match &self.auth {
            VaultAuth::None => Ok(None),
            VaultAuth::Bearer(t) => Ok(Some(t.clone())),
            VaultAuth::Imds { client_id } => {
                let resource = if self.base.contains("managedhsm") {
                    "https://managedhsm.azure.net"
                } else {
                    "https://vault.azure.net"
                };
                Ok(Some(
                    imds_token(&self.http, IMDS_TOKEN_URL, resource, client_id.as_deref()).await?,
                ))
            }
        }
    }

    async fn authed(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, ClientError> {
        Ok(match self.bearer().await? {
            Some(t) => rb.bearer_auth(String::from_utf8_lossy(t.expose())),
            None => rb,
        })
    }

    /// `PUT /keys/{name}`: import `jwk` with `policy` (AKV body shape; `hsm: true`, exportable).
    pub async fn import(&self, name: &str, jwk: Value, policy: &ReleasePolicy) -> Result<Value, ClientError> {
        let ctx = "key import";
        let policy_json = serde_json::to_vec(policy).map_err(|e| ClientError::Response {
            context: ctx.into(),
            detail: e.to_string(),
        })?;
        let body = json!({
            "key": jwk,
            "hsm": true,
            "attributes": {"exportable": true},
            "release_policy": {"contentType": "application/json; charset=utf-8",
                               "data": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(policy_json)},
        });
        let url = format!("{}/keys/{name}?api-version={AKV_API_VERSION}", self.base);
        let rb = self.authed(self.http.put(&url).json(&body)).await?;
        let resp = rb.send().await.map_err(|source| ClientError::Http {
            context: ctx.into(),
            source,
        })?;
        check(resp, ctx)
            .await?
            .json()
            .await
            .map_err(|source| ClientError::Http {
                context: ctx.into(),
                source,
            })
    }

    /// Import a 32-byte symmetric key as `oct-HSM`.
    pub async fn import_oct(&self, name: &str, key: &[u8], policy: &ReleasePolicy) -> Result<Value, ClientError> {
        let jwk = json!({"kty": "oct-HSM", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key),
                         "key_ops": ["encrypt", "decrypt"], "key_size": key.len() * 8});
        self.import(name, jwk, policy).await
    }

    /// `POST /keys/{name}[/{version}]/release` with `{"target": token}`; verify the response JWS, unwrap the
    /// key with `runtime_key`.
    pub async fn release(
        &self,
        key: &KeyRef,
        token: &str,
        runtime_key: &RuntimeKey,
    ) -> Result<ReleasedKey, ClientError> {
        let ctx = "key release";
        let url = format!(
            "{}/keys/{}/release?api-version={AKV_API_VERSION}",
            self.base,
            key.path()
        );
        let rb = self
            .authed(self.http.post(&url).json(&json!({"target": token})))
            .await?;
        let resp = rb.send().await.map_err(|source| ClientError::Http {
            context: ctx.into(),
            source,
        })?;
        let v: Value = check(resp, ctx)
            .await?
            .json()
            .await
            .map_err(|source| ClientError::Http {
                context: ctx.into(),
                source,
            })?;
        let jws = v
            .get("value")
            .and_then(Value::as_str)
            .ok_or_else(|| ClientError::Response {
                context: ctx.into(),
                detail: "no value".into(),
            })?;
        let payload = self.verify_response(jws)?;
        unwrap_release_payload(&payload, runtime_key)
    }

    fn verify_response(&self, jws: &str) -> Result<Value, ClientError> {
        let header = crate::token::peek_header(jws).map_err(|e| ClientError::ResponseSignature(e.to_string()))?;
        match &self.verification {
            ResponseVerification::Pinned(jwks) => {
                let kid = header.get("kid").and_then(Value::as_str);
                let key = jwks
                    .keys
                    .iter()
                    .find(|k| kid.is_none() || k.kid.as_deref() == kid)
                    .and_then(|k| k.rsa_public_key())
                    .ok_or_else(|| ClientError::ResponseSignature("no pinned key for the response".into()))?;
                verify_jws_rs256(jws, &key).map_err(|e| ClientError::ResponseSignature(e.to_string()))
            }
            ResponseVerification::DangerX5cLeafOnly => {
                let der = header
                    .get("x5c")
                    .and_then(Value::as_array)
                    .and_then(|a| a.first())
                    .and_then(Value::as_str)
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                    .ok_or_else(|| ClientError::ResponseSignature("no x5c".into()))?;
                let key = crate::token::rsa_key_from_cert_der(&der)
                    .ok_or_else(|| ClientError::ResponseSignature("x5c[0] is not RSA".into()))?;
                verify_jws_rs256(jws, &key).map_err(|e| ClientError::ResponseSignature(e.to_string()))
            }
        }
    }
}

/// Unwrap the key in a (verified) release payload: `response.key.key.key_hsm` → ciphertext → key.
pub fn unwrap_release_payload(payload: &Value, runtime_key: &RuntimeKey) -> Result<ReleasedKey, ClientError> {
    let ctx = "key release";
    let bad = |d: &str| ClientError::Response {
        context: ctx.into(),
        detail: d.to_string(),
    };
    let key = payload
        .pointer("/response/key/key")
        .ok_or_else(|| bad("no response.key.key"))?;
    let kty = key.get("kty").and_then(Value::as_str).ok_or_else(|| bad("no kty"))?;
    let key_hsm = key
        .get("key_hsm")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no key_hsm"))?;
    let key_hsm: Value = B64URL_ANY
        .decode(key_hsm)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("key_hsm is not base64url JSON"))?;
    let ct = key_hsm
        .get("ciphertext")
        .and_then(Value::as_str)
        .and_then(|c| B64URL_ANY.decode(c).ok())
        .ok_or_else(|| bad("no ciphertext"))?;
    let enc = payload
        .pointer("/request/enc")
        .and_then(Value::as_str)
        .or_else(|| key_hsm.pointer("/header/enc").and_then(Value::as_str))
        .unwrap_or(crate::keywrap::CKM_RSA_AES_KEY_WRAP);
    let bytes = runtime_key.unwrap(enc, &ct)?;
    Ok(ReleasedKey::from_kty(kty, bytes)?)
}

/// An AAD token from IMDS managed identity (3 tries, 1 s and 4 s apart, as the seed).
pub async fn imds_token(
    http: &reqwest::Client,
    imds_url: &str,
    resource: &str,
    client_id: Option<&str>,
) -> Result<SecretBytes, ClientError> {
    let ctx = "IMDS token";
    let mut query = vec![("api-version", "2018-02-01"), ("resource", resource)];
    if let Some(c) = client_id {
        query.push(("client_id", c));
    }
    let mut last = None;
    for attempt in 1..=3u64 {
        match http.get(imds_url).header("Metadata", "true").query(&query).send().await {
            Ok(r) if r.status().is_success() => {
                let v: Value = r.json().await.map_err(|source| ClientError::Http {
                    context: ctx.into(),
                    source,
                })?;
                let t = v
                    .get("access_token")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ClientError::Response {
                        context: ctx.into(),
                        detail: "no access_token".into(),
                    })?;
                return Ok(SecretBytes::from_slice(t.as_bytes()));
            }
            Ok(r) => last = Some(check(r, ctx).await.err()),
            Err(source) => {
                last = Some(Some(ClientError::Http {
                    context: ctx.into(),
                    source,
                }))
            }
        }
        if attempt < 3 {
            tokio::time::sleep(Duration::from_secs(attempt * attempt)).await;
        }
    }
    Err(last.flatten().unwrap_or(ClientError::Response {
        context: ctx.into(),
        detail: "no response".into(),
    }))
}

/// The whole seed flow for one model key: fresh runtime key (unless given) → evidence → attestation
/// token → release → unwrap → 32-byte key (oct as is, RSA via HKDF with `derivation`).
pub async fn secure_key_release(
    attester: &dyn Attester,
    attestation: &AttestationClient,
    vault: &KeyReleaseClient,
    key: &KeyRef,
    derivation: &KeyDerivation,
    runtime_key: Option<&RuntimeKey>,
) -> Result<ModelKey, ClientError> {
    let generated;
    let rk = match runtime_key {
        Some(k) => k,
        None => {
            generated = RuntimeKey::generate()?;
            &generated
        }
    };
    let runtime_data = rk.runtime_data();
    let token = attestation.attest_with(attester, &runtime_data).await?;
    let released = vault.release(key, &token, rk).await?;
    released.to_model_key(derivation).map_err(|e: KeyWrapError| e.into())
}
