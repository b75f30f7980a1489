//! Benchmark backend for `proxy/benches/atls.sh`: an in-process attestation service (trusting the mock
//! root given as the first argument, calling the mock's measurement compliant) and a small HTTP/1.1
//! upstream that answers `ok`. Prints `ATTEST_URL=..` and `UPSTREAM=..` lines, then runs until killed.

use std::time::Duration;

use attest::service::{RunningService, ServiceConfig};
use attest::verify::TrustStore;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

/// Launch measurement the benchmark's mock attester reports.
const MEASUREMENT: [u8; 48] = [0x5a; 48];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root_dir = std::env::args().nth(1).ok_or("usage: bench_backend MOCK_ROOT_DIR")?;
    let root = attest::evidence::MockRoot::load(std::path::Path::new(&root_dir))?;
    let mut trust = TrustStore::amd();
    trust.add_mock_root(root.ark_pem().as_bytes())?;
    let svc = RunningService::start(ServiceConfig {
        trust,
        compliant_measurements: vec![hex::encode(MEASUREMENT)],
        token_lifetime: Duration::from_secs(3600),
        ..Default::default()
    })
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("ATTEST_URL={}", svc.url);
    println!("UPSTREAM={}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok\n"))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
