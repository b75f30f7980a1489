//! UVM endorsements: Microsoft's signed statement of which launch measurement (and guest SVN) belongs to a
//! utility VM image it ships. On ACI the host puts it next to the evidence (`reference-info-base64` in the
//! security-context directory); MAA receives it in the SevSnpVm request (`Endorsements.Uvm[0]`) and sets
//! `x-ms-compliance-status: azure-compliant-uvm` when it holds for the report.
//!
//! [`verify_uvm_endorsement`] checks, in this order, each failure naming its check:
//!
//! 1. `endorsement parse:` the COSE_Sign1 and its protected header ([`cose`]);
//! 2. `endorsement time:` the protected `signingtime` is not after the verification time;
//! 3. `endorsement chain:` / `endorsement issuer:` the `x5chain` resolves the `iss` did:x509 identifier
//!    ([`didx509`]): a valid path at the signing time to a CA with the DID's fingerprint, leaf predicates;
//! 4. `endorsement signature:` the leaf's key signed the Sig_structure (protected header as received and
//!    payload); `x5t`, when present, names the leaf;
//! 5. `endorsement trust:` the (`iss`, `feed`) pair is configured in [`UvmTrust`];
//! 6. `endorsement parse: payload` the JSON payload, then `endorsement svn:` its SVN is at least the
//!    configured minimum for that feed.
//!
//! The measurement is compared with a report separately ([`VerifiedUvmEndorsement::check_measurement`],
//! `endorsement measurement:`), since the endorsement is verified before the report it travels with.
//!
//! **Time.** The chain is validated at the endorsement's signing time, not at the verification time: the
//! feed's leaf certificates live one year (the real ACI one: 2023-01-05 .. 2024-01-03) while a UVM image
//! and its endorsement stay in use longer. The did:x509 specification allows exactly this ("applications
//! handling signed documents may choose to use the signing time instead", when it is integrity-protected,
//! as the protected `signingtime` is); microsoft/TEE-Attestation-Verification validates the chain at the
//! signing time too, and Microsoft's CCF ignores time altogether when resolving these DIDs
//! (`didx509::resolve_jwk(pem_chain, did, true /* ignore time */)`). The RFC 3161 timestamp in the
//! unprotected header, which would make the signing time independent of the signer, is not verified.
//!
//! **Guest SVN.** The endorsed `x-ms-sevsnpvm-guestsvn` is the UVM's security version in its feed. It is
//! not the report's GUEST_SVN field (which the SNP firmware copies from the ID block the image was
//! launched with) and is not compared with it: Microsoft's verifiers of the same documents compare it with
//! a configured minimum per (issuer, feed) — CCF's `uvm_roots_of_trust` (`svn` "0" for both of its
//! default feeds), TEE-Attestation-Verification's `minimum_svn` — which is what [`UvmIssuer::min_svn`]
//! does. See `attest/README.md` for the sources and what could not be established.

pub mod cose;
pub mod didx509;
pub mod mock;

use std::time::{Duration, SystemTime};

use der::Encode;
use rsa::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256, Sha384, Sha512};
use subtle::ConstantTimeEq;

pub use cose::{SignatureAlg, UvmEndorsementDoc, UvmPayload};
pub use didx509::DidX509;

use crate::error::EndorsementError;
use crate::verify::fmt_time;

/// Issuer of Microsoft's ACI UVM endorsements: a did:x509 identifier pinning the SHA-256 of "Microsoft
/// Supply Chain RSA Root CA 2022" and the EKU 1.3.6.1.4.1.311.76.59.1.2 on the signing leaf. Source: the
/// protected header of the production ACI endorsement in `tests/data/aci/`, and CCF's
/// `uvm_roots_of_trust` (microsoft/CCF `src/node/uvm_endorsements.h`), which lists the same pair.
pub const ACI_UVM_ISSUER: &str =
    "did:x509:0:sha256:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s::eku:1.3.6.1.4.1.311.76.59.1.2";
/// Feed of Microsoft's ACI UVM endorsements (same sources as [`ACI_UVM_ISSUER`]). CCF also lists
/// `ConfAKS-AMD-UVM` (EKU .1.5) for AKS confidential pods; it is not trusted by default here.
pub const ACI_UVM_FEED: &str = "ContainerPlat-AMD-UVM";

/// One trusted source of UVM endorsements.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UvmIssuer {
    /// The issuer's did:x509 identifier (compared exactly with the endorsement's `iss`).
    pub did: String,
    /// The feed (compared exactly with the endorsement's `feed`).
    pub feed: String,
    /// Smallest endorsed guest SVN accepted from this feed (anti-rollback; 0 accepts all).
    #[serde(default)]
    pub min_svn: u64,
}

impl UvmIssuer {
    /// Parse `DID,FEED[,MIN_SVN]` (the CLI form; a did:x509 never contains a comma).
    pub fn parse(spec: &str) -> Result<Self, EndorsementError> {
        let bad = || EndorsementError::Trust {
            detail: format!("{spec:?} is not DID,FEED[,MIN_SVN]"),
        };
        let mut it = spec.split(',');
        let (did, feed) = (it.next().ok_or_else(bad)?, it.next().ok_or_else(bad)?);
        let min_svn = match it.next() {
            Some(n) => n.trim().parse().map_err(|_| bad())?,
            None => 0,
        };
        if it.next().is_some() || feed.is_empty() {
            return Err(bad());
        }
        DidX509::parse(did)?;
        Ok(Self {
            did: did.to_string(),
            feed: feed.to_string(),
            min_svn,
        })
    }
}

/// The UVM endorsement sources a verifier trusts. Default: Microsoft's ACI feed ([`ACI_UVM_ISSUER`],
/// [`ACI_UVM_FEED`], minimum SVN 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UvmTrust {
    /// Trusted (issuer, feed, minimum SVN) entries.
    pub issuers: Vec<UvmIssuer>,
}

impl Default for UvmTrust {
    fn default() -> Self {
        Self::microsoft_aci()
    }
}

impl UvmTrust {
    /// Microsoft's ACI UVM feed only.
    pub fn microsoft_aci() -> Self {
        Self {
            issuers: vec![UvmIssuer {
                did: ACI_UVM_ISSUER.to_string(),
                feed: ACI_UVM_FEED.to_string(),
                min_svn: 0,
            }],
        }
    }

    /// Trust no endorsement.
    pub fn none() -> Self {
        Self { issuers: Vec::new() }
    }
}

/// An endorsement whose signature, issuer and trust held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedUvmEndorsement {
    /// The issuer DID.
    pub issuer: String,
    /// The feed.
    pub feed: String,
    /// Signing time from the protected header.
    pub signing_time: Option<SystemTime>,
    /// The endorsed values.
    pub payload: UvmPayload,
}

impl VerifiedUvmEndorsement {
    /// The endorsed launch measurement must equal the report's (constant time).
    pub fn check_measurement(&self, report_measurement: &[u8]) -> Result<(), EndorsementError> {
        if bool::from(self.payload.launch_measurement.as_slice().ct_eq(report_measurement)) {
            Ok(())
        } else {
            Err(EndorsementError::Measurement {
                endorsed: hex::encode(self.payload.launch_measurement),
                report: hex::encode(report_measurement),
            })
        }
    }
}

fn verify_signature(doc: &UvmEndorsementDoc, leaf: &x509_cert::Certificate) -> Result<(), EndorsementError> {
    let bad = |detail: &str| EndorsementError::Signature {
        detail: detail.to_string(),
    };
    let spki = leaf
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|_| bad("leaf public key does not encode"))?;
    let data = doc.signed_bytes();
    let sig = doc.signature();
    use rsa::signature::Verifier as _;
    let ok = match doc.alg {
        SignatureAlg::Es384 => {
            let vk = p384::ecdsa::VerifyingKey::from_public_key_der(&spki)
                .map_err(|_| bad("ES384 needs a P-384 leaf key"))?;
            let s = p384::ecdsa::Signature::from_slice(sig).map_err(|_| bad("ES384 signature is not r ‖ s"))?;
            vk.verify(&data, &s).is_ok()
        }
        SignatureAlg::Ps256 | SignatureAlg::Ps384 | SignatureAlg::Ps512 => {
            let key = rsa::PublicKey::from_public_key_der(&spki).map_err(|_| bad("PS* needs an RSA leaf key"))?;
            let s = rsa::pss::Signature::try_from(sig).map_err(|_| bad("malformed RSASSA-PSS signature"))?;
            // RFC 8230 §2: the salt is as long as the hash.
            match doc.alg {
                SignatureAlg::Ps256 => rsa::pss::VerifyingKey::<Sha256>::new_with_salt_len(key, 32)
                    .verify(&data, &s)
                    .is_ok(),
                SignatureAlg::Ps512 => rsa::pss::VerifyingKey::<Sha512>::new_with_salt_len(key, 64)
                    .verify(&data, &s)
                    .is_ok(),
                _ => rsa::pss::VerifyingKey::<Sha384>::new_with_salt_len(key, 48)
                    .verify(&data, &s)
                    .is_ok(),
            }
        }
    };
    if ok {
        Ok(())
    } else {
        Err(bad(
            "the x5chain leaf's signature over the protected header and payload is invalid",
        ))
    }
}

/// Verify a UVM endorsement (COSE_Sign1 bytes) against `trust` at `at`. See the module docs for the checks.
pub fn verify_uvm_endorsement(
    bytes: &[u8],
    trust: &UvmTrust,
    at: SystemTime,
) -> Result<VerifiedUvmEndorsement, EndorsementError> {
    let doc = UvmEndorsementDoc::parse(bytes)?;
    let signing_time = doc.signing_time.map(|s| {
        if s >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(s.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_secs(s.unsigned_abs())
        }
    });
    if let Some(t) = signing_time
        && t > at
    {
        return Err(EndorsementError::Time {
            signed: fmt_time(t),
            at: fmt_time(at),
        });
    }
    let did = DidX509::parse(&doc.issuer)?;
    let leaf = didx509::resolve(&did, &doc.x5chain, signing_time.unwrap_or(at))?;
    verify_signature(&doc, &leaf)?;
    if let Some(x5t) = doc.x5t_sha256
        && Sha256::digest(&doc.x5chain[0]).as_slice() != x5t
    {
        return Err(EndorsementError::Parse {
            detail: "x5t does not match the x5chain leaf".into(),
        });
    }
    let entry = trust
        .issuers
        .iter()
        .find(|i| i.did == doc.issuer && i.feed == doc.feed)
        .ok_or_else(|| EndorsementError::Trust {
            detail: format!(
                "issuer {:?} with feed {:?} is not a trusted UVM endorsement source",
                doc.issuer, doc.feed
            ),
        })?;
    let payload = UvmPayload::from_json(doc.payload())?;
    if payload.guest_svn < entry.min_svn {
        return Err(EndorsementError::Svn {
            svn: payload.guest_svn,
            minimum: entry.min_svn,
            feed: doc.feed,
        });
    }
    Ok(VerifiedUvmEndorsement {
        issuer: doc.issuer,
        feed: doc.feed,
        signing_time,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &[u8] = include_bytes!("../tests/data/aci/body.uvm_reference_info.bin");

    #[test]
    fn real_aci_endorsement_verifies_now_and_not_before_it_was_signed() {
        let v = verify_uvm_endorsement(REAL, &UvmTrust::default(), SystemTime::now()).unwrap();
        assert_eq!((v.feed.as_str(), v.payload.guest_svn), (ACI_UVM_FEED, 22));
        let before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_675_834_942);
        let e = verify_uvm_endorsement(REAL, &UvmTrust::default(), before).unwrap_err();
        assert!(e.to_string().starts_with("endorsement time:"), "{e}");
        let e = verify_uvm_endorsement(REAL, &UvmTrust::none(), SystemTime::now()).unwrap_err();
        assert!(e.to_string().starts_with("endorsement trust:"), "{e}");
    }

    #[test]
    fn issuer_specs_parse() {
        let i = UvmIssuer::parse(&format!("{ACI_UVM_ISSUER},{ACI_UVM_FEED},22")).unwrap();
        assert_eq!(i.min_svn, 22);
        assert_eq!(
            UvmIssuer::parse(&format!("{ACI_UVM_ISSUER},{ACI_UVM_FEED}"))
                .unwrap()
                .min_svn,
            0
        );
        for bad in [
            ACI_UVM_ISSUER.to_string(),
            format!("{ACI_UVM_ISSUER},"),
            format!("{ACI_UVM_ISSUER},f,x"),
            format!("{ACI_UVM_ISSUER},f,1,2"),
            "did:web:x,f".to_string(),
        ] {
            assert!(UvmIssuer::parse(&bad).is_err(), "{bad}");
        }
    }
}
