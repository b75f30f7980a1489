//! Cold reads split over several connections, so the first read after mount takes one round trip.
//!
//! A TCP connection that is new or has been idle (the kernel restarts slow start after an idle spell) delivers
//! only about one initial window per round trip at first: the receiver offers 64 KiB (Linux's default
//! `tcp_rmem`, less on 1500-byte links) and the sender starts from ten segments. A cold read of 128 KiB of
//! sealed chunks (the kernel's first READ of a file) on one such connection therefore takes three round trips,
//! most of it waiting for windows to open. Cut into [`pieces`] that each fit in an initial window and sent at
//! once, on connections opened at mount ([`warm_up`]), the same bytes arrive in one round trip. The pieces
//! cover the range exactly, so nothing more is fetched; each is an ordinary ranged read of the wrapped source,
//! with its retries and `If-Match` pin.

use std::ops::Range;

use bytes::Bytes;
use futures_util::future::try_join_all;
use tracing::debug;

use crate::source::{BlobError, BlobKey, BlobSource, ETag};

/// How a cold read is cut: at most `max` pieces of at least `min` bytes each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// Most pieces (and connections) per read; 1 turns splitting off.
    pub max: usize,
    /// Fewest bytes per piece.
    pub min: u64,
}

/// Cuts `range` into consecutive pieces of nearly equal size: as many as fit `split.min` bytes each, at most
/// `split.max`, at least one.
pub(crate) fn pieces(range: Range<u64>, split: Split) -> Vec<Range<u64>> {
    let len = range.end.saturating_sub(range.start);
    let by_size = len / split.min.max(1);
    let n = by_size.clamp(1, split.max.max(1) as u64);
    let (base, extra) = (len / n, len % n);
    let mut at = range.start;
    (0..n)
        .map(|i| {
            let end = at + base + u64::from(i < extra);
            let piece = at..end;
            at = end;
            piece
        })
        .collect()
}

/// Reads `range` of `key` from `source` as [`pieces`] requested concurrently, and returns their bytes in order
/// (the caller joins them). The pieces run on the calling task (no hand-off to other threads before the requests
/// go out); the first error ends the read and drops the pieces still in flight.
pub(crate) async fn read<B: BlobSource>(
    source: &B,
    key: &BlobKey,
    range: Range<u64>,
    if_match: Option<&ETag>,
    split: Split,
) -> Result<Vec<Bytes>, BlobError<B::Error>> {
    let pieces = pieces(range, split);
    // A source returns exactly its range; a short piece makes the joined read short, and the filesystem fails it.
    try_join_all(pieces.into_iter().map(|p| source.read_range(key, p, if_match))).await
}

/// Reads the first `n` bytes of `key` as a split read of `n` one-byte pieces, and forgets them. Run at mount,
/// alongside the first `stat`: it opens `n` connections that then wait in the source's pool (so the first real
/// read pays no TCP or TLS handshake) and runs this module's code once (so the first read does not wait for it
/// to be paged in either). Best effort: a failure is only logged, the reads that follow report their own.
pub(crate) async fn warm_up<B: BlobSource>(source: &B, key: &BlobKey, n: usize) {
    let split = Split { max: n, min: 1 };
    if let Err(e) = read(source, key, 0..n as u64, None, split).await {
        debug!("warming up connections: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Split = Split { max: 4, min: 32 << 10 };

    #[test]
    fn pieces_cover_the_range_exactly_within_the_bounds() {
        for (range, n) in [
            (0..1, 1),
            (5..(32 << 10) + 5, 1),
            (4096..4096 + 131_104, 4),
            (7..(64 << 10) + 7, 2),
            (0..(1 << 20), 4),
            (100..100 + 3 * (32 << 10) + 1, 3),
        ] {
            let p = pieces(range.clone(), S);
            assert_eq!(p.len(), n, "{range:?}: {p:?}");
            assert_eq!(p[0].start, range.start);
            assert_eq!(p[p.len() - 1].end, range.end);
            assert!(p.windows(2).all(|w| w[0].end == w[1].start), "{p:?}");
            let (lo, hi) = (
                p.iter().map(|r| r.end - r.start).min().unwrap(),
                p.iter().map(|r| r.end - r.start).max().unwrap(),
            );
            assert!(hi - lo <= 1, "uneven {p:?}");
            assert!(n == 1 || lo >= S.min, "piece below the minimum: {p:?}");
        }
        assert_eq!(pieces(0..(1 << 20), Split { max: 1, min: 1 }), vec![0..1 << 20]);
        assert_eq!(pieces(9..9, S), vec![9..9]);
    }
}
