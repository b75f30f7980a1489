//! Mock attester: real SNP report layout, signed by a generated P-384 VCEK under a generated RSA-PSS
//! ASK/ARK chain. Its root is never an AMD root, so its reports only verify where the mock ARK is
//! configured as trusted ([`crate::verify::TrustStore::add_mock_root`]).
//!
//! The mock ARK and ASK are RSA-2048 (AMD's are RSA-4096) to keep generation fast; the signature scheme
//! (RSASSA-PSS, SHA-384, salt 48) and the VCEK extensions are the same as AMD's.

use std::path::Path;
use std::time::Duration;

use der::asn1::{Ia5StringRef, OctetString};
use der::{DecodePem, Encode, EncodePem};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use x509_cert::Certificate;
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::spki::{ObjectIdentifier, SubjectPublicKeyInfoOwned};

use crate::error::EvidenceError;
use crate::evidence::{Attester, Evidence};
use crate::pki;
use crate::report::{Generation, ReportBuilder, TcbVersion};

const MOCK_RSA_BITS: usize = 2048;

fn mock_err(e: impl std::fmt::Display) -> EvidenceError {
    EvidenceError::Mock(e.to_string())
}

fn name(cn: &str) -> Result<Name, EvidenceError> {
    pki::name(cn, "cinfer mock attester").map_err(mock_err)
}

fn issue(
    issuer_key: &rsa::PrivateKey,
    issuer: Name,
    subject: Name,
    spki: SubjectPublicKeyInfoOwned,
    serial: u32,
    extensions: Vec<Extension>,
) -> Result<Certificate, EvidenceError> {
    pki::issue_pss(
        issuer_key,
        issuer,
        subject,
        spki,
        serial,
        extensions,
        Duration::from_secs(10 * 365 * 24 * 3600),
    )
    .map_err(mock_err)
}

fn rsa_spki(key: &rsa::PrivateKey) -> Result<SubjectPublicKeyInfoOwned, EvidenceError> {
    SubjectPublicKeyInfoOwned::from_key(&key.to_public_key()).map_err(mock_err)
}

/// A generated ARK/ASK pair: the mock "AMD root". Persist it with [`MockRoot::save`] so that a service
/// can be configured to trust its ARK.
pub struct MockRoot {
    generation: Generation,
    /// Kept in memory after [`MockRoot::generate`] (to sign CRLs in tests), never saved.
    ark_key: Option<rsa::PrivateKey>,
    ark_cert: Certificate,
    ask_key: rsa::PrivateKey,
    ask_cert: Certificate,
}

impl std::fmt::Debug for MockRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockRoot")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl MockRoot {
    /// Generate a new ARK and ASK (RSA-2048 each; takes a moment in debug builds).
    pub fn generate(generation: Generation) -> Result<Self, EvidenceError> {
        let ark_key = rsa::PrivateKey::new(&mut getrandom::SysRng, MOCK_RSA_BITS).map_err(mock_err)?;
        let ask_key = rsa::PrivateKey::new(&mut getrandom::SysRng, MOCK_RSA_BITS).map_err(mock_err)?;
        let g = generation.name();
        let ark_name = name(&format!("ARK-Mock-{g}"))?;
        let ask_name = name(&format!("SEV-Mock-{g}"))?;
        let ark_cert = issue(
            &ark_key,
            ark_name.clone(),
            ark_name.clone(),
            rsa_spki(&ark_key)?,
            0x1_0000,
            vec![],
        )?;
        let ask_cert = issue(&ark_key, ark_name, ask_name, rsa_spki(&ask_key)?, 0x1_0001, vec![])?;
        Ok(Self {
            generation,
            ark_key: Some(ark_key),
            ark_cert,
            ask_key,
            ask_cert,
        })
    }

    /// The ARK certificate, PEM: what a verifier is configured to trust.
    pub fn ark_pem(&self) -> String {
        self.ark_cert.to_pem(LineEnding::LF).unwrap_or_default()
    }

    /// ASK ‖ ARK, PEM (the `certificateChain` part of THIM JSON).
    pub fn ca_chain_pem(&self) -> String {
        format!(
            "{}{}",
            self.ask_cert.to_pem(LineEnding::LF).unwrap_or_default(),
            self.ark_pem()
        )
    }

    /// Generation this mock root claims to be.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Write `ark.pem`, `ask.pem` and `ask.key.pem` (mode 0600) into `dir`. The ARK private key is not
    /// kept: the ASK is all that is needed to issue further VCEKs.
    pub fn save(&self, dir: &Path) -> Result<(), EvidenceError> {
        let io = |context: &str| {
            let context = context.to_string();
            move |source| EvidenceError::Io { context, source }
        };
        std::fs::create_dir_all(dir).map_err(io("creating mock root dir"))?;
        std::fs::write(dir.join("ark.pem"), self.ark_pem()).map_err(io("writing ark.pem"))?;
        std::fs::write(
            dir.join("ask.pem"),
            self.ask_cert.to_pem(LineEnding::LF).map_err(mock_err)?,
        )
        .map_err(io("writing ask.pem"))?;
        let key = self.ask_key.to_pkcs8_pem(LineEnding::LF).map_err(mock_err)?;
        crate::store::write_private_file(&dir.join("ask.key.pem"), key.as_bytes())
            .map_err(io("writing ask.key.pem"))?;
        std::fs::write(dir.join("generation"), self.generation.name()).map_err(io("writing generation"))?;
        Ok(())
    }

    /// Load what [`MockRoot::save`] wrote.
    pub fn load(dir: &Path) -> Result<Self, EvidenceError> {
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f)).map_err(|source| EvidenceError::Io {
                context: format!("reading {}", dir.join(f).display()),
                source,
            })
        };
        let ark_cert = Certificate::from_pem(read("ark.pem")?.as_bytes()).map_err(mock_err)?;
        let ask_cert = Certificate::from_pem(read("ask.pem")?.as_bytes()).map_err(mock_err)?;
        let key_pem = zeroize::Zeroizing::new(read("ask.key.pem")?);
        let ask_key = rsa::PrivateKey::from_pkcs8_pem(&key_pem).map_err(mock_err)?;
        let generation = match read("generation").ok().as_deref().map(str::trim) {
            Some("Genoa") => Generation::Genoa,
            Some("Turin") => Generation::Turin,
            _ => Generation::Milan,
        };
        Ok(Self {
            generation,
            ark_key: None,
            ark_cert,
            ask_key,
            ask_cert,
        })
    }

    /// A CRL signed by the ARK (RSASSA-PSS, SHA-384, as AMD signs its CRLs) revoking `revoked` serial
    /// numbers (big-endian bytes), valid `this_update .. next_update`; DER. Only a root made by
    /// [`MockRoot::generate`] in this process can sign (the ARK key is never saved).
    pub fn issue_crl(
        &self,
        revoked: &[Vec<u8>],
        this_update: std::time::SystemTime,
        next_update: std::time::SystemTime,
    ) -> Result<Vec<u8>, EvidenceError> {
        use x509_cert::builder::{Builder as _, CrlBuilder};
        use x509_cert::crl::RevokedCert;
        use x509_cert::ext::pkix::CrlNumber;
        use x509_cert::serial_number::SerialNumber;
        use x509_cert::time::Time;
        let key = self
            .ark_key
            .as_ref()
            .ok_or_else(|| mock_err("the ARK key of a loaded mock root is not available"))?;
        let time = |t| Time::try_from(t).map_err(mock_err);
        let revoked: Vec<RevokedCert> = revoked
            .iter()
            .map(|serial| {
                Ok(RevokedCert {
                    serial_number: SerialNumber::new(serial).map_err(mock_err)?,
                    revocation_date: time(this_update)?,
                    crl_entry_extensions: None,
                })
            })
            .collect::<Result<_, EvidenceError>>()?;
        let number = CrlNumber(der::asn1::Uint::new(&[1]).map_err(mock_err)?);
        let builder = CrlBuilder::new_with_this_update(&self.ark_cert, number, time(this_update)?)
            .map_err(mock_err)?
            .with_next_update(Some(time(next_update)?))
            .with_certificates(revoked.into_iter());
        let signer = rsa::pss::SigningKey::<sha2::Sha384>::new_with_salt_len(key.clone(), 48);
        let crl = builder.build::<_, rsa::pss::Signature>(&signer).map_err(mock_err)?;
        crl.to_der().map_err(mock_err)
    }

    /// Issue a VCEK for a chip at a TCB. Returns the signing key and the certificate.
    pub fn issue_vcek(
        &self,
        tcb: TcbVersion,
        chip_id: &[u8; 64],
    ) -> Result<(p384::ecdsa::SigningKey, Certificate), EvidenceError> {
        let key = <p384::ecdsa::SigningKey as rsa::Generate>::generate();
        let spki = SubjectPublicKeyInfoOwned::from_key(key.verifying_key()).map_err(mock_err)?;
        let mut exts = Vec::new();
        let mut push = |oid: &str, value: Vec<u8>| -> Result<(), EvidenceError> {
            exts.push(Extension {
                extn_id: ObjectIdentifier::new(oid).map_err(mock_err)?,
                critical: false,
                extn_value: OctetString::new(value).map_err(mock_err)?,
            });
            Ok(())
        };
        push("1.3.6.1.4.1.3704.1.1", 0u8.to_der().map_err(mock_err)?)?;
        let product = format!("{}-B0", self.generation.name());
        push(
            "1.3.6.1.4.1.3704.1.2",
            Ia5StringRef::new(&product)
                .map_err(mock_err)?
                .to_der()
                .map_err(mock_err)?,
        )?;
        let mut spl = vec![
            ("1.3.6.1.4.1.3704.1.3.1", tcb.bootloader),
            ("1.3.6.1.4.1.3704.1.3.2", tcb.tee),
            ("1.3.6.1.4.1.3704.1.3.3", tcb.snp),
            ("1.3.6.1.4.1.3704.1.3.4", 0),
            ("1.3.6.1.4.1.3704.1.3.5", 0),
            ("1.3.6.1.4.1.3704.1.3.6", 0),
            ("1.3.6.1.4.1.3704.1.3.7", 0),
            ("1.3.6.1.4.1.3704.1.3.8", tcb.microcode),
        ];
        if self.generation == Generation::Turin {
            spl.push(("1.3.6.1.4.1.3704.1.3.9", tcb.fmc));
        }
        for (oid, v) in spl {
            push(oid, v.to_der().map_err(mock_err)?)?;
        }
        push(
            "1.3.6.1.4.1.3704.1.4",
            OctetString::new(chip_id.to_vec())
                .map_err(mock_err)?
                .to_der()
                .map_err(mock_err)?,
        )?;
        let cert = issue(
            &self.ask_key,
            self.ask_cert.tbs_certificate().subject().clone(),
            name("SEV-VCEK")?,
            spki,
            0x2_0000,
            exts,
        )?;
        Ok((key, cert))
    }
}

/// Settable report fields of the mock attester.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MockConfig {
    /// Launch measurement.
    pub measurement: [u8; 48],
    /// host_data (on ACI: SHA-256 of the CCE policy).
    pub host_data: [u8; 32],
    /// Set the debug bit of the guest policy.
    pub debuggable: bool,
    /// VMPL written in the report.
    pub vmpl: u32,
    /// Set the MIGRATE_MA bit (18) of the guest policy.
    pub migration_agent: bool,
    /// Report format version (default 3).
    pub version: u32,
    /// TCB written in the report and certified by the VCEK. The default (bootloader 4, TEE 0, SNP 23,
    /// microcode 219) meets the default minimum of Milan and of Genoa
    /// ([`crate::appraisal::MinimumTcb::amd_default`]); it is not one real platform's TCB.
    pub tcb: TcbVersion,
    /// TCB the VCEK certifies, when it should differ from `tcb` (tests of the TCB check).
    pub vcek_tcb: Option<TcbVersion>,
    /// Guest SVN.
    pub guest_svn: u32,
    /// Chip ID (also the VCEK hwID).
    pub chip_id: [u8; 64],
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            measurement: [0u8; 48],
            host_data: [0u8; 32],
            debuggable: false,
            vmpl: 0,
            migration_agent: false,
            version: 3,
            tcb: TcbVersion {
                bootloader: 4,
                tee: 0,
                snp: 23,
                microcode: 219,
                fmc: 0,
            },
            vcek_tcb: None,
            guest_svn: 1,
            chip_id: [0x5a; 64],
        }
    }
}

/// The mock attester. Only constructed when asked for (`--attester mock`); never a fallback.
pub struct MockAttester {
    root_ca_chain: String,
    generation: Generation,
    vcek_key: p384::ecdsa::SigningKey,
    vcek_pem: String,
    config: MockConfig,
}

impl std::fmt::Debug for MockAttester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockAttester")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MockAttester {
    /// A mock attester under `root` with the given report fields (issues a fresh VCEK).
    pub fn new(root: &MockRoot, config: MockConfig) -> Result<Self, EvidenceError> {
        let (vcek_key, vcek) = root.issue_vcek(config.vcek_tcb.unwrap_or(config.tcb), &config.chip_id)?;
        Ok(Self {
            root_ca_chain: root.ca_chain_pem(),
            generation: root.generation(),
            vcek_key,
            vcek_pem: vcek.to_pem(LineEnding::LF).map_err(mock_err)?,
            config,
        })
    }

    /// The report fields in use.
    pub fn config(&self) -> &MockConfig {
        &self.config
    }

    /// VCEK ‖ ASK ‖ ARK, PEM.
    pub fn cert_chain_pem(&self) -> String {
        format!("{}{}", self.vcek_pem, self.root_ca_chain)
    }

    /// A signed report for `report_data`.
    pub fn report(&self, report_data: &[u8; 64]) -> Vec<u8> {
        let c = &self.config;
        let policy = ReportBuilder::DEFAULT_POLICY
            | if c.migration_agent {
                crate::report::POLICY_MIGRATE_MA_BIT
            } else {
                0
            };
        let b = ReportBuilder::default()
            .version(c.version)
            .policy(policy)
            .guest_svn(c.guest_svn)
            .debuggable(c.debuggable)
            .vmpl(c.vmpl)
            .report_data(report_data)
            .measurement(&c.measurement)
            .host_data(&c.host_data)
            .chip_id(&c.chip_id)
            .tcb(c.tcb, self.generation);
        use p384::ecdsa::signature::Signer as _;
        let sig: p384::ecdsa::Signature = self.vcek_key.sign(b.signed_bytes());
        let (r, s) = sig.split_bytes();
        let (mut rb, mut sb) = ([0u8; 48], [0u8; 48]);
        rb.copy_from_slice(&r);
        sb.copy_from_slice(&s);
        b.signature(&rb, &sb).into_bytes()
    }
}

impl Attester for MockAttester {
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        Ok(Evidence {
            report: self.report(report_data),
            cert_chain_pem: self.cert_chain_pem(),
            uvm_endorsements: None,
            gpus: Vec::new(),
        })
    }
}
