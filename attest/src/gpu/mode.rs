//! Confidential-computing mode and developer-tools mode of a verified GPU, as far as the evidence shows them.
//!
//! **What the signed report says.** Nothing directly: the Hopper report's opaque data fields
//! (`OPAQUE_FIELD_ID_*` 1–36 in NVIDIA's SDKs, [`super::spdm::field`]) carry no CC-mode or DevTools field.
//! NVIDIA's verifiers read both from the guest driver (NVML `nvmlSystemGetConfComputeState`: `ccFeature`,
//! `devToolsMode`; nvtrust `cc_admin.init_nvml`, attestation-sdk `nvml_client.cpp`), which is not evidence:
//! a host that controls the guest's view of the driver could say anything. They refuse to run without CC
//! (or PPCIe) and only log DevTools.
//!
//! **What cinfer derives, failing closed** (per GPU):
//!
//! * `OPAQUE_FIELD_ID_FEATURE_FLAG` (36), when present, is signed: NVIDIA's SDK reads it as `MPT = 0`,
//!   `SPT = 1`, `PPCIE = 2` (`GpuEvidence::AttestationReport::OpaqueDataFeatureFlag`). PPCIe (protected PCIe) is
//!   NVIDIA's alternative to CC mode (nvtrust `init_nvml` requires "either Confidential Compute mode or PPCIE
//!   mode"), so `2` gives [`CcMode::ProtectedPcie`] and any value other than 0, 1, 2 gives [`CcMode::Unknown`].
//! * Otherwise CC mode is [`CcMode::On`] only when both RIMs verified and every active golden measurement
//!   matched: NVIDIA's RIMs describe the production CC firmware state, and NVIDIA's own claims derive
//!   `secboot: true` and `dbgstat: disabled` from exactly that (`ClaimsUtils.get_current_gpu_claims`).
//!   Without a measurement match (no RIM in the collateral for the report's versions) it is
//!   [`CcMode::Unknown`], never assumed.
//! * DevTools is `Some(false)` under the same condition and `None` (unknown) otherwise: DevTools changes
//!   measurements that the production RIMs fix (nvtrust issue #35: a GPU with `enable-devtools` on failed
//!   the comparison and passed once it was off; NVIDIA: "should be set to OFF by default"). A GPU that did
//!   not match is refused by the verifier before any claim exists, so `Some(true)` is never derived.
//!
//! The limit of this inference: a CC or DevTools state that changed no measured value would not be seen;
//! NVIDIA's verifier has the same limit, and cinfer never reports "on" for what it did not establish. The
//! sources disagree on DevTools (dstack issue #778 says NVIDIA's overall result can pass in DevTools mode), so
//! `false` here is NVIDIA's inference, not a value read from the GPU.

use super::VerifiedGpu;
use super::spdm::field;

/// The CC mode of a verified GPU, as derived above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CcMode {
    /// CC mode on (measurements matched, feature flag absent or MPT/SPT).
    On,
    /// The report's feature flag says protected PCIe (CC mode off on the GPU).
    ProtectedPcie,
    /// Not established.
    Unknown,
}

impl CcMode {
    /// The claim value: `on`, `ppcie` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::ProtectedPcie => "ppcie",
            Self::Unknown => "unknown",
        }
    }
}

/// The report's feature flag (little-endian, at most 8 bytes), when present.
pub fn feature_flag(v: &VerifiedGpu) -> Option<u64> {
    let data = v.report.opaque_field(field::FEATURE_FLAG)?;
    if data.is_empty() || data.len() > 8 {
        return Some(u64::MAX);
    }
    let mut b = [0u8; 8];
    b[..data.len()].copy_from_slice(data);
    Some(u64::from_le_bytes(b))
}

/// The GPU's CC mode.
pub fn cc_mode(v: &VerifiedGpu) -> CcMode {
    match feature_flag(v) {
        Some(2) => CcMode::ProtectedPcie,
        Some(0 | 1) | None if v.measurements_matched() => CcMode::On,
        _ => CcMode::Unknown,
    }
}

/// Whether the GPU is in DevTools mode: `Some(false)` when established, `None` when unknown.
pub fn devtools(v: &VerifiedGpu) -> Option<bool> {
    v.measurements_matched().then_some(false)
}
