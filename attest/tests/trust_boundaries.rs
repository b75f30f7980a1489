//! Trust boundaries of the service and its clients: `serve` over TLS with a self-signed certificate that
//! clients pin, no plain HTTP beyond loopback (service and clients) unless an option says it is dangerous,
//! release policies that must pin the workload, admin tokens of at least 16 bytes.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use attest::client::{AttestationClient, KeyRef, KeyReleaseClient, ResponseVerification, VaultAuth};
use attest::evidence::{MockAttester, MockConfig, MockRoot};
use attest::keywrap::KeyDerivation;
use attest::policy::ReleasePolicy;
use attest::secret::SecretBytes;
use attest::service::{RunningService, ServiceConfig};
use attest::tls::{ServerTls, TlsTrust};
use attest::verify::TrustStore;

const BIN: &str = env!("CARGO_BIN_EXE_cinfer-attest");
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
const ADMIN: &str = "trust-boundaries-admin-token";
const HOST_DATA: [u8; 32] = [0x5a; 32];

fn mock_root() -> String {
    format!("{DATA}/mock-root")
}

fn cli(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("CINFER_LOG", "warn").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A release policy (AKV JSON) for `authority` with `all_of` conditions, written to `dir`.
fn policy_file(dir: &Path, authority: &str, all_of: &str) -> PathBuf {
    let p = dir.join("release-policy.json");
    std::fs::write(
        &p,
        format!(r#"{{"version":"1.0.0","anyOf":[{{"authority":"{authority}","allOf":[{all_of}]}}]}}"#),
    )
    .unwrap();
    p
}

fn pinned_conditions() -> String {
    format!(
        r#"{{"claim":"x-ms-sevsnpvm-hostdata","equals":"{}"}},{{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"}}"#,
        hex::encode(HOST_DATA)
    )
}

/// A listener on an address that is not loopback (this machine's outbound address, else TEST-NET-1 with no
/// listener), to show that a refused client never connects.
struct Remote {
    listener: Option<TcpListener>,
    url: String,
}

impl Remote {
    fn new() -> Self {
        // Connecting a UDP socket sends nothing; it only picks the local address of the default route.
        let local = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
            .and_then(|s| s.local_addr())
            .map(|a| a.ip())
            .ok()
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
        match local.and_then(|ip| TcpListener::bind((ip, 0)).ok()) {
            Some(l) => {
                l.set_nonblocking(true).unwrap();
                let url = format!("http://{}", l.local_addr().unwrap());
                Self { listener: Some(l), url }
            }
            None => Self {
                listener: None,
                url: format!("http://{}:9", IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            },
        }
    }

    fn connections(&self) -> usize {
        let Some(l) = &self.listener else { return 0 };
        std::iter::from_fn(|| l.accept().ok()).count()
    }
}

/// `cinfer-attest serve` in the background, killed on drop.
struct Serve {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Serve {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .env("CINFER_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    /// The value of the stdout line `NAME VALUE`.
    fn printed(&self, name: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("serve printed no {name} line"));
            if let Some(v) = line.strip_prefix(name).and_then(|r| r.strip_prefix(' ')) {
                return v.to_owned();
            }
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_tls_self_signed_pinned_clients_attest_import_and_release() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (admin, key_file, rt) = (d("admin"), d("model.key"), d("rt.json"));
    std::fs::write(&admin, ADMIN).unwrap();
    let key = [0x7eu8; 32];
    std::fs::write(&key_file, key).unwrap();
    std::fs::write(&rt, br#"{"keys":[]}"#).unwrap();
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let serve = Serve::start(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tls-self-signed",
        "--tls-cert-out",
        &d("served.pem"),
        "--trust-mock-root",
        &format!("{}/ark.pem", mock_root()),
        "--admin-token-file",
        &admin,
    ]);
    let cert_sha256 = serve.printed("tls-cert-sha256");
    let spki_sha256 = serve.printed("tls-spki-sha256");
    assert_eq!(cert_sha256.len(), 64);
    assert_ne!(cert_sha256, spki_sha256);
    let policy = policy_file(dir.path(), &url, &pinned_conditions());
    let mock = [
        "--attester",
        "mock",
        "--mock-root",
        &mock_root(),
        "--host-data",
        &hex::encode(HOST_DATA),
    ];

    // Pinned to the certificate's fingerprint: the key goes in.
    let out = cli(&[
        "import-key",
        "--vault",
        &url,
        "--name",
        "model",
        "--key-file",
        &key_file,
        "--release-policy",
        policy.to_str().unwrap(),
        "--token-file",
        &admin,
        "--tls-pin-sha256",
        &cert_sha256,
    ]);
    assert!(out.status.success(), "import-key: {}", stderr(&out));

    // Pinned to the key's fingerprint: attestation and release over TLS give the key back.
    let mut release = vec!["release-key", "--maa", &url, "--vault", &url, "--key", "model"];
    let out_file = d("released.key");
    release.extend(["--out", &out_file, "--tls-pin-sha256", &spki_sha256]);
    release.extend(mock);
    let out = cli(&release);
    assert!(out.status.success(), "release-key: {}", stderr(&out));
    assert_eq!(std::fs::read(&out_file).unwrap(), key);

    // Pinned to the certificate file: a token.
    let served = d("served.pem");
    let mut attest = vec!["attest", "--maa", &url, "--runtime-data", &rt];
    attest.extend(mock);
    let pinned = [attest.as_slice(), &["--tls-pin-cert", &served]].concat();
    let out = cli(&pinned);
    assert!(out.status.success(), "attest: {}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim().split('.').count(), 3);

    // Not pinned (system roots), or pinned to another server: refused in the handshake.
    let out = cli(&attest);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("certificate"), "{}", stderr(&out));
    let other = hex::encode([0u8; 32]);
    let out = cli(&[attest.as_slice(), &["--tls-pin-sha256", &other]].concat());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not the pinned one"), "{}", stderr(&out));
    let out = cli(&[
        "import-key",
        "--vault",
        &url,
        "--name",
        "model",
        "--key-file",
        &key_file,
        "--release-policy",
        policy.to_str().unwrap(),
        "--token-file",
        &admin,
    ]);
    assert_eq!(out.status.code(), Some(1), "an unpinned import went through");
    drop(serve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_clients_pin_the_running_service_certificate() {
    let root = MockRoot::load(Path::new(&mock_root())).unwrap();
    let mut trust = TrustStore::amd();
    trust.add_mock_root(root.ark_pem().as_bytes()).unwrap();
    let tls = ServerTls::self_signed(&["127.0.0.1".into()]).unwrap();
    let admin = SecretBytes::from_slice(ADMIN.as_bytes());
    let svc = RunningService::start(ServiceConfig {
        trust,
        admin_token: Some(admin.clone()),
        tls: Some(tls.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(svc.url.starts_with("https://127.0.0.1:"), "{}", svc.url);
    let pin = TlsTrust::PinnedCert(tls.cert_der().to_vec());

    // Unpinned: the system roots do not know the certificate.
    let e = AttestationClient::new(&svc.url).unwrap().jwks().await.unwrap_err();
    assert!(matches!(e, attest::error::ClientError::Http { .. }), "{e}");

    let maa = AttestationClient::new(&svc.url).unwrap().with_tls(&pin).unwrap();
    let jwks = maa.jwks().await.unwrap();
    let policy = ReleasePolicy::from_json(
        format!(
            r#"{{"version":"1.0.0","anyOf":[{{"authority":"{}","allOf":[{}]}}]}}"#,
            svc.url,
            pinned_conditions()
        )
        .as_bytes(),
    )
    .unwrap();
    KeyReleaseClient::new(
        &svc.url,
        VaultAuth::Bearer(admin),
        ResponseVerification::Pinned(jwks.clone()),
    )
    .unwrap()
    .with_tls(&pin)
    .unwrap()
    .import_oct("k", &[9; 32], &policy)
    .await
    .unwrap();
    let vault = KeyReleaseClient::new(&svc.url, VaultAuth::None, ResponseVerification::Pinned(jwks))
        .unwrap()
        .with_tls(&TlsTrust::PinnedSha256(tls.fingerprints().spki_sha256))
        .unwrap();
    let att = MockAttester::new(
        &root,
        MockConfig {
            host_data: HOST_DATA,
            ..MockConfig::default()
        },
    )
    .unwrap();
    let key =
        attest::client::secure_key_release(&att, &maa, &vault, &KeyRef::parse("k"), &KeyDerivation::default(), None)
            .await
            .unwrap();
    assert_eq!(key.expose(), &[9; 32]);
    svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_issued_certificate_from_files_is_trusted_through_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let (chain, key, ca_file) = (
        dir.path().join("chain.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&chain, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let tls = ServerTls::from_pem_files(&chain, &key).unwrap();
    assert_eq!(tls.cert_der(), leaf.der().as_ref());
    let svc = RunningService::start(ServiceConfig {
        tls: Some(tls),
        ..Default::default()
    })
    .await
    .unwrap();
    let ca_trust = TlsTrust::CaCerts(attest::tls::read_certificates(&ca_file).unwrap());
    let jwks = AttestationClient::new(&svc.url)
        .unwrap()
        .with_tls(&ca_trust)
        .unwrap()
        .jwks()
        .await
        .unwrap();
    assert_eq!(jwks.keys.len(), 1);
    // Another CA's certificate does not vouch for it.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let other_trust = TlsTrust::CaCerts(vec![other.cert.der().to_vec()]);
    assert!(
        AttestationClient::new(&svc.url)
            .unwrap()
            .with_tls(&other_trust)
            .unwrap()
            .jwks()
            .await
            .is_err()
    );
    svc.stop().await.unwrap();

    // A key that is not the certificate's is refused at start.
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    assert!(ServerTls::from_pem_files(&chain, &key).is_err());
}

#[test]
fn serve_refuses_plain_http_on_a_non_loopback_address() {
    for listen in ["0.0.0.0:0", "[::]:0", "192.0.2.1:8443", "attest.example:8443"] {
        let out = cli(&["serve", "--listen", listen]);
        assert_eq!(out.status.code(), Some(1), "{listen}");
        let e = stderr(&out);
        assert!(
            e.contains(&format!("--listen {listen}: not a loopback address"))
                && e.contains("--dangerously-serve-plain-http"),
            "{e}"
        );
        assert!(e.contains("--tls-self-signed"), "{e}");
    }
}

#[test]
fn clients_refuse_plain_http_to_other_hosts_before_sending_anything() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (admin, key_file, rt) = (d("admin"), d("model.key"), d("rt.json"));
    std::fs::write(&admin, ADMIN).unwrap();
    std::fs::write(&key_file, [1u8; 32]).unwrap();
    std::fs::write(&rt, b"{}").unwrap();
    let remote = Remote::new();
    let policy = policy_file(dir.path(), &remote.url, &pinned_conditions());
    let local = format!("http://127.0.0.1:{}", free_port());
    let mock = ["--attester", "mock", "--mock-root", &mock_root()];
    let runs: Vec<(&str, Vec<&str>)> = vec![
        (
            "--vault",
            vec![
                "import-key",
                "--vault",
                &remote.url,
                "--name",
                "k",
                "--key-file",
                &key_file,
                "--release-policy",
                policy.to_str().unwrap(),
                "--token-file",
                &admin,
            ],
        ),
        ("--maa", vec!["attest", "--maa", &remote.url, "--runtime-data", &rt]),
        (
            "--maa",
            vec![
                "release-key",
                "--maa",
                &remote.url,
                "--vault",
                &local,
                "--key",
                "k",
                "--out",
                "/dev/null",
            ],
        ),
        (
            "--vault",
            vec![
                "release-key",
                "--maa",
                &local,
                "--vault",
                &remote.url,
                "--key",
                "k",
                "--out",
                "/dev/null",
            ],
        ),
    ];
    for (option, mut args) in runs {
        if args[0] != "import-key" {
            args.extend(mock);
        }
        let out = cli(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let e = stderr(&out);
        assert!(
            e.contains(&format!("{option}: plain http:// to ")) && e.contains("--dangerously-allow-plain-http"),
            "{args:?}: {e}"
        );
        assert_eq!(remote.connections(), 0, "{args:?} connected before refusing");
    }
    // With the option the request is sent (here to a listener that answers nothing useful).
    if remote.listener.is_some() {
        let mut args = vec!["attest", "--maa", &remote.url, "--runtime-data", &rt];
        args.extend(mock);
        args.push("--dangerously-allow-plain-http");
        let mut child = Command::new(BIN).args(&args).env("CINFER_LOG", "off").spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while remote.connections() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no request with --dangerously-allow-plain-http"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn import_key_refuses_a_weak_release_policy_naming_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (admin, key_file) = (d("admin"), d("model.key"));
    std::fs::write(&admin, ADMIN).unwrap();
    std::fs::write(&key_file, [1u8; 32]).unwrap();
    // A listener that is never answered: the refusal must come before any connection.
    let vault = TcpListener::bind("127.0.0.1:0").unwrap();
    vault.set_nonblocking(true).unwrap();
    let url = format!("http://{}", vault.local_addr().unwrap());
    let import = |policy: &Path, extra: &[&str]| {
        let args = [
            &[
                "import-key",
                "--vault",
                &url,
                "--name",
                "k",
                "--key-file",
                &key_file,
                "--token-file",
                &admin,
                "--release-policy",
                policy.to_str().unwrap(),
            ],
            extra,
        ]
        .concat();
        cli(&args)
    };
    let weak = policy_file(dir.path(), &url, r#"{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}"#);
    let out = import(&weak, &[]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("release policy too weak")
            && e.contains("pins neither x-ms-sevsnpvm-hostdata nor x-ms-policy-signer")
            && e.contains("x-ms-sevsnpvm-is-debuggable = false")
            && e.contains("--dangerously-accept-weak-policy"),
        "{e}"
    );
    let debuggable_ok = policy_file(
        dir.path(),
        &url,
        &format!(
            r#"{{"claim":"x-ms-sevsnpvm-hostdata","equals":"{}"}}"#,
            hex::encode(HOST_DATA)
        ),
    );
    let e = stderr(&import(&debuggable_ok, &[]));
    assert!(
        e.contains("does not require x-ms-sevsnpvm-is-debuggable = false"),
        "{e}"
    );
    assert!(!e.contains("pins neither"), "{e}");
    assert!(vault.accept().is_err(), "a weak policy was sent");

    // With the option, the import is attempted (and the service then refuses it: below).
    let mut child = Command::new(BIN)
        .args(["import-key", "--vault", &url, "--name", "k", "--key-file", &key_file])
        .args(["--token-file", &admin, "--release-policy", weak.to_str().unwrap()])
        .arg("--dangerously-accept-weak-policy")
        .env("CINFER_LOG", "off")
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while vault.accept().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "no import with --dangerously-accept-weak-policy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_refuses_weak_release_policies_unless_configured_to_accept_them() {
    let admin = SecretBytes::from_slice(ADMIN.as_bytes());
    for accept in [false, true] {
        let svc = RunningService::start(ServiceConfig {
            admin_token: Some(admin.clone()),
            dangerously_accept_weak_release_policies: accept,
            ..Default::default()
        })
        .await
        .unwrap();
        let vault = KeyReleaseClient::new(
            &svc.url,
            VaultAuth::Bearer(admin.clone()),
            ResponseVerification::DangerX5cLeafOnly,
        )
        .unwrap();
        let weak = ReleasePolicy::from_json(
            format!(
                r#"{{"version":"1.0.0","anyOf":[{{"authority":"{}","allOf":[{{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"}}]}}]}}"#,
                svc.url
            )
            .as_bytes(),
        )
        .unwrap();
        let result = vault.import_oct("k", &[1; 32], &weak).await;
        if accept {
            result.unwrap();
        } else {
            let e = result.unwrap_err().to_string();
            assert!(
                e.contains("HTTP 400") && e.contains("pins neither x-ms-sevsnpvm-hostdata"),
                "{e}"
            );
        }
        svc.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tokens_shorter_than_16_bytes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "fifteen-bytes!!\n").unwrap();
    let out = cli(&["serve", "--admin-token-file", short.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("--admin-token-file") && e.contains("a token of 15 bytes; at least 16 are required"),
        "{e}"
    );
    let e = RunningService::start(ServiceConfig {
        admin_token: Some(SecretBytes::from_slice(b"short")),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("admin token: 5 bytes, at least 16"), "{e}");
}
