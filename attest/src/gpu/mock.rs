//! Mock GPU for local testing, the counterpart of the mock SEV-SNP attester
//! ([`crate::evidence::MockAttester`]): a generated P-384 root signs both a device chain (root → "GH100 A01
//! GSP BROM (cinfer mock)" → one leaf per GPU, with a TCG DICE FWID) and a RIM signer; the mock GPUs answer
//! SPDM `GET_MEASUREMENTS` in the report layout NVIDIA's GPUs use ([`super::spdm::encode`]), signed by their
//! leaf; the RIMs (SWID + XML-DSig, C14N 1.1, ECDSA P-384) and the offline collateral bundle carry the
//! matching golden measurements. Everything goes through the real verifier ([`super::verify_gpu`]).
//!
//! The root is never NVIDIA's, so mock evidence verifies only where it is configured explicitly
//! ([`super::GpuTrust::mock`], `cinfer-attest serve --trust-mock-gpu-root`); its claims then say
//! `x-cinfer-gpu-root: mock:<sha256 of the root's SPKI>`. One root serves as device and RIM root (NVIDIA has
//! two), to keep one file to trust.
//!
//! Golden values are a function of the RIM index and the version they describe, so any RIM generated for
//! the mock's versions matches: VBIOS RIM indices 0–7, driver RIM indices 8–15 (report blocks 1–16).
//! [`MockGpuConfig::devtools`] changes the measurement at driver index 9, as DevTools mode changes
//! measurements on hardware ([`super::mode`]); [`MockGpuConfig::ppcie`] reports feature flag PPCIe.
//!
//! `cinfer-attest mock-gpu-init --out DIR` writes a root and config into `DIR` ([`MockGpuRoot::save`]) and
//! the collateral bundle `DIR/collateral.json`; `--mock-gpu-dir DIR` on the guest side adds the GPUs'
//! evidence to the mock SNP evidence ([`MockGpuAttester::load`]).

use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use der::asn1::OctetString;
use der::{DecodePem, Encode, EncodePem};
use p384::ecdsa::SigningKey;
use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use sha2::{Digest, Sha384};
use x509_cert::Certificate;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::spki::{ObjectIdentifier, SubjectPublicKeyInfoOwned};

use super::collateral::GpuCollateral;
use super::rim::{ALG_C14N11, ALG_ECDSA_SHA384, ALG_ENVELOPED, ALG_SHA384, DSIG_NS, SHA384_NS, SWID_NS};
use super::spdm::{self, MeasurementBlock, OpaqueField, SpdmRequest, field};
use super::{GpuAttester, GpuError, GpuEvidence, GpuTrust, RimKind, c14n};
use crate::error::EvidenceError;
use crate::pki;

/// Lifetime of the mock certificates.
const LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// RIM indices of the mock VBIOS (the driver's follow).
const VBIOS_INDICES: std::ops::Range<u32> = 0..8;
const DRIVER_INDICES: std::ops::Range<u32> = 8..16;
/// The driver RIM index whose measurement DevTools mode changes in the mock.
pub const DEVTOOLS_INDEX: u32 = 9;
const ORG: &str = "cinfer mock GPU";
/// Common name of the mock's second certificate: NVIDIA's `hwmodel` claim.
pub const MOCK_HWMODEL: &str = "GH100 A01 GSP BROM (cinfer mock)";

fn mock_err(e: impl std::fmt::Display) -> EvidenceError {
    EvidenceError::Mock(format!("gpu: {e}"))
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> EvidenceError {
    move |source| EvidenceError::Io { context, source }
}

fn ext(oid: &str, critical: bool, value: Vec<u8>) -> Result<Extension, EvidenceError> {
    Ok(Extension {
        extn_id: ObjectIdentifier::new(oid).map_err(mock_err)?,
        critical,
        extn_value: OctetString::new(value).map_err(mock_err)?,
    })
}

fn basic_constraints(ca: bool) -> Result<Extension, EvidenceError> {
    let bc = BasicConstraints {
        ca,
        path_len_constraint: None,
    };
    ext("2.5.29.19", true, bc.to_der().map_err(mock_err)?)
}

fn ca() -> Result<Extension, EvidenceError> {
    basic_constraints(true)
}

/// A TCG DICE TcbInfo (`2.23.133.5.4.1`) holding one SHA-384 FWID: `SEQUENCE { [6] { SEQUENCE { sha384,
/// OCTET STRING fwid } } }`. NVIDIA's verifier reads the last 48 bytes ([`super::certs::Cert::dice_fwid`]).
fn dice_tcb_info(fwid: &[u8; 48]) -> Result<Extension, EvidenceError> {
    const SHA384_OID: [u8; 11] = [0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    let mut digest = vec![0x04, 48];
    digest.extend_from_slice(fwid);
    let mut fwid_seq = vec![0x30, (SHA384_OID.len() + digest.len()) as u8];
    fwid_seq.extend_from_slice(&SHA384_OID);
    fwid_seq.extend_from_slice(&digest);
    let mut fwids = vec![0xA6, fwid_seq.len() as u8];
    fwids.extend_from_slice(&fwid_seq);
    let mut tcb_info = vec![0x30, fwids.len() as u8];
    tcb_info.extend_from_slice(&fwids);
    ext("2.23.133.5.4.1", false, tcb_info)
}

fn spki(key: &SigningKey) -> Result<SubjectPublicKeyInfoOwned, EvidenceError> {
    SubjectPublicKeyInfoOwned::from_key(key.verifying_key()).map_err(mock_err)
}

fn new_key() -> SigningKey {
    <SigningKey as rsa::Generate>::generate()
}

fn pem(cert: &Certificate) -> Result<String, EvidenceError> {
    cert.to_pem(LineEnding::LF).map_err(mock_err)
}

/// The mock's golden (and, unless changed, measured) value at a RIM index for the version it describes.
pub fn golden_value(index: u32, version: &str) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(b"cinfer mock gpu measurement\0");
    h.update(index.to_le_bytes());
    h.update(version.as_bytes());
    h.finalize().into()
}

/// The 8-byte `OPAQUE_FIELD_ID_VBIOS_VERSION` for a printed VBIOS version (`96.00.9F.00.01`); the inverse of
/// [`spdm::format_vbios_version`].
pub fn vbios_version_field(printed: &str) -> Result<[u8; 8], String> {
    let parts: Vec<u8> = printed
        .split('.')
        .map(|p| u8::from_str_radix(p, 16).map_err(|e| format!("VBIOS version {printed:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let [b3, b2, b1, b0, b4] = parts[..] else {
        return Err(format!(
            "VBIOS version {printed:?}: expected five hex pairs (96.00.9F.00.01)"
        ));
    };
    Ok([b0, b1, b2, b3, b4, 0, 0, 0])
}

/// What the mock GPUs report. Persisted as `config.json` beside the root.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockGpuConfig {
    /// Number of GPUs (each with its own leaf certificate and report).
    pub count: u32,
    /// Driver version in the reports (and of the generated driver RIM).
    pub driver_version: String,
    /// VBIOS version in the reports, as NVIDIA prints it (and of the generated VBIOS RIM).
    pub vbios_version: String,
    /// Report a DevTools-mode measurement at [`DEVTOOLS_INDEX`] (the comparison then fails).
    #[serde(default)]
    pub devtools: bool,
    /// Report feature flag PPCIe (protected PCIe: CC mode off on the GPU).
    #[serde(default)]
    pub ppcie: bool,
}

impl Default for MockGpuConfig {
    fn default() -> Self {
        Self {
            count: 1,
            driver_version: "550.90.07".into(),
            vbios_version: "96.00.9F.00.01".into(),
            devtools: false,
            ppcie: false,
        }
    }
}

impl MockGpuConfig {
    /// Check the versions and count.
    pub fn validate(&self) -> Result<(), EvidenceError> {
        if self.count == 0 || self.count > 64 {
            return Err(mock_err(format!("count {} (1 to 64)", self.count)));
        }
        vbios_version_field(&self.vbios_version).map_err(mock_err)?;
        if super::claims::driver_version_number(&self.driver_version).is_none() {
            return Err(mock_err(format!(
                "driver version {:?} (expected like 550.90.07)",
                self.driver_version
            )));
        }
        Ok(())
    }
}

/// The generated root, the BROM CA that issues GPU leaves, and the RIM signer.
pub struct MockGpuRoot {
    root: Certificate,
    brom_key: SigningKey,
    brom: Certificate,
    rim_key: SigningKey,
    rim_signer: Certificate,
}

impl std::fmt::Debug for MockGpuRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockGpuRoot").finish_non_exhaustive()
    }
}

impl MockGpuRoot {
    /// Generate a root (its key is used here and dropped), a BROM CA and a RIM signer.
    pub fn generate() -> Result<Self, EvidenceError> {
        let root_key = new_key();
        let brom_key = new_key();
        let rim_key = new_key();
        let name = |cn: &str| pki::name(cn, ORG).map_err(mock_err);
        let root_name = name("cinfer mock GPU root")?;
        let issue = |subject, key: &SigningKey, serial, exts| {
            pki::issue_p384(
                &root_key,
                root_name.clone(),
                subject,
                spki(key)?,
                serial,
                exts,
                LIFETIME,
            )
            .map_err(mock_err)
        };
        let root = issue(root_name.clone(), &root_key, 1, vec![ca()?])?;
        let brom = issue(name(MOCK_HWMODEL)?, &brom_key, 2, vec![ca()?])?;
        // An extension makes it X.509 v3, which path validation requires.
        let rim_signer = issue(
            name("cinfer mock GPU RIM signer")?,
            &rim_key,
            3,
            vec![basic_constraints(false)?],
        )?;
        Ok(Self {
            root,
            brom_key,
            brom,
            rim_key,
            rim_signer,
        })
    }

    /// The root certificate, PEM: what a verifier is configured to trust (as device and as RIM root).
    pub fn root_pem(&self) -> String {
        pem(&self.root).unwrap_or_default()
    }

    /// The roots to verify mock evidence with.
    pub fn trust(&self) -> Result<GpuTrust, GpuError> {
        let root = self.root_pem();
        GpuTrust::mock(root.as_bytes(), root.as_bytes())
    }

    /// Write `root.pem`, `brom.pem`, `brom.key.pem` and `rim-signer.pem`, `rim-signer.key.pem` (keys 0600).
    pub fn save(&self, dir: &Path) -> Result<(), EvidenceError> {
        crate::store::private_dir(dir).map_err(io(format!("creating {}", dir.display())))?;
        let write =
            |name: &str, text: &str| std::fs::write(dir.join(name), text).map_err(io(format!("writing {name}")));
        let write_key = |name: &str, key: &SigningKey| {
            let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(mock_err)?;
            crate::store::write_private_file(&dir.join(name), pem.as_bytes()).map_err(io(format!("writing {name}")))
        };
        write("root.pem", &pem(&self.root)?)?;
        write("brom.pem", &pem(&self.brom)?)?;
        write("rim-signer.pem", &pem(&self.rim_signer)?)?;
        write_key("brom.key.pem", &self.brom_key)?;
        write_key("rim-signer.key.pem", &self.rim_key)
    }

    /// Load what [`MockGpuRoot::save`] wrote.
    pub fn load(dir: &Path) -> Result<Self, EvidenceError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))
        };
        let cert = |name: &str| Certificate::from_pem(read(name)?.as_bytes()).map_err(mock_err);
        let key = |name: &str| {
            let text = zeroize::Zeroizing::new(read(name)?);
            SigningKey::from_pkcs8_pem(&text).map_err(mock_err)
        };
        Ok(Self {
            root: cert("root.pem")?,
            brom: cert("brom.pem")?,
            brom_key: key("brom.key.pem")?,
            rim_signer: cert("rim-signer.pem")?,
            rim_key: key("rim-signer.key.pem")?,
        })
    }

    /// Issue a GPU leaf under the BROM CA carrying `fwid`; returns its key and the chain (leaf, BROM, root).
    fn issue_gpu(&self, serial: u32, fwid: &[u8; 48]) -> Result<(SigningKey, String), EvidenceError> {
        let key = new_key();
        let leaf = pki::issue_p384(
            &self.brom_key,
            self.brom.tbs_certificate().subject().clone(),
            pki::name(&format!("GH100 A01 FSP/GSP FMC LF (cinfer mock {serial})"), ORG).map_err(mock_err)?,
            spki(&key)?,
            serial,
            vec![dice_tcb_info(fwid)?],
            LIFETIME,
        )
        .map_err(mock_err)?;
        let chain = format!("{}{}{}", pem(&leaf)?, pem(&self.brom)?, pem(&self.root)?);
        Ok((key, chain))
    }

    /// A signed RIM (SWID tag, XML-DSig) for `version` with the mock's golden values at `indices`.
    pub fn rim(&self, kind: RimKind, version: &str) -> Result<String, EvidenceError> {
        let indices = match kind {
            RimKind::Driver => DRIVER_INDICES,
            RimKind::Vbios => VBIOS_INDICES,
        };
        let resources: String = indices
            .map(|i| {
                format!(
                    "<Resource type=\"Measurement\" index=\"{i}\" active=\"True\" alternatives=\"1\" \
                     ns2:Hash0=\"{}\" name=\"Measurement_{i}\" size=\"48\"/>",
                    hex::encode(golden_value(i, version))
                )
            })
            .collect();
        let b64 = |c: &Certificate| {
            c.to_der()
                .map(|d| base64::engine::general_purpose::STANDARD.encode(d))
                .map_err(mock_err)
        };
        let certs = format!(
            "<ds:X509Certificate>{}</ds:X509Certificate><ds:X509Certificate>{}</ds:X509Certificate>",
            b64(&self.rim_signer)?,
            b64(&self.root)?
        );
        let document = |digest: &str, signature: &str| {
            format!(
                "<SoftwareIdentity xmlns=\"{SWID_NS}\" xmlns:ns2=\"{SHA384_NS}\" corpus=\"false\" name=\"GH100\" \
                 patch=\"false\" supplemental=\"false\" tagId=\"cinfer-mock-{kind}-{version}\" version=\"1.0\" \
                 tagVersion=\"0\">\n<Entity name=\"{ORG}\" role=\"softwareCreator tagCreator\"/>\n<Meta \
                 colloquialVersion=\"{version}\" edition=\"GPU\" product=\"GH100\" revision=\"r1\" \
                 PayloadType=\"direct\"/>\n<Payload>{resources}</Payload>\n<ds:Signature xmlns:ds=\"{DSIG_NS}\">\
                 <ds:SignedInfo><ds:CanonicalizationMethod Algorithm=\"{ALG_C14N11}\"/><ds:SignatureMethod \
                 Algorithm=\"{ALG_ECDSA_SHA384}\"/><ds:Reference URI=\"\"><ds:Transforms><ds:Transform \
                 Algorithm=\"{ALG_ENVELOPED}\"/><ds:Transform Algorithm=\"{ALG_C14N11}\"/></ds:Transforms>\
                 <ds:DigestMethod Algorithm=\"{ALG_SHA384}\"/><ds:DigestValue>{digest}</ds:DigestValue>\
                 </ds:Reference></ds:SignedInfo><ds:SignatureValue>{signature}</ds:SignatureValue><ds:KeyInfo>\
                 <ds:X509Data>{certs}</ds:X509Data></ds:KeyInfo></ds:Signature>\n</SoftwareIdentity>\n"
            )
        };
        let find = |doc: &roxmltree::Document<'_>, name: &str| {
            doc.descendants()
                .find(|n| n.tag_name().namespace() == Some(DSIG_NS) && n.tag_name().name() == name)
                .map(|n| n.id())
                .ok_or_else(|| mock_err(format!("no {name} in the generated RIM")))
        };
        // Digest of the document without its signature, then the signature over the canonical SignedInfo.
        let unsigned = document("", "");
        let doc = roxmltree::Document::parse(&unsigned).map_err(mock_err)?;
        let canonical = c14n::canonicalize_document_without(&doc, find(&doc, "Signature")?).map_err(mock_err)?;
        let digest = base64::engine::general_purpose::STANDARD.encode(Sha384::digest(&canonical));
        let digested = document(&digest, "");
        let doc = roxmltree::Document::parse(&digested).map_err(mock_err)?;
        let signed_info = doc
            .get_node(find(&doc, "SignedInfo")?)
            .ok_or_else(|| mock_err("SignedInfo vanished"))?;
        let to_sign = c14n::canonicalize_subtree(signed_info).map_err(mock_err)?;
        use p384::ecdsa::signature::Signer as _;
        let signature: p384::ecdsa::Signature = self.rim_key.sign(&to_sign);
        let signature = base64::engine::general_purpose::STANDARD.encode(signature.to_bytes());
        Ok(document(&digest, &signature))
    }

    /// An offline collateral bundle with the driver and VBIOS RIMs of `config`'s versions, valid from an
    /// hour ago for `validity`.
    pub fn collateral(&self, config: &MockGpuConfig, validity: Duration) -> Result<GpuCollateral, EvidenceError> {
        let now = SystemTime::now();
        let rfc3339 = |t: SystemTime| {
            let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
            time::OffsetDateTime::from_unix_timestamp(secs)
                .map_err(mock_err)?
                .format(&time::format_description::well_known::Rfc3339)
                .map_err(mock_err)
        };
        Ok(GpuCollateral {
            version: 1,
            not_before: rfc3339(now - Duration::from_secs(3600))?,
            not_after: rfc3339(now + validity)?,
            driver_rims: vec![self.rim(RimKind::Driver, &config.driver_version)?],
            vbios_rims: vec![self.rim(RimKind::Vbios, &config.vbios_version)?],
            revoked_serials: Vec::new(),
        })
    }
}

struct MockGpu {
    key: SigningKey,
    chain_pem: String,
    fwid: [u8; 48],
}

/// Mock GPUs: each answers [`GpuAttester::gpu_evidence`] with a report signed by its own leaf.
pub struct MockGpuAttester {
    gpus: Vec<MockGpu>,
    config: MockGpuConfig,
}

impl std::fmt::Debug for MockGpuAttester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockGpuAttester")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MockGpuAttester {
    /// `config.count` GPUs under `root` (fresh leaves).
    pub fn new(root: &MockGpuRoot, config: MockGpuConfig) -> Result<Self, EvidenceError> {
        config.validate()?;
        let gpus = (0..config.count)
            .map(|i| {
                let fwid: [u8; 48] = Sha384::digest(format!("cinfer mock gpu fwid {i}")).into();
                let (key, chain_pem) = root.issue_gpu(0x100 + i, &fwid)?;
                Ok(MockGpu { key, chain_pem, fwid })
            })
            .collect::<Result<_, EvidenceError>>()?;
        Ok(Self { gpus, config })
    }

    /// The root and `config.json` that `cinfer-attest mock-gpu-init` wrote into `dir`.
    pub fn load(dir: &Path) -> Result<Self, EvidenceError> {
        let root = MockGpuRoot::load(dir)?;
        let path = dir.join("config.json");
        let text = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
        let config: MockGpuConfig =
            serde_json::from_slice(&text).map_err(|e| mock_err(format!("{}: {e}", path.display())))?;
        Self::new(&root, config)
    }

    /// The configuration in use.
    pub fn config(&self) -> &MockGpuConfig {
        &self.config
    }

    fn report(&self, gpu: &MockGpu, nonce: &[u8; spdm::NONCE_LEN]) -> Result<Vec<u8>, EvidenceError> {
        let c = &self.config;
        let request = SpdmRequest {
            version: 0x11,
            param1: 1,
            param2: 0xff,
            nonce: *nonce,
            slot_id: 0,
        };
        let blocks: Vec<MeasurementBlock> = VBIOS_INDICES
            .map(|i| (i, golden_value(i, &c.vbios_version)))
            .chain(DRIVER_INDICES.map(|i| {
                let value = if c.devtools && i == DEVTOOLS_INDEX {
                    golden_value(i, &format!("{} devtools", c.driver_version))
                } else {
                    golden_value(i, &c.driver_version)
                };
                (i, value)
            }))
            .map(|(i, value)| MeasurementBlock {
                index: (i + 1) as u8,
                value_type: 1,
                value: value.to_vec(),
            })
            .collect();
        let mut driver = c.driver_version.as_bytes().to_vec();
        driver.push(0);
        let flag: u32 = match (c.ppcie, self.gpus.len()) {
            (true, _) => 2,
            (false, 1) => 1,
            (false, _) => 0,
        };
        let opaque = vec![
            OpaqueField {
                kind: field::DRIVER_VERSION,
                data: driver,
            },
            OpaqueField {
                kind: field::VBIOS_VERSION,
                data: vbios_version_field(&c.vbios_version).map_err(mock_err)?.to_vec(),
            },
            OpaqueField {
                kind: field::FWID,
                data: gpu.fwid.to_vec(),
            },
            OpaqueField {
                kind: field::FEATURE_FLAG,
                data: flag.to_le_bytes().to_vec(),
            },
        ];
        let response_nonce: [u8; spdm::NONCE_LEN] = crate::secret::random_bytes();
        let mut report = spdm::encode(&request, &blocks, &response_nonce, &opaque).map_err(mock_err)?;
        use p384::ecdsa::signature::Signer as _;
        let signature: p384::ecdsa::Signature = gpu.key.sign(&report);
        report.extend_from_slice(&signature.to_bytes());
        Ok(report)
    }
}

impl GpuAttester for MockGpuAttester {
    fn gpu_evidence(&self, nonce: &[u8; spdm::NONCE_LEN]) -> Result<Vec<GpuEvidence>, EvidenceError> {
        self.gpus
            .iter()
            .map(|gpu| {
                Ok(GpuEvidence {
                    report: self.report(gpu, nonce)?,
                    cert_chain_pem: gpu.chain_pem.clone().into_bytes(),
                })
            })
            .collect()
    }
}

/// Write a new mock GPU root, `config.json` and `collateral.json` (valid for `validity`) into `dir`.
pub fn init_dir(dir: &Path, config: &MockGpuConfig, validity: Duration) -> Result<MockGpuRoot, EvidenceError> {
    config.validate()?;
    let root = MockGpuRoot::generate()?;
    root.save(dir)?;
    let json = serde_json::to_string_pretty(config).map_err(mock_err)?;
    std::fs::write(dir.join("config.json"), json).map_err(io("writing config.json".into()))?;
    let bundle = root.collateral(config, validity)?;
    std::fs::write(dir.join("collateral.json"), bundle.to_json()).map_err(io("writing collateral.json".into()))?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vbios_field_round_trips_through_nvidias_formatting() {
        for v in ["96.00.9F.00.01", "96.00.5E.00.04", "96.00.74.00.20"] {
            let f = vbios_version_field(v).unwrap();
            assert_eq!(spdm::format_vbios_version(&f).as_deref(), Some(v));
        }
        assert!(vbios_version_field("96.00.9F").is_err());
        assert!(vbios_version_field("96.00.9G.00.01").is_err());
    }

    #[test]
    fn dice_extension_carries_the_fwid_last() {
        let fwid = [7u8; 48];
        let e = dice_tcb_info(&fwid).unwrap();
        let v = e.extn_value.as_bytes();
        assert_eq!(&v[v.len() - 48..], &fwid);
        // The DER parses as a SEQUENCE whose length covers the rest exactly.
        assert_eq!(usize::from(v[1]) + 2, v.len());
    }
}
