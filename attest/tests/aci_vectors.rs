//! The real production ACI evidence set (`tests/data/aci/`, see its README) verified end to end at a fixed
//! time — report to the AMD Milan root through the host's chain, HOST_DATA = SHA-256 of the policy, the UVM
//! endorsement's signature and did:x509 issuer, measurement equality, the claim set — and one mutation per
//! check, each failing with that check's name.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::Command;
use std::time::{Duration, SystemTime};

use attest::aci::{AciEvidence, VerifiedAci, policy_host_data, verify_aci};
use attest::appraisal::{Appraisal, MinimumTcb, TcbMinimum};
use attest::claims::aci_claims;
use attest::endorsement::mock::MockUvmSigner;
use attest::endorsement::{ACI_UVM_FEED, ACI_UVM_ISSUER, UvmIssuer, UvmTrust};
use attest::evidence::{Attester, MockAttester, MockConfig, MockRoot};
use attest::verify::{CertChain, TrustStore, VerifyOptions, maa_report_data};
use base64::Engine as _;
use coset::cbor::value::Value;
use coset::{CoseSign1, Label, TaggedCborSerializable as _};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/aci");
const BIN: &str = env!("CARGO_BIN_EXE_cinfer-attest");
const REPORT: &[u8] = include_bytes!("data/aci/snp_report.bin");
const CHAIN: &[u8] = include_bytes!("data/aci/uvm_host_amd_certificate.pem");
const ENDORSEMENT: &[u8] = include_bytes!("data/aci/body.uvm_reference_info.bin");
const POLICY_B64: &str = include_str!("data/aci/uvm_security_policy.base64");
/// The runtime data whose SHA-256 is the report's report_data (the seed's `MAA_Success_Production` test).
const RUNTIME: &[u8] = b"{\n   \"akey\" : \"avalue\"\n}\n";
const MEASUREMENT: &str =
    "51068107cdc7ee3d89c7821b05bca6147eb77b2005ae759050fc049b65a1b0beabc65a9d857acecf23225f5ec76849f5";

/// 2026-01-01: inside the VCEK's validity (2022-11-29 .. 2029-11-29) and after the endorsement was signed.
fn at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

/// The 2022 report's own TCB (bootloader 3, TEE 0, SNP 8, microcode 115) as the Milan floor: it predates every
/// bulletin behind the default floors (AMD-SB-3019 requires SNP 22 and microcode 219 on Milan), so the tests of
/// the other checks give it this explicit lower floor.
const FLOOR_2022: &str = "milan:bootloader=3,tee=0,snp=8,microcode=115";

fn appraisal_2022() -> Appraisal {
    let mut min_tcb = MinimumTcb::amd_default();
    min_tcb.milan = TcbMinimum {
        bootloader: 3,
        tee: 0,
        snp: 8,
        microcode: 115,
        fmc: 0,
    };
    Appraisal {
        min_tcb,
        ..Appraisal::default()
    }
}

fn opts() -> VerifyOptions {
    VerifyOptions {
        at: at(),
        expected_report_data: Some(maa_report_data(RUNTIME)),
        appraisal: appraisal_2022(),
        ..VerifyOptions::default()
    }
}

fn policy() -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(POLICY_B64.trim())
        .unwrap()
}

fn verify(report: &[u8], endorsement: Option<&[u8]>, policy: Option<&[u8]>) -> Result<VerifiedAci, String> {
    verify_at(report, endorsement, policy, at())
}

/// Mock certificates are valid from yesterday: documents they sign are checked now.
fn verify_at(
    report: &[u8],
    endorsement: Option<&[u8]>,
    policy: Option<&[u8]>,
    at: SystemTime,
) -> Result<VerifiedAci, String> {
    let chain = CertChain::from_pem(CHAIN).unwrap();
    let ev = AciEvidence {
        report,
        chain: &chain,
        uvm_endorsement: endorsement,
        security_policy: policy,
    };
    let opts = VerifyOptions { at, ..opts() };
    verify_aci(&ev, &TrustStore::amd(), &UvmTrust::default(), &opts).map_err(|e| e.to_string())
}

fn fails_with(result: Result<VerifiedAci, String>, check: &str) {
    match result {
        Ok(_) => panic!("expected `{check}`, but the set verified"),
        Err(e) => assert!(e.starts_with(check), "expected `{check}`, got: {e}"),
    }
}

/// Offset of `needle` in `hay` (exactly one occurrence).
fn find(hay: &[u8], needle: &[u8]) -> usize {
    let hits: Vec<usize> = hay
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "{:?}", String::from_utf8_lossy(needle));
    hits[0]
}

fn flipped(at: usize) -> Vec<u8> {
    let mut e = ENDORSEMENT.to_vec();
    e[at] ^= 0x01;
    e
}

/// The real endorsement with its x5chain replaced (the protected header re-encoded; the signature no longer
/// covers it, but the chain check comes first).
fn with_x5chain(chain: Vec<Vec<u8>>) -> Vec<u8> {
    let mut s = CoseSign1::from_tagged_slice(ENDORSEMENT).unwrap();
    let x5 = s
        .protected
        .header
        .rest
        .iter_mut()
        .find(|(l, _)| *l == Label::Int(33))
        .unwrap();
    x5.1 = Value::Array(chain.into_iter().map(Value::Bytes).collect());
    s.protected.original_data = None;
    s.to_tagged_vec().unwrap()
}

fn real_x5chain() -> Vec<Vec<u8>> {
    let s = CoseSign1::from_tagged_slice(ENDORSEMENT).unwrap();
    match &s
        .protected
        .header
        .rest
        .iter()
        .find(|(l, _)| *l == Label::Int(33))
        .unwrap()
        .1
    {
        Value::Array(a) => a
            .iter()
            .map(|v| match v {
                Value::Bytes(b) => b.clone(),
                _ => panic!("x5chain item"),
            })
            .collect(),
        _ => panic!("x5chain"),
    }
}

#[test]
fn real_aci_set_verifies_end_to_end_and_yields_the_maa_claim_set() {
    let policy = policy();
    assert_eq!(
        hex::encode(policy_host_data(&policy)),
        "cadd74f71ebb8fbf9782baab649612520f3c416bc5ce9ac768808ddc8d9b031c"
    );
    let v = verify(REPORT, Some(ENDORSEMENT), Some(&policy)).unwrap();
    assert_eq!(v.report.root.label(), "amd-milan");
    assert_eq!(
        hex::encode(v.report.report.host_data()),
        hex::encode(policy_host_data(&policy))
    );
    let uvm = v.uvm.as_ref().unwrap();
    assert_eq!((uvm.issuer.as_str(), uvm.feed.as_str()), (ACI_UVM_ISSUER, ACI_UVM_FEED));
    assert_eq!(hex::encode(uvm.payload.launch_measurement), MEASUREMENT);

    let claims = aci_claims(&v);
    assert_eq!(claims["x-ms-attestation-type"], "sevsnpvm");
    assert_eq!(claims["x-ms-compliance-status"], "azure-compliant-uvm");
    assert_eq!(claims["x-cinfer-compliance"], "uvm-endorsement");
    assert_eq!(claims["x-ms-sevsnpvm-launchmeasurement"], MEASUREMENT);
    // The endorsed UVM SVN under MAA's name; the report's GUEST_SVN (from the launch ID block) kept apart.
    assert_eq!(claims["x-ms-sevsnpvm-guestsvn"], 22);
    assert_eq!(claims["x-cinfer-report-guestsvn"], 2);
    assert_eq!(
        claims["x-ms-sevsnpvm-hostdata"],
        "cadd74f71ebb8fbf9782baab649612520f3c416bc5ce9ac768808ddc8d9b031c"
    );
    assert_eq!(claims["x-ms-sevsnpvm-is-debuggable"], false);
    assert_eq!(claims["x-ms-sevsnpvm-vmpl"], 0);
    assert_eq!(claims["x-ms-sevsnpvm-bootloader-svn"], 3);
    assert_eq!(claims["x-ms-sevsnpvm-snpfw-svn"], 8);
    assert_eq!(claims["x-ms-sevsnpvm-microcode-svn"], 115);
    assert_eq!(claims["x-cinfer-root"], "amd-milan");
    assert_eq!(claims["x-cinfer-uvm-endorsement"]["iss"], ACI_UVM_ISSUER);
    assert_eq!(claims["x-cinfer-uvm-endorsement"]["feed"], ACI_UVM_FEED);
    assert_eq!(claims["x-cinfer-uvm-endorsement"]["signingtime"], 1_675_834_943);
}

#[test]
fn the_2022_report_is_below_the_default_minimum_tcb_and_one_above_its_own() {
    let chain = CertChain::from_pem(CHAIN).unwrap();
    let ev = AciEvidence {
        report: REPORT,
        chain: &chain,
        uvm_endorsement: Some(ENDORSEMENT),
        security_policy: None,
    };
    let defaults = VerifyOptions {
        appraisal: Appraisal::default(),
        ..opts()
    };
    let e = verify_aci(&ev, &TrustStore::amd(), &UvmTrust::default(), &defaults)
        .unwrap_err()
        .to_string();
    assert_eq!(e, "tcb minimum: Milan snp SVN 8 is below the minimum 22");
    // Its own TCB passes; one microcode SVN more does not.
    let mut strict = appraisal_2022();
    strict.min_tcb.milan.microcode = 116;
    let e = verify_aci(
        &ev,
        &TrustStore::amd(),
        &UvmTrust::default(),
        &VerifyOptions {
            appraisal: strict,
            ..opts()
        },
    )
    .unwrap_err()
    .to_string();
    assert_eq!(e, "tcb minimum: Milan microcode SVN 115 is below the minimum 116");
    // The CLI applies the same defaults, and `--min-tcb` lowers them.
    let out = Command::new(BIN)
        .args(["verify-report", "--report", &format!("{DATA}/snp_report.bin")])
        .args(["--certs", &format!("{DATA}/uvm_host_amd_certificate.pem")])
        .args(["--at", "2026-01-01T00:00:00Z"])
        .env("CINFER_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tcb minimum: Milan snp SVN 8 is below the minimum 22"),
        "{stderr}"
    );
}

#[test]
fn the_report_without_its_endorsement_verifies_but_is_not_compliant() {
    let v = verify(REPORT, None, Some(&policy())).unwrap();
    let claims = aci_claims(&v);
    assert!(claims.get("x-ms-compliance-status").is_none(), "{claims:?}");
    assert_eq!(claims["x-ms-sevsnpvm-guestsvn"], 2);
}

#[test]
fn a_flipped_byte_in_the_endorsement_signature_fails_the_signature_check() {
    for off in [ENDORSEMENT.len() - 1, ENDORSEMENT.len() - 384] {
        fails_with(verify(REPORT, Some(&flipped(off)), None), "endorsement signature:");
    }
}

#[test]
fn a_flipped_byte_in_the_endorsement_payload_fails_the_signature_check() {
    // "22" -> "23": a higher SVN would pass any minimum, but the signature covers the payload.
    let off = find(ENDORSEMENT, b"\"x-ms-sevsnpvm-guestsvn\": \"22\"") + 28;
    assert_eq!(ENDORSEMENT[off], b'2');
    fails_with(verify(REPORT, Some(&flipped(off)), None), "endorsement signature:");
    // A measurement digit.
    let off = find(ENDORSEMENT, MEASUREMENT.as_bytes()) + 10;
    fails_with(verify(REPORT, Some(&flipped(off)), None), "endorsement signature:");
}

#[test]
fn a_flipped_byte_in_the_protected_header_fails_a_named_check() {
    // The feed (signed, not part of the chain): the signature check.
    let off = find(ENDORSEMENT, ACI_UVM_FEED.as_bytes()) + 3;
    fails_with(verify(REPORT, Some(&flipped(off)), None), "endorsement signature:");
    // The signing time (one second earlier, still inside the leaf's validity): the signature check.
    let off = find(ENDORSEMENT, &[0xc1, 0x1a, 0x63, 0xe3, 0x36, 0x3f]) + 5;
    fails_with(verify(REPORT, Some(&flipped(off)), None), "endorsement signature:");
    // The issuer DID's CA fingerprint: no certificate on the path has it.
    let off = find(ENDORSEMENT, b"I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s") + 5;
    fails_with(verify(REPORT, Some(&flipped(off)), None), "endorsement issuer:");
    // The issuer DID's EKU predicate (…59.1.2 -> …59.1.3): the leaf does not have it.
    let off = find(ENDORSEMENT, b"::eku:1.3.6.1.4.1.311.76.59.1.2") + 30;
    fails_with(verify(REPORT, Some(&flipped(off)), None), "endorsement issuer:");
    // Inside the leaf certificate's signature: the chain check.
    let leaf = &real_x5chain()[0];
    let off = find(ENDORSEMENT, &leaf[leaf.len() - 40..]) + 20;
    fails_with(verify(REPORT, Some(&flipped(off)), None), "endorsement chain:");
}

#[test]
fn a_different_launch_measurement_fails_the_measurement_check() {
    // A report that verifies (mock root) but whose measurement is not the endorsed one.
    let root = MockRoot::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/mock-root"
    )))
    .unwrap();
    let mut measurement = [0u8; 48];
    hex::decode_to_slice(MEASUREMENT, &mut measurement).unwrap();
    measurement[47] ^= 1;
    let att = MockAttester::new(
        &root,
        MockConfig {
            measurement,
            ..MockConfig::default()
        },
    )
    .unwrap();
    let ev = att.evidence(&maa_report_data(RUNTIME)).unwrap();
    let chain = CertChain::from_pem(ev.cert_chain_pem.as_bytes()).unwrap();
    let mut trust = TrustStore::amd();
    trust.add_mock_root(root.ark_pem().as_bytes()).unwrap();
    let aci = AciEvidence {
        report: &ev.report,
        chain: &chain,
        uvm_endorsement: Some(ENDORSEMENT),
        security_policy: None,
    };
    let now = VerifyOptions {
        at: SystemTime::now(),
        ..opts()
    };
    let e = verify_aci(&aci, &trust, &UvmTrust::default(), &now)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("endorsement measurement:"), "{e}");
    assert!(e.contains(MEASUREMENT), "{e}");
}

#[test]
fn a_policy_that_does_not_hash_to_host_data_fails_the_host_data_check() {
    let mut policy = policy();
    policy.push(b'\n');
    fails_with(verify(REPORT, Some(ENDORSEMENT), Some(&policy)), "host_data:");
}

#[test]
fn a_chain_with_a_foreign_leaf_fails_the_chain_check() {
    let signer = MockUvmSigner::generate(ACI_UVM_FEED).unwrap();
    let mut chain = real_x5chain();
    chain[0] = signer.chain()[0].clone();
    fails_with(
        verify(REPORT, Some(&with_x5chain(chain.clone())), None),
        "endorsement chain:",
    );
    // The same foreign leaf with a valid signature by its own key, claiming Microsoft's issuer: the leaf
    // does not chain to Microsoft's CA.
    let payload = format!(r#"{{"x-ms-sevsnpvm-guestsvn":"99","x-ms-sevsnpvm-launchmeasurement":"{MEASUREMENT}"}}"#);
    let now = SystemTime::now();
    let forged = signer.sign(payload.as_bytes(), &chain, ACI_UVM_ISSUER, now).unwrap();
    fails_with(verify_at(REPORT, Some(&forged), None, now), "endorsement chain:");
    // A complete, valid chain of its own with the ACI EKU, claiming Microsoft's issuer: the DID's CA
    // fingerprint is not on it.
    let forged = signer
        .sign(payload.as_bytes(), signer.chain(), ACI_UVM_ISSUER, now)
        .unwrap();
    fails_with(verify_at(REPORT, Some(&forged), None, now), "endorsement issuer:");
    // A lone leaf is not a did:x509 chain.
    fails_with(
        verify(REPORT, Some(&with_x5chain(real_x5chain()[..1].to_vec())), None),
        "endorsement chain:",
    );
}

#[test]
fn trust_is_issuer_and_feed_with_a_minimum_svn() {
    let chain = CertChain::from_pem(CHAIN).unwrap();
    let ev = AciEvidence {
        report: REPORT,
        chain: &chain,
        uvm_endorsement: Some(ENDORSEMENT),
        security_policy: None,
    };
    let with = |spec: &str| UvmTrust {
        issuers: vec![UvmIssuer::parse(spec).unwrap()],
    };
    let ok = with(&format!("{ACI_UVM_ISSUER},{ACI_UVM_FEED},22"));
    verify_aci(&ev, &TrustStore::amd(), &ok, &opts()).unwrap();
    let e = verify_aci(
        &ev,
        &TrustStore::amd(),
        &with(&format!("{ACI_UVM_ISSUER},{ACI_UVM_FEED},23")),
        &opts(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("endorsement svn: guest SVN 22"), "{e}");
    let e = verify_aci(
        &ev,
        &TrustStore::amd(),
        &with(&format!("{ACI_UVM_ISSUER},ConfAKS-AMD-UVM")),
        &opts(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("endorsement trust:"), "{e}");
    // Signed 2023-02-08: refused as of a time before it was signed.
    let early = VerifyOptions {
        at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_675_000_000),
        expected_report_data: None,
        ..opts()
    };
    let e = verify_aci(&ev, &TrustStore::amd(), &ok, &early)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("endorsement time:"), "{e}");
}

fn cli(extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["verify-report", "--report", &format!("{DATA}/snp_report.bin")])
        .args(["--certs", &format!("{DATA}/uvm_host_amd_certificate.pem")])
        .args(["--security-policy", &format!("{DATA}/uvm_security_policy.base64")])
        .args(["--at", "2026-01-01T00:00:00Z", "--min-tcb", FLOOR_2022])
        .args(extra)
        .env("CINFER_LOG", "off")
        .output()
        .unwrap()
}

#[test]
fn verify_report_with_the_endorsement_prints_the_compliant_claim_set() {
    let out = cli(&["--endorsement", &format!("{DATA}/body.uvm_reference_info.bin")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["x-ms-compliance-status"], "azure-compliant-uvm");
    assert_eq!(claims["x-ms-sevsnpvm-guestsvn"], 22);
    assert_eq!(claims["x-ms-sevsnpvm-launchmeasurement"], MEASUREMENT);

    // The security-context file as the host writes it (base64 text) is accepted as well.
    let dir = tempfile::tempdir().unwrap();
    let b64 = dir.path().join("reference-info-base64");
    std::fs::write(&b64, base64::engine::general_purpose::STANDARD.encode(ENDORSEMENT)).unwrap();
    let out = cli(&["--endorsement", b64.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["x-ms-compliance-status"], "azure-compliant-uvm");

    let bad = dir.path().join("e.bin");
    std::fs::write(&bad, flipped(ENDORSEMENT.len() - 1)).unwrap();
    let out = cli(&["--endorsement", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("endorsement signature:"), "{stderr}");
}
