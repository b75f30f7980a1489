//! THIM certificate JSON and ACI UVM information (security policy, host AMD certificate, reference info).
//! Where each comes from on ACI and on AKS: [`super::host`].
//!
//! On ACI the host provides, base64 (standard alphabet) encoded, in files of the security-context
//! directory or in environment variables:
//!
//! | file | env | content |
//! |---|---|---|
//! | `security-policy-base64` | `UVM_SECURITY_POLICY` | CCE policy (Rego); SHA-256 = host_data |
//! | `host-amd-cert-base64` | `UVM_HOST_AMD_CERTIFICATE` | THIM JSON `{vcekCert, tcbm, certificateChain, cacheControl}` |
//! | `reference-info-base64` | `UVM_REFERENCE_INFO` | UVM endorsement (COSE_Sign1) |

use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::error::EvidenceError;
use crate::evidence::Evidence;

/// THIM JSON: the VCEK and the AMD chain for this host.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThimCerts {
    /// VCEK, PEM.
    #[serde(default)]
    pub vcek_cert: String,
    /// TCB the VCEK was issued for, 16 hex digits (u64).
    #[serde(default)]
    pub tcbm: String,
    /// ASK ‖ ARK, PEM.
    #[serde(default)]
    pub certificate_chain: String,
    /// Cache lifetime in seconds, as a string.
    #[serde(default)]
    pub cache_control: String,
}

impl ThimCerts {
    /// Parse THIM JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EvidenceError> {
        let certs: Self =
            serde_json::from_slice(bytes).map_err(|e| EvidenceError::Certificates(format!("THIM JSON: {e}")))?;
        if certs.vcek_cert.is_empty() || certs.certificate_chain.is_empty() {
            return Err(EvidenceError::Certificates(
                "THIM JSON: vcekCert or certificateChain is empty".into(),
            ));
        }
        Ok(certs)
    }

    /// The TCB as a u64 (`tcbm` parsed as hex).
    pub fn tcbm(&self) -> Result<u64, EvidenceError> {
        u64::from_str_radix(self.tcbm.trim(), 16)
            .map_err(|e| EvidenceError::Certificates(format!("THIM tcbm {:?}: {e}", self.tcbm)))
    }

    /// VCEK ‖ ASK ‖ ARK, PEM.
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.vcek_cert, self.certificate_chain)
    }
}

/// UVM information provided by the ACI host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UvmInformation {
    /// The CCE policy (decoded Rego text).
    pub security_policy: Vec<u8>,
    /// Host AMD certificates.
    pub host_amd_certs: Option<ThimCerts>,
    /// UVM reference info (COSE_Sign1 bytes).
    pub reference_info: Vec<u8>,
}

impl UvmInformation {
    /// SHA-256 of the security policy: what the host put in host_data.
    pub fn policy_digest(&self) -> [u8; 32] {
        Sha256::digest(&self.security_policy).into()
    }

    /// Evidence for `report` from this host: the report, the host's VCEK chain (THIM `vcekCert` ‖
    /// `certificateChain`) and the UVM endorsement (`reference-info`) when the host provides one — what the
    /// SNP device attester sends, so the sidecar and the proxy server pass the endorsement on to the
    /// attestation service (`Endorsements.Uvm` of the MAA request, [`crate::client::AttestationClient`]).
    pub fn evidence(&self, report: Vec<u8>) -> Result<Evidence, EvidenceError> {
        let certs = self.host_amd_certs.as_ref().ok_or_else(|| {
            EvidenceError::Certificates(
                "no host AMD certificate (ACI host-amd-cert-base64, UVM_HOST_AMD_CERTIFICATE or THIM)".into(),
            )
        })?;
        if let (Ok(tcbm), Some(reported)) = (certs.tcbm(), reported_tcb(&report))
            && reported != tcbm
        {
            tracing::warn!(reported = format!("{reported:016x}"), tcbm = %certs.tcbm, "reported TCB differs from the host VCEK's TCB");
        }
        if self.reference_info.is_empty() {
            tracing::warn!(
                "the host provides no UVM endorsement (reference-info): the token will not be azure-compliant-uvm"
            );
        }
        Ok(Evidence {
            report,
            cert_chain_pem: certs.chain_pem(),
            uvm_endorsements: (!self.reference_info.is_empty()).then(|| self.reference_info.clone()),
            gpus: Vec::new(),
        })
    }

    /// Read the three `*-base64` files from `dir` (missing files are empty).
    pub fn from_dir(dir: &Path) -> Result<Self, EvidenceError> {
        let read = |name: &str| -> Result<Vec<u8>, EvidenceError> {
            match std::fs::read(dir.join(name)) {
                Ok(b) => decode_b64(name, &b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(source) => Err(EvidenceError::Io {
                    context: format!("reading {name}"),
                    source,
                }),
            }
        };
        Self::from_parts(
            read("security-policy-base64")?,
            read("host-amd-cert-base64")?,
            read("reference-info-base64")?,
        )
    }

    /// Read `UVM_SECURITY_POLICY`, `UVM_HOST_AMD_CERTIFICATE`, `UVM_REFERENCE_INFO`.
    pub fn from_env() -> Result<Self, EvidenceError> {
        let var = |name: &str| -> Result<Vec<u8>, EvidenceError> {
            match std::env::var(name) {
                Ok(v) => decode_b64(name, v.as_bytes()),
                Err(_) => Ok(Vec::new()),
            }
        };
        Self::from_parts(
            var("UVM_SECURITY_POLICY")?,
            var("UVM_HOST_AMD_CERTIFICATE")?,
            var("UVM_REFERENCE_INFO")?,
        )
    }

    fn from_parts(policy: Vec<u8>, certs: Vec<u8>, reference: Vec<u8>) -> Result<Self, EvidenceError> {
        let host_amd_certs = if certs.is_empty() {
            None
        } else {
            Some(ThimCerts::from_json(&certs)?)
        };
        Ok(Self {
            security_policy: policy,
            host_amd_certs,
            reference_info: reference,
        })
    }
}

/// The report's REPORTED_TCB (offset 0x180, u64 LE): the TCB a THIM VCEK must be issued for.
pub(crate) fn reported_tcb(report: &[u8]) -> Option<u64> {
    report
        .get(0x180..0x188)
        .and_then(|raw| raw.try_into().ok())
        .map(u64::from_le_bytes)
}

pub(crate) fn decode_b64(name: &str, bytes: &[u8]) -> Result<Vec<u8>, EvidenceError> {
    let trimmed: Vec<u8> = bytes.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .map_err(|e| EvidenceError::Certificates(format!("{name}: not base64: {e}")))
}

/// The ACI security-context directory, if any.
pub fn security_context_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("UVM_SECURITY_CONTEXT_DIR") {
        return Some(PathBuf::from(dir));
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir("/")
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("security-context-"))
        .map(|e| e.path())
        .collect();
    entries.sort();
    entries.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thim_json_requires_both_certificates() {
        assert!(ThimCerts::from_json(br#"{"vcekCert":"","tcbm":"1","certificateChain":"x"}"#).is_err());
        assert!(ThimCerts::from_json(b"not json").is_err());
        let c = ThimCerts::from_json(br#"{"vcekCert":"A","tcbm":"7308000000000003","certificateChain":"B"}"#).unwrap();
        assert_eq!(c.tcbm().unwrap(), 0x7308_0000_0000_0003);
        assert_eq!(c.chain_pem(), "AB");
    }
}
