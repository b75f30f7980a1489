//! Verification of SEV-SNP evidence: VCEK → ASK → ARK chain to a pinned root, report signature, TCB,
//! VMPL, debug policy and the report_data binding.
//!
//! The pipeline is linear and each step fails with a [`VerifyError`] whose text starts with the name of the
//! check (`root:`, `chain:`, `report signature:`, `tcb:`, `vmpl:`, `debug:`, `report_data:` ...):
//!
//! 1. parse the report (exactly 1184 bytes) and the PEM chain (VCEK, ASK, ARK);
//! 2. the ARK's public key must be a pinned AMD root (Milan, Genoa, Turin) or a configured mock root;
//! 3. ARK self-signature, ARK→ASK and ASK→VCEK (RSASSA-PSS, SHA-384, salt 48), validity at `at`;
//! 4. ECDSA P-384/SHA-384 by the VCEK over the received `raw[0..0x2a0]`;
//! 5. each TCB component in the VCEK extensions equals the reported TCB; hwID equals chip_id;
//! 6. the [`Appraisal`]: report version floor (`report version:`), minimum TCB of the product
//!    (`tcb minimum:`), no migration agent (`migration agent:`);
//! 7. VMPL 0, debug bit clear (unless allowed), report_data equal to the expected 64 bytes (constant time,
//!    no padding or truncation), optional host_data/measurement pins.

use std::time::SystemTime;

use der::{Decode, DecodePem, Encode};
use rsa::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256, Sha384};
use subtle::ConstantTimeEq;
use x509_cert::Certificate;

use crate::appraisal::Appraisal;
use crate::error::VerifyError;
use crate::report::{AttestationReport, Generation, TcbVersion};

const OID_RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_AMD_PRODUCT_NAME: &str = "1.3.6.1.4.1.3704.1.2";
const OID_AMD_HWID: &str = "1.3.6.1.4.1.3704.1.4";
/// TCB component OIDs under 1.3.6.1.4.1.3704.1.3.
const OID_AMD_TCB: [(&str, &str); 5] = [
    ("1.3.6.1.4.1.3704.1.3.1", "bootloader"),
    ("1.3.6.1.4.1.3704.1.3.2", "tee"),
    ("1.3.6.1.4.1.3704.1.3.3", "snp"),
    ("1.3.6.1.4.1.3704.1.3.8", "microcode"),
    ("1.3.6.1.4.1.3704.1.3.9", "fmc"),
];

const MILAN_ARK: &str = include_str!("roots/milan-ark.pem");
const GENOA_ARK: &str = include_str!("roots/genoa-ark.pem");
const TURIN_ARK: &str = include_str!("roots/turin-ark.pem");
const MILAN_ASK: &str = include_str!("roots/milan-ask.pem");
const GENOA_ASK: &str = include_str!("roots/genoa-ask.pem");
const TURIN_ASK: &str = include_str!("roots/turin-ask.pem");

/// The pinned AMD ASK+ARK PEM for a generation (what AMD KDS serves as `cert_chain`).
pub fn amd_cert_chain_pem(generation: Generation) -> String {
    match generation {
        Generation::Milan => format!("{MILAN_ASK}{MILAN_ARK}"),
        Generation::Genoa => format!("{GENOA_ASK}{GENOA_ARK}"),
        Generation::Turin => format!("{TURIN_ASK}{TURIN_ARK}"),
    }
}

/// Which root a chain ended in.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub enum RootKind {
    /// A pinned AMD ARK.
    Amd(Generation),
    /// A configured mock root, by SHA-256 of its SubjectPublicKeyInfo (hex).
    Mock(String),
}

impl RootKind {
    /// Short label used in the `x-cinfer-root` claim: `amd-milan`, `mock:<fingerprint>`.
    pub fn label(&self) -> String {
        match self {
            Self::Amd(g) => format!("amd-{}", g.name().to_ascii_lowercase()),
            Self::Mock(fp) => format!("mock:{fp}"),
        }
    }
}

#[derive(Clone, Debug)]
struct TrustedRoot {
    kind: RootKind,
    spki_sha256: [u8; 32],
}

/// The set of ARKs a verifier accepts. The default holds the pinned AMD roots only; a mock root must be
/// added explicitly with [`TrustStore::add_mock_root`], so mock evidence never verifies by accident.
#[derive(Clone, Debug)]
pub struct TrustStore {
    roots: Vec<TrustedRoot>,
}

impl Default for TrustStore {
    fn default() -> Self {
        Self::amd()
    }
}

fn spki_fingerprint(cert: &Certificate) -> Result<[u8; 32], der::Error> {
    let der = cert.tbs_certificate().subject_public_key_info().to_der()?;
    Ok(Sha256::digest(&der).into())
}

impl TrustStore {
    /// Pinned AMD roots for Milan, Genoa and Turin.
    pub fn amd() -> Self {
        let mut roots = Vec::new();
        for (generation, pem) in [
            (Generation::Milan, MILAN_ARK),
            (Generation::Genoa, GENOA_ARK),
            (Generation::Turin, TURIN_ARK),
        ] {
            // INVARIANT: the pinned PEM files are compiled in and checked by tests.
            if let Ok(cert) = Certificate::from_pem(pem.as_bytes())
                && let Ok(fp) = spki_fingerprint(&cert)
            {
                roots.push(TrustedRoot {
                    kind: RootKind::Amd(generation),
                    spki_sha256: fp,
                });
            }
        }
        Self { roots }
    }

    /// No roots at all (add mock roots explicitly).
    pub fn empty() -> Self {
        Self { roots: Vec::new() }
    }

    /// Trust a mock ARK (PEM). Returns its fingerprint (hex of SHA-256 over the SubjectPublicKeyInfo).
    pub fn add_mock_root(&mut self, ark_pem: &[u8]) -> Result<String, VerifyError> {
        let cert = Certificate::from_pem(ark_pem).map_err(|e| VerifyError::CertParse {
            which: "mock root",
            detail: e.to_string(),
        })?;
        let fp = spki_fingerprint(&cert).map_err(|e| VerifyError::CertParse {
            which: "mock root",
            detail: e.to_string(),
        })?;
        let hexfp = hex::encode(fp);
        self.roots.push(TrustedRoot {
            kind: RootKind::Mock(hexfp.clone()),
            spki_sha256: fp,
        });
        Ok(hexfp)
    }

    /// Number of trusted roots.
    pub fn len(&self) -> usize {
        self.roots.len()
    }

    /// True when no root is trusted.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    fn find(&self, ark: &Certificate) -> Option<&TrustedRoot> {
        let fp = spki_fingerprint(ark).ok()?;
        self.roots.iter().find(|r| r.spki_sha256.ct_eq(&fp).into())
    }
}

/// What must hold besides the chain and signature.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Time at which certificate validity is checked.
    pub at: SystemTime,
    /// Accept guests whose policy allows debugging (never in production).
    pub allow_debug: bool,
    /// Exact expected report_data (64 bytes). `None` skips the binding check (the CLI's `verify-report`
    /// without `--report-data`); the service always sets it.
    pub expected_report_data: Option<[u8; 64]>,
    /// Pin host_data.
    pub expected_host_data: Option<[u8; 32]>,
    /// Pin the launch measurement.
    pub expected_measurement: Option<[u8; 48]>,
    /// Minimum TCB per product, report version floor, migration agents (default: AMD-SB-3019 floors, report
    /// version 2, no migration agent).
    pub appraisal: Appraisal,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            at: SystemTime::now(),
            allow_debug: false,
            expected_report_data: None,
            expected_host_data: None,
            expected_measurement: None,
            appraisal: Appraisal::default(),
        }
    }
}

/// A report that passed every check.
#[derive(Clone, Debug)]
pub struct VerifiedReport {
    /// The report.
    pub report: AttestationReport,
    /// Processor generation (from the VCEK product name, else the root).
    pub generation: Generation,
    /// The root the chain ended in.
    pub root: RootKind,
    /// The reported TCB, decoded for the generation.
    pub tcb: TcbVersion,
}

/// A parsed VCEK/ASK/ARK chain.
#[derive(Clone, Debug)]
pub struct CertChain {
    /// Versioned chip endorsement key certificate (signs reports).
    pub vcek: Certificate,
    /// AMD SEV key (signs the VCEK).
    pub ask: Certificate,
    /// AMD root key (self-signed).
    pub ark: Certificate,
}

impl CertChain {
    /// Parse PEM text holding VCEK, ASK and ARK in this order (the MAA `VcekCertChain` and THIM
    /// `vcekCert + certificateChain` order).
    pub fn from_pem(pem: &[u8]) -> Result<Self, VerifyError> {
        let certs = Certificate::load_pem_chain(pem).map_err(|e| VerifyError::CertParse {
            which: "PEM chain",
            detail: e.to_string(),
        })?;
        if certs.len() != 3 {
            return Err(VerifyError::ChainLength { count: certs.len() });
        }
        let mut it = certs.into_iter();
        match (it.next(), it.next(), it.next()) {
            (Some(vcek), Some(ask), Some(ark)) => Ok(Self { vcek, ask, ark }),
            _ => Err(VerifyError::ChainLength { count: 0 }),
        }
    }
}

fn verify_pss(issuer: &Certificate, subject: &Certificate, link: &'static str) -> Result<(), VerifyError> {
    let tbs = subject.tbs_certificate();
    let ok = tbs.signature().oid == subject.signature_algorithm().oid
        && tbs.to_der().is_ok_and(|tbs_der| {
            pss_sha384_verifies(
                issuer,
                &subject.signature_algorithm().oid,
                subject.signature().as_bytes(),
                &tbs_der,
            )
        });
    if ok {
        Ok(())
    } else {
        Err(VerifyError::ChainSignature { link })
    }
}

/// Whether `issuer`'s RSA key made `signature` (RSASSA-PSS, SHA-384, salt 48: AMD's scheme for its
/// certificates and CRLs) over `tbs_der`, the signature algorithm being `alg`.
pub(crate) fn pss_sha384_verifies(
    issuer: &Certificate,
    alg: &der::oid::ObjectIdentifier,
    signature: Option<&[u8]>,
    tbs_der: &[u8],
) -> bool {
    if alg.to_string() != OID_RSASSA_PSS {
        return false;
    }
    let Ok(spki) = issuer.tbs_certificate().subject_public_key_info().to_der() else {
        return false;
    };
    let Ok(key) = rsa::PublicKey::from_public_key_der(&spki) else {
        return false;
    };
    let vk = rsa::pss::VerifyingKey::<Sha384>::new_with_salt_len(key, 48);
    let Some(sig) = signature.and_then(|s| rsa::pss::Signature::try_from(s).ok()) else {
        return false;
    };
    use rsa::signature::Verifier as _;
    vk.verify(tbs_der, &sig).is_ok()
}

/// RFC 3339 text of a time (for error messages).
pub(crate) fn fmt_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

fn check_validity(cert: &Certificate, which: &'static str, at: SystemTime) -> Result<(), VerifyError> {
    let v = cert.tbs_certificate().validity();
    let nb = v.not_before.to_system_time();
    let na = v.not_after.to_system_time();
    if at < nb || at > na {
        return Err(VerifyError::CertValidity {
            which,
            at: fmt_time(at),
            not_before: fmt_time(nb),
            not_after: fmt_time(na),
        });
    }
    Ok(())
}

/// AMD extensions of a VCEK: TCB components, product name and hwID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VcekExtensions {
    /// Product name, e.g. `Milan-B0`.
    pub product_name: Option<String>,
    /// hwID (chip ID), absent on VLEKs.
    pub hwid: Option<Vec<u8>>,
    /// TCB components by name (`bootloader`, `tee`, `snp`, `microcode`, `fmc`).
    pub tcb: Vec<(&'static str, u8)>,
}

impl VcekExtensions {
    /// The certified TCB as a [`TcbVersion`] (components absent from the certificate are 0).
    pub fn tcb_version(&self) -> TcbVersion {
        let get = |n: &str| self.tcb.iter().find(|(k, _)| *k == n).map(|(_, v)| *v).unwrap_or(0);
        TcbVersion {
            bootloader: get("bootloader"),
            tee: get("tee"),
            snp: get("snp"),
            microcode: get("microcode"),
            fmc: get("fmc"),
        }
    }
}

/// Decode the AMD extensions of a VCEK. SPL values are DER INTEGERs in 0..=255 (`02 01 xx` or
/// `02 02 00 xx`); anything else is an error.
pub fn vcek_extensions(vcek: &Certificate) -> Result<VcekExtensions, VerifyError> {
    let mut out = VcekExtensions::default();
    let Some(exts) = vcek.tbs_certificate().extensions() else {
        return Ok(out);
    };
    for ext in exts {
        let oid = ext.extn_id.to_string();
        let value = ext.extn_value.as_bytes();
        let bad = |detail: &str| VerifyError::VcekExtension {
            oid: oid.clone(),
            detail: detail.to_string(),
        };
        if let Some((_, name)) = OID_AMD_TCB.iter().find(|(o, _)| *o == oid) {
            let v = u64::from_der(value).map_err(|_| bad("is not a DER INTEGER"))?;
            let v = u8::try_from(v).map_err(|_| bad("is out of range 0..=255"))?;
            out.tcb.push((name, v));
        } else if oid == OID_AMD_PRODUCT_NAME {
            let s = der::asn1::Ia5StringRef::from_der(value)
                .map(|s| s.as_str().to_string())
                .or_else(|_| der::asn1::Utf8StringRef::from_der(value).map(|s| s.as_str().to_string()))
                .map_err(|_| bad("is not a string"))?;
            out.product_name = Some(s);
        } else if oid == OID_AMD_HWID {
            let raw = match der::asn1::OctetString::from_der(value) {
                Ok(o) => o.as_bytes().to_vec(),
                Err(_) => value.to_vec(),
            };
            out.hwid = Some(raw);
        }
    }
    Ok(out)
}

/// Verify a report against a chain. See the module docs for the order of checks.
pub fn verify_report(
    report_bytes: &[u8],
    chain: &CertChain,
    trust: &TrustStore,
    opts: &VerifyOptions,
) -> Result<VerifiedReport, VerifyError> {
    let report = AttestationReport::from_bytes(report_bytes)?;

    // Root.
    let root = trust.find(&chain.ark).ok_or_else(|| VerifyError::UnknownRoot {
        subject: chain.ark.tbs_certificate().subject().to_string(),
        fingerprint: spki_fingerprint(&chain.ark).map(hex::encode).unwrap_or_default(),
    })?;

    // Chain.
    verify_pss(&chain.ark, &chain.ark, "ARK self-signature")?;
    verify_pss(&chain.ark, &chain.ask, "ARK→ASK")?;
    verify_pss(&chain.ask, &chain.vcek, "ASK→VCEK")?;
    check_validity(&chain.ark, "ARK", opts.at)?;
    check_validity(&chain.ask, "ASK", opts.at)?;
    check_validity(&chain.vcek, "VCEK", opts.at)?;

    // Report signature over the received bytes.
    let (r, s) = report.signature_rs()?;
    let sig = p384::ecdsa::Signature::from_scalars(r, s).map_err(|e| VerifyError::ReportSignature {
        detail: format!("invalid r/s: {e}"),
    })?;
    let spki = chain
        .vcek
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| VerifyError::CertParse {
            which: "VCEK",
            detail: e.to_string(),
        })?;
    let vk = p384::ecdsa::VerifyingKey::from_public_key_der(&spki).map_err(|e| VerifyError::CertParse {
        which: "VCEK public key",
        detail: e.to_string(),
    })?;
    use p384::ecdsa::signature::Verifier as _;
    vk.verify(report.signed_bytes(), &sig)
        .map_err(|_| VerifyError::ReportSignature {
            detail: "ECDSA P-384 signature by the VCEK is invalid".into(),
        })?;

    // TCB and chip ID.
    let ext = vcek_extensions(&chain.vcek)?;
    let generation = ext
        .product_name
        .as_deref()
        .and_then(Generation::from_product_name)
        .or(match root.kind {
            RootKind::Amd(g) => Some(g),
            RootKind::Mock(_) => None,
        })
        .or_else(|| report.generation_hint())
        .unwrap_or(Generation::Milan);
    let reported = TcbVersion::decode(report.reported_tcb_raw(), generation);
    for (name, certified) in &ext.tcb {
        let rep = match *name {
            "bootloader" => reported.bootloader,
            "tee" => reported.tee,
            "snp" => reported.snp,
            "microcode" => reported.microcode,
            "fmc" => reported.fmc,
            _ => continue,
        };
        if rep != *certified {
            return Err(VerifyError::Tcb {
                component: name,
                reported: rep,
                certified: *certified,
            });
        }
    }
    if ext.tcb.is_empty() {
        return Err(VerifyError::VcekExtension {
            oid: "1.3.6.1.4.1.3704.1.3".into(),
            detail: "is missing (no TCB in the VCEK)".into(),
        });
    }
    if let Some(hwid) = &ext.hwid
        && !bool::from(hwid.as_slice().ct_eq(report.chip_id()))
    {
        return Err(VerifyError::ChipId);
    }

    // Version, minimum TCB, migration agent.
    opts.appraisal.check(&report, generation, &reported)?;

    // Guest checks.
    if report.vmpl() != 0 {
        return Err(VerifyError::Vmpl { vmpl: report.vmpl() });
    }
    if report.is_debuggable() && !opts.allow_debug {
        return Err(VerifyError::Debuggable {
            policy: report.policy(),
        });
    }
    if let Some(expected) = &opts.expected_report_data
        && !bool::from(expected.ct_eq(report.report_data()))
    {
        return Err(VerifyError::ReportData {
            actual: hex::encode(report.report_data()),
            expected: hex::encode(expected),
        });
    }
    if let Some(expected) = &opts.expected_host_data
        && !bool::from(expected.as_slice().ct_eq(report.host_data()))
    {
        return Err(VerifyError::HostData {
            actual: hex::encode(report.host_data()),
            expected: hex::encode(expected),
        });
    }
    if let Some(expected) = &opts.expected_measurement
        && !bool::from(expected.as_slice().ct_eq(report.measurement()))
    {
        return Err(VerifyError::Measurement {
            actual: hex::encode(report.measurement()),
            expected: hex::encode(expected),
        });
    }
    Ok(VerifiedReport {
        report,
        generation,
        root: root.kind.clone(),
        tcb: reported,
    })
}

/// MAA-style binding: `SHA-256(runtime_data) ‖ 32 zero bytes`.
pub fn maa_report_data(runtime_data: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&Sha256::digest(runtime_data));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_roots_parse_and_self_verify() {
        let store = TrustStore::amd();
        assert_eq!(store.len(), 3);
        for g in [Generation::Milan, Generation::Genoa, Generation::Turin] {
            let pem = amd_cert_chain_pem(g);
            let certs = Certificate::load_pem_chain(pem.as_bytes()).unwrap();
            assert_eq!(certs.len(), 2);
            verify_pss(&certs[1], &certs[1], "ARK self-signature").unwrap();
            verify_pss(&certs[1], &certs[0], "ARK→ASK").unwrap();
            assert!(store.find(&certs[1]).is_some());
        }
    }

    #[test]
    fn maa_report_data_is_sha256_then_zeros() {
        let d = maa_report_data(b"{}");
        assert_eq!(&d[..32], Sha256::digest(b"{}").as_slice());
        assert_eq!(&d[32..], &[0u8; 32]);
    }
}
