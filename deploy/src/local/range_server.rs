//! A local HTTP server for one file with `Range` support, for `cinfer-deploy local --image-store http`: what a
//! plain web server or a presigned URL gives the encfs sidecar. `GET`/`HEAD` with `Range: bytes=A-B` answer `206`
//! with `Content-Range`; every response carries a strong `ETag` (size and mtime), and a mismatching `If-Match`
//! answers `412`, so the sidecar can pin the version it mounted. One thread per connection, keep-alive.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::debug;

use super::error::{LocalError, Result};

/// A running range server; stops accepting on drop.
#[derive(Debug)]
pub struct RangeServer {
    port: u16,
    name: String,
    stop: Arc<AtomicBool>,
}

struct Served {
    path: PathBuf,
    name: String,
    etag: String,
    len: u64,
}

impl RangeServer {
    /// Serves `file` at `/<file name>` on `127.0.0.1:port` (0: a free port).
    pub fn start(file: &Path, port: u16) -> Result<Self> {
        let meta = std::fs::metadata(file).map_err(LocalError::io(format!("reading {}", file.display())))?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let served = Arc::new(Served {
            path: file.to_path_buf(),
            name: name.clone(),
            etag: format!("\"{:x}-{:x}\"", meta.len(), meta.mtime_nsec() ^ (meta.mtime() << 30)),
            len: meta.len(),
        });
        let listener =
            TcpListener::bind(("127.0.0.1", port)).map_err(LocalError::io("binding the image range server"))?;
        let port = listener
            .local_addr()
            .map_err(LocalError::io("range server address"))?
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("range-server".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let served = served.clone();
                    let _ = std::thread::Builder::new()
                        .name("range-conn".into())
                        .spawn(move || serve(conn, &served));
                }
            })
            .map_err(LocalError::io("starting the range server"))?;
        Ok(Self { port, name, stop })
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file's URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, self.name)
    }
}

impl Drop for RangeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, served: &Served) {
    let Ok(write_half) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    let mut out = write_half;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or_default().to_owned(),
            parts.next().unwrap_or_default().to_owned(),
        );
        let (mut range, mut if_match, mut close) = (None, None, false);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let v = v.trim().to_owned();
                match k.trim().to_ascii_lowercase().as_str() {
                    "range" => range = Some(v),
                    "if-match" => if_match = Some(v),
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        debug!(%method, %target, ?range, "range server request");
        let ok = respond(
            &mut out,
            served,
            &method,
            &target,
            range.as_deref(),
            if_match.as_deref(),
        );
        if !ok || close {
            return;
        }
    }
}

/// Writes one response; false when the connection should close.
fn respond(
    out: &mut TcpStream,
    s: &Served,
    method: &str,
    target: &str,
    range: Option<&str>,
    if_match: Option<&str>,
) -> bool {
    let path = target.split('?').next().unwrap_or_default();
    let simple = |out: &mut TcpStream, status: &str, extra: &str| {
        let _ = write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nETag: {}\r\n{extra}\r\n",
            s.etag
        );
    };
    if method != "GET" && method != "HEAD" {
        simple(out, "405 Method Not Allowed", "Allow: GET, HEAD\r\n");
        return true;
    }
    if path.trim_start_matches('/') != s.name {
        simple(out, "404 Not Found", "");
        return true;
    }
    if let Some(m) = if_match
        && m != "*"
        && m != s.etag
    {
        simple(out, "412 Precondition Failed", "");
        return true;
    }
    let (start, end, status) = match range.map(|r| parse_range(r, s.len)) {
        None => (0, s.len, "200 OK"),
        Some(Some((a, b))) => (a, b, "206 Partial Content"),
        Some(None) => {
            simple(
                out,
                "416 Range Not Satisfiable",
                &format!("Content-Range: bytes */{}\r\n", s.len),
            );
            return true;
        }
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: {}\r\nAccept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\n",
        end - start,
        s.etag
    );
    if status.starts_with("206") {
        head.push_str(&format!("Content-Range: bytes {start}-{}/{}\r\n", end - 1, s.len));
    }
    head.push_str("\r\n");
    if out.write_all(head.as_bytes()).is_err() {
        return false;
    }
    if method == "HEAD" {
        return true;
    }
    let Ok(mut f) = File::open(&s.path) else { return false };
    if f.seek(SeekFrom::Start(start)).is_err() {
        return false;
    }
    std::io::copy(&mut f.take(end - start), out).is_ok_and(|n| n == end - start)
}

/// `bytes=A-B`, `bytes=A-` or `bytes=-N` within a file of `len` bytes → `[start, end)`; None if unsatisfiable.
fn parse_range(spec: &str, len: u64) -> Option<(u64, u64)> {
    let (a, b) = spec.strip_prefix("bytes=")?.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (len.saturating_sub(n), len)
        }
        (a, "") => (a.parse().ok()?, len),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.saturating_add(1).min(len)),
    };
    (start < end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::http;

    #[test]
    fn parse_range_forms() {
        assert_eq!(parse_range("bytes=0-0", 10), Some((0, 1)));
        assert_eq!(parse_range("bytes=2-", 10), Some((2, 10)));
        assert_eq!(parse_range("bytes=-3", 10), Some((7, 10)));
        assert_eq!(parse_range("bytes=5-100", 10), Some((5, 10)));
        assert_eq!(parse_range("bytes=10-12", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
    }

    #[test]
    fn serves_ranges_pins_etag_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.img");
        std::fs::write(&file, b"0123456789").unwrap();
        let server = RangeServer::start(&file, 0).unwrap();
        let get = |range: &str, if_match: Option<&str>| {
            let mut headers = vec![("Range", range.to_owned())];
            if let Some(m) = if_match {
                headers.push(("If-Match", m.to_owned()));
            }
            http::send(
                server.port(),
                &http::Request {
                    method: "GET",
                    target: "/model.img",
                    headers: &headers,
                    body: http::Body::Bytes(&[]),
                },
                std::time::Duration::from_secs(5),
            )
            .unwrap()
        };
        let r = get("bytes=0-0", None);
        assert_eq!((r.status, r.body.as_str()), (206, "0"));
        assert_eq!(r.header("content-range"), Some("bytes 0-0/10"));
        let etag = r.header("etag").unwrap().to_owned();
        let r = get("bytes=3-5", Some(&etag));
        assert_eq!((r.status, r.body.as_str()), (206, "345"));
        assert_eq!(get("bytes=3-5", Some("\"other\"")).status, 412);
        assert_eq!(get("bytes=20-30", None).status, 416);
        assert_eq!(http::status(server.port(), "/other.img"), Some(404));
    }
}
