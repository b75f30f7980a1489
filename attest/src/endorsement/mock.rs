//! A mock UVM endorsement signer for local testing: a generated root CA and signing leaf (RSA-2048, the
//! ACI feed's EKU), producing COSE_Sign1 documents in the same layout as Microsoft's. Its root is never
//! Microsoft's, so its endorsements verify only where its DID ([`MockUvmSigner::did`]) is configured as a
//! trusted issuer.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use coset::cbor::value::Value;
use coset::{CoseSign1Builder, HeaderBuilder, TaggedCborSerializable as _, iana};
use der::Encode;
use der::asn1::OctetString;
use sha2::{Digest, Sha256, Sha384};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages};
use x509_cert::spki::{ObjectIdentifier, SubjectPublicKeyInfoOwned};

use super::UvmIssuer;
use super::cose::{HEADER_FEED, HEADER_ISS, HEADER_SIGNING_TIME, HEADER_X5CHAIN};
use crate::error::EvidenceError;
use crate::pki;

/// The EKU Microsoft's ACI UVM signing leaf carries (and the ACI issuer DID requires).
pub const ACI_UVM_EKU: &str = "1.3.6.1.4.1.311.76.59.1.2";

fn mock_err(e: impl std::fmt::Display) -> EvidenceError {
    EvidenceError::Mock(e.to_string())
}

fn ext(oid: &str, critical: bool, value: Vec<u8>) -> Result<Extension, EvidenceError> {
    Ok(Extension {
        extn_id: ObjectIdentifier::new(oid).map_err(mock_err)?,
        critical,
        extn_value: OctetString::new(value).map_err(mock_err)?,
    })
}

/// A generated endorsement signer.
pub struct MockUvmSigner {
    leaf_key: rsa::PrivateKey,
    chain: Vec<Vec<u8>>,
    did: String,
    feed: String,
}

impl std::fmt::Debug for MockUvmSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUvmSigner")
            .field("did", &self.did)
            .field("feed", &self.feed)
            .finish_non_exhaustive()
    }
}

impl MockUvmSigner {
    /// Generate a root CA and a leaf with [`ACI_UVM_EKU`], for `feed`.
    pub fn generate(feed: &str) -> Result<Self, EvidenceError> {
        let root_key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).map_err(mock_err)?;
        let leaf_key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).map_err(mock_err)?;
        let spki = |k: &rsa::PrivateKey| SubjectPublicKeyInfoOwned::from_key(&k.to_public_key()).map_err(mock_err);
        let root_name = pki::name("Mock UVM Root", "cinfer mock UVM signer").map_err(mock_err)?;
        let leaf_name = pki::name("Mock ContainerPlat", "cinfer mock UVM signer").map_err(mock_err)?;
        let ca = BasicConstraints {
            ca: true,
            path_len_constraint: None,
        };
        let ca_ku = KeyUsage(KeyUsages::KeyCertSign | KeyUsages::DigitalSignature);
        let life = Duration::from_secs(10 * 365 * 24 * 3600);
        let root = pki::issue_pss(
            &root_key,
            root_name.clone(),
            root_name.clone(),
            spki(&root_key)?,
            1,
            vec![
                ext("2.5.29.19", true, ca.to_der().map_err(mock_err)?)?,
                ext("2.5.29.15", true, ca_ku.to_der().map_err(mock_err)?)?,
            ],
            life,
        )
        .map_err(mock_err)?;
        let eku = ExtendedKeyUsage(vec![ObjectIdentifier::new(ACI_UVM_EKU).map_err(mock_err)?]);
        let leaf_ku = KeyUsage(KeyUsages::DigitalSignature.into());
        let leaf = pki::issue_pss(
            &root_key,
            root_name,
            leaf_name,
            spki(&leaf_key)?,
            2,
            vec![
                ext("2.5.29.15", true, leaf_ku.to_der().map_err(mock_err)?)?,
                ext("2.5.29.37", false, eku.to_der().map_err(mock_err)?)?,
            ],
            life,
        )
        .map_err(mock_err)?;
        let root_der = root.to_der().map_err(mock_err)?;
        let did = format!(
            "did:x509:0:sha256:{}::eku:{ACI_UVM_EKU}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(&root_der))
        );
        Ok(Self {
            leaf_key,
            chain: vec![leaf.to_der().map_err(mock_err)?, root_der],
            did,
            feed: feed.to_string(),
        })
    }

    /// The issuer DID (pins the generated root).
    pub fn did(&self) -> &str {
        &self.did
    }

    /// The trust entry that accepts this signer's endorsements from `min_svn` on.
    pub fn issuer(&self, min_svn: u64) -> UvmIssuer {
        UvmIssuer {
            did: self.did.clone(),
            feed: self.feed.clone(),
            min_svn,
        }
    }

    /// The x5chain, DER, leaf first.
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// An endorsement of `measurement` at `svn`, signed now.
    pub fn endorse(&self, measurement: &[u8; 48], svn: u64) -> Result<Vec<u8>, EvidenceError> {
        let payload = serde_json::json!({
            "x-ms-sevsnpvm-guestsvn": svn.to_string(),
            "x-ms-sevsnpvm-launchmeasurement": hex::encode(measurement),
        });
        self.sign(
            payload.to_string().as_bytes(),
            &self.chain,
            &self.did,
            SystemTime::now(),
        )
    }

    /// Sign any payload with any x5chain (DER, leaf first) and issuer at a given signing time: for tests
    /// that need malformed or impostor documents with a valid signature.
    pub fn sign(
        &self,
        payload: &[u8],
        x5chain: &[Vec<u8>],
        issuer: &str,
        signing_time: SystemTime,
    ) -> Result<Vec<u8>, EvidenceError> {
        let secs = signing_time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(mock_err)?
            .as_secs();
        let protected = HeaderBuilder::new()
            .algorithm(iana::Algorithm::PS384)
            .content_type("application/json".into())
            .value(
                HEADER_X5CHAIN,
                Value::Array(x5chain.iter().map(|c| Value::Bytes(c.clone())).collect()),
            )
            .text_value(HEADER_ISS.into(), Value::Text(issuer.to_string()))
            .text_value(HEADER_FEED.into(), Value::Text(self.feed.clone()))
            .text_value(
                HEADER_SIGNING_TIME.into(),
                Value::Tag(1, Box::new(Value::Integer(secs.into()))),
            )
            .build();
        let signer = rsa::pss::SigningKey::<Sha384>::new_with_salt_len(self.leaf_key.clone(), 48);
        let mut failed = None;
        let sign1 = CoseSign1Builder::new()
            .protected(protected)
            .payload(payload.to_vec())
            .create_signature(b"", |data| {
                use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _};
                match signer.try_sign_with_rng(&mut getrandom::SysRng, data) {
                    Ok(s) => s.to_vec(),
                    Err(e) => {
                        failed = Some(e.to_string());
                        Vec::new()
                    }
                }
            })
            .build();
        if let Some(e) = failed {
            return Err(mock_err(e));
        }
        sign1.to_tagged_vec().map_err(mock_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endorsement::{UvmTrust, verify_uvm_endorsement};

    #[test]
    fn mock_endorsements_verify_only_under_their_own_did() {
        let signer = MockUvmSigner::generate("Mock-UVM").unwrap();
        let doc = signer.endorse(&[7; 48], 5).unwrap();
        let trust = UvmTrust {
            issuers: vec![signer.issuer(5)],
        };
        let v = verify_uvm_endorsement(&doc, &trust, SystemTime::now()).unwrap();
        assert_eq!((v.payload.guest_svn, v.payload.launch_measurement), (5, [7; 48]));
        let e = verify_uvm_endorsement(&doc, &UvmTrust::default(), SystemTime::now()).unwrap_err();
        assert!(e.to_string().starts_with("endorsement trust:"), "{e}");
        let strict = UvmTrust {
            issuers: vec![signer.issuer(6)],
        };
        let e = verify_uvm_endorsement(&doc, &strict, SystemTime::now()).unwrap_err();
        assert!(e.to_string().starts_with("endorsement svn:"), "{e}");
    }
}
