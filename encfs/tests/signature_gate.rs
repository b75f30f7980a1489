//! The mount-time signature gate: images whose content matches their embedded OpenSSF model signature mount;
//! any mismatch (content, manifest, signer, missing signature) refuses the mount and names what failed. Checked
//! on the library (`encfs::gate` over an in-memory source) and through real FUSE mounts of the binary.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "fixtures/signed_image.rs"]
mod signed_image;

use std::path::Path;
use std::process::{Command, Output};

use signed_image::{OTHER, SIGNER, Sign, image};

use encfs::format::ModelKey;
use encfs::fs::{EncFs, EncFsConfig};
use encfs::gate::{self, GateError};
use encfs::signature::{self, SignatureError, SigningKey};
use encfs::source::{BlobKey, MemSource};

fn verifying(pem: &str) -> signature::VerifyingKey {
    SigningKey::from_pem(pem, None).unwrap().verifying_key()
}

/// Opens `img` from memory and runs the gate.
fn gate_on(img: Vec<u8>, key: &ModelKey, signer: &str, mode: gate::VerifyMode) -> Result<(), GateError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let src = MemSource::new();
    src.put(BlobKey::new("img"), img);
    let fs = rt
        .block_on(EncFs::open(src, BlobKey::new("img"), key, None, EncFsConfig::default()))
        .unwrap();
    gate::run(&fs, &verifying(signer), mode, rt.handle()).map(|_| ())
}

#[test]
fn gate_passes_an_image_whose_content_matches_its_signature() {
    let key = ModelKey::generate();
    gate_on(image(&key, Sign::Exact), &key, SIGNER, gate::VerifyMode::Full).unwrap();
    gate_on(image(&key, Sign::Exact), &key, SIGNER, gate::VerifyMode::Manifest).unwrap();
}

#[test]
fn gate_refuses_each_mismatch_and_names_the_file() {
    let key = ModelKey::generate();
    let full = gate::VerifyMode::Full;
    let e = gate_on(image(&key, Sign::None), &key, SIGNER, full).unwrap_err();
    assert!(matches!(e, GateError::Signature(SignatureError::NotSigned)), "{e}");
    let e = gate_on(image(&key, Sign::Exact), &key, OTHER, full).unwrap_err();
    assert!(
        matches!(e, GateError::Signature(SignatureError::KeyMismatch { .. })),
        "{e}"
    );
    let e = gate_on(image(&key, Sign::WrongDigest), &key, SIGNER, full).unwrap_err();
    assert!(
        e.to_string().contains("1/model.onnx") && e.to_string().contains("content differs"),
        "{e}"
    );
    let e = gate_on(image(&key, Sign::WithoutLabels), &key, SIGNER, full).unwrap_err();
    assert!(
        e.to_string().contains("labels.txt") && e.to_string().contains("extra"),
        "{e}"
    );
    // The signature matches the index, but the sealed content does not hash to the index digest: only the full
    // content pass catches it; the manifest mode (documented trade-off) does not read content.
    let e = gate_on(image(&key, Sign::LyingIndex), &key, SIGNER, full).unwrap_err();
    assert!(
        matches!(&e, GateError::ContentMismatch { path, .. } if path == "1/model.onnx"),
        "{e}"
    );
    gate_on(image(&key, Sign::LyingIndex), &key, SIGNER, gate::VerifyMode::Manifest).unwrap();
}

fn encfs(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cinfer-encfs"))
        .args(args)
        .current_dir(cwd)
        .env_remove("CINFER_ENCFS_SIGNER_KEY")
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

/// Real FUSE mounts of the binary: a matching image mounts and serves its files; a lying one is refused before
/// anything is visible, naming the file.
#[test]
fn mount_with_signer_key_refuses_mismatching_content_and_mounts_matching() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let key = ModelKey::generate();
    std::fs::write(p.join("model.key"), key.expose()).unwrap();
    std::fs::write(p.join("signer.pub.pem"), verifying(SIGNER).to_pem()).unwrap();
    std::fs::write(p.join("good.img"), image(&key, Sign::Exact)).unwrap();
    std::fs::write(p.join("lying.img"), image(&key, Sign::LyingIndex)).unwrap();
    std::fs::write(p.join("extra.img"), image(&key, Sign::WithoutLabels)).unwrap();
    std::fs::create_dir(p.join("mnt")).unwrap();
    let mount = |img: &str, extra: &[&str]| {
        let mut args = vec![
            "mount",
            img,
            "mnt",
            "--key-file",
            "model.key",
            "--signer-key",
            "signer.pub.pem",
        ];
        args.extend_from_slice(extra);
        encfs(&args, p)
    };

    for (img, needle) in [("lying.img", "1/model.onnx"), ("extra.img", "labels.txt")] {
        let o = mount(img, &[]);
        assert!(!o.status.success(), "{img} mounted:\n{}", text(&o));
        assert!(
            text(&o).contains(needle),
            "{img}: the refusal must name {needle}:\n{}",
            text(&o)
        );
        assert_eq!(
            std::fs::read_dir(p.join("mnt")).unwrap().count(),
            0,
            "nothing may be visible"
        );
    }

    let o = mount("good.img", &[]);
    assert!(o.status.success(), "{}", text(&o));
    let served = std::fs::read(p.join("mnt/1/model.onnx"));
    let unmounted = encfs(&["unmount", "mnt"], p);
    assert!(unmounted.status.success(), "{}", text(&unmounted));
    let expected: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    assert!(served.unwrap() == expected, "served content differs");

    // --verify manifest mounts the lying image: it trusts the index digests (the key owner built it).
    let o = mount("lying.img", &["--verify", "manifest"]);
    assert!(o.status.success(), "{}", text(&o));
    let unmounted = encfs(&["unmount", "mnt"], p);
    assert!(unmounted.status.success(), "{}", text(&unmounted));
}
