//! Open a verified attested-TLS connection from Rust, without running the client proxy.
//!
//! ```no_run
//! # async fn demo(jwks: attest::token::Jwks) -> Result<(), Box<dyn std::error::Error>> {
//! use proxy::atls::{Connector, VerifierConfig};
//! use proxy::policy::ClientPolicy;
//! use tokio::io::AsyncWriteExt as _;
//! let policy = ClientPolicy::hostdata(&"ab".repeat(32))?;
//! let connector = Connector::new(VerifierConfig::new(jwks, "https://myattest.eus2.attest.azure.net", policy), false)?;
//! let mut stream = connector.connect("10.0.0.4:8443").await?; // every check passed
//! println!("token claims: {:?}", stream.peer().claims);
//! stream.write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: triton\r\n\r\n").await?;
//! # Ok(()) }
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::verify::{AttestedVerifier, VerifiedPeer, VerifierConfig, verify_leaf};
use super::{AtlsError, Check, fresh};

/// Opening a verified connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// TCP connect failed or timed out.
    #[error("connect: {authority}: {source}")]
    Connect {
        /// Target.
        authority: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The server does not speak TLS 1.3.
    #[error("tls-version: {detail}")]
    TlsVersion {
        /// rustls' description.
        detail: String,
    },
    /// An attested-TLS check failed.
    #[error("{0}")]
    Refused(AtlsError),
    /// Any other handshake failure.
    #[error("handshake: {detail}")]
    Handshake {
        /// rustls' or the socket's description.
        detail: String,
    },
}

impl ConnectError {
    /// The failed check.
    pub fn check(&self) -> Check {
        match self {
            Self::Connect { .. } => Check::Connect,
            Self::TlsVersion { .. } => Check::TlsVersion,
            Self::Refused(e) => e.check(),
            Self::Handshake { .. } => Check::Handshake,
        }
    }
}

/// The [`AtlsError`] a handshake failed with, if the attested verifier refused the certificate.
pub fn atls_error_of(e: &rustls::Error) -> Option<&AtlsError> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(o)) => o.0.downcast_ref::<AtlsError>(),
        _ => None,
    }
}

fn classify(e: std::io::Error) -> ConnectError {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return ConnectError::Handshake { detail: e.to_string() };
    };
    if let Some(a) = atls_error_of(tls) {
        return ConnectError::Refused(a.clone());
    }
    match tls {
        rustls::Error::AlertReceived(AlertDescription::ProtocolVersion) | rustls::Error::PeerIncompatible(_) => {
            ConnectError::TlsVersion {
                detail: format!("the server does not offer TLS 1.3 ({tls})"),
            }
        }
        other => ConnectError::Handshake {
            detail: other.to_string(),
        },
    }
}

/// The rustls client configuration for attested TLS: TLS 1.3 only, the attested verifier, no session
/// resumption (a resumed session would skip the checks), no client certificate.
pub fn client_tls_config(
    config: Arc<VerifierConfig>,
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let verifier = Arc::new(AttestedVerifier::new(config, provider.clone()));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.resumption = Resumption::disabled();
    Ok(tls)
}

/// Opens attested-TLS connections. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    config: Arc<VerifierConfig>,
    provider: Arc<CryptoProvider>,
    strict: bool,
    connect_timeout: Duration,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("issuer", &self.config.issuer)
            .field("strict", &self.strict)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector verifying against `config`; `strict` adds the per-connection freshness exchange.
    pub fn new(config: VerifierConfig, strict: bool) -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = Arc::new(config);
        let tls = client_tls_config(config.clone(), provider.clone())?;
        Ok(Self {
            tls: TlsConnector::from(Arc::new(tls)),
            config,
            provider,
            strict,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(30),
        })
    }

    /// Whether strict freshness is on.
    pub fn strict(&self) -> bool {
        self.strict
    }

    /// The verifier configuration.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Connect to `authority` (`host:port`), run every check, and (strict) the freshness exchange. Logs the
    /// outcome once. TCP connect is bounded by 10 s, the whole by 30 s.
    pub async fn connect(&self, authority: &str) -> Result<AttestedStream, ConnectError> {
        let result = match tokio::time::timeout(self.handshake_timeout, self.connect_inner(authority)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Handshake {
                detail: format!("no verified connection within {:?}", self.handshake_timeout),
            }),
        };
        match &result {
            Ok(s) => {
                tracing::info!(target_addr = authority, spki_sha256 = %s.peer.spki_sha256, strict = self.strict, "attested TLS verified")
            }
            Err(e) => tracing::warn!(target_addr = authority, check = %e.check(), error = %e, "attested TLS refused"),
        }
        result
    }

    async fn connect_inner(&self, authority: &str) -> Result<AttestedStream, ConnectError> {
        let connect_err = |source| ConnectError::Connect {
            authority: authority.to_string(),
            source,
        };
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(authority))
            .await
            .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_err)?;
        tcp.set_nodelay(true).map_err(connect_err)?;
        let mut tls = self.tls.connect(server_name(authority), tcp).await.map_err(classify)?;
        let now = SystemTime::now();
        let (_, conn) = tls.get_ref();
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| ConnectError::Handshake {
                detail: "no peer certificate".into(),
            })?;
        let mut peer = verify_leaf(leaf.as_ref(), &self.config, now).map_err(ConnectError::Refused)?;
        if self.strict {
            let mut nonce = [0u8; 32];
            self.provider
                .secure_random
                .fill(&mut nonce)
                .map_err(|_| ConnectError::Handshake {
                    detail: "no random numbers".into(),
                })?;
            let ekm = fresh::exporter(tls.get_ref().1, &nonce)
                .map_err(|e| ConnectError::Handshake { detail: e.to_string() })?;
            let token = fresh::request_token(&mut tls, &nonce)
                .await
                .map_err(ConnectError::Refused)?;
            peer.claims =
                fresh::verify_fresh_token(&token, &self.config, SystemTime::now(), &peer.spki_sha256, &nonce, &ekm)
                    .map_err(ConnectError::Refused)?;
        }
        Ok(AttestedStream { inner: tls, peer })
    }
}

/// The TLS server name for `authority`: its IP address or DNS name (the token, not the name, identifies
/// the service; an unusable name falls back to `cinfer.invalid`).
fn server_name(authority: &str) -> ServerName<'static> {
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).unwrap_or_else(|_| {
        ServerName::try_from("cinfer.invalid").unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
    })
}

/// A verified attested-TLS connection.
#[derive(Debug)]
pub struct AttestedStream {
    inner: TlsStream<TcpStream>,
    peer: VerifiedPeer,
}

impl AttestedStream {
    /// What verification established (the key's SPKI hash and the token claims).
    pub fn peer(&self) -> &VerifiedPeer {
        &self.peer
    }

    /// The TLS stream.
    pub fn get_ref(&self) -> &TlsStream<TcpStream> {
        &self.inner
    }

    /// The TLS stream, consuming the wrapper.
    pub fn into_inner(self) -> TlsStream<TcpStream> {
        self.inner
    }
}

impl AsyncRead for AttestedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AttestedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
