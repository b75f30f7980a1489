//! Any bytes → THIM JSON parser (and tcbm, chain assembly) never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = attest::evidence::ThimCerts::from_json(data) {
        let _ = c.tcbm();
        let _ = c.chain_pem();
    }
});
