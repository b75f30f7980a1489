//! The index: the directory tree with names, modes, sizes, symlinks and per-file SHA-256 digests. It is stored
//! sealed, so names and sizes are not visible without the key.

use std::collections::HashSet;

use super::FormatError;
use super::codec::{Reader, Writer};

/// Version of the index encoding inside a v1 image.
const INDEX_VERSION: u32 = 1;
/// Longest allowed entry name (bytes), as on Linux.
pub const MAX_NAME_LEN: usize = 255;
/// Longest allowed symlink target (bytes), as on Linux.
pub const MAX_SYMLINK_LEN: usize = 4095;
/// Fewest bytes one encoded entry occupies; bounds allocation when decoding hostile input.
const MIN_ENTRY_LEN: usize = 8 + 1 + 4 + 8 + 4 + 2;

const KIND_DIR: u8 = 1;
const KIND_FILE: u8 = 2;
const KIND_SYMLINK: u8 = 3;

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory; its children are the entries whose `parent` is this entry.
    Dir,
    /// A regular file; its chunks follow from its size and position (see [`super::Layout`]).
    File {
        /// Size in bytes.
        size: u64,
        /// SHA-256 of the plaintext content, recorded by the builder.
        sha256: [u8; 32],
    },
    /// A symbolic link (the target is stored, never followed by the reader).
    Symlink {
        /// The link target, as bytes.
        target: Vec<u8>,
    },
}

/// One node of the tree. Entry 0 is the root directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Index of the parent directory entry (0 for the root itself and its children).
    pub parent: u64,
    /// Name within the parent (bytes; empty only for the root).
    pub name: Vec<u8>,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Modification time: seconds since the Unix epoch.
    pub mtime: i64,
    /// Modification time: nanoseconds.
    pub mtime_nsec: u32,
    /// What the entry is.
    pub kind: EntryKind,
}

/// An extension record in the index, for later additions (e.g. an embedded signature).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    /// Extension type.
    pub kind: u16,
    /// A reader that does not know a critical extension must refuse the image.
    pub critical: bool,
    /// Extension payload.
    pub data: Vec<u8>,
}

/// Known extension types (none are defined in v1; later versions of the tools add them).
const KNOWN_EXTENSIONS: &[u16] = &[];

/// The decoded index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    /// All entries; entry 0 is the root; every entry's parent comes before it.
    pub entries: Vec<Entry>,
    /// Extension records.
    pub extensions: Vec<Extension>,
}

impl Index {
    /// Encodes the index (the plaintext that gets sealed).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64 + self.entries.len() * 80);
        v.put_u32(INDEX_VERSION);
        v.put_u32(0);
        v.put_u64(self.entries.len() as u64);
        for e in &self.entries {
            v.put_u64(e.parent);
            v.put_u8(match e.kind {
                EntryKind::Dir => KIND_DIR,
                EntryKind::File { .. } => KIND_FILE,
                EntryKind::Symlink { .. } => KIND_SYMLINK,
            });
            v.put_u32(e.mode);
            v.put_i64(e.mtime);
            v.put_u32(e.mtime_nsec);
            v.put_u16(e.name.len() as u16);
            v.extend_from_slice(&e.name);
            match &e.kind {
                EntryKind::Dir => {}
                EntryKind::File { size, sha256 } => {
                    v.put_u64(*size);
                    v.extend_from_slice(sha256);
                }
                EntryKind::Symlink { target } => {
                    v.put_u16(target.len() as u16);
                    v.extend_from_slice(target);
                }
            }
        }
        v.put_u32(self.extensions.len() as u32);
        for x in &self.extensions {
            v.put_u16(x.kind);
            v.put_u8(u8::from(x.critical));
            v.put_u32(x.data.len() as u32);
            v.extend_from_slice(&x.data);
        }
        v
    }

    /// Decodes and validates an index: structure, names, tree shape, no duplicate names, no trailing bytes.
    pub fn decode(buf: &[u8]) -> Result<Self, FormatError> {
        let bad = |d: String| FormatError::corrupt("index", d);
        let mut r = Reader::new(buf, "index");
        let version = r.u32()?;
        if version != INDEX_VERSION {
            return Err(bad(format!("unknown index version {version}")));
        }
        let flags = r.u32()?;
        if flags != 0 {
            return Err(bad(format!("unknown index flags {flags:#x}")));
        }
        let count = r.u64()?;
        if count == 0 {
            return Err(bad("no root entry".into()));
        }
        if count > (r.remaining().len() / MIN_ENTRY_LEN) as u64 {
            return Err(bad(format!("entry count {count} exceeds what the index can hold")));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(count as usize);
        let mut names: HashSet<(u64, &[u8])> = HashSet::with_capacity(count as usize);
        for i in 0..count {
            let parent = r.u64()?;
            let kind = r.u8()?;
            let mode = r.u32()?;
            let mtime = r.i64()?;
            let mtime_nsec = r.u32()?;
            let name_len = r.u16()? as usize;
            let name = r.take(name_len)?;
            let kind = match kind {
                KIND_DIR => EntryKind::Dir,
                KIND_FILE => EntryKind::File {
                    size: r.u64()?,
                    sha256: r.array()?,
                },
                KIND_SYMLINK => {
                    let len = r.u16()? as usize;
                    let target = r.take(len)?;
                    if target.is_empty() || len > MAX_SYMLINK_LEN || target.contains(&0) {
                        return Err(bad(format!("entry {i}: invalid symlink target")));
                    }
                    EntryKind::Symlink {
                        target: target.to_vec(),
                    }
                }
                k => return Err(bad(format!("entry {i}: unknown kind {k}"))),
            };
            if mode > 0o7777 {
                return Err(bad(format!("entry {i}: mode {mode:#o} has bits beyond 0o7777")));
            }
            if mtime_nsec >= 1_000_000_000 {
                return Err(bad(format!("entry {i}: nanoseconds out of range")));
            }
            if i == 0 {
                if parent != 0 || !name.is_empty() || kind != EntryKind::Dir {
                    return Err(bad("entry 0 must be the root directory".into()));
                }
            } else {
                if parent >= i {
                    return Err(bad(format!("entry {i}: parent {parent} does not come before it")));
                }
                if entries[parent as usize].kind != EntryKind::Dir {
                    return Err(bad(format!("entry {i}: parent {parent} is not a directory")));
                }
                validate_name(name).map_err(|d| bad(format!("entry {i}: {d}")))?;
                if !names.insert((parent, name)) {
                    return Err(bad(format!("entry {i}: duplicate name in directory {parent}")));
                }
            }
            entries.push(Entry {
                parent,
                name: name.to_vec(),
                mode,
                mtime,
                mtime_nsec,
                kind,
            });
        }
        let ext_count = r.u32()?;
        let mut extensions = Vec::new();
        for _ in 0..ext_count {
            let kind = r.u16()?;
            let critical = match r.u8()? {
                0 => false,
                1 => true,
                c => return Err(bad(format!("extension {kind}: bad critical flag {c}"))),
            };
            let len = r.u32()? as usize;
            let data = r.take(len)?.to_vec();
            if critical && !KNOWN_EXTENSIONS.contains(&kind) {
                return Err(bad(format!("unknown critical extension {kind}")));
            }
            extensions.push(Extension { kind, critical, data });
        }
        if !r.remaining().is_empty() {
            return Err(bad(format!("{} trailing bytes", r.remaining().len())));
        }
        Ok(Self { entries, extensions })
    }

    /// Path of entry `i` from the root, components joined with `/` (for messages).
    pub fn path_of(&self, mut i: usize) -> String {
        let mut parts = Vec::new();
        while i != 0 {
            let Some(e) = self.entries.get(i) else { break };
            parts.push(String::from_utf8_lossy(&e.name).into_owned());
            i = e.parent as usize;
        }
        parts.reverse();
        parts.join("/")
    }
}

fn validate_name(name: &[u8]) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("name longer than {MAX_NAME_LEN} bytes"));
    }
    if name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err("name is '.', '..' or contains '/' or NUL".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn dir(parent: u64, name: &str) -> Entry {
        Entry {
            parent,
            name: name.as_bytes().to_vec(),
            mode: 0o755,
            mtime: 1,
            mtime_nsec: 0,
            kind: EntryKind::Dir,
        }
    }

    #[test]
    fn index_rejects_duplicate_names_and_bad_parents() {
        let root = dir(0, "");
        let idx = Index {
            entries: vec![root.clone(), dir(0, "a"), dir(0, "a")],
            extensions: vec![],
        };
        assert!(
            Index::decode(&idx.encode())
                .unwrap_err()
                .to_string()
                .contains("duplicate")
        );
        let idx = Index {
            entries: vec![root.clone(), dir(2, "a"), dir(0, "b")],
            extensions: vec![],
        };
        assert!(Index::decode(&idx.encode()).unwrap_err().to_string().contains("parent"));
        let idx = Index {
            entries: vec![root, dir(0, "..")],
            extensions: vec![],
        };
        assert!(Index::decode(&idx.encode()).is_err());
    }

    #[test]
    fn index_rejects_unknown_critical_extension_but_keeps_others() {
        let mut idx = Index {
            entries: vec![dir(0, "")],
            extensions: vec![],
        };
        idx.extensions.push(Extension {
            kind: 900,
            critical: false,
            data: vec![1, 2],
        });
        assert_eq!(Index::decode(&idx.encode()).unwrap(), idx);
        idx.extensions.push(Extension {
            kind: 901,
            critical: true,
            data: vec![],
        });
        assert!(
            Index::decode(&idx.encode())
                .unwrap_err()
                .to_string()
                .contains("critical")
        );
    }

    #[test]
    fn index_rejects_trailing_bytes() {
        let mut b = Index {
            entries: vec![dir(0, "")],
            extensions: vec![],
        }
        .encode();
        b.push(0);
        assert!(Index::decode(&b).unwrap_err().to_string().contains("trailing"));
    }
}
