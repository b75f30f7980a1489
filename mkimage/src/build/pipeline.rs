//! The build pipeline: walk, lay out, run the data pass ([`super::seal`]), then seal the index and header.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::seal::SealPass;
use super::{BuildError, BuildOptions, Tree, Walked, walk};
use encfs::format::{
    EntryKind, HEADER_LEN, Header, IMAGE_ID_LEN, ImageKeys, Index, Layout, ModelKey, TAG_LEN, root_digest, seal_index,
};
use encfs::signature::{self, ManifestOptions};

/// What a finished build produced.
#[derive(Clone, Debug)]
pub struct BuildSummary {
    /// Root digest of the image (pin it with `mount --expect-root`).
    pub root: [u8; 32],
    /// Image length in bytes.
    pub image_len: u64,
    /// Regular files.
    pub files: u64,
    /// Directories, including the root.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Plaintext bytes of all files.
    pub bytes: u64,
    /// The embedded OMS signature bundle, when the build signed.
    pub signature: Option<Vec<u8>>,
}

/// The model directory on disk, as a [`Tree`].
#[derive(Clone, Copy, Debug)]
pub struct DiskTree<'a>(pub &'a Path);

impl Tree for DiskTree<'_> {
    fn walk(&self) -> Result<Vec<Walked>, BuildError> {
        walk(self.0)
    }

    fn open(&self, path: &Path, size: u64) -> Result<Box<dyn Read + '_>, BuildError> {
        let rerr = |source| BuildError::Read {
            path: path.to_owned(),
            source,
        };
        // O_NOFOLLOW: the walk saw a regular file; refuse a symlink swapped in since.
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(rerr)?;
        if f.metadata().map_err(rerr)?.len() != size {
            return Err(BuildError::Changed(path.to_owned()));
        }
        Ok(Box::new(f))
    }
}

/// Builds the image described by `opts` with `key` from the model directory `opts.src`. `progress` is called with
/// the number of plaintext bytes read so far.
pub fn build(opts: &BuildOptions, key: &ModelKey, progress: &(dyn Fn(u64) + Sync)) -> Result<BuildSummary, BuildError> {
    build_tree(&DiskTree(&opts.src), opts, key, progress)
}

/// Builds the image described by `opts` (whose `src` is not used) from `tree` with `key`.
pub fn build_tree(
    tree: &dyn Tree,
    opts: &BuildOptions,
    key: &ModelKey,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<BuildSummary, BuildError> {
    if !opts.force && std::fs::symlink_metadata(&opts.output).is_ok() {
        return Err(BuildError::OutputExists(opts.output.clone()));
    }
    let mut walked = tree.walk()?;
    let mut image_id = [0u8; IMAGE_ID_LEN];
    rand::fill(&mut image_id);
    let keys = ImageKeys::derive(key, &image_id);

    // The layout follows from the sizes alone: compute it now, so workers can write chunks anywhere.
    let cs = u64::from(opts.chunk_size);
    let (mut chunk_count, mut data_end, mut bytes) = (0u64, HEADER_LEN as u64, 0u64);
    for w in &walked {
        if let EntryKind::File { size, .. } = w.entry.kind {
            let n = size.div_ceil(cs);
            chunk_count += n;
            data_end += size + n * TAG_LEN as u64;
            bytes += size;
        }
    }
    let mut header = Header {
        image_id,
        chunk_size: opts.chunk_size,
        key_check: keys.key_check(),
        chunk_count,
        index_offset: data_end,
        index_len: 0,
        key_id: opts.key_id.clone(),
    };
    header.encode()?; // validates chunk size and key id before any work
    let mut index = Index {
        entries: walked.iter().map(|w| w.entry.clone()).collect(),
        extensions: Vec::new(),
    };
    let layout = Layout::compute(&header, &index)?;
    if opts.sign_key.is_some() {
        // Refuse what cannot be signed (symlinks unless allowed, non-UTF-8 names) before the long pass.
        signature::index_files(&index, opts.sign_allow_symlinks, &[])?;
    }

    let tmp = TempImage::create(&opts.output)?;
    let sealers = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.threads
    };
    let digests = SealPass {
        keys: &keys,
        walked: &walked,
        layout: &layout,
        chunk_size: opts.chunk_size as usize,
        sealers,
        write_at: &|buf, offset| tmp.write_at(buf, offset),
        progress,
    }
    .run(tree)?;
    for (i, digest) in digests {
        if let EntryKind::File { sha256, .. } = &mut walked[i].entry.kind {
            *sha256 = digest;
        }
        index.entries[i] = walked[i].entry.clone();
    }
    // Sign the digests this pass computed (the data was read once), and embed the bundle before the index is
    // sealed, so the root digest covers it.
    let bundle = match &opts.sign_key {
        Some(key) => {
            let files = signature::index_files(&index, opts.sign_allow_symlinks, &[])?;
            let name = std::fs::canonicalize(&opts.src)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            let mopts = ManifestOptions {
                ignore_paths: Vec::new(),
                allow_symlinks: opts.sign_allow_symlinks,
            };
            let bundle = signature::sign(key, &name, &files, &mopts);
            index.extensions.push(signature::signature_extension(bundle.clone()));
            Some(bundle)
        }
        None => None,
    };

    // The index length is known before sealing (encoding + tag), so the header can be final first.
    let encoded_len = index.encode().len() as u64;
    header.index_len = encoded_len + TAG_LEN as u64;
    let header_bytes = header.encode()?;
    let sealed_index = seal_index(&keys, &header_bytes, &index);
    debug_assert_eq!(sealed_index.len() as u64, header.index_len);
    tmp.write_at(&sealed_index, header.index_offset)?;
    tmp.write_at(&header_bytes, 0)?;
    let image_len = header.image_len();
    tmp.commit(&opts.output)?;

    let count = |f: fn(&EntryKind) -> bool| walked.iter().filter(|w| f(&w.entry.kind)).count() as u64;
    Ok(BuildSummary {
        root: root_digest(&header_bytes, &sealed_index),
        image_len,
        files: count(|k| matches!(k, EntryKind::File { .. })),
        dirs: count(|k| matches!(k, EntryKind::Dir)),
        symlinks: count(|k| matches!(k, EntryKind::Symlink { .. })),
        bytes,
        signature: bundle,
    })
}

/// The image under construction: a temporary file next to the output, removed on drop unless committed.
struct TempImage {
    file: File,
    path: PathBuf,
    committed: bool,
}

impl TempImage {
    fn create(output: &Path) -> Result<Self, BuildError> {
        let name = output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let mut suffix = [0u8; 6];
        rand::fill(&mut suffix);
        let path = output.with_file_name(format!(".{name}.tmp-{}", hex::encode(suffix)));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(|source| BuildError::Write {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            file,
            path,
            committed: false,
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BuildError> {
        self.file.write_all_at(buf, offset).map_err(|source| BuildError::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// Flushes to disk and renames into place (then syncs the directory, so the rename is durable).
    fn commit(mut self, output: &Path) -> Result<(), BuildError> {
        let werr = |path: &Path| {
            let path = path.to_owned();
            move |source| BuildError::Write { path, source }
        };
        self.file.sync_all().map_err(werr(&self.path))?;
        std::fs::rename(&self.path, output).map_err(werr(output))?;
        self.committed = true;
        let dir = output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all()).map_err(werr(dir))?;
        Ok(())
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
