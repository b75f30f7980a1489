//! Any bytes → UVM endorsement (COSE_Sign1) parser, payload parser and full verification never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = attest::endorsement::UvmEndorsementDoc::parse(data) {
        let _ = doc.signed_bytes();
        let _ = attest::endorsement::UvmPayload::from_json(doc.payload());
        let _ = attest::endorsement::DidX509::parse(&doc.issuer);
    }
    let _ = attest::endorsement::verify_uvm_endorsement(
        data,
        &attest::endorsement::UvmTrust::default(),
        std::time::SystemTime::now(),
    );
});
