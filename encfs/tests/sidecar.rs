//! The confidential sidecar: the seed's `EncfsSideCarArgs`, and the whole flow on one machine (mock attester,
//! the local attestation service and key broker, the image in Azurite, real FUSE mounts of the
//! `cinfer-encfs sidecar` binary).

#![allow(clippy::unwrap_used)]

mod common;
#[path = "fixtures/legacy_fixture.rs"]
mod legacy_fixture;
#[path = "fixtures/signed_image.rs"]
mod signed_image;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use attest::client::{AttestationClient, KeyRef, KeyReleaseClient, ResponseVerification, VaultAuth};
use attest::evidence::{Attester, MockAttester, MockConfig, MockRoot};
use attest::keywrap::RuntimeKey;
use attest::policy::ReleasePolicy;
use attest::secret::SecretBytes;
use attest::service::{RunningService, ServiceConfig};
use attest::verify::TrustStore;
use base64::Engine as _;
use deploy::local::azurite::{Azurite, SasOptions, account_sas};
use deploy::local::http::Body;
use encfs::format::ModelKey;
use encfs::sidecar::config::SidecarConfig;
use encfs::sidecar::release::{Step, StepError};
use encfs::testing::{Content, TreeBuilder};

/// The seed's example from the protocol doc (§5.1), comments removed.
const SEED_EXAMPLE: &str = r#"{
  "azure_info": {
    "certcache": {"endpoint_type":"AzCache","endpoint":"americas.acccache.azure.net","tee_type":"SevSnpVM","api_version":"api-version=2020-10-15-preview","client_id":"clientId=x"},
    "identity":  {"client_id":"11111111-2222-3333-4444-555555555555"}
  },
  "azure_filesystems": [{
    "azure_url": "https://acct.blob.core.windows.net/models/model.img?sv=2022&sig=abc",
    "azure_url_private": true,
    "mount_point": "/mnt/remote/models",
    "read_write": false,
    "key": {
      "kid": "model-key", "kty": "RSA-HSM", "key_ops": ["encrypt", "decrypt"],
      "authority": {"endpoint": "sharedeus2.eus2.attest.azure.net", "tee_type": "SevSnpVM", "api_version": "api-version=2020-10-01"},
      "akv": {"endpoint": "myvault.vault.azure.net", "api_version": "api-version=7.4", "bearer_token": "eyJ0eXAi"}
    },
    "key_derivation": {"salt": "92a631483ca875aad7e2477da755d58cac3876b77d10bcdd7b33bfa11e7d8b8e", "label": "Model Encryption Key"},
    "raw_key": "00"
  }]
}"#;

#[test]
fn seed_example_parses_into_the_expected_config() {
    let b64 = base64::engine::general_purpose::STANDARD.encode(SEED_EXAMPLE);
    let cfg = SidecarConfig::from_env_value(&b64).unwrap();
    assert_eq!(cfg.filesystems.len(), 1);
    assert_eq!(
        cfg.identity_client_id.as_deref(),
        Some("11111111-2222-3333-4444-555555555555")
    );
    let fs = &cfg.filesystems[0];
    assert_eq!(fs.index, 0);
    assert_eq!(
        fs.url,
        "https://acct.blob.core.windows.net/models/model.img?sv=2022&sig=abc"
    );
    assert!(fs.url_private);
    assert_eq!(fs.mount_point, PathBuf::from("/mnt/remote/models"));
    assert_eq!(fs.kid, "model-key");
    assert_eq!(fs.kty, "RSA-HSM");
    assert_eq!(fs.authority, "sharedeus2.eus2.attest.azure.net");
    assert_eq!(fs.vault, "myvault.vault.azure.net");
    assert_eq!(fs.bearer_token.as_ref().unwrap().expose(), "eyJ0eXAi");
    assert!(
        !format!("{cfg:?}").contains("eyJ0eXAi"),
        "bearer token must be redacted in Debug"
    );
    assert_eq!(
        fs.salt,
        "92a631483ca875aad7e2477da755d58cac3876b77d10bcdd7b33bfa11e7d8b8e"
    );
    assert_eq!(fs.label, "Model Encryption Key");
    assert_eq!(fs.expect_root, None);
    // raw_key and certcache are seed fields the sidecar does not use: warnings (unknown fields would be errors).
    assert_eq!(cfg.warnings.len(), 2, "{:?}", cfg.warnings);
    assert!(cfg.warnings.iter().any(|w| w.contains("raw_key")), "{:?}", cfg.warnings);
    assert!(
        cfg.warnings.iter().any(|w| w.contains("certcache")),
        "{:?}",
        cfg.warnings
    );
    // The JSON itself (not base64) is accepted too, with the same result.
    let cfg2 = SidecarConfig::from_env_value(SEED_EXAMPLE).unwrap();
    assert_eq!(cfg2.filesystems[0].kid, "model-key");
}

#[test]
fn config_refuses_read_write_and_unknown_fields() {
    let rw = SEED_EXAMPLE.replace("\"read_write\": false", "\"read_write\": true");
    let e = SidecarConfig::from_json(rw.as_bytes()).unwrap_err().to_string();
    assert!(e.contains("azure_filesystems[0]") && e.contains("read-only"), "{e}");

    // An unknown field is refused, naming it and where it is: a misspelt pin must not mount unpinned.
    let extra = SEED_EXAMPLE.replace(
        "\"read_write\": false,",
        &format!("\"read_write\": false, \"cinfer_expect_rot\": \"{}\",", "ab".repeat(32)),
    );
    let e = SidecarConfig::from_json(extra.as_bytes()).unwrap_err().to_string();
    assert!(
        e.contains("unknown field `cinfer_expect_rot`") && e.contains("azure_filesystems[0]"),
        "{e}"
    );
    let pinned = SEED_EXAMPLE.replace(
        "\"read_write\": false,",
        &format!(
            "\"read_write\": false, \"cinfer_expect_root\": \"{}\",",
            "ab".repeat(32)
        ),
    );
    let cfg = SidecarConfig::from_json(pinned.as_bytes()).unwrap();
    assert_eq!(cfg.filesystems[0].expect_root, Some([0xab; 32]));
    // The name earlier renders wrote is the same pin.
    let legacy = pinned.replace("cinfer_expect_root", "expect_root");
    let legacy = SidecarConfig::from_json(legacy.as_bytes()).unwrap();
    assert_eq!(legacy.filesystems[0].expect_root, Some([0xab; 32]));

    let bad_root = SEED_EXAMPLE.replace("\"read_write\": false,", "\"cinfer_expect_root\": \"xyz\",");
    assert!(SidecarConfig::from_json(bad_root.as_bytes()).is_err());
    assert_eq!(cfg.filesystems[0].verify, encfs::gate::VerifyMode::Manifest);
    let full = SEED_EXAMPLE.replace("\"read_write\": false,", "\"cinfer_verify\": \"full\",");
    let full = SidecarConfig::from_json(full.as_bytes()).unwrap();
    assert_eq!(full.filesystems[0].verify, encfs::gate::VerifyMode::Full);
    let bad_verify = SEED_EXAMPLE.replace("\"read_write\": false,", "\"cinfer_verify\": \"some\",");
    let e = SidecarConfig::from_json(bad_verify.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("cinfer_verify"), "{e}");
    // Base64url is not what the seed accepts.
    assert!(SidecarConfig::from_env_value("e30_-").is_err());
    let empty = SidecarConfig::from_json(b"{\"azure_filesystems\": []}").unwrap_err();
    assert!(empty.to_string().contains("no azure_filesystems"));
}

// ---------------------------------------------------------------------------------------------------------
// Whole flow

const HOST_DATA: [u8; 32] = [0x4a; 32];
const ADMIN: &[u8] = b"test-admin-token";

fn fuse_available() -> bool {
    Path::new("/dev/fuse").exists()
        && std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false)
}

/// The attestation service, a mock root and an imported model key.
struct World {
    rt: tokio::runtime::Runtime,
    svc: RunningService,
    dir: tempfile::TempDir,
    mock_root_dir: PathBuf,
    root: MockRoot,
    image: PathBuf,
    /// Where the sidecar reads the image (`azure_url`): the local file, or its blob in Azurite.
    image_url: String,
    image_root: String,
    content: Vec<u8>,
    _azurite: Option<Azurite>,
}

fn release_policy(authority: &str, host_data: &[u8; 32]) -> ReleasePolicy {
    ReleasePolicy::from_json(
        format!(
            r#"{{"version":"1.0.0","anyOf":[{{"authority":"{authority}","allOf":[
                {{"claim":"x-ms-sevsnpvm-hostdata","equals":"{}"}},
                {{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"}}]}}]}}"#,
            hex::encode(host_data)
        )
        .as_bytes(),
    )
    .unwrap()
}

impl World {
    /// The service with an authenticated cinfer image of a small model tree.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let content = common::pattern(3 * 1024 * 1024 + 17, 7);
        let mut tree = TreeBuilder::new();
        tree.dir("weights")
            .file("weights/model.bin", Content::Bytes(content.clone()))
            .file("config.json", Content::Bytes(b"{\"layers\": 2}".to_vec()));
        let key = ModelKey::generate();
        let image = dir.path().join("model.img");
        let mut f = std::fs::File::create(&image).unwrap();
        let built = tree.write_image(&mut f, &key, 64 * 1024).unwrap();
        f.flush().unwrap();
        drop(f);
        Self::with_image(dir, image, &key, hex::encode(built.root), content)
    }

    /// The service with `image` (in `dir`), whose key `key` is imported with a policy for HOST_DATA.
    fn with_image(
        dir: tempfile::TempDir,
        image: PathBuf,
        key: &ModelKey,
        image_root: String,
        content: Vec<u8>,
    ) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let root = MockRoot::generate(attest::report::Generation::Milan).unwrap();
        let mock_root_dir = dir.path().join("mock-root");
        root.save(&mock_root_dir).unwrap();
        let mut trust = TrustStore::amd();
        trust.add_mock_root(root.ark_pem().as_bytes()).unwrap();
        let svc = rt
            .block_on(RunningService::start(ServiceConfig {
                trust,
                admin_token: Some(SecretBytes::from_slice(ADMIN)),
                ..Default::default()
            }))
            .unwrap();

        // Import the key with a policy for HOST_DATA.
        rt.block_on(async {
            let jwks = AttestationClient::new(&svc.url).unwrap().jwks().await.unwrap();
            KeyReleaseClient::new(
                &svc.url,
                VaultAuth::Bearer(SecretBytes::from_slice(ADMIN)),
                ResponseVerification::Pinned(jwks),
            )
            .unwrap()
            .import_oct("model-key", key.expose(), &release_policy(&svc.url, &HOST_DATA))
            .await
            .unwrap();
        });
        Self {
            rt,
            svc,
            dir,
            mock_root_dir,
            root,
            image_url: format!("file://{}", image.display()),
            image,
            image_root,
            content,
            _azurite: None,
        }
    }

    /// Uploads the image to a fresh Azurite and points the sidecar at the blob with a read-only SAS (what an
    /// operator puts in `azure_url`).
    fn serve_from_azurite(&mut self) {
        let az = Azurite::start().unwrap();
        az.create_container("models", false).unwrap();
        az.put_blob("models", "model.img", Body::File(&self.image)).unwrap();
        self.image_url = format!(
            "{}?{}",
            az.blob_url("models", "model.img"),
            account_sas(&SasOptions::read_only())
        );
        // The local copy is gone: every byte the sidecar serves comes from the blob.
        std::fs::remove_file(&self.image).unwrap();
        self._azurite = Some(az);
    }

    fn args_json(&self, mount_point: &Path, extra: &str) -> String {
        format!(
            r#"{{"azure_filesystems":[{{"azure_url":"{}","azure_url_private":false,"mount_point":"{}",{extra}
               "key":{{"kid":"model-key","kty":"oct-HSM","authority":{{"endpoint":"{u}"}},"akv":{{"endpoint":"{u}"}}}},
               "key_derivation":{{"salt":"","label":""}}}}]}}"#,
            self.image_url,
            mount_point.display(),
            u = self.svc.url
        )
    }
}

/// A running sidecar; killed and its mounts detached on drop (also when a test fails).
struct Sidecar {
    child: Option<Child>,
    hidden: Vec<PathBuf>,
    ready_dir: PathBuf,
    port: u16,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in &self.hidden {
            let _ = Command::new("fusermount3").args(["-u", "-z", "--"]).arg(h).output();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_sidecar(w: &World, mount_point: &Path, extra: &str, host_data: &[u8; 32], tag: &str) -> Sidecar {
    let b64 = base64::engine::general_purpose::STANDARD.encode(w.args_json(mount_point, extra));
    let mut cmd = common::encfs_bin();
    cmd.arg("sidecar")
        .args(["--attester", "mock", "--mock-root-dir"])
        .arg(&w.mock_root_dir)
        .args(["--mock-host-data", &hex::encode(host_data)])
        .env("EncfsSideCarArgs", b64);
    spawn_sidecar(w, cmd, mount_point, tag)
}

/// The same sidecar configured by cinfer's own TOML file (`--config`), attester included: no flags, no env.
fn start_sidecar_toml(w: &World, mount_point: &Path, host_data: &[u8; 32], tag: &str) -> Sidecar {
    let file = w.dir.path().join(format!("sidecar-{tag}.toml"));
    std::fs::write(
        &file,
        format!(
            r#"[attester]
kind = "mock"
mock_root_dir = "{}"
mock_host_data = "{}"

[[filesystems]]
mount_point = "{}"
url = "{}"
expect_root = "{}"
cache_mb = 64
key = {{ kid = "model-key", kty = "oct-HSM", authority = "{u}", vault = "{u}" }}
"#,
            w.mock_root_dir.display(),
            hex::encode(host_data),
            mount_point.display(),
            w.image_url,
            w.image_root,
            u = w.svc.url
        ),
    )
    .unwrap();
    let mut cmd = common::encfs_bin();
    cmd.arg("sidecar")
        .arg("--config")
        .arg(&file)
        .env_remove("EncfsSideCarArgs");
    spawn_sidecar(w, cmd, mount_point, tag)
}

fn spawn_sidecar(w: &World, mut cmd: Command, mount_point: &Path, tag: &str) -> Sidecar {
    let ready_dir = w.dir.path().join(format!("ready-{tag}"));
    let port = free_port();
    let child = cmd
        .arg("--ready-dir")
        .arg(&ready_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--release-attempts", "2"])
        .env("CINFER_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Sidecar {
        child: Some(child),
        hidden: vec![mount_point.parent().unwrap().join(".filesystem-0")],
        ready_dir,
        port,
    }
}

impl Sidecar {
    /// Waits for `ready` in the ready dir; panics (with the sidecar's log) if it exits first or times out.
    fn wait_ready(&mut self) -> Duration {
        let t = Instant::now();
        loop {
            if self.ready_dir.join("ready").exists() {
                return t.elapsed();
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sidecar exited before ready ({st}): {}", self.stderr());
            }
            assert!(t.elapsed() < Duration::from_secs(60), "sidecar not ready in 60 s");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for exit; returns (success, stderr).
    fn wait_exit(&mut self) -> (bool, String) {
        let mut c = self.child.take().unwrap();
        let t = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                let mut err = String::new();
                c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                return (st.success(), err);
            }
            if t.elapsed() > Duration::from_secs(60) {
                let _ = c.kill();
                let _ = c.wait();
                panic!("sidecar did not exit in 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&mut self) -> String {
        let mut err = String::new();
        if let Some(c) = self.child.as_mut()
            && let Some(mut e) = c.stderr.take()
        {
            let _ = e.read_to_string(&mut err);
        }
        err
    }

    fn sigterm(&self) {
        let pid = self.child.as_ref().unwrap().id();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        let code = r.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = r.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (code, body)
    }
}

/// The value of an unlabelled counter in Prometheus text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

fn is_mountpoint(p: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let p = p.to_string_lossy();
    mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(&*p))
}

#[test]
fn whole_flow_mounts_after_release_and_refuses_otherwise() {
    // Never a silent pass: without FUSE this test fails and says why.
    assert!(
        fuse_available(),
        "this test needs /dev/fuse, fusermount3 (Debian fuse3) and root"
    );
    let mut w = World::new();
    w.serve_from_azurite();
    let base = w.dir.path().join("mnt");
    std::fs::create_dir(&base).unwrap();
    let mount_point = base.join("models");
    let hidden = base.join(".filesystem-0");

    // 1. host_data = H: released, verified, mounted, byte-exact from the blob; ready file, /ready and metrics.
    //    Round 0 is configured by the seed's EncfsSideCarArgs, round 1 by cinfer's TOML file (after a SIGTERM).
    for round in 0..2 {
        let mut sc = if round == 0 {
            start_sidecar(&w, &mount_point, "", &HOST_DATA, "ok0")
        } else {
            start_sidecar_toml(&w, &mount_point, &HOST_DATA, "ok1")
        };
        let took = sc.wait_ready();
        eprintln!("round {round}: start -> ready in {} ms", took.as_millis());
        assert!(
            std::fs::symlink_metadata(&mount_point)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read_link(&mount_point).unwrap(),
            PathBuf::from(".filesystem-0")
        );
        assert!(is_mountpoint(&hidden));
        let got = std::fs::read(mount_point.join("weights/model.bin")).unwrap();
        assert!(got == w.content, "content differs");
        assert_eq!(
            std::fs::read(mount_point.join("config.json")).unwrap(),
            b"{\"layers\": 2}"
        );
        let ready: serde_json::Value =
            serde_json::from_slice(&std::fs::read(sc.ready_dir.join("filesystem-0.ready")).unwrap()).unwrap();
        assert_eq!(ready["root"], w.image_root.as_str());
        let (code, body) = sc.get("/ready");
        assert_eq!(code, 200, "{body}");
        let (code, metrics) = sc.get("/metrics");
        assert_eq!(code, 200);
        assert!(
            metrics.contains("cinfer_encfs_key_releases_total{outcome=\"ok\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("cinfer_encfs_key_release_seconds_count 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("cinfer_encfs_mounted{filesystem=\"0\"} 1"),
            "{metrics}"
        );
        // The image came from Azurite through the part cache: at least the whole image was fetched, by ranges.
        let fetched = metric(&metrics, "cinfer_encfs_source_bytes_fetched_total");
        assert!(fetched >= w.content.len() as u64, "fetched {fetched} bytes:\n{metrics}");
        // SIGTERM: unmount everything, exit 0 (then the next round restarts cleanly).
        sc.sigterm();
        let (ok, log) = sc.wait_exit();
        assert!(ok, "sidecar exit after SIGTERM: {log}");
        assert!(!is_mountpoint(&hidden), "still mounted after SIGTERM");
        assert!(std::fs::symlink_metadata(&mount_point).is_err(), "symlink left behind");
        assert!(!sc.ready_dir.join("ready").exists());
    }

    // 2. host_data ≠ H: the release is refused, nothing is mounted, the failure names the step.
    let mut sc = start_sidecar(&w, &mount_point, "", &[0x11; 32], "denied");
    let (ok, log) = sc.wait_exit();
    assert!(!ok, "a denied release must fail: {log}");
    assert!(log.contains("release failed"), "{log}");
    assert!(
        log.contains("x-ms-sevsnpvm-hostdata"),
        "the denial names the claim: {log}"
    );
    assert!(!is_mountpoint(&hidden));
    assert!(std::fs::symlink_metadata(&mount_point).is_err());
    let failed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sc.ready_dir.join("filesystem-0.failed")).unwrap()).unwrap();
    assert_eq!(failed["step"], "release");
    // Not retried: a denial is final.
    assert_eq!(log.matches("retrying").count(), 0, "{log}");

    // 3. A wrong root pin refuses the mount.
    let pin = format!("\"cinfer_expect_root\":\"{}\",", "00".repeat(32));
    let mut sc = start_sidecar(&w, &mount_point, &pin, &HOST_DATA, "pin");
    let (ok, log) = sc.wait_exit();
    assert!(!ok, "{log}");
    assert!(log.contains("root pin failed"), "{log}");
    assert!(!is_mountpoint(&hidden));
    assert!(std::fs::symlink_metadata(&mount_point).is_err());

    // 4. The right pin mounts.
    let pin = format!("\"cinfer_expect_root\":\"{}\",", w.image_root);
    let mut sc = start_sidecar(&w, &mount_point, &pin, &HOST_DATA, "pin-ok");
    sc.wait_ready();
    assert!(is_mountpoint(&hidden));
    sc.sigterm();
    assert!(sc.wait_exit().0);
}

#[test]
fn legacy_luks2_image_from_a_blob_mounts_and_a_root_pin_on_it_is_refused() {
    assert!(
        fuse_available(),
        "this test needs /dev/fuse, fusermount3 (Debian fuse3) and root"
    );
    // A seed-style image (real cryptsetup luksFormat + mkfs.ext4), its 32-byte key file as the released key.
    let fx = legacy_fixture::make(4096, "pbkdf2", None);
    let key = ModelKey::from_slice(&std::fs::read(&fx.key).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("legacy.img");
    std::fs::copy(&fx.image, &image).unwrap();
    let mut w = World::with_image(dir, image, &key, String::new(), Vec::new());
    w.serve_from_azurite();
    let base = w.dir.path().join("mnt");
    std::fs::create_dir(&base).unwrap();
    let mount_point = base.join("models");
    let hidden = base.join(".filesystem-0");

    let mut sc = start_sidecar(&w, &mount_point, "", &HOST_DATA, "legacy");
    sc.wait_ready();
    let mut got = legacy_fixture::disk_tree(&mount_point);
    got.retain(|k, _| !k.starts_with(b"lost+found"));
    assert!(
        got == legacy_fixture::disk_tree(&fx.src),
        "the mounted tree differs from the source"
    );
    let ready: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sc.ready_dir.join("filesystem-0.ready")).unwrap()).unwrap();
    assert!(ready["root"].as_str().unwrap().starts_with("legacy-luks2:"), "{ready}");
    sc.sigterm();
    let (ok, log) = sc.wait_exit();
    assert!(ok, "sidecar exit after SIGTERM: {log}");
    assert!(
        log.contains("XTS gives no integrity"),
        "the no-integrity warning: {log}"
    );
    assert!(!is_mountpoint(&hidden), "still mounted after SIGTERM");

    // A legacy image has no root digest: a pinned filesystem is refused, not mounted unchecked.
    let pin = format!("\"cinfer_expect_root\":\"{}\",", "ab".repeat(32));
    let mut sc = start_sidecar(&w, &mount_point, &pin, &HOST_DATA, "legacy-pin");
    let (ok, log) = sc.wait_exit();
    assert!(!ok, "{log}");
    assert!(log.contains("legacy LUKS2") && log.contains("no root digest"), "{log}");
    assert!(!is_mountpoint(&hidden));
}

#[test]
fn the_signature_gate_checks_content_only_in_full_verify_mode() {
    assert!(
        fuse_available(),
        "this test needs /dev/fuse, fusermount3 (Debian fuse3) and root"
    );
    let signer = encfs::signature::SigningKey::from_pem(signed_image::SIGNER, None)
        .unwrap()
        .verifying_key()
        .to_pem();
    // (image signed how, verify mode, whether the sidecar mounts it)
    let cases = [
        (signed_image::Sign::Exact, "full", true),
        (signed_image::Sign::LyingIndex, "full", false),
        // The manifest check alone trusts the index's digests: the content lie goes unnoticed (the trade-off
        // for starting without reading the whole model).
        (signed_image::Sign::LyingIndex, "manifest", true),
    ];
    for (i, (how, mode, mounts)) in cases.into_iter().enumerate() {
        let key = ModelKey::generate();
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("model.img");
        std::fs::write(&image, signed_image::image(&key, how)).unwrap();
        let signer_file = dir.path().join("signer.pub");
        std::fs::write(&signer_file, &signer).unwrap();
        let w = World::with_image(dir, image, &key, String::new(), Vec::new());
        let base = w.dir.path().join("mnt");
        std::fs::create_dir(&base).unwrap();
        let mount_point = base.join("models");
        let extra = format!(
            "\"cinfer_signer_key\":\"{}\",\"cinfer_verify\":\"{mode}\",",
            signer_file.display()
        );
        let mut sc = start_sidecar(&w, &mount_point, &extra, &HOST_DATA, &format!("sig{i}"));
        if mounts {
            sc.wait_ready();
            assert_eq!(
                std::fs::read(mount_point.join("labels.txt")).unwrap(),
                b"a\nb\n",
                "case {i}"
            );
            sc.sigterm();
            let (ok, log) = sc.wait_exit();
            assert!(ok, "case {i}: {log}");
        } else {
            let (ok, log) = sc.wait_exit();
            assert!(!ok, "case {i}: a lying index must be refused in full mode: {log}");
            assert!(
                log.contains("signature") && log.contains("1/model.onnx"),
                "case {i}: {log}"
            );
            assert!(!is_mountpoint(&base.join(".filesystem-0")));
        }
    }
}

#[test]
fn tampered_token_is_refused_as_final() {
    let w = World::new();
    w.rt.block_on(async {
        let maa = AttestationClient::new(&w.svc.url).unwrap();
        let vault = KeyReleaseClient::new(
            &w.svc.url,
            VaultAuth::None,
            ResponseVerification::Pinned(maa.jwks().await.unwrap()),
        )
        .unwrap();
        let attester = MockAttester::new(
            &w.root,
            MockConfig {
                host_data: HOST_DATA,
                ..Default::default()
            },
        )
        .unwrap();
        let rk = RuntimeKey::generate().unwrap();
        let rd = rk.runtime_data();
        let ev = attester.evidence(&attest::verify::maa_report_data(&rd)).unwrap();
        let token = maa.attest(&ev, &rd).await.unwrap();
        // The genuine token releases.
        vault.release(&KeyRef::parse("model-key"), &token, &rk).await.unwrap();
        // Flip one character of the payload (claims) and of the signature: both refused, final.
        let parts: Vec<&str> = token.split('.').collect();
        let flip = |s: &str| {
            let mut b = s.as_bytes().to_vec();
            let i = b.len() / 2;
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            String::from_utf8(b).unwrap()
        };
        for tampered in [
            format!("{}.{}.{}", parts[0], flip(parts[1]), parts[2]),
            format!("{}.{}.{}", parts[0], parts[1], flip(parts[2])),
        ] {
            let e = vault
                .release(&KeyRef::parse("model-key"), &tampered, &rk)
                .await
                .unwrap_err();
            let se = StepError::from_client(Step::Release, &e);
            assert_eq!(se.step, Step::Release, "{e}");
            assert!(!se.transient, "a tampered token is not retried: {e}");
        }
    });
}

/// Start → ready of the sidecar binary for a 10 GiB image (sparse: only the index matters for mounting),
/// attest + release + index + mount on loopback. Prints every run and the median.
#[test]
#[ignore = "benchmark: cargo nextest run -p encfs --test sidecar --release --run-ignored only --no-capture bench"]
fn bench_start_to_ready_10gib() {
    if !fuse_available() {
        eprintln!("skipping: needs /dev/fuse and root");
        return;
    }
    let mut w = World::new();
    let mut tree = TreeBuilder::new();
    tree.dir("weights");
    for i in 0..5 {
        tree.file(format!("weights/shard-{i}.bin"), Content::Zeros(2 << 30));
    }
    let key = ModelKey::generate();
    let big = if Path::new("/dev/shm").is_dir() {
        PathBuf::from(format!("/dev/shm/cinfer-sidecar-bench-{}.img", std::process::id()))
    } else {
        w.dir.path().join("big.img")
    };
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(big.clone());
    let mut f = std::fs::File::create(&big).unwrap();
    let built = tree.write_sparse_image(&mut f, &key, 64 * 1024, &|_| false).unwrap();
    drop(f);
    eprintln!("image: {} bytes, {} chunks of 64 KiB", built.len, built.len / 65536);
    w.rt.block_on(async {
        let jwks = AttestationClient::new(&w.svc.url).unwrap().jwks().await.unwrap();
        KeyReleaseClient::new(
            &w.svc.url,
            VaultAuth::Bearer(SecretBytes::from_slice(ADMIN)),
            ResponseVerification::Pinned(jwks),
        )
        .unwrap()
        .import_oct("model-key", key.expose(), &release_policy(&w.svc.url, &HOST_DATA))
        .await
        .unwrap();
    });
    w.image_url = format!("file://{}", big.display());
    w.image = big;
    let base = w.dir.path().join("bench");
    std::fs::create_dir(&base).unwrap();
    let mount_point = base.join("models");
    let mut times = Vec::new();
    for run in 0..9 {
        let mut sc = start_sidecar(&w, &mount_point, "", &HOST_DATA, &format!("bench{run}"));
        let t = sc.wait_ready();
        assert!(
            std::fs::metadata(mount_point.join("weights/shard-4.bin"))
                .unwrap()
                .len()
                == 2 << 30
        );
        sc.sigterm();
        assert!(sc.wait_exit().0);
        eprintln!("run {run}: start -> ready {:.1} ms", t.as_secs_f64() * 1e3);
        times.push(t);
    }
    times.sort();
    eprintln!(
        "start -> ready (10 GiB image, 9 runs): median {:.1} ms, min {:.1} ms, max {:.1} ms",
        times[4].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[8].as_secs_f64() * 1e3
    );
}
