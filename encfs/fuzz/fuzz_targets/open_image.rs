//! Opening a whole image: the input is the image (header region, then the sealed index), opened with a fixed
//! key. Also mutates a valid image (built once) by XOR-ing the input into it, so the seal checks are reached
//! with a well-formed header: no mutation may ever be accepted.
#![no_main]

use std::sync::OnceLock;

use encfs::format::{EntryKind, HEADER_LEN, Header, ImageKeys, Index, ModelKey, OpenedImage, seal_chunk, seal_index};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [7; 32];

/// A valid image with one 5000-byte file in 4096-byte chunks: header | 2 sealed chunks | sealed index.
fn valid_image() -> &'static Vec<u8> {
    static IMG: OnceLock<Vec<u8>> = OnceLock::new();
    IMG.get_or_init(|| {
        let key = ModelKey::new(KEY);
        let image_id = [9u8; 32];
        let keys = ImageKeys::derive(&key, &image_id);
        let entries = vec![
            encfs::format::Entry {
                parent: 0,
                name: Vec::new(),
                mode: 0o755,
                mtime: 0,
                mtime_nsec: 0,
                kind: EntryKind::Dir,
            },
            encfs::format::Entry {
                parent: 0,
                name: b"f".to_vec(),
                mode: 0o644,
                mtime: 0,
                mtime_nsec: 0,
                kind: EntryKind::File {
                    size: 5000,
                    sha256: [0; 32],
                },
            },
        ];
        let index = Index {
            entries,
            extensions: Vec::new(),
        };
        let data_len = 5000 + 2 * 16;
        let header = Header {
            image_id,
            chunk_size: 4096,
            key_check: keys.key_check(),
            chunk_count: 2,
            index_offset: (HEADER_LEN + data_len) as u64,
            index_len: index.encode().len() as u64 + 16,
            key_id: "fuzz".into(),
        };
        let hb = header.encode().expect("valid header");
        let mut img = hb.to_vec();
        for (i, len) in [(0u64, 4096usize), (1, 904)] {
            let mut c = vec![0x5a; len];
            seal_chunk(&keys, i, &mut c);
            img.extend_from_slice(&c);
        }
        img.extend_from_slice(&seal_index(&keys, &hb, &index));
        img
    })
}

fn open(img: &[u8]) -> bool {
    if img.len() < HEADER_LEN {
        return false;
    }
    let (h, rest) = img.split_at(HEADER_LEN);
    let h: &[u8; HEADER_LEN] = h.try_into().expect("split at HEADER_LEN");
    let key = ModelKey::new(KEY);
    // The index is whatever follows the data region the header declares (as a reader would fetch it).
    let Ok(header) = Header::decode(h) else { return false };
    let start = (header.index_offset as usize)
        .saturating_sub(HEADER_LEN)
        .min(rest.len());
    OpenedImage::open(h, &rest[start..], &key, None, Some(img.len() as u64)).is_ok()
}

fuzz_target!(|data: &[u8]| {
    let _ = open(data);
    let base = valid_image();
    assert!(open(base), "the unmodified image must open");
    if data.iter().any(|&b| b != 0) {
        let mut img = base.clone();
        for (i, &b) in data.iter().enumerate() {
            let at = i % img.len();
            img[at] ^= b;
        }
        // Bytes flipped only inside the chunk region do not affect opening (chunks are checked on read).
        let chunk_region = HEADER_LEN..HEADER_LEN + 5000 + 32;
        let touched_outside = img
            .iter()
            .zip(base.iter())
            .enumerate()
            .any(|(i, (a, b))| a != b && !chunk_region.contains(&i));
        if touched_outside {
            assert!(!open(&img), "a modified header or index was accepted");
        }
    }
});
