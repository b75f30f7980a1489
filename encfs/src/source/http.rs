//! Images behind any HTTP(S) URL that serves `Range` requests: plain servers, presigned URLs, Azure SAS URLs.
//!
//! The [`BlobKey`] is the URL itself (query string included, so a SAS token travels with it; logs and errors
//! show it without the query). Requests:
//!
//! * `stat`: `GET` with `Range: bytes=0-0` (not `HEAD`: presigned URLs are signed for one method), reading the
//!   length from `Content-Range` and the version from `ETag`.
//! * `read_range`: `GET` with `Range` and, when pinned, `If-Match`. `412` is
//!   [`BlobError::PreconditionFailed`]; so is a response whose `ETag` differs from the pinned one (for servers
//!   that ignore `If-Match`). A `Content-Range` that does not match the request, or a body shorter than asked
//!   for, is never passed on.
//!
//! Faults (`5xx`, `408`, `429`, connection errors, short bodies, stalls) are retried per [`RetryPolicy`]:
//! exponential backoff with full jitter, `Retry-After` honoured, a timeout per attempt and per body stall, and a
//! total budget per read after which the read fails (the filesystem turns that into `EIO`).

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use tracing::{debug, warn};

use self::response::{Verdict, etag as etag_of, retry_after, total_len};
use super::{BlobError, BlobKey, BlobMeta, BlobSource, ETag};
use crate::errchain::ErrorChain;
use crate::metrics::Metrics;

mod health;
pub mod response;

/// How failed requests are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Time allowed for one attempt to deliver its response headers.
    pub request_timeout: Duration,
    /// Longest pause allowed between two pieces of a response body (a stalled transfer is retried).
    pub stall_timeout: Duration,
    /// Total time one read may take, retries included; then it fails.
    pub budget: Duration,
    /// First backoff (doubled per attempt, full jitter).
    pub base_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
    /// Most attempts per read.
    pub max_attempts: u32,
}

/// How often a source that has failed for a whole budget is probed (one 1-byte `GET`), and the longest a read
/// then waits for a probe to see it answer before it fails.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

impl Default for RetryPolicy {
    /// 10 s for headers or a stalled body, 30 s in all per read (a reader waits at most that long for EIO, also
    /// when the kernel asks again page by page), backoff from 100 ms to 5 s.
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(10),
            budget: Duration::from_secs(30),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_attempts: 12,
        }
    }
}

/// Errors of [`HttpSource`]. They never name the URL: the caller names it once, redacted (the [`BlobKey`]'s
/// `Display`), and transport errors are stripped of it (a SAS or a password never reaches a message or a log).
/// Messages do not repeat their source: print the chain (`{:#}` with anyhow) for the whole story.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpSourceError {
    /// The server answered with an unexpected status.
    #[error("HTTP {status}")]
    Status {
        /// The status code.
        status: u16,
    },
    /// Connecting, sending or receiving failed (the client's error, without its URL).
    #[error(transparent)]
    Transport {
        /// The client's error.
        source: reqwest::Error,
    },
    /// No response headers within the request timeout, or the body stalled.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// "response", "body" or "read budget".
        what: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// The body ended before the announced length.
    #[error("short body ({got} of {want} bytes)")]
    ShortBody {
        /// Bytes received.
        got: u64,
        /// Bytes expected.
        want: u64,
    },
    /// The response does not fit the request (no range support, wrong `Content-Range`, bad headers).
    #[error("{reason}")]
    BadResponse {
        /// What was wrong.
        reason: String,
    },
    /// Retries stopped: budget or attempts spent. `last` is the last attempt's error.
    #[error("gave up after {attempts} attempts in {elapsed:.1?}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last error.
        #[source]
        last: Box<Self>,
    },
    /// The source has not answered for longer than the retry budget: reads fail at once until a probe sees it
    /// answer again.
    #[error("the source has not answered for {since:.1?}, more than the retry budget: failing at once until it does")]
    Outage {
        /// How long it has been failing.
        since: Duration,
    },
    /// The URL or a header could not be used.
    #[error("{0}")]
    Config(String),
    /// Getting an Entra ID token (managed identity or Workload Identity) failed; the source names the credential
    /// and the endpoint.
    #[error("getting an Entra ID token for the blob")]
    Token(#[source] attest::credential::CredentialError),
}

impl HttpSourceError {
    /// A transport error, stripped of the URL the client puts in it.
    pub(crate) fn transport(e: reqwest::Error) -> Self {
        Self::Transport {
            source: e.without_url(),
        }
    }
}

type Result<T> = std::result::Result<T, BlobError<HttpSourceError>>;

/// Something that adds credentials to each request (an Azure managed-identity token, for example).
pub(crate) trait Authorizer: Send + Sync + std::fmt::Debug {
    /// Returns the `Authorization` header value to send, or `None` for none.
    fn authorization(
        &self,
    ) -> Pin<Box<dyn Future<Output = std::result::Result<Option<HeaderValue>, HttpSourceError>> + Send + '_>>;
}

/// Reads blobs over HTTP(S) with ranged `GET`s; the [`BlobKey`] is the URL. Cheap to clone (shares the client).
#[derive(Clone, Debug)]
pub struct HttpSource {
    client: reqwest::Client,
    policy: RetryPolicy,
    headers: HeaderMap,
    auth: Option<Arc<dyn Authorizer>>,
    metrics: Arc<Metrics>,
    /// Shared by the clones of this source.
    health: Arc<health::Health>,
}

/// A request that could not be sent: retried, unless no token can be had for it and asking again will not help
/// (the identity is refused, its token file is gone): that fails at once, naming why.
fn send_failed<T>(err: HttpSourceError) -> Attempt<T> {
    match &err {
        HttpSourceError::Token(c) if !c.is_transient() => Attempt::Fail(BlobError::Backend(err)),
        _ => Attempt::Retry { err, after: None },
    }
}

/// One attempt's outcome.
enum Attempt<T> {
    Done(T),
    /// Retry; `after` is the server's `Retry-After`, if any.
    Retry {
        err: HttpSourceError,
        after: Option<Duration>,
    },
    Fail(BlobError<HttpSourceError>),
}

impl HttpSource {
    /// A source with its own connection pool (rustls with the ring provider, system roots).
    pub fn new(policy: RetryPolicy, metrics: Arc<Metrics>) -> std::result::Result<Self, HttpSourceError> {
        // One process-wide rustls provider (ring); "already installed" is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| HttpSourceError::Config(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            client,
            policy,
            headers: HeaderMap::new(),
            auth: None,
            metrics,
            health: Arc::default(),
        })
    }

    /// Adds a header sent with every request (e.g. `x-ms-version`).
    pub(crate) fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Adds credentials to every request.
    pub(crate) fn with_authorizer(mut self, auth: Arc<dyn Authorizer>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The counters this source updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The retry policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    async fn send(
        &self,
        key: &BlobKey,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> std::result::Result<reqwest::Response, HttpSourceError> {
        let mut rb = self
            .client
            .get(key.as_str())
            .headers(self.headers.clone())
            .header(header::RANGE, format!("bytes={}-{}", range.start, range.end - 1));
        if let Some(tag) = if_match {
            rb = rb.header(header::IF_MATCH, tag.as_str());
        }
        if let Some(auth) = &self.auth
            && let Some(v) = auth.authorization().await?
        {
            rb = rb.header(header::AUTHORIZATION, v);
        }
        Metrics::add(&self.metrics.requests, 1);
        match tokio::time::timeout(self.policy.request_timeout, rb.send()).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(HttpSourceError::transport(e)),
            Err(_) => Err(HttpSourceError::Timeout {
                what: "response",
                after: self.policy.request_timeout,
            }),
        }
    }

    /// Classifies a non-success status.
    fn status_outcome<T>(&self, resp: &reqwest::Response, range: &Range<u64>) -> Attempt<T> {
        let status = resp.status();
        let err = HttpSourceError::Status {
            status: status.as_u16(),
        };
        match status {
            StatusCode::PRECONDITION_FAILED => Attempt::Fail(BlobError::PreconditionFailed),
            StatusCode::NOT_FOUND => Attempt::Fail(BlobError::NotFound),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let len = total_len(resp.headers()).unwrap_or(0);
                Attempt::Fail(BlobError::OutOfRange {
                    start: range.start,
                    end: range.end,
                    len,
                })
            }
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => Attempt::Retry {
                err,
                after: retry_after(resp.headers()),
            },
            s if s.is_server_error() => Attempt::Retry {
                err,
                after: retry_after(resp.headers()),
            },
            _ => Attempt::Fail(BlobError::Backend(err)),
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the policy's budget is spent. `state` (a body
    /// buffer) is handed to each attempt and back; it is lost (reset to default) only if an attempt is cut off
    /// by the budget.
    async fn with_retries<S: Default, T, F, Fut>(&self, key: &BlobKey, state: &mut S, mut attempt: F) -> Result<T>
    where
        F: FnMut(S) -> Fut,
        Fut: Future<Output = (S, Attempt<T>)>,
    {
        let start = Instant::now();
        let mut deadline = response::deadline(start, self.policy.budget);
        if let Some(since) = self.health.failing_since() {
            // An outage: this read gives up when the outage is a budget old, not a budget after it started.
            let outage_end = response::deadline(since, self.policy.budget);
            if outage_end <= start {
                // Spent: no read spends a budget (nor an attempt) on it any more. This one waits at most
                // PROBE_INTERVAL for the probe to see the source answer (the first probe request goes out now),
                // then reads normally, or fails.
                let recovered = self.health.recovered();
                tokio::pin!(recovered);
                recovered.as_mut().enable();
                self.probe(key);
                if self.health.failing_since().is_some() {
                    let _ = tokio::time::timeout(PROBE_INTERVAL, recovered).await;
                }
                if let Some(since) = self.health.failing_since() {
                    Metrics::add(&self.metrics.failures, 1);
                    return Err(BlobError::Backend(HttpSourceError::Outage {
                        since: Instant::now().saturating_duration_since(since),
                    }));
                }
            } else {
                deadline = deadline.min(outage_end);
            }
        }
        let mut n = 0u32;
        loop {
            n += 1;
            let attempt_start = Instant::now();
            let remaining = deadline.saturating_duration_since(attempt_start);
            let outcome = match tokio::time::timeout(remaining, attempt(std::mem::take(state))).await {
                Ok((st, o)) => {
                    *state = st;
                    o
                }
                Err(_) => Attempt::Retry {
                    err: HttpSourceError::Timeout {
                        what: "read budget",
                        after: self.policy.budget,
                    },
                    after: None,
                },
            };
            let (err, after) = match outcome {
                Attempt::Done(v) => {
                    self.health.answered();
                    return Ok(v);
                }
                Attempt::Fail(e) => {
                    // A final answer (404, 412, a response that does not fit): the source is up.
                    self.health.answered();
                    if matches!(e, BlobError::PreconditionFailed) {
                        Metrics::add(&self.metrics.precondition_failures, 1);
                    }
                    Metrics::add(&self.metrics.failures, 1);
                    return Err(e);
                }
                Attempt::Retry { err, after } => {
                    self.health.failed(attempt_start);
                    (err, after)
                }
            };
            let backoff = self.backoff(n, after);
            if n >= self.policy.max_attempts || response::passes(Instant::now(), backoff, deadline) {
                Metrics::add(&self.metrics.failures, 1);
                warn!(url = %key, attempts = n, elapsed = ?start.elapsed(), "giving up on a read: {}", ErrorChain(&err));
                return Err(BlobError::Backend(HttpSourceError::GaveUp {
                    attempts: n,
                    elapsed: start.elapsed(),
                    last: Box::new(err),
                }));
            }
            Metrics::add(&self.metrics.retries, 1);
            debug!(url = %key, attempt = n, ?backoff, "retrying: {}", ErrorChain(&err));
            tokio::time::sleep(backoff).await;
        }
    }

    /// Probes the source during a spent outage: a 1-byte `GET` of `key` now (unless one went out in the last
    /// 50 ms), and, unless one runs, a task that sends one every [`PROBE_INTERVAL`] until the source answers, which
    /// ends the outage. Each request has its own timeout and none waits for the last, so one stuck on a stalled
    /// connection does not delay noticing the source answer on a new one. Needs a Tokio runtime (without one the
    /// outage is forgotten, and the next read tries normally).
    fn probe(&self, key: &BlobKey) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.health.answered();
            return;
        };
        let attempt = |src: Self, key: BlobKey| async move {
            if !matches!(src.stat_attempt(&key).await, Attempt::Retry { .. }) {
                src.health.answered();
            }
        };
        if self.health.probe_due(Duration::from_millis(50)) {
            rt.spawn(attempt(self.clone(), key.clone()));
        }
        if !self.health.start_probe() {
            return;
        }
        let (src, key) = (self.clone(), key.clone());
        rt.spawn(async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                if src.health.failing_since().is_none() {
                    break;
                }
                if src.health.probe_due(PROBE_INTERVAL / 2) {
                    tokio::spawn(attempt(src.clone(), key.clone()));
                }
            }
            src.health.probe_done();
            debug!(url = %key, "the source answers again");
        });
    }

    /// Backoff before attempt `n + 1`: full jitter over `base * 2^(n-1)` capped, at least `Retry-After`.
    fn backoff(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        let p = &self.policy;
        response::backoff(
            p.base_backoff,
            p.max_backoff,
            n,
            retry_after,
            rand::rng().random_range(0.0..=1.0),
        )
    }

    async fn stat_once(&self, key: &BlobKey) -> ((), Attempt<BlobMeta>) {
        ((), self.stat_attempt(key).await)
    }

    async fn stat_attempt(&self, key: &BlobKey) -> Attempt<BlobMeta> {
        let resp = match self.send(key, 0..1, None).await {
            Ok(r) => r,
            Err(err) => return send_failed(err),
        };
        let bad = |reason: String| Attempt::Fail(BlobError::Backend(HttpSourceError::BadResponse { reason }));
        let etag = etag_of(resp.headers());
        match response::stat_len(resp.status(), resp.headers()) {
            Some(Ok(len)) => {
                // Read the (one-byte) body, so the connection goes back to the pool for the reads that follow.
                self.drain(resp).await;
                Attempt::Done(BlobMeta { len, etag })
            }
            Some(Err(reason)) => bad(reason),
            None => self.status_outcome(&resp, &(0..1)),
        }
    }

    /// Reads and discards a small response body (up to [`DRAIN_MAX`] bytes; a larger one is dropped, which
    /// closes its connection), so the connection can be reused. Errors are ignored.
    async fn drain(&self, mut resp: reqwest::Response) {
        if resp.content_length().is_none_or(|n| n > DRAIN_MAX) {
            return;
        }
        while let Ok(Ok(Some(_))) = tokio::time::timeout(self.policy.stall_timeout, resp.chunk()).await {}
    }

    async fn read_once(
        &self,
        key: &BlobKey,
        range: Range<u64>,
        if_match: Option<&ETag>,
        mut buf: Vec<u8>,
    ) -> (Vec<u8>, Attempt<()>) {
        buf.clear();
        let outcome = self.read_attempt(key, range, if_match, &mut buf).await;
        (buf, outcome)
    }

    /// One ranged `GET`, its body appended to `buf` (which the caller cleared).
    async fn read_attempt(
        &self,
        key: &BlobKey,
        range: Range<u64>,
        if_match: Option<&ETag>,
        buf: &mut Vec<u8>,
    ) -> Attempt<()> {
        let want = range.end - range.start;
        let t0 = Instant::now();
        let mut resp = match self.send(key, range.clone(), if_match).await {
            Ok(r) => r,
            Err(err) => return send_failed(err),
        };
        let headers_at = t0.elapsed();
        let bad = |reason: String| Attempt::Fail(BlobError::Backend(HttpSourceError::BadResponse { reason }));
        if let (Some(pinned), Some(got)) = (if_match, etag_of(resp.headers()))
            && resp.status().is_success()
            && got != *pinned
        {
            warn!(url = %key, pinned = pinned.as_str(), now = got.as_str(), "the blob changed since mount");
            Metrics::add(&self.metrics.precondition_failures, 1);
            return Attempt::Fail(BlobError::PreconditionFailed);
        }
        match response::check_range(resp.status(), resp.headers(), &range) {
            Verdict::Body { .. } => {}
            Verdict::Bad(reason) => return bad(reason),
            Verdict::Status(StatusCode::PRECONDITION_FAILED) => {
                warn!(url = %key, "the blob changed since mount (412 Precondition Failed)");
                return self.status_outcome(&resp, &range);
            }
            Verdict::Status(_) => return self.status_outcome(&resp, &range),
        }
        // INVARIANT: ranges are of one read, far below usize::MAX.
        buf.reserve_exact((want as usize).saturating_sub(buf.capacity()));
        loop {
            match tokio::time::timeout(self.policy.stall_timeout, resp.chunk()).await {
                Ok(Ok(Some(piece))) => {
                    Metrics::add(&self.metrics.bytes_fetched, piece.len() as u64);
                    if (buf.len() + piece.len()) as u64 > want {
                        return bad(format!("body longer than the {want} bytes asked for"));
                    }
                    buf.extend_from_slice(&piece);
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    return Attempt::Retry {
                        err: HttpSourceError::transport(e),
                        after: None,
                    };
                }
                Err(_) => {
                    return Attempt::Retry {
                        err: HttpSourceError::Timeout {
                            what: "body",
                            after: self.policy.stall_timeout,
                        },
                        after: None,
                    };
                }
            }
        }
        debug!(
            start = range.start,
            len = want,
            headers_ms = headers_at.as_secs_f64() * 1e3,
            body_ms = t0.elapsed().as_secs_f64() * 1e3,
            "ranged GET"
        );
        if buf.len() as u64 != want {
            return Attempt::Retry {
                err: HttpSourceError::ShortBody {
                    got: buf.len() as u64,
                    want,
                },
                after: None,
            };
        }
        Attempt::Done(())
    }
}

/// Largest response body [`HttpSource::drain`] reads to keep a connection.
const DRAIN_MAX: u64 = 64 << 10;

impl BlobSource for HttpSource {
    type Error = HttpSourceError;

    async fn stat(&self, key: &BlobKey) -> Result<BlobMeta> {
        self.with_retries(key, &mut (), |()| self.stat_once(key)).await
    }

    async fn read_range(&self, key: &BlobKey, range: Range<u64>, if_match: Option<&ETag>) -> Result<Bytes> {
        let mut buf = Vec::new();
        self.read_range_into(key, range, if_match, &mut buf).await?;
        Ok(Bytes::from(buf))
    }

    async fn read_range_into(
        &self,
        key: &BlobKey,
        range: Range<u64>,
        if_match: Option<&ETag>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        buf.clear();
        if range.start > range.end {
            return Err(BlobError::OutOfRange {
                start: range.start,
                end: range.end,
                len: 0,
            });
        }
        if range.start == range.end {
            return Ok(());
        }
        let r = self
            .with_retries(key, buf, |b| self.read_once(key, range.clone(), if_match, b))
            .await;
        if r.is_err() {
            buf.clear();
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let src = HttpSource::new(
            RetryPolicy {
                base_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(400),
                ..RetryPolicy::default()
            },
            Arc::default(),
        )
        .unwrap();
        for n in 1..10 {
            assert!(src.backoff(n, None) <= Duration::from_millis(400));
        }
        assert!(src.backoff(1, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
    }
}
