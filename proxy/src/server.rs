//! The server proxy, inside the TEE: attested TLS 1.3 in front of the upstream (Triton).
//!
//! Each identity ([`AttestedIdentity`]: key, token, certificate) has its own rustls configuration. A
//! connection takes the identity current when it is accepted and keeps it, so rotation (a background
//! task, at the token's half-life or `rotate_margin` before `exp`, whichever is later) never touches a
//! live connection. After the handshake the proxy looks at the first bytes only to answer the strict
//! freshness request ([`crate::atls::fresh`]) and to send HTTP/2 prior-knowledge connections (gRPC) to
//! `grpc_upstream` when configured; then it splices bytes both ways, so HTTP/1.1 and HTTP/2 pass
//! unchanged.
//!
//! The health listener is plain HTTP (`200 ok` while the current token is valid, else `503`), for probes
//! on a port the init rules leave out of the redirect.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::crypto::CryptoProvider;
use rustls::server::NoServerSessionStorage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::atls::cert::{AttestedIdentity, IdentityError, TokenIssuer};
use crate::atls::fresh;
use crate::atls::limit::{FreshLimiter, FreshLimits, Refusal};

/// Longest a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 connection preface (prior knowledge, as gRPC over h2c sends it).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Server proxy configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Upstream address (Triton HTTP, e.g. `127.0.0.1:8000`).
    pub upstream: String,
    /// Upstream for HTTP/2 prior-knowledge connections (Triton gRPC, e.g. `127.0.0.1:8001`); `None` sends
    /// everything to `upstream`.
    pub grpc_upstream: Option<String>,
    /// Certificate subject (CN and DNS SAN).
    pub name: String,
    /// Rotate this long before the token's `exp` (but not before its half-life).
    pub rotate_margin: Duration,
    /// Wait after a failed rotation before trying again.
    pub retry_interval: Duration,
    /// Bounds on fresh tokens for clients ([`crate::atls::limit`]).
    pub fresh_limits: FreshLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            upstream: "127.0.0.1:8000".into(),
            grpc_upstream: None,
            name: "cinfer".into(),
            rotate_margin: Duration::from_secs(120),
            retry_interval: Duration::from_secs(5),
            fresh_limits: FreshLimits::default(),
        }
    }
}

/// Where identities come from.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum IdentitySource {
    /// A fresh key and token at start and on every rotation (production).
    Attested(Arc<TokenIssuer>),
    /// One fixed identity, never rotated, no freshness endpoint (tests).
    Fixed(Arc<AttestedIdentity>),
}

/// Starting or running the server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Getting a key, token or certificate.
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    /// Building the TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Sockets.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

struct Served {
    identity: Arc<AttestedIdentity>,
    acceptor: TlsAcceptor,
}

struct State {
    config: ServerConfig,
    source: IdentitySource,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Served>>,
    rotations: AtomicU64,
    limiter: FreshLimiter,
}

/// The server proxy. Cheap to clone; clones share the identity.
#[derive(Clone)]
pub struct AtlsServer {
    state: Arc<State>,
}

impl std::fmt::Debug for AtlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtlsServer")
            .field("identity", &self.current())
            .field("rotations", &self.rotations())
            .finish_non_exhaustive()
    }
}

fn served(identity: Arc<AttestedIdentity>, provider: &Arc<CryptoProvider>) -> Result<Served, rustls::Error> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert_der().clone()], identity.private_key())?;
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(Served {
        identity,
        acceptor: TlsAcceptor::from(Arc::new(tls)),
    })
}

async fn new_identity(source: &IdentitySource, name: &str) -> Result<Arc<AttestedIdentity>, IdentityError> {
    match source {
        IdentitySource::Attested(issuer) => Ok(Arc::new(AttestedIdentity::generate(issuer, name).await?)),
        IdentitySource::Fixed(id) => Ok(id.clone()),
    }
}

/// When to rotate: `exp - margin`, but not before the token's half-life.
fn rotate_at(id: &AttestedIdentity, margin: Duration) -> SystemTime {
    let life = id.expires().duration_since(id.not_before()).unwrap_or_default();
    let half = id.not_before() + life / 2;
    let early = id.expires().checked_sub(margin).unwrap_or(half);
    early.max(half)
}

impl AtlsServer {
    /// Get the first identity (fails if attestation fails) and build the TLS configuration.
    pub async fn new(config: ServerConfig, source: IdentitySource) -> Result<Self, ServerError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let identity = new_identity(&source, &config.name).await?;
        tracing::info!(spki_sha256 = identity.spki_sha256(), "attested TLS identity ready");
        let current = RwLock::new(Arc::new(served(identity, &provider)?));
        let limiter = FreshLimiter::new(config.fresh_limits);
        Ok(Self {
            state: Arc::new(State {
                config,
                source,
                provider,
                current,
                rotations: AtomicU64::new(0),
                limiter,
            }),
        })
    }

    fn served(&self) -> Arc<Served> {
        self.state.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The identity new connections get.
    pub fn current(&self) -> Arc<AttestedIdentity> {
        self.served().identity.clone()
    }

    /// How many rotations completed.
    pub fn rotations(&self) -> u64 {
        self.state.rotations.load(Ordering::Relaxed)
    }

    /// Replace the identity now (a no-op for a fixed identity).
    pub async fn rotate(&self) -> Result<(), ServerError> {
        if matches!(self.state.source, IdentitySource::Fixed(_)) {
            return Ok(());
        }
        let identity = new_identity(&self.state.source, &self.state.config.name).await?;
        let spki = identity.spki_sha256().to_string();
        let next = Arc::new(served(identity, &self.state.provider)?);
        *self.state.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        let n = self.state.rotations.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(spki_sha256 = %spki, rotation = n, "attested TLS identity rotated");
        Ok(())
    }

    async fn rotation_loop(&self) {
        if matches!(self.state.source, IdentitySource::Fixed(_)) {
            return std::future::pending().await;
        }
        loop {
            let at = rotate_at(&self.current(), self.state.config.rotate_margin);
            let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(wait).await;
            if let Err(e) = self.rotate().await {
                tracing::error!(error = %e, "identity rotation failed; keeping the current identity");
                tokio::time::sleep(self.state.config.retry_interval).await;
            }
        }
    }

    /// Accept attested-TLS connections on `listener` and rotate the identity until `shutdown` completes.
    /// Connections already accepted run to their end.
    pub async fn run(&self, listener: TcpListener, shutdown: impl Future) -> std::io::Result<()> {
        tracing::info!(addr = %listener.local_addr()?, upstream = %self.state.config.upstream, "attested TLS server listening");
        tokio::pin!(shutdown);
        let rotation = self.rotation_loop();
        tokio::pin!(rotation);
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                () = &mut rotation => {}
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let state = self.state.clone();
                        let served = self.served();
                        tokio::spawn(async move {
                            if let Err(e) = serve(state, served, tcp, peer).await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    /// Plain-HTTP health endpoint: `200 ok` while the current token is valid, else `503`.
    pub async fn run_health(&self, listener: TcpListener, shutdown: impl Future) -> std::io::Result<()> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let me = self.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                            let valid = me.current().expires() > SystemTime::now();
                            let (status, body) = if valid { (StatusCode::OK, "ok\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "token expired\n") };
                            let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                            *resp.status_mut() = status;
                            async move { Ok::<_, std::convert::Infallible>(resp) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
                    });
                }
            }
        }
    }
}

/// Start an [`AtlsServer`] and run it on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    source: IdentitySource,
    shutdown: impl Future,
) -> Result<(), ServerError> {
    let server = AtlsServer::new(config, source).await?;
    server.run(listener, shutdown).await.map_err(|source| ServerError::Io {
        context: "accepting connections".into(),
        source,
    })
}

/// Whether `buf` could still become a freshness request or an HTTP/2 preface.
fn undecided(buf: &[u8]) -> bool {
    [fresh::REQUEST_PREFIX, H2_PREFACE]
        .iter()
        .any(|p| buf.len() < p.len() && p.starts_with(buf))
}

#[tracing::instrument(level = "debug", skip_all, fields(%peer))]
async fn serve(
    state: Arc<State>,
    served: Arc<Served>,
    tcp: TcpStream,
    peer: std::net::SocketAddr,
) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, served.acceptor.accept(tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut fresh_used = 0u32;
    loop {
        while undecided(&buf) {
            if tls.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        if !buf.starts_with(fresh::REQUEST_PREFIX) {
            break;
        }
        if !answer_freshness(&state, &served, &mut tls, &mut buf, fresh_used).await? {
            return Ok(());
        }
        fresh_used += 1;
    }
    let upstream = match &state.config.grpc_upstream {
        Some(grpc) if buf.starts_with(H2_PREFACE) => grpc,
        _ => &state.config.upstream,
    };
    let mut up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    up.write_all(&buf).await?;
    drop(buf);
    tokio::io::copy_bidirectional(&mut tls, &mut up).await?;
    Ok(())
}

/// A `429 Too Many Requests` answer to a freshness request.
fn too_many(retry_after: u64, why: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error": why }).to_string();
    format!(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {retry_after}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answer one freshness request at the start of `buf`, leaving what follows it in `buf`; `used` fresh tokens
/// were made on this connection before. Returns false when the connection must be closed (it asked too often).
async fn answer_freshness(
    state: &State,
    served: &Served,
    tls: &mut TlsStream<TcpStream>,
    buf: &mut Vec<u8>,
    used: u32,
) -> std::io::Result<bool> {
    let (head, end) = fresh::read_message(tls, buf).await?;
    let reply = match (&state.source, fresh::parse_nonce(&buf[head..end])) {
        (IdentitySource::Fixed(_), _) => {
            fresh::response(501, "Not Implemented", br#"{"error":"freshness needs an attester"}"#)
        }
        (_, None) => fresh::response(
            400,
            "Bad Request",
            br#"{"error":"body must be {\"nonce\": 64 hex digits}"}"#,
        ),
        (IdentitySource::Attested(issuer), Some(nonce)) => {
            // Held while the token is made: it bounds the reports and attestation round trips in flight.
            let _permit = match state.limiter.acquire(used) {
                Ok(p) => p,
                Err(Refusal::Busy { retry_after }) => {
                    tracing::debug!("fresh token refused: busy");
                    tls.write_all(&too_many(retry_after, "fresh tokens are rate-limited: retry later"))
                        .await?;
                    tls.flush().await?;
                    buf.drain(..end);
                    return Ok(true);
                }
                Err(Refusal::Connection) => {
                    let why = format!(
                        "at most {} fresh tokens per connection: open a new connection",
                        state.limiter.limits().per_connection
                    );
                    tls.write_all(&too_many(0, &why)).await?;
                    tls.flush().await?;
                    let _ = tls.shutdown().await;
                    return Ok(false);
                }
            };
            let ekm = fresh::exporter(tls.get_ref().1, &nonce).map_err(std::io::Error::other)?;
            let data = served
                .identity
                .runtime_data(&[("ekm", hex::encode(ekm)), ("nonce", hex::encode(nonce))]);
            match issuer.token(&data).await {
                Ok(token) => {
                    tracing::debug!("fresh token issued for a connection");
                    fresh::response(200, "OK", serde_json::json!({"token": token}).to_string().as_bytes())
                }
                Err(e) => {
                    tracing::error!(error = %e, "fresh token failed");
                    fresh::response(
                        502,
                        "Bad Gateway",
                        serde_json::json!({"error": e.to_string()}).to_string().as_bytes(),
                    )
                }
            }
        }
    };
    tls.write_all(&reply).await?;
    tls.flush().await?;
    buf.drain(..end);
    Ok(true)
}
