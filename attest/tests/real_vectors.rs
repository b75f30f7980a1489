//! Verification against real hardware data (see `tests/data/README.md` for origins).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::{Duration, SystemTime};

use attest::report::{AttestationReport, Generation};
use attest::verify::{CertChain, TrustStore, VerifyOptions, vcek_extensions, verify_report};

const GENOA_REPORT: &[u8] = include_bytes!("data/genoa-azure-report.bin");
const GENOA_CHAIN: &[u8] = include_bytes!("data/genoa-azure-chain.pem");
const MILAN_CHAIN: &[u8] = include_bytes!("data/milan-chain.pem");

/// 2026-01-01, inside every certificate's validity.
fn at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

fn opts() -> VerifyOptions {
    VerifyOptions {
        at: at(),
        ..VerifyOptions::default()
    }
}

#[test]
fn real_genoa_report_verifies_to_the_pinned_genoa_root() {
    let chain = CertChain::from_pem(GENOA_CHAIN).unwrap();
    let v = verify_report(GENOA_REPORT, &chain, &TrustStore::amd(), &opts()).unwrap();
    assert_eq!(v.generation, Generation::Genoa);
    assert_eq!(
        (v.tcb.bootloader, v.tcb.tee, v.tcb.snp, v.tcb.microcode),
        (10, 0, 23, 84)
    );
    assert_eq!(v.report.version(), 3);
    assert_eq!(v.report.policy(), 0x3001f);
    assert!(!v.report.is_debuggable());
    assert_eq!(hex::encode(&v.report.report_data()[..4]), "b581f12e");
}

#[test]
fn real_genoa_report_meets_the_default_genoa_floor_exactly_and_fails_a_later_bulletins() {
    // Its reported TCB (SNP 0x17, microcode 0x54, firmware 1.55.40) is AMD-SB-3019's Genoa level, the default.
    let chain = CertChain::from_pem(GENOA_CHAIN).unwrap();
    let defaults = attest::appraisal::MinimumTcb::amd_default().genoa;
    assert_eq!((defaults.snp, defaults.microcode), (23, 84));
    verify_report(GENOA_REPORT, &chain, &TrustStore::amd(), &opts()).unwrap();
    // AMD-SB-3020 / AMD-SB-3027's Genoa levels (SNP 0x1B, microcode 0x56; see attest/README.md) refuse it.
    let mut later = opts();
    later.appraisal.min_tcb.apply_spec("genoa:snp=27,microcode=86").unwrap();
    let err = verify_report(GENOA_REPORT, &chain, &TrustStore::amd(), &later)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "tcb minimum: Genoa snp SVN 23 is below the minimum 27");
    // A Milan floor does not apply to it.
    let mut milan = opts();
    milan
        .appraisal
        .min_tcb
        .apply_spec("milan:snp=255,microcode=255")
        .unwrap();
    verify_report(GENOA_REPORT, &chain, &TrustStore::amd(), &milan).unwrap();
}

#[test]
fn real_genoa_report_with_any_signed_byte_flipped_fails_the_signature_check() {
    let chain = CertChain::from_pem(GENOA_CHAIN).unwrap();
    // Including the TCB reserved bytes that sev 8.0 does not cover (0x3a..0x3e).
    for off in [0x00usize, 0x3b, 0x50, 0x90, 0xc0, 0x183, 0x1a0, 0x29f] {
        let mut r = GENOA_REPORT.to_vec();
        r[off] ^= 0x01;
        let err = verify_report(&r, &chain, &TrustStore::amd(), &opts())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("report signature:") || err.starts_with("report parse:") || err.starts_with("tcb:"),
            "offset {off:#x}: {err}"
        );
    }
    // The signature itself.
    let mut r = GENOA_REPORT.to_vec();
    r[0x2a0] ^= 0x01;
    let err = verify_report(&r, &chain, &TrustStore::amd(), &opts())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("report signature:"), "{err}");
}

#[test]
fn real_genoa_report_is_refused_with_the_milan_chain() {
    // Milan VCEK + Milan ASK/ARK: the chain is valid but the VCEK did not sign this report.
    let chain = CertChain::from_pem(MILAN_CHAIN).unwrap();
    let err = verify_report(GENOA_REPORT, &chain, &TrustStore::amd(), &opts())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("report signature:"), "{err}");
}

#[test]
fn real_genoa_certificates_are_checked_for_validity_at_the_given_time() {
    let chain = CertChain::from_pem(GENOA_CHAIN).unwrap();
    let early = VerifyOptions {
        at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        ..opts()
    };
    let err = verify_report(GENOA_REPORT, &chain, &TrustStore::amd(), &early)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("certificate validity: VCEK"), "{err}");
}

#[test]
fn real_milan_vcek_extensions_decode_to_the_thim_tcbm() {
    let chain = CertChain::from_pem(MILAN_CHAIN).unwrap();
    let ext = vcek_extensions(&chain.vcek).unwrap();
    assert_eq!(ext.product_name.as_deref(), Some("Milan-B0"));
    assert_eq!(ext.tcb_version().encode(Generation::Milan), 0x7308_0000_0000_0003);
    assert_eq!(hex::encode(&ext.hwid.unwrap()[..4]), "b12164b4");
}

#[test]
fn real_genoa_report_parses_fields_at_documented_offsets() {
    let r = AttestationReport::from_bytes(GENOA_REPORT).unwrap();
    assert_eq!(r.cpuid(), Some((0x19, 0x11, 0x01)));
    assert_eq!(r.generation_hint(), Some(Generation::Genoa));
    assert_eq!(r.current_firmware(), (40, 55, 1));
    assert_eq!(r.reported_tcb_raw(), r.launch_tcb_raw());
}

#[test]
fn aci_security_context_dir_yields_policy_digest_and_thim_chain() {
    use base64::Engine as _;
    // An ACI security-context directory: the real CCE policy and a THIM JSON built from the real Milan
    // chain with the seed's tcbm, each base64-encoded as the host writes them.
    let dir = tempfile::tempdir().unwrap();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/uvm_security_policy.base64"),
        dir.path().join("security-policy-base64"),
    )
    .unwrap();
    let pem = std::str::from_utf8(MILAN_CHAIN).unwrap();
    let (vcek, rest) = pem.split_at(pem.find("-----END CERTIFICATE-----\n").unwrap() + 26);
    let thim = serde_json::json!({"vcekCert": vcek, "tcbm": "7308000000000003", "certificateChain": rest,
                                  "cacheControl": "86400"});
    std::fs::write(
        dir.path().join("host-amd-cert-base64"),
        b64(thim.to_string().as_bytes()),
    )
    .unwrap();
    let info = attest::evidence::UvmInformation::from_dir(dir.path()).unwrap();
    assert_eq!(
        hex::encode(info.policy_digest()),
        "cadd74f71ebb8fbf9782baab649612520f3c416bc5ce9ac768808ddc8d9b031c"
    );
    let certs = info.host_amd_certs.unwrap();
    assert_eq!(certs.chain_pem().as_bytes(), MILAN_CHAIN);
    let chain = CertChain::from_pem(certs.chain_pem().as_bytes()).unwrap();
    let ext = vcek_extensions(&chain.vcek).unwrap();
    assert_eq!(ext.tcb_version().encode(Generation::Milan), certs.tcbm().unwrap());
    assert!(info.reference_info.is_empty());
}
