//! `cinfer-mkimage convert`: a seed-style legacy image (LUKS2 aes-xts-plain64 + ext4, made as in
//! `encfs/tests/fixtures/make-luks2.sh`) into the authenticated v1 format, checked with `verify` and by reading
//! the new image back through the format API.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../../encfs/tests/fixtures/legacy_fixture.rs"]
mod legacy_fixture;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use encfs::format::{EntryKind, ModelKey, TAG_LEN, open_chunk_into};
use legacy_fixture::{Node, disk_tree, make};
use mkimage::image_file::ImageFile;

fn mkimage(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cinfer-mkimage"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn root_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("root: ").map(str::to_owned))
        .unwrap()
}

/// The tree of a v1 image, every file decrypted chunk by chunk.
fn v1_tree(image: &Path, key: &ModelKey) -> BTreeMap<Vec<u8>, Node> {
    let img = ImageFile::open(image).unwrap();
    let (opened, keys) = img.open_with_key(key).unwrap();
    let cs = opened.header.chunk_size;
    let mut out = BTreeMap::new();
    for (i, e) in opened.index.entries.iter().enumerate().skip(1) {
        let path = opened.index.path_of(i).into_bytes();
        let node = match &e.kind {
            EntryKind::Dir => Node::Dir(e.mode),
            EntryKind::Symlink { target } => Node::Symlink(target.clone()),
            EntryKind::File { size, .. } => {
                let fl = opened.layout.file(i).unwrap();
                let mut data = Vec::new();
                for n in 0..fl.chunk_count {
                    let loc = fl.chunk(n, cs);
                    let mut sealed = vec![0u8; loc.sealed_len as usize];
                    img.file.read_exact_at(&mut sealed, loc.offset).unwrap();
                    let mut plain = vec![0u8; sealed.len() - TAG_LEN];
                    open_chunk_into(&keys, loc.index, &sealed, &mut plain).unwrap();
                    data.extend_from_slice(&plain);
                }
                assert_eq!(data.len() as u64, *size);
                Node::File(e.mode, data)
            }
        };
        out.insert(path, node);
    }
    out
}

#[test]
fn convert_round_trip_is_byte_exact() {
    for sector in [4096, 512] {
        let fx = make(sector, "pbkdf2", None);
        let d = fx.dir.path();
        let o = mkimage(
            &[
                "convert",
                "legacy.img",
                "-o",
                "new.img",
                "--key-file",
                "key.bin",
                "--new-key-file",
                "new.key",
            ],
            d,
        );
        assert!(o.status.success(), "{}", text(&o));
        let root = root_line(&o);
        assert_eq!(root.len(), 64);

        let v = mkimage(&["verify", "new.img", "--key-file", "new.key"], d);
        assert!(v.status.success(), "{}", text(&v));
        assert_eq!(root_line(&v), root);

        let key = mkimage::keyfile::read(&d.join("new.key")).unwrap().key;
        let got = v1_tree(&d.join("new.img"), &key);
        let want = disk_tree(&fx.src);
        assert_eq!(got, want, "sector size {sector}");
        assert!(!got.contains_key(b"lost+found".as_slice()));
    }
}

#[test]
fn convert_with_the_wrong_key_fails_and_writes_nothing() {
    let fx = make(4096, "pbkdf2", None);
    let d = fx.dir.path();
    std::fs::write(d.join("wrong.bin"), [7u8; 32]).unwrap();
    let o = mkimage(
        &[
            "convert",
            "legacy.img",
            "-o",
            "new.img",
            "--key-file",
            "wrong.bin",
            "--new-key-file",
            "new.key",
        ],
        d,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("no keyslot opened with this key"), "{}", text(&o));
    assert!(!d.join("new.img").exists());
}

#[test]
fn convert_refuses_a_corrupt_file_by_path_and_leaves_no_output() {
    let fx = make(4096, "pbkdf2", Some("/weights/big.bin"));
    let d = fx.dir.path();
    let o = mkimage(
        &[
            "convert",
            "legacy.img",
            "-o",
            "new.img",
            "--key-file",
            "key.bin",
            "--new-key-file",
            "new.key",
        ],
        d,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("/weights/big.bin"), "{}", text(&o));
    let leftovers: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("new.img"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
