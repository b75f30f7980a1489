//! Property tests and frozen vectors for the image format (no FUSE), and an independent reader of the format
//! written from docs/FORMAT.md in Python (`format_v1_reader.py`), run on the frozen vector and on fresh images.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use encfs::format::{
    EntryKind, FormatError, HEADER_LEN, Header, ImageKeys, MemNode, ModelKey, OpenedImage, build_image, open_chunk_into,
};
use encfs::testing::{Content, TreeBuilder};
use proptest::prelude::*;

/// Opens an in-memory image and returns it with its keys.
fn open(img: &[u8], key: &ModelKey) -> Result<(OpenedImage, ImageKeys), FormatError> {
    let header: &[u8; HEADER_LEN] = img[..HEADER_LEN].try_into().unwrap();
    let h = Header::decode(header)?;
    let idx = img.get(h.index_offset as usize..).ok_or(FormatError::LengthMismatch {
        expected: h.image_len(),
        actual: img.len() as u64,
    })?;
    let idx = &idx[..idx.len().min(h.index_len as usize)];
    OpenedImage::open(header, idx, key, None, Some(img.len() as u64))
}

/// Reads `[offset, offset+len)` of file entry `entry` by opening the covering chunks.
fn read(
    img: &[u8],
    o: &OpenedImage,
    keys: &ImageKeys,
    entry: usize,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, FormatError> {
    let cs = o.header.chunk_size;
    let fl = o.layout.file(entry).unwrap();
    let mut out = Vec::new();
    for n in fl.chunks_covering(offset, len, cs) {
        let loc = fl.chunk(n, cs);
        let mut plain = vec![0u8; loc.plain_len as usize];
        open_chunk_into(
            keys,
            loc.index,
            &img[loc.offset as usize..(loc.offset + loc.sealed_len) as usize],
            &mut plain,
        )?;
        let from = offset.saturating_sub(loc.file_offset) as usize;
        let to = ((offset + len).min(loc.file_offset + loc.plain_len) - loc.file_offset) as usize;
        out.extend_from_slice(&plain[from..to]);
    }
    Ok(out)
}

/// Content of file entry `i` read whole.
fn content(img: &[u8], o: &OpenedImage, keys: &ImageKeys, i: usize) -> Vec<u8> {
    let size = o.layout.file(i).unwrap().size;
    read(img, o, keys, i, 0, size).unwrap()
}

fn tree() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = "[a-z]{1,6}";
    let path = prop::collection::vec(name, 1..4).prop_map(|p| p.join("/"));
    let data = prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..10_000),
        (0usize..3, any::<u8>()).prop_map(|(n, b)| vec![b; 4096 * n + 1]),
    ];
    prop::collection::btree_map(path, data, 1..12).prop_map(|m| m.into_iter().collect())
}

/// Keeps only paths that are not a prefix directory of another path (a path cannot be a file and a directory).
fn files_only(t: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    let all: Vec<String> = t.iter().map(|(p, _)| p.clone()).collect();
    t.into_iter()
        .filter(|(p, _)| !all.iter().any(|q| q.starts_with(&format!("{p}/"))))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn any_tree_round_trips_and_random_reads_match(t in tree(), cs_shift in 12u32..15, reads in prop::collection::vec((any::<u64>(), 0u64..20_000), 1..8)) {
        let t = files_only(t);
        let key = ModelKey::new([3; 32]);
        let cs = 1u32 << cs_shift;
        let files: Vec<(&str, u32, MemNode)> = t.iter().map(|(p, d)| (p.as_str(), 0o644, MemNode::File(d.clone()))).collect();
        let img = build_image(&files, &key, [9; 32], cs, "k").unwrap();
        let (o, keys) = open(&img, &key).unwrap();
        for (path, data) in &t {
            let i = (0..o.index.entries.len()).find(|&i| o.index.path_of(i) == *path).unwrap();
            prop_assert_eq!(&content(&img, &o, &keys, i), data);
            for (off, len) in &reads {
                let off = if data.is_empty() { 0 } else { off % (data.len() as u64 + 1) };
                let got = read(&img, &o, &keys, i, off, *len).unwrap();
                let end = (off + len).min(data.len() as u64) as usize;
                prop_assert_eq!(&got[..], &data[off as usize..end]);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parsers(bytes in prop::collection::vec(any::<u8>(), 0..6000)) {
        let mut h = [0u8; HEADER_LEN];
        let n = bytes.len().min(HEADER_LEN);
        h[..n].copy_from_slice(&bytes[..n]);
        let _ = Header::decode(&h);
        let _ = encfs::format::Index::decode(&bytes);
    }

    #[test]
    fn any_single_byte_flip_is_refused_or_detected(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let key = ModelKey::new([5; 32]);
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7) as u8).collect();
        let files = [("a/b", 0o644, MemNode::File(data.clone())), ("c", 0o600, MemNode::File(b"xyz".to_vec()))];
        let mut img = build_image(&files, &key, [1; 32], 4096, "k").unwrap();
        let p = pos.index(img.len());
        img[p] ^= 1 << bit;
        // Either the image is refused at open, or some read fails, and no read ever returns wrong bytes.
        if let Ok((o, keys)) = open(&img, &key) {
            for (i, e) in o.index.entries.iter().enumerate() {
                if let EntryKind::File { size, .. } = e.kind {
                    let want: &[u8] = if o.index.path_of(i) == "a/b" { &data } else { b"xyz" };
                    for n in o.layout.file(i).map(|f| 0..f.chunk_count).unwrap() {
                        let start = n * 4096;
                        if let Ok(got) = read(&img, &o, &keys, i, start, 4096) {
                            prop_assert_eq!(&got[..], &want[start as usize..(start + 4096).min(size) as usize]);
                        }
                    }
                }
            }
            prop_assert!(p >= HEADER_LEN && (p as u64) < o.header.index_offset, "flip at {p} outside the data region went unnoticed");
        }
    }
}

#[test]
fn wrong_key_is_named_as_such() {
    let img = build_image(
        &[("f", 0o644, MemNode::File(vec![1; 10]))],
        &ModelKey::new([1; 32]),
        [2; 32],
        4096,
        "k",
    )
    .unwrap();
    let e = open(&img, &ModelKey::new([9; 32])).unwrap_err();
    assert!(matches!(e, FormatError::WrongKey), "{e}");
    assert!(e.to_string().contains("wrong key"));
}

#[test]
fn chunks_swapped_or_spliced_from_another_image_fail() {
    let key = ModelKey::new([1; 32]);
    let data: Vec<u8> = (0..3 * 4096).map(|i| i as u8).collect();
    let files = [("f", 0o644, MemNode::File(data))];
    let a = build_image(&files, &key, [2; 32], 4096, "k").unwrap();
    let b = build_image(&files, &key, [3; 32], 4096, "k").unwrap();
    let (o, keys) = open(&a, &key).unwrap();
    let fl = *o.layout.file(1).unwrap();
    let (c0, c1) = (fl.chunk(0, 4096), fl.chunk(1, 4096));
    let r0 = c0.offset as usize..(c0.offset + c0.sealed_len) as usize;
    let r1 = c1.offset as usize..(c1.offset + c1.sealed_len) as usize;
    // Swap chunks 0 and 1.
    let mut swapped = a.clone();
    let (x, y) = (a[r0.clone()].to_vec(), a[r1.clone()].to_vec());
    swapped[r0.clone()].copy_from_slice(&y);
    swapped[r1].copy_from_slice(&x);
    assert!(matches!(
        read(&swapped, &o, &keys, 1, 0, 10),
        Err(FormatError::ChunkAuthFailed { index: 0 })
    ));
    assert!(matches!(
        read(&swapped, &o, &keys, 1, 4096, 10),
        Err(FormatError::ChunkAuthFailed { index: 1 })
    ));
    assert!(read(&swapped, &o, &keys, 1, 8192, 10).is_ok());
    // Splice chunk 0 of image b (same key, same content, same position) into image a.
    let mut spliced = a;
    spliced[r0.clone()].copy_from_slice(&b[r0]);
    assert!(matches!(
        read(&spliced, &o, &keys, 1, 0, 10),
        Err(FormatError::ChunkAuthFailed { index: 0 })
    ));
}

#[test]
fn truncated_or_extended_images_are_refused() {
    let key = ModelKey::new([1; 32]);
    let img = build_image(&[("f", 0o644, MemNode::File(vec![1; 5000]))], &key, [2; 32], 4096, "k").unwrap();
    assert!(matches!(
        open(&img[..img.len() - 1], &key),
        Err(FormatError::Truncated { what: "index", .. })
    ));
    let mut longer = img;
    longer.extend_from_slice(b"garbage");
    assert!(matches!(open(&longer, &key), Err(FormatError::LengthMismatch { .. })));
}

#[test]
fn root_pin_is_enforced() {
    let key = ModelKey::new([1; 32]);
    let img = build_image(&[("f", 0o644, MemNode::File(vec![1; 10]))], &key, [2; 32], 4096, "k").unwrap();
    let (o, _) = open(&img, &key).unwrap();
    let header: &[u8; HEADER_LEN] = img[..HEADER_LEN].try_into().unwrap();
    let idx = &img[o.header.index_offset as usize..];
    assert!(OpenedImage::open(header, idx, &key, Some(&o.root), None).is_ok());
    let mut other = o.root;
    other[0] ^= 1;
    let e = OpenedImage::open(header, idx, &key, Some(&other), None).unwrap_err();
    assert!(e.to_string().contains("root digest mismatch"), "{e}");
}

// ---- frozen vectors -------------------------------------------------------------------------------------------

const VECTOR_KEY: [u8; 32] = *b"cinfer test vector key, public!!";
const VECTOR_ID: [u8; 32] = [0xA5; 32];

fn vector_tree() -> Vec<(&'static str, u32, MemNode)> {
    let model: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    vec![
        (
            "densenet/config.pbtxt",
            0o644,
            MemNode::File(b"name: \"densenet\"\nplatform: \"onnxruntime_onnx\"\n".to_vec()),
        ),
        ("densenet/1/model.onnx", 0o644, MemNode::File(model)),
        ("densenet/labels.txt", 0o600, MemNode::File(Vec::new())),
        ("densenet/latest", 0o777, MemNode::Symlink(b"1".to_vec())),
        ("empty", 0o700, MemNode::Dir),
    ]
}

fn vector_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name)
}

#[test]
fn frozen_vector_decodes_and_the_encoder_has_not_drifted() {
    let built = build_image(
        &vector_tree(),
        &ModelKey::new(VECTOR_KEY),
        VECTOR_ID,
        4096,
        "file:vector.key",
    )
    .unwrap();
    if std::env::var_os("CINFER_UPDATE_VECTORS").is_some() {
        std::fs::write(vector_path("v1-small.img"), &built).unwrap();
        let (o, _) = open(&built, &ModelKey::new(VECTOR_KEY)).unwrap();
        std::fs::write(vector_path("v1-small.root"), format!("{}\n", hex::encode(o.root))).unwrap();
        panic!(
            "CINFER_UPDATE_VECTORS is set: rewrote tests/vectors/v1-small.img and .root; a format change needs a new \
             format version: review, then run again without it"
        );
    }
    let frozen = std::fs::read(vector_path("v1-small.img")).unwrap();
    assert!(
        frozen == built,
        "the encoder's output differs from the frozen vector tests/vectors/v1-small.img"
    );
    let (o, keys) = open(&frozen, &ModelKey::new(VECTOR_KEY)).unwrap();
    let expected_root = std::fs::read_to_string(vector_path("v1-small.root")).unwrap();
    assert_eq!(hex::encode(o.root), expected_root.trim());
    for (path, mode, node) in vector_tree() {
        let i = (0..o.index.entries.len())
            .find(|&i| o.index.path_of(i) == path)
            .unwrap();
        assert_eq!(o.index.entries[i].mode, mode);
        match node {
            MemNode::File(data) => assert_eq!(content(&frozen, &o, &keys, i), data),
            MemNode::Symlink(t) => assert_eq!(o.index.entries[i].kind, EntryKind::Symlink { target: t }),
            MemNode::Dir => assert_eq!(o.index.entries[i].kind, EntryKind::Dir),
        }
    }
}

// ---- an independent reader -----------------------------------------------------------------------------------
//
// `format_v1_reader.py` is written from docs/FORMAT.md alone, in Python with `cryptography` (the test venv), and
// shares no code with `encfs::format`: what the vector freezes is the spec, not this implementation.

/// What the spec reader says of one entry.
#[derive(Debug, PartialEq, Eq)]
enum SpecEntry {
    Dir { mode: u32 },
    File { mode: u32, content: Vec<u8> },
    Symlink { target: Vec<u8> },
}

/// The spec reader's view of an image: (root hex, header fields as JSON, entries by path).
struct SpecImage {
    root: String,
    json: serde_json::Value,
    entries: std::collections::BTreeMap<Vec<u8>, SpecEntry>,
}

/// Runs the spec reader on `image` with `key` (and the root pin, if given): its image, or its refusal.
fn spec_read(image: &[u8], key: &[u8; 32], pin: Option<&str>) -> Result<SpecImage, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image");
    std::fs::write(&path, image).unwrap();
    let python = deploy::local::env::python().unwrap();
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(vector_path("../format_v1_reader.py"))
        .arg(&path)
        .arg(hex::encode(key));
    if let Some(pin) = pin {
        cmd.arg(pin);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (bash scripts/pyenv.sh makes the venv)", python.display()));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => {}
        Some(2) => return Err(stderr.trim().to_owned()),
        _ => panic!("the spec reader failed: {stderr}"),
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = |v: &serde_json::Value| hex::decode(v.as_str().unwrap()).unwrap();
    let mut entries = std::collections::BTreeMap::new();
    for e in json["entries"].as_array().unwrap() {
        let mode = e["mode"].as_u64().unwrap() as u32;
        let entry = match e["kind"].as_str().unwrap() {
            "dir" => SpecEntry::Dir { mode },
            "file" => {
                let content = bytes(&e["content"]);
                assert_eq!(e["size"].as_u64().unwrap(), content.len() as u64);
                SpecEntry::File { mode, content }
            }
            "symlink" => SpecEntry::Symlink {
                target: bytes(&e["target"]),
            },
            other => panic!("kind {other}"),
        };
        assert!(entries.insert(bytes(&e["path"]), entry).is_none(), "{e}");
    }
    Ok(SpecImage {
        root: json["root"].as_str().unwrap().to_owned(),
        json,
        entries,
    })
}

/// The entries a tree of files, symlinks and directories (with their modes) must show: those, their parent
/// directories (0755) and the root.
fn expected_entries(tree: &[(&[u8], u32, MemNode)]) -> std::collections::BTreeMap<Vec<u8>, SpecEntry> {
    let mut want = std::collections::BTreeMap::new();
    want.insert(Vec::new(), SpecEntry::Dir { mode: 0o755 });
    for (path, mode, node) in tree {
        for (i, _) in path.iter().enumerate().filter(|(_, b)| **b == b'/') {
            want.entry(path[..i].to_vec()).or_insert(SpecEntry::Dir { mode: 0o755 });
        }
        let entry = match node {
            MemNode::Dir => SpecEntry::Dir { mode: *mode },
            MemNode::File(content) => SpecEntry::File {
                mode: *mode,
                content: content.clone(),
            },
            MemNode::Symlink(target) => SpecEntry::Symlink { target: target.clone() },
        };
        want.insert(path.to_vec(), entry);
    }
    want
}

#[test]
fn the_frozen_vector_reads_byte_exact_with_a_reader_written_from_the_spec() {
    let frozen = std::fs::read(vector_path("v1-small.img")).unwrap();
    let root = std::fs::read_to_string(vector_path("v1-small.root")).unwrap();
    let spec = spec_read(&frozen, &VECTOR_KEY, Some(root.trim())).unwrap();
    assert_eq!(spec.root, root.trim());
    assert_eq!(spec.json["image_id"], hex::encode(VECTOR_ID));
    assert_eq!(spec.json["chunk_size"], 4096);
    // model.onnx: 5 chunks of 4096 bytes; config.pbtxt: 1; labels.txt (empty): none.
    assert_eq!(spec.json["chunk_count"], 6);
    assert_eq!(spec.json["key_id"], "file:vector.key");
    assert_eq!(spec.json["extensions"], serde_json::json!([]));
    let tree: Vec<(&[u8], u32, MemNode)> = vector_tree()
        .into_iter()
        .map(|(p, mode, node)| (p.as_bytes(), mode, node))
        .collect();
    assert!(
        spec.entries == expected_entries(&tree),
        "{:#?}",
        spec.entries
            .keys()
            .map(|k| String::from_utf8_lossy(k))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_freshly_built_image_reads_byte_exact_with_the_reader_written_from_the_spec() {
    let cs = 64 << 10;
    let pattern = |n: usize, seed: u8| -> Vec<u8> { (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect() };
    let tree: Vec<(&[u8], u32, MemNode)> = vec![
        (b"weights/shard-0.bin", 0o644, MemNode::File(pattern(3 * cs + 17, 1))),
        (b"weights/shard-1.bin", 0o640, MemNode::File(pattern(cs, 2))),
        (b"weights/one-byte", 0o644, MemNode::File(vec![0x5a])),
        (b"weights/empty", 0o600, MemNode::File(Vec::new())),
        (
            b"config/model.json",
            0o644,
            MemNode::File(b"{\"layers\": 12}\n".to_vec()),
        ),
        (b"config/caf\xe9 name", 0o444, MemNode::File(pattern(cs - 1, 3))),
        (b"run.sh", 0o750, MemNode::File(b"#!/bin/sh\nexec model\n".to_vec())),
        (b"latest", 0o777, MemNode::Symlink(b"weights/shard-0.bin".to_vec())),
        (b"empty/dir", 0o755, MemNode::Dir),
    ];
    let mut builder = TreeBuilder::new();
    for (path, mode, node) in &tree {
        match node {
            MemNode::File(c) => builder.file_with_mode(path, Content::Bytes(c.clone()), *mode),
            MemNode::Symlink(t) => builder.symlink(path, t),
            MemNode::Dir => builder.dir(path),
        };
    }
    let key = ModelKey::generate();
    let mut image = Vec::new();
    let built = builder.write_image(&mut image, &key, cs as u32).unwrap();
    let spec = spec_read(&image, key.expose(), Some(&hex::encode(built.root))).unwrap();
    assert_eq!(spec.root, hex::encode(built.root));
    assert_eq!(spec.json["chunk_size"], cs);
    assert_eq!(spec.json["chunk_count"], 4 + 1 + 1 + 1 + 1 + 1);
    assert!(spec.entries == expected_entries(&tree), "{:#?}", spec.entries.keys());
}

#[test]
fn the_spec_reader_refuses_what_the_spec_forbids() {
    // So that its passing the images above means something: it makes the checks FORMAT.md §8 lists.
    let frozen = std::fs::read(vector_path("v1-small.img")).unwrap();
    let refused = |image: &[u8], key: &[u8; 32], pin: Option<&str>| spec_read(image, key, pin).err().unwrap();
    let flip = |at: usize| {
        let mut b = frozen.clone();
        b[at] ^= 0x01;
        b
    };
    assert_eq!(refused(&frozen, &[7; 32], None), "refused: wrong key");
    assert_eq!(
        refused(&frozen, &VECTOR_KEY, Some(&"00".repeat(32))),
        "refused: root digest mismatch"
    );
    assert_eq!(refused(&flip(0), &VECTOR_KEY, None), "refused: bad magic");
    assert_eq!(
        refused(&flip(4000), &VECTOR_KEY, None),
        "refused: non-zero header padding"
    );
    // The chunk count is covered by the index's associated data (the whole header).
    assert_eq!(
        refused(&flip(90), &VECTOR_KEY, None),
        "refused: index authentication failed"
    );
    assert_eq!(
        refused(&flip(frozen.len() - 20), &VECTOR_KEY, None),
        "refused: index authentication failed"
    );
    // The first file in index order is densenet/1/model.onnx: global chunks 0..5 from offset 4096.
    assert_eq!(
        refused(&flip(4096 + 4112 + 100), &VECTOR_KEY, None),
        "refused: chunk 1 failed authentication"
    );
    let mut longer = frozen.clone();
    longer.push(0);
    assert_eq!(refused(&longer, &VECTOR_KEY, None), "refused: image length mismatch");
}
