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

/// `local` checks its fixed ports before starting anything: a taken port (here the config's `proxy.port`, then
/// the same port given on the command line) is an error that names it, and nothing runs.
#[test]
fn local_refuses_a_taken_port_before_starting() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cinfer.toml");
    let example = std::fs::read_to_string(path("examples/cinfer.toml")).unwrap();
    std::fs::write(&config, example.replace("port = 15006", &format!("port = {port}"))).unwrap();
    // The signer key file the example names, beside the copy.
    std::fs::copy(
        path("examples/model-signer.pub.pem"),
        dir.path().join("model-signer.pub.pem"),
    )
    .unwrap();
    let work = dir.path().join("work");
    let work_s = work.to_str().unwrap();
    // Other fixed ports free, so that only the one under test can be taken.
    let others = [
        "--health-port",
        "0",
        "--model-server-port",
        "0",
        "--client-proxy-port",
        "0",
    ];
    let mut args = vec!["local", "--once", "-c", config.to_str().unwrap(), "--work", work_s];
    args.extend(others);
    let out = deploy(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("port {port} (server proxy) is already in use")),
        "{stderr}"
    );
    assert!(!work.exists(), "a stage ran: {}", work.display());

    let p = port.to_string();
    let mut args = vec![
        "local",
        "--once",
        "--work",
        work_s,
        "--health-port",
        "0",
        "--model-server-port",
        "0",
    ];
    args.extend(["--proxy-port", "0", "--client-proxy-port", &p]);
    let out = deploy(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("port {port} (client proxy) is already in use")),
        "{stderr}"
    );
}
