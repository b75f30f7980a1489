//! The `cinfer-deploy` binary end to end: render into a directory, hostdata, errors.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cinfer-deploy"))
        .args(args)
        .env("CINFER_LOG", "error")
        .output()
        .unwrap()
}

fn path(rel: &str) -> String {
    manifest_dir().join(rel).to_str().unwrap().to_owned()
}

#[test]
fn render_aci_with_policy_writes_the_golden_files_and_prints_hostdata() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = deploy(&[
        "render",
        "aci",
        "--config",
        &path("examples/cinfer.toml"),
        "--policy",
        &path("tests/data/uvm_security_policy.base64"),
        "--output",
        out_dir.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("hostdata: cadd74f71ebb8fbf9782baab649612520f3c416bc5ce9ac768808ddc8d9b031c"),
        "{stderr}"
    );
    let policy = out_dir.path().join("client-policy-hostdata.json");
    let client = format!(
        "client: cinfer-proxy client --policy {} --attestation-url https://sharedeus2.eus2.attest.azure.net",
        policy.display()
    );
    assert!(stderr.contains(&client), "{stderr}");
    if std::env::var_os("CINFER_UPDATE_GOLDEN").is_some() {
        return; // the golden files are being rewritten by the render tests
    }
    for name in std::fs::read_dir(manifest_dir().join("tests/golden/aci")).unwrap() {
        let name = name.unwrap().file_name();
        let want = std::fs::read(manifest_dir().join("tests/golden/aci").join(&name)).unwrap();
        assert_eq!(std::fs::read(out_dir.path().join(&name)).unwrap(), want, "{name:?}");
    }
}

#[test]
fn render_k8s_without_policy_says_what_is_missing() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = deploy(&[
        "render",
        "k8s",
        "-c",
        &path("examples/cinfer.toml"),
        "-o",
        out_dir.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("note: deployment.yaml has no io.katacontainers.config.agent.policy annotation"),
        "{stderr}"
    );
    assert!(out_dir.path().join("deployment.yaml").exists());
    assert!(!out_dir.path().join("release-policy.json").exists());
}

#[test]
fn hostdata_accepts_base64_and_filled_templates() {
    let out = deploy(&["hostdata", &path("tests/data/uvm_security_policy.base64")]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "cadd74f71ebb8fbf9782baab649612520f3c416bc5ce9ac768808ddc8d9b031c\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let policy = std::fs::read_to_string(manifest_dir().join("tests/data/security-policy-base64")).unwrap();
    let template = dir.path().join("template.json");
    std::fs::write(
        &template,
        format!("{{\"properties\":{{\"confidentialComputeProperties\":{{\"ccePolicy\":\"{policy}\"}}}}}}\n"),
    )
    .unwrap();
    let out = deploy(&["hostdata", template.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "4f4448c67f3c8dfc8de8a5e37125d807dadcc41f06cf23f615dbd52eec777d10\n"
    );
}

#[test]
fn bad_policy_file_is_an_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.b64");
    std::fs::write(&bad, "not base64 at all!").unwrap();
    let out_dir = dir.path().join("out");
    let out = deploy(&[
        "render",
        "aci",
        "-c",
        &path("examples/cinfer.toml"),
        "-p",
        bad.to_str().unwrap(),
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not standard base64"));
    assert!(!out_dir.exists());
}
