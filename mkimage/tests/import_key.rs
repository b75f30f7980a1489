//! `cinfer-mkimage import-key` against the local attestation service and key broker: the imported key is
//! released only to evidence with the policy's host_data, and RSA-HSM keys derive the model key written to
//! `--key-file`.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use attest::client::{
    AttestationClient, KeyRef, KeyReleaseClient, ResponseVerification, VaultAuth, secure_key_release,
};
use attest::evidence::{MockAttester, MockConfig, MockRoot};
use attest::keywrap::KeyDerivation;
use attest::secret::SecretBytes;
use attest::service::{RunningService, ServiceConfig};
use attest::verify::TrustStore;

const H: [u8; 32] = [0x4a; 32];

#[test]
fn imported_keys_release_only_to_the_policy_host_data() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = MockRoot::generate(attest::report::Generation::Milan).unwrap();
    let mut trust = TrustStore::amd();
    trust.add_mock_root(root.ark_pem().as_bytes()).unwrap();
    let svc = rt
        .block_on(RunningService::start(ServiceConfig {
            trust,
            admin_token: Some(SecretBytes::from_slice(b"import-key-admin-token")),
            ..Default::default()
        }))
        .unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "import-key-admin-token\n").unwrap();
    let key_file = dir.path().join("model.key");
    let key = [0x5cu8; 32];
    std::fs::write(&key_file, key).unwrap();

    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cinfer-mkimage"))
            .arg("import-key")
            .args([
                "--vault",
                &svc.url,
                "--authority",
                &svc.url,
                "--host-data",
                &hex::encode(H),
            ])
            .arg("--token-file")
            .arg(&token_file)
            .args(args)
            .output()
            .unwrap()
    };
    // oct-HSM: the model key itself.
    let out = run(&[
        "--name",
        "oct-key",
        "--kty",
        "oct-HSM",
        "--key-file",
        key_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("x-ms-sevsnpvm-hostdata"), "{stdout}");
    assert!(stdout.contains(&hex::encode(H)), "{stdout}");

    // RSA-HSM: the derived key goes to --key-file (new, mode 0600).
    let derived = dir.path().join("derived.key");
    let salt = "92a631483ca875aad7e2477da755d58cac3876b77d10bcdd7b33bfa11e7d8b8e";
    let out = run(&[
        "--name",
        "rsa-key",
        "--kty",
        "RSA-HSM",
        "--key-file",
        derived.to_str().unwrap(),
        "--salt",
        salt,
        "--label",
        "Model Encryption Key",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let derived_key = std::fs::read(&derived).unwrap();
    assert_eq!(derived_key.len(), 32);
    assert_eq!(std::fs::metadata(&derived).unwrap().permissions().mode() & 0o777, 0o600);
    // A second RSA import refuses to overwrite the key file.
    let again = run(&[
        "--name",
        "rsa-key2",
        "--kty",
        "RSA-HSM",
        "--key-file",
        derived.to_str().unwrap(),
    ]);
    assert!(!again.status.success());

    rt.block_on(async {
        let maa = AttestationClient::new(&svc.url).unwrap();
        let vault = KeyReleaseClient::new(
            &svc.url,
            VaultAuth::None,
            ResponseVerification::Pinned(maa.jwks().await.unwrap()),
        )
        .unwrap();
        let good = MockAttester::new(
            &root,
            MockConfig {
                host_data: H,
                ..Default::default()
            },
        )
        .unwrap();
        let bad = MockAttester::new(
            &root,
            MockConfig {
                host_data: [0x11; 32],
                ..Default::default()
            },
        )
        .unwrap();
        let none = KeyDerivation::default();
        let k = secure_key_release(&good, &maa, &vault, &KeyRef::parse("oct-key"), &none, None)
            .await
            .unwrap();
        assert_eq!(k.expose(), &key);
        let e = secure_key_release(&bad, &maa, &vault, &KeyRef::parse("oct-key"), &none, None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("x-ms-sevsnpvm-hostdata"), "{e}");
        let d = KeyDerivation {
            salt: salt.into(),
            label: "Model Encryption Key".into(),
        };
        let k = secure_key_release(&good, &maa, &vault, &KeyRef::parse("rsa-key"), &d, None)
            .await
            .unwrap();
        assert_eq!(&k.expose()[..], &derived_key[..]);
    });
}

/// The raw model key and the token never go over plain HTTP to a remote address: refused before anything is sent,
/// naming the option; loopback (the local broker) is fine, as above.
#[test]
fn import_key_refuses_plain_http_to_a_remote_vault() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("model.key");
    std::fs::write(&key_file, [0x5cu8; 32]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cinfer-mkimage"))
        .arg("import-key")
        .args(["--vault", "http://192.0.2.7:8443", "--authority", "https://maa.example"])
        .args(["--host-data", &hex::encode(H), "--name", "k", "--key-file"])
        .arg(&key_file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--vault: plain http:// to 192.0.2.7, which is not a loopback address"),
        "{err}"
    );
}
