//! The HTTP(S) source against a real Range server started by the test (a small tokio HTTP/1.1 server that counts
//! the bytes it serves and injects faults): byte-exact reads through real FUSE mounts, bytes on the wire, ETag
//! pinning, retries, and bounded failure when the budget is spent.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Fixture, pattern};
use encfs::metrics::Metrics;
use encfs::source::{BlobError, BlobKey, BlobSource, HttpSource, HttpSourceError, RetryPolicy};
use encfs::testing::{Content, TreeBuilder};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const CS: u32 = 64 << 10;

/// What the server does to the next request.
#[derive(Clone, Debug)]
enum Fault {
    /// Answer with this status and no body.
    Status(u16),
    /// 429 with `Retry-After: secs`.
    TooMany(u64),
    /// Close the connection without answering.
    Reset,
    /// Announce the full length, send half, close.
    Short,
    /// Send the headers, then nothing for this long, then close.
    Stall(Duration),
}

#[derive(Default)]
struct State {
    blob: Mutex<(Bytes, String)>,
    bytes_served: AtomicU64,
    requests: AtomicU64,
    /// Connections accepted.
    connections: AtomicU64,
    /// Body length of each range answered, in order.
    sizes: Mutex<Vec<u64>>,
    /// One fault per request, in order.
    faults: Mutex<VecDeque<Fault>>,
    /// A fault for every request while set.
    always: Mutex<Option<Fault>>,
}

/// A Range server on 127.0.0.1, on its own thread and runtime; stops when dropped.
struct RangeServer {
    url: String,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RangeServer {
    fn start(data: Vec<u8>) -> Self {
        let state = Arc::new(State::default());
        *state.blob.lock().unwrap() = (Bytes::from(data), "\"v1\"".into());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(l.local_addr().unwrap()).unwrap();
                let accept = async {
                    loop {
                        let (s, _) = l.accept().await.unwrap();
                        st.connections.fetch_add(1, Ordering::SeqCst);
                        let st = st.clone();
                        tokio::spawn(async move {
                            let _ = serve_conn(s, st).await;
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = rx => {}
                }
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        let addr = addr_rx.recv().unwrap();
        Self {
            url: format!("http://{addr}/models/model.img?sig=secret"),
            state,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn served(&self) -> u64 {
        self.state.bytes_served.load(Ordering::SeqCst)
    }

    fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Body lengths of the ranges answered after the first `skip`.
    fn sizes_after(&self, skip: usize) -> Vec<u64> {
        self.state.sizes.lock().unwrap()[skip..].to_vec()
    }

    fn push_faults(&self, f: impl IntoIterator<Item = Fault>) {
        self.state.faults.lock().unwrap().extend(f);
    }

    fn set_always(&self, f: Option<Fault>) {
        *self.state.always.lock().unwrap() = f;
    }

    fn replace_blob(&self, data: Vec<u8>, etag: &str) {
        *self.state.blob.lock().unwrap() = (Bytes::from(data), etag.into());
    }
}

impl Drop for RangeServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_conn(s: TcpStream, st: Arc<State>) -> std::io::Result<()> {
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut range = None;
        let mut if_match = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "range" => range = Some(v.trim().to_string()),
                    "if-match" => if_match = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        st.requests.fetch_add(1, Ordering::SeqCst);
        let fault = st
            .faults
            .lock()
            .unwrap()
            .pop_front()
            .or_else(|| st.always.lock().unwrap().clone());
        let (data, etag) = st.blob.lock().unwrap().clone();
        let len = data.len() as u64;
        let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
            Some(r) => {
                let (a, b) = r.split_once('-').unwrap();
                let a: u64 = a.parse().unwrap();
                let b: u64 = b.parse::<u64>().unwrap().min(len.saturating_sub(1));
                (a, b + 1)
            }
            None => (0, len),
        };
        let s = r.get_mut();
        match fault {
            Some(Fault::Reset) => return Ok(()),
            Some(Fault::Status(code)) => {
                s.write_all(format!("HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await?;
                continue;
            }
            Some(Fault::TooMany(secs)) => {
                s.write_all(
                    format!("HTTP/1.1 429 Too Many\r\nRetry-After: {secs}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                )
                .await?;
                continue;
            }
            _ => {}
        }
        if if_match.as_deref().is_some_and(|m| m != etag) {
            s.write_all(b"HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\n\r\n")
                .await?;
            continue;
        }
        if start >= len || start >= end {
            s.write_all(
                format!(
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
            continue;
        }
        let body = data.slice(start as usize..end as usize);
        st.sizes.lock().unwrap().push(body.len() as u64);
        let head = if range.is_some() {
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{len}\r\nContent-Length: {}\r\nETag: {etag}\r\n\r\n",
                end - 1,
                body.len()
            )
        } else {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\n\r\n",
                body.len()
            )
        };
        s.write_all(head.as_bytes()).await?;
        match fault {
            Some(Fault::Short) => {
                let half = body.slice(..body.len() / 2);
                s.write_all(&half).await?;
                st.bytes_served.fetch_add(half.len() as u64, Ordering::SeqCst);
                s.flush().await?;
                return Ok(());
            }
            Some(Fault::Stall(d)) => {
                s.flush().await?;
                tokio::time::sleep(d).await;
                return Ok(());
            }
            _ => {}
        }
        s.write_all(&body).await?;
        st.bytes_served.fetch_add(body.len() as u64, Ordering::SeqCst);
    }
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        request_timeout: Duration::from_millis(500),
        stall_timeout: Duration::from_millis(500),
        budget: Duration::from_secs(5),
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        max_attempts: 20,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A fixture with one 16 MiB file and a small one.
fn big_fixture() -> (Fixture, Vec<u8>) {
    let data = pattern(16 << 20, 7);
    let mut tree = TreeBuilder::new();
    tree.file("model/weights.bin", Content::Bytes(data.clone()));
    tree.file("model/config.json", Content::Bytes(b"{\"layers\": 2}".to_vec()));
    (Fixture::build(tree, CS), data)
}

fn mount_url(fx: &Fixture, url: &str, extra: &[&str]) -> common::MountGuard {
    let mut args = vec!["--read-ahead-kb", "0", "--request-timeout", "1", "--retry-budget", "4"];
    args.extend_from_slice(extra);
    fx.mount_image(Path::new(url), &args)
}

#[test]
fn http_source_mount_reads_byte_exact_and_fetches_only_what_is_read() {
    let (fx, data) = big_fixture();
    let image = std::fs::read(&fx.image).unwrap();
    let image_len = image.len() as u64;
    let srv = RangeServer::start(image);
    let guard = mount_url(&fx, &srv.url, &[]);
    // Mounting reads the header and the index only.
    let at_mount = srv.served();
    assert!(at_mount > 0);
    assert!(
        at_mount < 64 << 10,
        "mount fetched {at_mount} bytes of a {image_len}-byte image"
    );
    // The mount table and the log never show the SAS-like query.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("sig=secret"));
    assert_eq!(
        std::fs::read(fx.mnt.join("model/config.json")).unwrap(),
        b"{\"layers\": 2}"
    );

    // 1 MiB at an unaligned offset: about 1 MiB on the wire (chunk rounding plus kernel readahead).
    let before = srv.served();
    let f = File::open(fx.mnt.join("model/weights.bin")).unwrap();
    let off = (5 << 20) + 1234;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < buf.len() {
        let n = f.read_at(&mut buf[done..], off + done as u64).unwrap();
        assert!(n > 0);
        done += n;
    }
    assert_eq!(buf, &data[off as usize..off as usize + (1 << 20)]);
    let fetched = srv.served() - before;
    assert!(fetched >= 1 << 20, "fetched {fetched}");
    assert!(fetched <= (1 << 20) + (384 << 10), "1 MiB read fetched {fetched} bytes");

    // A full sequential read is byte-exact.
    let mut all = Vec::new();
    File::open(fx.mnt.join("model/weights.bin"))
        .unwrap()
        .read_to_end(&mut all)
        .unwrap();
    assert!(all == data, "sequential read differs");
    assert!(!fx.log().contains("sig=secret"), "log leaks the query");
    drop(f);
    guard.unmount();
}

#[test]
fn http_source_first_read_after_mount_fetches_one_chunk_split_over_connections_opened_at_mount() {
    let (fx, data) = big_fixture();
    let srv = RangeServer::start(std::fs::read(&fx.image).unwrap());
    let guard = mount_url(&fx, &srv.url, &[]);
    // The first stat opened a connection per piece of a split read (in the background), besides its own.
    assert!(
        common::wait_for(Duration::from_secs(10), || srv.connections() >= 4),
        "{} connections after mount",
        srv.connections()
    );
    std::thread::sleep(Duration::from_millis(100));
    let (conns, answered) = (srv.connections(), srv.sizes_after(0).len());
    // What Python's `open(p, 'rb').read(1)` does: one read of st_blksize bytes (its buffer).
    let mut f = File::open(fx.mnt.join("model/weights.bin")).unwrap();
    let blksize = f.metadata().unwrap().blksize();
    assert_eq!(blksize, u64::from(CS / 4));
    let mut buf = vec![0u8; blksize as usize];
    f.read_exact(&mut buf).unwrap();
    assert!(buf[..] == data[..buf.len()]);
    // The kernel asked for one chunk, fetched as small requests (each fits in a new connection's first window)
    // on the connections already open: the read waits for one round trip, not for handshakes or for windows.
    let sizes = srv.sizes_after(answered);
    assert_eq!(sizes.iter().sum::<u64>(), u64::from(CS) + 16, "{sizes:?}");
    assert_eq!(sizes, [u64::from(CS / 2) + 8; 2], "{sizes:?}");
    assert_eq!(srv.connections(), conns, "the first read opened new connections");
    drop(f);
    guard.unmount();
}

#[test]
fn http_source_mount_fails_reads_with_eio_once_the_blob_is_replaced() {
    let (fx, data) = big_fixture();
    let image = std::fs::read(&fx.image).unwrap();
    let srv = RangeServer::start(image.clone());
    let guard = mount_url(&fx, &srv.url, &[]);
    let f = File::open(fx.mnt.join("model/weights.bin")).unwrap();
    let mut buf = vec![0u8; 128 << 10];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, &data[..128 << 10]);
    // Same bytes, new version: pinned reads must refuse it rather than mix versions.
    srv.replace_blob(image, "\"v2\"");
    let err = f.read_exact_at(&mut buf, 8 << 20).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        common::wait_for(Duration::from_secs(2), || fx.log().contains("changed since")),
        "no log line about the changed blob: {}",
        fx.log()
    );
    drop(f);
    guard.unmount();
}

#[test]
fn http_source_mount_retries_faults_and_returns_eio_in_bounded_time_when_the_budget_is_spent() {
    let (fx, data) = big_fixture();
    let srv = RangeServer::start(std::fs::read(&fx.image).unwrap());
    let guard = mount_url(&fx, &srv.url, &[]);
    // Transient faults are retried: the read succeeds with the right bytes.
    srv.push_faults([Fault::Status(503), Fault::Reset, Fault::Short, Fault::Status(500)]);
    let f = File::open(fx.mnt.join("model/weights.bin")).unwrap();
    let mut buf = vec![0u8; 256 << 10];
    f.read_exact_at(&mut buf, 3 << 20).unwrap();
    assert_eq!(buf, &data[3 << 20..(3 << 20) + (256 << 10)]);
    // A server that keeps failing: EIO within the budget (4 s) plus slack, never a hang.
    srv.set_always(Some(Fault::Status(503)));
    let t = Instant::now();
    let err = f.read_exact_at(&mut buf, 11 << 20).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    // Recovery: once the server is healthy the same range reads fine.
    srv.set_always(None);
    f.read_exact_at(&mut buf, 11 << 20).unwrap();
    assert_eq!(buf, &data[11 << 20..(11 << 20) + (256 << 10)]);
    drop(f);
    guard.unmount();
}

#[test]
fn http_source_retries_each_fault_kind_and_never_returns_wrong_bytes() {
    let blob = pattern(3 << 20, 3);
    let srv = RangeServer::start(blob.clone());
    let rt = rt();
    let metrics = Arc::new(Metrics::default());
    let src = HttpSource::new(fast_policy(), metrics.clone()).unwrap();
    let key = BlobKey::new(&srv.url);
    let meta = rt.block_on(src.stat(&key)).unwrap();
    assert_eq!(meta.len, blob.len() as u64);
    assert_eq!(meta.etag.as_ref().unwrap().as_str(), "\"v1\"");
    let faults = [
        Fault::Status(500),
        Fault::Status(502),
        Fault::Status(503),
        Fault::TooMany(1),
        Fault::Reset,
        Fault::Short,
        Fault::Stall(Duration::from_secs(2)),
        Fault::Status(408),
    ];
    for fault in faults {
        srv.push_faults([fault.clone()]);
        let t = Instant::now();
        let got = rt
            .block_on(src.read_range(&key, 100_000..1_200_000, meta.etag.as_ref()))
            .unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert!(got[..] == blob[100_000..1_200_000], "{fault:?}: wrong bytes");
        if let Fault::TooMany(secs) = fault {
            assert!(t.elapsed() >= Duration::from_secs(secs), "Retry-After not honoured");
        }
    }
    assert_eq!(metrics.retries.load(Ordering::Relaxed), 8);
    assert!(metrics.bytes_fetched.load(Ordering::Relaxed) >= 8 * 1_100_000);

    // Non-retryable: 403 fails at once.
    srv.push_faults([Fault::Status(403)]);
    let before = srv.requests();
    let e = rt.block_on(src.read_range(&key, 0..10, None)).unwrap_err();
    assert!(
        matches!(e, BlobError::Backend(HttpSourceError::Status { status: 403, .. })),
        "{e}"
    );
    assert_eq!(srv.requests() - before, 1);
    assert!(!e.to_string().contains("secret"), "error shows the query: {e}");

    // Budget spent: a stalled server gives up within the budget, with GaveUp.
    srv.set_always(Some(Fault::Stall(Duration::from_secs(30))));
    let t = Instant::now();
    let e = rt
        .block_on(src.read_range(&key, 0..1000, meta.etag.as_ref()))
        .unwrap_err();
    assert!(matches!(e, BlobError::Backend(HttpSourceError::GaveUp { .. })), "{e}");
    assert!(t.elapsed() <= Duration::from_secs(6), "took {:?}", t.elapsed());
    srv.set_always(None);

    // Replaced blob: pinned reads fail with PreconditionFailed (412 here; an ETag mismatch where If-Match is ignored).
    srv.replace_blob(blob, "\"v2\"");
    let e = rt
        .block_on(src.read_range(&key, 0..1000, meta.etag.as_ref()))
        .unwrap_err();
    assert!(matches!(e, BlobError::PreconditionFailed), "{e}");
    drop(rt);
}

#[test]
fn http_source_reports_missing_blobs_and_out_of_range_reads() {
    let srv = RangeServer::start(pattern(1000, 1));
    let rt = rt();
    let src = HttpSource::new(fast_policy(), Arc::default()).unwrap();
    let key = BlobKey::new(&srv.url);
    srv.push_faults([Fault::Status(404)]);
    assert!(matches!(rt.block_on(src.stat(&key)), Err(BlobError::NotFound)));
    let e = rt.block_on(src.read_range(&key, 2000..3000, None)).unwrap_err();
    assert!(matches!(e, BlobError::OutOfRange { len: 1000, .. }), "{e}");
    assert!(rt.block_on(src.read_range(&key, 5..5, None)).unwrap().is_empty());
}

#[test]
fn http_source_mount_prefetches_within_the_cache_size_and_serves_metrics() {
    let (fx, data) = big_fixture();
    let srv = RangeServer::start(std::fs::read(&fx.image).unwrap());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let guard = mount_url(&fx, &srv.url, &["--cache-size", "8", "--metrics-addr", &addr]);
    let before = srv.served();
    let mut f = File::open(fx.mnt.join("model/weights.bin")).unwrap();
    // The first 2 MiB are read as asked (before the stream counts as sequential), then the rest.
    let mut all = vec![0u8; 2 << 20];
    f.read_exact(&mut all).unwrap();
    let before_reqs = srv.requests();
    f.read_to_end(&mut all).unwrap();
    assert!(all == data, "sequential read through the cache differs");
    let fetched = srv.served() - before;
    let reqs = srv.requests() - before_reqs;
    // Little over-fetch, and far fewer requests than 128 KiB kernel reads (prefetch in 2 MiB parts).
    assert!(
        (16 << 20..=(16 << 20) + (4 << 20)).contains(&fetched),
        "fetched {fetched}"
    );
    assert!(reqs < 30, "{reqs} requests for the last 14 MiB");
    // Prometheus text with the counters.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("cinfer_encfs_{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(value("source_bytes_fetched_total") >= 16 << 20);
    assert!(value("cache_hits_total") > 0);
    assert!(value("prefetch_bytes_total") > 0);
    // The transport this run expects carries the mount, and the metrics say so.
    let transport = common::expected_transport();
    let other = if transport == "uring" { "classic" } else { "uring" };
    assert_eq!(value(&format!("fuse_mounts_total{{transport=\"{transport}\"}}")), 1);
    assert_eq!(value(&format!("fuse_mounts_total{{transport=\"{other}\"}}")), 0);
    drop(f);
    guard.unmount();
}

/// A free loopback address for `--metrics-addr`.
fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// The value of counter `cinfer_encfs_<name>` served on `addr`.
fn metric(addr: &str, name: &str) -> u64 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("cinfer_encfs_{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// The image with one byte flipped halfway through (inside the big file's chunks, far from the index).
fn tampered(image: &[u8]) -> (Vec<u8>, usize) {
    let mut bad = image.to_vec();
    let at = image.len() / 2;
    bad[at] ^= 0x40;
    (bad, at)
}

/// Waits until no daemon holds a lock in `cache_dir` (the previous daemon has exited, its disk writes done).
fn wait_until_released(cache_dir: &Path) {
    let free = || {
        std::fs::read_dir(cache_dir).unwrap().flatten().all(|e| {
            File::open(e.path().join("lock"))
                .map(|f| f.try_lock().is_ok())
                .unwrap_or(true)
        })
    };
    assert!(
        common::wait_for(Duration::from_secs(20), free),
        "the previous daemon still holds the cache"
    );
}

fn read_file(p: &Path) -> std::io::Result<Vec<u8>> {
    let mut all = Vec::new();
    File::open(p)?.read_to_end(&mut all)?;
    Ok(all)
}

#[test]
fn a_tampered_chunk_is_eio_and_counted_as_a_decrypt_failure() {
    let (fx, data) = big_fixture();
    let image = std::fs::read(&fx.image).unwrap();
    let (bad, _) = tampered(&image);
    let srv = RangeServer::start(bad);
    let addr = free_addr();
    let guard = mount_url(&fx, &srv.url, &["--metrics-addr", &addr]);
    assert_eq!(metric(&addr, "decrypt_failures_total"), 0);
    // The first MiB is intact; the whole file is not.
    let f = File::open(fx.mnt.join("model/weights.bin")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, &data[..1 << 20]);
    let err = read_file(&fx.mnt.join("model/weights.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(metric(&addr, "decrypt_failures_total") >= 1);
    drop(f);
    guard.unmount();
}

#[test]
fn disk_cache_restart_refetches_nothing_and_a_replaced_blob_never_reads_it() {
    let (fx, data) = big_fixture();
    let image = std::fs::read(&fx.image).unwrap();
    let srv = RangeServer::start(image.clone());
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let guard = mount_url(&fx, &srv.url, &["--cache-dir", dir]);
    assert!(read_file(&fx.mnt.join("model/weights.bin")).unwrap() == data);
    guard.unmount();
    wait_until_released(cache.path());
    assert!(srv.served() >= 16 << 20);

    // Restart: header, index and every byte of the file come from disk; only 1-byte requests are sent (the
    // legacy-format check and the open each stat the blob, and the first stat warms up a connection per piece
    // of a split read).
    let before = srv.served();
    let addr = free_addr();
    let guard = mount_url(&fx, &srv.url, &["--cache-dir", dir, "--metrics-addr", &addr]);
    assert!(read_file(&fx.mnt.join("model/weights.bin")).unwrap() == data);
    let refetched = srv.served() - before;
    let probes = 2 + encfs::cache::DEFAULT_SPLIT.max as u64;
    assert!(refetched <= probes, "{refetched} bytes refetched after a restart");
    assert!(metric(&addr, "cache_disk_read_bytes_total") >= 16 << 20);
    guard.unmount();
    wait_until_released(cache.path());

    // The blob is replaced (a tampered copy, new ETag): nothing of the old version's cache is used, so the
    // bad bytes are fetched and refused, where a stale cache would have served the old ones.
    let (bad, _) = tampered(&image);
    srv.replace_blob(bad, "\"v2\"");
    let before = srv.served();
    let guard = mount_url(&fx, &srv.url, &["--cache-dir", dir]);
    let err = read_file(&fx.mnt.join("model/weights.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        srv.served() - before >= 4 << 20,
        "the replaced blob was read from the old cache"
    );
    guard.unmount();
}

#[test]
fn disk_cache_drops_corrupt_and_truncated_files_and_fetches_them_again() {
    let (fx, data) = big_fixture();
    let srv = RangeServer::start(std::fs::read(&fx.image).unwrap());
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let guard = mount_url(&fx, &srv.url, &["--cache-dir", dir]);
    assert!(read_file(&fx.mnt.join("model/weights.bin")).unwrap() == data);
    guard.unmount();
    wait_until_released(cache.path());
    // Flip a byte in one part's data and truncate another's.
    let id = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let f = std::fs::OpenOptions::new().write(true).open(id.join("3.d")).unwrap();
    f.write_all_at(b"\xff\x00\xff", 100_000).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(id.join("5.d"))
        .unwrap()
        .set_len(1000)
        .unwrap();
    let before = srv.served();
    let addr = free_addr();
    let guard = mount_url(&fx, &srv.url, &["--cache-dir", dir, "--metrics-addr", &addr]);
    assert!(read_file(&fx.mnt.join("model/weights.bin")).unwrap() == data);
    let refetched = srv.served() - before;
    assert!(
        ((2 << 20)..=(6 << 20)).contains(&refetched),
        "refetched {refetched} bytes for two bad parts"
    );
    assert!(metric(&addr, "cache_disk_discarded_total") >= 1);
    assert_eq!(
        metric(&addr, "decrypt_failures_total"),
        0,
        "a bad cache file reached the decryptor"
    );
    guard.unmount();
}

#[test]
fn disk_cache_stays_within_its_size_bound() {
    let (fx, data) = big_fixture();
    let srv = RangeServer::start(std::fs::read(&fx.image).unwrap());
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let guard = mount_url(&fx, &srv.url, &["--cache-dir", dir, "--cache-dir-size", "4"]);
    assert!(read_file(&fx.mnt.join("model/weights.bin")).unwrap() == data);
    guard.unmount();
    wait_until_released(cache.path());
    let used: u64 = walk_bytes(cache.path());
    assert!(used <= 4 << 20, "{used} bytes on disk for a 4 MiB bound");
    assert!(used >= 2 << 20, "nothing was cached: {used}");
}

/// Allocated bytes of every file under `dir`.
fn walk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                walk_bytes(&e.path())
            } else {
                m.blocks() * 512
            }
        })
        .sum()
}
