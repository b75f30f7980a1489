//! Offline collateral: one JSON file holding what verifying ACI evidence would otherwise fetch from the
//! network — per processor generation AMD's ARK, ASK and CRL (AMD KDS `cert_chain` and `crl`), the chips'
//! VCEKs (KDS `vcek`, or the ACI host's THIM copy), and the trusted UVM endorsement issuers — so that
//! `cinfer-attest verify-report --collateral BUNDLE` and `serve --collateral BUNDLE` verify with no network.
//!
//! ```json
//! {"version": 1, "created": "2026-12-06T00:00:00Z", "not_after": "2027-01-05T00:00:00Z",
//!  "amd": [{"generation": "milan", "ark": "<PEM>", "ask": "<PEM>", "crl": "<PEM X509 CRL>"}],
//!  "vceks": ["<PEM>"],
//!  "uvm_issuers": [{"did": "did:x509:0:sha256:…", "feed": "ContainerPlat-AMD-UVM", "min_svn": 0}],
//!  "valid": {"not_before": "…", "not_after": "…", "limited_by": "…"}}
//! ```
//!
//! **Validity window.** A bundle is valid from the latest start to the earliest end of: each ARK's and
//! ASK's certificate validity, each CRL's `thisUpdate .. nextUpdate`, and the optional `not_after` its
//! builder chose. Outside it every use fails with `collateral expired:` (or `collateral not yet valid:`)
//! naming the item that ends it. VCEKs have their own windows, checked when one is used (`certificate
//! validity: VCEK`): one expired chip does not expire the bundle. `valid` is written for people and
//! recomputed on load.
//!
//! **What is checked on load**: each ASK and CRL is signed by its ARK (RSASSA-PSS, SHA-384) and each VCEK
//! by an ASK in the bundle. Whether an ARK is trusted at all stays the job of [`crate::verify::TrustStore`]
//! (AMD's pinned roots; a mock root only where configured): a bundle is configuration, never a root of
//! trust. **On use** ([`Collateral::check_chain`]): the bundle is valid at the verification time, the
//! evidence's ARK and ASK are the bundle's, and neither the ASK nor the VCEK is on the generation's CRL.

use std::time::{Duration, SystemTime};

use der::{Decode, DecodePem, Encode, EncodePem};
use rsa::pkcs8::LineEnding;
use x509_cert::Certificate;
use x509_cert::crl::CertificateList;

use crate::endorsement::{UvmIssuer, UvmTrust};
use crate::error::CollateralError;
use crate::evidence::ThimCerts;
use crate::report::{AttestationReport, Generation, TcbVersion};
use crate::verify::{CertChain, amd_cert_chain_pem, fmt_time, pss_sha384_verifies, vcek_extensions};

/// Version of the bundle format.
pub const FORMAT_VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleFile {
    version: u32,
    created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_after: Option<String>,
    amd: Vec<AmdFile>,
    #[serde(default)]
    vceks: Vec<String>,
    #[serde(default)]
    uvm_issuers: Vec<UvmIssuer>,
    /// Informational; recomputed on load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    valid: Option<serde_json::Value>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AmdFile {
    generation: Generation,
    ark: String,
    ask: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crl: Option<String>,
}

/// AMD collateral for one processor generation.
#[derive(Clone, Debug)]
pub struct AmdCollateral {
    /// Processor generation.
    pub generation: Generation,
    /// AMD root key certificate.
    pub ark: Certificate,
    /// AMD SEV key certificate (signed by the ARK).
    pub ask: Certificate,
    /// The generation's CRL (signed by the ARK), when included.
    pub crl: Option<CertificateList>,
}

/// When a bundle may be used, and which item ends (or starts) that window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Earliest verification time.
    pub not_before: SystemTime,
    /// Latest verification time.
    pub not_after: SystemTime,
    /// The item whose validity starts last.
    pub starts_with: String,
    /// The item whose validity ends first.
    pub limited_by: String,
}

/// A loaded (and internally consistent) collateral bundle.
#[derive(Clone, Debug)]
pub struct Collateral {
    created: String,
    declared_not_after: Option<SystemTime>,
    amd: Vec<AmdCollateral>,
    vceks: Vec<Certificate>,
    uvm_issuers: Vec<UvmIssuer>,
}

fn parse_err(detail: impl Into<String>) -> CollateralError {
    CollateralError::Parse { detail: detail.into() }
}

fn parse_time(s: &str) -> Result<SystemTime, CollateralError> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| parse_err(format!("time {s:?}: {e}")))?;
    let secs = u64::try_from(t.unix_timestamp()).map_err(|_| parse_err(format!("time {s:?} is before 1970")))?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

fn pem(cert: &Certificate) -> Result<String, CollateralError> {
    cert.to_pem(LineEnding::LF).map_err(|e| parse_err(e.to_string()))
}

fn subject(cert: &Certificate) -> String {
    cert.tbs_certificate().subject().to_string()
}

fn serial_hex(cert: &Certificate) -> String {
    hex::encode(cert.tbs_certificate().serial_number().as_bytes())
}

fn crl_signed_by(crl: &CertificateList, ark: &Certificate) -> bool {
    crl.tbs_cert_list.issuer == *ark.tbs_certificate().subject()
        && crl
            .tbs_cert_list
            .to_der()
            .is_ok_and(|tbs| pss_sha384_verifies(ark, &crl.signature_algorithm.oid, crl.signature.as_bytes(), &tbs))
}

fn cert_signed_by(cert: &Certificate, issuer: &Certificate) -> bool {
    cert.tbs_certificate().issuer() == issuer.tbs_certificate().subject()
        && cert.tbs_certificate().to_der().is_ok_and(|tbs| {
            pss_sha384_verifies(
                issuer,
                &cert.signature_algorithm().oid,
                cert.signature().as_bytes(),
                &tbs,
            )
        })
}

fn validity(cert: &Certificate) -> (SystemTime, SystemTime) {
    let v = cert.tbs_certificate().validity();
    (v.not_before.to_system_time(), v.not_after.to_system_time())
}

fn decode_crl(bytes: &[u8]) -> Result<CertificateList, CollateralError> {
    CertificateList::from_der(bytes)
        .or_else(|_| CertificateList::from_pem(bytes))
        .map_err(|e| parse_err(format!("CRL (DER or PEM X509 CRL): {e}")))
}

impl Collateral {
    /// Load a bundle and check its internal signatures (see the module docs).
    pub fn from_json(bytes: &[u8]) -> Result<Self, CollateralError> {
        let file: BundleFile = serde_json::from_slice(bytes).map_err(|e| parse_err(format!("JSON: {e}")))?;
        if file.version != FORMAT_VERSION {
            return Err(parse_err(format!(
                "format version {} (this verifier reads {FORMAT_VERSION})",
                file.version
            )));
        }
        let cert = |what: &str, pem: &str| {
            Certificate::from_pem(pem.as_bytes()).map_err(|e| parse_err(format!("{what}: {e}")))
        };
        let mut amd = Vec::new();
        for a in &file.amd {
            let g = a.generation.name();
            amd.push(AmdCollateral {
                generation: a.generation,
                ark: cert(&format!("{g} ARK"), &a.ark)?,
                ask: cert(&format!("{g} ASK"), &a.ask)?,
                crl: a.crl.as_deref().map(|c| decode_crl(c.as_bytes())).transpose()?,
            });
        }
        let vceks = file
            .vceks
            .iter()
            .enumerate()
            .map(|(i, p)| cert(&format!("vceks[{i}]"), p))
            .collect::<Result<Vec<_>, _>>()?;
        for i in &file.uvm_issuers {
            crate::endorsement::DidX509::parse(&i.did).map_err(|e| parse_err(format!("uvm_issuers: {e}")))?;
        }
        let c = Self {
            created: file.created,
            declared_not_after: file.not_after.as_deref().map(parse_time).transpose()?,
            amd,
            vceks,
            uvm_issuers: file.uvm_issuers,
        };
        c.check_signatures()?;
        Ok(c)
    }

    fn check_signatures(&self) -> Result<(), CollateralError> {
        for a in &self.amd {
            let g = a.generation.name();
            if !cert_signed_by(&a.ask, &a.ark) {
                return Err(CollateralError::Chain {
                    detail: format!("the {g} ASK is not signed by the {g} ARK"),
                });
            }
            if let Some(crl) = &a.crl
                && !crl_signed_by(crl, &a.ark)
            {
                return Err(CollateralError::Crl {
                    detail: format!("the {g} CRL is not signed by the {g} ARK"),
                });
            }
        }
        for v in &self.vceks {
            if !self.amd.iter().any(|a| cert_signed_by(v, &a.ask)) {
                return Err(CollateralError::Chain {
                    detail: format!("VCEK serial {} is not signed by an ASK in the bundle", serial_hex(v)),
                });
            }
        }
        Ok(())
    }

    /// The bundle as JSON (with the informational `valid` summary).
    pub fn to_json(&self) -> Result<String, CollateralError> {
        let w = self.window();
        let file = BundleFile {
            version: FORMAT_VERSION,
            created: self.created.clone(),
            not_after: self.declared_not_after.map(fmt_time),
            amd: self
                .amd
                .iter()
                .map(|a| {
                    Ok(AmdFile {
                        generation: a.generation,
                        ark: pem(&a.ark)?,
                        ask: pem(&a.ask)?,
                        crl: a
                            .crl
                            .as_ref()
                            .map(|c| c.to_pem(LineEnding::LF).map_err(|e| parse_err(e.to_string())))
                            .transpose()?,
                    })
                })
                .collect::<Result<_, CollateralError>>()?,
            vceks: self.vceks.iter().map(pem).collect::<Result<_, _>>()?,
            uvm_issuers: self.uvm_issuers.clone(),
            valid: Some(serde_json::json!({
                "not_before": fmt_time(w.not_before),
                "not_after": fmt_time(w.not_after),
                "limited_by": w.limited_by,
            })),
        };
        serde_json::to_string_pretty(&file).map_err(|e| parse_err(e.to_string()))
    }

    /// AMD collateral by generation.
    pub fn amd(&self) -> &[AmdCollateral] {
        &self.amd
    }

    /// The VCEKs.
    pub fn vceks(&self) -> &[Certificate] {
        &self.vceks
    }

    /// When the bundle was built (RFC 3339).
    pub fn created(&self) -> &str {
        &self.created
    }

    /// The trusted UVM endorsement issuers, when the bundle names any.
    pub fn uvm_trust(&self) -> Option<UvmTrust> {
        (!self.uvm_issuers.is_empty()).then(|| UvmTrust {
            issuers: self.uvm_issuers.clone(),
        })
    }

    /// The validity window (see the module docs).
    pub fn window(&self) -> Window {
        let mut w = Window {
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 4),
            starts_with: "nothing".into(),
            limited_by: "nothing".into(),
        };
        let mut item = |nb: SystemTime, na: Option<SystemTime>, what: String| {
            if nb > w.not_before {
                w.not_before = nb;
                w.starts_with = what.clone();
            }
            if let Some(na) = na
                && na < w.not_after
            {
                w.not_after = na;
                w.limited_by = what;
            }
        };
        for a in &self.amd {
            let g = a.generation.name();
            let (nb, na) = validity(&a.ark);
            item(nb, Some(na), format!("{g} ARK certificate"));
            let (nb, na) = validity(&a.ask);
            item(nb, Some(na), format!("{g} ASK certificate"));
            if let Some(crl) = &a.crl {
                item(
                    crl.tbs_cert_list.this_update.to_system_time(),
                    crl.tbs_cert_list.next_update.map(|t| t.to_system_time()),
                    format!("{g} CRL (thisUpdate .. nextUpdate)"),
                );
            }
        }
        if let Some(na) = self.declared_not_after {
            item(SystemTime::UNIX_EPOCH, Some(na), "the bundle's not_after".into());
        }
        w
    }

    /// The bundle must be usable at `at`: `collateral expired:` / `collateral not yet valid:` otherwise.
    pub fn check_valid(&self, at: SystemTime) -> Result<(), CollateralError> {
        let w = self.window();
        if at > w.not_after {
            return Err(CollateralError::Expired {
                not_after: fmt_time(w.not_after),
                limited_by: w.limited_by,
                at: fmt_time(at),
            });
        }
        if at < w.not_before {
            return Err(CollateralError::NotYetValid {
                not_before: fmt_time(w.not_before),
                starts_with: w.starts_with,
                at: fmt_time(at),
            });
        }
        Ok(())
    }

    fn generation_of(&self, ark: &Certificate) -> Option<&AmdCollateral> {
        self.amd.iter().find(|a| a.ark == *ark)
    }

    /// Check evidence's chain against the bundle at `at`: the bundle is valid, the chain's ARK and ASK are the
    /// bundle's, and neither the ASK nor the VCEK is revoked by the generation's CRL.
    pub fn check_chain(&self, chain: &CertChain, at: SystemTime) -> Result<(), CollateralError> {
        self.check_valid(at)?;
        let a = self.generation_of(&chain.ark).ok_or_else(|| CollateralError::Chain {
            detail: format!("the evidence's ARK {:?} is not in the bundle", subject(&chain.ark)),
        })?;
        let g = a.generation.name();
        if a.ask != chain.ask {
            return Err(CollateralError::Chain {
                detail: format!(
                    "the evidence's ASK (serial {}) is not the bundle's {g} ASK",
                    serial_hex(&chain.ask)
                ),
            });
        }
        if let Some(crl) = &a.crl {
            for revoked in crl.tbs_cert_list.revoked_certificates.iter().flatten() {
                for (which, cert) in [("ASK", &chain.ask), ("VCEK", &chain.vcek)] {
                    if revoked.serial_number == *cert.tbs_certificate().serial_number() {
                        return Err(CollateralError::Revoked {
                            which,
                            serial: serial_hex(cert),
                            date: fmt_time(revoked.revocation_date.to_system_time()),
                        });
                    }
                }
            }
        } else {
            tracing::debug!(
                generation = g,
                "no CRL in the collateral bundle: revocation not checked"
            );
        }
        Ok(())
    }

    /// The chain for a report from the bundle alone: the VCEK whose hwID is the report's chip_id and whose TCB
    /// is the reported TCB, with its generation's ASK and ARK.
    pub fn chain_for(&self, report: &AttestationReport) -> Result<CertChain, CollateralError> {
        for vcek in &self.vceks {
            let Ok(ext) = vcek_extensions(vcek) else { continue };
            let Some(g) = ext.product_name.as_deref().and_then(Generation::from_product_name) else {
                continue;
            };
            let hwid_matches = ext.hwid.as_deref() == Some(report.chip_id());
            let tcb = TcbVersion::decode(report.reported_tcb_raw(), g);
            if hwid_matches
                && ext.tcb_version() == tcb
                && let Some(a) = self
                    .amd
                    .iter()
                    .find(|a| a.generation == g && cert_signed_by(vcek, &a.ask))
            {
                return Ok(CertChain {
                    vcek: vcek.clone(),
                    ask: a.ask.clone(),
                    ark: a.ark.clone(),
                });
            }
        }
        Err(CollateralError::Vcek {
            detail: format!(
                "no VCEK in the bundle for chip {}… at reported TCB {:016x}",
                hex::encode(&report.chip_id()[..8]),
                report.reported_tcb_raw()
            ),
        })
    }
}

/// Builds a bundle from files: PEM certificates (any mix of ARK, ASK, VCEK, as in a KDS `cert_chain`, a
/// VCEK ‖ ASK ‖ ARK chain or THIM JSON), CRLs (DER or PEM) and UVM issuers. A generation referred to by a
/// VCEK or CRL without its ARK/ASK given gets AMD's pinned ones.
#[derive(Debug, Default)]
pub struct CollateralBuilder {
    certs: Vec<Certificate>,
    crls: Vec<CertificateList>,
    uvm_issuers: Vec<UvmIssuer>,
    not_after: Option<SystemTime>,
}

impl CollateralBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add every certificate of a PEM file.
    pub fn pem_certificates(&mut self, pem: &[u8]) -> Result<&mut Self, CollateralError> {
        let certs = Certificate::load_pem_chain(pem).map_err(|e| parse_err(format!("PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(parse_err("no certificate in the PEM file"));
        }
        self.certs.extend(certs);
        Ok(self)
    }

    /// Add the VCEK and chain of a THIM JSON document (ACI's `host-amd-cert`).
    pub fn thim_json(&mut self, json: &[u8]) -> Result<&mut Self, CollateralError> {
        let thim = ThimCerts::from_json(json).map_err(|e| parse_err(e.to_string()))?;
        self.pem_certificates(thim.chain_pem().as_bytes())
    }

    /// Add a CRL (DER or PEM).
    pub fn crl(&mut self, bytes: &[u8]) -> Result<&mut Self, CollateralError> {
        self.crls.push(decode_crl(bytes)?);
        Ok(self)
    }

    /// Trust a UVM endorsement issuer.
    pub fn uvm_issuer(&mut self, issuer: UvmIssuer) -> &mut Self {
        self.uvm_issuers.push(issuer);
        self
    }

    /// End the bundle's validity here at the latest.
    pub fn not_after(&mut self, t: SystemTime) -> &mut Self {
        self.not_after = Some(t);
        self
    }

    /// Sort the certificates, attach CRLs to their ARK, fill in pinned AMD roots, check signatures.
    pub fn build(&self) -> Result<Collateral, CollateralError> {
        let is_vcek = |c: &Certificate| vcek_extensions(c).is_ok_and(|e| !e.tcb.is_empty());
        let self_signed = |c: &Certificate| c.tbs_certificate().issuer() == c.tbs_certificate().subject();
        let mut vceks: Vec<Certificate> = Vec::new();
        let mut arks: Vec<Certificate> = Vec::new();
        let mut asks: Vec<Certificate> = Vec::new();
        for c in &self.certs {
            let list = if is_vcek(c) {
                &mut vceks
            } else if self_signed(c) {
                &mut arks
            } else {
                &mut asks
            };
            if !list.contains(c) {
                list.push(c.clone());
            }
        }
        // Generations the VCEKs need, with the pinned AMD ASK/ARK as defaults.
        for v in &vceks {
            let g = vcek_extensions(v)
                .ok()
                .and_then(|e| e.product_name)
                .and_then(|p| Generation::from_product_name(&p))
                .ok_or_else(|| parse_err(format!("VCEK serial {}: no known product name", serial_hex(v))))?;
            if !asks.iter().any(|a| cert_signed_by(v, a)) {
                let pinned = Certificate::load_pem_chain(amd_cert_chain_pem(g).as_bytes())
                    .map_err(|e| parse_err(e.to_string()))?;
                if let [ask, ark] = pinned.as_slice() {
                    asks.push(ask.clone());
                    if !arks.contains(ark) {
                        arks.push(ark.clone());
                    }
                }
            }
        }
        let mut amd = Vec::new();
        for ark in &arks {
            let ask = asks
                .iter()
                .find(|a| cert_signed_by(a, ark))
                .ok_or_else(|| CollateralError::Chain {
                    detail: format!("no ASK signed by the ARK {:?}", subject(ark)),
                })?;
            let generation = Generation::from_product_name(
                subject(ark)
                    .rsplit(['-', ' ', ','])
                    .find(|t| Generation::from_product_name(t).is_some())
                    .unwrap_or_default(),
            )
            .or_else(|| {
                vceks
                    .iter()
                    .filter(|v| cert_signed_by(v, ask))
                    .find_map(|v| vcek_extensions(v).ok()?.product_name)
                    .and_then(|p| Generation::from_product_name(&p))
            })
            .ok_or_else(|| parse_err(format!("cannot tell the generation of the ARK {:?}", subject(ark))))?;
            let crl = self.crls.iter().find(|c| crl_signed_by(c, ark)).cloned();
            amd.push(AmdCollateral {
                generation,
                ark: ark.clone(),
                ask: ask.clone(),
                crl,
            });
        }
        for c in &self.crls {
            if !amd.iter().any(|a| a.crl.as_ref() == Some(c)) {
                return Err(CollateralError::Crl {
                    detail: format!(
                        "CRL issued by {:?} is not signed by any ARK in the bundle",
                        c.tbs_cert_list.issuer.to_string()
                    ),
                });
            }
        }
        let collateral = Collateral {
            created: fmt_time(SystemTime::now()),
            declared_not_after: self.not_after,
            amd,
            vceks,
            uvm_issuers: self.uvm_issuers.clone(),
        };
        collateral.check_signatures()?;
        Ok(collateral)
    }
}
