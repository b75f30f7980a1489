//! Prometheus metrics of the sidecar (text exposition format, no extra dependencies).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the key release latency histogram.
const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug, Default)]
struct Inner {
    release_buckets: [u64; BUCKETS.len()],
    release_count: u64,
    release_sum: f64,
    release_outcomes: BTreeMap<&'static str, u64>,
    failures: BTreeMap<(String, &'static str), u64>,
    ready_seconds: BTreeMap<String, f64>,
    mounted: BTreeMap<String, bool>,
}

/// The sidecar's counters; shared between the mount tasks and the HTTP endpoint.
#[derive(Debug, Default)]
pub struct Metrics(Mutex<Inner>);

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    /// One key release attempt took `elapsed` with `outcome` (`ok`, `denied`, `transient_error`, `error`).
    pub(crate) fn key_release(&self, elapsed: Duration, outcome: &'static str) {
        let s = elapsed.as_secs_f64();
        self.with(|m| {
            for (i, b) in BUCKETS.iter().enumerate() {
                if s <= *b {
                    m.release_buckets[i] += 1;
                }
            }
            m.release_count += 1;
            m.release_sum += s;
            *m.release_outcomes.entry(outcome).or_default() += 1;
        });
    }

    /// A filesystem failed at `step`.
    pub fn failure(&self, filesystem: &str, step: &'static str) {
        self.with(|m| *m.failures.entry((filesystem.to_string(), step)).or_default() += 1);
    }

    /// A filesystem became ready `since_start` after the sidecar started.
    pub fn ready(&self, filesystem: &str, since_start: Duration) {
        self.with(|m| {
            m.ready_seconds
                .insert(filesystem.to_string(), since_start.as_secs_f64());
            m.mounted.insert(filesystem.to_string(), true);
        });
    }

    /// A filesystem was unmounted.
    pub fn unmounted(&self, filesystem: &str) {
        self.with(|m| {
            m.mounted.insert(filesystem.to_string(), false);
        });
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut o = String::new();
            let _ = writeln!(
                o,
                "# HELP cinfer_encfs_key_release_seconds Latency of one key release attempt (evidence, token, release, unwrap)."
            );
            let _ = writeln!(o, "# TYPE cinfer_encfs_key_release_seconds histogram");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "cinfer_encfs_key_release_seconds_bucket{{le=\"{b}\"}} {}",
                    m.release_buckets[i]
                );
            }
            let _ = writeln!(o, "cinfer_encfs_key_release_seconds_bucket{{le=\"+Inf\"}} {}", m.release_count);
            let _ = writeln!(o, "cinfer_encfs_key_release_seconds_sum {}", m.release_sum);
            let _ = writeln!(o, "cinfer_encfs_key_release_seconds_count {}", m.release_count);
            let _ = writeln!(o, "# HELP cinfer_encfs_key_releases_total Key release attempts by outcome.");
            let _ = writeln!(o, "# TYPE cinfer_encfs_key_releases_total counter");
            for (k, v) in &m.release_outcomes {
                let _ = writeln!(o, "cinfer_encfs_key_releases_total{{outcome=\"{k}\"}} {v}");
            }
            let _ = writeln!(o, "# HELP cinfer_encfs_filesystem_failures_total Filesystems that failed, by step.");
            let _ = writeln!(o, "# TYPE cinfer_encfs_filesystem_failures_total counter");
            for ((fs, step), v) in &m.failures {
                let _ = writeln!(
                    o,
                    "cinfer_encfs_filesystem_failures_total{{filesystem=\"{fs}\",step=\"{step}\"}} {v}"
                );
            }
            let _ = writeln!(o, "# HELP cinfer_encfs_mount_ready_seconds Time from sidecar start to the mount being exposed.");
            let _ = writeln!(o, "# TYPE cinfer_encfs_mount_ready_seconds gauge");
            for (fs, v) in &m.ready_seconds {
                let _ = writeln!(o, "cinfer_encfs_mount_ready_seconds{{filesystem=\"{fs}\"}} {v}");
            }
            let _ = writeln!(o, "# HELP cinfer_encfs_mounted Whether the filesystem is mounted and exposed.");
            let _ = writeln!(o, "# TYPE cinfer_encfs_mounted gauge");
            for (fs, v) in &m.mounted {
                let _ = writeln!(o, "cinfer_encfs_mounted{{filesystem=\"{fs}\"}} {}", u8::from(*v));
            }
            o
        })
    }
}
