//! A flood of fresh-token requests from many unauthenticated TLS clients: the server answers 429 beyond its
//! limits, the reports it takes stay within the rate, and meanwhile rotation, health and normal requests keep
//! working. `CINFER_FLOOD_SECS` (default 5) sets the flood's length; the benchmark is 30 s from 64
//! connections (`CINFER_FLOOD_SECS=30 cargo nextest run -p proxy --test flood --no-capture`).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use attest::client::AttestationClient;
use attest::error::EvidenceError;
use attest::evidence::{Attester, Evidence, MockAttester};
use common::*;
use proxy::atls::limit::FreshLimits;
use proxy::atls::{Connector, TokenIssuer, fresh};
use proxy::server::{AtlsServer, IdentitySource, ServerConfig};
use tokio::net::TcpListener;

/// Counts the reports taken.
struct Counting {
    inner: MockAttester,
    reports: Arc<AtomicU64>,
}

impl Attester for Counting {
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        self.reports.fetch_add(1, Ordering::SeqCst);
        self.inner.evidence(report_data)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_token_flood_is_bounded_and_starves_nothing() {
    let secs: u64 = std::env::var("CINFER_FLOOD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let clients = 64;
    let svc = service().await;
    let up = upstream().await;
    let reports = Arc::new(AtomicU64::new(0));
    let attester = Counting {
        inner: MockAttester::new(&root(), guest(GOOD_HOSTDATA, false)).unwrap(),
        reports: reports.clone(),
    };
    let issuer = Arc::new(TokenIssuer::new(
        AttestationClient::new(&svc.url).unwrap(),
        Arc::new(attester),
    ));
    let limits = FreshLimits::default();
    let config = ServerConfig {
        upstream: up.addr.to_string(),
        retry_interval: Duration::from_millis(200),
        fresh_limits: limits,
        ..ServerConfig::default()
    };
    let server = AtlsServer::new(config, IdentitySource::Attested(issuer)).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let health_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health = health_listener.local_addr().unwrap();
    let s = server.clone();
    tokio::spawn(async move { s.run(listener, std::future::pending::<()>()).await });
    let s = server.clone();
    tokio::spawn(async move { s.run_health(health_listener, std::future::pending::<()>()).await });
    let proxy = client(verifier(&svc, good_policy())).await;
    let before = reports.load(Ordering::SeqCst);

    // The flood: each client opens a connection, asks for fresh tokens until refused, and starts over.
    let ok = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicU64::new(0));
    let per_conn = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut flood = Vec::new();
    for _ in 0..clients {
        let (ok, busy, per_conn) = (ok.clone(), busy.clone(), per_conn.clone());
        let connector = Connector::new(verifier(&svc, good_policy()), false).unwrap();
        flood.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let Ok(mut s) = connector.connect(&addr.to_string()).await else {
                    continue;
                };
                for i in 0..=limits.per_connection {
                    match fresh::request_token(&mut s, &[i as u8; 32]).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) if e.to_string().contains("per connection") => {
                            per_conn.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(e) if e.to_string().contains("429") => busy.fetch_add(1, Ordering::Relaxed),
                        Err(_) => break,
                    };
                    if Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }));
    }

    // Meanwhile: health, a normal request through the client proxy, and a rotation, every half second.
    let (mut checks, mut rotate_max) = (0, Duration::ZERO);
    while Instant::now() < deadline {
        let h = tokio::time::timeout(Duration::from_secs(5), reqwest_like_get(health)).await;
        assert_eq!(h.ok(), Some(200), "health during the flood");
        let r = tokio::time::timeout(Duration::from_secs(10), proxy_get(proxy, addr, "/v2/health/ready"))
            .await
            .expect("a normal request timed out during the flood");
        assert_eq!(r.status, 200, "a normal request during the flood: {r:?}");
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), server.rotate())
            .await
            .expect("rotation timed out during the flood")
            .expect("rotation failed during the flood");
        rotate_max = rotate_max.max(t.elapsed());
        checks += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for f in flood {
        f.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (ok, busy, per_conn) = (
        ok.load(Ordering::SeqCst),
        busy.load(Ordering::SeqCst),
        per_conn.load(Ordering::SeqCst),
    );
    let taken = reports.load(Ordering::SeqCst) - before;
    let rotations = checks as u64;
    eprintln!(
        "flood: {clients} connections for {elapsed:.1} s: {ok} fresh tokens, {busy} busy 429s, {per_conn} per-connection \
         429s; {taken} reports taken ({rotations} for rotations); {checks} rounds of health + request + rotation, \
         slowest rotation {rotate_max:?}"
    );
    assert!(checks >= 2, "too few checks ran");
    assert!(
        busy + per_conn > 0,
        "a flood from {clients} connections was never refused"
    );
    let allowed = (limits.burst + limits.rate * elapsed).ceil() as u64 + rotations;
    assert!(
        taken <= allowed,
        "{taken} reports in {elapsed:.1} s: the rate ({} /s, burst {}) did not bound them (max {allowed})",
        limits.rate,
        limits.burst
    );
    assert!(ok > 0, "no client got a fresh token");
}

/// Status of a plain HTTP GET / on `addr`.
async fn reqwest_like_get(addr: std::net::SocketAddr) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    parse_reply(&raw).status
}
