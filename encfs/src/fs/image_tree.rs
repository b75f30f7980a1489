//! An image served as a [`ReadOnlyTree`]: an [`EncFs`] read through [`ReadAhead`] on the runtime its async
//! reads run on, with the logging policy for its errors (a chunk that fails authentication once per chunk index:
//! the kernel retries a failed readahead page by page, which would otherwise flood the log).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::{debug, error, warn};

use super::readahead::{Direct, ReadAhead, ReadAheadConfig};
use super::{Attr, DirEntry, EncFs, FsError, StatFs};
use crate::errchain::ErrorChain;
use crate::source::BlobSource;
use crate::tree::{Errno, ReadOnlyTree, ReadReply};

thread_local! {
    /// The read buffer of each thread that reads (the FUSE request threads), reused: no allocation or page
    /// faults per read.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An [`EncFs`] as a [`ReadOnlyTree`]; see the module docs.
pub struct ImageTree<B: BlobSource> {
    fs: Arc<EncFs<B>>,
    reads: ReadAhead<B>,
    /// The next file handle (one per open, so read-ahead can follow each reader).
    next_fh: AtomicU64,
    /// Chunk indices already logged as failing authentication.
    logged_bad_chunks: Mutex<HashSet<u64>>,
}

impl<B: BlobSource> std::fmt::Debug for ImageTree<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageTree")
            .field("fs", &self.fs)
            .finish_non_exhaustive()
    }
}

impl<B: BlobSource> ImageTree<B> {
    /// Serves `fs`; its async reads are driven on `rt` (blocking the calling thread until done), through
    /// decrypt-ahead as `read_ahead` says.
    pub fn new(fs: Arc<EncFs<B>>, rt: tokio::runtime::Handle, read_ahead: ReadAheadConfig) -> Self {
        Self {
            reads: ReadAhead::new(Arc::clone(&fs), rt, read_ahead),
            fs,
            next_fh: AtomicU64::new(1),
            logged_bad_chunks: Mutex::new(HashSet::new()),
        }
    }

    /// Logs `err` once, at a level that fits it, and returns its errno.
    fn fail(&self, op: &'static str, ino: u64, err: &FsError) -> Errno {
        match err {
            FsError::NotFound => debug!(op, ino, "{err}"),
            FsError::ChunkAuth { index } => {
                let first = self
                    .logged_bad_chunks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(*index);
                if first {
                    error!(op, ino, chunk = index, "chunk failed authentication: returning EIO");
                }
            }
            FsError::Source(_) => error!(op, ino, "{}", ErrorChain(err)),
            _ => warn!(op, ino, "{err}"),
        }
        Errno(err.errno())
    }
}

impl<B: BlobSource> ReadOnlyTree for ImageTree<B> {
    fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        self.fs.getattr(ino).map_err(|e| self.fail("getattr", ino, &e))
    }

    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, Errno> {
        self.fs
            .lookup(parent, name)
            .map_err(|e| self.fail("lookup", parent, &e))
    }

    fn readlink(&self, ino: u64) -> Result<&[u8], Errno> {
        self.fs.readlink(ino).map_err(|e| self.fail("readlink", ino, &e))
    }

    fn open_file(&self, ino: u64) -> Result<u64, Errno> {
        match self.fs.open_file(ino) {
            Ok(_) => Ok(self.next_fh.fetch_add(1, Ordering::Relaxed)),
            Err(e) => Err(self.fail("open", ino, &e)),
        }
    }

    fn release(&self, fh: u64) {
        self.reads.release(fh);
    }

    fn open_dir(&self, ino: u64) -> Result<(), Errno> {
        self.fs
            .readdir(ino, 0)
            .map(drop)
            .map_err(|e| self.fail("opendir", ino, &e))
    }

    fn readdir(&self, ino: u64, offset: u64, add: &mut dyn FnMut(DirEntry<'_>) -> bool) -> Result<(), Errno> {
        let entries = self
            .fs
            .readdir(ino, offset)
            .map_err(|e| self.fail("readdir", ino, &e))?;
        for e in entries {
            if add(e) {
                break;
            }
        }
        Ok(())
    }

    fn statfs(&self) -> StatFs {
        self.fs.statfs()
    }

    fn read(&self, ino: u64, fh: u64, offset: u64, size: u32, mut reply: impl ReadReply) {
        if let Some(dst) = reply.buffer() {
            // Decrypt straight into the transport's reply buffer.
            match self.reads.read_direct(fh, ino, offset, size, dst) {
                Ok(Direct::Filled(n)) => reply.filled(n),
                Ok(Direct::Prefetched(buf)) => {
                    reply.data(&buf);
                    self.reads.recycle(fh, buf);
                }
                Err(e) => reply.error(self.fail("read", ino, &e)),
            }
            return;
        }
        READ_BUF.with_borrow_mut(|buf| {
            self.reads.read(fh, ino, offset, size, buf, |r| match r {
                Ok(data) => reply.data(data),
                Err(e) => reply.error(self.fail("read", ino, &e)),
            });
        });
    }
}
