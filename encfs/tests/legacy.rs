//! Legacy LUKS2 + ext4 images through `encfs::legacy`, on fixtures made the way the seed makes them
//! (`fixtures/make-luks2.sh`: real `cryptsetup luksFormat`, `mkfs.ext4 -d`, Python AES-XTS for the sectors), and
//! on images encrypted by cryptsetup itself (offline `reencrypt --encrypt`, no device-mapper).

#![allow(clippy::unwrap_used)]

#[path = "fixtures/legacy_fixture.rs"]
mod legacy_fixture;

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Arc;

use encfs::legacy::luks2::HeaderCopy;
use encfs::legacy::xts::IvMode;
use encfs::legacy::{DecryptedDevice, Ext4Volume, LegacyError, LegacyImage, ReadAt, SegmentParams, TreeKind};
use legacy_fixture::{Fixture, Node, bytes, cryptsetup, disk_tree, make, run};

/// The tree of the ext4 volume, as [`Node`]s by path relative to the root (lost+found left out), every file read
/// through [`encfs::legacy::Ext4File::read_at`] in odd-sized pieces.
fn ext4_tree(fs: &Ext4Volume) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    for e in fs.walk().unwrap().into_iter().skip(1) {
        let rel = e.path[1..].to_vec();
        if rel.starts_with(b"lost+found") {
            continue;
        }
        let mode = u32::from(e.mode);
        let node = match e.kind {
            TreeKind::Dir => Node::Dir(mode),
            TreeKind::Symlink { target } => Node::Symlink(target),
            TreeKind::File { size } => {
                let mut f = fs.open(&e.path).unwrap();
                assert_eq!(f.size(), size);
                let mut data = vec![0u8; size as usize];
                let mut at = 0usize;
                while at < data.len() {
                    let end = (at + 7919).min(data.len());
                    let n = f.read_at(at as u64, &mut data[at..end]).unwrap();
                    assert_eq!(n, end - at);
                    at = end;
                }
                // Past the end: nothing.
                assert_eq!(f.read_at(size, &mut [0u8; 10]).unwrap(), 0);
                Node::File(mode, data)
            }
            other => panic!("unexpected {other:?} at {}", String::from_utf8_lossy(&e.path)),
        };
        out.insert(rel, node);
    }
    out
}

fn open(fx: &Fixture) -> LegacyImage<File> {
    let key = std::fs::read(&fx.key).unwrap();
    LegacyImage::open(File::open(&fx.image).unwrap(), &key).unwrap()
}

fn assert_matches_source(fx: &Fixture, img: &LegacyImage<File>) {
    let want = disk_tree(&fx.src);
    let got = ext4_tree(&img.ext4().unwrap());
    assert_eq!(got.len(), want.len(), "entries: {:?}", got.keys().collect::<Vec<_>>());
    for (path, node) in &want {
        assert_eq!(got.get(path), Some(node), "{}", String::from_utf8_lossy(path));
    }
}

#[test]
fn seed_image_4096_sectors_reads_every_file_byte_exact() {
    let fx = make(4096, "pbkdf2", None);
    let img = open(&fx);
    assert_eq!(img.header().copy, HeaderCopy::Primary);
    assert_eq!(img.device().params().sector_size, 4096);
    assert_eq!(img.device().params().iv_mode, IvMode::Sectors512);
    assert_matches_source(&fx, &img);
}

#[test]
fn seed_image_512_sectors_reads_every_file_byte_exact() {
    let fx = make(512, "pbkdf2", None);
    let img = open(&fx);
    assert_eq!(img.device().params().sector_size, 512);
    assert_matches_source(&fx, &img);
}

#[test]
fn argon2id_keyslot_opens() {
    let fx = make(4096, "argon2id", None);
    let img = open(&fx);
    let kdf = &img.header().metadata.keyslots[&0].kdf.kind;
    assert_eq!(kdf, "argon2id");
    assert_matches_source(&fx, &img);
}

#[test]
fn ext4_views_on_several_threads_share_one_device() {
    let fx = make(4096, "pbkdf2", None);
    let img = Arc::new(open(&fx));
    let want = disk_tree(&fx.src);
    std::thread::scope(|s| {
        for _ in 0..3 {
            let img = img.clone();
            let want = &want;
            s.spawn(move || assert_eq!(ext4_tree(&img.ext4().unwrap()).len(), want.len()));
        }
    });
}

#[test]
fn wrong_key_is_refused_by_name() {
    let fx = make(4096, "pbkdf2", None);
    let err = LegacyImage::open(File::open(&fx.image).unwrap(), &bytes(32, 12345)).unwrap_err();
    assert!(matches!(err, LegacyError::WrongKey), "{err:?}");
    assert_eq!(err.to_string(), "no keyslot opened with this key");
    // A key one byte short is a different passphrase too.
    let mut key = std::fs::read(&fx.key).unwrap();
    key.pop();
    let err = LegacyImage::open(File::open(&fx.image).unwrap(), &key).unwrap_err();
    assert_eq!(err.to_string(), "no keyslot opened with this key");
}

#[test]
fn corrupt_primary_header_opens_from_the_secondary_copy() {
    let fx = make(4096, "pbkdf2", None);
    let mut data = std::fs::read(&fx.image).unwrap();
    data[4096 + 50] ^= 0x5a; // inside the primary JSON area
    std::fs::write(&fx.image, &data).unwrap();
    let img = open(&fx);
    assert_eq!(img.header().copy, HeaderCopy::Secondary);
    assert_matches_source(&fx, &img);

    // The binary part of the primary smashed too (magic gone): still the secondary.
    data[..4096].fill(0);
    std::fs::write(&fx.image, &data).unwrap();
    assert_eq!(open(&fx).header().copy, HeaderCopy::Secondary);

    // Both copies bad: a clear error, no panic.
    let hdr_size = 0x4000;
    data[hdr_size + 4096 + 50] ^= 0x5a;
    std::fs::write(&fx.image, &data).unwrap();
    let key = std::fs::read(&fx.key).unwrap();
    let err = LegacyImage::open(File::open(&fx.image).unwrap(), &key).unwrap_err();
    assert!(
        matches!(err, LegacyError::NoValidHeader { .. } | LegacyError::NotLuks),
        "{err}"
    );
}

#[test]
fn corrupt_secondary_header_is_ignored() {
    let fx = make(512, "pbkdf2", None);
    let mut data = std::fs::read(&fx.image).unwrap();
    data[0x4000 + 4096 + 10] ^= 1;
    std::fs::write(&fx.image, &data).unwrap();
    let img = open(&fx);
    assert_eq!(img.header().copy, HeaderCopy::Primary);
    assert_matches_source(&fx, &img);
}

#[test]
fn luks1_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (img, key) = (dir.path().join("l1.img"), dir.path().join("key"));
    std::fs::write(&key, bytes(32, 1)).unwrap();
    File::create(&img).unwrap().set_len(8 << 20).unwrap();
    run(cryptsetup()
        .args([
            "luksFormat",
            "--type",
            "luks1",
            "--batch-mode",
            "--pbkdf-force-iterations",
            "1000",
        ])
        .arg("--key-file")
        .arg(&key)
        .arg(&img));
    let err = LegacyImage::open(File::open(&img).unwrap(), &bytes(32, 1)).unwrap_err();
    assert!(matches!(err, LegacyError::Luks1), "{err:?}");
    assert!(err.to_string().contains("LUKS1"), "{err}");
}

#[test]
fn unsupported_cipher_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (img, key) = (dir.path().join("cbc.img"), dir.path().join("key"));
    std::fs::write(&key, bytes(32, 1)).unwrap();
    File::create(&img).unwrap().set_len(20 << 20).unwrap();
    run(cryptsetup()
        .args([
            "luksFormat",
            "--type",
            "luks2",
            "--batch-mode",
            "--cipher",
            "aes-cbc-essiv:sha256",
        ])
        .args([
            "--key-size",
            "256",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ])
        .arg("--key-file")
        .arg(&key)
        .arg(&img));
    let err = LegacyImage::open(File::open(&img).unwrap(), &bytes(32, 1)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported cipher aes-cbc-essiv:sha256: only aes-xts-plain64 is supported"
    );
}

#[test]
fn not_luks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("plain.img");
    std::fs::write(&img, bytes(1 << 20, 3)).unwrap();
    let err = LegacyImage::open(File::open(&img).unwrap(), b"k").unwrap_err();
    assert!(matches!(err, LegacyError::NotLuks), "{err:?}");
}

#[test]
fn corrupt_inode_fails_that_file_only() {
    let fx = make(4096, "pbkdf2", Some("/weights/big.bin"));
    let img = open(&fx);
    let fs = img.ext4().unwrap();
    let tree = fs.walk().unwrap();
    let bad = tree.iter().find(|e| e.path == b"/weights/big.bin").unwrap();
    let failed = match &bad.kind {
        TreeKind::Unreadable { .. } => true,
        TreeKind::File { .. } => fs
            .open(&bad.path)
            .and_then(|mut f| f.read_at(0, &mut [0u8; 65536]))
            .is_err(),
        other => panic!("unexpected {other:?}"),
    };
    assert!(failed, "a damaged inode must not read as data: {bad:?}");
    assert!(matches!(fs.read(b"/weights/big.bin"), Err(LegacyError::Ext4 { .. })));
    // Everything else still reads byte-exact.
    let want = disk_tree(&fx.src);
    for (path, node) in want {
        if path == b"weights/big.bin" {
            continue;
        }
        if let Node::File(_, data) = node {
            let mut abs = b"/".to_vec();
            abs.extend_from_slice(&path);
            assert_eq!(fs.read(&abs).unwrap(), data, "{}", String::from_utf8_lossy(&path));
        }
    }
}

#[test]
fn random_bit_flips_in_ciphertext_never_panic() {
    let fx = make(4096, "pbkdf2", None);
    let clean = std::fs::read(&fx.image).unwrap();
    let key = std::fs::read(&fx.key).unwrap();
    let seg = 16 << 20;
    for round in 0..12u64 {
        let mut data = clean.clone();
        // Flip bytes in the first MiB of the filesystem (superblock, descriptors, inode tables, directories).
        for (i, b) in bytes(6, round).iter().enumerate() {
            let at = seg + (usize::from(*b) * 4096 + i * 64 + round as usize * 4096 * 7) % (1 << 20);
            data[at] ^= 0xff;
        }
        let img = LegacyImage::open(data, &key).unwrap();
        if let Ok(fs) = img.ext4()
            && let Ok(tree) = fs.walk()
        {
            for e in tree {
                if let TreeKind::File { .. } = e.kind {
                    let _ = fs.read(&e.path);
                }
            }
        }
    }
}

/// cryptsetup's own offline encryption (`reencrypt --encrypt`, userspace crypto, no device-mapper) of an ext4
/// made with `mkfs.ext4 -d`: an IV-numbering check that does not depend on our reading of dm-crypt.
#[test]
fn image_encrypted_by_cryptsetup_itself_reads_byte_exact() {
    for sector in ["4096", "512"] {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        legacy_fixture::make_source(&src);
        let (img, key) = (dir.path().join("re.img"), dir.path().join("key"));
        std::fs::write(&key, bytes(32, 7)).unwrap();
        // 32 MiB of filesystem in a 64 MiB file: reencrypt moves the data behind a 16 MiB header and needs the
        // space it reduces the device by (32 MiB) to be free at the end.
        File::create(&img).unwrap().set_len(64 << 20).unwrap();
        run(std::process::Command::new("mkfs.ext4")
            .env(
                "PATH",
                format!("{}:/sbin:/usr/sbin", std::env::var("PATH").unwrap_or_default()),
            )
            .args(["-q", "-F", "-b", "4096", "-d"])
            .arg(&src)
            .arg(&img)
            .arg("32M"));
        run(cryptsetup()
            .args([
                "reencrypt",
                "--encrypt",
                "--batch-mode",
                "--type",
                "luks2",
                "--reduce-device-size",
                "32M",
            ])
            .args([
                "--sector-size",
                sector,
                "--cipher",
                "aes-xts-plain64",
                "--key-size",
                "512",
            ])
            .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file"])
            .arg(&key)
            .arg(&img));
        let image = LegacyImage::open(File::open(&img).unwrap(), &bytes(32, 7)).unwrap();
        assert_eq!(image.device().params().sector_size.to_string(), sector);
        let want = disk_tree(&src);
        let got = ext4_tree(&image.ext4().unwrap());
        assert_eq!(got, want, "sector size {sector}");
    }
}

/// `iv_large_sectors` (plain dm-crypt, BitLocker): IVs count whole sectors. Python encrypts, we decrypt.
#[test]
fn iv_large_sectors_matches_an_independent_implementation() {
    let python = legacy_fixture::python();
    let dir = tempfile::tempdir().unwrap();
    let (plain_path, ct_path) = (dir.path().join("plain"), dir.path().join("ct"));
    let plain = bytes(16 * 4096, 11);
    std::fs::write(&plain_path, &plain).unwrap();
    let key: Vec<u8> = bytes(64, 5);
    let code = r#"
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
key = bytes.fromhex(sys.argv[1]); data = open(sys.argv[2], 'rb').read(); ss = int(sys.argv[4]); large = sys.argv[5] == '1'
out = b''
for i in range(len(data) // ss):
    iv = i if large else i * ss // 512
    e = Cipher(algorithms.AES(key), modes.XTS(iv.to_bytes(16, 'little'))).encryptor()
    out += e.update(data[i*ss:(i+1)*ss]) + e.finalize()
open(sys.argv[3], 'wb').write(out)
"#;
    for (ss, large) in [(4096u32, true), (1024, true), (4096, false)] {
        run(std::process::Command::new(&python)
            .args(["-c", code, &hex::encode(&key)])
            .arg(&plain_path)
            .arg(&ct_path)
            .args([ss.to_string(), if large { "1" } else { "0" }.to_string()]));
        let params = SegmentParams {
            offset: 0,
            size: plain.len() as u64,
            sector_size: ss,
            iv_mode: if large {
                IvMode::LargeSectors
            } else {
                IvMode::Sectors512
            },
            iv_offset: 0,
        };
        let dev = DecryptedDevice::new(File::open(&ct_path).unwrap(), &key, params).unwrap();
        let mut got = vec![0u8; plain.len()];
        dev.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(got, plain, "sector {ss}, large {large}");
        let other = SegmentParams {
            iv_mode: if large {
                IvMode::Sectors512
            } else {
                IvMode::LargeSectors
            },
            ..params
        };
        let dev = DecryptedDevice::new(File::open(&ct_path).unwrap(), &key, other).unwrap();
        dev.read_exact_at(&mut got, 0).unwrap();
        assert_ne!(got, plain, "the other IV mode must not decrypt (sector {ss})");
    }
}
