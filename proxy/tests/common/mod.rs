//! Test harness: a real attestation service (mock attester), a counting upstream, the two proxies on
//! loopback, and a raw HTTP client that speaks through `http_proxy`.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use attest::client::AttestationClient;
use attest::evidence::{MockAttester, MockConfig, MockRoot};
use attest::service::{RunningService, ServiceConfig};
use attest::token::{Jwks, SigningIdentity};
use attest::verify::TrustStore;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use proxy::atls::{TokenIssuer, VerifierConfig};
use proxy::client::ClientConfig;
use proxy::policy::ClientPolicy;
use proxy::server::{AtlsServer, IdentitySource, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// host_data of the "good" guest.
pub const GOOD_HOSTDATA: [u8; 32] = [0x11; 32];
/// Launch measurement the service calls compliant.
pub const MEASUREMENT: [u8; 48] = [0x5a; 48];

pub fn mock_root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../attest/tests/data/mock-root")
}

pub fn root() -> MockRoot {
    MockRoot::load(&mock_root_dir()).unwrap()
}

/// A token-signing key PEM, generated once per test run and shared between test processes (RSA
/// generation is slow in debug builds).
fn cached_signing_key(name: &str) -> String {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("proxy-test-keys");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.pem"));
    if let Ok(pem) = std::fs::read_to_string(&path) {
        return pem;
    }
    let id = SigningIdentity::generate("cinfer-attest").unwrap();
    let pem = id.to_pkcs8_pem().unwrap().to_string();
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &pem).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    std::fs::read_to_string(&path).unwrap()
}

/// A cached auditor (policy-signing) identity.
pub fn auditor(name: &str) -> (SigningIdentity, String) {
    let pem = cached_signing_key(name);
    (SigningIdentity::from_pkcs8_pem(&pem, name).unwrap(), pem)
}

/// An attestation service.
pub struct Service {
    pub svc: RunningService,
    pub jwks: Jwks,
    pub url: String,
    _state: tempfile::TempDir,
}

/// The service configuration tests start from: trusts the mock root, calls [`MEASUREMENT`] compliant,
/// issues tokens for debuggable guests too (the client policy must refuse them).
pub fn service_config() -> ServiceConfig {
    let mut trust = TrustStore::amd();
    trust.add_mock_root(root().ark_pem().as_bytes()).unwrap();
    ServiceConfig {
        trust,
        allow_debug: true,
        compliant_measurements: vec![hex::encode(MEASUREMENT)],
        ..Default::default()
    }
}

/// Start a service whose token-signing key is the cached key `key_name`.
pub async fn service_with(key_name: &str, mut config: ServiceConfig) -> Service {
    let state = tempfile::tempdir().unwrap();
    std::fs::write(state.path().join("signing-key.pem"), cached_signing_key(key_name)).unwrap();
    config.state_dir = Some(state.path().to_path_buf());
    let svc = RunningService::start(config).await.unwrap();
    let jwks = AttestationClient::new(&svc.url).unwrap().jwks().await.unwrap();
    let url = svc.url.clone();
    Service {
        svc,
        jwks,
        url,
        _state: state,
    }
}

pub async fn service() -> Service {
    service_with("maa", service_config()).await
}

/// Mock evidence for a guest.
pub fn guest(host_data: [u8; 32], debuggable: bool) -> MockConfig {
    MockConfig {
        host_data,
        debuggable,
        measurement: MEASUREMENT,
        ..MockConfig::default()
    }
}

pub fn issuer(svc: &Service, guest: MockConfig) -> Arc<TokenIssuer> {
    let att = MockAttester::new(&root(), guest).unwrap();
    Arc::new(TokenIssuer::new(
        AttestationClient::new(&svc.url).unwrap(),
        Arc::new(att),
    ))
}

/// Counting upstream: answers every HTTP/1.1 or HTTP/2 request with `upstream saw <method> <target>
/// body=<n bytes>` and counts TCP connections.
pub struct Upstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn echo(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let line = format!("{} {}", req.method(), req.uri());
    let body = req.into_body().collect().await?.to_bytes();
    Ok(Response::new(Full::new(Bytes::from(format!(
        "upstream saw {line} body={}\n",
        body.len()
    )))))
}

/// Start the upstream; `h2` serves HTTP/2 prior knowledge instead of HTTP/1.1.
pub async fn upstream_with(h2: bool) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let io = TokioIo::new(tcp);
                let svc = hyper::service::service_fn(echo);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    Upstream { addr, connections }
}

pub async fn upstream() -> Upstream {
    upstream_with(false).await
}

/// Start a server proxy; returns it and its address.
pub async fn server(source: IdentitySource, upstream: &Upstream, grpc: Option<&Upstream>) -> (AtlsServer, SocketAddr) {
    let config = ServerConfig {
        upstream: upstream.addr.to_string(),
        grpc_upstream: grpc.map(|g| g.addr.to_string()),
        retry_interval: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let server = AtlsServer::new(config, source).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = server.clone();
    tokio::spawn(async move { s.run(listener, std::future::pending::<()>()).await });
    (server, addr)
}

pub fn verifier(svc: &Service, policy: ClientPolicy) -> VerifierConfig {
    VerifierConfig::new(svc.jwks.clone(), svc.url.clone(), policy)
}

pub fn good_policy() -> ClientPolicy {
    ClientPolicy::hostdata(&hex::encode(GOOD_HOSTDATA)).unwrap()
}

/// Start a client proxy; returns its address.
pub async fn client_with(config: ClientConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { proxy::client::run(listener, config, std::future::pending::<()>()).await });
    addr
}

pub async fn client(verifier: VerifierConfig) -> SocketAddr {
    client_with(ClientConfig::new(verifier)).await
}

/// A response read by [`proxy_get`].
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// `GET http://target/path` through the proxy at `proxy` (absolute form, as `http_proxy` clients send),
/// `Connection: close`, read to the end.
pub async fn proxy_get(proxy: SocketAddr, target: SocketAddr, path: &str) -> Reply {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let req = format!("GET http://{target}{path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    parse_reply(&raw)
}

pub fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Python for the client-library tests: `CINFER_PYTHON`, else the cached venv; fails when neither exists.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CINFER_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let venv = home.join(".cache/cinfer/venv/bin/python");
    assert!(
        venv.exists(),
        "no Python for the client test: set CINFER_PYTHON or run `bash scripts/pyenv.sh` (creates {})",
        venv.display()
    );
    venv
}
