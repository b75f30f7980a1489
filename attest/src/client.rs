//! Clients: attestation (MAA or `cinfer-attest serve`) and secure key release (AKV/mHSM or the local
//! broker), plus the one-call flow encfs uses: [`secure_key_release`].
//!
//! Endpoints are URLs (`https://myattest.eus2.attest.azure.net`, `http://127.0.0.1:8443`); a bare host
//! name gets `https://`. `https://` trusts the system's CA certificates unless the client is given another
//! [`TlsTrust`] (`with_tls`), such as the pinned certificate of a `cinfer-attest serve --tls-self-signed`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::credential::{Credential, TokenProvider};
use crate::error::{ClientError, KeyWrapError};
use crate::evidence::{Attester, Evidence};
use crate::keywrap::{KeyDerivation, ReleasedKey, RuntimeKey};
use crate::policy::ReleasePolicy;
use crate::protocol::{
    AttestRequest, AttestResponse, B64URL_ANY, ErrorBody, ImportRequest, PolicyBlob, ReleaseRequest, ReleaseResponse,
};
use crate::secret::{ModelKey, SecretBytes};
use crate::tls::TlsTrust;
use crate::token::{Jwks, verify_jws_rs256};
use crate::verify::maa_report_data;

/// MAA API version the seed uses.
pub const MAA_API_VERSION: &str = "2020-10-01";
/// AKV API version the seed uses.
pub const AKV_API_VERSION: &str = "7.4";

fn base_url(endpoint: &str) -> String {
    let e = endpoint.trim().trim_end_matches('/');
    if e.starts_with("http://") || e.starts_with("https://") {
        e.to_string()
    } else {
        format!("https://{e}")
    }
}

fn http_client(trust: &TlsTrust) -> Result<reqwest::Client, ClientError> {
    // One process-wide rustls provider (ring); ignore "already installed".
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(config) = trust.client_config()? {
        builder = builder.tls_backend_preconfigured(config);
    }
    builder.build().map_err(|source| ClientError::Http {
        context: "building HTTP client".into(),
        source,
    })
}

async fn check(resp: reqwest::Response, context: &str) -> Result<reqwest::Response, ClientError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    // MAA/AKV error bodies are {"error":{"code","message"}}: show the message (it names the failed check).
    let mut body = serde_json::from_str::<ErrorBody>(&text)
        .map(|b| b.error.message)
        .unwrap_or(text);
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
    /// A client for `endpoint`, trusting the system's CA certificates for `https://`.
    pub fn new(endpoint: &str) -> Result<Self, ClientError> {
        Ok(Self {
            http: http_client(&TlsTrust::SystemRoots)?,
            base: base_url(endpoint),
        })
    }

    /// The same client trusting `trust` for `https://` instead (a pinned `cinfer-attest serve` certificate).
    pub fn with_tls(self, trust: &TlsTrust) -> Result<Self, ClientError> {
        Ok(Self {
            http: http_client(trust)?,
            ..self
        })
    }

    /// The base URL (the expected token issuer for `cinfer-attest serve`; MAA's issuer is the same URL).
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The MAA request body for evidence and runtime data (padded base64url everywhere, as the seed sends).
    pub fn request_body(evidence: &Evidence, runtime_data: &[u8]) -> Value {
        let request = AttestRequest::new(
            &evidence.report,
            &evidence.cert_chain_pem,
            evidence.uvm_endorsements.as_deref(),
            &evidence.gpus,
            runtime_data,
            u64::from_le_bytes(crate::secret::random_bytes::<8>()),
        );
        serde_json::to_value(request).unwrap_or_default()
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
        let answer: AttestResponse = check(resp, ctx)
            .await?
            .json()
            .await
            .map_err(|source| ClientError::Http {
                context: ctx.into(),
                source,
            })?;
        Some(answer.token)
            .filter(|t| !t.is_empty())
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
    /// Entra ID tokens for the vault's resource (`https://vault.azure.net`, or `https://managedhsm.azure.net` for a
    /// managed HSM) from a managed identity or Workload Identity ([`crate::credential`]); share the provider with
    /// the process's other clients so its cache serves them all.
    Entra(Arc<TokenProvider>),
}

impl VaultAuth {
    /// Tokens from an IMDS managed identity (user-assigned when `client_id` is given).
    pub fn imds(client_id: Option<String>) -> Result<Self, ClientError> {
        Ok(Self::Entra(Arc::new(TokenProvider::new(
            Credential::ManagedIdentity { client_id },
        )?)))
    }
}

/// How to check the signature of a release response (a JWS).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ResponseVerification {
    /// Pinned keys (the local broker's JWKS, from [`AttestationClient::jwks`]).
    Pinned(Jwks),
    /// AKV/mHSM: verify with the leaf of the JWS `x5c` header, after validating `x5c` as an X.509 path
    /// (server-auth) from the leaf, valid for `dns_name`, to one of `roots` (as the seed does with the
    /// system pool). Build it with [`ResponseVerification::system_roots`].
    X5cChain {
        /// Trusted roots (DER).
        roots: Vec<Vec<u8>>,
        /// The vault's DNS name the leaf must be valid for.
        dns_name: String,
    },
    /// Verify with the leaf of the JWS `x5c` header only, without any chain check: a network attacker
    /// could substitute a different key wrapped to the runtime key. Tests only.
    DangerX5cLeafOnly,
}

impl ResponseVerification {
    /// AKV/mHSM response verification against the system's CA certificates, for the vault at `endpoint`.
    pub fn system_roots(endpoint: &str) -> Self {
        let roots = rustls_native_certs::load_native_certs()
            .certs
            .into_iter()
            .map(|c| c.as_ref().to_vec())
            .collect();
        let base = base_url(endpoint);
        let host = base
            .split("://")
            .nth(1)
            .unwrap_or(&base)
            .split(['/', ':'])
            .next()
            .unwrap_or_default()
            .to_string();
        Self::X5cChain { roots, dns_name: host }
    }
}

/// Validate `x5c` (leaf first, DER) as a server-auth path to `roots` for `dns_name` at the current time.
pub fn verify_x5c_chain(x5c: &[Vec<u8>], roots: &[Vec<u8>], dns_name: &str) -> Result<(), String> {
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let (leaf, rest) = x5c.split_first().ok_or("x5c is empty")?;
    let leaf = CertificateDer::from(leaf.as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| format!("x5c[0]: {e}"))?;
    let root_ders: Vec<CertificateDer<'_>> = roots.iter().map(|r| CertificateDer::from(r.as_slice())).collect();
    let anchors: Vec<_> = root_ders
        .iter()
        .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
        .collect();
    let intermediates: Vec<CertificateDer<'_>> = rest.iter().map(|c| CertificateDer::from(c.as_slice())).collect();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| format!("x5c chain: {e}"))?;
    let name = ServerName::try_from(dns_name).map_err(|e| format!("DNS name {dns_name:?}: {e}"))?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|e| format!("x5c leaf is not valid for {dns_name}: {e}"))
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
    /// A client for `endpoint` (vault URL or bare host), trusting the system's CA certificates for `https://`.
    pub fn new(endpoint: &str, auth: VaultAuth, verification: ResponseVerification) -> Result<Self, ClientError> {
        Ok(Self {
            http: http_client(&TlsTrust::SystemRoots)?,
            base: base_url(endpoint),
            auth,
            verification,
        })
    }

    /// The same client trusting `trust` for `https://` instead (a pinned `cinfer-attest serve` certificate).
    /// Token requests ([`VaultAuth::Entra`]) are unaffected.
    pub fn with_tls(self, trust: &TlsTrust) -> Result<Self, ClientError> {
        Ok(Self {
            http: http_client(trust)?,
            ..self
        })
    }

    async fn bearer(&self) -> Result<Option<SecretBytes>, ClientError> {
        match &self.auth {
            VaultAuth::None => Ok(None),
            VaultAuth::Bearer(t) => Ok(Some(t.clone())),
            VaultAuth::Entra(provider) => {
                let resource = if self.base.contains("managedhsm") {
                    "https://managedhsm.azure.net"
                } else {
                    "https://vault.azure.net"
                };
                Ok(Some(provider.token(resource).await?))
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
        let body = ImportRequest {
            key: jwk,
            hsm: Some(true),
            attributes: Some(json!({"exportable": true})),
            release_policy: Some(PolicyBlob {
                content_type: "application/json; charset=utf-8".to_owned(),
                data: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(policy_json),
            }),
        };
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
            .authed(self.http.post(&url).json(&ReleaseRequest {
                target: token.to_owned(),
                enc: None,
                nonce: None,
            }))
            .await?;
        let resp = rb.send().await.map_err(|source| ClientError::Http {
            context: ctx.into(),
            source,
        })?;
        let answer: ReleaseResponse = check(resp, ctx)
            .await?
            .json()
            .await
            .map_err(|source| ClientError::Http {
                context: ctx.into(),
                source,
            })?;
        let payload = self.verify_response(&answer.value)?;
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
            ResponseVerification::X5cChain { .. } | ResponseVerification::DangerX5cLeafOnly => {
                let x5c: Vec<Vec<u8>> = header
                    .get("x5c")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .filter_map(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                            .collect()
                    })
                    .unwrap_or_default();
                if let ResponseVerification::X5cChain { roots, dns_name } = &self.verification {
                    verify_x5c_chain(&x5c, roots, dns_name).map_err(ClientError::ResponseSignature)?;
                }
                let key = x5c
                    .first()
                    .and_then(|der| crate::token::rsa_key_from_cert_der(der))
                    .ok_or_else(|| ClientError::ResponseSignature("x5c[0] missing or not RSA".into()))?;
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

#[cfg(test)]
mod tests {
    use der::Encode;
    use der::asn1::{Ia5String, OctetString};
    use x509_cert::ext::Extension;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::{BasicConstraints, SubjectAltName};
    use x509_cert::spki::{ObjectIdentifier, SubjectPublicKeyInfoOwned};

    use super::*;
    use crate::pki::{issue_p384, name};

    fn ext(oid: &str, critical: bool, value: Vec<u8>) -> Extension {
        Extension {
            extn_id: ObjectIdentifier::new(oid).unwrap(),
            critical,
            extn_value: OctetString::new(value).unwrap(),
        }
    }

    fn ca_ext() -> Extension {
        ext(
            "2.5.29.19",
            true,
            BasicConstraints {
                ca: true,
                path_len_constraint: None,
            }
            .to_der()
            .unwrap(),
        )
    }

    /// root → intermediate (P-384 CAs) → RSA leaf for `vault.test`.
    fn chain() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        use rsa::Generate as _;
        let root_key = p384::ecdsa::SigningKey::generate();
        let int_key = p384::ecdsa::SigningKey::generate();
        let (rn, inn, ln) = (
            name("Test Root", "t").unwrap(),
            name("Test Int", "t").unwrap(),
            name("vault.test", "t").unwrap(),
        );
        let spki = |k: &p384::ecdsa::SigningKey| SubjectPublicKeyInfoOwned::from_key(k.verifying_key()).unwrap();
        let day = Duration::from_secs(24 * 3600);
        let root = issue_p384(
            &root_key,
            rn.clone(),
            rn.clone(),
            spki(&root_key),
            1,
            vec![ca_ext()],
            day,
        )
        .unwrap();
        let int = issue_p384(&root_key, rn, inn.clone(), spki(&int_key), 2, vec![ca_ext()], day).unwrap();
        let leaf_key = RuntimeKey::from_pem(include_str!("../tests/data/csc-test-rsa-key.pem")).unwrap();
        let san = SubjectAltName(vec![GeneralName::DnsName(Ia5String::new("vault.test").unwrap())]);
        let leaf_spki = SubjectPublicKeyInfoOwned::from_key(&leaf_key.public_key()).unwrap();
        let leaf = issue_p384(
            &int_key,
            inn,
            ln,
            leaf_spki,
            3,
            vec![ext("2.5.29.17", false, san.to_der().unwrap())],
            day,
        )
        .unwrap();
        (root.to_der().unwrap(), int.to_der().unwrap(), leaf.to_der().unwrap())
    }

    #[test]
    fn x5c_chain_validation_checks_path_root_and_name() {
        let (root, int, leaf) = chain();
        verify_x5c_chain(&[leaf.clone(), int.clone()], std::slice::from_ref(&root), "vault.test").unwrap();
        let e = verify_x5c_chain(&[leaf.clone(), int.clone()], std::slice::from_ref(&root), "other.test").unwrap_err();
        assert!(e.contains("not valid for other.test"), "{e}");
        let e = verify_x5c_chain(std::slice::from_ref(&leaf), std::slice::from_ref(&root), "vault.test").unwrap_err();
        assert!(e.starts_with("x5c chain:"), "{e}");
        let (other_root, _, _) = chain();
        let e = verify_x5c_chain(&[leaf, int], &[other_root], "vault.test").unwrap_err();
        assert!(e.starts_with("x5c chain:"), "{e}");
        assert!(verify_x5c_chain(&[], &[root], "vault.test").is_err());
    }
}
