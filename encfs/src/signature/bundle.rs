//! The three envelopes around a manifest: Sigstore bundle v0.3 → DSSE envelope → in-toto Statement v1.
//!
//! Writing emits the forms `model_signing` 1.1.1 writes (compact JSON, `keyid: ""`, `tlogEntries: []`). Reading is
//! lenient where the reference verifier is (missing `keyid`, `tlogEntries` or `hint`; snake_case field names, which
//! protobuf JSON parsers accept) and strict where it is (media type, payload type, statement type, predicate type,
//! exactly one subject).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::SignatureError;

/// `mediaType` of a Sigstore bundle v0.3.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// DSSE `payloadType` of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// in-toto Statement v1 `_type`.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The OpenSSF Model Signing v1.0 predicate type.
pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";

/// DSSE v1 pre-authentication encoding: `"DSSEv1" SP len(type) SP type SP len(payload) SP payload`, lengths in
/// ASCII decimal. This is what the ECDSA signature covers.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    v.extend_from_slice(b"DSSEv1 ");
    v.extend_from_slice(payload_type.len().to_string().as_bytes());
    v.push(b' ');
    v.extend_from_slice(payload_type.as_bytes());
    v.push(b' ');
    v.extend_from_slice(payload.len().to_string().as_bytes());
    v.push(b' ');
    v.extend_from_slice(payload);
    v
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Bundle {
    #[serde(alias = "media_type")]
    pub(crate) media_type: String,
    #[serde(alias = "verification_material", default)]
    pub(crate) verification_material: VerificationMaterial,
    #[serde(alias = "dsse_envelope")]
    pub(crate) dsse_envelope: Option<Envelope>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VerificationMaterial {
    #[serde(alias = "public_key", default, skip_serializing_if = "Option::is_none")]
    pub(crate) public_key: Option<PublicKeyId>,
    #[serde(alias = "x509_certificate_chain", default, skip_serializing_if = "Option::is_none")]
    pub(crate) x509_certificate_chain: Option<serde_json::Value>,
    #[serde(alias = "tlog_entries", default)]
    pub(crate) tlog_entries: Option<Vec<serde_json::Value>>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct PublicKeyId {
    #[serde(default)]
    pub(crate) hint: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Envelope {
    pub(crate) payload: String,
    #[serde(alias = "payload_type")]
    pub(crate) payload_type: String,
    pub(crate) signatures: Vec<EnvelopeSignature>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct EnvelopeSignature {
    pub(crate) sig: String,
    #[serde(default)]
    pub(crate) keyid: Option<String>,
}

/// The in-toto statement, as far as model signing uses it.
#[derive(Serialize, Deserialize)]
pub(crate) struct Statement {
    #[serde(rename = "_type")]
    pub(crate) type_: String,
    pub(crate) subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub(crate) predicate_type: String,
    pub(crate) predicate: Predicate,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Subject {
    pub(crate) name: String,
    pub(crate) digest: SubjectDigest,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct SubjectDigest {
    pub(crate) sha256: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Predicate {
    pub(crate) serialization: SerializationJson,
    pub(crate) resources: Vec<ResourceJson>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct SerializationJson {
    pub(crate) method: String,
    pub(crate) hash_type: String,
    #[serde(default)]
    pub(crate) allow_symlinks: bool,
    #[serde(default)]
    pub(crate) ignore_paths: Vec<String>,
    /// Only for `shards`: an integer in the spec, a float (`1000000000.0`) from the reference tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) shard_size: Option<serde_json::Number>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ResourceJson {
    pub(crate) name: String,
    pub(crate) algorithm: String,
    pub(crate) digest: String,
}

fn field(field: &'static str, expected: &str, actual: &str) -> SignatureError {
    SignatureError::Field {
        field,
        expected: expected.to_owned(),
        actual: actual.to_owned(),
    }
}

/// Wraps a statement into a signed bundle (compact JSON bytes).
pub(crate) fn seal(statement: &Statement, sign: impl FnOnce(&[u8]) -> Vec<u8>, hint: String) -> Vec<u8> {
    // INVARIANT: these structs hold only strings, numbers and arrays: serializing them cannot fail.
    let payload = serde_json::to_vec(statement).unwrap_or_default();
    let sig = sign(&pae(PAYLOAD_TYPE, &payload));
    let bundle = Bundle {
        media_type: BUNDLE_MEDIA_TYPE.into(),
        verification_material: VerificationMaterial {
            public_key: Some(PublicKeyId { hint: Some(hint) }),
            x509_certificate_chain: None,
            tlog_entries: Some(Vec::new()),
        },
        dsse_envelope: Some(Envelope {
            payload: STANDARD.encode(&payload),
            payload_type: PAYLOAD_TYPE.into(),
            signatures: vec![EnvelopeSignature {
                sig: STANDARD.encode(sig),
                keyid: Some(String::new()),
            }],
        }),
    };
    serde_json::to_vec(&bundle).unwrap_or_default()
}

/// Parses a bundle, checks the key hint and the signature over PAE(payload), and returns the parsed statement.
pub(crate) fn open(
    bundle_json: &[u8],
    hint: &str,
    verify: impl FnOnce(&[u8], &[u8]) -> Result<(), SignatureError>,
) -> Result<Statement, SignatureError> {
    let syntax = |what: &str, e: &dyn std::fmt::Display| SignatureError::Syntax {
        what: what.to_owned(),
        reason: e.to_string(),
    };
    let bundle: Bundle = serde_json::from_slice(bundle_json).map_err(|e| syntax("bundle", &e))?;
    if bundle.media_type != BUNDLE_MEDIA_TYPE {
        return Err(field("mediaType", BUNDLE_MEDIA_TYPE, &bundle.media_type));
    }
    if bundle.verification_material.x509_certificate_chain.is_some() {
        return Err(SignatureError::UnsupportedKey {
            reason: "the bundle is signed with a certificate chain; only the key method is supported".into(),
        });
    }
    if let Some(found) = bundle.verification_material.public_key.and_then(|p| p.hint)
        && found != hint
    {
        return Err(SignatureError::KeyMismatch {
            expected: hint.to_owned(),
            found,
        });
    }
    let env = bundle.dsse_envelope.ok_or_else(|| SignatureError::Syntax {
        what: "bundle".into(),
        reason: "no dsseEnvelope (message-signature bundles are not model signatures)".into(),
    })?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(field("payloadType", PAYLOAD_TYPE, &env.payload_type));
    }
    let first = env.signatures.first().ok_or_else(|| SignatureError::Syntax {
        what: "DSSE envelope".into(),
        reason: "no signatures".into(),
    })?;
    let payload = STANDARD
        .decode(env.payload.as_bytes())
        .map_err(|e| syntax("DSSE payload base64", &e))?;
    let sig = STANDARD
        .decode(first.sig.as_bytes())
        .map_err(|e| syntax("DSSE signature base64", &e))?;
    verify(&pae(PAYLOAD_TYPE, &payload), &sig)?;
    // Only now, with the signature checked, is the payload worth parsing.
    let statement: Statement = serde_json::from_slice(&payload).map_err(|e| syntax("in-toto statement", &e))?;
    if statement.type_ != STATEMENT_TYPE {
        return Err(field("_type", STATEMENT_TYPE, &statement.type_));
    }
    if statement.predicate_type != PREDICATE_TYPE {
        return Err(field("predicateType", PREDICATE_TYPE, &statement.predicate_type));
    }
    if statement.subject.len() != 1 {
        return Err(field(
            "subject",
            "exactly one subject",
            &statement.subject.len().to_string(),
        ));
    }
    Ok(statement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }
}
