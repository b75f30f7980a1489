//! Building a whole image in memory from a list of paths: for tests, test vectors and fuzzing seeds. The real
//! builder (`mkimage build`) streams from disk; both produce the same format through the same functions.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::{
    Entry, EntryKind, FormatError, HEADER_LEN, Header, IMAGE_ID_LEN, ImageKeys, Index, Layout, ModelKey, TAG_LEN,
    seal_chunk, seal_index,
};

/// What a path is, in an in-memory tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemNode {
    /// A directory (parents of other paths are created implicitly).
    Dir,
    /// A regular file with its content.
    File(Vec<u8>),
    /// A symlink with its target.
    Symlink(Vec<u8>),
}

#[derive(Default)]
struct Node {
    mode: u32,
    kind: Option<MemNode>,
    children: BTreeMap<Vec<u8>, Self>,
}

/// Builds an image from `(path, mode, node)` triples (paths relative, `/`-separated; missing parents are created
/// with mode 0755). Deterministic for a given image id: used for the frozen test vectors.
pub fn build_image(
    files: &[(&str, u32, MemNode)],
    key: &ModelKey,
    image_id: [u8; IMAGE_ID_LEN],
    chunk_size: u32,
    key_id: &str,
) -> Result<Vec<u8>, FormatError> {
    let mut root = Node {
        mode: 0o755,
        kind: Some(MemNode::Dir),
        children: BTreeMap::new(),
    };
    for (path, mode, node) in files {
        let mut cur = &mut root;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            cur = cur.children.entry(part.as_bytes().to_vec()).or_insert_with(|| Node {
                mode: 0o755,
                kind: Some(MemNode::Dir),
                children: BTreeMap::new(),
            });
        }
        cur.mode = *mode;
        cur.kind = Some(node.clone());
    }
    let mut entries = Vec::new();
    let mut contents: Vec<Option<Vec<u8>>> = Vec::new();
    flatten(&root, 0, Vec::new(), &mut entries, &mut contents);

    let keys = ImageKeys::derive(key, &image_id);
    let cs = u64::from(chunk_size);
    let (mut chunk_count, mut data_end) = (0u64, HEADER_LEN as u64);
    for e in &entries {
        if let EntryKind::File { size, .. } = e.kind {
            chunk_count += size.div_ceil(cs);
            data_end += size + size.div_ceil(cs) * TAG_LEN as u64;
        }
    }
    let index = Index {
        entries,
        extensions: Vec::new(),
    };
    let mut header = Header {
        image_id,
        chunk_size,
        key_check: keys.key_check(),
        chunk_count,
        index_offset: data_end,
        index_len: (index.encode().len() + TAG_LEN) as u64,
        key_id: key_id.to_owned(),
    };
    let layout = Layout::compute(&header, &index)?;
    let mut out = vec![0u8; data_end as usize];
    for (i, content) in contents.iter().enumerate() {
        let (Some(content), Some(fl)) = (content, layout.file(i)) else {
            continue;
        };
        for n in 0..fl.chunk_count {
            let loc = fl.chunk(n, chunk_size);
            let mut buf = content[loc.file_offset as usize..(loc.file_offset + loc.plain_len) as usize].to_vec();
            seal_chunk(&keys, loc.index, &mut buf);
            out[loc.offset as usize..(loc.offset + loc.sealed_len) as usize].copy_from_slice(&buf);
        }
    }
    header.index_len = (index.encode().len() + TAG_LEN) as u64;
    let header_bytes = header.encode()?;
    out[..HEADER_LEN].copy_from_slice(&header_bytes);
    out.extend_from_slice(&seal_index(&keys, &header_bytes, &index));
    Ok(out)
}

fn flatten(node: &Node, parent: u64, name: Vec<u8>, entries: &mut Vec<Entry>, contents: &mut Vec<Option<Vec<u8>>>) {
    let (kind, content) = match node.kind.as_ref().unwrap_or(&MemNode::Dir) {
        MemNode::Dir => (EntryKind::Dir, None),
        MemNode::File(data) => (
            EntryKind::File {
                size: data.len() as u64,
                sha256: Sha256::digest(data).into(),
            },
            Some(data.clone()),
        ),
        MemNode::Symlink(t) => (EntryKind::Symlink { target: t.clone() }, None),
    };
    let me = entries.len() as u64;
    entries.push(Entry {
        parent,
        name,
        mode: node.mode,
        mtime: 1_700_000_000,
        mtime_nsec: 0,
        kind,
    });
    contents.push(content);
    for (child_name, child) in &node.children {
        flatten(child, me, child_name.clone(), entries, contents);
    }
}
