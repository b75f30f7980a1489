//! Reusable byte buffers behind [`Bytes`]: a part's memory goes back to its pool when the last reader drops
//! its slice, so a streaming read reuses the same few hundred MiB instead of asking the allocator for fresh
//! pages every 2 MiB (which costs page faults and, with glibc, leaves fragmented arenas above the budget).
//!
//! Below both of its users, the sources (a local file's read buffers) and the cache (its parts), and imports
//! nothing of the crate.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

/// Free buffers, at most `max_free` of them kept.
#[derive(Debug)]
pub(crate) struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
    max_free: usize,
}

impl BufPool {
    /// A pool that keeps up to `max_free` free buffers.
    pub(crate) fn new(max_free: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Vec::new()),
            max_free,
        })
    }

    /// An empty buffer with room for at least `len` bytes: a free one if there is one, else a new one.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let got = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut buf = got.unwrap_or_default();
        buf.clear();
        buf.reserve_exact(len);
        buf
    }

    /// A buffer of exactly `len` bytes to be overwritten (by a read): a free one if there is one. Only the part
    /// beyond what the buffer held before is zero-filled, so a stream of same-size reads zero-fills nothing.
    /// The old bytes it may hold are whatever the pool's users put there (ciphertext, for this crate's sources).
    pub(crate) fn take_len(&self, len: usize) -> Vec<u8> {
        let got = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut buf = got.unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    /// Returns `buf` to the pool (or frees it when the pool is full).
    pub(crate) fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.max_free {
            free.push(buf);
        }
    }

    /// Freezes `buf` into [`Bytes`] that hand the buffer back to `pool` when the last clone is dropped.
    pub(crate) fn freeze(pool: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: Arc::downgrade(pool),
        })
    }
}

/// A buffer on loan from a [`BufPool`]; returned on drop.
struct Pooled {
    buf: Vec<u8>,
    pool: Weak<BufPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_last_slice_is_dropped() {
        let pool = BufPool::new(2);
        let mut b = pool.take(1000);
        b.extend_from_slice(&[7u8; 1000]);
        let ptr = b.as_ptr();
        let bytes = BufPool::freeze(&pool, b);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(&slice[..], &[7u8; 10]);
        assert!(pool.free.lock().unwrap().is_empty(), "returned while a slice lives");
        drop(slice);
        let again = pool.take(1000);
        assert_eq!(again.as_ptr(), ptr, "the same allocation is reused");
        assert!(again.is_empty() && again.capacity() >= 1000);
    }
}
