//! The client-side checks, in order: self-signature, token signature (pinned keys), issuer, expiry, key
//! binding, client policy. [`verify_leaf`] runs them on a DER certificate; [`AttestedVerifier`] runs them
//! inside a rustls handshake.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use attest::claims::RUNTIME;
use attest::token::{Claims, Jwks, TokenCheck, verify_token};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use serde_json::Value;
use x509_parser::prelude::{ASN1Time, FromDer, X509Certificate};

use super::{AtlsError, SPKI_CLAIM, TOKEN_EXTENSION_OID_STR, spki_sha256_hex};
use crate::policy::ClientPolicy;

/// What a client trusts: the attestation service's keys and issuer, and its policy.
#[derive(Clone, Debug)]
pub struct VerifierConfig {
    /// Token-signing keys of the trusted attestation service, pinned (from a file, or fetched once from a
    /// configured URL); never taken from the token.
    pub jwks: Jwks,
    /// The trusted issuer (`iss`).
    pub issuer: String,
    /// Claims the token must carry (exact equality).
    pub policy: ClientPolicy,
    /// Clock-skew allowance for `exp`/`nbf`.
    pub leeway: Duration,
}

impl VerifierConfig {
    /// Pinned keys, issuer and policy; 60 s leeway.
    pub fn new(jwks: Jwks, issuer: impl Into<String>, policy: ClientPolicy) -> Self {
        Self {
            jwks,
            issuer: issuer.into(),
            policy,
            leeway: Duration::from_secs(60),
        }
    }
}

/// What a successful verification established about the peer.
#[derive(Clone, Debug)]
pub struct VerifiedPeer {
    /// Hex SHA-256 of the certificate's SubjectPublicKeyInfo (bound by the token).
    pub spki_sha256: String,
    /// The verified token claims.
    pub claims: Claims,
}

impl VerifiedPeer {
    /// The token's `exp`: the verification is not valid past it.
    pub fn expires(&self) -> Option<SystemTime> {
        let exp = self.claims.get("exp").and_then(Value::as_i64)?;
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp.max(0) as u64))
    }
}

/// Run every check on a leaf certificate at `now`; the first failure is returned.
pub fn verify_leaf(der: &[u8], config: &VerifierConfig, now: SystemTime) -> Result<VerifiedPeer, AtlsError> {
    let cert_err = |detail: String| AtlsError::Certificate { detail };
    // 1. The certificate: DER, self-issued, signed by its own key.
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| cert_err(format!("not an X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(cert_err("trailing bytes after the certificate".into()));
    }
    if cert.subject() != cert.issuer() {
        return Err(cert_err("issuer differs from subject (not self-signed)".into()));
    }
    cert.verify_signature(None)
        .map_err(|e| cert_err(format!("signature by its own key does not verify: {e}")))?;
    // 2. The token extension, exactly once.
    let token = token_from_cert(&cert)?;

    // 3-5. Token signature (pinned keys), issuer, expiry.
    let claims = verify_claims(token, config, now)?;
    // The certificate's own validity (the token's nbf..exp widened by an hour) belongs to the expiry
    // check, so a stale server is named as such.
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let expiry = |detail: String| AtlsError::Expiry { detail };
    let at = ASN1Time::from_timestamp(secs).map_err(|e| expiry(format!("time: {e}")))?;
    if !cert.validity().is_valid_at(at) {
        return Err(expiry(format!(
            "the certificate is not valid now (valid {} .. {})",
            cert.validity().not_before,
            cert.validity().not_after
        )));
    }

    // 6. The token binds this certificate's key.
    let spki_sha256 = spki_sha256_hex(cert.public_key().raw);
    check_runtime(&claims, SPKI_CLAIM, &spki_sha256, |detail| AtlsError::KeyBinding {
        detail,
    })?;

    // 7. Every policy claim.
    config.policy.check(&claims)?;
    Ok(VerifiedPeer { spki_sha256, claims })
}

/// The JWT in the certificate's token extension.
pub fn token_from_cert<'a>(cert: &X509Certificate<'a>) -> Result<&'a str, AtlsError> {
    let err = |detail: &str| AtlsError::TokenExtension {
        detail: detail.to_string(),
    };
    let mut found = cert
        .extensions()
        .iter()
        .filter(|e| e.oid.to_id_string() == TOKEN_EXTENSION_OID_STR);
    let ext = found
        .next()
        .ok_or_else(|| err("the certificate carries no attestation token"))?;
    if found.next().is_some() {
        return Err(err("the token extension appears more than once"));
    }
    let value = ext.value;
    let body = match value {
        [0x04, rest @ ..] => der_length(rest).ok_or_else(|| err("extnValue is not a DER OCTET STRING"))?,
        _ => return Err(err("extnValue is not an OCTET STRING")),
    };
    let token = std::str::from_utf8(body).map_err(|_| err("token is not ASCII"))?;
    if token.is_empty() || !token.is_ascii() {
        return Err(err("token is empty or not ASCII"));
    }
    Ok(token)
}

/// The content of a DER TLV after its tag, if the length covers exactly the rest.
fn der_length(rest: &[u8]) -> Option<&[u8]> {
    let (&first, rest) = rest.split_first()?;
    let (len, body) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    (body.len() == len).then_some(body)
}

/// Token signature against the pinned keys, issuer and expiry, in that order.
pub fn verify_claims(token: &str, config: &VerifierConfig, now: SystemTime) -> Result<Claims, AtlsError> {
    let check = TokenCheck {
        issuers: vec![config.issuer.clone()],
        now,
        leeway: config.leeway,
    };
    verify_token(token, &config.jwks, &check).map_err(AtlsError::from_token)
}

/// `x-ms-runtime[member] == expected`, else `err(detail)`.
pub fn check_runtime(
    claims: &Claims,
    member: &str,
    expected: &str,
    err: impl Fn(String) -> AtlsError,
) -> Result<(), AtlsError> {
    let actual = claims.get(RUNTIME).and_then(|r| r.get(member)).and_then(Value::as_str);
    match actual {
        Some(a) if a == expected => Ok(()),
        Some(a) => Err(err(format!("x-ms-runtime.{member} is {a}, expected {expected}"))),
        None => Err(err(format!("the token has no x-ms-runtime.{member}"))),
    }
}

/// rustls verifier running [`verify_leaf`] during the handshake. TLS 1.2 signatures are refused; the
/// TLS 1.3 CertificateVerify is checked by rustls against the certificate's key.
#[derive(Debug)]
pub struct AttestedVerifier {
    config: Arc<VerifierConfig>,
    provider: Arc<CryptoProvider>,
}

impl AttestedVerifier {
    /// A verifier for `config`, using `provider`'s signature algorithms.
    pub fn new(config: Arc<VerifierConfig>, provider: Arc<CryptoProvider>) -> Self {
        Self { config, provider }
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<VerifierConfig> {
        &self.config
    }
}

/// Wrap an [`AtlsError`] so it survives rustls and tokio-rustls (recover it with
/// [`super::connect::atls_error_of`]).
pub fn to_rustls(e: AtlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

impl ServerCertVerifier for AttestedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(to_rustls(AtlsError::Certificate {
                detail: format!("{} intermediate certificates sent; expected none", intermediates.len()),
            }));
        }
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        verify_leaf(end_entity.as_ref(), &self.config, now).map_err(to_rustls)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, CustomExtension};

    use super::*;
    use crate::atls::cert::{generate_key, token_extension};
    use crate::atls::{Check, TOKEN_EXTENSION_OID};

    fn config() -> VerifierConfig {
        let policy = ClientPolicy::hostdata(&"11".repeat(32)).unwrap();
        VerifierConfig::new(Jwks::default(), "https://issuer.example", policy)
    }

    fn cert_with(exts: Vec<CustomExtension>) -> Vec<u8> {
        let key = generate_key().unwrap();
        let mut params = CertificateParams::new(vec!["cinfer".into()]).unwrap();
        params.custom_extensions = exts;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn check_of(der: &[u8]) -> (Check, String) {
        let e = verify_leaf(der, &config(), SystemTime::now()).unwrap_err();
        (e.check(), e.to_string())
    }

    #[test]
    fn token_extension_must_be_present_once_and_an_octet_string() {
        let (c, m) = check_of(&cert_with(vec![]));
        assert_eq!(c, Check::TokenExtension, "{m}");
        let (c, m) = check_of(&cert_with(vec![token_extension("a.b.c"), token_extension("a.b.c")]));
        assert_eq!(c, Check::TokenExtension, "{m}");
        assert!(m.contains("more than once"), "{m}");
        let raw = CustomExtension::from_oid_content(TOKEN_EXTENSION_OID, b"\x0c\x05a.b.c".to_vec());
        let (c, m) = check_of(&cert_with(vec![raw]));
        assert_eq!(c, Check::TokenExtension, "{m}");
    }

    #[test]
    fn a_well_formed_token_reaches_the_signature_check() {
        // The extension parses; the token (not signed by a pinned key) fails at token-signature.
        let (c, m) = check_of(&cert_with(vec![token_extension("eyJhbGciOiJSUzI1NiJ9.e30.c2ln")]));
        assert_eq!(c, Check::TokenSignature, "{m}");
    }

    #[test]
    fn garbage_is_a_certificate_failure() {
        let (c, _) = check_of(b"not a certificate");
        assert_eq!(c, Check::Certificate);
        let mut der = cert_with(vec![token_extension("a.b.c")]);
        let last = der.len() - 1;
        der[last] ^= 1; // the signature's last byte
        let (c, m) = check_of(&der);
        assert_eq!(c, Check::Certificate, "{m}");
    }
}
