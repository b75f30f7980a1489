//! X.509 for GPU evidence: the device identity chain (leaf "GSP FMC LF" → "GSP BROM" → provisioner ICA →
//! GH100 identity → NVIDIA Device Identity CA) and the RIM signing chains (L4 signer → L3 → CA → NVIDIA
//! CoRIM signing root).
//!
//! Path validation is rustls-webpki's (signatures, name chaining, CA and path-length constraints, unknown
//! critical extensions refused, validity at the verification time). The trust anchor is a root configured
//! by the caller ([`TrustedRoot`]); it must itself be a self-signed CA certificate, so a leaf given as a
//! root is refused by name (`rim root:` / `gpu root:`) rather than by a confusing path failure.

use std::time::{Duration, SystemTime};

use der::{Decode, Encode};
use rustls::pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

use crate::endorsement::didx509::AnyEku;
use crate::verify::fmt_time;

/// TCG DICE FWID extension (`tcg-dice-TcbInfo`), which NVIDIA's leaf certificates carry.
const OID_TCG_DICE_FWID: &str = "2.23.133.5.4.1";
const OID_BASIC_CONSTRAINTS: &str = "2.5.29.19";
const OID_ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";

/// A parsed certificate with its DER.
#[derive(Clone, Debug)]
pub struct Cert {
    /// DER as received.
    pub der: Vec<u8>,
    /// Parsed form.
    pub parsed: Certificate,
}

impl Cert {
    /// Parse DER.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let parsed = Certificate::from_der(der).map_err(|e| format!("certificate does not parse: {e}"))?;
        Ok(Self {
            der: der.to_vec(),
            parsed,
        })
    }

    /// Subject as text.
    pub fn subject(&self) -> String {
        self.parsed.tbs_certificate().subject().to_string()
    }

    /// The subject's common name.
    pub fn common_name(&self) -> Option<String> {
        let atv = self
            .parsed
            .tbs_certificate()
            .subject()
            .iter()
            .find(|atv| atv.oid.to_string() == "2.5.4.3")?;
        let bytes = atv.value.to_der().ok()?;
        der::asn1::Utf8StringRef::from_der(&bytes)
            .map(|s| s.as_str().to_string())
            .or_else(|_| der::asn1::PrintableStringRef::from_der(&bytes).map(|s| s.as_str().to_string()))
            .ok()
    }

    /// Serial number bytes (big-endian, as encoded).
    pub fn serial(&self) -> &[u8] {
        self.parsed.tbs_certificate().serial_number().as_bytes()
    }

    /// notAfter.
    pub fn not_after(&self) -> SystemTime {
        self.parsed.tbs_certificate().validity().not_after.to_system_time()
    }

    /// SHA-256 of the DER SubjectPublicKeyInfo, hex.
    pub fn spki_sha256(&self) -> String {
        let spki = self
            .parsed
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .unwrap_or_default();
        hex::encode(Sha256::digest(spki))
    }

    /// The last 48 bytes of the TCG DICE FWID extension's value, as NVIDIA's verifier reads it.
    pub fn dice_fwid(&self) -> Option<Vec<u8>> {
        let exts = self.parsed.tbs_certificate().extensions()?;
        let ext = exts.iter().find(|e| e.extn_id.to_string() == OID_TCG_DICE_FWID)?;
        let v = ext.extn_value.as_bytes();
        (v.len() >= 48).then(|| v[v.len() - 48..].to_vec())
    }

    fn is_ca(&self) -> bool {
        let Some(exts) = self.parsed.tbs_certificate().extensions() else {
            return false;
        };
        exts.iter()
            .find(|e| e.extn_id.to_string() == OID_BASIC_CONSTRAINTS)
            .and_then(|e| x509_cert::ext::pkix::BasicConstraints::from_der(e.extn_value.as_bytes()).ok())
            .is_some_and(|bc| bc.ca)
    }

    /// Verify an ECDSA P-384/SHA-384 signature (`r ‖ s`, 96 bytes) over `message` with this certificate's key.
    pub fn verify_p384(&self, message: &[u8], signature_rs: &[u8]) -> Result<(), String> {
        use p384::ecdsa::signature::Verifier as _;
        let key = self
            .parsed
            .tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes();
        let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(key)
            .map_err(|_| format!("the key of {:?} is not ECDSA P-384", self.subject()))?;
        let sig = p384::ecdsa::Signature::from_slice(signature_rs).map_err(|_| {
            format!(
                "the signature ({} bytes) is not an ECDSA P-384 r ‖ s",
                signature_rs.len()
            )
        })?;
        vk.verify(message, &sig).map_err(|_| {
            format!(
                "ECDSA P-384/SHA-384 does not verify with the key of {:?}",
                self.subject()
            )
        })
    }

    /// Whether `self` is signed by `issuer`'s key (ECDSA P-384/SHA-384, the only scheme NVIDIA uses).
    pub fn signed_by(&self, issuer: &Self) -> bool {
        use p384::ecdsa::signature::Verifier as _;
        if self.parsed.signature_algorithm().oid.to_string() != OID_ECDSA_SHA384 {
            return false;
        }
        let Ok(tbs) = self.parsed.tbs_certificate().to_der() else {
            return false;
        };
        let key_bytes = issuer
            .parsed
            .tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes();
        let Ok(vk) = p384::ecdsa::VerifyingKey::from_sec1_bytes(key_bytes) else {
            return false;
        };
        let Some(sig) = self.parsed.signature().as_bytes() else {
            return false;
        };
        let Ok(sig) = p384::ecdsa::DerSignature::try_from(sig) else {
            return false;
        };
        vk.verify(&tbs, &sig).is_ok()
    }
}

/// Parse a PEM chain (leaf first), as `nvidia-smi`/NVML and NVIDIA's samples write it.
pub fn parse_pem_chain(pem: &[u8]) -> Result<Vec<Cert>, String> {
    let certs = Certificate::load_pem_chain(pem).map_err(|e| format!("PEM chain does not parse: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the chain".into());
    }
    certs
        .into_iter()
        .map(|c| {
            let der = c.to_der().map_err(|e| e.to_string())?;
            Ok(Cert { der, parsed: c })
        })
        .collect()
}

/// A configured trust anchor: a self-signed CA certificate.
#[derive(Clone, Debug)]
pub struct TrustedRoot {
    /// The certificate.
    pub cert: Cert,
}

impl TrustedRoot {
    /// Accept `pem` (one certificate) as a root if it is a self-signed ECDSA P-384 CA certificate.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let mut certs = parse_pem_chain(pem)?;
        if certs.len() != 1 {
            return Err(format!("a root file holds one certificate, this one {}", certs.len()));
        }
        let cert = certs.remove(0);
        let tbs = cert.parsed.tbs_certificate();
        if tbs.subject() != tbs.issuer() || !cert.signed_by(&cert) {
            return Err(format!(
                "{:?} is not self-signed, so it cannot be a root",
                cert.subject()
            ));
        }
        if !cert.is_ca() {
            return Err(format!("{:?} is not a CA certificate", cert.subject()));
        }
        Ok(Self { cert })
    }
}

/// Why a path did not validate.
#[derive(Debug)]
pub enum PathError {
    /// A certificate is outside its validity at the time.
    Expiry(String),
    /// Anything else.
    Invalid(String),
}

/// Validate `leaf` through `intermediates` to `root` at `at`.
pub fn validate_path(leaf: &Cert, intermediates: &[Cert], root: &TrustedRoot, at: SystemTime) -> Result<(), PathError> {
    let leaf_der = CertificateDer::from(leaf.der.as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| PathError::Invalid(format!("leaf: {e}")))?;
    let root_der = CertificateDer::from(root.cert.der.as_slice());
    let anchor = webpki::anchor_from_trusted_cert(&root_der).map_err(|e| PathError::Invalid(format!("root: {e}")))?;
    let inter: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.der.as_slice()))
        .collect();
    let anchors = [anchor];
    let time = UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO));
    match ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &inter,
        time,
        AnyEku,
        None,
        None,
    ) {
        Ok(_) => Ok(()),
        Err(e @ (webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. })) => Err(PathError::Expiry(
            format!("{} at {}: {e}", expiry_culprit(leaf, intermediates, at), fmt_time(at)),
        )),
        Err(e) => Err(PathError::Invalid(format!(
            "path from {:?} at {}: {e}",
            leaf.subject(),
            fmt_time(at)
        ))),
    }
}

/// Name the first certificate outside its validity window at `at` (webpki does not say which).
fn expiry_culprit(leaf: &Cert, intermediates: &[Cert], at: SystemTime) -> String {
    std::iter::once(leaf)
        .chain(intermediates)
        .find_map(|c| {
            let v = c.parsed.tbs_certificate().validity();
            let (nb, na) = (v.not_before.to_system_time(), v.not_after.to_system_time());
            (at < nb || at > na).then(|| format!("{:?} (valid {} to {})", c.subject(), fmt_time(nb), fmt_time(na)))
        })
        .unwrap_or_else(|| "a certificate".into())
}

/// A big-endian unsigned integer in decimal (NVIDIA's `ueid` is the leaf serial so printed).
pub fn decimal(be: &[u8]) -> String {
    let mut digits: Vec<u8> = Vec::new();
    let mut n: Vec<u8> = be.iter().copied().skip_while(|b| *b == 0).collect();
    while !n.is_empty() {
        let mut rem: u32 = 0;
        let mut q = Vec::with_capacity(n.len());
        for b in &n {
            let cur = rem * 256 + u32::from(*b);
            let d = (cur / 10) as u8;
            rem = cur % 10;
            if !(q.is_empty() && d == 0) {
                q.push(d);
            }
        }
        digits.push(b'0' + rem as u8);
        n = q;
    }
    if digits.is_empty() {
        return "0".into();
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_of_big_serials() {
        assert_eq!(decimal(&[]), "0");
        assert_eq!(decimal(&[0, 0]), "0");
        assert_eq!(decimal(&[1, 0]), "256");
        assert_eq!(
            decimal(&hex::decode("53C22BA15E5D68088282DA074ED9FB37AA585771").unwrap()),
            "478176379286082186618948445787393647364802107249"
        );
    }
}
