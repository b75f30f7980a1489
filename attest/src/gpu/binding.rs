//! The composite binding: the GPU's SPDM nonce is derived from the 64 bytes the SNP report carries in
//! `report_data`, so one runtime data (and the runtime key in it) is bound by both the CPU and every GPU.
//!
//! ```text
//! report_data = SHA-256(runtime data) ‖ 0³²                       (MAA's binding, in the SNP report)
//! gpu nonce   = SHA-256("cinfer-gpu-nonce-v1" ‖ 0x00 ‖ report_data)  (in each GPU's GET_MEASUREMENTS request)
//! ```
//!
//! The guest computes `report_data` once, asks the SNP firmware for a report over it and every GPU for
//! measurements over the derived nonce; the service recomputes both from the runtime data of the request
//! and compares each exactly (constant time). An old GPU report cannot be paired with new SNP evidence
//! (its nonce names other runtime data), nor an old SNP report with fresh GPU evidence (the SNP
//! report_data names the runtime data the GPU nonce is derived from). The label separates this use of the
//! report_data from any other: the GPU never signs the report_data itself, and no other cinfer value is
//! SHA-256 over the same prefix.

use sha2::{Digest, Sha256};

use super::spdm::NONCE_LEN;

/// Domain label of the derivation (the NUL after it ends the label).
pub const GPU_NONCE_LABEL: &[u8] = b"cinfer-gpu-nonce-v1";

/// The SPDM nonce every GPU must sign for SNP evidence whose report carries `report_data`.
pub fn gpu_nonce(report_data: &[u8; 64]) -> [u8; NONCE_LEN] {
    let mut h = Sha256::new();
    h.update(GPU_NONCE_LABEL);
    h.update([0u8]);
    h.update(report_data);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_is_the_labelled_hash_of_the_report_data() {
        // Oracle: Python's hashlib, sha256(b"cinfer-gpu-nonce-v1\0" + sha256(b'{"keys":[]}') + bytes(32)).
        let report_data = crate::verify::maa_report_data(br#"{"keys":[]}"#);
        assert_eq!(
            hex::encode(gpu_nonce(&report_data)),
            "c03b045c4c615dbd2a368f2198b113db77311458a258544058231427b1f1dbf4"
        );
        let other = crate::verify::maa_report_data(br#"{"keys":[1]}"#);
        assert_ne!(gpu_nonce(&report_data), gpu_nonce(&other));
    }
}
