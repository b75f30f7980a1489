//! NVIDIA confidential-computing GPU evidence (Hopper H100/H200), verified offline: the verifier beside
//! [`crate::verify`] (SEV-SNP), one module per TEE as trustee keeps them.
//!
//! # Flow (NVIDIA's local GPU verifier, `nvtrust` `cc_admin.attest`, without its network services)
//!
//! [`verify_gpu`] runs these checks in order; each failure is a [`GpuError`] whose message starts with the
//! check's name ([`GpuError::check`]):
//!
//! 1. `gpu report parse` — the SPDM 1.1 `GET_MEASUREMENTS` request ‖ `MEASUREMENTS` response
//!    ([`spdm::GpuReport::parse`]: every length checked, no missing or trailing bytes);
//! 2. `gpu nonce` — the request's nonce equals the expected one (when one is given; the composite flow
//!    always gives one, derived from the runtime data the SNP report binds);
//! 3. `gpu root` / `gpu chain` / `gpu chain expiry` — the device chain (leaf first, root last) ends in the
//!    configured device root ([`GpuTrust::nvidia`] ships `verifier_device_root.pem`) and validates at `at`;
//!    `gpu revoked` — no certificate's serial is in the offline revocation list;
//! 4. `gpu signature` — ECDSA P-384/SHA-384 by the leaf key over request ‖ response-without-signature;
//! 5. `gpu fwid` — when the report carries a FWID, it equals the leaf certificate's TCG DICE FWID (NVIDIA
//!    checks this before the signature, as part of the chain; here a report that does not verify is named
//!    by its signature first, then the signed FWID must match the certificate);
//! 6. `rim parse` / `rim chain` / `rim expiry` / `rim signature` / `rim version` — each RIM given (driver,
//!    VBIOS): its signing chain to the RIM root at `at`, its XML-DSig (C14N 1.1, SHA-384, ECDSA P-384), and
//!    its `colloquialVersion` equal to the report's driver or VBIOS version; a root that is not a
//!    self-signed CA is refused when configured (`rim root`);
//! 7. `measurements` — every active golden measurement equals the report's block ([`measure::compare`]).
//!
//! The result, [`VerifiedGpu`], turns into claims under NVIDIA's names ([`claims::gpu_claims`]).
//!
//! # Where this differs from NVIDIA's flow, and why
//!
//! * No network: RIMs and revocation data come from files or an offline bundle
//!   ([`collateral::GpuCollateral`], with its own validity window); there is no OCSP. Claims say
//!   `x-nvidia-cert-ocsp-status: "not-checked"` rather than NVIDIA's `"good"`.
//! * Fail closed: a RIM whose version differs from the report's is refused (NVIDIA only warns); a
//!   measurement mismatch is an error, not a claim.
//! * No XML Schema validation of the SWID tag (NVIDIA validates against the 2015 XSD): the signed content
//!   is read by name, and only the elements read are trusted; the `*-schema-validated` claims are absent.
//! * The device root is pinned by the caller (NVIDIA's verifier trusts the chain's own last certificate
//!   after building an OpenSSL store from it).

pub mod binding;
pub mod c14n;
pub mod certs;
pub mod claims;
pub mod collateral;
pub mod error;
pub mod measure;
pub mod mock;
pub mod mode;
pub mod requirement;
pub mod rim;
pub mod spdm;

use std::time::SystemTime;

use base64::Engine as _;
use subtle::ConstantTimeEq;

pub use error::{GpuError, RimKind};

use certs::{Cert, PathError, TrustedRoot};
use measure::MeasurementOutcome;
use rim::VerifiedRim;
use spdm::GpuReport;

const NVIDIA_DEVICE_ROOT: &[u8] = include_bytes!("../roots/nvidia-device-root.pem");
const NVIDIA_RIM_ROOT: &[u8] = include_bytes!("../roots/nvidia-rim-root.pem");

/// The roots GPU evidence and RIMs must chain to.
#[derive(Clone, Debug)]
pub struct GpuTrust {
    /// Root of the GPU device identity chains.
    pub device_root: TrustedRoot,
    /// Root of the RIM signing chains.
    pub rim_root: TrustedRoot,
    /// `nvidia`, or `mock:<sha256 of the device root's SPKI>`: the `x-cinfer-gpu-root` claim.
    pub label: String,
}

impl GpuTrust {
    /// NVIDIA's device identity root and CoRIM signing root, shipped in the crate (from
    /// NVIDIA/nvtrust `local_gpu_verifier/src/verifier/certs/`).
    pub fn nvidia() -> Self {
        // INVARIANT: the embedded roots are fixed files checked by `nvidia_roots_parse` below.
        #[allow(clippy::expect_used)]
        Self {
            device_root: TrustedRoot::from_pem(NVIDIA_DEVICE_ROOT).expect("embedded NVIDIA device root"),
            rim_root: TrustedRoot::from_pem(NVIDIA_RIM_ROOT).expect("embedded NVIDIA RIM root"),
            label: "nvidia".into(),
        }
    }

    /// Roots from PEM files (`--device-root`, `--rim-root`); either `None` keeps NVIDIA's.
    pub fn with_roots(device_root: Option<&[u8]>, rim_root: Option<&[u8]>) -> Result<Self, GpuError> {
        let mut t = Self::nvidia();
        if let Some(pem) = device_root {
            let nvidia_der = t.device_root.cert.der.clone();
            t.device_root = TrustedRoot::from_pem(pem).map_err(|detail| GpuError::Root { detail })?;
            if t.device_root.cert.der != nvidia_der {
                t.label = format!("custom:{}", t.device_root.cert.spki_sha256());
            }
        }
        if let Some(pem) = rim_root {
            t.rim_root = TrustedRoot::from_pem(pem).map_err(|detail| GpuError::RimRoot { detail })?;
        }
        Ok(t)
    }

    /// A mock GPU's roots ([`mock::MockGpuRoot`]); only trusted where a caller configures them explicitly.
    pub fn mock(device_root_pem: &[u8], rim_root_pem: &[u8]) -> Result<Self, GpuError> {
        let device_root = TrustedRoot::from_pem(device_root_pem).map_err(|detail| GpuError::Root { detail })?;
        let rim_root = TrustedRoot::from_pem(rim_root_pem).map_err(|detail| GpuError::RimRoot { detail })?;
        let label = format!("mock:{}", device_root.cert.spki_sha256());
        Ok(Self {
            device_root,
            rim_root,
            label,
        })
    }
}

/// One GPU's evidence as it travels: the report and the device certificate chain. The JSON form is
/// NVIDIA's remote-evidence object (`{"evidence": b64(report), "certificate": b64(PEM chain)}`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GpuEvidence {
    /// The attestation report (request ‖ response), base64 in JSON.
    #[serde(rename = "evidence", with = "b64")]
    pub report: Vec<u8>,
    /// The PEM certificate chain, leaf first, base64 in JSON.
    #[serde(rename = "certificate", with = "b64")]
    pub cert_chain_pem: Vec<u8>,
}

mod b64 {
    use base64::Engine as _;
    pub(super) fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

impl GpuEvidence {
    /// From NVIDIA's file forms: the report as hex text (or raw bytes) and the PEM chain.
    pub fn from_files(report: &[u8], cert_chain_pem: &[u8]) -> Result<Self, GpuError> {
        let text_is_hex = report.iter().all(|b| b.is_ascii_hexdigit() || b.is_ascii_whitespace());
        let report = if text_is_hex {
            let compact: String = report
                .iter()
                .filter(|b| !b.is_ascii_whitespace())
                .map(|&b| b as char)
                .collect();
            hex::decode(compact).map_err(|e| GpuError::Parse {
                detail: format!("report file is not hex: {e}"),
            })?
        } else {
            report.to_vec()
        };
        Ok(Self {
            report,
            cert_chain_pem: cert_chain_pem.to_vec(),
        })
    }

    /// Base64 of the JSON form, for transports that carry one string.
    pub fn to_b64_json(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// Produces the evidence of the guest's GPUs for an SPDM nonce (the composite flow derives it with
/// [`binding::gpu_nonce`] from the SNP report_data: [`crate::evidence::CompositeAttester`]).
pub trait GpuAttester: Send + Sync {
    /// One [`GpuEvidence`] per GPU, each report's request carrying exactly `nonce`.
    fn gpu_evidence(&self, nonce: &[u8; spdm::NONCE_LEN]) -> Result<Vec<GpuEvidence>, crate::error::EvidenceError>;
}

/// What to verify against.
#[derive(Clone, Debug)]
pub struct GpuVerifyOptions {
    /// Verification time (certificate and RIM validity).
    pub at: SystemTime,
    /// The nonce the request must carry; `None` skips the check (the claim then says so).
    pub nonce: Option<[u8; spdm::NONCE_LEN]>,
    /// The driver RIM (SWID XML), when measurements are to be compared.
    pub driver_rim: Option<Vec<u8>>,
    /// The VBIOS RIM (SWID XML).
    pub vbios_rim: Option<Vec<u8>>,
    /// Revoked certificate serials (lower-case hex, as encoded), from offline collateral.
    pub revoked_serials: Vec<String>,
}

impl GpuVerifyOptions {
    /// Verify at `at` with nothing else configured.
    pub fn at(at: SystemTime) -> Self {
        Self {
            at,
            nonce: None,
            driver_rim: None,
            vbios_rim: None,
            revoked_serials: Vec::new(),
        }
    }
}

/// A verified GPU report and what was established about it.
#[derive(Clone, Debug)]
pub struct VerifiedGpu {
    /// The report.
    pub report: GpuReport,
    /// [`GpuTrust::label`] of the root the chain ended in.
    pub root_label: String,
    /// Common name of the chain's second certificate (NVIDIA's `hwmodel`, e.g. `GH100 A01 GSP BROM`).
    pub hwmodel: String,
    /// Leaf serial in decimal (NVIDIA's `ueid`).
    pub ueid: String,
    /// Earliest notAfter on the device chain.
    pub chain_not_after: SystemTime,
    /// `Some(true)` when the report's FWID matched the leaf's; `None` when the report has no FWID.
    pub fwid_matched: Option<bool>,
    /// Whether an expected nonce was given (and so matched).
    pub nonce_checked: bool,
    /// The verified driver RIM.
    pub driver_rim: Option<VerifiedRim>,
    /// The verified VBIOS RIM.
    pub vbios_rim: Option<VerifiedRim>,
    /// The measurement comparison, when any RIM was given.
    pub measurements: Option<MeasurementOutcome>,
}

impl VerifiedGpu {
    /// Both RIMs verified and every active golden measurement matched (NVIDIA's `measres: success`).
    pub fn measurements_matched(&self) -> bool {
        self.measurements.as_ref().is_some_and(|m| m.driver && m.vbios)
    }
}

fn revoked(serials: &[String], serial_hex: &str) -> bool {
    serials.iter().any(|s| s.eq_ignore_ascii_case(serial_hex))
}

/// Verify one GPU's evidence (see the module doc for the checks, in order).
pub fn verify_gpu(ev: &GpuEvidence, trust: &GpuTrust, opts: &GpuVerifyOptions) -> Result<VerifiedGpu, GpuError> {
    let report = GpuReport::parse(&ev.report)?;

    if let Some(expected) = opts.nonce
        && !bool::from(expected.ct_eq(&report.request.nonce))
    {
        return Err(GpuError::Nonce {
            expected: hex::encode(expected),
            actual: hex::encode(report.request.nonce),
        });
    }

    let chain = certs::parse_pem_chain(&ev.cert_chain_pem).map_err(|detail| GpuError::Chain { detail })?;
    let (leaf, rest) = chain.split_first().ok_or_else(|| GpuError::Chain {
        detail: "empty chain".into(),
    })?;
    let Some((last, middle)) = rest.split_last() else {
        return Err(GpuError::Chain {
            detail: "the chain has only a leaf; expected leaf … root".into(),
        });
    };
    if last.der != trust.device_root.cert.der {
        return Err(GpuError::Root {
            detail: format!(
                "the chain ends in {:?} (spki sha256 {}), not the configured device root {:?}",
                last.subject(),
                last.spki_sha256(),
                trust.device_root.cert.subject()
            ),
        });
    }
    certs::validate_path(leaf, middle, &trust.device_root, opts.at).map_err(|e| match e {
        PathError::Expiry(detail) => GpuError::ChainExpiry { detail },
        PathError::Invalid(detail) => GpuError::Chain { detail },
    })?;
    for c in chain.iter() {
        let serial = hex::encode(c.serial());
        if revoked(&opts.revoked_serials, &serial) {
            return Err(GpuError::Revoked {
                subject: c.subject(),
                serial,
            });
        }
    }

    verify_report_signature(&report, leaf)?;

    let fwid_matched = match report.fwid() {
        None => None,
        Some(fwid) => match leaf.dice_fwid() {
            Some(cert_fwid) if cert_fwid.as_slice() == fwid => Some(true),
            Some(cert_fwid) => {
                return Err(GpuError::Fwid {
                    detail: format!("report {}, certificate {}", hex::encode(fwid), hex::encode(cert_fwid)),
                });
            }
            None => {
                return Err(GpuError::Fwid {
                    detail: "the leaf certificate has no TCG DICE FWID extension".into(),
                });
            }
        },
    };

    let driver_rim = opts
        .driver_rim
        .as_deref()
        .map(|b| verify_rim_for(b, RimKind::Driver, &report, trust, opts))
        .transpose()?;
    let vbios_rim = opts
        .vbios_rim
        .as_deref()
        .map(|b| verify_rim_for(b, RimKind::Vbios, &report, trust, opts))
        .transpose()?;
    let measurements = if driver_rim.is_some() || vbios_rim.is_some() {
        Some(measure::compare(&report, driver_rim.as_ref(), vbios_rim.as_ref())?)
    } else {
        None
    };

    let hwmodel = middle.first().and_then(Cert::common_name).unwrap_or_default();
    let chain_not_after = chain
        .iter()
        .map(Cert::not_after)
        .min()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(VerifiedGpu {
        ueid: certs::decimal(leaf.serial()),
        hwmodel,
        chain_not_after,
        root_label: trust.label.clone(),
        fwid_matched,
        nonce_checked: opts.nonce.is_some(),
        driver_rim,
        vbios_rim,
        measurements,
        report,
    })
}

fn verify_report_signature(report: &GpuReport, leaf: &Cert) -> Result<(), GpuError> {
    leaf.verify_p384(report.signed_bytes(), &report.signature)
        .map_err(|e| GpuError::Signature {
            detail: format!("over request ‖ response ({} bytes): {e}", report.signed_bytes().len()),
        })
}

fn verify_rim_for(
    bytes: &[u8],
    kind: RimKind,
    report: &GpuReport,
    trust: &GpuTrust,
    opts: &GpuVerifyOptions,
) -> Result<VerifiedRim, GpuError> {
    let rim = rim::verify_rim(bytes, kind, &trust.rim_root, opts.at)?;
    for (serial, subject) in &rim.chain_serials {
        if revoked(&opts.revoked_serials, serial) {
            return Err(GpuError::RimChain {
                which: kind,
                detail: format!("certificate {subject:?} (serial {serial}) is revoked"),
            });
        }
    }
    let reported = match kind {
        RimKind::Driver => report.driver_version(),
        RimKind::Vbios => report.vbios_version(),
    }
    .unwrap_or_default();
    if !rim.version.eq_ignore_ascii_case(&reported) {
        return Err(GpuError::RimVersion {
            which: kind,
            rim: rim.version,
            report: reported,
        });
    }
    Ok(rim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_roots_parse() {
        let t = GpuTrust::nvidia();
        assert_eq!(
            t.device_root.cert.common_name().as_deref(),
            Some("NVIDIA Device Identity CA")
        );
        assert_eq!(
            t.rim_root.cert.common_name().as_deref(),
            Some("NVIDIA CoRIM signing Root CA")
        );
    }
}
