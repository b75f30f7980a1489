//! `inspect`: header facts without the key; with it, the file listing.

use std::fmt::Write as _;
use std::path::Path;

use encfs::format::{EntryKind, ModelKey};

use crate::image_file::{ImageFile, ImageFileError};

/// Describes the image at `path`; with `key`, also lists every entry. Returns the text to print.
pub fn inspect(path: &Path, key: Option<&ModelKey>) -> Result<String, ImageFileError> {
    let img = ImageFile::open(path)?;
    let h = &img.header;
    let mut s = String::new();
    let _ = writeln!(s, "image:      {}", path.display());
    let _ = writeln!(s, "format:     cinfer image v{}", encfs::format::VERSION);
    let _ = writeln!(s, "length:     {} bytes (header declares {})", img.len, h.image_len());
    let _ = writeln!(s, "cipher:     AES-256-GCM-SIV, keys by HKDF-SHA256");
    let _ = writeln!(s, "chunk size: {} bytes", h.chunk_size);
    let _ = writeln!(s, "chunks:     {}", h.chunk_count);
    let _ = writeln!(s, "image id:   {}", hex::encode(h.image_id));
    let _ = writeln!(s, "key id:     {}", h.key_id);
    let _ = writeln!(
        s,
        "index:      {} bytes at offset {} (encrypted)",
        h.index_len, h.index_offset
    );
    let _ = writeln!(s, "root:       {}", hex::encode(img.root()?));
    if let Some(key) = key {
        let (opened, _) = img.open_with_key(key)?;
        let idx = &opened.index;
        let (mut files, mut dirs, mut links, mut bytes) = (0u64, 0u64, 0u64, 0u64);
        let mut listing = String::new();
        for (i, e) in idx.entries.iter().enumerate() {
            let (t, size, extra) = match &e.kind {
                EntryKind::Dir => {
                    dirs += 1;
                    ('d', 0, String::new())
                }
                EntryKind::File { size, sha256 } => {
                    files += 1;
                    bytes += size;
                    ('-', *size, format!("  sha256:{}", hex::encode(sha256)))
                }
                EntryKind::Symlink { target } => {
                    links += 1;
                    (
                        'l',
                        target.len() as u64,
                        format!(" -> {}", String::from_utf8_lossy(target)),
                    )
                }
            };
            let path = if i == 0 {
                "/".to_owned()
            } else {
                format!("/{}", idx.path_of(i))
            };
            let _ = writeln!(listing, "{t}{} {size:>14}  {path}{extra}", mode_string(e.mode));
        }
        let _ = writeln!(
            s,
            "entries:    {files} files, {dirs} directories, {links} symlinks, {bytes} bytes"
        );
        s.push_str(&listing);
    }
    Ok(s)
}

fn mode_string(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}
