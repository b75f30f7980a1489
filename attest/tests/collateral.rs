//! Offline collateral bundles: built from files, the real ACI set verifies with no chain given and no
//! network; an expired bundle, a revoked ASK or VCEK, a CRL or chain that is not the bundle's each fail with
//! a named check, in the library, the CLI and the service.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::Command;
use std::time::{Duration, SystemTime};

use attest::aci::{AciEvidence, verify_aci};
use attest::collateral::{Collateral, CollateralBuilder};
use attest::endorsement::{ACI_UVM_FEED, ACI_UVM_ISSUER, UvmIssuer};
use attest::evidence::{Attester, MockAttester, MockConfig, MockRoot};
use attest::report::{AttestationReport, Generation};
use attest::verify::{CertChain, TrustStore, VerifyOptions, maa_report_data};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/aci");
const BIN: &str = env!("CARGO_BIN_EXE_cinfer-attest");
const REPORT: &[u8] = include_bytes!("data/aci/snp_report.bin");
const CHAIN: &[u8] = include_bytes!("data/aci/uvm_host_amd_certificate.pem");
const THIM: &[u8] = include_bytes!("data/aci/uvm_host_amd_certificate.json");
const ENDORSEMENT: &[u8] = include_bytes!("data/aci/body.uvm_reference_info.bin");

/// 2026-01-01.
fn at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 24 * 3600)
}

fn real_bundle() -> Collateral {
    let mut b = CollateralBuilder::new();
    b.thim_json(THIM).unwrap();
    b.uvm_issuer(UvmIssuer::parse(&format!("{ACI_UVM_ISSUER},{ACI_UVM_FEED},22")).unwrap());
    // Written and read back: what a verifier loads is the file.
    Collateral::from_json(b.build().unwrap().to_json().unwrap().as_bytes()).unwrap()
}

fn check(result: Result<(), attest::error::CollateralError>, prefix: &str) -> String {
    let e = result.unwrap_err().to_string();
    assert!(e.starts_with(prefix), "expected `{prefix}`, got: {e}");
    e
}

#[test]
fn the_real_set_verifies_from_a_bundle_alone() {
    let bundle = real_bundle();
    let report = AttestationReport::from_bytes(REPORT).unwrap();
    let chain = bundle.chain_for(&report).unwrap();
    assert_eq!(chain.vcek, CertChain::from_pem(CHAIN).unwrap().vcek);
    bundle.check_chain(&chain, at()).unwrap();
    let ev = AciEvidence {
        report: REPORT,
        chain: &chain,
        uvm_endorsement: Some(ENDORSEMENT),
        security_policy: None,
    };
    // The 2022 report predates the bulletins behind the default floors: its own TCB as the Milan floor.
    let mut appraisal = attest::appraisal::Appraisal::default();
    appraisal
        .min_tcb
        .apply_spec("milan:bootloader=3,tee=0,snp=8,microcode=115")
        .unwrap();
    let opts = VerifyOptions {
        at: at(),
        expected_report_data: Some(maa_report_data(b"{\n   \"akey\" : \"avalue\"\n}\n")),
        appraisal,
        ..VerifyOptions::default()
    };
    let v = verify_aci(&ev, &TrustStore::amd(), &bundle.uvm_trust().unwrap(), &opts).unwrap();
    assert_eq!(v.uvm.unwrap().payload.guest_svn, 22);
    // The bundle's issuer list is what is trusted: a minimum above the endorsed SVN refuses it.
    let mut strict = CollateralBuilder::new();
    strict.thim_json(THIM).unwrap();
    strict.uvm_issuer(UvmIssuer::parse(&format!("{ACI_UVM_ISSUER},{ACI_UVM_FEED},23")).unwrap());
    let strict = strict.build().unwrap();
    let e = verify_aci(&ev, &TrustStore::amd(), &strict.uvm_trust().unwrap(), &opts).unwrap_err();
    assert!(e.to_string().starts_with("endorsement svn:"), "{e}");
}

#[test]
fn a_bundle_names_what_ends_its_validity_and_refuses_use_outside_it() {
    let bundle = real_bundle();
    let w = bundle.window();
    assert_eq!(w.limited_by, "Milan ARK certificate");
    let e = check(
        bundle.check_valid(w.not_after + Duration::from_secs(1)),
        "collateral expired:",
    );
    assert!(e.contains("Milan ARK certificate"), "{e}");

    let mut b = CollateralBuilder::new();
    b.pem_certificates(CHAIN).unwrap().not_after(at() - days(1));
    let expired = b.build().unwrap();
    let chain = CertChain::from_pem(CHAIN).unwrap();
    let e = check(expired.check_chain(&chain, at()), "collateral expired:");
    assert!(e.contains("not_after"), "{e}");
    check(
        expired.check_valid(SystemTime::UNIX_EPOCH + days(365)),
        "collateral not yet valid:",
    );
}

#[test]
fn no_vcek_for_the_report_and_a_foreign_chain_are_refused() {
    // A bundle with only AMD's pinned Milan ASK/ARK (no VCEK).
    let mut b = CollateralBuilder::new();
    b.pem_certificates(attest::verify::amd_cert_chain_pem(Generation::Milan).as_bytes())
        .unwrap();
    let empty = b.build().unwrap();
    let report = AttestationReport::from_bytes(REPORT).unwrap();
    let e = empty.chain_for(&report).unwrap_err().to_string();
    assert!(e.starts_with("collateral vcek:"), "{e}");

    let root = MockRoot::generate(Generation::Milan).unwrap();
    let ev = MockAttester::new(&root, MockConfig::default())
        .unwrap()
        .evidence(&[0; 64])
        .unwrap();
    let mock_chain = CertChain::from_pem(ev.cert_chain_pem.as_bytes()).unwrap();
    let e = check(
        real_bundle().check_chain(&mock_chain, SystemTime::now()),
        "collateral chain:",
    );
    assert!(e.contains("ARK"), "{e}");
}

#[test]
fn crls_revoke_the_ask_or_the_vcek_and_must_be_signed_by_the_ark() {
    let root = MockRoot::generate(Generation::Milan).unwrap();
    let ev = MockAttester::new(&root, MockConfig::default())
        .unwrap()
        .evidence(&[0; 64])
        .unwrap();
    let chain = CertChain::from_pem(ev.cert_chain_pem.as_bytes()).unwrap();
    let serial = |c: &x509_cert::Certificate| c.tbs_certificate().serial_number().as_bytes().to_vec();
    let now = SystemTime::now();
    let bundle_with = |crl: &[u8]| {
        let mut b = CollateralBuilder::new();
        b.pem_certificates(ev.cert_chain_pem.as_bytes())
            .unwrap()
            .crl(crl)
            .unwrap();
        Collateral::from_json(b.build().unwrap().to_json().unwrap().as_bytes()).unwrap()
    };

    // A CRL revoking something else: accepted; the window ends at its nextUpdate.
    let crl = root
        .issue_crl(&[vec![0x7f, 0x01]], now - days(1), now + days(7))
        .unwrap();
    let ok = bundle_with(&crl);
    ok.check_chain(&chain, now).unwrap();
    assert_eq!(ok.window().limited_by, "Milan CRL (thisUpdate .. nextUpdate)");
    check(ok.check_chain(&chain, now + days(8)), "collateral expired:");

    let crl = root
        .issue_crl(&[serial(&chain.ask)], now - days(1), now + days(7))
        .unwrap();
    let e = check(bundle_with(&crl).check_chain(&chain, now), "collateral revoked:");
    assert!(e.contains("ASK"), "{e}");
    let crl = root
        .issue_crl(&[serial(&chain.vcek)], now - days(1), now + days(7))
        .unwrap();
    let e = check(bundle_with(&crl).check_chain(&chain, now), "collateral revoked:");
    assert!(e.contains("VCEK"), "{e}");

    // A CRL by another root is not this generation's.
    let other = MockRoot::generate(Generation::Milan).unwrap();
    let foreign = other.issue_crl(&[], now - days(1), now + days(7)).unwrap();
    let mut b = CollateralBuilder::new();
    b.pem_certificates(ev.cert_chain_pem.as_bytes())
        .unwrap()
        .crl(&foreign)
        .unwrap();
    let e = b.build().unwrap_err().to_string();
    assert!(e.starts_with("collateral crl:"), "{e}");
    // Nor is it accepted when swapped into a bundle file.
    let good = bundle_with(&root.issue_crl(&[], now - days(1), now + days(7)).unwrap());
    let mut json: serde_json::Value = serde_json::from_str(&good.to_json().unwrap()).unwrap();
    let foreign_pem = {
        use der::{Decode, EncodePem};
        <x509_cert::crl::CertificateList>::from_der(&foreign)
            .unwrap()
            .to_pem(der::pem::LineEnding::LF)
            .unwrap()
    };
    json["amd"][0]["crl"] = serde_json::Value::String(foreign_pem);
    let e = Collateral::from_json(json.to_string().as_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("collateral crl:"), "{e}");
}

#[test]
fn the_cli_builds_a_bundle_and_verifies_with_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.json");
    let expired = dir.path().join("expired.json");
    let run = |args: &[&str]| Command::new(BIN).args(args).env("CINFER_LOG", "off").output().unwrap();
    let out = run(&[
        "collateral",
        "build",
        "--out",
        bundle.to_str().unwrap(),
        "--certs",
        &format!("{DATA}/uvm_host_amd_certificate.pem"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Milan: ARK, ASK"));
    let verify = |b: &std::path::Path| {
        run(&[
            "verify-report",
            "--report",
            &format!("{DATA}/snp_report.bin"),
            "--collateral",
            b.to_str().unwrap(),
            "--endorsement",
            &format!("{DATA}/body.uvm_reference_info.bin"),
            "--at",
            "2026-01-01T00:00:00Z",
            "--min-tcb",
            "milan:bootloader=3,tee=0,snp=8,microcode=115",
        ])
    };
    let out = verify(&bundle);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["x-ms-compliance-status"], "azure-compliant-uvm");

    let out = run(&[
        "collateral",
        "build",
        "--out",
        expired.to_str().unwrap(),
        "--thim",
        &format!("{DATA}/uvm_host_amd_certificate.json"),
        "--not-after",
        "2025-12-31T00:00:00Z",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = verify(&expired);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("collateral expired: the bundle was valid until 2025-12-31T00:00:00Z"),
        "{stderr}"
    );
    let out = run(&[
        "collateral",
        "show",
        expired.to_str().unwrap(),
        "--at",
        "2026-01-01T00:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("collateral expired:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_checks_evidence_against_its_bundle() {
    use attest::client::AttestationClient;
    use attest::service::{RunningService, ServiceConfig};
    let root = MockRoot::generate(Generation::Milan).unwrap();
    let att = MockAttester::new(&root, MockConfig::default()).unwrap();
    let ev = att.evidence(&[0; 64]).unwrap();
    let chain = CertChain::from_pem(ev.cert_chain_pem.as_bytes()).unwrap();
    let mut trust = TrustStore::amd();
    trust.add_mock_root(root.ark_pem().as_bytes()).unwrap();
    let now = SystemTime::now();
    let start = |crl: Vec<u8>| {
        let mut b = CollateralBuilder::new();
        b.pem_certificates(ev.cert_chain_pem.as_bytes())
            .unwrap()
            .crl(&crl)
            .unwrap();
        RunningService::start(ServiceConfig {
            trust: trust.clone(),
            collateral: Some(b.build().unwrap()),
            ..Default::default()
        })
    };
    let rd = b"{}";

    let svc = start(root.issue_crl(&[], now - days(1), now + days(7)).unwrap())
        .await
        .unwrap();
    AttestationClient::new(&svc.url)
        .unwrap()
        .attest_with(&att, rd)
        .await
        .unwrap();
    svc.stop().await.unwrap();

    let serial = chain.ask.tbs_certificate().serial_number().as_bytes().to_vec();
    let svc = start(root.issue_crl(&[serial], now - days(1), now + days(7)).unwrap())
        .await
        .unwrap();
    match AttestationClient::new(&svc.url)
        .unwrap()
        .attest_with(&att, rd)
        .await
        .unwrap_err()
    {
        attest::error::ClientError::Status { status, body, .. } => {
            assert_eq!(status, 400, "{body}");
            assert!(body.starts_with("collateral revoked: the ASK"), "{body}");
        }
        e => panic!("expected HTTP 400, got {e}"),
    }
    svc.stop().await.unwrap();

    // The CRL's nextUpdate has passed: the service says its collateral expired.
    let svc = start(root.issue_crl(&[], now - days(9), now - days(2)).unwrap())
        .await
        .unwrap();
    match AttestationClient::new(&svc.url)
        .unwrap()
        .attest_with(&att, rd)
        .await
        .unwrap_err()
    {
        attest::error::ClientError::Status { status, body, .. } => {
            assert_eq!(status, 503, "{body}");
            assert!(
                body.starts_with("collateral expired:") && body.contains("CRL"),
                "{body}"
            );
        }
        e => panic!("expected HTTP 503, got {e}"),
    }
    svc.stop().await.unwrap();
}
