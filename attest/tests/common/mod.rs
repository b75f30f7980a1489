//! Helpers shared by the integration tests.

use attest::appraisal::{Appraisal, MinimumTcb};
use attest::service::ServiceConfig;

/// A service whose Milan floor is the 2022 ACI report's own TCB: the report predates the bulletins behind the
/// default floors, so the tests of its evidence give it this explicit lower floor.
pub(crate) fn config_2022() -> ServiceConfig {
    let mut min_tcb = MinimumTcb::amd_default();
    if let Err(e) = min_tcb.apply_spec("milan:bootloader=3,tee=0,snp=8,microcode=115") {
        unreachable!("a valid spec: {e}");
    }
    ServiceConfig {
        appraisal: Appraisal {
            min_tcb,
            ..Appraisal::default()
        },
        ..ServiceConfig::default()
    }
}
