//! Blobs held in memory: for tests, and as the inner source of fault-injecting wrappers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::ops::Range;
use std::sync::RwLock;

use bytes::Bytes;

use super::{BlobError, BlobKey, BlobMeta, BlobSource, ETag};

/// An in-memory source. Each blob's [`ETag`] is a counter bumped by every [`MemSource::put`].
#[derive(Debug, Default)]
pub struct MemSource {
    blobs: RwLock<HashMap<BlobKey, (Bytes, ETag)>>,
    version: std::sync::atomic::AtomicU64,
}

impl MemSource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores (or replaces) a blob.
    pub fn put(&self, key: BlobKey, data: impl Into<Bytes>) {
        let v = self.version.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut map = self.blobs.write().unwrap_or_else(|e| e.into_inner());
        map.insert(key, (data.into(), ETag::new(format!("v{v}"))));
    }

    fn get(&self, key: &BlobKey) -> Result<(Bytes, ETag), BlobError<Infallible>> {
        let map = self.blobs.read().unwrap_or_else(|e| e.into_inner());
        map.get(key).cloned().ok_or(BlobError::NotFound)
    }
}

impl BlobSource for MemSource {
    type Error = Infallible;

    async fn stat(&self, key: &BlobKey) -> Result<BlobMeta, BlobError<Infallible>> {
        let (data, etag) = self.get(key)?;
        Ok(BlobMeta {
            len: data.len() as u64,
            etag: Some(etag),
        })
    }

    async fn read_range(
        &self,
        key: &BlobKey,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> Result<Bytes, BlobError<Infallible>> {
        let (data, etag) = self.get(key)?;
        if if_match.is_some_and(|t| *t != etag) {
            return Err(BlobError::PreconditionFailed);
        }
        let len = data.len() as u64;
        if range.start > range.end || range.end > len {
            return Err(BlobError::OutOfRange {
                start: range.start,
                end: range.end,
                len,
            });
        }
        // INVARIANT: range.end <= data.len(), which is a usize.
        Ok(data.slice(range.start as usize..range.end as usize))
    }
}
