//! `cinfer-attest verify-gpu` run as a binary on NVIDIA's data: claims JSON and exit 0, or exit 1 with the
//! failed check named on stderr; `mock-gpu-init` and `serve`'s GPU settings.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_cinfer-attest");

fn data(rel: &str) -> String {
    format!("{}/tests/data/nvidia/{rel}", env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).arg("verify-gpu").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn verify_gpu_prints_claims_for_a_good_report_and_rim() {
    let report = data("hopper/hopperAttestationReport.txt");
    let chain = data("hopper/hopperCertChain.txt");
    let vbios = data("rims/1010_0200_882_96005E0001_PROD.swidtag");
    let nonce = "27a328247bf7935c993341cf587be6f05986ccce4fe7ba2c54100bd616a58f66";
    let (code, stdout, stderr) = run(&[
        "--report",
        &report,
        "--cert-chain",
        &chain,
        "--vbios-rim",
        &vbios,
        "--nonce",
        nonce,
        "--at",
        "2024-06-01T00:00:00Z",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let claims: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(claims["eat_nonce"], nonce);
    assert_eq!(claims["x-nvidia-gpu-driver-version"], "535.86.09");
    assert_eq!(claims["x-nvidia-gpu-vbios-version"], "96.00.5E.00.01");
    assert_eq!(claims["x-nvidia-gpu-vbios-rim-signature-verified"], true);
    assert_eq!(claims["x-nvidia-gpu-attestation-report-nonce-match"], true);
    assert_eq!(claims["x-cinfer-gpu-root"], "nvidia");
}

#[test]
fn verify_gpu_names_the_failed_check() {
    let report = data("hopper/hopperAttestationReport.txt");
    let chain = data("hopper/hopperCertChain.txt");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--nonce".into(), "00".repeat(32)], "gpu nonce"),
        (
            vec!["--cert-chain".into(), data("hopper/nvtrust-hopperCertChain.txt")],
            "gpu signature",
        ),
        (vec!["--at".into(), "2019-01-01T00:00:00Z".into()], "gpu chain expiry"),
        (
            vec!["--rim-root".into(), data("negative/incorrect_rim_root.crt")],
            "rim root",
        ),
        (
            vec![
                "--vbios-rim".into(),
                data("negative/NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml"),
                "--at".into(),
                "2024-06-01T00:00:00Z".into(),
            ],
            "measurements",
        ),
        (
            vec![
                "--driver-rim".into(),
                data("negative/incorrect_signature_driver_rim.xml"),
            ],
            "rim signature",
        ),
    ];
    for (extra, check) in cases {
        let mut args: Vec<String> = vec!["--report".into(), report.clone()];
        if !extra.contains(&"--cert-chain".to_string()) {
            args.extend(["--cert-chain".into(), chain.clone()]);
        }
        if !extra.contains(&"--at".to_string()) {
            args.extend(["--at".into(), "2026-01-01T00:00:00Z".into()]);
        }
        args.extend(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = run(&refs);
        assert_eq!(code, 1, "{check}: {stdout}");
        assert!(stdout.is_empty(), "{check}: claims printed on failure");
        assert!(
            stderr.starts_with(&format!("cinfer-attest: {check}:")),
            "{check}: {stderr}"
        );
    }
}

/// `mock-gpu-init` writes a root, keys (0600, directory 0700), the GPUs' config and a collateral bundle that
/// `verify-gpu` accepts for the mock GPUs' evidence (both RIMs compared); `serve` refuses a collateral bundle
/// out of its window and a mock GPU root that is not a root, before listening.
#[test]
fn mock_gpu_init_output_verifies_and_serve_refuses_bad_gpu_settings() {
    use std::os::unix::fs::PermissionsExt as _;

    use attest::gpu::GpuAttester as _;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gpu");
    let st = Command::new(BIN)
        .args(["mock-gpu-init", "--count", "2", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("brom.key.pem"), 0o600);
    assert_eq!(mode("rim-signer.key.pem"), 0o600);
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o700);

    let gpus = attest::gpu::mock::MockGpuAttester::load(&out).unwrap();
    assert_eq!(gpus.config().count, 2);
    let ev = gpus.gpu_evidence(&[0x5a; 32]).unwrap();
    assert_eq!(ev.len(), 2);
    let report = dir.path().join("report.txt");
    let chain = dir.path().join("chain.pem");
    std::fs::write(&report, hex::encode(&ev[1].report)).unwrap();
    std::fs::write(&chain, &ev[1].cert_chain_pem).unwrap();
    let root = out.join("root.pem");
    let p = |p: &std::path::Path| p.display().to_string();
    let (code, stdout, stderr) = run(&[
        "--report",
        &p(&report),
        "--cert-chain",
        &p(&chain),
        "--collateral",
        &p(&out.join("collateral.json")),
        "--device-root",
        &p(&root),
        "--rim-root",
        &p(&root),
        "--nonce",
        &"5a".repeat(32),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let claims: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(claims["measres"], "success");
    assert_eq!(claims["x-cinfer-gpu-cc-mode"], "on");
    assert_eq!(claims["x-cinfer-gpu-feature-flag"], 0, "two GPUs: MPT");
    // NVIDIA's default roots refuse it.
    let (code, _, stderr) = run(&["--report", &p(&report), "--cert-chain", &p(&chain)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("gpu root:"), "{stderr}");

    let serve = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let mut bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("collateral.json")).unwrap()).unwrap();
    bundle["not_after"] = "2020-01-01T00:00:00Z".into();
    let expired = dir.path().join("expired.json");
    std::fs::write(&expired, bundle.to_string()).unwrap();
    let (code, stderr) = serve(&["--gpu-collateral", &p(&expired)]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("gpu collateral: the bundle is valid from"), "{stderr}");
    let (code, stderr) = serve(&["--trust-mock-gpu-root", &p(&out.join("brom.pem"))]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("not a mock GPU root") && stderr.contains("not self-signed"),
        "{stderr}"
    );
}
