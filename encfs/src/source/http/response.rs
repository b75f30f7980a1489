//! What a ranged `GET` answer may be trusted for, as pure functions over its status and headers (no I/O), so a
//! fuzz target can reach every one of them (`encfs/fuzz`, target `http_response`).
//!
//! The storage provider is trusted for availability only: every number taken from a response (`Retry-After`,
//! `Content-Range`, `Content-Length`) is checked or saturated here before it sizes a buffer or a wait, so no answer
//! can make the daemon panic, wait past its retry budget or allocate more than it asked for.

use std::ops::Range;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};

use crate::source::ETag;

/// The longest wait a `Retry-After` may ask for. Larger values (up to `u64::MAX` seconds) are cut to this; the
/// retry loop then gives up at once if it falls past the read's budget.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// What a ranged `GET` answer allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The body is the requested range, exactly `len` bytes long.
    Body {
        /// Bytes to expect.
        len: u64,
    },
    /// The answer does not fit the request: never passed on.
    Bad(String),
    /// Any other status, classified by the caller.
    Status(StatusCode),
}

/// Checks the head of the answer to `GET` with `Range: bytes=range` (a non-empty range): a `206` whose
/// `Content-Range` is exactly the range, or a `200` that is the whole blob and exactly the range.
pub fn check_range(status: StatusCode, headers: &HeaderMap, range: &Range<u64>) -> Verdict {
    let len = range.end.saturating_sub(range.start);
    match status {
        StatusCode::PARTIAL_CONTENT => match content_range(headers) {
            Some((s, e, _)) if s == range.start && e == range.end => Verdict::Body { len },
            other => Verdict::Bad(format!(
                "Content-Range {other:?} does not match {}..{}",
                range.start, range.end
            )),
        },
        StatusCode::OK => match content_length(headers) {
            Some(n) if range.start == 0 && n == range.end => Verdict::Body { len },
            _ => Verdict::Bad("the server ignores Range requests (answered 200 to a range)".into()),
        },
        other => Verdict::Status(other),
    }
}

/// The answer to the one-byte probe `GET` with `Range: bytes=0-0` that stats a blob: its length, or why not.
pub fn stat_len(status: StatusCode, headers: &HeaderMap) -> Option<Result<u64, String>> {
    match status {
        StatusCode::PARTIAL_CONTENT => {
            Some(total_len(headers).ok_or_else(|| "206 without a Content-Range total length".to_string()))
        }
        // An empty blob cannot satisfy bytes=0-0.
        StatusCode::RANGE_NOT_SATISFIABLE => Some(Ok(total_len(headers).unwrap_or(0))),
        StatusCode::OK => Some(Err("the server ignores Range requests (answered 200 to a range)".into())),
        _ => None,
    }
}

/// The `ETag` header, if any.
pub fn etag(h: &HeaderMap) -> Option<ETag> {
    h.get(header::ETAG).and_then(|v| v.to_str().ok()).map(ETag::new)
}

/// Parses `Content-Range: bytes START-LAST/TOTAL` into `(start, end_exclusive, total)`; `None` unless well
/// formed with `START <= LAST` (and `LAST < TOTAL` when the total is given).
pub fn content_range(h: &HeaderMap) -> Option<(u64, u64, Option<u64>)> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok()?),
    };
    let (s, l) = span.split_once('-')?;
    let s: u64 = s.trim().parse().ok()?;
    let l: u64 = l.trim().parse().ok()?;
    if s > l || total.is_some_and(|t| l >= t) {
        return None;
    }
    Some((s, l.checked_add(1)?, total))
}

/// The total length from `Content-Range` (`bytes a-b/TOTAL` or `bytes */TOTAL`).
pub fn total_len(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    v.rsplit_once('/')?.1.trim().parse().ok()
}

/// `Content-Length`, if present and a number.
pub fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// `Retry-After` in seconds, at most [`MAX_RETRY_AFTER`] (HTTP dates are ignored: the backoff applies instead).
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?;
    v.trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

/// Backoff before attempt `n + 1` (`n >= 1`): `jitter` (in `0..=1`) of `base * 2^(n-1)`, capped at `max`, and at
/// least `retry_after`. Saturates instead of overflowing for any inputs.
pub fn backoff(base: Duration, max: Duration, n: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << n.saturating_sub(1).min(20)).min(max);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let jittered = Duration::try_from_secs_f64(exp.as_secs_f64() * jitter)
        .unwrap_or(exp)
        .min(exp);
    match retry_after {
        Some(ra) => jittered.max(ra),
        None => jittered,
    }
}

/// `from + d`, or a time so far ahead that nothing reaches it when that overflows (an `Instant` panics on
/// overflow, and a budget or a wait may come from the command line or a response).
pub fn deadline(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .or_else(|| from.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(from)
}

/// True if waiting `wait` from `now` ends at or past `deadline` (overflow counts as past).
pub fn passes(now: Instant, wait: Duration, deadline: Instant) -> bool {
    now.checked_add(wait).is_none_or(|t| t >= deadline)
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn content_range_is_parsed_strictly() {
        let h = headers(&[(header::CONTENT_RANGE, "bytes 10-19/100")]);
        assert_eq!(content_range(&h), Some((10, 20, Some(100))));
        assert_eq!(total_len(&h), Some(100));
        let h = headers(&[(header::CONTENT_RANGE, "bytes */7")]);
        assert_eq!(content_range(&h), None);
        assert_eq!(total_len(&h), Some(7));
        for bad in [
            "bytes 19-10/100",
            "bytes 0-18446744073709551615/5",
            "bytes 0-18446744073709551615/*",
            "bytes 5-9/9",
            "bytes -1-3/4",
            "items 0-1/2",
        ] {
            assert_eq!(content_range(&headers(&[(header::CONTENT_RANGE, bad)])), None, "{bad}");
        }
        assert_eq!(
            content_range(&headers(&[(header::CONTENT_RANGE, "bytes 0-4/*")])),
            Some((0, 5, None))
        );
    }

    #[test]
    fn huge_retry_after_and_budgets_saturate() {
        let h = headers(&[(header::RETRY_AFTER, "18446744073709551615")]);
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        let now = Instant::now();
        assert!(passes(now, Duration::MAX, deadline(now, Duration::from_secs(5))));
        assert!(deadline(now, Duration::MAX) > now + Duration::from_secs(1 << 30));
        let b = backoff(Duration::MAX, Duration::MAX, u32::MAX, Some(Duration::MAX), f64::NAN);
        assert_eq!(b, Duration::MAX);
        for n in 1..40 {
            let b = backoff(Duration::from_millis(100), Duration::from_millis(400), n, None, 1.0);
            assert!(b <= Duration::from_millis(400));
        }
        let b = backoff(
            Duration::from_millis(100),
            Duration::from_millis(400),
            1,
            Some(Duration::from_secs(2)),
            0.5,
        );
        assert!(b >= Duration::from_secs(2));
    }

    #[test]
    fn range_answers_must_match_the_request() {
        let ok = headers(&[(header::CONTENT_RANGE, "bytes 100-199/1000")]);
        assert_eq!(
            check_range(StatusCode::PARTIAL_CONTENT, &ok, &(100..200)),
            Verdict::Body { len: 100 }
        );
        assert!(matches!(
            check_range(StatusCode::PARTIAL_CONTENT, &ok, &(100..201)),
            Verdict::Bad(_)
        ));
        let whole = headers(&[(header::CONTENT_LENGTH, "200")]);
        assert_eq!(
            check_range(StatusCode::OK, &whole, &(0..200)),
            Verdict::Body { len: 200 }
        );
        assert!(matches!(
            check_range(StatusCode::OK, &whole, &(0..100)),
            Verdict::Bad(_)
        ));
        assert_eq!(
            check_range(StatusCode::SERVICE_UNAVAILABLE, &whole, &(0..100)),
            Verdict::Status(StatusCode::SERVICE_UNAVAILABLE)
        );
    }
}
