//! A local image file, read with positioned reads (`pread`).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::{BlobError, BlobKey, BlobMeta, BlobSource, ETag};
use crate::pool::BufPool;

/// Errors of [`FileSource`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileSourceError {
    /// Opening, stat-ing or reading the file failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done ("opening", "reading", "stat of").
        op: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Reads blobs from local files; the [`BlobKey`] is the file's path.
///
/// Files are opened on first use and kept open. Reads are synchronous `pread` calls inside the returned
/// future (they complete on first poll), which is cheap for files in the page cache or on tmpfs; callers on an
/// async runtime should treat them as blocking. The [`ETag`] is the file's device, inode, size and mtime, so a
/// file modified in place fails reads pinned to the old tag.
///
/// Read buffers are recycled: a returned [`Bytes`] gives its buffer back to the source when dropped, so a stream of
/// 1 MiB reads allocates and zero-fills nothing after the first few (they hold ciphertext only).
#[derive(Debug)]
pub struct FileSource {
    files: RwLock<HashMap<BlobKey, Arc<File>>>,
    spare: Arc<BufPool>,
}

type Result<T> = std::result::Result<T, BlobError<FileSourceError>>;

/// Read buffers kept for reuse (enough for the reads in flight on all request threads).
const SPARE_BUFFERS: usize = 32;

impl Default for FileSource {
    fn default() -> Self {
        Self {
            files: RwLock::default(),
            spare: BufPool::new(SPARE_BUFFERS),
        }
    }
}

impl FileSource {
    /// A source with no files open yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn file(&self, key: &BlobKey) -> Result<Arc<File>> {
        if let Some(f) = self.files.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Ok(f.clone());
        }
        let f = File::open(key.as_str()).map_err(|e| io_err("opening", key, e))?;
        let f = Arc::new(f);
        let mut map = self.files.write().unwrap_or_else(|e| e.into_inner());
        Ok(map.entry(key.clone()).or_insert(f).clone())
    }

    fn meta(file: &File, key: &BlobKey) -> Result<BlobMeta> {
        let m = file.metadata().map_err(|e| io_err("stat of", key, e))?;
        Ok(BlobMeta {
            len: m.size(),
            etag: Some(file_etag(&m)),
        })
    }

    fn read_sync(&self, key: &BlobKey, range: Range<u64>, if_match: Option<&ETag>) -> Result<Bytes> {
        let file = self.file(key)?;
        let meta = Self::meta(&file, key)?;
        if if_match.is_some_and(|tag| meta.etag.as_ref() != Some(tag)) {
            return Err(BlobError::PreconditionFailed);
        }
        let out_of_range = || BlobError::OutOfRange {
            start: range.start,
            end: range.end,
            len: meta.len,
        };
        if range.start > range.end || range.end > meta.len {
            return Err(out_of_range());
        }
        let len = usize::try_from(range.end - range.start).map_err(|_| out_of_range())?;
        let mut buf = self.spare.take_len(len);
        match file.read_exact_at(&mut buf, range.start) {
            Ok(()) => Ok(BufPool::freeze(&self.spare, buf)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(out_of_range()),
            Err(e) => Err(io_err("reading", key, e)),
        }
    }
}

/// The version tag of a local file: device, inode, size and modification time.
pub(super) fn file_etag(m: &std::fs::Metadata) -> ETag {
    ETag::new(format!(
        "{:x}-{:x}-{:x}-{:x}.{:x}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec()
    ))
}

fn io_err(op: &'static str, key: &BlobKey, source: io::Error) -> BlobError<FileSourceError> {
    if source.kind() == io::ErrorKind::NotFound {
        return BlobError::NotFound;
    }
    BlobError::Backend(FileSourceError::Io {
        op,
        path: key.to_string(),
        source,
    })
}

impl BlobSource for FileSource {
    type Error = FileSourceError;

    async fn stat(&self, key: &BlobKey) -> Result<BlobMeta> {
        let file = self.file(key)?;
        Self::meta(&file, key)
    }

    async fn read_range(&self, key: &BlobKey, range: Range<u64>, if_match: Option<&ETag>) -> Result<Bytes> {
        self.read_sync(key, range, if_match)
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn file_source_reads_ranges_and_refuses_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, b"0123456789").unwrap();
        let src = FileSource::new();
        let key = BlobKey::new(path.to_str().unwrap());
        let meta = block_on(src.stat(&key)).unwrap();
        assert_eq!(meta.len, 10);
        let got = block_on(src.read_range(&key, 2..5, meta.etag.as_ref())).unwrap();
        assert_eq!(&got[..], b"234");
        assert!(matches!(
            block_on(src.read_range(&key, 8..11, None)),
            Err(BlobError::OutOfRange { len: 10, .. })
        ));
        let missing = BlobKey::new(dir.path().join("nope").to_str().unwrap());
        assert!(matches!(block_on(src.stat(&missing)), Err(BlobError::NotFound)));
    }

    #[test]
    fn file_source_refuses_reads_after_the_file_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, b"0123456789").unwrap();
        let src = FileSource::new();
        let key = BlobKey::new(path.to_str().unwrap());
        let meta = block_on(src.stat(&key)).unwrap();
        let f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all_at(b"x", 10).unwrap();
        assert!(matches!(
            block_on(src.read_range(&key, 0..1, meta.etag.as_ref())),
            Err(BlobError::PreconditionFailed)
        ));
    }

    #[test]
    fn recycled_buffers_never_mix_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..3usize << 20).map(|i| (i * 7 + i / 4093) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let src = FileSource::new();
        let key = BlobKey::new(path.to_str().unwrap());
        // Large, small, large again, with some results kept alive while later reads reuse dropped buffers.
        let ranges = [
            (0usize, 1usize << 20),
            (5, 17),
            (1 << 20, 2 << 20),
            (100, 1 << 20),
            (3 << 19, 3 << 20),
        ];
        let mut kept = Vec::new();
        for round in 0..4 {
            for (k, &(a, b)) in ranges.iter().enumerate() {
                let got = block_on(src.read_range(&key, a as u64..b as u64, None)).unwrap();
                assert_eq!(&got[..], &data[a..b], "round {round}, {a}..{b}");
                if (round + k) % 3 == 0 {
                    kept.push((a, b, got));
                }
            }
        }
        for (a, b, got) in &kept {
            assert_eq!(&got[..], &data[*a..*b], "kept {a}..{b}");
        }
        drop(kept);
        // A dropped read gives its buffer back: the next read reuses the same allocation.
        let first = block_on(src.read_range(&key, 0..1 << 20, None)).unwrap();
        let ptr = first.as_ptr();
        drop(first);
        let second = block_on(src.read_range(&key, 7..(1 << 20) - 5, None)).unwrap();
        assert_eq!(second.as_ptr(), ptr, "the buffer is reused");
        assert_eq!(&second[..], &data[7..(1 << 20) - 5]);
    }
}
