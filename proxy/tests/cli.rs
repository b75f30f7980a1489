//! The `cinfer-proxy` binary: `generate-policy` output and refusals, and `server` + `client` end to end
//! (mock attester, in-process attestation service, curl through `http_proxy`).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_cinfer-proxy");

/// Kills the child on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn generate_policy_writes_the_hostdata_form() {
    let out = Command::new(BIN)
        .args(["generate-policy", "--hostdata", &"AB".repeat(32)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        json!({"x-ms-attestation-type": "sevsnpvm", "x-ms-compliance-status": "azure-compliant-uvm",
               "x-ms-sevsnpvm-hostdata": "ab".repeat(32), "x-ms-sevsnpvm-is-debuggable": false})
    );
}

#[test]
fn generate_policy_writes_the_policy_signer_form_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (signer, _) = auditor("auditor-a");
    let b64 = base64::engine::general_purpose::STANDARD.encode(signer.cert_der());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    );
    std::fs::write(dir.path().join("signer.pem"), pem).unwrap();
    let out_path = dir.path().join("policy.json");
    let out = Command::new(BIN)
        .args(["generate-policy", "--policysigner"])
        .arg(dir.path().join("signer.pem"))
        .arg("--output")
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    assert_eq!(
        v,
        json!({"x-ms-attestation-type": "sevsnpvm", "x-ms-compliance-status": "azure-compliant-uvm",
               "x-ms-policy-signer": {"kty": "RSA", "x5c": [b64]}, "x-ms-sevsnpvm-is-debuggable": false})
    );
}

#[test]
fn generate_policy_refuses_bad_input() {
    let out = Command::new(BIN)
        .args(["generate-policy", "--hostdata", "xyz"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hostdata must be 64 hex digits"));
    let out = Command::new(BIN).args(["generate-policy"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    let out = Command::new(BIN)
        .args([
            "generate-policy",
            "--hostdata",
            &"ab".repeat(32),
            "--policysigner",
            "x.pem",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "the two forms are exclusive");
}

/// A client policy that pins nothing a guest controls is refused before anything listens, naming what is missing;
/// the dangerous flag accepts it (and the client then starts).
#[test]
fn client_refuses_a_weak_policy_unless_told_to_accept_it() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("weak.json");
    std::fs::write(&policy, r#"{"x-ms-attestation-type":"sevsnpvm"}"#).unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    let listen = free_addr().to_string();
    let base = |extra: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(["client", "--listen", &listen, "--policy"])
            .arg(&policy)
            .arg("--jwks")
            .arg(&jwks)
            .args(["--issuer", "https://maa.example"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    let out = base(&[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("too weak") && err.contains("neither x-ms-sevsnpvm-hostdata nor x-ms-policy-signer"),
        "{err}"
    );
    let mut accepted = Proc(base(&["--dangerously-accept-weak-policy"]).spawn().unwrap());
    let t = Instant::now();
    while std::net::TcpStream::connect(&listen).is_err() {
        if let Some(st) = accepted.0.try_wait().unwrap() {
            panic!("the client exited ({st}) despite --dangerously-accept-weak-policy");
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the client did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The client fetches and pins the JWKS only over a transport it can trust: plain HTTP to a non-loopback address
/// is refused (naming it) unless the dangerous flag is given; a pinned --jwks file needs no fetch.
#[test]
fn client_refuses_plain_http_jwks_from_a_remote_address() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    let out = Command::new(BIN)
        .args(["generate-policy", "--hostdata", &"ab".repeat(32), "-o"])
        .arg(&policy)
        .output()
        .unwrap();
    assert!(out.status.success());
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .args(["client", "--listen", &free_addr().to_string(), "--policy"])
            .arg(&policy)
            .args(["--attestation-url", "http://192.0.2.1:9"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--attestation-url: plain http:// to 192.0.2.1, which is not a loopback address"),
        "{err}"
    );
    // With the flag it goes on to fetch (and fails to connect: TEST-NET-1 is unroutable), so the refusal above
    // was the transport check and nothing else.
    let out = run(&["--dangerously-allow-plain-http"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("not a loopback address") && err.contains("fetching the pinned JWKS"),
        "{err}"
    );
}

fn curl_via(proxy: SocketAddr, url: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", "-x"])
        .arg(format!("http://{proxy}"))
        .arg(url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), body.to_string())
}

fn spawn(args: &[String]) -> Proc {
    Proc(
        Command::new(BIN)
            .args(args)
            .env("CINFER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_client_binaries_end_to_end() {
    let svc = service().await;
    let up = upstream().await;
    let (srv, health, cli) = (free_addr(), free_addr(), free_addr());
    let root = mock_root_dir();
    let _server = spawn(&[
        "server".into(),
        "--listen".into(),
        srv.to_string(),
        "--upstream".into(),
        up.addr.to_string(),
        "--health".into(),
        health.to_string(),
        "--attestation-url".into(),
        svc.url.clone(),
        "--attester".into(),
        "mock".into(),
        "--mock-root".into(),
        root.display().to_string(),
        "--mock-host-data".into(),
        hex::encode(GOOD_HOSTDATA),
        "--mock-measurement".into(),
        hex::encode(MEASUREMENT),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    let bad = dir.path().join("bad.json");
    std::fs::write(&good, good_policy().to_json_pretty()).unwrap();
    std::fs::write(
        &bad,
        proxy::policy::ClientPolicy::hostdata(&"22".repeat(32))
            .unwrap()
            .to_json_pretty(),
    )
    .unwrap();
    let _client = spawn(&[
        "client".into(),
        "--listen".into(),
        cli.to_string(),
        "--policy".into(),
        good.display().to_string(),
        "--attestation-url".into(),
        svc.url.clone(),
    ]);
    let bad_cli = free_addr();
    let _bad_client = spawn(&[
        "client".into(),
        "--listen".into(),
        bad_cli.to_string(),
        "--policy".into(),
        bad.display().to_string(),
        "--attestation-url".into(),
        svc.url.clone(),
    ]);
    let url = format!("http://{srv}/v2/health/ready");
    let (code, body) = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        loop {
            let r = curl_via(cli, &url);
            if r.0 == "200" || start.elapsed() > Duration::from_secs(60) {
                return r;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    assert_eq!(code, "200", "{body}");
    assert_eq!(body, "upstream saw GET /v2/health/ready body=0\n");

    let seen = up.connections();
    let url = format!("http://{srv}/v2/models/m/infer");
    let (code, body) = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        loop {
            let r = curl_via(bad_cli, &url);
            if r.0 == "502" || start.elapsed() > Duration::from_secs(30) {
                return r;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    assert_eq!(code, "502", "{body}");
    assert!(
        body.contains("check policy failed") && body.contains("x-ms-sevsnpvm-hostdata"),
        "{body}"
    );
    assert_eq!(up.connections(), seen, "the refused request reached the upstream");

    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://{health}/"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}
