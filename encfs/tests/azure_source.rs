//! The Azure Blob source against Azurite (npm `azurite`, started on a free loopback port with a temporary data
//! folder by `deploy::local::azurite`): upload an image with an account SAS, mount it by URL (SAS and anonymous public-container variants), read byte-exact, and
//! see a replaced blob fail with EIO.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{Fixture, pattern};
use deploy::local::azurite::{Azurite, SasOptions, account_sas};
use deploy::local::http::Body;
use encfs::testing::{Content, TreeBuilder};

/// Creates a container (public for blobs when `public`) and uploads `data` as `name`.
fn upload(az: &Azurite, container: &str, public: bool, name: &str, data: &[u8]) {
    az.create_container(container, public).unwrap();
    az.put_blob(container, name, Body::Bytes(data)).unwrap();
}

/// A SAS allowing everything (the emulator's well-known key signs it).
fn sas() -> String {
    account_sas(&SasOptions::full())
}

fn fixture() -> (Fixture, Vec<u8>) {
    let data = pattern(6 << 20, 11);
    let mut tree = TreeBuilder::new();
    tree.file("model/weights.bin", Content::Bytes(data.clone()));
    tree.file("model/config.json", Content::Bytes(b"{}".to_vec()));
    (Fixture::build(tree, 64 << 10), data)
}

fn read_all(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(p).unwrap().read_to_end(&mut v).unwrap();
    v
}

#[test]
fn azurite_sas_url_mounts_byte_exact_and_a_replaced_blob_fails_with_eio() {
    let az = Azurite::start().unwrap();
    let (fx, data) = fixture();
    let image = std::fs::read(&fx.image).unwrap();
    upload(&az, "models", false, "model.img", &image);
    let url = format!("{}?{}", az.blob_url("models", "model.img"), sas());
    let guard = fx.mount_image(Path::new(&url), &["--request-timeout", "5", "--retry-budget", "10"]);
    assert_eq!(read_all(&fx.mnt.join("model/config.json")), b"{}");
    let f = File::open(fx.mnt.join("model/weights.bin")).unwrap();
    let mut buf = vec![0u8; 128 << 10];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, &data[..128 << 10]);
    // A new upload (same bytes) gets a new ETag: pinned reads of anything not yet read must fail with EIO.
    upload(&az, "models", false, "model.img", &image);
    let err = f.read_exact_at(&mut buf, 4 << 20).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    drop(f);
    guard.unmount();
    // A fresh mount pins the new version and reads it all, byte-exact.
    let guard = fx.mount_image(Path::new(&url), &[]);
    assert!(read_all(&fx.mnt.join("model/weights.bin")) == data);
    guard.unmount();
}

#[test]
fn azurite_anonymous_public_container_mounts_byte_exact_and_private_one_is_refused() {
    let az = Azurite::start().unwrap();
    let (fx, data) = fixture();
    let image = std::fs::read(&fx.image).unwrap();
    upload(&az, "public", true, "model.img", &image);
    upload(&az, "private", false, "model.img", &image);
    let url = az.blob_url("public", "model.img");
    let guard = fx.mount_image(Path::new(&url), &[]);
    assert!(read_all(&fx.mnt.join("model/weights.bin")) == data);
    guard.unmount();
    // Without a SAS, the store refuses the private blob (Azurite: 403; Azure: 404): a final answer, so the mount
    // fails at once, naming the blob and the status, and nothing is mounted.
    let private = az.blob_url("private", "model.img");
    let t = std::time::Instant::now();
    let out = fx.mount_cmd(Path::new(&private), &["--retry-budget", "20"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("reading {private}")) && (err.contains("HTTP 403") || err.contains("blob not found")),
        "{err}"
    );
    // Well inside the 20 s retry budget: a refusal is not retried.
    assert!(!err.contains("gave up"), "retried a refusal: {err}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "retried a refusal: {err}"
    );
    assert!(!common::is_mounted(&fx.mnt));
    // The same blob with a SAS mounts: the refusal was the missing authorization.
    let guard = fx.mount_image(Path::new(&format!("{private}?{}", sas())), &[]);
    assert!(read_all(&fx.mnt.join("model/weights.bin")) == data);
    guard.unmount();
}
