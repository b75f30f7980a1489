//! The filesystem: an authenticated image seen as a read-only tree, generic over where its bytes come from.
//!
//! [`EncFs::open`] reads the header and the sealed index from a [`BlobSource`], and checks them (key check
//! value, index seal, root pin, exact image length) before anything is served. After that, metadata lives in
//! memory and only file reads touch the source: a read fetches the sealed chunks covering the requested range
//! in one ranged read, authenticates each chunk and returns the plaintext. A chunk that fails authentication
//! fails the whole read ([`FsError::ChunkAuth`]); no byte of it is returned.
//!
//! Inode numbers are entry numbers plus one, so the root directory (entry 0) is inode 1 as FUSE expects, and
//! they are stable for the life of the image. This module knows nothing of FUSE: [`ImageTree`] serves it as a
//! [`crate::tree::ReadOnlyTree`], which [`crate::fuse`] adapts, and tests drive it directly.
//!
//! A read of many chunks that finds no other read being decrypted is split over rayon's global pool (one thread
//! per core, started when an image is opened); with the kernel keeping two READs in flight (2 MiB readahead)
//! each READ already has a core. [`readahead`] starts a sequential reader's next read before the kernel asks for
//! it, for mounts whose kernel window keeps only one READ in flight.

mod image_tree;
pub mod readahead;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::time::{Duration, SystemTime};

pub use self::image_tree::ImageTree;
use crate::format::{
    ChunkLoc, EntryKind, FileLayout, FormatError, HEADER_LEN, Header, ImageKeys, ModelKey, OpenedImage,
    open_chunk_into, seal_chunk,
};
use crate::source::{BlobError, BlobKey, BlobSource, ETag};
pub use crate::tree::{Attr, DirEntry, FileKind, StatFs};

/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;

/// Largest read the filesystem is asked for (bytes): the FUSE adapter mounts with this `max_read` and clamps
/// READs to it, and [`readahead`] sizes its out-of-order window by it. 1 MiB is the kernel's default
/// `max_pages_limit`.
pub const MAX_READ: u32 = 1 << 20;

/// Largest sealed index accepted at all ([`EncFsConfig::max_index_len`] may lower it).
pub(crate) const MAX_INDEX_LEN: u64 = 1 << 30;

/// The largest sealed index a mount with a memory budget of `budget` bytes reads before authenticating it: a
/// quarter of the budget (the sealed index, its plaintext and the parsed entries are each about its size), at
/// least 1 MiB and at most [`MAX_INDEX_LEN`].
///
/// The index length comes from the header, which only the index seal authenticates: anyone who can change the
/// image (a storage provider without the key) can raise it, keep the key check valid, and would otherwise make
/// every mount attempt read and allocate that much before the seal refuses it. An index costs about 80 bytes per
/// entry plus its name, so 64 MiB (the default 256 MiB budget) holds hundreds of thousands of files.
pub(crate) fn index_limit_for_budget(budget: u64) -> u64 {
    (budget / 4).clamp(1 << 20, MAX_INDEX_LEN)
}

/// Size reported for directories (as ext4 does for a one-block directory).
const DIR_SIZE: u64 = 4096;

/// How the filesystem presents itself; plain data, [`Default`] gives sensible values.
#[derive(Clone, Debug)]
pub struct EncFsConfig {
    /// Owner reported for every entry (the image stores no owners).
    pub uid: u32,
    /// Group reported for every entry.
    pub gid: u32,
    /// Reads covering at least this many chunks are decrypted in parallel (when no other read is being
    /// decrypted). The default, 32, keeps a FUSE READ of 64 KiB chunks (at most 17) on one thread: with the
    /// kernel keeping two READs in flight, splitting them measured ~5 % more daemon CPU and no more throughput,
    /// for local and remote images alike; images of small chunks still split their 1 MiB READs.
    pub parallel_min_chunks: usize,
    /// Largest sealed index read before it is authenticated ([`index_limit_for_budget`]); an image whose header
    /// declares more is refused before anything past the header is read. Default [`MAX_INDEX_LEN`].
    pub max_index_len: u64,
}

impl Default for EncFsConfig {
    fn default() -> Self {
        Self {
            uid: 0,
            gid: 0,
            parallel_min_chunks: 32,
            max_index_len: MAX_INDEX_LEN,
        }
    }
}

/// Why an image was refused at open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError<E: std::error::Error + Send + Sync + 'static> {
    /// The source failed while reading `what`.
    #[error("reading the image {what}")]
    Source {
        /// Which part ("length", "header", "index").
        what: &'static str,
        /// The source's error.
        #[source]
        source: BlobError<E>,
    },
    /// The image itself is bad (wrong key, corrupt, truncated, root mismatch, ...).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The header declares an index larger than [`EncFsConfig::max_index_len`]: refused before it is read.
    #[error(
        "corrupt header: index length {len} exceeds {max}, the most read before the index is authenticated (if the \
         image is genuine, raise the memory budget: --cache-size or cinfer_cache_mb)"
    )]
    IndexTooLarge {
        /// The declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
}

/// Why a filesystem operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// A chunk failed authentication; nothing of the read is returned.
    #[error("chunk {index} failed authentication")]
    ChunkAuth {
        /// Global chunk index.
        index: u64,
    },
    /// The inode is not a directory.
    #[error("not a directory")]
    NotDir,
    /// The entry does not exist.
    #[error("no such entry")]
    NotFound,
    /// The inode is not a regular file (read on a directory, ...).
    #[error("not a regular file")]
    NotFile,
    /// The inode is not a symbolic link.
    #[error("not a symbolic link")]
    NotSymlink,
    /// The source failed or returned a short read.
    #[error("reading chunks from the source")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl FsError {
    /// The errno a POSIX caller should see.
    pub(crate) fn errno(&self) -> i32 {
        match self {
            Self::ChunkAuth { .. } | Self::Source(_) => libc::EIO,
            Self::NotDir => libc::ENOTDIR,
            Self::NotFound => libc::ENOENT,
            Self::NotFile => libc::EISDIR,
            Self::NotSymlink => libc::EINVAL,
        }
    }
}

/// The `st_blksize` of files with `chunk_size`-byte chunks: a quarter chunk, at least 4 KiB (16 KiB for 64 KiB
/// chunks). Buffered readers (stdio, Python's `open`) read one such block at a time, and the kernel makes the
/// first read of a file a READ of up to four times its size: so opening a file and reading a byte asks for one
/// chunk, not two (a chunk-sized block made it 128 KiB: twice the bytes on the wire before the first byte).
pub(crate) fn preferred_io_size(chunk_size: u32) -> u32 {
    (chunk_size / 4).max(4096)
}

/// An opened, authenticated image, served from a [`BlobSource`].
pub struct EncFs<B: BlobSource> {
    source: B,
    key: BlobKey,
    etag: Option<ETag>,
    image: OpenedImage,
    keys: ImageKeys,
    /// Children of each directory entry, sorted by name (empty for non-directories).
    children: Vec<Vec<u32>>,
    /// Number of subdirectories of each directory entry.
    subdirs: Vec<u32>,
    config: EncFsConfig,
    /// Reads being decrypted right now (for the split decision in [`Self::decrypt_into`]).
    decrypting: std::sync::atomic::AtomicUsize,
}

impl<B: BlobSource> std::fmt::Debug for EncFs<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncFs")
            .field("key", &self.key)
            .field("entries", &self.image.index.entries.len())
            .field("root", &hex::encode(self.image.root))
            .finish_non_exhaustive()
    }
}

impl<B: BlobSource> EncFs<B> {
    /// Opens image `key` from `source`: reads and authenticates header and index; checks the root pin when
    /// `expect_root` is given, and that the image has exactly the length its header declares.
    pub async fn open(
        source: B,
        key: BlobKey,
        model_key: &ModelKey,
        expect_root: Option<&[u8; 32]>,
        config: EncFsConfig,
    ) -> Result<Self, OpenError<B::Error>> {
        let src = |what| move |source| OpenError::Source { what, source };
        let meta = source.stat(&key).await.map_err(src("length"))?;
        if meta.len < HEADER_LEN as u64 {
            return Err(FormatError::Truncated {
                what: "header",
                expected: HEADER_LEN as u64,
                actual: meta.len,
            }
            .into());
        }
        let etag = meta.etag;
        let hb = source
            .read_range(&key, 0..HEADER_LEN as u64, etag.as_ref())
            .await
            .map_err(src("header"))?;
        let hb: &[u8; HEADER_LEN] = hb[..].try_into().map_err(|_| FormatError::Truncated {
            what: "header",
            expected: HEADER_LEN as u64,
            actual: hb.len() as u64,
        })?;
        let header = Header::decode(hb)?;
        let max = config.max_index_len.min(MAX_INDEX_LEN);
        if header.index_len > max {
            return Err(OpenError::IndexTooLarge {
                len: header.index_len,
                max,
            });
        }
        if meta.len < header.image_len() {
            return Err(FormatError::LengthMismatch {
                expected: header.image_len(),
                actual: meta.len,
            }
            .into());
        }
        let sealed_index = source
            .read_range(&key, header.index_offset..header.image_len(), etag.as_ref())
            .await
            .map_err(src("index"))?;
        let (image, keys) = OpenedImage::open(hb, &sealed_index, model_key, expect_root, Some(meta.len))?;
        Ok(Self::from_opened(source, key, etag, image, keys, config))
    }

    fn from_opened(
        source: B,
        key: BlobKey,
        etag: Option<ETag>,
        image: OpenedImage,
        keys: ImageKeys,
        config: EncFsConfig,
    ) -> Self {
        let entries = &image.index.entries;
        let mut children: Vec<Vec<u32>> = vec![Vec::new(); entries.len()];
        let mut subdirs = vec![0u32; entries.len()];
        for (i, e) in entries.iter().enumerate().skip(1) {
            // INVARIANT: Index::decode checked that every parent is an earlier directory entry, and entry
            // numbers fit in u32 for any index below MAX_INDEX_LEN bytes.
            children[e.parent as usize].push(i as u32);
            if e.kind == EntryKind::Dir {
                subdirs[e.parent as usize] += 1;
            }
        }
        for c in &mut children {
            c.sort_by(|&a, &b| entries[a as usize].name.cmp(&entries[b as usize].name));
        }
        let fs = Self {
            source,
            key,
            etag,
            image,
            keys,
            children,
            subdirs,
            config,
            decrypting: std::sync::atomic::AtomicUsize::new(0),
        };
        if !fs.warm_up_decrypt() {
            tracing::warn!("a chunk sealed at open did not open again: reads will fail");
        }
        fs
    }

    /// Runs the read path's decryption once, at open, on a small chunk sealed here (at an index no image
    /// reaches; it never leaves memory), and starts the decrypt threads (rayon's global pool). The first read
    /// would otherwise wait for the threads to be spawned and, with a cold page cache, for their code and the
    /// cipher's to be paged in (about 2-3 ms here). Returns whether the chunk opened to what was sealed.
    fn warm_up_decrypt(&self) -> bool {
        const LEN: usize = 4096;
        rayon::broadcast(|_| ());
        let index = u64::MAX;
        let mut sealed = vec![0x5a; LEN];
        seal_chunk(&self.keys, index, &mut sealed);
        let mut plain = vec![0; LEN];
        let job = Job {
            loc: ChunkLoc {
                index,
                offset: 0,
                sealed_len: sealed.len() as u64,
                file_offset: 0,
                plain_len: LEN as u64,
            },
            sealed: &sealed,
            skip: 0,
            dest: &mut plain,
        };
        job.run(&self.keys).is_ok() && plain.iter().all(|&b| b == 0x5a)
    }

    /// The image's root digest.
    pub fn root(&self) -> &[u8; 32] {
        &self.image.root
    }

    /// The authenticated header.
    pub fn header(&self) -> &Header {
        &self.image.header
    }

    /// The authenticated index (entries with the per-file SHA-256 `build` recorded, extensions).
    pub fn index(&self) -> &crate::format::Index {
        &self.image.index
    }

    /// The source this filesystem reads from.
    pub fn source(&self) -> &B {
        &self.source
    }

    fn entry_of(&self, ino: u64) -> Result<usize, FsError> {
        let i = ino.checked_sub(1).ok_or(FsError::NotFound)?;
        usize::try_from(i)
            .ok()
            .filter(|&i| i < self.image.index.entries.len())
            .ok_or(FsError::NotFound)
    }

    fn attr_of(&self, i: usize) -> Attr {
        let e = &self.image.index.entries[i];
        let (kind, size, blocks, nlink) = match &e.kind {
            EntryKind::Dir => (FileKind::Dir, DIR_SIZE, DIR_SIZE / 512, 2 + self.subdirs[i]),
            EntryKind::File { size, .. } => (FileKind::File, *size, size.div_ceil(512), 1),
            EntryKind::Symlink { target } => (FileKind::Symlink, target.len() as u64, 0, 1),
        };
        let mtime = if e.mtime >= 0 {
            // Saturating: `SystemTime + Duration` panics on overflow (i64::MAX seconds plus nanoseconds).
            SystemTime::UNIX_EPOCH
                .checked_add(Duration::new(e.mtime as u64, 0))
                .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(e.mtime_nsec))))
                .unwrap_or(SystemTime::UNIX_EPOCH)
        } else {
            SystemTime::UNIX_EPOCH
                .checked_sub(Duration::from_secs(e.mtime.unsigned_abs()))
                .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(e.mtime_nsec))))
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        Attr {
            ino: i as u64 + 1,
            kind,
            size,
            blocks,
            // INVARIANT: Index::decode refuses modes above 0o7777.
            perm: e.mode as u16,
            nlink,
            uid: self.config.uid,
            gid: self.config.gid,
            mtime,
            blksize: preferred_io_size(self.image.header.chunk_size),
        }
    }

    /// Attributes of inode `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        Ok(self.attr_of(self.entry_of(ino)?))
    }

    /// Looks `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        let p = self.entry_of(parent)?;
        if self.image.index.entries[p].kind != EntryKind::Dir {
            return Err(FsError::NotDir);
        }
        match name {
            b"." => return Ok(self.attr_of(p)),
            b".." => return Ok(self.attr_of(self.image.index.entries[p].parent as usize)),
            _ => {}
        }
        let entries = &self.image.index.entries;
        let kids = &self.children[p];
        let pos = kids
            .binary_search_by(|&c| entries[c as usize].name.as_slice().cmp(name))
            .map_err(|_| FsError::NotFound)?;
        Ok(self.attr_of(kids[pos] as usize))
    }

    /// Entries of directory `ino` from `offset` on (0 = start). Offsets 0 and 1 yield `.` and `..`; every
    /// entry carries the offset to resume after it.
    pub fn readdir(&self, ino: u64, offset: u64) -> Result<impl Iterator<Item = DirEntry<'_>> + '_, FsError> {
        let d = self.entry_of(ino)?;
        let entries = &self.image.index.entries;
        if entries[d].kind != EntryKind::Dir {
            return Err(FsError::NotDir);
        }
        let dots = [(d, b".".as_slice()), (entries[d].parent as usize, b"..".as_slice())];
        let kids = self.children[d]
            .iter()
            .map(|&c| (c as usize, entries[c as usize].name.as_slice()));
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        Ok(dots
            .into_iter()
            .chain(kids)
            .enumerate()
            .skip(skip)
            .map(|(n, (i, name))| DirEntry {
                ino: i as u64 + 1,
                next_offset: n as u64 + 1,
                kind: self.attr_kind(i),
                name,
            }))
    }

    fn attr_kind(&self, i: usize) -> FileKind {
        match self.image.index.entries[i].kind {
            EntryKind::Dir => FileKind::Dir,
            EntryKind::File { .. } => FileKind::File,
            EntryKind::Symlink { .. } => FileKind::Symlink,
        }
    }

    /// Target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> Result<&[u8], FsError> {
        match &self.image.index.entries[self.entry_of(ino)?].kind {
            EntryKind::Symlink { target } => Ok(target),
            _ => Err(FsError::NotSymlink),
        }
    }

    /// Checks that `ino` can be opened for reading as a file.
    pub fn open_file(&self, ino: u64) -> Result<Attr, FsError> {
        let i = self.entry_of(ino)?;
        match self.image.layout.file(i) {
            Some(_) => Ok(self.attr_of(i)),
            None => Err(FsError::NotFile),
        }
    }

    /// Size of regular file `ino`, or `None` if it is not one.
    pub(crate) fn file_size(&self, ino: u64) -> Option<u64> {
        let i = self.entry_of(ino).ok()?;
        self.image.layout.file(i).map(|fl| fl.size)
    }

    /// Totals for `statfs`.
    pub fn statfs(&self) -> StatFs {
        let entries = &self.image.index.entries;
        let bytes = entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::File { size, .. } => size,
                _ => 0,
            })
            .sum();
        StatFs {
            bytes,
            files: entries.len() as u64,
        }
    }

    /// Reads up to `size` plaintext bytes of file `ino` at `offset` (fewer at end of file, none past it).
    ///
    /// Every byte returned comes from a chunk that passed authentication; if any chunk in the range fails, the
    /// whole read fails with [`FsError::ChunkAuth`].
    pub async fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let mut out = Vec::new();
        self.read_into(ino, offset, size, &mut out).await?;
        Ok(out)
    }

    /// As [`Self::read`], into `out` (resized to the bytes read), so a caller can reuse one buffer per thread
    /// without zeroing it each time. On error `out` is empty and none of this read's plaintext is left in it.
    pub(crate) async fn read_into(&self, ino: u64, offset: u64, size: u32, out: &mut Vec<u8>) -> Result<(), FsError> {
        self.read_into_split(ino, offset, size, out, true).await
    }

    /// As [`Self::read_into`], but opens all chunks on the calling thread. For reads made ahead of their READ
    /// ([`readahead`]): those already run beside the reader, and handing half of the chunks to another thread
    /// would only add wake-ups.
    pub(crate) async fn read_ahead_into(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), FsError> {
        self.read_into_split(ino, offset, size, out, false).await
    }

    /// As [`Self::read_into`], into `out` (at least `size` bytes: a transport's own reply buffer, so the plaintext
    /// is written where the reply goes, without a copy). Returns the number of bytes read; on an error `out` holds
    /// no plaintext.
    pub(crate) async fn read_into_slice(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
        out: &mut [u8],
    ) -> Result<usize, FsError> {
        let size = size.min(u32::try_from(out.len()).unwrap_or(u32::MAX));
        let mut out = SliceOut { buf: out, len: 0 };
        self.read_into_split(ino, offset, size, &mut out, true).await?;
        Ok(out.len)
    }

    async fn read_into_split<O: OutBuf>(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
        out: &mut O,
        split: bool,
    ) -> Result<(), FsError> {
        let mut dropped = false;
        let r = self.read_into_once(ino, offset, size, out, split, &mut dropped).await;
        if dropped {
            // The source dropped its cached copy of a range that failed authentication (the copy may be what
            // went bad): fetch and open it once more.
            return self.read_into_once(ino, offset, size, out, split, &mut false).await;
        }
        r
    }

    /// One attempt of [`Self::read_into`]; sets `dropped` if a range failed authentication and the source
    /// dropped a cached copy of it ([`BlobSource::on_auth_failure`]).
    async fn read_into_once<O: OutBuf>(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
        out: &mut O,
        split: bool,
        dropped: &mut bool,
    ) -> Result<(), FsError> {
        let i = self.entry_of(ino).inspect_err(|_| out.discard())?;
        let Some(fl) = self.image.layout.file(i).copied() else {
            out.discard();
            return Err(FsError::NotFile);
        };
        let end = offset.saturating_add(u64::from(size)).min(fl.size);
        if offset >= end {
            out.discard();
            return Ok(());
        }
        let cs = self.image.header.chunk_size;
        let chunks = fl.chunks_covering(offset, end - offset, cs);
        let first = fl.chunk(chunks.start, cs);
        let last = fl.chunk(chunks.end - 1, cs);
        let sealed_range = first.offset..last.offset + last.sealed_len;
        let sealed = self
            .source
            .read_range(&self.key, sealed_range.clone(), self.etag.as_ref())
            .await
            .map_err(|e| {
                out.discard();
                FsError::Source(Box::new(e))
            })?;
        if sealed.len() as u64 != sealed_range.end - sealed_range.start {
            out.discard();
            return Err(FsError::Source(
                format!(
                    "source returned {} bytes for a {}-byte range",
                    sealed.len(),
                    sealed_range.end - sealed_range.start
                )
                .into(),
            ));
        }
        // INVARIANT: end - offset <= size, a u32.
        let dest = out.sized((end - offset) as usize);
        let r = self.decrypt_into(&fl, chunks, offset, sealed_range.start, &sealed, dest, split);
        if r.is_err() {
            // Chunks that did open left plaintext in `out`; a failed read returns none of it.
            out.discard();
            if matches!(r, Err(FsError::ChunkAuth { .. })) {
                *dropped = self.source.on_auth_failure(&self.key, sealed_range);
            }
        }
        r
    }

    /// Opens chunks `chunks` of file `fl` from `sealed` (which starts at image offset `sealed_start`) and
    /// writes plaintext bytes `[offset, offset + out.len())` of the file into `out`; with `split`, large reads
    /// are spread over the rayon pool.
    #[allow(clippy::too_many_arguments)]
    fn decrypt_into(
        &self,
        fl: &FileLayout,
        chunks: Range<u64>,
        offset: u64,
        sealed_start: u64,
        sealed: &[u8],
        out: &mut [u8],
        split: bool,
    ) -> Result<(), FsError> {
        let cs = self.image.header.chunk_size;
        let mut jobs: Vec<Job<'_>> = Vec::with_capacity((chunks.end - chunks.start) as usize);
        let end = offset + out.len() as u64;
        let mut rest = out;
        for n in chunks {
            let loc = fl.chunk(n, cs);
            // The part of this chunk's plaintext that the read wants, relative to the chunk.
            let want_start = offset.max(loc.file_offset) - loc.file_offset;
            let want_end = end.min(loc.file_offset + loc.plain_len) - loc.file_offset;
            let (dest, tail) = std::mem::take(&mut rest).split_at_mut((want_end - want_start) as usize);
            rest = tail;
            let s = (loc.offset - sealed_start) as usize;
            jobs.push(Job {
                loc,
                sealed: &sealed[s..s + loc.sealed_len as usize],
                skip: want_start as usize,
                dest,
            });
        }
        let keys = &self.keys;
        let parts = rayon::current_num_threads().min(jobs.len());
        // Split only when no other read is being decrypted: with the kernel keeping two READs in flight (2 MiB
        // readahead), each already has a core, and splitting both would only add hand-offs (measured: ~8 % more
        // daemon CPU per GiB for no throughput).
        let busy = Busy::enter(&self.decrypting);
        if !split || busy.others > 0 || jobs.len() < self.config.parallel_min_chunks.max(2) || parts < 2 {
            return jobs.into_iter().try_for_each(|j| j.run(keys));
        }
        // Split into one contiguous run per core: this thread opens the first run while pool threads open the
        // others (one task each, so one wake-up per helper rather than one per chunk).
        let per = jobs.len().div_ceil(parts);
        let mut runs: Vec<Vec<Job<'_>>> = Vec::with_capacity(parts);
        while jobs.len() > per {
            let tail = jobs.split_off(jobs.len() - per);
            runs.push(tail);
        }
        let mut results: Vec<Result<(), FsError>> = (0..runs.len()).map(|_| Ok(())).collect();
        let mut mine = Ok(());
        rayon::in_place_scope(|s| {
            for (run, res) in runs.into_iter().zip(results.iter_mut()) {
                s.spawn(move |_| *res = run.into_iter().try_for_each(|j| j.run(keys)));
            }
            mine = jobs.into_iter().try_for_each(|j| j.run(keys));
        });
        results.into_iter().fold(mine, Result::and)
    }
}

/// Where a read's plaintext goes: a growable buffer of the daemon's, or a transport's reply buffer.
trait OutBuf {
    /// The first `len` bytes to fill (a `Vec` grows; a slice holds at least `len`).
    fn sized(&mut self, len: usize) -> &mut [u8];
    /// Drops whatever was written: a failed read leaves no plaintext behind.
    fn discard(&mut self);
}

impl OutBuf for Vec<u8> {
    fn sized(&mut self, len: usize) -> &mut [u8] {
        // Only growth is zero-filled; the rest is overwritten by the caller.
        self.resize(len, 0);
        self
    }

    fn discard(&mut self) {
        self.fill(0);
        self.clear();
    }
}

/// A reply buffer and how much of it holds the read.
struct SliceOut<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl OutBuf for SliceOut<'_> {
    fn sized(&mut self, len: usize) -> &mut [u8] {
        self.len = len.min(self.buf.len());
        &mut self.buf[..self.len]
    }

    fn discard(&mut self) {
        self.buf[..self.len].fill(0);
        self.len = 0;
    }
}

/// Counts a read as being decrypted while alive.
struct Busy<'a> {
    count: &'a std::sync::atomic::AtomicUsize,
    /// Reads that were being decrypted when this one started.
    others: usize,
}

impl<'a> Busy<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        let others = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self { count, others }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One chunk to open, and where its wanted plaintext goes.
struct Job<'a> {
    loc: ChunkLoc,
    sealed: &'a [u8],
    /// Bytes of the chunk's plaintext before the wanted part.
    skip: usize,
    dest: &'a mut [u8],
}

impl Job<'_> {
    fn run(self, keys: &ImageKeys) -> Result<(), FsError> {
        let fail = |_| FsError::ChunkAuth { index: self.loc.index };
        if self.skip == 0 && self.dest.len() as u64 == self.loc.plain_len {
            open_chunk_into(keys, self.loc.index, self.sealed, self.dest).map_err(fail)
        } else {
            let mut tmp = vec![0u8; self.loc.plain_len as usize];
            open_chunk_into(keys, self.loc.index, self.sealed, &mut tmp).map_err(fail)?;
            self.dest.copy_from_slice(&tmp[self.skip..self.skip + self.dest.len()]);
            Ok(())
        }
    }
}
