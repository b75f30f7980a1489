//! A minimal HTTP/1.1 client over `std::net` for loopback services: health probes, requests through the client
//! proxy (absolute-form, as `http_proxy` clients send them), and blob uploads to Azurite. One request per
//! connection (`Connection: close`), so responses end at EOF.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::error::{LocalError, Result};

/// Status, headers (lowercase names) and body of a response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header lines as `(lowercase name, value)`.
    pub headers: Vec<(String, String)>,
    /// Body as text (lossy).
    pub body: String,
}

impl Response {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A request to send to `127.0.0.1:port`.
#[derive(Debug)]
pub struct Request<'a> {
    /// Method.
    pub method: &'a str,
    /// Request target: a path, or an absolute URL when talking to a proxy.
    pub target: &'a str,
    /// Extra headers.
    pub headers: &'a [(&'a str, String)],
    /// Body.
    pub body: Body<'a>,
}

/// A request body.
#[derive(Debug)]
pub enum Body<'a> {
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// A file streamed from disk (`Content-Length` is its size).
    File(&'a std::path::Path),
}

/// Sends `req` to `127.0.0.1:port` and reads the whole response (timeout per read: `timeout`).
pub fn send(port: u16, req: &Request<'_>, timeout: Duration) -> Result<Response> {
    let what = format!("{} {}", req.method, redact(req.target));
    let fail = |reason: String| LocalError::Http {
        what: what.clone(),
        reason,
    };
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| fail(e.to_string()))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| fail(e.to_string()))?;
    let (len, mut file) = match req.body {
        Body::Bytes(b) => (b.len() as u64, None),
        Body::File(p) => {
            let f = std::fs::File::open(p).map_err(|e| fail(format!("{}: {e}", p.display())))?;
            let len = f.metadata().map_err(|e| fail(e.to_string()))?.len();
            (len, Some(f))
        }
    };
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {len}\r\n",
        req.method, req.target
    );
    for (k, v) in req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let io = |e: std::io::Error| fail(e.to_string());
    s.write_all(head.as_bytes()).map_err(io)?;
    match (&req.body, file.as_mut()) {
        (_, Some(f)) => {
            std::io::copy(f, &mut s).map_err(io)?;
        }
        (Body::Bytes(b), None) => s.write_all(b).map_err(io)?,
        (Body::File(_), None) => {}
    }
    let mut buf = Vec::new();
    // A server may reset after answering; what was read is the answer.
    let _ = s.read_to_end(&mut buf);
    parse(&buf).ok_or_else(|| fail("no HTTP response".into()))
}

/// Status and body of a plain GET of `path` on `127.0.0.1:port`.
pub fn get(port: u16, path: &str) -> Result<Response> {
    send(
        port,
        &Request {
            method: "GET",
            target: path,
            headers: &[],
            body: Body::Bytes(&[]),
        },
        Duration::from_secs(10),
    )
}

/// Status of a GET (None when nothing answers).
pub fn status(port: u16, path: &str) -> Option<u16> {
    get(port, path).ok().map(|r| r.status)
}

fn parse(buf: &[u8]) -> Option<Response> {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&buf[split + 4..]).into_owned(),
    })
}

/// `url` without its query (a SAS is a secret); what may be shown and logged.
pub fn redact(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?<redacted>"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_status_headers_and_body() {
        let r = parse(b"HTTP/1.1 206 Partial Content\r\nETag: \"x\"\r\nContent-Range: bytes 0-0/9\r\n\r\nA").unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(r.header("etag"), Some("\"x\""));
        assert_eq!(r.header("content-range"), Some("bytes 0-0/9"));
        assert_eq!(r.body, "A");
        assert!(parse(b"garbage").is_none());
    }

    #[test]
    fn redact_hides_the_query() {
        assert_eq!(redact("http://h/a/b?sig=secret"), "http://h/a/b?<redacted>");
        assert_eq!(redact("http://h/a/b"), "http://h/a/b");
    }
}
