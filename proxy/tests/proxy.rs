//! Requests through the proxy pair over loopback: curl and Python `requests` via `http_proxy`, the Rust
//! connector, HTTP/2 through CONNECT, strict freshness, health, and rotation under load.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use proxy::atls::{Check, ConnectError, Connector, fresh};
use proxy::client::ClientConfig;
use proxy::server::IdentitySource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn curl(proxy: std::net::SocketAddr, url: &str, extra: &[&str]) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .env("http_proxy", format!("http://{proxy}"))
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    (code.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_http_proxy_reaches_the_upstream_in_origin_form() {
    let svc = service().await;
    let up = upstream().await;
    let (_server, addr) = server(
        IdentitySource::Attested(issuer(&svc, guest(GOOD_HOSTDATA, false))),
        &up,
        None,
    )
    .await;
    let proxy = client(verifier(&svc, good_policy())).await;
    let url = format!("http://{addr}/v2/health/ready");
    let (code, body) = tokio::task::spawn_blocking(move || curl(proxy, &url, &[]))
        .await
        .unwrap();
    assert_eq!(code, "200", "{body}");
    assert_eq!(body, "upstream saw GET /v2/health/ready body=0\n");
    let url = format!("http://{addr}/v2/models/m/infer");
    let (code, body) = tokio::task::spawn_blocking(move || curl(proxy, &url, &["--data-binary", "0123456789"]))
        .await
        .unwrap();
    assert_eq!(code, "200", "{body}");
    assert_eq!(body, "upstream saw POST /v2/models/m/infer body=10\n");
    assert!(up.connections() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_client_through_http_proxy_and_pooled_connections() {
    let svc = service().await;
    let up = upstream().await;
    let (_server, addr) = server(
        IdentitySource::Attested(issuer(&svc, guest(GOOD_HOSTDATA, false))),
        &up,
        None,
    )
    .await;
    let proxy = client(verifier(&svc, good_policy())).await;
    // A V2-inference-style client: JSON POSTs through http_proxy, one session.
    let script = r#"
import json, sys, requests
s = requests.Session()
base = sys.argv[1]
out = []
for i in range(20):
    r = s.post(base + "/v2/models/simple/infer", json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [i]}]})
    r.raise_for_status()
    out.append(r.text)
r = s.get(base + "/v2/health/ready")
print(json.dumps({"status": r.status_code, "first": out[0], "n": len(out)}))
"#;
    let py = python();
    let base = format!("http://{addr}");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(py)
            .args(["-c", script, &base])
            .env("http_proxy", format!("http://{proxy}"))
            .env_remove("no_proxy")
            .env_remove("NO_PROXY")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["n"], 20);
    assert!(
        v["first"]
            .as_str()
            .unwrap()
            .starts_with("upstream saw POST /v2/models/simple/infer body="),
        "{v}"
    );
    // The proxy pools: 21 requests over one keep-alive client connection use few attested connections.
    assert!(up.connections() <= 2, "upstream saw {} connections", up.connections());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_connector_verifies_and_exposes_the_claims() {
    let svc = service().await;
    let up = upstream().await;
    let (srv, addr) = server(
        IdentitySource::Attested(issuer(&svc, guest(GOOD_HOSTDATA, false))),
        &up,
        None,
    )
    .await;
    let connector = Connector::new(verifier(&svc, good_policy()), false).unwrap();
    let mut s = connector.connect(&addr.to_string()).await.unwrap();
    assert_eq!(s.peer().spki_sha256, srv.current().spki_sha256());
    assert_eq!(s.peer().claims["x-ms-sevsnpvm-hostdata"], hex::encode(GOOD_HOSTDATA));
    s.write_all(b"GET /direct HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let reply = parse_reply(&raw);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "upstream saw GET /direct body=0\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_grpc_style_traffic_goes_through_connect_to_the_grpc_upstream() {
    let svc = service().await;
    let up = upstream().await;
    let grpc = upstream_with(true).await;
    let (_server, addr) = server(
        IdentitySource::Attested(issuer(&svc, guest(GOOD_HOSTDATA, false))),
        &up,
        Some(&grpc),
    )
    .await;
    let proxy = client(verifier(&svc, good_policy())).await;
    // CONNECT, as gRPC clients do through http_proxy; then HTTP/2 prior knowledge inside the tunnel.
    let mut tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(format!("CONNECT {addr} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(tcp.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = hyper::Request::post(format!("http://{addr}/inference.GRPCInferenceService/ModelInfer"))
            .header("content-type", "application/grpc")
            .body(http_body_util::Full::new(Bytes::from(vec![0u8; 5 + i])))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!(
                "upstream saw POST http://{addr}/inference.GRPCInferenceService/ModelInfer body={}\n",
                5 + i
            )
        );
    }
    assert_eq!(grpc.connections(), 1);
    assert_eq!(up.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_freshness_binds_nonce_and_exporter_and_refuses_a_replayed_token() {
    let svc = service().await;
    let up = upstream().await;
    let (_server, addr) = server(
        IdentitySource::Attested(issuer(&svc, guest(GOOD_HOSTDATA, false))),
        &up,
        None,
    )
    .await;

    // Through the proxy with --strict-freshness.
    let mut config = ClientConfig::new(verifier(&svc, good_policy()));
    config.strict_freshness = true;
    let proxy = client_with(config).await;
    let r = proxy_get(proxy, addr, "/fresh").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "upstream saw GET /fresh body=0\n");

    // The library: the fresh token carries nonce and ekm of this connection.
    let connector = Connector::new(verifier(&svc, good_policy()), true).unwrap();
    let s = connector.connect(&addr.to_string()).await.unwrap();
    let rt = &s.peer().claims["x-ms-runtime"];
    assert_eq!(rt["nonce"].as_str().unwrap().len(), 64);
    assert_eq!(rt["ekm"].as_str().unwrap().len(), 64);

    // A token obtained on one connection does not verify on another (different exporter).
    let plain = Connector::new(verifier(&svc, good_policy()), false).unwrap();
    let mut a = plain.connect(&addr.to_string()).await.unwrap();
    let b = plain.connect(&addr.to_string()).await.unwrap();
    let nonce = [9u8; 32];
    let token = fresh::request_token(&mut a, &nonce).await.unwrap();
    let ekm_a = fresh::exporter(a.get_ref().get_ref().1, &nonce).unwrap();
    let ekm_b = fresh::exporter(b.get_ref().get_ref().1, &nonce).unwrap();
    assert_ne!(ekm_a, ekm_b);
    let cfg = verifier(&svc, good_policy());
    let now = std::time::SystemTime::now();
    fresh::verify_fresh_token(&token, &cfg, now, &a.peer().spki_sha256, &nonce, &ekm_a).unwrap();
    let e = fresh::verify_fresh_token(&token, &cfg, now, &b.peer().spki_sha256, &nonce, &ekm_b).unwrap_err();
    assert_eq!(e.check(), Check::Freshness);
    assert!(e.to_string().contains("x-ms-runtime.ekm"), "{e}");
    let e = fresh::verify_fresh_token(&token, &cfg, now, &a.peer().spki_sha256, &[8u8; 32], &ekm_a).unwrap_err();
    assert!(e.to_string().contains("x-ms-runtime.nonce"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_freshness_is_refused_when_the_server_cannot_attest_per_connection() {
    let svc = service().await;
    let up = upstream().await;
    let key = proxy::atls::cert::generate_key().unwrap();
    let token = issuer(&svc, guest(GOOD_HOSTDATA, false))
        .token(&proxy::atls::cert::key_runtime_data(&key, &[]))
        .await
        .unwrap();
    let fixed = proxy::atls::AttestedIdentity::from_parts(key, token, "cinfer").unwrap();
    let (_server, addr) = server(IdentitySource::Fixed(Arc::new(fixed)), &up, None).await;
    let connector = Connector::new(verifier(&svc, good_policy()), true).unwrap();
    let e = connector.connect(&addr.to_string()).await.unwrap_err();
    assert!(matches!(e, ConnectError::Refused(_)));
    assert_eq!(e.check(), Check::Freshness, "{e}");
    assert_eq!(up.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_port_answers_ok_on_plain_http() {
    let svc = service().await;
    let up = upstream().await;
    let (srv, _addr) = server(
        IdentitySource::Attested(issuer(&svc, guest(GOOD_HOSTDATA, false))),
        &up,
        None,
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health = listener.local_addr().unwrap();
    tokio::spawn(async move { srv.run_health(listener, std::future::pending::<()>()).await });
    let mut tcp = tokio::net::TcpStream::connect(health).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let r = parse_reply(&raw);
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_load_fails_no_request() {
    let mut config = service_config();
    config.token_lifetime = Duration::from_secs(2);
    let svc = service_with("maa", config).await;
    let up = upstream().await;
    let (srv, addr) = server(
        IdentitySource::Attested(issuer(&svc, guest(GOOD_HOSTDATA, false))),
        &up,
        None,
    )
    .await;
    let first = srv.current().spki_sha256().to_string();
    // One proxy pools (live connections span rotations); one opens a verified connection per request.
    let pooled = client(verifier(&svc, good_policy())).await;
    let mut unpooled_config = ClientConfig::new(verifier(&svc, good_policy()));
    unpooled_config.pool_max_idle_per_host = 0;
    let unpooled = client_with(unpooled_config).await;

    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(7);
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (ok, failed) = (ok.clone(), failed.clone());
        let proxy = if i % 2 == 0 { pooled } else { unpooled };
        tasks.push(tokio::spawn(async move {
            // Keep-alive requests on one client connection to the proxy.
            let mut tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
            while Instant::now() < deadline {
                let req = format!("GET http://{addr}/load HTTP/1.1\r\nHost: {addr}\r\n\r\n");
                tcp.write_all(req.as_bytes()).await.unwrap();
                let mut got = Vec::new();
                let (_, end) = fresh::read_message(&mut tcp, &mut got).await.unwrap();
                assert_eq!(end, got.len());
                let r = parse_reply(&got);
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.lock().unwrap().push(r.body);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let failed = failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed requests, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert!(srv.rotations() >= 3, "only {} rotations", srv.rotations());
    assert_ne!(srv.current().spki_sha256(), first);
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "only {} requests",
        ok.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_port_answers_503_once_the_token_expired() {
    let mut config = service_config();
    config.token_lifetime = Duration::from_secs(1);
    let svc = service_with("maa", config).await;
    let up = upstream().await;
    let key = proxy::atls::cert::generate_key().unwrap();
    let token = issuer(&svc, guest(GOOD_HOSTDATA, false))
        .token(&proxy::atls::cert::key_runtime_data(&key, &[]))
        .await
        .unwrap();
    let fixed = proxy::atls::AttestedIdentity::from_parts(key, token, "cinfer").unwrap();
    let (srv, _addr) = server(IdentitySource::Fixed(Arc::new(fixed)), &up, None).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health = listener.local_addr().unwrap();
    tokio::spawn(async move { srv.run_health(listener, std::future::pending::<()>()).await });
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut tcp = tokio::net::TcpStream::connect(health).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let r = parse_reply(&raw);
    assert_eq!((r.status, r.body.as_str()), (503, "token expired\n"));
}
