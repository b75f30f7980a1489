//! HTTP response handling (`encfs::source::http::response`): whatever status, `Content-Range`, `Content-Length` and
//! `Retry-After` a storage provider sends, nothing panics (no overflow turning a header into a duration, an
//! instant or a length), a body is accepted only for exactly the range asked for, and every wait stays bounded.
//!
//! Input: 2 bytes status, 8 bytes range start, 4 bytes range length, 8 bytes budget (ms), 8 bytes max backoff
//! (ms), 4 bytes attempt, 1 byte jitter, then `name: value` header lines.
#![no_main]

use std::time::{Duration, Instant};

use encfs::source::http::response::{
    MAX_RETRY_AFTER, Verdict, backoff, check_range, content_length, content_range, deadline, passes, retry_after,
    stat_len, total_len,
};
use libfuzzer_sys::fuzz_target;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

fn take<const N: usize>(d: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = d.len().min(N);
    out[..n].copy_from_slice(&d[..n]);
    *d = &d[n..];
    out
}

fuzz_target!(|data: &[u8]| {
    let mut d = data;
    let status = StatusCode::from_u16(100 + u16::from_le_bytes(take(&mut d)) % 500).unwrap_or(StatusCode::OK);
    let start = u64::from_le_bytes(take(&mut d));
    let len = u64::from(u32::from_le_bytes(take(&mut d))) + 1;
    let budget = Duration::from_millis(u64::from_le_bytes(take(&mut d)));
    let max_backoff = Duration::from_millis(u64::from_le_bytes(take(&mut d)));
    let attempt = u32::from_le_bytes(take(&mut d));
    let jitter = f64::from(take::<1>(&mut d)[0]) / 255.0;
    let mut headers = HeaderMap::new();
    for line in d.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            headers.append(name, value);
        }
    }
    let Some(end) = start.checked_add(len) else {
        return;
    };
    let range = start..end;

    match check_range(status, &headers, &range) {
        Verdict::Body { len: got } => {
            assert_eq!(got, len, "a body of another length than asked for");
            match status {
                StatusCode::PARTIAL_CONTENT => {
                    let (s, e, _) = content_range(&headers).expect("206 accepted without a Content-Range");
                    assert!(s == range.start && e == range.end, "206 for another range accepted");
                }
                StatusCode::OK => assert!(range.start == 0 && content_length(&headers) == Some(range.end)),
                other => panic!("a body accepted with status {other}"),
            }
        }
        Verdict::Bad(_) | Verdict::Status(_) => {}
    }
    if let Some((s, e, t)) = content_range(&headers) {
        assert!(s < e, "empty or reversed Content-Range accepted");
        assert!(t.is_none_or(|t| e <= t), "Content-Range past its total accepted");
    }
    let _ = (stat_len(status, &headers), total_len(&headers));

    let ra = retry_after(&headers);
    assert!(ra.is_none_or(|ra| ra <= MAX_RETRY_AFTER));
    let base = Duration::from_millis(u64::from(attempt));
    let wait = backoff(base, max_backoff, attempt, ra, jitter);
    assert!(wait <= max_backoff.max(ra.unwrap_or_default()), "backoff past its cap");
    let now = Instant::now();
    let until = deadline(now, budget);
    let _ = passes(now, wait, until);
    let _ = passes(now, Duration::MAX, until);
});
