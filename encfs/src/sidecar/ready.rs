//! Readiness: per-filesystem status, ready files, and a tiny HTTP endpoint (`/ready`, `/status`, `/metrics`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::metrics::Metrics;

/// State of one filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsState {
    /// Releasing the key, opening, mounting.
    Starting,
    /// Mounted and exposed; the image root digest (hex).
    Ready(String),
    /// Failed at a step.
    Failed {
        /// The step.
        step: &'static str,
        /// The message.
        message: String,
    },
}

/// Shared status of all filesystems.
#[derive(Debug)]
pub struct Status {
    entries: Mutex<Vec<(String, FsState)>>,
    ready_dir: Option<PathBuf>,
    /// Metrics served at `/metrics`.
    pub metrics: Metrics,
    /// The image sources' counters (bytes fetched, requests, retries, cache hits/misses, decrypt failures), shared
    /// by every filesystem's source and cache and served at `/metrics` after [`Status::metrics`].
    pub sources: Arc<crate::metrics::Metrics>,
}

impl Status {
    /// Status for the given mount points, all starting.
    pub fn new(mount_points: Vec<String>, ready_dir: Option<PathBuf>) -> Self {
        Self {
            entries: Mutex::new(mount_points.into_iter().map(|m| (m, FsState::Starting)).collect()),
            ready_dir,
            metrics: Metrics::default(),
            sources: Arc::default(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Vec<(String, FsState)>) -> R) -> R {
        let mut g = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    /// Sets filesystem `i`'s state and updates its ready/failed file.
    pub fn set(&self, i: usize, state: FsState) {
        let mount_point = self.with(|e| {
            e[i].1 = state.clone();
            e[i].0.clone()
        });
        if let Some(dir) = &self.ready_dir {
            let ready = dir.join(format!("filesystem-{i}.ready"));
            let failed = dir.join(format!("filesystem-{i}.failed"));
            let _ = std::fs::remove_file(&ready);
            let _ = std::fs::remove_file(&failed);
            let r = match &state {
                FsState::Starting => Ok(()),
                FsState::Ready(root) => write_atomic(&ready, &json!({"mount_point": mount_point, "root": root})),
                FsState::Failed { step, message } => write_atomic(
                    &failed,
                    &json!({"mount_point": mount_point, "step": step, "error": message}),
                ),
            };
            if let Err(e) = r {
                tracing::warn!("writing status file in {}: {e}", dir.display());
            }
        }
        self.update_all_ready();
    }

    /// Removes filesystem `i`'s status files (after unmounting) and marks it starting.
    pub fn clear(&self, i: usize) {
        self.with(|e| e[i].1 = FsState::Starting);
        if let Some(dir) = &self.ready_dir {
            let _ = std::fs::remove_file(dir.join(format!("filesystem-{i}.ready")));
        }
        self.update_all_ready();
    }

    fn update_all_ready(&self) {
        if let Some(dir) = &self.ready_dir {
            let all = dir.join("ready");
            if self.all_ready() {
                let _ = write_atomic(&all, &self.json());
            } else {
                let _ = std::fs::remove_file(all);
            }
        }
    }

    /// True when every filesystem is ready.
    pub(crate) fn all_ready(&self) -> bool {
        self.with(|e| e.iter().all(|(_, s)| matches!(s, FsState::Ready(_))))
    }

    /// Status as JSON.
    pub fn json(&self) -> Value {
        self.with(|e| {
            let fs: Vec<Value> = e
                .iter()
                .enumerate()
                .map(|(i, (mp, s))| match s {
                    FsState::Starting => json!({"index": i, "mount_point": mp, "state": "starting"}),
                    FsState::Ready(root) => json!({"index": i, "mount_point": mp, "state": "ready", "root": root}),
                    FsState::Failed { step, message } => {
                        json!({"index": i, "mount_point": mp, "state": "failed", "step": step, "error": message})
                    }
                })
                .collect();
            json!({"ready": e.iter().all(|(_, s)| matches!(s, FsState::Ready(_))), "filesystems": fs})
        })
    }
}

fn write_atomic(path: &Path, v: &Value) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{v}\n"))?;
    std::fs::rename(tmp, path)
}

/// Serves `/ready` (200 when every filesystem is mounted, else 503; body: status JSON), `/status` (JSON) and
/// `/metrics` (Prometheus) until the task is dropped.
pub async fn serve(listener: TcpListener, status: Arc<Status>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let status = status.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut n = 0;
            // Read the request head (we only need the request line).
            while n < buf.len() {
                match conn.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || buf[..n].contains(&b'\n') {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (code, ctype, body) = match path {
                "/ready" | "/readyz" => {
                    let ok = status.all_ready();
                    (
                        if ok { 200 } else { 503 },
                        "application/json",
                        format!("{}\n", status.json()),
                    )
                }
                "/status" => (200, "application/json", format!("{}\n", status.json())),
                "/metrics" => (
                    200,
                    "text/plain; version=0.0.4",
                    format!("{}{}", status.metrics.render(), status.sources.render_prometheus()),
                ),
                "/healthz" | "/live" => (200, "text/plain", "ok\n".into()),
                _ => (404, "text/plain", "not found\n".into()),
            };
            let reason = match code {
                200 => "OK",
                503 => "Service Unavailable",
                _ => "Not Found",
            };
            let resp = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
