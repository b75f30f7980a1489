//! Any bytes → report parser and field accessors never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = attest::report::AttestationReport::from_bytes(data) {
        let _ = (r.vmpl(), r.policy(), r.is_debuggable(), r.reported_tcb_raw(), r.cpuid(), r.generation_hint());
        let _ = r.signature_rs();
        let _ = (r.report_data(), r.measurement(), r.host_data(), r.chip_id());
    }
    // The PEM chain parser and TCB extension decoder on arbitrary input.
    if let Ok(chain) = attest::verify::CertChain::from_pem(data) {
        let _ = attest::verify::vcek_extensions(&chain.vcek);
    }
});
