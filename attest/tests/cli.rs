//! The `cinfer-attest` binary: verify-report exit codes and messages, mock evidence end to end.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_cinfer-attest");
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

#[test]
fn verify_report_prints_maa_claims_for_the_real_report() {
    let out = Command::new(BIN)
        .args(["verify-report", "--report", &format!("{DATA}/genoa-azure-report.bin")])
        .args([
            "--certs",
            &format!("{DATA}/genoa-azure-chain.pem"),
            "--at",
            "2026-01-01T00:00:00Z",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["x-ms-attestation-type"], "sevsnpvm");
    assert_eq!(claims["x-ms-sevsnpvm-snpfw-svn"], 23);
    assert_eq!(claims["x-ms-sevsnpvm-is-debuggable"], false);
    assert_eq!(claims["x-cinfer-root"], "amd-genoa");
}

#[test]
fn verify_report_fails_with_one_line_naming_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut report = std::fs::read(format!("{DATA}/genoa-azure-report.bin")).unwrap();
    report[0x90] ^= 1;
    let path = dir.path().join("r.bin");
    std::fs::write(&path, &report).unwrap();
    let out = Command::new(BIN)
        .args(["verify-report", "--report", path.to_str().unwrap()])
        .args([
            "--certs",
            &format!("{DATA}/genoa-azure-chain.pem"),
            "--at",
            "2026-01-01T00:00:00Z",
        ])
        .env("CINFER_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("report signature:"), "{stderr}");
    // Certificates expired at the given time.
    let out = Command::new(BIN)
        .args(["verify-report", "--report", &format!("{DATA}/genoa-azure-report.bin")])
        .args([
            "--certs",
            &format!("{DATA}/genoa-azure-chain.pem"),
            "--at",
            "2040-01-01T00:00:00Z",
        ])
        .env("CINFER_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificate validity: VCEK"));
}

#[test]
fn mock_evidence_verifies_only_with_the_mock_root_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let rt = dir.path().join("rt.json");
    std::fs::write(&rt, br#"{"keys":[]}"#).unwrap();
    let (rep, certs) = (dir.path().join("r.bin"), dir.path().join("c.pem"));
    let st = Command::new(BIN)
        .args([
            "mock-evidence",
            "--mock-root",
            &format!("{DATA}/mock-root"),
            "--host-data",
            &"ab".repeat(32),
        ])
        .args([
            "--runtime-data",
            rt.to_str().unwrap(),
            "--out-report",
            rep.to_str().unwrap(),
        ])
        .args(["--out-certs", certs.to_str().unwrap()])
        .env("CINFER_LOG", "off")
        .status()
        .unwrap();
    assert!(st.success());
    let verify = |extra: &[&str]| {
        Command::new(BIN)
            .args([
                "verify-report",
                "--report",
                rep.to_str().unwrap(),
                "--certs",
                certs.to_str().unwrap(),
            ])
            .args(["--runtime-data", rt.to_str().unwrap()])
            .args(extra)
            .env("CINFER_LOG", "off")
            .output()
            .unwrap()
    };
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("root:"));
    let out = verify(&["--trust-mock-root", &format!("{DATA}/mock-root/ark.pem")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["x-ms-sevsnpvm-hostdata"], "ab".repeat(32));
}

#[test]
fn snp_attester_never_falls_back_to_the_mock() {
    if std::path::Path::new("/dev/sev-guest").exists() || std::path::Path::new("/dev/sev").exists() {
        return; // on an SNP guest the device is used; nothing to check here
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = dir.path().join("rt.json");
    std::fs::write(&rt, b"{}").unwrap();
    let out = Command::new(BIN)
        .args([
            "attest",
            "--maa",
            "http://127.0.0.1:9",
            "--runtime-data",
            rt.to_str().unwrap(),
        ])
        .env("CINFER_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no SEV-SNP guest device"));
}
