//! TLS for `cinfer-attest serve` and for the clients that talk to it.
//!
//! The service is a key broker: model keys and the admin token travel to it, tokens, token-signing keys and
//! released keys come back. Over plain HTTP anyone on the path reads and rewrites them, so a service that other
//! hosts reach serves TLS. Its certificate comes from files ([`ServerTls::from_pem_files`], for a certificate a
//! CA issued) or is generated at start ([`ServerTls::self_signed`]). No CA vouches for a self-signed
//! certificate, so its clients pin it: [`TlsTrust::PinnedCert`] (the certificate itself) or
//! [`TlsTrust::PinnedSha256`] (one of the [`Fingerprints`] the service prints). Clients keep the system roots
//! by default ([`TlsTrust::SystemRoots`]), as MAA and AKV need.
//!
//! A pin replaces the WebPKI checks, as an SSH known-hosts entry does: the server must present exactly the
//! pinned certificate (or key) and prove it holds its private key in the handshake; its name, validity dates
//! and issuer are not checked, because the pin already says which server is meant.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use der::{Decode, Encode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds no usable item.
    #[error("TLS: {path}: {detail}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// A certificate that is not DER X.509.
    #[error("TLS: certificate: {detail}")]
    Certificate {
        /// What is wrong.
        detail: String,
    },
    /// rustls refused the configuration (for example a key that does not match the certificate).
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating the self-signed certificate failed.
    #[error("TLS: generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// SHA-256 fingerprints of a certificate, for pinning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprints {
    /// SHA-256 of the DER certificate.
    pub cert_sha256: [u8; 32],
    /// SHA-256 of its DER SubjectPublicKeyInfo (stays the same when the certificate is reissued for the key).
    pub spki_sha256: [u8; 32],
}

impl Fingerprints {
    /// The fingerprints of a DER certificate.
    pub fn of(cert_der: &[u8]) -> Result<Self, TlsError> {
        let bad = |e: der::Error| TlsError::Certificate { detail: e.to_string() };
        let cert = x509_cert::Certificate::from_der(cert_der).map_err(bad)?;
        let spki = cert.tbs_certificate().subject_public_key_info().to_der().map_err(bad)?;
        Ok(Self {
            cert_sha256: Sha256::digest(cert_der).into(),
            spki_sha256: Sha256::digest(spki).into(),
        })
    }

    /// Whether `digest` is one of the two.
    pub fn matches(&self, digest: &[u8; 32]) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.cert_sha256.ct_eq(digest) | self.spki_sha256.ct_eq(digest))
    }
}

/// One rustls provider (ring) for every configuration here, as the HTTP clients use.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The service side: certificate chain, key and the rustls configuration built from them.
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    cert_der: Vec<u8>,
    fingerprints: Fingerprints,
    self_signed: bool,
}

impl ServerTls {
    /// A chain (PEM, leaf first) and its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pem_err = |path: &Path| {
            let path = path.display().to_string();
            move |e: rustls::pki_types::pem::Error| TlsError::Pem {
                path,
                detail: e.to_string(),
            }
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(pem_err(cert))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_err(cert))?;
        if chain.is_empty() {
            return Err(TlsError::Pem {
                path: cert.display().to_string(),
                detail: "no CERTIFICATE in the file".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(pem_err(key))?;
        Self::new(chain, key, false)
    }

    /// A fresh ECDSA P-256 key and a certificate it signs itself, for `names` (DNS names or IP addresses;
    /// clients that pin it do not check them). The key lives only in this process.
    pub fn self_signed(names: &[String]) -> Result<Self, TlsError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cinfer-attest (self-signed)");
        let cert = params.self_signed(&key)?;
        let key_der =
            PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| TlsError::Certificate { detail: e.to_owned() })?;
        Self::new(vec![cert.der().clone()], key_der, true)
    }

    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        self_signed: bool,
    ) -> Result<Self, TlsError> {
        let cert_der = chain.first().map(|c| c.to_vec()).unwrap_or_default();
        let fingerprints = Fingerprints::of(&cert_der)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        // The router speaks HTTP/1.1 only (axum's `http1` feature).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            cert_der,
            fingerprints,
            self_signed,
        })
    }

    /// The leaf certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The leaf certificate as PEM.
    pub fn cert_pem(&self) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.cert_der);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }

    /// The leaf's fingerprints.
    pub fn fingerprints(&self) -> Fingerprints {
        self.fingerprints
    }

    /// Whether the certificate was generated at start.
    pub fn is_self_signed(&self) -> bool {
        self.self_signed
    }

    /// The rustls configuration.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }
}

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the kernel's accept queue.
const MAX_HANDSHAKES: usize = 64;

/// A TCP listener whose connections come out TLS-terminated, for `axum::serve`.
///
/// Handshakes run in their own tasks (at most 64 at once, each bounded by 10 s), so a client that stalls
/// mid-handshake holds up no one else. A failed handshake is logged at debug level and dropped.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Terminate TLS with `tls` on connections to `listener`.
    pub fn new(listener: TcpListener, tls: &ServerTls) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(tls.config());
        let (tx, ready) = tokio::sync::mpsc::channel(MAX_HANDSHAKES);
        let acceptor_task = tokio::spawn(accept_loop(listener, acceptor, tx));
        Ok(Self {
            local,
            ready,
            acceptor_task,
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: tokio::sync::mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait, as axum's own listener does.
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    drop(permit);
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Closes the listening socket; connections already handed out are unaffected.
        self.acceptor_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop ended (it does only when aborted): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The certificates (DER) in a file: PEM (every `CERTIFICATE`, in order) or one DER certificate.
pub fn read_certificates(path: &Path) -> Result<Vec<Vec<u8>>, TlsError> {
    let err = |detail: String| TlsError::Pem {
        path: path.display().to_string(),
        detail,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    // DER starts with a SEQUENCE tag; PEM is text.
    if bytes.first() == Some(&0x30) {
        Fingerprints::of(&bytes)?;
        return Ok(vec![bytes]);
    }
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE in the file".into()));
    }
    Ok(certs)
}

/// Which servers a client trusts over `https://`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsTrust {
    /// The platform's CA certificates and name checks (MAA, AKV, a service with a CA-issued certificate).
    #[default]
    SystemRoots,
    /// These CA certificates (DER) instead of the platform's, with the usual name and validity checks.
    CaCerts(Vec<Vec<u8>>),
    /// Exactly this server certificate (DER), such as the one `serve --tls-self-signed` generated.
    PinnedCert(Vec<u8>),
    /// A server certificate whose SHA-256, or the SHA-256 of whose SubjectPublicKeyInfo, is this (either
    /// fingerprint `serve` prints).
    PinnedSha256([u8; 32]),
}

impl TlsTrust {
    /// The rustls client configuration, or `None` for the HTTP client's default (system roots).
    pub fn client_config(&self) -> Result<Option<rustls::ClientConfig>, TlsError> {
        if *self == Self::SystemRoots {
            return Ok(None);
        }
        let p = provider();
        let builder = rustls::ClientConfig::builder_with_provider(p.clone()).with_safe_default_protocol_versions()?;
        let mut config = match self {
            Self::SystemRoots => return Ok(None),
            Self::CaCerts(cas) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in cas {
                    roots.add(CertificateDer::from(ca.clone()))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Self::PinnedCert(der) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    pin: Pin::Cert(der.clone()),
                    provider: p,
                }))
                .with_no_client_auth(),
            Self::PinnedSha256(digest) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    pin: Pin::Sha256(*digest),
                    provider: p,
                }))
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(config))
    }
}

#[derive(Debug)]
enum Pin {
    Cert(Vec<u8>),
    Sha256([u8; 32]),
}

/// Accepts exactly the pinned server certificate; the handshake signature is still verified (key possession).
#[derive(Debug)]
struct PinnedVerifier {
    pin: Pin,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = match &self.pin {
            Pin::Cert(der) => der.as_slice() == end_entity.as_ref(),
            Pin::Sha256(digest) => Fingerprints::of(end_entity).is_ok_and(|f| f.matches(digest)),
        };
        if pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate (SHA-256 {}) is not the pinned one",
                hex::encode(Sha256::digest(end_entity))
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_of_the_certificate_and_of_its_key() {
        let tls = ServerTls::self_signed(&["127.0.0.1".into(), "localhost".into()]).unwrap();
        let f = tls.fingerprints();
        assert_eq!(f.cert_sha256, <[u8; 32]>::from(Sha256::digest(tls.cert_der())));
        assert_ne!(f.cert_sha256, f.spki_sha256);
        assert!(f.matches(&f.cert_sha256) && f.matches(&f.spki_sha256));
        assert!(!f.matches(&[0; 32]));
        let again = ServerTls::self_signed(&["127.0.0.1".into()]).unwrap();
        assert_ne!(
            again.fingerprints().spki_sha256,
            f.spki_sha256,
            "a fresh key each start"
        );
        assert!(tls.cert_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
    }

    #[test]
    fn pinned_verifier_accepts_only_the_pin() {
        let tls = ServerTls::self_signed(&["127.0.0.1".into()]).unwrap();
        let other = ServerTls::self_signed(&["127.0.0.1".into()]).unwrap();
        let cert = CertificateDer::from(tls.cert_der().to_vec());
        let name = ServerName::try_from("example.invalid").unwrap();
        let check = |pin: Pin| {
            PinnedVerifier {
                pin,
                provider: provider(),
            }
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
        };
        let f = tls.fingerprints();
        assert!(check(Pin::Cert(tls.cert_der().to_vec())).is_ok());
        assert!(check(Pin::Sha256(f.cert_sha256)).is_ok());
        assert!(check(Pin::Sha256(f.spki_sha256)).is_ok());
        let e = check(Pin::Cert(other.cert_der().to_vec())).unwrap_err();
        assert!(e.to_string().contains("not the pinned one"), "{e}");
        assert!(check(Pin::Sha256(other.fingerprints().spki_sha256)).is_err());
    }
}
