//! Small X.509 helpers: issue certificates signed with RSASSA-PSS/SHA-384 (the AMD scheme), used by the
//! mock attester (ARK, ASK, VCEK) and for the service's self-signed token-signing certificate.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use sha2::Sha384;
use x509_cert::Certificate;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};
use x509_cert::time::{Time, Validity};

struct FixedProfile {
    issuer: Name,
    subject: Name,
    extensions: Vec<Extension>,
}

impl BuilderProfile for FixedProfile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }
    fn get_subject(&self) -> Name {
        self.subject.clone()
    }
    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        _tbs: &x509_cert::TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(self.extensions.clone())
    }
}

/// `CN=<cn>,O=<org>,OU=Engineering`.
pub(crate) fn name(cn: &str, org: &str) -> Result<Name, der::Error> {
    Name::from_str(&format!("CN={cn},O={org},OU=Engineering"))
}

/// A builder for a certificate valid from `backdate` ago for `lifetime`.
fn builder(
    issuer: Name,
    subject: Name,
    spki: SubjectPublicKeyInfoOwned,
    serial: u32,
    extensions: Vec<Extension>,
    (backdate, lifetime): (Duration, Duration),
) -> Result<CertificateBuilder<FixedProfile>, String> {
    let now = SystemTime::now();
    let nb = Time::try_from(now - backdate).map_err(|e| e.to_string())?;
    let na = Time::try_from(now + lifetime).map_err(|e| e.to_string())?;
    let profile = FixedProfile {
        issuer,
        subject,
        extensions,
    };
    CertificateBuilder::new(profile, SerialNumber::from(serial), Validity::new(nb, na), spki).map_err(|e| e.to_string())
}

/// Issue a certificate signed by `issuer_key` with RSASSA-PSS (SHA-384, MGF1-SHA-384, salt 48), valid
/// from one day ago for `lifetime`.
pub(crate) fn issue_pss(
    issuer_key: &rsa::PrivateKey,
    issuer: Name,
    subject: Name,
    spki: SubjectPublicKeyInfoOwned,
    serial: u32,
    extensions: Vec<Extension>,
    lifetime: Duration,
) -> Result<Certificate, String> {
    let signer = rsa::pss::SigningKey::<Sha384>::new_with_salt_len(issuer_key.clone(), 48);
    let validity = (Duration::from_secs(24 * 3600), lifetime);
    builder(issuer, subject, spki, serial, extensions, validity)?
        .build::<_, rsa::pss::Signature>(&signer)
        .map_err(|e| e.to_string())
}

/// Issue a certificate signed with ECDSA P-384/SHA-384 (the NVIDIA scheme: the mock GPU's chains; tests of
/// X.509 path validation), valid from one hour ago for `lifetime`.
pub(crate) fn issue_p384(
    issuer_key: &p384::ecdsa::SigningKey,
    issuer: Name,
    subject: Name,
    spki: SubjectPublicKeyInfoOwned,
    serial: u32,
    extensions: Vec<Extension>,
    lifetime: Duration,
) -> Result<Certificate, String> {
    let validity = (Duration::from_secs(3600), lifetime);
    builder(issuer, subject, spki, serial, extensions, validity)?
        .build::<_, p384::ecdsa::DerSignature>(issuer_key)
        .map_err(|e| e.to_string())
}
