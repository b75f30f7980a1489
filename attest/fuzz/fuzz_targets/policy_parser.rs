//! Any text → attestation policy parser / signed-policy loader and release policy parser never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = attest::policy::AttestationPolicy::parse(text) {
            let _ = p.evaluate(&attest::token::Claims::new());
        }
        let _ = attest::policy::AttestationPolicy::from_document(text, &[]);
    }
    if let Ok(p) = attest::policy::ReleasePolicy::from_json(data) {
        let _ = p.evaluate("https://x", &attest::token::Claims::new());
    }
});
