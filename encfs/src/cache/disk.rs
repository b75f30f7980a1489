//! The optional on-disk **ciphertext** cache (`--cache-dir`, bounded by `--cache-dir-size`), so a restarted
//! daemon does not fetch again what it fetched before.
//!
//! Layout: `DIR/<identity>/` per blob version, where `identity` is the SHA-256 of the URL without its query,
//! the pinned ETag and the length: a replaced blob has another identity, so its stale bytes are never read
//! (and its directory is the first to go when space is needed). A blob without an ETag is not cached on disk.
//! Inside, each cache part `N` has a sparse data file `N.d` (its bytes at their offsets within the part) and a
//! metadata file `N.m` (written after the data, by rename): which [`BLOCK`]-sized blocks are present, and a
//! truncated SHA-256 of each. A block is served only if it is marked present and its digest matches; a short,
//! corrupt or unreadable file drops the whole part (counted in `cache_disk_discarded_total`) and the caller
//! fetches again. Only ciphertext ever lands here (the filesystem authenticates every byte it reads anyway).
//!
//! `DIR/<identity>/lock` is held (`flock`) while a daemon uses the identity: a second daemon on the same blob
//! and directory runs without the disk cache rather than share it, and eviction skips locked identities.
//!
//! Size: data blocks plus metadata files stay under the limit; least recently used parts go first, after
//! unlocked other identities. All calls do blocking file I/O (callers use `spawn_blocking`).
//!
//! Files: directories are created 0700 and files 0600 at creation; an existing cache directory must be a real
//! directory owned by this user and not writable by group or others (else the mount runs without the disk cache).
//! No file is opened through a symlink (`O_NOFOLLOW`) or blocks on open (`O_NONBLOCK`), and metadata is written to
//! a new file with a random name (`O_EXCL`) then renamed into place, so nothing planted in the directory is
//! written through or read as cache.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

/// Granularity of presence and checksums: 64 KiB (one plaintext chunk's worth).
pub(crate) const BLOCK: u64 = 64 << 10;

const MAGIC: &[u8; 8] = b"CIFDC1\0\0";
const SUM_LEN: usize = 16;
/// Magic, part index, part length, present mask, reserved.
const META_HEAD: usize = 8 + 4 * 8;

/// Where and how large the disk cache is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The cache directory (created if missing).
    pub dir: PathBuf,
    /// Most bytes the directory may hold (data blocks and metadata, every identity).
    pub limit: u64,
}

/// Errors opening the disk cache (the mount then runs without it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another daemon holds this blob's cache directory.
    #[error("{0} is in use by another daemon")]
    Busy(PathBuf),
    /// A cache directory others could plant files in.
    #[error("cache directory {path} {why}: not using it")]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// Opens `path` to read, never through a symlink and never blocking on open (a planted FIFO).
fn open_read(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Opens (creating, mode 0600) `path` to write, never through a symlink.
fn open_write(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Creates `path` (and missing parents) mode 0700, or accepts an existing directory only if it is not a symlink,
/// is owned by this user and is not writable by group or others: the cache must not be a place others can plant
/// files in.
fn private_dir(path: &Path) -> Result<(), DiskError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err("creating", path))?;
    let m = fs::symlink_metadata(path).map_err(io_err("checking", path))?;
    // SAFETY: geteuid cannot fail and has no preconditions.
    #[allow(unsafe_code)]
    let me = unsafe { libc::geteuid() };
    let why = if !m.is_dir() {
        Some("is not a directory (a symlink?)".to_string())
    } else if m.uid() != me {
        Some(format!("is owned by uid {}, not {me}", m.uid()))
    } else if m.mode() & 0o022 != 0 {
        Some(format!(
            "is writable by group or others (mode {:04o})",
            m.mode() & 0o7777
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(DiskError::Unsafe {
            path: path.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The directory name of one blob version.
pub fn identity(url_without_query: &str, etag: &str, len: u64) -> String {
    let mut h = Sha256::new();
    for part in [
        url_without_query.as_bytes(),
        b"\0",
        etag.as_bytes(),
        b"\0",
        &len.to_le_bytes(),
    ] {
        h.update(part);
    }
    hex::encode(&h.finalize()[..20])
}

#[derive(Debug)]
struct PartMeta {
    present: u64,
    sums: Vec<[u8; SUM_LEN]>,
    last_use: u64,
}

#[derive(Debug, Default)]
struct State {
    parts: HashMap<u64, PartMeta>,
    /// Bytes of this identity (present blocks and metadata files).
    used: u64,
    /// Bytes of other identities in the directory.
    others: u64,
    clock: u64,
}

/// One blob version's disk cache; see the module docs.
#[derive(Debug)]
pub struct DiskStore {
    root: PathBuf,
    dir: PathBuf,
    limit: u64,
    part_size: u64,
    blob_len: u64,
    _lock: File,
    state: Mutex<State>,
}

/// Outcome of a disk lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// All wanted bytes, verified, were copied.
    Hit,
    /// Some block is not on disk.
    Miss,
    /// A file was short or corrupt: the part was dropped.
    Discarded,
}

impl DiskStore {
    /// Opens (creating) the cache of blob version `identity` (of `blob_len` bytes, cut in `part_size` parts,
    /// a multiple of [`BLOCK`] of at most 64 blocks) under `cfg.dir`, loading what a previous run left.
    pub fn open(cfg: &DiskConfig, identity: &str, blob_len: u64, part_size: u64) -> Result<Self, DiskError> {
        // INVARIANT: `CachingSource::new` clamps its part size to this.
        debug_assert!(part_size.is_multiple_of(BLOCK) && part_size / BLOCK <= 64 && part_size > 0);
        let dir = cfg.dir.join(identity);
        private_dir(&cfg.dir)?;
        private_dir(&dir)?;
        let lock_path = dir.join("lock");
        let lock = open_write(&lock_path).map_err(io_err("opening", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(DiskError::Busy(dir)),
            Err(fs::TryLockError::Error(e)) => return Err(io_err("locking", &lock_path)(e)),
        }
        let store = Self {
            root: cfg.dir.clone(),
            dir,
            limit: cfg.limit,
            part_size,
            blob_len,
            _lock: lock,
            state: Mutex::new(State::default()),
        };
        store.load()?;
        store.measure_others();
        {
            let mut st = store.lock();
            store.evict(&mut st, None);
            info!(
                dir = %store.dir.display(),
                parts = st.parts.len(),
                bytes = st.used,
                others = st.others,
                "disk cache opened"
            );
        }
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn part_len(&self, part: u64) -> u64 {
        self.part_size
            .min(self.blob_len.saturating_sub(part.saturating_mul(self.part_size)))
    }

    fn blocks_in(&self, part: u64) -> u64 {
        self.part_len(part).div_ceil(BLOCK)
    }

    fn block_len(&self, part: u64, b: u64) -> u64 {
        BLOCK.min(self.part_len(part) - b * BLOCK)
    }

    fn data_path(&self, part: u64) -> PathBuf {
        self.dir.join(format!("{part}.d"))
    }

    fn meta_path(&self, part: u64) -> PathBuf {
        self.dir.join(format!("{part}.m"))
    }

    fn meta_len(&self, part: u64) -> u64 {
        (META_HEAD + SUM_LEN * self.blocks_in(part) as usize) as u64
    }

    fn present_bytes(&self, part: u64, present: u64) -> u64 {
        (0..self.blocks_in(part))
            .filter(|b| present & (1 << b) != 0)
            .map(|b| self.block_len(part, b))
            .sum()
    }

    /// Reads the metadata files a previous run left; drops any that do not fit this blob or whose data file is
    /// shorter than its last present block.
    fn load(&self) -> Result<(), DiskError> {
        let entries = fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))?;
        let mut metas: Vec<(std::time::SystemTime, u64, PartMeta)> = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.contains(".tmp") {
                let _ = fs::remove_file(e.path());
                continue;
            }
            let Some(part) = name.strip_suffix(".m").and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            match self.parse_meta(part) {
                Some(m) => {
                    let mtime = e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
                    metas.push((mtime, part, m));
                }
                None => {
                    warn!(part, dir = %self.dir.display(), "disk cache: dropping a part with bad metadata or short data");
                    self.remove_files(part);
                }
            }
        }
        // Oldest first, so the clock orders them for eviction.
        metas.sort_by_key(|(t, p, _)| (*t, *p));
        let mut st = self.lock();
        for (_, part, mut m) in metas {
            st.clock += 1;
            m.last_use = st.clock;
            st.used += self.present_bytes(part, m.present) + self.meta_len(part);
            st.parts.insert(part, m);
        }
        Ok(())
    }

    fn parse_meta(&self, part: u64) -> Option<PartMeta> {
        // At most one byte more than a metadata file of this part holds.
        let mut raw = Vec::new();
        open_read(&self.meta_path(part))
            .ok()?
            .take(self.meta_len(part) + 1)
            .read_to_end(&mut raw)
            .ok()?;
        let nblocks = self.blocks_in(part);
        if nblocks == 0 || raw.len() as u64 != self.meta_len(part) || &raw[..8] != MAGIC {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(raw[8 + 8 * i..16 + 8 * i].try_into().unwrap_or_default());
        let (p, len, present) = (word(0), word(1), word(2));
        if p != part || len != self.part_len(part) || present >> nblocks != 0 || present == 0 {
            return None;
        }
        let sums = raw[META_HEAD..]
            .chunks_exact(SUM_LEN)
            .map(|c| c.try_into().unwrap_or_default())
            .collect();
        let last = 63 - u64::from(present.leading_zeros());
        let need = last * BLOCK + self.block_len(part, last);
        let have = fs::metadata(self.data_path(part)).ok()?.len();
        (have >= need).then_some(PartMeta {
            present,
            sums,
            last_use: 0,
        })
    }

    /// Bytes of other identities' directories (their `.d` files' allocated size and `.m` files).
    fn measure_others(&self) {
        let mut others = 0;
        if let Ok(entries) = fs::read_dir(&self.root) {
            for e in entries.flatten() {
                if e.path() != self.dir && is_identity_dir(&e.path()) {
                    others += dir_bytes(&e.path());
                }
            }
        }
        self.lock().others = others;
    }

    fn remove_files(&self, part: u64) {
        let _ = fs::remove_file(self.meta_path(part));
        let _ = fs::remove_file(self.data_path(part));
    }

    /// Drops `part` from memory and disk.
    fn drop_part(&self, st: &mut State, part: u64) -> bool {
        match st.parts.remove(&part) {
            Some(m) => {
                st.used -= self.present_bytes(part, m.present) + self.meta_len(part);
                self.remove_files(part);
                true
            }
            None => false,
        }
    }

    /// Makes the total fit the limit: unlocked other identities first (least recently modified), then this
    /// identity's least recently used parts (never `keep`).
    fn evict(&self, st: &mut State, keep: Option<u64>) {
        if st.used + st.others > self.limit && st.others > 0 {
            let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&self.root)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path() != self.dir && is_identity_dir(&e.path()))
                .map(|e| {
                    (
                        e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH),
                        e.path(),
                    )
                })
                .collect();
            dirs.sort();
            for (_, d) in dirs {
                if st.used + st.others <= self.limit {
                    break;
                }
                // A directory whose lock someone holds is in use.
                let free = open_read(&d.join("lock")).map(|f| f.try_lock().is_ok()).unwrap_or(true);
                if free {
                    let bytes = dir_bytes(&d);
                    if fs::remove_dir_all(&d).is_ok() {
                        info!(dir = %d.display(), bytes, "disk cache: removed another blob version");
                        st.others = st.others.saturating_sub(bytes);
                    }
                }
            }
        }
        while st.used + st.others > self.limit {
            let victim = st
                .parts
                .iter()
                .filter(|(p, _)| Some(**p) != keep)
                .min_by_key(|(_, m)| m.last_use)
                .map(|(p, _)| *p);
            let Some(p) = victim else { break };
            self.drop_part(st, p);
        }
    }

    /// True if every block of `part` overlapping `range` (offsets within the part) is present.
    pub fn has(&self, part: u64, range: std::ops::Range<u64>) -> bool {
        let st = self.lock();
        let Some(m) = st.parts.get(&part) else { return false };
        let mask = block_mask(&range);
        m.present & mask == mask
    }

    /// Copies bytes `range` (offsets within `part`) into `out` (appended), verifying every block it touches.
    pub fn read(&self, part: u64, range: std::ops::Range<u64>, out: &mut Vec<u8>) -> Lookup {
        if range.start >= range.end || range.end > self.part_len(part) {
            return Lookup::Miss;
        }
        let first = range.start / BLOCK;
        let last = (range.end - 1) / BLOCK;
        let sums = {
            let mut st = self.lock();
            st.clock += 1;
            let now = st.clock;
            let Some(m) = st.parts.get_mut(&part) else {
                return Lookup::Miss;
            };
            let mask = block_mask(&range);
            if m.present & mask != mask {
                return Lookup::Miss;
            }
            m.last_use = now;
            m.sums[first as usize..=last as usize].to_vec()
        };
        let start = out.len();
        let span = (last * BLOCK)..(last * BLOCK + self.block_len(part, last));
        let span = first * BLOCK..span.end;
        out.resize(start + (span.end - span.start) as usize, 0);
        let ok = open_read(&self.data_path(part))
            .and_then(|f| f.read_exact_at(&mut out[start..], span.start))
            .is_ok()
            && out[start..]
                .chunks(BLOCK as usize)
                .zip(&sums)
                .all(|(block, sum)| block_sum(block) == *sum);
        if !ok {
            out.truncate(start);
            warn!(part, dir = %self.dir.display(), "disk cache: short or corrupt part, dropping it");
            let mut st = self.lock();
            self.drop_part(&mut st, part);
            return Lookup::Discarded;
        }
        // Keep only the wanted bytes.
        let skip = (range.start - span.start) as usize;
        out.drain(start..start + skip);
        out.truncate(start + (range.end - range.start) as usize);
        Lookup::Hit
    }

    /// Stores `data`, the bytes of `part` from offset `start` (a multiple of [`BLOCK`]); only whole blocks (or
    /// the part's short last block) are kept. Errors are logged and leave the cache consistent.
    pub fn write(&self, part: u64, start: u64, data: &[u8]) {
        if !start.is_multiple_of(BLOCK) || start >= self.part_len(part) {
            return;
        }
        let end = (start + data.len() as u64).min(self.part_len(part));
        let first = start / BLOCK;
        // Whole blocks only, except the part's last block, which may be short.
        let mut blocks = Vec::new();
        let mut b = first;
        while b * BLOCK < end {
            let bl = self.block_len(part, b);
            if b * BLOCK + bl > end {
                break;
            }
            blocks.push(b);
            b += 1;
        }
        if blocks.is_empty() {
            return;
        }
        let sums: Vec<[u8; SUM_LEN]> = blocks
            .iter()
            .map(|&b| {
                let s = ((b - first) * BLOCK) as usize;
                block_sum(&data[s..s + self.block_len(part, b) as usize])
            })
            .collect();
        let new_mask = blocks.iter().fold(0u64, |m, b| m | (1 << b));
        {
            let st = self.lock();
            if st.parts.get(&part).is_some_and(|m| m.present & new_mask == new_mask) {
                return;
            }
        }
        let bytes_new = blocks.iter().map(|&b| self.block_len(part, b)).sum::<u64>() + self.meta_len(part);
        if bytes_new > self.limit {
            return;
        }
        let span = (blocks.len() as u64 - 1) * BLOCK + self.block_len(part, *blocks.last().unwrap_or(&first));
        let written = open_write(&self.data_path(part)).and_then(|f| f.write_all_at(&data[..span as usize], start));
        if let Err(e) = written {
            warn!(part, "disk cache: writing data failed: {e}");
            return;
        }
        let mut st = self.lock();
        st.clock += 1;
        let now = st.clock;
        let nblocks = self.blocks_in(part) as usize;
        let fresh = !st.parts.contains_key(&part);
        let m = st.parts.entry(part).or_insert_with(|| PartMeta {
            present: 0,
            sums: vec![[0; SUM_LEN]; nblocks],
            last_use: now,
        });
        let before = m.present;
        for (b, s) in blocks.iter().zip(sums) {
            m.sums[*b as usize] = s;
        }
        m.present |= new_mask;
        m.last_use = now;
        let (present, meta) = (m.present, self.encode_meta(part, m));
        let added = self.present_bytes(part, present) - self.present_bytes(part, before)
            + if fresh { self.meta_len(part) } else { 0 };
        st.used += added;
        if let Err(e) = self.write_meta(part, &meta) {
            warn!(part, "disk cache: writing metadata failed: {e}");
            self.drop_part(&mut st, part);
            return;
        }
        debug!(part, bytes = added, "disk cache: stored");
        self.evict(&mut st, Some(part));
    }

    fn encode_meta(&self, part: u64, m: &PartMeta) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.meta_len(part) as usize);
        out.extend_from_slice(MAGIC);
        for w in [part, self.part_len(part), m.present] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&[0; 8]);
        for s in &m.sums {
            out.extend_from_slice(s);
        }
        out
    }

    fn write_meta(&self, part: u64, meta: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!("{part}.m.tmp-{:016x}", rand::random::<u64>()));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| f.write_all(meta));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, self.meta_path(part))
    }

    /// Drops every part overlapping `range` (blob offsets); true if any was held.
    pub fn discard(&self, range: std::ops::Range<u64>) -> bool {
        if range.start >= range.end {
            return false;
        }
        let mut st = self.lock();
        let mut any = false;
        for p in range.start / self.part_size..=(range.end - 1) / self.part_size {
            any |= self.drop_part(&mut st, p);
        }
        any
    }

    /// Bytes this identity holds on disk (present blocks and metadata).
    pub fn used(&self) -> u64 {
        self.lock().used
    }
}

/// True for a directory this cache made (a hex identity name, with a lock file): nothing else in the cache
/// directory is ever counted or removed.
fn is_identity_dir(p: &Path) -> bool {
    let named = p
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.len() == 40 && n.bytes().all(|b| b.is_ascii_hexdigit()));
    named && p.is_dir() && p.join("lock").is_file()
}

fn block_mask(range: &std::ops::Range<u64>) -> u64 {
    if range.start >= range.end {
        return 0;
    }
    let first = range.start / BLOCK;
    let last = (range.end - 1) / BLOCK;
    (first..=last).fold(0u64, |m, b| m | (1 << b))
}

fn block_sum(block: &[u8]) -> [u8; SUM_LEN] {
    let d = Sha256::digest(block);
    let mut out = [0u8; SUM_LEN];
    out.copy_from_slice(&d[..SUM_LEN]);
    out
}

/// Allocated bytes of the files in `dir` (sparse data files count what they hold).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn blocks_survive_a_reopen_and_corruption_or_truncation_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = DiskConfig {
            dir: tmp.path().to_path_buf(),
            limit: 64 << 20,
        };
        let blob_len = (4 << 20) + 1000;
        let part = 2 << 20;
        let blob = data(blob_len as usize, 3);
        let id = identity("http://x/b", "\"e1\"", blob_len);
        {
            let s = DiskStore::open(&cfg, &id, blob_len, part).unwrap();
            s.write(0, 0, &blob[..part as usize]);
            // The short last part, and a partial write of part 1 (blocks 1..3 only, plus a ragged tail).
            s.write(2, 0, &blob[2 * part as usize..]);
            s.write(
                1,
                BLOCK,
                &blob[(part + BLOCK) as usize..(part + 3 * BLOCK + 100) as usize],
            );
            assert!(
                DiskStore::open(&cfg, &id, blob_len, part).is_err(),
                "the lock is exclusive"
            );
        }
        let s = DiskStore::open(&cfg, &id, blob_len, part).unwrap();
        let mut out = Vec::new();
        assert_eq!(s.read(0, 100..part, &mut out), Lookup::Hit);
        assert!(out[..] == blob[100..part as usize]);
        out.clear();
        assert_eq!(s.read(2, 0..1000, &mut out), Lookup::Hit);
        assert!(out[..] == blob[2 * part as usize..]);
        out.clear();
        assert_eq!(s.read(1, BLOCK + 5..3 * BLOCK, &mut out), Lookup::Hit);
        assert!(out[..] == blob[(part + BLOCK + 5) as usize..(part + 3 * BLOCK) as usize]);
        assert_eq!(s.read(1, 0..10, &mut Vec::new()), Lookup::Miss);
        assert_eq!(
            s.read(1, 3 * BLOCK..3 * BLOCK + 1, &mut Vec::new()),
            Lookup::Miss,
            "ragged tail not kept"
        );
        // Flip one byte of part 0 on disk: the next read drops the part instead of returning it.
        let f = OpenOptions::new()
            .write(true)
            .open(tmp.path().join(&id).join("0.d"))
            .unwrap();
        f.write_all_at(&[blob[70_000] ^ 1], 70_000).unwrap();
        assert_eq!(
            s.read(0, 0..100, &mut Vec::new()),
            Lookup::Hit,
            "other blocks are still fine"
        );
        assert_eq!(s.read(0, 65_536..70_001, &mut Vec::new()), Lookup::Discarded);
        assert_eq!(s.read(0, 0..100, &mut Vec::new()), Lookup::Miss);
        drop(s);
        // Truncate part 2's data: dropped when loading.
        File::options()
            .write(true)
            .open(tmp.path().join(&id).join("2.d"))
            .unwrap()
            .set_len(10)
            .unwrap();
        let s = DiskStore::open(&cfg, &id, blob_len, part).unwrap();
        assert!(!s.has(2, 0..1));
        assert!(s.has(1, BLOCK..3 * BLOCK));
    }

    #[test]
    fn the_size_limit_holds_and_other_versions_go_first() {
        let tmp = tempfile::tempdir().unwrap();
        let part = 1 << 20;
        let blob_len = 16 << 20;
        let blob = data(blob_len as usize, 9);
        let big = DiskConfig {
            dir: tmp.path().to_path_buf(),
            limit: 64 << 20,
        };
        let old = identity("http://x/b", "\"old\"", blob_len);
        {
            let s = DiskStore::open(&big, &old, blob_len, part).unwrap();
            for p in 0..4 {
                s.write(p, 0, &blob[(p * part) as usize..((p + 1) * part) as usize]);
            }
        }
        fs::create_dir(tmp.path().join("unrelated")).unwrap();
        fs::write(tmp.path().join("unrelated/data"), vec![1u8; 1 << 20]).unwrap();
        let small = DiskConfig { limit: 5 << 20, ..big };
        let new = identity("http://x/b", "\"new\"", blob_len);
        let s = DiskStore::open(&small, &new, blob_len, part).unwrap();
        for p in 0..16 {
            s.write(p, 0, &blob[(p * part) as usize..((p + 1) * part) as usize]);
            assert!(dir_bytes(tmp.path()) <= 5 << 20 || dir_bytes(&tmp.path().join(&new)) <= 5 << 20);
        }
        assert!(!tmp.path().join(&old).exists(), "the other version was removed");
        assert!(
            tmp.path().join("unrelated").is_dir(),
            "a directory the cache did not make was removed"
        );
        assert!(s.used() <= 5 << 20, "used {}", s.used());
        assert!(dir_bytes(&tmp.path().join(&new)) <= (5 << 20) + (64 << 10));
        // The most recent parts are the ones kept.
        assert!(s.has(15, 0..part) && !s.has(0, 0..1));
    }
}
