//! Where the SNP attester finds the host's inputs: the VCEK chain, the UVM endorsement (reference info) and the
//! security policy. Each comes from the first place that has it:
//!
//! | input | 1. ACI security context | 2. `UVM_*` variables (older ACI) | 3. AKS confidential containers (kata-cc) |
//! |---|---|---|---|
//! | VCEK chain (THIM JSON) | `host-amd-cert-base64` | `UVM_HOST_AMD_CERTIFICATE` | THIM: `GET` [`THIM_URL`] with `Metadata: true` |
//! | UVM endorsement | `reference-info-base64` | `UVM_REFERENCE_INFO` | node file [`AKS_REFERENCE_INFO_FILE`] (a hostPath mount at the same path) |
//! | security policy | `security-policy-base64` | `UVM_SECURITY_POLICY` | none (only informational here) |
//!
//! [`HostSources::gather`] does the gathering without touching the SEV-SNP device, so each path is tested with
//! recorded inputs. A missing VCEK chain is an error naming every place looked at and what THIM answered; a
//! missing endorsement is a warning (the token then lacks `azure-compliant-uvm`, which a release policy may
//! require), as with the seed.
//!
//! **THIM over plain http.** THIM answers only on the link-local metadata address, over http. Nothing from it
//! is trusted: the chain travels with the report to the attestation service, which verifies VCEK → ASK → ARK to
//! the pinned AMD root and the report's signature with the VCEK. A substituted chain makes attestation fail; it
//! cannot make a report pass. [`crate::transport::check_metadata_endpoint`] is the rule: https, loopback, or
//! plain http to exactly that address (an override with `--thim-url` is held to the same rule).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{EvidenceError, chain};
use crate::evidence::thim::{ThimCerts, UvmInformation, decode_b64, security_context_dir};

/// AKS confidential containers: the UVM reference info on the node (base64 of the COSE_Sign1 endorsement).
pub const AKS_REFERENCE_INFO_FILE: &str = "/opt/confidential-containers/share/kata-containers/reference-info-base64";
/// THIM's certificate endpoint on Azure's instance metadata address.
pub const THIM_URL: &str = "http://169.254.169.254/metadata/THIM/amd/certification";

/// Attempts at THIM; transport errors, 408, 429 and 5xx are retried after 1 s, then 2 s.
const THIM_ATTEMPTS: u32 = 3;
/// THIM answers from the host; a request that takes longer is not coming.
const THIM_TIMEOUT: Duration = Duration::from_secs(10);
/// A THIM answer is about 7 KB; anything much larger is not one.
const THIM_MAX_BYTES: usize = 1 << 20;

/// Where to look for the host's inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSources {
    /// The ACI security-context directory, when there is one.
    pub security_context_dir: Option<PathBuf>,
    /// Read the seed's `UVM_SECURITY_POLICY`, `UVM_HOST_AMD_CERTIFICATE` and `UVM_REFERENCE_INFO` variables.
    pub uvm_env: bool,
    /// The UVM reference info file (AKS).
    pub reference_info_file: PathBuf,
    /// THIM's URL.
    pub thim_url: String,
}

/// Where one input came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A file of the ACI security-context directory.
    SecurityContext(PathBuf),
    /// A `UVM_*` environment variable.
    Environment(&'static str),
    /// The reference info file.
    File(PathBuf),
    /// THIM at this URL.
    Thim(String),
    /// Nowhere.
    Absent,
}

/// What [`HostSources::gather`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInputs {
    /// The inputs.
    pub uvm: UvmInformation,
    /// Where the VCEK chain came from.
    pub certs_from: Origin,
    /// Where the UVM endorsement came from.
    pub reference_info_from: Origin,
}

impl HostSources {
    /// The platform's places: the ACI directory when one exists ([`security_context_dir`]), the `UVM_*`
    /// variables, and the AKS node file and THIM, unless overridden.
    pub fn platform(reference_info_file: Option<PathBuf>, thim_url: Option<String>) -> Self {
        Self {
            security_context_dir: security_context_dir(),
            uvm_env: true,
            reference_info_file: reference_info_file.unwrap_or_else(|| PathBuf::from(AKS_REFERENCE_INFO_FILE)),
            thim_url: thim_url.unwrap_or_else(|| THIM_URL.to_owned()),
        }
    }

    /// Gathers the inputs (blocking: THIM is asked on a thread of its own, so this works inside and outside an
    /// async runtime). Fails when no VCEK chain is found, naming each place looked at.
    pub fn gather(&self) -> Result<HostInputs, EvidenceError> {
        let mut found = HostInputs {
            uvm: UvmInformation::default(),
            certs_from: Origin::Absent,
            reference_info_from: Origin::Absent,
        };
        let mut looked = Vec::new();
        match &self.security_context_dir {
            Some(dir) => {
                let aci = UvmInformation::from_dir(dir)?;
                found.take(aci, |name| Origin::SecurityContext(dir.join(name)), ACI_FILE_NAMES);
                if found.certs_from == Origin::Absent {
                    looked.push(format!(
                        "the ACI security context {} has no host-amd-cert-base64",
                        dir.display()
                    ));
                }
            }
            None => looked.push("no ACI security context (/security-context-*, $UVM_SECURITY_CONTEXT_DIR)".to_owned()),
        }
        if self.uvm_env {
            found.take(UvmInformation::from_env()?, Origin::Environment, UVM_ENV_NAMES);
            if found.certs_from == Origin::Absent {
                looked.push("UVM_HOST_AMD_CERTIFICATE is not set".to_owned());
            }
        }
        if found.uvm.reference_info.is_empty() {
            found.read_reference_file(&self.reference_info_file)?;
        }
        if found.uvm.host_amd_certs.is_none() {
            crate::transport::check_metadata_endpoint("THIM", &self.thim_url, false)
                .map_err(|e| EvidenceError::Certificates(format!("no host AMD certificate: {e}")))?;
            let certs = fetch_thim_blocking(&self.thim_url).map_err(|e| {
                EvidenceError::Certificates(format!(
                    "no host AMD certificate: {}, and THIM at {} {e}",
                    looked.join(", "),
                    self.thim_url
                ))
            })?;
            found.uvm.host_amd_certs = Some(certs);
            found.certs_from = Origin::Thim(self.thim_url.clone());
        }
        tracing::info!(certificates = ?found.certs_from, reference_info = ?found.reference_info_from, "host inputs");
        Ok(found)
    }
}

/// The file names of the ACI directory, in the order policy, certificates, reference info.
const ACI_FILE_NAMES: [&str; 3] = [
    "security-policy-base64",
    "host-amd-cert-base64",
    "reference-info-base64",
];
/// The seed's variables, in the same order.
const UVM_ENV_NAMES: [&str; 3] = ["UVM_SECURITY_POLICY", "UVM_HOST_AMD_CERTIFICATE", "UVM_REFERENCE_INFO"];

impl HostInputs {
    /// Takes from `more` what is still missing, noting where it came from.
    fn take<F: Fn(&'static str) -> Origin>(&mut self, more: UvmInformation, origin: F, names: [&'static str; 3]) {
        if self.uvm.security_policy.is_empty() && !more.security_policy.is_empty() {
            self.uvm.security_policy = more.security_policy;
        }
        if self.uvm.host_amd_certs.is_none() && more.host_amd_certs.is_some() {
            self.uvm.host_amd_certs = more.host_amd_certs;
            self.certs_from = origin(names[1]);
        }
        if self.uvm.reference_info.is_empty() && !more.reference_info.is_empty() {
            self.uvm.reference_info = more.reference_info;
            self.reference_info_from = origin(names[2]);
        }
    }

    /// The AKS node file: base64 of the endorsement. Absent is a warning; unreadable or not base64 an error.
    fn read_reference_file(&mut self, path: &Path) -> Result<(), EvidenceError> {
        match std::fs::read(path) {
            Ok(text) => {
                let what = path.display().to_string();
                self.uvm.reference_info = decode_b64(&what, &text)?;
                if self.uvm.reference_info.is_empty() {
                    tracing::warn!(path = %path.display(), "the UVM reference info file is empty");
                } else {
                    self.reference_info_from = Origin::File(path.to_owned());
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(
                    path = %path.display(),
                    "no UVM reference info (no ACI security context, no UVM_REFERENCE_INFO, no node file): tokens will \
                     not say azure-compliant-uvm; on AKS mount the node's file with a hostPath at the same path"
                );
                Ok(())
            }
            Err(source) => Err(EvidenceError::Io {
                context: format!("reading the UVM reference info {}", path.display()),
                source,
            }),
        }
    }
}

/// Why THIM gave no certificate (the text completes "THIM at URL …").
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ThimError {
    /// No answer.
    #[error("could not be reached: {0}")]
    Transport(String),
    /// An answer that is not a success.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// A success that is not a THIM certificate.
    #[error("answered something that is not a THIM certificate: {0}")]
    Body(String),
}

impl ThimError {
    fn transient(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Status(s) => *s == 408 || *s == 429 || *s >= 500,
            Self::Body(_) => false,
        }
    }
}

/// `GET url` with `Metadata: true` → the THIM JSON (not base64, unlike ACI's file), retried when transient.
pub async fn fetch_thim(url: &str) -> Result<ThimCerts, ThimError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(THIM_TIMEOUT)
        .build()
        .map_err(|e| ThimError::Transport(chain(&e)))?;
    let mut attempt = 1;
    loop {
        match fetch_thim_once(&http, url).await {
            Err(e) if e.transient() && attempt < THIM_ATTEMPTS => {
                tracing::warn!(url, attempt, "THIM {e}; retrying");
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

async fn fetch_thim_once(http: &reqwest::Client, url: &str) -> Result<ThimCerts, ThimError> {
    let transport = |e: reqwest::Error| ThimError::Transport(chain(&e.without_url()));
    let resp = http
        .get(url)
        .header("Metadata", "true")
        .send()
        .await
        .map_err(transport)?;
    if !resp.status().is_success() {
        return Err(ThimError::Status(resp.status().as_u16()));
    }
    let body = resp.bytes().await.map_err(transport)?;
    if body.len() > THIM_MAX_BYTES {
        return Err(ThimError::Body(format!("{} bytes", body.len())));
    }
    let certs = ThimCerts::from_json(&body).map_err(|e| ThimError::Body(e.to_string()))?;
    certs.tcbm().map_err(|e| ThimError::Body(e.to_string()))?;
    Ok(certs)
}

/// [`fetch_thim`] on a thread with its own runtime: callers may be inside a runtime or not.
pub fn fetch_thim_blocking(url: &str) -> Result<ThimCerts, ThimError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ThimError::Transport(format!("starting a runtime: {e}")))?;
            rt.block_on(fetch_thim(url))
        })
        .join()
        .unwrap_or_else(|_| Err(ThimError::Transport("the THIM request thread panicked".into())))
    })
}
