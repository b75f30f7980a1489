//! The server's attested identity: a fresh P-256 key, a token whose runtime data binds the key, and a
//! self-signed certificate that carries the token in the [`TOKEN_EXTENSION_OID`] extension.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use attest::client::AttestationClient;
use attest::error::ClientError;
use attest::evidence::Attester;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rcgen::{CertificateParams, CustomExtension, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;

use super::{TOKEN_EXTENSION_OID, runtime_data, spki_sha256_hex};

/// How far the certificate's validity extends beyond the token's `nbf`..`exp` (the token's own times
/// are what the client enforces; the wider certificate validity keeps the checks' order meaningful).
const CERT_VALIDITY_SLACK: Duration = Duration::from_secs(3600);

/// Building an attested identity failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Key generation or certificate building.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// Evidence or the attestation service.
    #[error("attestation: {0}")]
    Attestation(#[from] ClientError),
    /// The token has no readable `exp`.
    #[error("token: {detail}")]
    Token {
        /// What is wrong.
        detail: String,
    },
}

/// Gets tokens for runtime data: evidence from an [`Attester`] (the SNP device in production, the mock
/// in tests), attested by an MAA-compatible service.
pub struct TokenIssuer {
    client: AttestationClient,
    attester: Arc<dyn Attester>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("service", &self.client.url())
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// An issuer using `attester` and the attestation service behind `client`.
    pub fn new(client: AttestationClient, attester: Arc<dyn Attester>) -> Self {
        Self { client, attester }
    }

    /// A token for `runtime_data` (report_data = SHA-256(runtime_data) ‖ 0³²). The report (a blocking ioctl on
    /// the SNP device) is taken on the blocking pool, never on an async worker.
    pub async fn token(&self, runtime_data: &[u8]) -> Result<String, ClientError> {
        let attester = self.attester.clone();
        let report_data = attest::verify::maa_report_data(runtime_data);
        let evidence = tokio::task::spawn_blocking(move || attester.evidence(&report_data))
            .await
            .map_err(|e| ClientError::Response {
                context: "evidence".into(),
                detail: format!("the report task failed: {e}"),
            })??;
        self.client.attest(&evidence, runtime_data).await
    }
}

/// A TLS key with its token and certificate. The private key never leaves this struct except into
/// rustls; `Debug` shows only the key's SPKI hash.
pub struct AttestedIdentity {
    key_pkcs8: Vec<u8>,
    cert: CertificateDer<'static>,
    token: String,
    spki_sha256: String,
    jwk: Value,
    not_before: SystemTime,
    expires: SystemTime,
}

impl std::fmt::Debug for AttestedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestedIdentity")
            .field("spki_sha256", &self.spki_sha256)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Drop for AttestedIdentity {
    fn drop(&mut self) {
        self.key_pkcs8.iter_mut().for_each(|b| *b = 0);
    }
}

/// A fresh P-256 key.
pub fn generate_key() -> Result<KeyPair, IdentityError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

/// Runtime data binding `key` (see [`super::runtime_data`]).
pub fn key_runtime_data(key: &KeyPair, extra: &[(&str, String)]) -> Vec<u8> {
    let spki = spki_sha256_hex(&key.subject_public_key_info());
    runtime_data(&spki, &super::p256_jwk(key.public_key_raw()), extra)
}

fn token_times(token: &str) -> Result<(SystemTime, SystemTime), IdentityError> {
    let err = |detail: &str| IdentityError::Token {
        detail: detail.to_string(),
    };
    let payload = token.split('.').nth(1).ok_or_else(|| err("not a compact JWS"))?;
    let bytes = B64URL
        .decode(payload.trim_end_matches('='))
        .map_err(|_| err("payload is not base64url"))?;
    let claims: Value = serde_json::from_slice(&bytes).map_err(|_| err("payload is not JSON"))?;
    let at = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_i64)
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s.max(0) as u64))
    };
    let exp = at("exp").ok_or_else(|| err("no exp"))?;
    let nbf = at("nbf").or_else(|| at("iat")).unwrap_or_else(SystemTime::now);
    Ok((nbf, exp))
}

impl AttestedIdentity {
    /// A fresh key, a token for it from `issuer`, and the certificate (common name `name`).
    pub async fn generate(issuer: &TokenIssuer, name: &str) -> Result<Self, IdentityError> {
        let key = generate_key()?;
        let token = issuer.token(&key_runtime_data(&key, &[])).await?;
        Self::from_parts(key, token, name)
    }

    /// The certificate for `key` carrying `token` as is. The token is not checked here: tests use this to
    /// build identities that a client must refuse (a token bound to another key, an expired token).
    pub fn from_parts(key: KeyPair, token: String, name: &str) -> Result<Self, IdentityError> {
        let (not_before, expires) = token_times(&token)?;
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = (not_before - CERT_VALIDITY_SLACK).into();
        params.not_after = (expires + CERT_VALIDITY_SLACK).into();
        params.custom_extensions.push(token_extension(&token));
        let cert = params.self_signed(&key)?;
        let spki = key.subject_public_key_info();
        Ok(Self {
            key_pkcs8: key.serialize_der(),
            cert: cert.der().clone(),
            spki_sha256: spki_sha256_hex(&spki),
            jwk: super::p256_jwk(key.public_key_raw()),
            token,
            not_before,
            expires,
        })
    }

    /// The certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The private key for rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }

    /// The token in the certificate.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Hex SHA-256 of the key's SubjectPublicKeyInfo.
    pub fn spki_sha256(&self) -> &str {
        &self.spki_sha256
    }

    /// Runtime data binding this identity's key, plus `extra` members.
    pub fn runtime_data(&self, extra: &[(&str, String)]) -> Vec<u8> {
        runtime_data(&self.spki_sha256, &self.jwk, extra)
    }

    /// The key's public JWK (`kid` `atls`).
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// The token's `nbf` (or `iat`).
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The token's `exp`.
    pub fn expires(&self) -> SystemTime {
        self.expires
    }
}

/// The token extension: non-critical, extnValue = DER OCTET STRING of the JWT (as dstack's `add_ext`).
pub fn token_extension(token: &str) -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(TOKEN_EXTENSION_OID, der_octet_string(token.as_bytes()));
    ext.set_criticality(false);
    ext
}

/// DER `OCTET STRING` of `bytes`.
pub fn der_octet_string(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04];
    let len = bytes.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let be = len.to_be_bytes();
        let skip = be.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (be.len() - skip) as u8);
        out.extend_from_slice(&be[skip..]);
    }
    out.extend_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_octet_string_lengths() {
        assert_eq!(der_octet_string(b"ab"), vec![4, 2, b'a', b'b']);
        let long = vec![7u8; 300];
        let enc = der_octet_string(&long);
        assert_eq!(&enc[..4], &[4, 0x82, 1, 44]);
        assert_eq!(enc.len(), 304);
    }
}
