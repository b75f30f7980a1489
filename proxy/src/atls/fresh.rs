//! Strict freshness (opt-in on the client): right after the handshake, before any application byte, the
//! client sends on the same connection
//!
//! ```text
//! POST /.well-known/atls/attest HTTP/1.1
//! Content-Type: application/json
//! Content-Length: ..
//!
//! {"nonce":"<64 hex: 32 random bytes>"}
//! ```
//!
//! Both ends compute `ekm = TLS-Exporter("EXPORTER-atls-attestation-binding", context = nonce, 32)`.
//! The server proxy answers this request itself (it is never forwarded) with `{"token": JWT}`: a fresh
//! token whose runtime data is `{"ekm","keys","nonce","tls-spki-sha256"}`. The client checks the token
//! like the certificate's (pinned keys, issuer, expiry, policy) and that `tls-spki-sha256`, `nonce` and
//! `ekm` equal its own values. The exporter ties the evidence to this TLS session, so a leaked key or a
//! replayed token cannot serve it (draft-fossati-seat-expat's binding, without RFC 9261 framing).

use std::time::SystemTime;

use attest::token::Claims;
use rustls::ConnectionCommon;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::verify::{VerifierConfig, check_runtime, verify_claims};
use super::{AtlsError, SPKI_CLAIM};

/// The reserved path the server proxy answers itself.
pub const ATTEST_PATH: &str = "/.well-known/atls/attest";
/// Start of the request line of a freshness request.
pub const REQUEST_PREFIX: &[u8] = b"POST /.well-known/atls/attest ";
/// TLS exporter label.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-atls-attestation-binding";
/// Largest request or response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest body accepted (a token).
pub const MAX_BODY: usize = 64 * 1024;

/// `TLS-Exporter(EXPORTER_LABEL, nonce, 32)` of a connection (client or server side).
pub fn exporter<D>(conn: &ConnectionCommon<D>, nonce: &[u8]) -> Result<[u8; 32], rustls::Error> {
    conn.export_keying_material([0u8; 32], EXPORTER_LABEL, Some(nonce))
}

/// Index just past the `\r\n\r\n` that ends an HTTP head.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// `Content-Length` of an HTTP head (0 when absent).
pub fn content_length(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    for line in text.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            return value.trim().parse().ok();
        }
    }
    Some(0)
}

/// Read one HTTP message (head and `Content-Length` body) from `stream`, starting with what `buf` holds.
/// Returns (head length, total length); `buf` may hold bytes past the message.
pub async fn read_message<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> std::io::Result<(usize, usize)> {
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let head = loop {
        if let Some(end) = head_end(buf) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("HTTP head too large"));
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    };
    let len = content_length(&buf[..head]).ok_or_else(|| invalid("bad Content-Length"))?;
    if len > MAX_BODY {
        return Err(invalid("body too large"));
    }
    while buf.len() < head + len {
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok((head, head + len))
}

/// An HTTP/1.1 response with a JSON body.
pub fn response(status: u16, reason: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Client side: send the freshness request for `nonce` and return the token of a 200 response.
pub async fn request_token<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    nonce: &[u8; 32],
) -> Result<String, AtlsError> {
    let err = |detail: String| AtlsError::Freshness { detail };
    let body = serde_json::json!({"nonce": hex::encode(nonce)}).to_string();
    let req = format!(
        "POST {ATTEST_PATH} HTTP/1.1\r\nHost: atls\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| err(format!("sending the request: {e}")))?;
    stream
        .flush()
        .await
        .map_err(|e| err(format!("sending the request: {e}")))?;
    let mut buf = Vec::with_capacity(4096);
    let (head, end) = read_message(stream, &mut buf)
        .await
        .map_err(|e| err(format!("reading the response: {e}")))?;
    if buf.len() != end {
        return Err(err("the server sent bytes after the response".into()));
    }
    let status = std::str::from_utf8(&buf[..head])
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .unwrap_or("?")
        .to_string();
    let json: Value = serde_json::from_slice(&buf[head..end]).unwrap_or(Value::Null);
    if status != "200" {
        return Err(err(format!("the server answered {status}: {json}")));
    }
    json.get("token")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| err("the response has no token".into()))
}

/// Client side: check a fresh token (signature, issuer, expiry, key binding, nonce, exporter, policy).
pub fn verify_fresh_token(
    token: &str,
    config: &VerifierConfig,
    now: SystemTime,
    spki_sha256: &str,
    nonce: &[u8; 32],
    ekm: &[u8; 32],
) -> Result<Claims, AtlsError> {
    let wrap = |e: AtlsError| AtlsError::Freshness { detail: e.to_string() };
    let claims = verify_claims(token, config, now).map_err(wrap)?;
    let fresh = |detail| AtlsError::Freshness { detail };
    check_runtime(&claims, SPKI_CLAIM, spki_sha256, fresh)?;
    check_runtime(&claims, "nonce", &hex::encode(nonce), fresh)?;
    check_runtime(&claims, "ekm", &hex::encode(ekm), fresh)?;
    config.policy.check(&claims)?;
    Ok(claims)
}

/// Server side: the nonce of a freshness request body.
pub fn parse_nonce(body: &[u8]) -> Option<[u8; 32]> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let bytes = hex::decode(v.get("nonce")?.as_str()?).ok()?;
    bytes.try_into().ok()
}
