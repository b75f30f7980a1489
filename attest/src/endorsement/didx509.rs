//! `did:x509` issuer identifiers (method version 0, microsoft/did-x509 `specification.md`): parse the DID and
//! resolve it against a certificate chain, i.e. decide whether the chain may speak for the DID.
//!
//! Resolution, as the specification's "DID Resolution" section orders it:
//!
//! 1. the chain (leaf first) has at least two certificates;
//! 2. it is a valid RFC 5280 path with the **last** certificate as trust anchor, at a time the caller
//!    chooses (the specification allows an integrity-protected signing time instead of now); path
//!    validation is rustls-webpki's, which also refuses unknown critical extensions;
//! 3. the DID's CA fingerprint (`sha256`/`sha384`/`sha512`, base64url) equals the hash of a non-leaf
//!    certificate **on the validated path**;
//! 4. every predicate holds for the leaf: `eku:<oid>` (the OID is among the leaf's EKUs),
//!    `subject:<key>:<value>...` (each named RDN attribute equals the percent-decoded value), and
//!    `san:<email|dns|uri>:<value>`. `fulcio-issuer` is not supported (it is refused, never skipped);
//! 5. the leaf, if it has a key usage extension, allows `digitalSignature`.
//!
//! What the chain's public key may then sign is the caller's business; the DID itself is trusted only
//! because it is configured ([`super::UvmTrust`]).

use std::time::{Duration, SystemTime};

use der::{Decode, Encode};
use rustls::pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256, Sha384, Sha512};
use x509_cert::Certificate;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName};

use crate::error::EndorsementError;

/// Hash of the pinned CA certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FingerprintAlg {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl FingerprintAlg {
    fn digest(self, der: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::digest(der).to_vec(),
            Self::Sha384 => Sha384::digest(der).to_vec(),
            Self::Sha512 => Sha512::digest(der).to_vec(),
        }
    }
}

/// One `::name:value` predicate on the leaf certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Predicate {
    /// `eku:<dotted OID>`.
    Eku(String),
    /// `subject:<key>:<value>[:<key>:<value>...]`, values percent-decoded; keys are `CN`, `L`, `ST`, `O`,
    /// `OU`, `C`, `STREET` or dotted OIDs.
    Subject(Vec<(String, String)>),
    /// `san:<email|dns|uri>:<value>`, value percent-decoded.
    San(String, String),
}

/// A parsed `did:x509:0:...` identifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DidX509 {
    /// Hash of the CA fingerprint.
    pub fingerprint_alg: FingerprintAlg,
    /// The CA fingerprint (decoded).
    pub fingerprint: Vec<u8>,
    /// Predicates on the leaf (at least one).
    pub predicates: Vec<Predicate>,
}

fn did_err(detail: impl Into<String>) -> EndorsementError {
    EndorsementError::Issuer { detail: detail.into() }
}

fn percent_decode(s: &str) -> Result<String, EndorsementError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| did_err(format!("bad percent-encoding in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| did_err(format!("percent-decoded {s:?} is not UTF-8")))
}

fn is_idchars(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'%' | b':'))
}

impl DidX509 {
    /// Parse a DID string.
    pub fn parse(did: &str) -> Result<Self, EndorsementError> {
        let rest = did
            .strip_prefix("did:x509:0:")
            .ok_or_else(|| did_err(format!("{did:?} is not a did:x509 version 0 identifier")))?;
        let mut parts = rest.split("::");
        let head = parts.next().unwrap_or_default();
        let (alg, fp) = head
            .split_once(':')
            .ok_or_else(|| did_err(format!("{did:?}: expected <alg>:<ca-fingerprint>")))?;
        let fingerprint_alg = match alg {
            "sha256" => FingerprintAlg::Sha256,
            "sha384" => FingerprintAlg::Sha384,
            "sha512" => FingerprintAlg::Sha512,
            other => {
                return Err(did_err(format!(
                    "fingerprint algorithm {other:?} is not sha256/384/512"
                )));
            }
        };
        use base64::Engine as _;
        let fingerprint = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(fp)
            .map_err(|e| did_err(format!("CA fingerprint {fp:?}: {e}")))?;
        if fingerprint.len() != fingerprint_alg.digest(b"").len() {
            return Err(did_err(format!("CA fingerprint {fp:?} has the wrong length for {alg}")));
        }
        let mut predicates = Vec::new();
        for p in parts {
            let (name, value) = p
                .split_once(':')
                .filter(|(_, v)| is_idchars(v))
                .ok_or_else(|| did_err(format!("predicate {p:?} is not <name>:<value>")))?;
            predicates.push(match name {
                "eku" => {
                    if !value
                        .split('.')
                        .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
                    {
                        return Err(did_err(format!("eku {value:?} is not a dotted OID")));
                    }
                    Predicate::Eku(value.to_string())
                }
                "subject" => {
                    let items: Vec<&str> = value.split(':').collect();
                    if !items.len().is_multiple_of(2) {
                        return Err(did_err(format!("subject {value:?} is not <key>:<value> pairs")));
                    }
                    let mut pairs: Vec<(String, String)> = Vec::new();
                    for kv in items.chunks(2) {
                        if pairs.iter().any(|(k, _)| k == kv[0]) {
                            return Err(did_err(format!("subject key {:?} repeats", kv[0])));
                        }
                        pairs.push((kv[0].to_string(), percent_decode(kv[1])?));
                    }
                    Predicate::Subject(pairs)
                }
                "san" => {
                    let (ty, v) = value
                        .split_once(':')
                        .filter(|(t, _)| matches!(*t, "email" | "dns" | "uri"))
                        .ok_or_else(|| did_err(format!("san {value:?} is not <email|dns|uri>:<value>")))?;
                    Predicate::San(ty.to_string(), percent_decode(v)?)
                }
                other => return Err(did_err(format!("predicate {other:?} is not supported"))),
            });
        }
        if predicates.is_empty() {
            return Err(did_err(format!("{did:?} has no predicate")));
        }
        Ok(Self {
            fingerprint_alg,
            fingerprint,
            predicates,
        })
    }
}

/// Accepts any well-formed EKU list: webpki would apply one EKU to every certificate on the path, while
/// did:x509's `eku` predicate is about the leaf only, checked in [`check_predicates`]. Also used for the GPU
/// chains (`crate::gpu::certs`), whose certificates name no EKU that webpki's usages would.
pub(crate) struct AnyEku;

impl webpki::ExtendedKeyUsageValidator for AnyEku {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for id in iter {
            id?;
        }
        Ok(())
    }
}

fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO))
}

fn chain_err(detail: impl Into<String>) -> EndorsementError {
    EndorsementError::Chain { detail: detail.into() }
}

/// Validate `chain` (DER, leaf first) as a path to its last certificate at `at`; return the DER of the
/// certificates on the validated path above the leaf (intermediates, then the anchor).
fn validate_path(chain: &[Vec<u8>], at: SystemTime) -> Result<Vec<Vec<u8>>, EndorsementError> {
    let [leaf, middle @ .., anchor] = chain else {
        return Err(chain_err(format!(
            "x5chain has {} certificate(s); a did:x509 chain needs at least two",
            chain.len()
        )));
    };
    let leaf_der = CertificateDer::from(leaf.as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| chain_err(format!("leaf: {e}")))?;
    let anchor_der = CertificateDer::from(anchor.as_slice());
    let ta = webpki::anchor_from_trusted_cert(&anchor_der).map_err(|e| chain_err(format!("last certificate: {e}")))?;
    let intermediates: Vec<CertificateDer<'_>> = middle.iter().map(|c| CertificateDer::from(c.as_slice())).collect();
    let anchors = [ta];
    let path = ee
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            unix_time(at),
            AnyEku,
            None,
            None,
        )
        .map_err(|e| chain_err(format!("path validation at {}: {e}", crate::verify::fmt_time(at))))?;
    let mut above: Vec<Vec<u8>> = path
        .intermediate_certificates()
        .map(|c| c.der().as_ref().to_vec())
        .collect();
    above.push(anchor.clone());
    Ok(above)
}

fn attribute_string(value: &der::asn1::Any) -> Option<String> {
    let bytes = value.to_der().ok()?;
    der::asn1::Utf8StringRef::from_der(&bytes)
        .map(|s| s.as_str().to_string())
        .or_else(|_| der::asn1::PrintableStringRef::from_der(&bytes).map(|s| s.as_str().to_string()))
        .or_else(|_| der::asn1::Ia5StringRef::from_der(&bytes).map(|s| s.as_str().to_string()))
        .or_else(|_| der::asn1::TeletexStringRef::from_der(&bytes).map(|s| s.as_str().to_string()))
        .ok()
}

fn subject_key_oid(key: &str) -> String {
    match key {
        "CN" => "2.5.4.3",
        "C" => "2.5.4.6",
        "L" => "2.5.4.7",
        "ST" => "2.5.4.8",
        "STREET" => "2.5.4.9",
        "O" => "2.5.4.10",
        "OU" => "2.5.4.11",
        other => other,
    }
    .to_string()
}

fn check_predicates(did: &DidX509, leaf: &Certificate) -> Result<(), EndorsementError> {
    let tbs = leaf.tbs_certificate();
    let ext = |oid: der::oid::ObjectIdentifier| {
        tbs.extensions()
            .into_iter()
            .flatten()
            .find(|e| e.extn_id == oid)
            .map(|e| e.extn_value.as_bytes().to_vec())
    };
    for p in &did.predicates {
        match p {
            Predicate::Eku(oid) => {
                let ekus = ext(der::oid::db::rfc5280::ID_CE_EXT_KEY_USAGE)
                    .map(|v| ExtendedKeyUsage::from_der(&v))
                    .transpose()
                    .map_err(|e| chain_err(format!("leaf EKU extension: {e}")))?
                    .map(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())
                    .unwrap_or_default();
                if !ekus.iter().any(|e| e == oid) {
                    return Err(did_err(format!("leaf EKUs {ekus:?} do not include {oid}")));
                }
            }
            Predicate::Subject(pairs) => {
                for (key, want) in pairs {
                    let oid = subject_key_oid(key);
                    let values: Vec<String> = tbs
                        .subject()
                        .iter()
                        .filter(|atv| atv.oid.to_string() == oid)
                        .filter_map(|atv| attribute_string(&atv.value))
                        .collect();
                    if values.len() != 1 || &values[0] != want {
                        return Err(did_err(format!(
                            "leaf subject {key} is {values:?}, the DID requires {want:?}"
                        )));
                    }
                }
            }
            Predicate::San(ty, want) => {
                let sans = ext(der::oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME)
                    .map(|v| SubjectAltName::from_der(&v))
                    .transpose()
                    .map_err(|e| chain_err(format!("leaf SAN extension: {e}")))?
                    .map(|s| s.0)
                    .unwrap_or_default();
                let found = sans.iter().any(|n| match (ty.as_str(), n) {
                    ("email", GeneralName::Rfc822Name(v)) => v.as_str() == want,
                    ("dns", GeneralName::DnsName(v)) => v.as_str() == want,
                    ("uri", GeneralName::UniformResourceIdentifier(v)) => v.as_str() == want,
                    _ => false,
                });
                if !found {
                    return Err(did_err(format!("leaf has no {ty} SAN {want:?}")));
                }
            }
        }
    }
    if let Some(v) = ext(der::oid::db::rfc5280::ID_CE_KEY_USAGE) {
        let ku = KeyUsage::from_der(&v).map_err(|e| chain_err(format!("leaf key usage extension: {e}")))?;
        if !ku.0.contains(KeyUsages::DigitalSignature) {
            return Err(chain_err("leaf key usage does not allow digitalSignature"));
        }
    }
    Ok(())
}

/// Resolve `did` against `chain` (DER, leaf first) at `at`: validate the path, match the CA fingerprint on it
/// and the predicates on the leaf. Returns the parsed leaf, whose key may then verify what the DID signs.
pub fn resolve(did: &DidX509, chain: &[Vec<u8>], at: SystemTime) -> Result<Certificate, EndorsementError> {
    let above = validate_path(chain, at)?;
    if !above.iter().any(|c| did.fingerprint_alg.digest(c) == did.fingerprint) {
        return Err(did_err(
            "no CA certificate on the validated x5chain path has the DID's fingerprint",
        ));
    }
    let leaf = Certificate::from_der(&chain[0]).map_err(|e| chain_err(format!("leaf: {e}")))?;
    check_predicates(did, &leaf)?;
    Ok(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACI: &str = "did:x509:0:sha256:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s::eku:1.3.6.1.4.1.311.76.59.1.2";

    #[test]
    fn parses_the_aci_issuer_and_the_specification_examples() {
        let d = DidX509::parse(ACI).unwrap();
        assert_eq!(d.fingerprint_alg, FingerprintAlg::Sha256);
        assert_eq!(d.predicates, vec![Predicate::Eku("1.3.6.1.4.1.311.76.59.1.2".into())]);
        let d = DidX509::parse(
            "did:x509:0:sha256:WE4P5dd8DnLHSkyHaIjhp4udlkF9LqoKwCvu9gl38jk::subject:C:US:ST:California:O:Example%20Organisation",
        )
        .unwrap();
        assert_eq!(
            d.predicates,
            vec![Predicate::Subject(vec![
                ("C".into(), "US".into()),
                ("ST".into(), "California".into()),
                ("O".into(), "Example Organisation".into())
            ])]
        );
        let d = DidX509::parse(
            "did:x509:0:sha256:WE4P5dd8DnLHSkyHaIjhp4udlkF9LqoKwCvu9gl38jk::san:email:bob%40example.com",
        )
        .unwrap();
        assert_eq!(
            d.predicates,
            vec![Predicate::San("email".into(), "bob@example.com".into())]
        );
    }

    #[test]
    fn malformed_or_unsupported_dids_are_refused() {
        for bad in [
            "did:web:example.com",
            "did:x509:1:sha256:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s::eku:1.2",
            "did:x509:0:md5:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s::eku:1.2",
            "did:x509:0:sha256:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s",
            "did:x509:0:sha256:short::eku:1.2",
            "did:x509:0:sha256:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s::eku:1..2",
            "did:x509:0:sha256:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s::subject:CN",
            "did:x509:0:sha256:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s::subject:CN:a:CN:b",
            "did:x509:0:sha256:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s::fulcio-issuer:accounts.google.com",
            "did:x509:0:sha256:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s::san:dn:x",
            "did:x509:0:sha256:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s::subject:CN:%zz",
        ] {
            let e = DidX509::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("endorsement issuer:"), "{bad}: {e}");
        }
    }
}
