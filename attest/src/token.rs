//! JWT issue and verification (RS256 only), JWKS.
//!
//! [`verify_token`] is what a relying party (the proxy's TLS verifier, the key broker) calls: it checks the
//! header's `alg` is RS256 before anything else (so `alg=none` and HS256-with-the-public-key fail with
//! `token algorithm:`), picks the pinned key by `kid`, verifies the signature, then `iss`, `exp` (required)
//! and `nbf` against the given time with a small leeway.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64STD, URL_SAFE_NO_PAD as B64URL};
use der::Encode;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{PrivateKey, PublicKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use x509_cert::spki::SubjectPublicKeyInfoOwned;

use crate::error::{KeyWrapError, TokenError};

/// Claims of a token: the JSON object, MAA claim names as keys.
pub type Claims = Map<String, Value>;

/// One public key of a JWKS.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Jwk {
    /// Key type (`RSA`).
    pub kty: String,
    /// Key ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Intended use (`sig`).
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// Algorithm (`RS256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Modulus, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// Exponent, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Certificate chain, base64 (standard) DER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5c: Option<Vec<String>>,
}

impl Jwk {
    /// The RSA public key (`n`, `e`, else the key of `x5c[0]`).
    pub fn rsa_public_key(&self) -> Option<PublicKey> {
        if self.kty != "RSA" {
            return None;
        }
        if let (Some(n), Some(e)) = (&self.n, &self.e) {
            let v = serde_json::json!({"kty": "RSA", "n": n, "e": e});
            return crate::keywrap::rsa_public_from_jwk(&v).ok();
        }
        let der = B64STD.decode(self.x5c.as_ref()?.first()?).ok()?;
        rsa_key_from_cert_der(&der)
    }
}

/// The RSA public key of a DER certificate.
pub fn rsa_key_from_cert_der(der: &[u8]) -> Option<PublicKey> {
    use der::Decode;
    use rsa::pkcs8::DecodePublicKey;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let spki = cert.tbs_certificate().subject_public_key_info().to_der().ok()?;
    PublicKey::from_public_key_der(&spki).ok()
}

/// A JSON Web Key Set (`GET /certs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Jwks {
    /// Keys.
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// Parse JWKS JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, TokenError> {
        serde_json::from_slice(bytes).map_err(|e| TokenError::Malformed {
            detail: format!("JWKS: {e}"),
        })
    }

    fn find(&self, kid: Option<&str>) -> Option<&Jwk> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }
}

/// The service's RSA signing identity: token-signing key, `kid` and a self-signed certificate for `x5c`.
pub struct SigningIdentity {
    key: PrivateKey,
    encoding: EncodingKey,
    kid: String,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningIdentity")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningIdentity {
    /// Generate an RSA-2048 signing key and its self-signed certificate.
    pub fn generate(common_name: &str) -> Result<Self, KeyWrapError> {
        let key = PrivateKey::new(&mut getrandom::SysRng, 2048).map_err(|e| KeyWrapError::Key(e.to_string()))?;
        Self::from_key(key, common_name)
    }

    /// Load a PKCS#8 PEM key (a fresh self-signed certificate is made for it).
    pub fn from_pkcs8_pem(pem: &str, common_name: &str) -> Result<Self, KeyWrapError> {
        let key = PrivateKey::from_pkcs8_pem(pem).map_err(|e| KeyWrapError::Key(e.to_string()))?;
        Self::from_key(key, common_name)
    }

    /// PKCS#8 PEM of the private key (for persistence; never log it).
    pub fn to_pkcs8_pem(&self) -> Result<zeroize::Zeroizing<String>, KeyWrapError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyWrapError::Key(e.to_string()))
    }

    /// Load a PKCS#8 PEM key with its existing certificate (DER), so `x5c` stays stable across restarts.
    pub fn from_pkcs8_pem_and_cert(pem: &str, cert_der: Vec<u8>) -> Result<Self, KeyWrapError> {
        let key = PrivateKey::from_pkcs8_pem(pem).map_err(|e| KeyWrapError::Key(e.to_string()))?;
        let cert_key = rsa_key_from_cert_der(&cert_der)
            .ok_or_else(|| KeyWrapError::Key("signing certificate is not an RSA certificate".into()))?;
        if cert_key != key.to_public_key() {
            return Err(KeyWrapError::Key(
                "signing certificate does not match the signing key".into(),
            ));
        }
        let mut id = Self::from_key(key, "cinfer-attest")?;
        id.cert_der = cert_der;
        Ok(id)
    }

    fn from_key(key: PrivateKey, common_name: &str) -> Result<Self, KeyWrapError> {
        let pkcs1 = key.to_pkcs1_der().map_err(|e| KeyWrapError::Key(e.to_string()))?;
        let encoding = EncodingKey::from_rsa_der(pkcs1.as_bytes());
        let public = key.to_public_key();
        let n = B64URL.encode(public.n_bytes());
        let e = B64URL.encode(public.e_bytes());
        let canon = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
        let kid = B64URL.encode(Sha256::digest(canon.as_bytes()));
        let spki = SubjectPublicKeyInfoOwned::from_key(&public).map_err(|e| KeyWrapError::Key(e.to_string()))?;
        let name = crate::pki::name(common_name, "cinfer attestation service")
            .map_err(|e| KeyWrapError::Key(e.to_string()))?;
        let cert = crate::pki::issue_pss(
            &key,
            name.clone(),
            name,
            spki,
            1,
            vec![],
            Duration::from_secs(5 * 365 * 24 * 3600),
        )
        .map_err(KeyWrapError::Key)?;
        let cert_der = cert.to_der().map_err(|e| KeyWrapError::Key(e.to_string()))?;
        Ok(Self {
            key,
            encoding,
            kid,
            cert_der,
        })
    }

    /// Key ID (RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// DER of the self-signed certificate.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.to_public_key()
    }

    /// The public JWK (`kty`, `kid`, `use`, `alg`, `n`, `e`, `x5c`).
    pub fn jwk(&self) -> Jwk {
        let public = self.key.to_public_key();
        Jwk {
            kty: "RSA".into(),
            kid: Some(self.kid.clone()),
            use_: Some("sig".into()),
            alg: Some("RS256".into()),
            n: Some(B64URL.encode(public.n_bytes())),
            e: Some(B64URL.encode(public.e_bytes())),
            x5c: Some(vec![B64STD.encode(&self.cert_der)]),
        }
    }

    /// Sign a JWS/JWT with RS256. `jku` and `x5c` are optional header fields.
    pub fn sign(
        &self,
        payload: &impl serde::Serialize,
        jku: Option<String>,
        with_x5c: bool,
    ) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        header.jku = jku;
        if with_x5c {
            header.x5c = Some(vec![B64STD.encode(&self.cert_der)]);
        }
        jsonwebtoken::encode(&header, payload, &self.encoding)
            .map_err(|e| TokenError::Malformed { detail: e.to_string() })
    }
}

/// Options of [`verify_token`].
#[derive(Clone, Debug)]
pub struct TokenCheck {
    /// Accepted issuers (exact match after trimming a trailing `/`).
    pub issuers: Vec<String>,
    /// Time to check `exp`/`nbf` against.
    pub now: SystemTime,
    /// Clock-skew allowance.
    pub leeway: Duration,
}

impl TokenCheck {
    /// One issuer, now, 60 s leeway.
    pub fn issuer(issuer: impl Into<String>) -> Self {
        Self {
            issuers: vec![issuer.into()],
            now: SystemTime::now(),
            leeway: Duration::from_secs(60),
        }
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Normalise an issuer or authority for comparison: trim one trailing `/`.
pub fn normalize_issuer(s: &str) -> &str {
    s.strip_suffix('/').unwrap_or(s)
}

/// The JOSE header of a compact JWS, without verifying anything.
pub fn peek_header(token: &str) -> Result<Map<String, Value>, TokenError> {
    let head = token.split('.').next().unwrap_or_default();
    let bytes = B64URL
        .decode(head.trim_end_matches('='))
        .map_err(|e| TokenError::Malformed {
            detail: format!("header base64: {e}"),
        })?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(TokenError::Malformed {
            detail: "header is not a JSON object".into(),
        }),
    }
}

/// Verify an RS256 compact JWS with `key` and return its JSON payload, without claim checks (for AKV
/// release responses and signed policies, which carry no `exp`).
pub fn verify_jws_rs256(token: &str, key: &PublicKey) -> Result<Value, TokenError> {
    let header = peek_header(token)?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if alg != "RS256" {
        return Err(TokenError::Algorithm { alg: alg.to_string() });
    }
    let dk = DecodingKey::from_rsa_components(&B64URL.encode(key.n_bytes()), &B64URL.encode(key.e_bytes()))
        .map_err(|_| TokenError::UnknownKey { kid: None })?;
    let mut v = Validation::new(Algorithm::RS256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    let data = jsonwebtoken::decode::<Value>(token, &dk, &v).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::Signature,
        _ => TokenError::Malformed { detail: e.to_string() },
    })?;
    Ok(data.claims)
}

/// Verify a token: RS256 only, signature by a key of `keys` (by `kid`), issuer, `exp` (required), `nbf`.
/// Returns the claims. The caller then checks application claims (e.g. `x-ms-runtime`) by exact equality.
pub fn verify_token(token: &str, keys: &Jwks, check: &TokenCheck) -> Result<Claims, TokenError> {
    let header = peek_header(token)?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if alg != "RS256" {
        return Err(TokenError::Algorithm { alg: alg.to_string() });
    }
    let kid = header.get("kid").and_then(Value::as_str);
    let jwk = keys.find(kid).ok_or_else(|| TokenError::UnknownKey {
        kid: kid.map(str::to_string),
    })?;
    let key = jwk.rsa_public_key().ok_or_else(|| TokenError::UnknownKey {
        kid: kid.map(str::to_string),
    })?;
    let Value::Object(claims) = verify_jws_rs256(token, &key)? else {
        return Err(TokenError::Malformed {
            detail: "payload is not a JSON object".into(),
        });
    };
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
    if !check
        .issuers
        .iter()
        .any(|i| normalize_issuer(i) == normalize_issuer(iss))
    {
        return Err(TokenError::Issuer {
            expected: check.issuers.join(", "),
            actual: iss.to_string(),
        });
    }
    let now = unix(check.now);
    let leeway = check.leeway.as_secs() as i64;
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or_else(|| TokenError::Claim {
            claim: "exp".into(),
            expected: "an integer",
        })?;
    if now > exp + leeway {
        return Err(TokenError::Expired { exp, now });
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_i64().ok_or_else(|| TokenError::Claim {
            claim: "nbf".into(),
            expected: "an integer",
        })?;
        if now + leeway < nbf {
            return Err(TokenError::NotYetValid { nbf, now });
        }
    }
    Ok(claims)
}

/// SHA-256 hex of a DER certificate (used to name policy signers).
pub fn cert_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}
