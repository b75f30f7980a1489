//! An in-process image builder for tests (feature `testing`), so encfs tests need neither `mkimage` nor files
//! on disk for the plaintext. It uses only the public [`crate::format`] API, the same one `mkimage` uses.
//!
//! ```
//! # use encfs::testing::{Content, TreeBuilder};
//! # use encfs::format::ModelKey;
//! let key = ModelKey::generate();
//! let mut tree = TreeBuilder::new();
//! tree.file("models/a.bin", Content::Bytes(vec![1, 2, 3]));
//! tree.symlink("latest", "models/a.bin");
//! let mut image = Vec::new();
//! let built = tree.write_image(&mut image, &key, 4096).unwrap();
//! assert_eq!(built.len, image.len() as u64);
//! ```

use std::io::{self, Write};

use sha2::{Digest, Sha256};

use crate::format::{
    Entry, EntryKind, HEADER_LEN, Header, IMAGE_ID_LEN, ImageKeys, Index, ModelKey, TAG_LEN, root_digest, seal_chunk,
    seal_index,
};

/// The plaintext of a test file.
#[derive(Clone, Debug)]
pub enum Content {
    /// These bytes.
    Bytes(Vec<u8>),
    /// This many zero bytes (for huge, sparse-in-the-source files; never held in memory whole).
    Zeros(u64),
}

impl Content {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Self::Bytes(b) => b.len() as u64,
            Self::Zeros(n) => *n,
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes `[off, off + len)` (clipped to the content).
    pub fn slice(&self, off: u64, len: u64) -> Vec<u8> {
        let end = off.saturating_add(len).min(self.len());
        let off = off.min(end);
        match self {
            // INVARIANT: off <= end <= b.len().
            Self::Bytes(b) => b[off as usize..end as usize].to_vec(),
            Self::Zeros(_) => vec![0; (end - off) as usize],
        }
    }
}

/// What a built image is.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// Its root digest (what `--expect-root` pins).
    pub root: [u8; 32],
    /// Total length in bytes.
    pub len: u64,
    /// The index as written.
    pub index: Index,
}

/// Builds a tree of directories, files and symlinks, then writes it as an image.
///
/// Paths are bytes separated by `/` (so names need not be UTF-8); missing parent directories are created with
/// mode 0755. Entries keep insertion order, which is also the order of file data in the image.
#[derive(Clone, Debug)]
pub struct TreeBuilder {
    entries: Vec<Entry>,
    contents: Vec<Option<Content>>,
    mtime: i64,
}

impl Default for TreeBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TreeBuilder {
    /// A tree holding only the root directory.
    pub fn new() -> Self {
        Self {
            entries: vec![Entry {
                parent: 0,
                name: Vec::new(),
                mode: 0o755,
                mtime: 1_700_000_000,
                mtime_nsec: 0,
                kind: EntryKind::Dir,
            }],
            contents: vec![None],
            mtime: 1_700_000_000,
        }
    }

    fn find(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.entries
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, e)| e.parent == parent && e.name == name)
            .map(|(i, _)| i as u64)
    }

    /// Returns the entry number of directory `path`, creating it and its parents as needed.
    fn ensure_dir(&mut self, path: &[u8]) -> u64 {
        let mut cur = 0u64;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            cur = match self.find(cur, comp) {
                Some(i) => i,
                None => self.push(cur, comp, 0o755, EntryKind::Dir, None),
            };
        }
        cur
    }

    fn push(&mut self, parent: u64, name: &[u8], mode: u32, kind: EntryKind, content: Option<Content>) -> u64 {
        self.mtime += 1;
        self.entries.push(Entry {
            parent,
            name: name.to_vec(),
            mode,
            mtime: self.mtime,
            mtime_nsec: 123_456_789,
            kind,
        });
        self.contents.push(content);
        (self.entries.len() - 1) as u64
    }

    fn split(path: &[u8]) -> (&[u8], &[u8]) {
        match path.iter().rposition(|&b| b == b'/') {
            Some(p) => (&path[..p], &path[p + 1..]),
            None => (&[], path),
        }
    }

    /// Adds a directory (mode 0755).
    pub fn dir(&mut self, path: impl AsRef<[u8]>) -> &mut Self {
        self.ensure_dir(path.as_ref());
        self
    }

    /// Adds a regular file with mode 0644.
    pub fn file(&mut self, path: impl AsRef<[u8]>, content: Content) -> &mut Self {
        self.file_with_mode(path, content, 0o644)
    }

    /// Adds a regular file with the given permission bits.
    pub fn file_with_mode(&mut self, path: impl AsRef<[u8]>, content: Content, mode: u32) -> &mut Self {
        let (dir, name) = Self::split(path.as_ref());
        let parent = self.ensure_dir(dir);
        let kind = EntryKind::File {
            size: content.len(),
            sha256: [0; 32],
        };
        self.push(parent, name, mode, kind, Some(content));
        self
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut Self {
        let (dir, name) = Self::split(path.as_ref());
        let parent = self.ensure_dir(dir);
        let kind = EntryKind::Symlink {
            target: target.as_ref().to_vec(),
        };
        self.push(parent, name, 0o777, kind, None);
        self
    }

    /// The content of entry `i`, if it is a file.
    pub fn content(&self, i: usize) -> Option<&Content> {
        self.contents.get(i).and_then(Option::as_ref)
    }

    /// The entries as they will be indexed.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The tree as an image sealed with a fresh key, `tamper` applied to the image's bytes, opened on `rt` from
    /// memory (blob `img`): what unit tests of the filesystem's upper layers start from.
    #[cfg(feature = "fuse")]
    pub fn open_in_memory(
        &self,
        rt: &tokio::runtime::Runtime,
        chunk_size: u32,
        tamper: impl FnOnce(&mut Vec<u8>),
    ) -> io::Result<crate::fs::EncFs<crate::source::MemSource>> {
        let key = ModelKey::generate();
        let mut image = Vec::new();
        self.write_image(&mut image, &key, chunk_size)?;
        tamper(&mut image);
        let src = crate::source::MemSource::new();
        let blob = crate::source::BlobKey::new("img");
        src.put(blob.clone(), image);
        rt.block_on(crate::fs::EncFs::open(
            src,
            blob,
            &key,
            None,
            crate::fs::EncFsConfig::default(),
        ))
        .map_err(io::Error::other)
    }

    /// Writes the image: header, every file's sealed chunks in entry order, sealed index.
    pub fn write_image(&self, out: &mut impl Write, key: &ModelKey, chunk_size: u32) -> io::Result<BuiltImage> {
        self.write_image_with_id(out, key, chunk_size, rand::random::<[u8; IMAGE_ID_LEN]>())
    }

    /// As [`Self::write_image`], with a chosen image id.
    pub(crate) fn write_image_with_id(
        &self,
        out: &mut impl Write,
        key: &ModelKey,
        chunk_size: u32,
        image_id: [u8; IMAGE_ID_LEN],
    ) -> io::Result<BuiltImage> {
        self.emit(key, chunk_size, image_id, &|_| true, &mut |bytes| match bytes {
            Piece::Data(b) => out.write_all(b),
            Piece::Hole(_) => unreachable!("no holes requested"),
        })
    }

    /// Writes a *sparse* image into `file`: only the chunks (global indices) for which `keep` is true are sealed
    /// and written; the others are left as holes, which fail authentication if read. Files made of
    /// [`Content::Zeros`] get an all-zero SHA-256 in the index (the reader does not check it). This makes
    /// images with multi-GiB files cheap to build when a test reads only some of their chunks.
    pub fn write_sparse_image(
        &self,
        file: &mut std::fs::File,
        key: &ModelKey,
        chunk_size: u32,
        keep: &dyn Fn(u64) -> bool,
    ) -> io::Result<BuiltImage> {
        use std::io::{Seek, SeekFrom};
        let mut w = io::BufWriter::with_capacity(1 << 20, file);
        let built = self.emit(key, chunk_size, rand::random(), keep, &mut |piece| match piece {
            Piece::Data(b) => w.write_all(b),
            Piece::Hole(n) => w.seek(SeekFrom::Current(n as i64)).map(drop),
        })?;
        w.flush()?;
        w.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .set_len(built.len)?;
        Ok(built)
    }

    fn emit(
        &self,
        key: &ModelKey,
        chunk_size: u32,
        image_id: [u8; IMAGE_ID_LEN],
        keep: &dyn Fn(u64) -> bool,
        out: &mut dyn FnMut(Piece<'_>) -> io::Result<()>,
    ) -> io::Result<BuiltImage> {
        let cs = u64::from(chunk_size);
        let keys = ImageKeys::derive(key, &image_id);
        let mut index = Index {
            entries: self.entries.clone(),
            extensions: Vec::new(),
        };
        let mut chunk_count = 0u64;
        let mut data_len = 0u64;
        for c in self.contents.iter().flatten() {
            let n = c.len().div_ceil(cs);
            chunk_count += n;
            data_len += c.len() + n * TAG_LEN as u64;
        }
        let index_len = index.encode().len() as u64 + TAG_LEN as u64;
        let header = Header {
            image_id,
            chunk_size,
            key_check: keys.key_check(),
            chunk_count,
            index_offset: HEADER_LEN as u64 + data_len,
            index_len,
            key_id: "test:key".into(),
        };
        let hb = header.encode().map_err(io::Error::other)?;
        out(Piece::Data(&hb))?;
        let mut global = 0u64;
        let zeros = vec![0u8; chunk_size as usize];
        for (i, c) in self.contents.iter().enumerate() {
            let Some(c) = c else { continue };
            let mut sha = Sha256::new();
            let mut hashed = true;
            let mut off = 0u64;
            while off < c.len() {
                let n = cs.min(c.len() - off);
                if keep(global) {
                    let mut buf = match c {
                        // INVARIANT: off + n <= b.len().
                        Content::Bytes(b) => b[off as usize..(off + n) as usize].to_vec(),
                        Content::Zeros(_) => zeros[..n as usize].to_vec(),
                    };
                    sha.update(&buf);
                    seal_chunk(&keys, global, &mut buf);
                    out(Piece::Data(&buf))?;
                } else {
                    hashed = false;
                    out(Piece::Hole(n + TAG_LEN as u64))?;
                }
                global += 1;
                off += n;
            }
            if let EntryKind::File { sha256, .. } = &mut index.entries[i].kind {
                *sha256 = if hashed { sha.finalize().into() } else { [0; 32] };
            }
        }
        let sealed = seal_index(&keys, &hb, &index);
        assert_eq!(sealed.len() as u64, index_len, "index length changed while building");
        out(Piece::Data(&sealed))?;
        Ok(BuiltImage {
            root: root_digest(&hb, &sealed),
            len: header.image_len(),
            index,
        })
    }
}

/// What [`TreeBuilder::emit`] hands its writer.
enum Piece<'a> {
    Data(&'a [u8]),
    Hole(u64),
}
