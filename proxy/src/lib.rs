//! Attested TLS for cinfer: a server proxy in front of Triton whose certificate carries an attestation
//! token bound to its TLS key, and a client-side HTTP proxy that verifies that token against the client's
//! policy before any request byte leaves.
//!
//! # Design
//!
//! The server proxy runs inside the SEV-SNP container. At start and before every token expiry it
//! generates a fresh P-256 key, asks the attestation service (MAA or `cinfer-attest serve`) for a token
//! whose runtime data (`x-ms-runtime`) carries `tls-spki-sha256`, the SHA-256 of the key's
//! SubjectPublicKeyInfo, and serves a self-signed certificate that carries the token in a private
//! extension ([`atls::TOKEN_EXTENSION_OID`]). TLS 1.3 only. After the handshake it splices bytes to the
//! upstream, so HTTP/1.1 and HTTP/2 (gRPC) pass unchanged.
//!
//! The client side ([`atls::AttestedVerifier`], a rustls `ServerCertVerifier`) runs the checks in a
//! fixed order and fails with an error naming the first failed check ([`atls::Check`]): the
//! certificate's self-signature, the token's signature against the **pinned** keys of the trusted
//! attestation service, its issuer, its expiry, the public-key binding, then every claim of the
//! client policy ([`policy::ClientPolicy`]). rustls then checks the TLS 1.3 CertificateVerify against
//! the same key, which proves possession. The check runs inside the handshake, so no application byte
//! is written to a peer that fails it.
//!
//! Optional strict freshness ([`atls::fresh`]): right after the handshake the client sends a nonce; the
//! server returns a fresh token whose runtime data binds the nonce and a TLS exporter value of this very
//! connection.
//!
//! # Public API
//!
//! * [`atls::Connector`]: open a verified connection from Rust without running the proxy
//!   (`Connector::new(VerifierConfig, strict)?.connect("host:port").await?`).
//! * [`atls::verify_leaf`]: the checks on a DER certificate, for other TLS stacks.
//! * [`server::AtlsServer`] / [`server::run`] and [`client::run`]: the two proxies, each taking a bound
//!   listener and a shutdown future.
//! * [`policy::ClientPolicy`]: the seed's client policy JSON (hostdata-pinned or policy-signer-pinned).

pub mod atls;
pub mod client;
pub mod policy;
pub mod server;
