//! A local image file mapped into memory: reads are zero-copy slices of the mapping.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use memmap2::{Advice, Mmap};

use super::file::{FileSourceError, file_etag};
use super::{BlobError, BlobKey, BlobMeta, BlobSource, ETag};

/// Reads blobs from local files through a shared read-only memory map; the [`BlobKey`] is the file's path.
///
/// Saves the copy a `pread` makes, which matters when the image sits in the page cache or on tmpfs. The map is
/// taken once, at the file's length when first used, and reads never go past it. **Caveat:** if the file is
/// truncated while mapped, touching the lost pages raises `SIGBUS` and kills the daemon (a denial of service,
/// never wrong plaintext, since every chunk is still authenticated). Use [`super::FileSource`] where other
/// parties can modify the image file.
#[derive(Debug, Default)]
pub struct MmapSource {
    maps: RwLock<HashMap<BlobKey, Mapped>>,
}

#[derive(Clone, Debug)]
struct Mapped {
    map: Arc<Mmap>,
    etag: ETag,
}

/// A slice of a shared map, as the owner of a zero-copy [`Bytes`].
struct MapSlice {
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

/// Reads at least this large map their pages up front (`MADV_POPULATE_READ`).
const POPULATE_MIN: usize = 256 << 10;

type Result<T> = std::result::Result<T, BlobError<FileSourceError>>;

impl MmapSource {
    /// A source with no files mapped yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn mapped(&self, key: &BlobKey) -> Result<Mapped> {
        if let Some(m) = self.maps.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Ok(m.clone());
        }
        let err = |op, source: io::Error| {
            if source.kind() == io::ErrorKind::NotFound {
                BlobError::NotFound
            } else {
                BlobError::Backend(FileSourceError::Io {
                    op,
                    path: key.to_string(),
                    source,
                })
            }
        };
        let file = File::open(key.as_str()).map_err(|e| err("opening", e))?;
        let meta = file.metadata().map_err(|e| err("stat of", e))?;
        #[allow(unsafe_code)]
        // SAFETY: the map is read-only and private to this process; the image is treated as immutable while
        // mounted (see the type's caveat about truncation), and every byte read from it is authenticated.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| err("mapping", e))?;
        let m = Mapped {
            map: Arc::new(map),
            etag: file_etag(&meta),
        };
        let mut maps = self.maps.write().unwrap_or_else(|e| e.into_inner());
        Ok(maps.entry(key.clone()).or_insert(m).clone())
    }
}

impl BlobSource for MmapSource {
    type Error = FileSourceError;

    async fn stat(&self, key: &BlobKey) -> Result<BlobMeta> {
        let m = self.mapped(key)?;
        Ok(BlobMeta {
            len: m.map.len() as u64,
            etag: Some(m.etag),
        })
    }

    async fn read_range(&self, key: &BlobKey, range: Range<u64>, if_match: Option<&ETag>) -> Result<Bytes> {
        let m = self.mapped(key)?;
        if if_match.is_some_and(|t| *t != m.etag) {
            return Err(BlobError::PreconditionFailed);
        }
        let len = m.map.len() as u64;
        if range.start > range.end || range.end > len {
            return Err(BlobError::OutOfRange {
                start: range.start,
                end: range.end,
                len,
            });
        }
        // INVARIANT: range.end <= map length, a usize.
        let range = range.start as usize..range.end as usize;
        if range.len() >= POPULATE_MIN {
            // Map the whole range in one call instead of a page fault per 64 KiB (fault-around) as the chunks are
            // opened; a hint only (older kernels refuse MADV_POPULATE_READ, and then the faults do the work).
            let _ = m.map.advise_range(Advice::PopulateRead, range.start, range.len());
        }
        Ok(Bytes::from_owner(MapSlice { map: m.map, range }))
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
    fn mmap_source_reads_ranges_and_refuses_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, b"0123456789").unwrap();
        let src = MmapSource::new();
        let key = BlobKey::new(path.to_str().unwrap());
        let meta = block_on(src.stat(&key)).unwrap();
        assert_eq!(meta.len, 10);
        assert_eq!(
            &block_on(src.read_range(&key, 2..5, meta.etag.as_ref())).unwrap()[..],
            b"234"
        );
        assert!(matches!(
            block_on(src.read_range(&key, 8..11, None)),
            Err(BlobError::OutOfRange { len: 10, .. })
        ));
        assert!(matches!(
            block_on(src.read_range(&key, 0..1, Some(&ETag::new("other")))),
            Err(BlobError::PreconditionFailed)
        ));
    }
}
