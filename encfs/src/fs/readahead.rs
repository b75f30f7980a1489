//! Decrypt-ahead for sequential readers: while the kernel waits for one READ, the next one is already being
//! fetched and opened.
//!
//! The kernel's own readahead keeps only one or two READs in flight at the default 1 MiB window, and each READ is
//! a serial chain: fetch the sealed chunks, open them, reply, then the kernel copies the data to the reader before
//! it asks for more. So a single sequential reader leaves a core idle much of the time. When a handle reads
//! sequentially, [`ReadAhead`] starts the next read of the same size on the async runtime as soon as the current
//! one arrives; the next READ then finds its plaintext ready (or nearly so) and is answered from that buffer
//! without a copy. Raising the kernel readahead would do the same, but would also make every random `mmap` fault
//! read (and decrypt) that much more; this only acts on reads that are already sequential.
//!
//! Plaintext in a prefetched buffer comes from [`EncFs::read_into`] like any other read: every byte passed
//! authentication, and a prefetch that fails is dropped without a trace, so the READ that wanted it runs (and
//! fails, logs and returns `EIO`) on its own. At most one prefetch is pending per handle, and at most
//! [`ReadAheadConfig::max_streams`] handles keep state, so memory stays bounded (two buffers of one READ each per
//! stream).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{EncFs, FsError, MAX_READ};
use crate::source::BlobSource;

/// How far behind the expected offset a READ may arrive and still count as part of the same sequential run
/// (two READs of the largest size, which is what the kernel keeps in flight).
const OUT_OF_ORDER: u64 = 2 * MAX_READ as u64;

/// How [`ReadAhead::read_direct`] served a read.
pub(crate) enum Direct {
    /// This many bytes were written into the reply buffer.
    Filled(usize),
    /// A buffer prefetched for this read holds its bytes.
    Prefetched(Vec<u8>),
}

/// Read-ahead settings; plain data. [`Default`] is [`Self::OFF`]; the daemon uses [`Self::LOCAL`] for local
/// image files.
#[derive(Clone, Copy, Debug)]
pub struct ReadAheadConfig {
    /// Handles that keep read-ahead state (each may hold two buffers of one READ). 0 turns read-ahead off.
    pub max_streams: usize,
    /// Smallest READ, in bytes, that triggers a prefetch (smaller sequential reads are not worth a hand-off).
    pub min_read: u32,
}

impl ReadAheadConfig {
    /// No read-ahead (the default: a remote image's part cache already fetches ahead, and its accounting
    /// expects only the kernel's reads).
    pub const OFF: Self = Self {
        max_streams: 0,
        min_read: 128 << 10,
    };

    /// The tuned settings for a local image: 16 handles.
    pub(crate) const LOCAL: Self = Self {
        max_streams: 16,
        min_read: 128 << 10,
    };
}

impl Default for ReadAheadConfig {
    fn default() -> Self {
        Self::OFF
    }
}

/// A read that was started ahead of its READ.
struct Pending {
    ino: u64,
    offset: u64,
    size: u32,
    rx: oneshot::Receiver<Result<Vec<u8>, FsError>>,
}

/// What one file handle did last.
#[derive(Default)]
struct Stream {
    /// Where a sequential reader reads next.
    next: u64,
    /// Last use, for eviction.
    tick: u64,
    pending: Option<Pending>,
    /// A buffer for the next prefetch (the last one served, recycled).
    spare: Vec<u8>,
}

#[derive(Default)]
struct Streams {
    by_fh: HashMap<u64, Stream>,
    tick: u64,
}

/// Per-handle sequential detection and decrypt-ahead over an [`EncFs`].
pub(crate) struct ReadAhead<B: BlobSource> {
    fs: Arc<EncFs<B>>,
    rt: tokio::runtime::Handle,
    config: ReadAheadConfig,
    streams: Mutex<Streams>,
}

impl<B: BlobSource> std::fmt::Debug for ReadAhead<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAhead")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<B: BlobSource> ReadAhead<B> {
    /// Read-ahead over `fs`; prefetches run on `rt`.
    pub(crate) fn new(fs: Arc<EncFs<B>>, rt: tokio::runtime::Handle, config: ReadAheadConfig) -> Self {
        Self {
            fs,
            rt,
            config,
            streams: Mutex::new(Streams::default()),
        }
    }

    /// Reads `size` bytes of `ino` at `offset` for handle `fh` (as [`EncFs::read_into`]) and passes the result to
    /// `reply`: from a buffer prefetched for exactly this read if there is one, else read now into `scratch`.
    /// Blocks the calling thread (a FUSE request thread) until the data is there.
    pub(crate) fn read<R>(
        &self,
        fh: u64,
        ino: u64,
        offset: u64,
        size: u32,
        scratch: &mut Vec<u8>,
        reply: impl FnOnce(Result<&[u8], FsError>) -> R,
    ) -> R {
        let ready = self.plan(fh, ino, offset, size);
        if let Some(rx) = ready
            && let Ok(Ok(buf)) = self.rt.block_on(rx)
        {
            // The buffer holds the file from `offset` on (shorter at the end of the file).
            let r = reply(Ok(&buf[..buf.len().min(size as usize)]));
            self.recycle(fh, buf);
            return r;
        }
        // No prefetch, or it failed: read now. A failure here is the one that gets reported.
        match self.rt.block_on(self.fs.read_into(ino, offset, size, scratch)) {
            Ok(()) => reply(Ok(scratch)),
            Err(e) => reply(Err(e)),
        }
    }

    /// As [`Self::read`], into the transport's reply buffer `dst`: a buffer prefetched for exactly this read is
    /// handed back instead ([`Direct::Prefetched`]: reply with it, then give it back with [`Self::recycle`]).
    /// Blocks the calling thread until the data is there.
    pub(crate) fn read_direct(
        &self,
        fh: u64,
        ino: u64,
        offset: u64,
        size: u32,
        dst: &mut [u8],
    ) -> Result<Direct, FsError> {
        if let Some(rx) = self.plan(fh, ino, offset, size)
            && let Ok(Ok(mut buf)) = self.rt.block_on(rx)
        {
            buf.truncate(size as usize);
            return Ok(Direct::Prefetched(buf));
        }
        self.rt
            .block_on(self.fs.read_into_slice(ino, offset, size, dst))
            .map(Direct::Filled)
    }

    /// Forgets handle `fh` (on release); a prefetch still running finishes and is dropped.
    pub(crate) fn release(&self, fh: u64) {
        self.lock().by_fh.remove(&fh);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Updates `fh`'s stream for a read of `size` bytes at `offset`: takes the prefetch made for exactly this read
    /// (if any), and starts one for the read after it when the handle reads sequentially.
    fn plan(&self, fh: u64, ino: u64, offset: u64, size: u32) -> Option<oneshot::Receiver<Result<Vec<u8>, FsError>>> {
        if self.config.max_streams == 0 {
            return None;
        }
        let mut streams = self.lock();
        streams.tick += 1;
        let tick = streams.tick;
        if !streams.by_fh.contains_key(&fh) && streams.by_fh.len() >= self.config.max_streams {
            // Evict the stream used least recently (a linear scan over a small map, once per new handle).
            if let Some(old) = streams.by_fh.iter().min_by_key(|(_, s)| s.tick).map(|(&k, _)| k) {
                streams.by_fh.remove(&old);
            }
        }
        let s = streams.by_fh.entry(fh).or_default();
        s.tick = tick;
        let sequential = s.next == offset;
        let end = offset.saturating_add(u64::from(size));
        // The kernel's READs can arrive slightly out of order (two in flight on two threads): a read just behind
        // the expected offset leaves it alone; anything else moves it.
        if !(offset < s.next && s.next - offset <= OUT_OF_ORDER) {
            s.next = end;
        }
        let ready = match s.pending.take() {
            // A prefetch at the same offset covers any READ no larger than it (the kernel's READ sizes vary).
            Some(p) if p.ino == ino && p.offset == offset && p.size >= size => Some(p.rx),
            _ => None,
        };
        if sequential && size >= self.config.min_read && end < self.fs.file_size(ino).unwrap_or(0) {
            let (tx, rx) = oneshot::channel();
            let mut buf = std::mem::take(&mut s.spare);
            let next = end;
            s.pending = Some(Pending {
                ino,
                offset: next,
                size,
                rx,
            });
            let fs = Arc::clone(&self.fs);
            self.rt.spawn(async move {
                let r = fs.read_ahead_into(ino, next, size, &mut buf).await.map(|()| buf);
                // The READ may have gone elsewhere (or the handle was released): then nobody listens.
                let _ = tx.send(r);
            });
        }
        ready
    }

    /// Keeps `buf` as `fh`'s buffer for its next prefetch.
    pub(crate) fn recycle(&self, fh: u64, buf: Vec<u8>) {
        if let Some(s) = self.lock().by_fh.get_mut(&fh)
            && s.spare.capacity() < buf.capacity()
        {
            s.spare = buf;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::fs::ROOT_INO;
    use crate::source::MemSource;
    use crate::testing::{Content, TreeBuilder};

    const CS: u32 = 4096;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    /// A runtime, a read-ahead over a one-file image (`f`, `len` bytes), the file's inode, and its plaintext.
    /// `tamper` flips a byte inside that chunk of the image.
    fn setup(
        len: usize,
        tamper: Option<u64>,
        config: ReadAheadConfig,
    ) -> (tokio::runtime::Runtime, ReadAhead<MemSource>, u64, Vec<u8>) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let plain = data(len);
        let mut tree = TreeBuilder::new();
        tree.file("f", Content::Bytes(plain.clone()));
        let fs = tree
            .open_in_memory(&rt, CS, |image| {
                if let Some(chunk) = tamper {
                    image[4096 + chunk as usize * (CS as usize + 16) + 10] ^= 1;
                }
            })
            .unwrap();
        let ino = fs.lookup(ROOT_INO, b"f").unwrap().ino;
        let ra = ReadAhead::new(Arc::new(fs), rt.handle().clone(), config);
        (rt, ra, ino, plain)
    }

    fn small_reads() -> ReadAheadConfig {
        ReadAheadConfig {
            min_read: 1,
            ..ReadAheadConfig::LOCAL
        }
    }

    fn read(ra: &ReadAhead<MemSource>, fh: u64, ino: u64, off: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let mut scratch = Vec::new();
        ra.read(fh, ino, off, size, &mut scratch, |r| r.map(<[u8]>::to_vec))
    }

    #[test]
    fn sequential_reads_are_served_ahead_and_match() {
        let (_rt, ra, ino, plain) = setup(40 * CS as usize + 123, None, small_reads());
        let step = 3 * CS;
        let mut off = 0u64;
        while off < plain.len() as u64 {
            let got = read(&ra, 7, ino, off, step).unwrap();
            let end = (off + u64::from(step)).min(plain.len() as u64);
            assert_eq!(got, plain[off as usize..end as usize], "at {off}");
            off += u64::from(step);
        }
        // Nothing is left pending after the last read (no prefetch past the end of the file).
        assert!(ra.lock().by_fh[&7].pending.is_none());
    }

    #[test]
    fn out_of_order_random_and_interleaved_reads_match() {
        let (_rt, ra, ino, plain) = setup(64 * CS as usize, None, small_reads());
        let reads: [(u64, u64, u32); 9] = [
            (1, 0, 8192),
            (1, 16384, 8192), // skip ahead: the prefetch for 8192 is dropped
            (1, 8192, 8192),  // just behind: still one run
            (2, 5000, 100),
            (1, 24576, 8192),
            (2, 5100, 70000),
            (1, 200_000, 60000),
            (2, 75100, 1 << 20), // past the end: short read
            (1, 0, 1),
        ];
        for (fh, off, size) in reads {
            let got = read(&ra, fh, ino, off, size).unwrap();
            let start = (off as usize).min(plain.len());
            let end = (start + size as usize).min(plain.len());
            assert_eq!(got, plain[start..end], "fh {fh} at {off}+{size}");
        }
        ra.release(1);
        assert!(!ra.lock().by_fh.contains_key(&1));
    }

    #[test]
    fn a_tampered_chunk_fails_the_read_that_needs_it_even_when_prefetched() {
        let (_rt, ra, ino, plain) = setup(16 * CS as usize, Some(6), small_reads());
        for n in 0..6u64 {
            let got = read(&ra, 1, ino, n * u64::from(CS), CS).unwrap();
            assert_eq!(
                got,
                plain[(n * u64::from(CS)) as usize..((n + 1) * u64::from(CS)) as usize]
            );
        }
        // Chunk 6 was prefetched (and failed); the READ for it still gets the error, twice.
        for _ in 0..2 {
            match read(&ra, 1, ino, 6 * u64::from(CS), CS) {
                Err(FsError::ChunkAuth { index: 6 }) => {}
                other => panic!("expected ChunkAuth(6), got {other:?}"),
            }
        }
        assert_eq!(
            read(&ra, 1, ino, 7 * u64::from(CS), CS).unwrap(),
            plain[7 * CS as usize..8 * CS as usize]
        );
    }

    #[test]
    fn streams_are_bounded_and_read_ahead_can_be_off() {
        let config = ReadAheadConfig {
            max_streams: 2,
            min_read: 1,
        };
        let (_rt, ra, ino, plain) = setup(8 * CS as usize, None, config);
        for fh in 1..=5 {
            assert_eq!(read(&ra, fh, ino, 0, CS).unwrap(), plain[..CS as usize]);
        }
        assert_eq!(ra.lock().by_fh.len(), 2);
        let off = ReadAheadConfig {
            max_streams: 0,
            min_read: 1,
        };
        let (_rt, ra, ino, plain) = setup(8 * CS as usize, None, off);
        assert_eq!(read(&ra, 1, ino, 0, CS).unwrap(), plain[..CS as usize]);
        assert!(ra.lock().by_fh.is_empty());
    }
}
