//! ACI evidence verified as one set: the SNP report with its VCEK chain, the UVM endorsement the host
//! provides next to it, and (when the verifier has it) the container group's security policy.
//!
//! [`verify_aci`] runs [`crate::verify::verify_report`] (with host_data pinned to SHA-256 of the policy when
//! one is given), then [`crate::endorsement::verify_uvm_endorsement`] and the measurement comparison. The
//! result is compliant (`x-ms-compliance-status: azure-compliant-uvm`, see [`crate::claims::aci_claims`])
//! exactly when an endorsement came with the evidence and every check passed; a failing endorsement is an
//! error, not a silently non-compliant result, so its named check reaches the caller.

use sha2::{Digest, Sha256};

use crate::endorsement::{UvmTrust, VerifiedUvmEndorsement, verify_uvm_endorsement};
use crate::error::{EndorsementError, VerifyError};
use crate::verify::{CertChain, TrustStore, VerifiedReport, VerifyOptions, verify_report};

/// The parts of one ACI evidence set.
#[derive(Clone, Copy, Debug)]
pub struct AciEvidence<'a> {
    /// The 1184-byte SNP report.
    pub report: &'a [u8],
    /// VCEK, ASK, ARK.
    pub chain: &'a CertChain,
    /// The UVM endorsement (COSE_Sign1), if the host provided one.
    pub uvm_endorsement: Option<&'a [u8]>,
    /// The decoded security (CCE) policy; when given, host_data must be its SHA-256.
    pub security_policy: Option<&'a [u8]>,
}

/// An ACI evidence set that passed every check.
#[derive(Clone, Debug)]
pub struct VerifiedAci {
    /// The verified report.
    pub report: VerifiedReport,
    /// The verified endorsement, whose launch measurement equals the report's.
    pub uvm: Option<VerifiedUvmEndorsement>,
}

impl VerifiedAci {
    /// Whether the UVM is endorsed (the condition for `azure-compliant-uvm`).
    pub fn is_endorsed(&self) -> bool {
        self.uvm.is_some()
    }
}

/// A failed check of an ACI evidence set; the text names the check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AciError {
    /// The report, its chain or a report field.
    #[error(transparent)]
    Report(#[from] VerifyError),
    /// The UVM endorsement.
    #[error(transparent)]
    Endorsement(#[from] EndorsementError),
}

/// SHA-256 of a security policy: the host_data an ACI host sets for it.
pub fn policy_host_data(policy: &[u8]) -> [u8; 32] {
    Sha256::digest(policy).into()
}

/// Verify an ACI evidence set: the report (as [`verify_report`] with `opts`; host_data pinned to the
/// policy's SHA-256 when a policy is given), then the endorsement against `uvm_trust` at `opts.at` and its
/// measurement against the report's.
pub fn verify_aci(
    ev: &AciEvidence<'_>,
    trust: &TrustStore,
    uvm_trust: &UvmTrust,
    opts: &VerifyOptions,
) -> Result<VerifiedAci, AciError> {
    let mut opts = opts.clone();
    if let Some(policy) = ev.security_policy {
        opts.expected_host_data = Some(policy_host_data(policy));
    }
    let report = verify_report(ev.report, ev.chain, trust, &opts)?;
    let uvm = match ev.uvm_endorsement {
        Some(bytes) => {
            let v = verify_uvm_endorsement(bytes, uvm_trust, opts.at)?;
            v.check_measurement(report.report.measurement())?;
            Some(v)
        }
        None => None,
    };
    Ok(VerifiedAci { report, uvm })
}
