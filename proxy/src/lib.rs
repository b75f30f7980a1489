//! Attested TLS for cinfer.
//!
//! Will hold: a server proxy in front of Triton whose certificate carries an attestation token bound to its TLS
//! key, and a client-side HTTP proxy that verifies that token against the client's policy before any request
//! byte leaves.
