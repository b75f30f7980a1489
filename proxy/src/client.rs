//! The client proxy, on the client's machine: an HTTP forward proxy (what `http_proxy` points at) that
//! reaches each target over attested TLS and refuses, with `502` and the failed check's name, any target
//! that does not pass every check.
//!
//! * Absolute-form requests (`GET http://host:port/path`, as clients honouring `http_proxy` send them)
//!   go over pooled attested-TLS connections in origin form. A pooled connection is verified once, when
//!   it is opened; the request is written only after that. An established session stays bound to the
//!   attested key after the token expires (a leaked key cannot take over a session); the token's `exp`
//!   limits new handshakes, and the pool closes connections idle for `pool_idle_timeout`.
//! * `CONNECT host:port` opens and verifies the attested connection first, answers `200` only then, and
//!   tunnels the client's bytes (e.g. gRPC's HTTP/2) inside it.
//!
//! A refusal is `502 Bad Gateway` with header `x-cinfer-atls-check: <check>` and a body naming the check
//! and the reason; nothing of the request has been sent anywhere.

use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::atls::{AttestedStream, ConnectError, Connector, VerifierConfig};

/// Header naming the failed check on a `502`.
pub const CHECK_HEADER: &str = "x-cinfer-atls-check";

/// Client proxy configuration.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Trusted attestation service and client policy.
    pub verifier: VerifierConfig,
    /// Per-connection freshness exchange (see [`crate::atls::fresh`]).
    pub strict_freshness: bool,
    /// Close pooled connections idle for this long.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per target (0: a new verified connection per request).
    pub pool_max_idle_per_host: usize,
}

impl ClientConfig {
    /// Defaults: no strict freshness, 60 s idle timeout, 64 idle connections per target.
    pub fn new(verifier: VerifierConfig) -> Self {
        Self {
            verifier,
            strict_freshness: false,
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle_per_host: 64,
        }
    }
}

/// Starting the client proxy failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Building the TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Sockets.
    #[error("accepting connections: {0}")]
    Io(#[from] std::io::Error),
}

type Body = BoxBody<Bytes, hyper::Error>;

impl Connection for AttestedStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// The pool's connector: every new pooled connection is a verified [`AttestedStream`].
#[derive(Clone, Debug)]
struct PoolConnector(Connector);

impl tower_service::Service<Uri> for PoolConnector {
    type Response = TokioIo<AttestedStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.0.clone();
        Box::pin(async move {
            let authority = authority_of(&uri).unwrap_or_default();
            connector.connect(&authority).await.map(TokioIo::new)
        })
    }
}

/// `host:port` of an absolute URI (port 80 by default).
fn authority_of(uri: &Uri) -> Option<String> {
    let auth = uri.authority()?;
    Some(match auth.port_u16() {
        Some(_) => auth.as_str().to_string(),
        None => format!("{}:80", auth.host()),
    })
}

struct Proxy {
    connector: Connector,
    http: Client<PoolConnector, Incoming>,
}

/// Run the client proxy on `listener` until `shutdown` completes.
pub async fn run(listener: TcpListener, config: ClientConfig, shutdown: impl Future) -> Result<(), ClientError> {
    let connector = Connector::new(config.verifier, config.strict_freshness)?;
    let http = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .build(PoolConnector(connector.clone()));
    let proxy = std::sync::Arc::new(Proxy { connector, http });
    tracing::info!(addr = %listener.local_addr()?, strict = config.strict_freshness, "attested TLS client proxy listening");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let (tcp, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let proxy = proxy.clone();
                        async move { Ok::<_, std::convert::Infallible>(proxy.handle(req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades();
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "client connection ended with an error");
                    }
                });
            }
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp
}

fn refused(e: &ConnectError) -> Response<Body> {
    let check = e.check();
    let mut resp = text(
        StatusCode::BAD_GATEWAY,
        format!("cinfer-proxy: attested TLS refused, check {check} failed: {e}\n"),
    );
    resp.headers_mut().insert(
        HeaderName::from_static(CHECK_HEADER),
        HeaderValue::from_static(check.as_str()),
    );
    resp
}

/// Headers that apply to one hop only (RFC 9110 §7.6.1, plus the proxy-specific ones).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    if !HOP_BY_HOP.iter().any(|n| headers.contains_key(*n)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

impl Proxy {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if req.method() == Method::CONNECT {
            return self.tunnel(req).await;
        }
        if req.uri().scheme_str() != Some("http") || req.uri().authority().is_none() {
            return text(
                StatusCode::BAD_REQUEST,
                "cinfer-proxy: send absolute-form requests (http_proxy=http://this-proxy) or CONNECT\n".into(),
            );
        }
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        match self.http.request(Request::from_parts(parts, body)).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.boxed())
            }
            Err(e) => match find_connect_error(&e) {
                Some(ce) => refused(ce),
                None => {
                    tracing::warn!(error = %e, source = ?e.source().map(ToString::to_string), "forwarding failed");
                    text(
                        StatusCode::BAD_GATEWAY,
                        format!("cinfer-proxy: forwarding failed: {e}\n"),
                    )
                }
            },
        }
    }

    async fn tunnel(&self, req: Request<Incoming>) -> Response<Body> {
        let Some(authority) = req.uri().authority().map(|a| a.as_str().to_string()) else {
            return text(
                StatusCode::BAD_REQUEST,
                "cinfer-proxy: CONNECT needs host:port\n".into(),
            );
        };
        let mut stream = match self.connector.connect(&authority).await {
            Ok(s) => s,
            Err(e) => return refused(&e),
        };
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let mut client = TokioIo::new(upgraded);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut stream).await {
                        tracing::debug!(error = %e, "tunnel ended with an error");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
            }
        });
        Response::new(Empty::new().map_err(|never| match never {}).boxed())
    }
}

fn find_connect_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ConnectError> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(ce) = err.downcast_ref::<ConnectError>() {
            return Some(ce);
        }
        cur = err.source();
    }
    None
}
