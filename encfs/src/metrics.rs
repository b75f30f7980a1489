//! Counters worth a dashboard for remote sources: bytes fetched, requests, retries, failures, cache hits and
//! misses, decrypt failures. Plain atomics (no registry crate), rendered in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide counters of one mount's source and cache. Cheap to update from any thread.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Range requests sent (each attempt counts).
    pub requests: AtomicU64,
    /// Body bytes received from the remote (whole or partial).
    pub bytes_fetched: AtomicU64,
    /// Attempts that failed and were retried.
    pub retries: AtomicU64,
    /// Reads that failed for good (budget spent, or a non-retryable error).
    pub failures: AtomicU64,
    /// Reads refused because the blob changed since mount (412 / ETag mismatch).
    pub precondition_failures: AtomicU64,
    /// Cache lookups served from memory.
    pub cache_hits: AtomicU64,
    /// Cache lookups that had to fetch.
    pub cache_misses: AtomicU64,
    /// Bytes requested speculatively by the prefetcher.
    pub prefetch_bytes: AtomicU64,
    /// Reads that failed authentication (a tampered or corrupted chunk; counted by the caching source).
    pub decrypt_failures: AtomicU64,
    /// Bytes served from the on-disk cache.
    pub disk_read_bytes: AtomicU64,
    /// Bytes written to the on-disk cache.
    pub disk_written_bytes: AtomicU64,
    /// On-disk cache parts dropped because a file was short or corrupt.
    pub disk_discarded: AtomicU64,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters in the Prometheus text exposition format (version 0.0.4), prefixed `cinfer_encfs_`.
    pub(crate) fn render_prometheus(&self) -> String {
        let rows: [(&str, &str, &AtomicU64); 12] = [
            (
                "source_requests_total",
                "Range requests sent, retries included.",
                &self.requests,
            ),
            (
                "source_bytes_fetched_total",
                "Body bytes received from the source.",
                &self.bytes_fetched,
            ),
            (
                "source_retries_total",
                "Failed attempts that were retried.",
                &self.retries,
            ),
            ("source_failures_total", "Reads that failed for good.", &self.failures),
            (
                "source_precondition_failures_total",
                "Reads refused because the blob changed since mount.",
                &self.precondition_failures,
            ),
            (
                "cache_hits_total",
                "Part lookups served from the memory cache.",
                &self.cache_hits,
            ),
            (
                "cache_misses_total",
                "Part lookups that fetched from the source.",
                &self.cache_misses,
            ),
            (
                "prefetch_bytes_total",
                "Bytes requested ahead of readers.",
                &self.prefetch_bytes,
            ),
            (
                "decrypt_failures_total",
                "Reads whose ciphertext failed authentication.",
                &self.decrypt_failures,
            ),
            (
                "cache_disk_read_bytes_total",
                "Bytes served from the on-disk ciphertext cache.",
                &self.disk_read_bytes,
            ),
            (
                "cache_disk_written_bytes_total",
                "Bytes written to the on-disk ciphertext cache.",
                &self.disk_written_bytes,
            ),
            (
                "cache_disk_discarded_total",
                "On-disk cache parts dropped as short or corrupt.",
                &self.disk_discarded,
            ),
        ];
        let mut out = String::new();
        for (name, help, v) in rows {
            let _ = writeln!(out, "# HELP cinfer_encfs_{name} {help}");
            let _ = writeln!(out, "# TYPE cinfer_encfs_{name} counter");
            let _ = writeln!(out, "cinfer_encfs_{name} {}", v.load(Ordering::Relaxed));
        }
        let (uring, classic) = crate::fuse::mounts_by_transport();
        let _ = writeln!(
            out,
            "# HELP cinfer_encfs_fuse_mounts_total FUSE mounts made by this process, by the transport that carries them."
        );
        let _ = writeln!(out, "# TYPE cinfer_encfs_fuse_mounts_total counter");
        let _ = writeln!(out, "cinfer_encfs_fuse_mounts_total{{transport=\"uring\"}} {uring}");
        let _ = writeln!(out, "cinfer_encfs_fuse_mounts_total{{transport=\"classic\"}} {classic}");
        let _ = writeln!(
            out,
            "# HELP cinfer_encfs_fuse_handler_panics_total FUSE request handlers that panicked (each answered EIO)."
        );
        let _ = writeln!(out, "# TYPE cinfer_encfs_fuse_handler_panics_total counter");
        let _ = writeln!(
            out,
            "cinfer_encfs_fuse_handler_panics_total {}",
            crate::fuse::handler_panics()
        );
        out
    }
}

/// Serves `GET /metrics` (any path, in fact) in the Prometheus text format on `listener` until the task is
/// dropped. One response per connection; loopback or a pod-local address is the intended bind.
pub async fn serve(listener: tokio::net::TcpListener, metrics: std::sync::Arc<Metrics>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // Read the request head (bounded), then answer and close.
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 16 << 10 {
                match tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let body = metrics.render_prometheus();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_help_type_and_value() {
        let m = Metrics::default();
        Metrics::add(&m.bytes_fetched, 42);
        let t = m.render_prometheus();
        assert!(t.contains("# TYPE cinfer_encfs_source_bytes_fetched_total counter\n"));
        assert!(t.contains("\ncinfer_encfs_source_bytes_fetched_total 42\n"));
    }
}
