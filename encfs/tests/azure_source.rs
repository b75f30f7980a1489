//! The Azure Blob source against Azurite (npm `azurite`, installed by `scripts/azurite.sh` or named by
//! `CINFER_AZURITE`), started on a free loopback port with a temporary data folder: upload an image with a
//! hand-built account SAS, mount it by URL (SAS and anonymous public-container variants), read byte-exact, and
//! see a replaced blob fail with EIO.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Fixture, pattern};
use encfs::testing::{Content, TreeBuilder};
use hmac::{KeyInit, Mac};

/// The emulator's well-known account and key (public, documented by Microsoft).
const ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite on 127.0.0.1; killed (and its data folder removed) on drop.
struct Azurite {
    child: Child,
    base: String,
    _data: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn azurite_bin() -> String {
    if let Ok(p) = std::env::var("CINFER_AZURITE")
        && Path::new(&p).exists()
    {
        return p;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/azurite.sh");
    let out = Command::new("bash").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "installing Azurite failed (needs node and npm): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl Azurite {
    fn start() -> Self {
        let bin = azurite_bin();
        let data = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--location"])
            .arg(data.path())
            .args(["--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let az = Self {
            child,
            base: format!("http://127.0.0.1:{port}/{ACCOUNT}"),
            _data: data,
        };
        assert!(
            common::wait_for(Duration::from_secs(30), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "Azurite did not start"
        );
        az
    }
}

/// An account SAS (sv=2019-12-12, blob service, all resource types, rwdlac), signed with the dev key.
fn account_sas() -> String {
    let (sp, ss, srt, se, spr, sv) = ("rwdlac", "b", "sco", "2035-01-01T00:00:00Z", "https,http", "2019-12-12");
    let to_sign = format!("{ACCOUNT}\n{sp}\n{ss}\n{srt}\n\n{se}\n\n{spr}\n{sv}\n");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&B64.decode(DEV_KEY).unwrap()).unwrap();
    mac.update(to_sign.as_bytes());
    let sig = B64.encode(mac.finalize().into_bytes());
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    format!(
        "sv={sv}&ss={ss}&srt={srt}&sp={sp}&se={}&spr={}&sig={}",
        enc(se),
        enc(spr),
        enc(&sig)
    )
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Creates a container (public for blobs when `public`) and uploads `data` as `name`.
fn upload(az: &Azurite, container: &str, public: bool, name: &str, data: Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sas = account_sas();
    rt.block_on(async {
        let c = client();
        let mut rb = c
            .put(format!("{}/{container}?restype=container&{sas}", az.base))
            .header("x-ms-version", "2021-08-06")
            .header("content-length", "0");
        if public {
            rb = rb.header("x-ms-blob-public-access", "blob");
        }
        let r = rb.send().await.unwrap();
        assert!(
            r.status().as_u16() == 201 || r.status().as_u16() == 409,
            "{}",
            r.status()
        );
        let r = c
            .put(format!("{}/{container}/{name}?{sas}", az.base))
            .header("x-ms-version", "2021-08-06")
            .header("x-ms-blob-type", "BlockBlob")
            .body(data)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    });
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
    let az = Azurite::start();
    let (fx, data) = fixture();
    let image = std::fs::read(&fx.image).unwrap();
    upload(&az, "models", false, "model.img", image.clone());
    let url = format!("{}/models/model.img?{}", az.base, account_sas());
    let guard = fx.mount_image(Path::new(&url), &["--request-timeout", "5", "--retry-budget", "10"]);
    assert_eq!(read_all(&fx.mnt.join("model/config.json")), b"{}");
    let f = File::open(fx.mnt.join("model/weights.bin")).unwrap();
    let mut buf = vec![0u8; 128 << 10];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, &data[..128 << 10]);
    // A new upload (same bytes) gets a new ETag: pinned reads of anything not yet read must fail with EIO.
    upload(&az, "models", false, "model.img", image);
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
    let az = Azurite::start();
    let (fx, data) = fixture();
    let image = std::fs::read(&fx.image).unwrap();
    upload(&az, "public", true, "model.img", image.clone());
    upload(&az, "private", false, "model.img", image);
    let url = format!("{}/public/model.img", az.base);
    let guard = fx.mount_image(Path::new(&url), &[]);
    assert!(read_all(&fx.mnt.join("model/weights.bin")) == data);
    guard.unmount();
    // Without a SAS, a private container is refused (403/404) and nothing is mounted.
    let out = fx.mount_cmd(
        Path::new(&format!("{}/private/model.img", az.base)),
        &["--retry-budget", "5"],
    );
    assert!(!out.status.success());
    assert!(!common::is_mounted(&fx.mnt));
}
