//! Evidence: an SNP report plus the VCEK chain (and optional UVM endorsement), from the guest device or
//! from the mock attester.
//!
//! There is no silent fallback: [`SnpDeviceAttester::open`] fails with [`EvidenceError::NoDevice`] when
//! neither `/dev/sev-guest` nor `/dev/sev` exists, and the mock is only built when asked for.

pub mod device;
pub mod host;
pub mod mock;
pub mod thim;

use crate::error::EvidenceError;

/// What an attester produces for one report_data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// The 1184-byte SNP report.
    pub report: Vec<u8>,
    /// VCEK ‖ ASK ‖ ARK, PEM text (MAA `VcekCertChain`).
    pub cert_chain_pem: String,
    /// UVM reference info (COSE_Sign1), passed to MAA as an endorsement when present.
    pub uvm_endorsements: Option<Vec<u8>>,
}

/// Produces evidence binding `report_data`.
pub trait Attester: Send + Sync {
    /// Evidence whose report carries exactly `report_data`.
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError>;
}

pub use device::SnpDeviceAttester;
pub use host::{HostInputs, HostSources, Origin};
pub use mock::{MockAttester, MockConfig, MockRoot};
pub use thim::{ThimCerts, UvmInformation};
