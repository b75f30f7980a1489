//! The UVM endorsement codec: a COSE_Sign1 document (RFC 9052) as Microsoft signs it for a utility VM
//! image. Pure parsing, no I/O, no signature or chain checks (those are in [`super::verify_uvm_endorsement`]).
//!
//! Layout (normative for cinfer; decoded from the real ACI vector in `tests/data/aci/` and matching what
//! Microsoft's own verifiers read — CCF `src/node/uvm_endorsements.cpp`):
//!
//! ```text
//! COSE_Sign1 = #6.18([ protected: bstr .cbor Headers, unprotected: Headers, payload: bstr, signature: bstr ])
//! protected  = { 1 (alg): -37 PS256 | -38 PS384 | -39 PS512 | -35 ES384,
//!                3 (content type): "application/json",
//!                33 (x5chain): [+ bstr DER] (leaf first) or one bstr,
//!                ? 34 (x5t): [-16 (SHA-256), bstr .size 32]   ; checked against the leaf when present
//!                "iss": tstr (a did:x509 identifier),
//!                "feed": tstr,
//!                ? "signingtime": #6.1(int) (epoch seconds) }
//! unprotected: may hold "timestamp" (an RFC 3161 token; carried, not verified)
//! payload    = JSON { "x-ms-sevsnpvm-launchmeasurement": 96 lowercase hex digits,
//!                     "x-ms-sevsnpvm-guestsvn": decimal string,
//!                     ? "x-ms-sevsnpvm-guestsvn-int": integer (must equal guestsvn when present) }
//! signature  = over Sig_structure ["Signature1", protected (as received), h'', payload]
//! ```
//!
//! Anything else in a header is ignored unless listed in `crit` (label 2), in which case the document is
//! refused: a critical header this parser does not understand must not be skipped.

use coset::cbor::value::Value;
use coset::{CborSerializable as _, CoseSign1, Label, TaggedCborSerializable as _, iana};

use crate::error::EndorsementError;

/// COSE header label of `x5chain` (RFC 9360).
pub const HEADER_X5CHAIN: i64 = 33;
/// COSE header label of `x5t` (RFC 9360).
pub const HEADER_X5T: i64 = 34;
/// Protected header holding the issuer DID.
pub const HEADER_ISS: &str = "iss";
/// Protected header naming the feed (the product line the endorsement belongs to).
pub const HEADER_FEED: &str = "feed";
/// Protected header with the signing time (CBOR tag 1, epoch seconds).
pub const HEADER_SIGNING_TIME: &str = "signingtime";
/// The only payload content type accepted.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Payload key of the endorsed launch measurement.
pub const PAYLOAD_MEASUREMENT: &str = "x-ms-sevsnpvm-launchmeasurement";
/// Payload key of the endorsed guest SVN (a decimal string).
pub const PAYLOAD_GUEST_SVN: &str = "x-ms-sevsnpvm-guestsvn";
/// Payload key of the endorsed guest SVN as an integer (newer endorsements carry both).
pub const PAYLOAD_GUEST_SVN_INT: &str = "x-ms-sevsnpvm-guestsvn-int";

/// Signature algorithms accepted for an endorsement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureAlg {
    /// ECDSA P-384 with SHA-384 (COSE -35).
    Es384,
    /// RSASSA-PSS with SHA-256, salt 32 (COSE -37).
    Ps256,
    /// RSASSA-PSS with SHA-384, salt 48 (COSE -38): what Microsoft's UVM feeds use.
    Ps384,
    /// RSASSA-PSS with SHA-512, salt 64 (COSE -39).
    Ps512,
}

impl SignatureAlg {
    fn from_cose(alg: &coset::Algorithm) -> Option<Self> {
        match alg {
            coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES384) => Some(Self::Es384),
            coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::PS256) => Some(Self::Ps256),
            coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::PS384) => Some(Self::Ps384),
            coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::PS512) => Some(Self::Ps512),
            _ => None,
        }
    }
}

/// A parsed, not yet verified, UVM endorsement.
#[derive(Clone, Debug)]
pub struct UvmEndorsementDoc {
    sign1: CoseSign1,
    /// Signature algorithm from the protected header.
    pub alg: SignatureAlg,
    /// Certificates of the `x5chain` header, DER, leaf first.
    pub x5chain: Vec<Vec<u8>>,
    /// SHA-256 of the leaf from the `x5t` header, when present.
    pub x5t_sha256: Option<[u8; 32]>,
    /// The `iss` header: the signer's did:x509 identifier.
    pub issuer: String,
    /// The `feed` header.
    pub feed: String,
    /// The `signingtime` header, epoch seconds.
    pub signing_time: Option<i64>,
}

fn parse_err(detail: impl Into<String>) -> EndorsementError {
    EndorsementError::Parse { detail: detail.into() }
}

fn text_label<'a>(rest: &'a [(Label, Value)], name: &str) -> Option<&'a Value> {
    rest.iter()
        .find(|(l, _)| matches!(l, Label::Text(t) if t == name))
        .map(|(_, v)| v)
}

fn int_label(rest: &[(Label, Value)], label: i64) -> Option<&Value> {
    rest.iter().find(|(l, _)| *l == Label::Int(label)).map(|(_, v)| v)
}

fn required_text(rest: &[(Label, Value)], name: &str) -> Result<String, EndorsementError> {
    match text_label(rest, name) {
        Some(Value::Text(t)) => Ok(t.clone()),
        Some(_) => Err(parse_err(format!("protected header {name:?} is not a text string"))),
        None => Err(parse_err(format!("protected header {name:?} is missing"))),
    }
}

fn x5chain(rest: &[(Label, Value)]) -> Result<Vec<Vec<u8>>, EndorsementError> {
    match int_label(rest, HEADER_X5CHAIN) {
        Some(Value::Bytes(b)) => Ok(vec![b.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| match v {
                Value::Bytes(b) => Ok(b.clone()),
                _ => Err(parse_err("x5chain holds a non-bstr item")),
            })
            .collect(),
        Some(_) => Err(parse_err("x5chain is neither a bstr nor a non-empty array of bstr")),
        None => Err(parse_err("protected header x5chain (33) is missing")),
    }
}

fn x5t(rest: &[(Label, Value)]) -> Result<Option<[u8; 32]>, EndorsementError> {
    let Some(v) = int_label(rest, HEADER_X5T) else {
        return Ok(None);
    };
    match v {
        Value::Array(items) => match items.as_slice() {
            [Value::Integer(alg), Value::Bytes(hash)] if i128::from(*alg) == -16 => hash
                .as_slice()
                .try_into()
                .map(Some)
                .map_err(|_| parse_err("x5t SHA-256 hash is not 32 bytes")),
            [Value::Integer(_), Value::Bytes(_)] => Err(parse_err("x5t uses a hash other than SHA-256 (-16)")),
            _ => Err(parse_err("x5t is not [alg, hash]")),
        },
        _ => Err(parse_err("x5t is not an array")),
    }
}

fn signing_time(rest: &[(Label, Value)]) -> Result<Option<i64>, EndorsementError> {
    let Some(v) = text_label(rest, HEADER_SIGNING_TIME) else {
        return Ok(None);
    };
    let int = match v {
        Value::Tag(1, inner) => match inner.as_ref() {
            Value::Integer(i) => Some(*i),
            _ => None,
        },
        Value::Integer(i) => Some(*i),
        _ => None,
    };
    int.and_then(|i| i64::try_from(i128::from(i)).ok())
        .map(Some)
        .ok_or_else(|| parse_err("signingtime is not an epoch-seconds integer"))
}

impl UvmEndorsementDoc {
    /// Parse a tagged (or untagged) COSE_Sign1 UVM endorsement. Trailing bytes are an error.
    pub fn parse(bytes: &[u8]) -> Result<Self, EndorsementError> {
        let sign1 = CoseSign1::from_tagged_slice(bytes)
            .or_else(|_| CoseSign1::from_slice(bytes))
            .map_err(|e| parse_err(format!("not a COSE_Sign1: {e}")))?;
        let h = &sign1.protected.header;
        if let Some(label) = h.crit.first() {
            return Err(parse_err(format!("critical header {label:?} is not understood")));
        }
        let alg = h
            .alg
            .as_ref()
            .ok_or_else(|| parse_err("protected header alg (1) is missing"))?;
        let alg = SignatureAlg::from_cose(alg)
            .ok_or_else(|| parse_err(format!("algorithm {alg:?} is not accepted (PS256/384/512, ES384)")))?;
        match &h.content_type {
            Some(coset::ContentType::Text(t)) if t == CONTENT_TYPE_JSON => {}
            other => {
                return Err(parse_err(format!(
                    "content type {other:?} is not {CONTENT_TYPE_JSON:?}"
                )));
            }
        }
        if sign1.payload.is_none() {
            return Err(parse_err("payload is detached (nil)"));
        }
        Ok(Self {
            alg,
            x5chain: x5chain(&h.rest)?,
            x5t_sha256: x5t(&h.rest)?,
            issuer: required_text(&h.rest, HEADER_ISS)?,
            feed: required_text(&h.rest, HEADER_FEED)?,
            signing_time: signing_time(&h.rest)?,
            sign1,
        })
    }

    /// The bytes the signature covers: `Sig_structure = ["Signature1", protected, h'', payload]`, with the
    /// protected header exactly as received.
    pub fn signed_bytes(&self) -> Vec<u8> {
        self.sign1.tbs_data(b"")
    }

    /// The signature (RSASSA-PSS bytes, or `r ‖ s` for ECDSA).
    pub fn signature(&self) -> &[u8] {
        &self.sign1.signature
    }

    /// The payload bytes (not yet authenticated; parse with [`UvmPayload::from_json`] after the signature
    /// check).
    pub fn payload(&self) -> &[u8] {
        self.sign1.payload.as_deref().unwrap_or_default()
    }
}

/// The endorsed values: what Microsoft states about one UVM image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UvmPayload {
    /// The endorsed SNP launch measurement.
    pub launch_measurement: [u8; 48],
    /// The endorsed guest SVN (the UVM's security version in its feed).
    pub guest_svn: u64,
}

impl UvmPayload {
    /// Parse the JSON payload. The measurement must be 96 lowercase hex digits and the SVN a decimal string;
    /// `x-ms-sevsnpvm-guestsvn-int`, when present, must be the same number.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EndorsementError> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| parse_err(format!("payload is not JSON: {e}")))?;
        let m = v
            .get(PAYLOAD_MEASUREMENT)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| parse_err(format!("payload {PAYLOAD_MEASUREMENT} is missing or not a string")))?;
        if m.len() != 96 || !m.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(parse_err(format!(
                "payload {PAYLOAD_MEASUREMENT} is not 96 lowercase hex digits"
            )));
        }
        let mut launch_measurement = [0u8; 48];
        hex::decode_to_slice(m, &mut launch_measurement)
            .map_err(|e| parse_err(format!("payload {PAYLOAD_MEASUREMENT}: {e}")))?;
        let svn = v
            .get(PAYLOAD_GUEST_SVN)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| parse_err(format!("payload {PAYLOAD_GUEST_SVN} is missing or not a string")))?;
        if svn.is_empty() || !svn.bytes().all(|b| b.is_ascii_digit()) {
            return Err(parse_err(format!(
                "payload {PAYLOAD_GUEST_SVN} {svn:?} is not a decimal"
            )));
        }
        let guest_svn: u64 = svn
            .parse()
            .map_err(|e| parse_err(format!("payload {PAYLOAD_GUEST_SVN} {svn:?}: {e}")))?;
        if let Some(int) = v.get(PAYLOAD_GUEST_SVN_INT)
            && int.as_u64() != Some(guest_svn)
        {
            return Err(parse_err(format!(
                "payload {PAYLOAD_GUEST_SVN_INT} {int} disagrees with {PAYLOAD_GUEST_SVN} {svn:?}"
            )));
        }
        Ok(Self {
            launch_measurement,
            guest_svn,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &[u8] = include_bytes!("../../tests/data/aci/body.uvm_reference_info.bin");

    #[test]
    fn real_endorsement_headers_decode() {
        let doc = UvmEndorsementDoc::parse(REAL).unwrap();
        assert_eq!(doc.alg, SignatureAlg::Ps384);
        assert_eq!(doc.x5chain.len(), 3);
        assert_eq!(
            doc.issuer,
            "did:x509:0:sha256:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s::eku:1.3.6.1.4.1.311.76.59.1.2"
        );
        assert_eq!(doc.feed, "ContainerPlat-AMD-UVM");
        assert_eq!(doc.signing_time, Some(1_675_834_943));
        let p = UvmPayload::from_json(doc.payload()).unwrap();
        assert_eq!(p.guest_svn, 22);
        assert_eq!(hex::encode(&p.launch_measurement[..4]), "51068107");
        // The signed bytes start with the Sig_structure array header and context string.
        assert_eq!(&doc.signed_bytes()[..12], b"\x84\x6aSignature1");
    }

    #[test]
    fn truncated_or_trailing_input_is_a_parse_error() {
        for bad in [&REAL[..REAL.len() - 1], &REAL[..100], &[][..]] {
            let e = UvmEndorsementDoc::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("endorsement parse:"), "{e}");
        }
        let mut longer = REAL.to_vec();
        longer.push(0);
        assert!(UvmEndorsementDoc::parse(&longer).is_err());
    }

    #[test]
    fn payload_rules() {
        let m = "ab".repeat(48);
        let ok =
            format!(r#"{{"{PAYLOAD_MEASUREMENT}":"{m}","{PAYLOAD_GUEST_SVN}":"104","{PAYLOAD_GUEST_SVN_INT}":104}}"#);
        assert_eq!(UvmPayload::from_json(ok.as_bytes()).unwrap().guest_svn, 104);
        for bad in [
            format!(
                r#"{{"{PAYLOAD_MEASUREMENT}":"{}","{PAYLOAD_GUEST_SVN}":"1"}}"#,
                m.to_uppercase()
            ),
            format!(r#"{{"{PAYLOAD_MEASUREMENT}":"{m}","{PAYLOAD_GUEST_SVN}":1}}"#),
            format!(r#"{{"{PAYLOAD_MEASUREMENT}":"{m}","{PAYLOAD_GUEST_SVN}":"-1"}}"#),
            format!(r#"{{"{PAYLOAD_MEASUREMENT}":"{m}","{PAYLOAD_GUEST_SVN}":"7","{PAYLOAD_GUEST_SVN_INT}":8}}"#),
            format!(r#"{{"{PAYLOAD_GUEST_SVN}":"7"}}"#),
        ] {
            let e = UvmPayload::from_json(bad.as_bytes()).unwrap_err().to_string();
            assert!(e.starts_with("endorsement parse: payload"), "{bad}: {e}");
        }
    }
}
