//! Any bytes → collateral bundle loader (JSON, PEM certificates and CRLs, signature checks) never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = attest::collateral::Collateral::from_json(data) {
        let _ = c.window();
        let _ = c.to_json();
    }
});
