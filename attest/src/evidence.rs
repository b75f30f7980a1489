//! Evidence: an SNP report plus the VCEK chain (and optional UVM endorsement), from the guest device or
//! from the mock attester.
//!
//! There is no silent fallback: [`SnpDeviceAttester::open`] fails with [`EvidenceError::NoDevice`] when
//! neither `/dev/sev-guest` nor `/dev/sev` exists, and the mock is only built when asked for.

pub mod device;
pub mod host;
pub mod mock;
pub mod thim;

use std::sync::Arc;

use crate::error::EvidenceError;
use crate::gpu::{GpuAttester, GpuEvidence, binding};

/// What an attester produces for one report_data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// The 1184-byte SNP report.
    pub report: Vec<u8>,
    /// VCEK ‖ ASK ‖ ARK, PEM text (MAA `VcekCertChain`).
    pub cert_chain_pem: String,
    /// UVM reference info (COSE_Sign1), passed to MAA as an endorsement when present.
    pub uvm_endorsements: Option<Vec<u8>>,
    /// The GPUs' evidence, each report's nonce derived from the same report_data
    /// ([`crate::gpu::binding::gpu_nonce`]); empty without GPUs ([`CompositeAttester`]).
    pub gpus: Vec<GpuEvidence>,
}

/// Produces evidence binding `report_data`.
pub trait Attester: Send + Sync {
    /// Evidence whose report carries exactly `report_data`.
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError>;
}

/// SNP evidence plus the evidence of the guest's GPUs, bound together: each GPU signs the nonce
/// [`binding::gpu_nonce`] derives from the report_data the SNP report carries, so neither half can be
/// replayed with another.
pub struct CompositeAttester {
    cpu: Arc<dyn Attester>,
    gpus: Arc<dyn GpuAttester>,
}

impl std::fmt::Debug for CompositeAttester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompositeAttester").finish_non_exhaustive()
    }
}

impl CompositeAttester {
    /// `cpu`'s evidence with `gpus`' evidence added.
    pub fn new(cpu: Arc<dyn Attester>, gpus: Arc<dyn GpuAttester>) -> Self {
        Self { cpu, gpus }
    }
}

impl Attester for CompositeAttester {
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let mut evidence = self.cpu.evidence(report_data)?;
        evidence.gpus = self.gpus.gpu_evidence(&binding::gpu_nonce(report_data))?;
        Ok(evidence)
    }
}

pub use device::SnpDeviceAttester;
pub use host::{HostInputs, HostSources, Origin};
pub use mock::{MockAttester, MockConfig, MockRoot};
pub use thim::{ThimCerts, UvmInformation};
