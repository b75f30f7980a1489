//! Attested TLS: the certificate that carries an attestation token bound to its key ([`cert`]), the
//! client-side checks ([`verify`]), per-connection freshness ([`fresh`]) and a connector that ties them
//! to a TCP connection ([`connect`]).
//!
//! # Binding
//!
//! Runtime data (sent to the attestation service, surfaced by it as the `x-ms-runtime` claim, and hashed
//! into the SNP report's `report_data` by the MAA convention) is compact JSON with sorted keys:
//!
//! ```text
//! {"keys":[{"crv":"P-256","kid":"atls","kty":"EC","x":"..","y":".."}],"tls-spki-sha256":"<hex>"}
//! ```
//!
//! `tls-spki-sha256` is the SHA-256 of the DER SubjectPublicKeyInfo of the TLS key. The certificate hash
//! cannot be bound instead: the token is inside the certificate. Strict freshness adds `nonce` and `ekm`.

pub mod cert;
pub mod connect;
pub mod fresh;
pub mod limit;
pub mod verify;

use attest::error::TokenError;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub use cert::{AttestedIdentity, IdentityError, TokenIssuer};
pub use connect::{AttestedStream, ConnectError, Connector};
pub use verify::{AttestedVerifier, VerifiedPeer, VerifierConfig, verify_leaf};

/// OID of the private, non-critical X.509 extension that carries the token (extnValue = DER OCTET STRING
/// of the compact JWT).
///
/// It lies in the X.667 UUID arc `2.25`. rcgen 0.14 encodes arcs as `u64`, so a full 128-bit UUID does
/// not fit; the arc is a random 63-bit number instead. No RFC 4122 UUID (other than nil) has its upper
/// 64 bits all zero, so this OID cannot collide with a UUID-derived one.
pub const TOKEN_EXTENSION_OID: &[u64] = &[2, 25, 8_688_571_059_424_246_520];

/// [`TOKEN_EXTENSION_OID`] in dotted form.
pub const TOKEN_EXTENSION_OID_STR: &str = "2.25.8688571059424246520";

/// Runtime-data member holding the hex SHA-256 of the TLS key's SubjectPublicKeyInfo.
pub const SPKI_CLAIM: &str = "tls-spki-sha256";

/// The checks a client runs, in order. [`Check::as_str`] is the name used in errors, logs and the
/// proxy's 502 bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Check {
    /// TCP connection to the target.
    Connect,
    /// TLS version: only TLS 1.3 is accepted.
    TlsVersion,
    /// The leaf certificate: DER, self-signature, no intermediates.
    Certificate,
    /// The token extension: present exactly once, an OCTET STRING of ASCII.
    TokenExtension,
    /// The token's algorithm and signature against the pinned attestation-service keys.
    TokenSignature,
    /// The token's issuer.
    Issuer,
    /// The token's `exp` / `nbf` (and the certificate's validity, which follows the token's).
    Expiry,
    /// `x-ms-runtime.tls-spki-sha256` equals the SHA-256 of the certificate's key.
    KeyBinding,
    /// A client-policy claim.
    Policy,
    /// Strict freshness: nonce and TLS exporter bound into a fresh token.
    Freshness,
    /// Any other TLS handshake failure.
    Handshake,
}

impl Check {
    /// The check's name (`self-signature`, `token-signature`, `issuer`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::TlsVersion => "tls-version",
            Self::Certificate => "self-signature",
            Self::TokenExtension => "token-extension",
            Self::TokenSignature => "token-signature",
            Self::Issuer => "issuer",
            Self::Expiry => "expiry",
            Self::KeyBinding => "key-binding",
            Self::Policy => "policy",
            Self::Freshness => "freshness",
            Self::Handshake => "handshake",
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed attested-TLS check. The message starts with the check's name.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AtlsError {
    /// The certificate is malformed, not self-signed by its own key, or comes with
    /// intermediates.
    #[error("self-signature: {detail}")]
    Certificate {
        /// What is wrong.
        detail: String,
    },
    /// The token extension is absent, duplicated or malformed.
    #[error("token-extension: {detail}")]
    TokenExtension {
        /// What is wrong.
        detail: String,
    },
    /// The token's algorithm, key id or signature.
    #[error("token-signature: {detail}")]
    TokenSignature {
        /// What is wrong.
        detail: String,
    },
    /// The token's issuer is not the trusted one.
    #[error("issuer: {detail}")]
    Issuer {
        /// What is wrong.
        detail: String,
    },
    /// The token expired or is not yet valid.
    #[error("expiry: {detail}")]
    Expiry {
        /// What is wrong.
        detail: String,
    },
    /// The token does not bind this certificate's key.
    #[error("key-binding: {detail}")]
    KeyBinding {
        /// What is wrong.
        detail: String,
    },
    /// A client-policy claim is missing or differs.
    #[error("policy: {0}")]
    Policy(#[from] crate::policy::PolicyMismatch),
    /// Strict freshness failed.
    #[error("freshness: {detail}")]
    Freshness {
        /// What is wrong.
        detail: String,
    },
}

impl AtlsError {
    /// The check that failed.
    pub fn check(&self) -> Check {
        match self {
            Self::Certificate { .. } => Check::Certificate,
            Self::TokenExtension { .. } => Check::TokenExtension,
            Self::TokenSignature { .. } => Check::TokenSignature,
            Self::Issuer { .. } => Check::Issuer,
            Self::Expiry { .. } => Check::Expiry,
            Self::KeyBinding { .. } => Check::KeyBinding,
            Self::Policy { .. } => Check::Policy,
            Self::Freshness { .. } => Check::Freshness,
        }
    }

    /// Sort a [`TokenError`] from `attest::token::verify_token` into signature, issuer or expiry.
    pub fn from_token(e: TokenError) -> Self {
        let detail = e.to_string();
        match e {
            TokenError::Issuer { .. } => Self::Issuer { detail },
            TokenError::Expired { .. } | TokenError::NotYetValid { .. } => Self::Expiry { detail },
            TokenError::Claim { ref claim, .. } if claim == "exp" || claim == "nbf" => Self::Expiry { detail },
            _ => Self::TokenSignature { detail },
        }
    }
}

/// Hex SHA-256 of a DER SubjectPublicKeyInfo.
pub fn spki_sha256_hex(spki_der: &[u8]) -> String {
    hex::encode(Sha256::digest(spki_der))
}

/// The public JWK (`kid` `atls`) of an uncompressed P-256 point (`04 ‖ x ‖ y`).
pub fn p256_jwk(public_point: &[u8]) -> Value {
    let (x, y) = match public_point {
        [4, rest @ ..] if rest.len() == 64 => rest.split_at(32),
        _ => (&[][..], &[][..]),
    };
    json!({"crv": "P-256", "kid": "atls", "kty": "EC", "x": B64URL.encode(x), "y": B64URL.encode(y)})
}

/// Runtime data for a TLS key: compact JSON, sorted keys (see the module docs). `extra` members (strict
/// freshness: `nonce`, `ekm`) are added at the top level.
pub fn runtime_data(spki_sha256: &str, jwk: &Value, extra: &[(&str, String)]) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    obj.insert("keys".into(), json!([jwk]));
    obj.insert(SPKI_CLAIM.into(), Value::String(spki_sha256.to_string()));
    for (k, v) in extra {
        obj.insert((*k).to_string(), Value::String(v.clone()));
    }
    // serde_json's Map is a BTreeMap (no `preserve_order`): keys come out sorted.
    serde_json::to_vec(&Value::Object(obj)).unwrap_or_default()
}
