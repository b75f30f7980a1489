//! Service behaviour over loopback: signed policies and x-ms-policy-signer, policy hot reload, policy
//! update and key import authentication (disabled without an admin token), durable key store across restarts,
//! `x-ms-compliance-status` only for listed launch measurements, the appraisal (minimum TCB, report version,
//! migration agent) before the policy.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use attest::appraisal::{Appraisal, MinimumTcb};
use attest::client::{AttestationClient, KeyRef, KeyReleaseClient, ResponseVerification, VaultAuth};
use attest::evidence::{MockAttester, MockConfig, MockRoot};
use attest::keywrap::{KeyDerivation, RuntimeKey};
use attest::policy::{ReleasePolicy, sign_policy};
use attest::secret::SecretBytes;
use attest::service::{RunningService, ServiceConfig};
use attest::token::{SigningIdentity, TokenCheck, verify_token};
use attest::verify::TrustStore;
use rsa::pkcs8::{EncodePrivateKey, LineEnding};

fn root() -> MockRoot {
    MockRoot::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/mock-root"
    )))
    .unwrap()
}

/// The release conditions every imported key needs (the service refuses policies that do not pin the workload
/// and a non-debuggable guest): the mock attester's default host_data (zeros), not debuggable.
const PINNED: &str = r#"{"claim":"x-ms-sevsnpvm-hostdata","equals":"0000000000000000000000000000000000000000000000000000000000000000"},{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"}"#;

fn trust(root: &MockRoot) -> TrustStore {
    let mut t = TrustStore::amd();
    t.add_mock_root(root.ark_pem().as_bytes()).unwrap();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_policy_is_enforced_reported_and_hot_reloaded() {
    let root = root();
    let dir = tempfile::tempdir().unwrap();
    let auditor_key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
    let auditor_pem = auditor_key.to_pkcs8_pem(LineEnding::LF).unwrap();
    let auditor = SigningIdentity::from_pkcs8_pem(&auditor_pem, "auditor").unwrap();
    let permit_hd = |hd: &str| {
        format!(
            "version=1.0; authorizationrules {{ [type==\"x-ms-sevsnpvm-hostdata\", value==\"{hd}\"] => permit(); }};"
        )
    };
    let policy_path = dir.path().join("policy.jws");
    let good = hex::encode([0x11u8; 32]);
    std::fs::write(
        &policy_path,
        sign_policy(&permit_hd(&good), &auditor_pem, auditor.cert_der()).unwrap(),
    )
    .unwrap();
    let svc = RunningService::start(ServiceConfig {
        trust: trust(&root),
        policy_file: Some(policy_path.clone()),
        policy_signers: vec![auditor.cert_der().to_vec()],
        ..Default::default()
    })
    .await
    .unwrap();
    let maa = AttestationClient::new(&svc.url).unwrap();
    let jwks = maa.jwks().await.unwrap();
    let att = MockAttester::new(
        &root,
        MockConfig {
            host_data: [0x11; 32],
            ..MockConfig::default()
        },
    )
    .unwrap();
    let token = maa.attest_with(&att, b"{}").await.unwrap();
    let claims = verify_token(&token, &jwks, &TokenCheck::issuer(svc.url.clone())).unwrap();
    let signer = &claims["x-ms-policy-signer"];
    assert_eq!(signer["kty"], "RSA");
    assert_eq!(
        signer["x5c"][0],
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, auditor.cert_der())
    );

    // Update the file: the new policy applies to the next request without restart.
    let other = hex::encode([0x22u8; 32]);
    std::fs::write(
        &policy_path,
        sign_policy(&permit_hd(&other), &auditor_pem, auditor.cert_der()).unwrap(),
    )
    .unwrap();
    let err = maa.attest_with(&att, b"{}").await.unwrap_err().to_string();
    assert!(err.contains("attestation policy: denied"), "{err}");

    // An unsigned replacement makes attestation fail closed.
    std::fs::write(&policy_path, permit_hd(&good)).unwrap();
    let err = maa.attest_with(&att, b"{}").await.unwrap_err().to_string();
    assert!(err.contains("policy signer"), "{err}");
    svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_update_requires_the_admin_token_and_applies_immediately() {
    let root = root();
    let admin = SecretBytes::from_slice(b"policy-admin-token");
    let svc = RunningService::start(ServiceConfig {
        trust: trust(&root),
        admin_token: Some(admin),
        ..Default::default()
    })
    .await
    .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let url = format!("{}/policies/SevSnpVm?api-version=2022-08-01", svc.url);
    let deny = "version=1.0; authorizationrules { [type==\"x-ms-sevsnpvm-vmpl\", value==7] => permit(); };";
    let r = http.put(&url).body(deny).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.put(&url).bearer_auth("wrong").body(deny).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let maa = AttestationClient::new(&svc.url).unwrap();
    let att = MockAttester::new(&root, MockConfig::default()).unwrap();
    maa.attest_with(&att, b"{}").await.unwrap();
    let r = http
        .put(&url)
        .bearer_auth("policy-admin-token")
        .body(deny)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let err = maa.attest_with(&att, b"{}").await.unwrap_err().to_string();
    assert!(err.contains("attestation policy: denied"), "{err}");
    svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_signing_key_survive_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    let root = root();
    let dir = tempfile::tempdir().unwrap();
    let admin = SecretBytes::from_slice(b"restart-admin-token");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServiceConfig {
        trust: trust(&root),
        admin_token: Some(admin.clone()),
        state_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let svc = RunningService::start_on(listener, config.clone()).await.unwrap();
    let policy = ReleasePolicy::from_json(
        format!(
            r#"{{"version":"1.0.0","anyOf":[{{"authority":"{}","allOf":[{PINNED},{{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}}]}}]}}"#,
            svc.url
        )
        .as_bytes(),
    )
    .unwrap();
    let maa = AttestationClient::new(&svc.url).unwrap();
    let jwks_before = maa.jwks().await.unwrap();
    KeyReleaseClient::new(
        &svc.url,
        VaultAuth::Bearer(admin),
        ResponseVerification::Pinned(jwks_before.clone()),
    )
    .unwrap()
    .import_oct("persisted", &[0x33; 32], &policy)
    .await
    .unwrap();
    svc.stop().await.unwrap();
    let key_file = dir.path().join("keys/persisted.json");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Same address, same state dir: same signing key, same key.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let svc = RunningService::start_on(listener, config).await.unwrap();
    let maa = AttestationClient::new(&svc.url).unwrap();
    assert_eq!(maa.jwks().await.unwrap(), jwks_before);
    let vault = KeyReleaseClient::new(&svc.url, VaultAuth::None, ResponseVerification::Pinned(jwks_before)).unwrap();
    let att = MockAttester::new(&root, MockConfig::default()).unwrap();
    let rk = RuntimeKey::generate().unwrap();
    let key = attest::client::secure_key_release(
        &att,
        &maa,
        &vault,
        &KeyRef::parse("persisted"),
        &KeyDerivation::default(),
        Some(&rk),
    )
    .await
    .unwrap();
    assert_eq!(key.expose(), &[0x33; 32]);
    svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_refuses_untrusted_issuers_and_wrong_authorities() {
    let root = root();
    let admin = SecretBytes::from_slice(b"broker-admin-token");
    let svc = RunningService::start(ServiceConfig {
        trust: trust(&root),
        admin_token: Some(admin.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let maa = AttestationClient::new(&svc.url).unwrap();
    let jwks = maa.jwks().await.unwrap();
    let admin_client = KeyReleaseClient::new(
        &svc.url,
        VaultAuth::Bearer(admin),
        ResponseVerification::Pinned(jwks.clone()),
    )
    .unwrap();
    let vault = KeyReleaseClient::new(&svc.url, VaultAuth::None, ResponseVerification::Pinned(jwks)).unwrap();
    let policy_for = |authority: &str| {
        ReleasePolicy::from_json(
            format!(
                r#"{{"version":"1.0.0","anyOf":[{{"authority":"{authority}","allOf":[{PINNED},{{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}}]}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    };
    admin_client
        .import_oct("k1", &[1; 32], &policy_for(&svc.url))
        .await
        .unwrap();
    admin_client
        .import_oct("k2", &[2; 32], &policy_for("https://other-maa.example"))
        .await
        .unwrap();
    let rk = RuntimeKey::generate().unwrap();
    let att = MockAttester::new(&root, MockConfig::default()).unwrap();
    let token = maa.attest_with(&att, &rk.runtime_data()).await.unwrap();

    // Our token, but k2's policy names another authority.
    let err = vault
        .release(&KeyRef::parse("k2"), &token, &rk)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("release policy authority"), "{err}");

    // A well-formed token from an issuer the broker does not trust.
    let rogue = SigningIdentity::generate("rogue").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let forged = rogue
        .sign(
            &serde_json::json!({"iss": "https://rogue.example", "exp": now + 600, "x-ms-sevsnpvm-vmpl": 0,
                                "x-ms-runtime": serde_json::from_slice::<serde_json::Value>(&rk.runtime_data()).unwrap()}),
            None,
            false,
        )
        .unwrap();
    let err = vault
        .release(&KeyRef::parse("k1"), &forged, &rk)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("untrusted issuer"), "{err}");

    // Our issuer claimed, but signed by the rogue key.
    let forged = rogue
        .sign(
            &serde_json::json!({"iss": svc.url, "exp": now + 600, "x-ms-sevsnpvm-vmpl": 0}),
            None,
            false,
        )
        .unwrap();
    let err = vault
        .release(&KeyRef::parse("k1"), &forged, &rk)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("token signing key") || err.contains("token signature"),
        "{err}"
    );

    // The genuine token releases k1.
    let k = vault.release(&KeyRef::parse("k1"), &token, &rk).await.unwrap();
    assert_eq!(k.to_model_key(&KeyDerivation::default()).unwrap().expose(), &[1; 32]);
    // Unknown key.
    let err = vault
        .release(&KeyRef::parse("nope"), &token, &rk)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("404"), "{err}");
    svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_accepts_tokens_from_a_configured_external_authority() {
    let root = root();
    // A: the attestation service (stands in for MAA). B: a key broker trusting A.
    let a = RunningService::start(ServiceConfig {
        trust: trust(&root),
        ..Default::default()
    })
    .await
    .unwrap();
    let maa = AttestationClient::new(&a.url).unwrap();
    let a_jwks = maa.jwks().await.unwrap();
    let admin = SecretBytes::from_slice(b"external-admin-token");
    let b = RunningService::start(ServiceConfig {
        trust: TrustStore::empty(),
        admin_token: Some(admin.clone()),
        trusted_authorities: vec![attest::service::TrustedAuthority {
            issuer: a.url.clone(),
            jwks: a_jwks,
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let b_jwks = AttestationClient::new(&b.url).unwrap().jwks().await.unwrap();
    let policy = ReleasePolicy::from_json(
        format!(
            r#"{{"version":"1.0.0","anyOf":[{{"authority":"{}","allOf":[{PINNED}]}}]}}"#,
            a.url
        )
        .as_bytes(),
    )
    .unwrap();
    KeyReleaseClient::new(
        &b.url,
        VaultAuth::Bearer(admin),
        ResponseVerification::Pinned(b_jwks.clone()),
    )
    .unwrap()
    .import_oct("ext", &[0x44; 32], &policy)
    .await
    .unwrap();
    let vault = KeyReleaseClient::new(&b.url, VaultAuth::None, ResponseVerification::Pinned(b_jwks)).unwrap();
    let att = MockAttester::new(&root, MockConfig::default()).unwrap();
    let key = attest::client::secure_key_release(
        &att,
        &maa,
        &vault,
        &KeyRef::parse("ext"),
        &KeyDerivation::default(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(key.expose(), &[0x44; 32]);
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

/// The `(status, error.code, error.message)` of a service answer.
async fn answer(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap();
    let field = |f: &str| body["error"][f].as_str().unwrap_or_default().to_owned();
    (status, field("code"), field("message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_key_import_and_policy_update_are_forbidden_whatever_token_is_sent() {
    let root = root();
    let svc = RunningService::start(ServiceConfig {
        trust: trust(&root),
        admin_token: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let policy_url = format!("{}/policies/SevSnpVm?api-version=2022-08-01", svc.url);
    let key_url = format!("{}/keys/k?api-version=7.4", svc.url);
    let before: serde_json::Value = http.get(&policy_url).send().await.unwrap().json().await.unwrap();
    let deny = "version=1.0; authorizationrules { [type==\"x-ms-sevsnpvm-vmpl\", value==7] => permit(); };";
    let release = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        br#"{"version":"1.0.0","anyOf":[{"authority":"x","allOf":[{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}]}]}"#,
    );
    let import = serde_json::json!({
        "key": {"kty": "oct-HSM", "k": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "key_ops": ["encrypt"]},
        "release_policy": {"contentType": "application/json; charset=utf-8", "data": release},
    });
    // No token, a made-up token, and a token that would be "right" anywhere: all refused by the disabled check.
    for token in [None, Some("wrong"), Some("admin")] {
        let with = |rb: reqwest::RequestBuilder| match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        };
        for (what, rb) in [
            ("policy update", with(http.put(&policy_url).body(deny))),
            ("key import", with(http.put(&key_url).json(&import))),
        ] {
            let (status, code, message) = answer(rb.send().await.unwrap()).await;
            assert_eq!(
                (status, code.as_str(), message.as_str()),
                (
                    403,
                    "Forbidden",
                    "administration is disabled (no admin token configured)"
                ),
                "{what} with token {token:?}"
            );
        }
    }
    // Nothing changed: no key, the same policy, and attestation still permitted.
    assert_eq!(http.get(&key_url).send().await.unwrap().status(), 404);
    let after: serde_json::Value = http.get(&policy_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(before, after);
    let att = MockAttester::new(&root, MockConfig::default()).unwrap();
    AttestationClient::new(&svc.url)
        .unwrap()
        .attest_with(&att, b"{}")
        .await
        .unwrap();
    svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_import_refuses_a_missing_or_wrong_admin_token_and_creates_nothing() {
    let root = root();
    let svc = RunningService::start(ServiceConfig {
        trust: trust(&root),
        admin_token: Some(SecretBytes::from_slice(b"key-admin-token-1")),
        ..Default::default()
    })
    .await
    .unwrap();
    let jwks = AttestationClient::new(&svc.url).unwrap().jwks().await.unwrap();
    let policy = ReleasePolicy::from_json(
        format!(
            r#"{{"version":"1.0.0","anyOf":[{{"authority":"{}","allOf":[{PINNED},{{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}}]}}]}}"#,
            svc.url
        )
        .as_bytes(),
    )
    .unwrap();
    let import = |auth: VaultAuth| {
        let client = KeyReleaseClient::new(&svc.url, auth, ResponseVerification::Pinned(jwks.clone())).unwrap();
        let policy = policy.clone();
        async move { client.import_oct("k", &[7; 32], &policy).await }
    };
    for (auth, detail) in [
        (VaultAuth::None, "missing bearer token"),
        (
            VaultAuth::Bearer(SecretBytes::from_slice(b"key-admin-token-")),
            "invalid bearer token",
        ),
        (
            VaultAuth::Bearer(SecretBytes::from_slice(b"key-admin-token-2")),
            "invalid bearer token",
        ),
    ] {
        match import(auth).await.unwrap_err() {
            attest::error::ClientError::Status { status, body, .. } => {
                assert_eq!(status, 401, "{body}");
                assert!(body.contains(detail), "{body}");
            }
            e => panic!("expected HTTP 401, got {e}"),
        }
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key_url = format!("{}/keys/k?api-version=7.4", svc.url);
    assert_eq!(reqwest::get(&key_url).await.unwrap().status(), 404);
    import(VaultAuth::Bearer(SecretBytes::from_slice(b"key-admin-token-1")))
        .await
        .unwrap();
    assert_eq!(reqwest::get(&key_url).await.unwrap().status(), 200);
    svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_listed_launch_measurement_is_an_azure_compliant_uvm() {
    let root = root();
    let listed = [0xc3u8; 48];
    let mut unlisted = listed;
    unlisted[47] ^= 1;
    let admin = SecretBytes::from_slice(b"compliance-admin");
    let svc = RunningService::start(ServiceConfig {
        trust: trust(&root),
        // Upper case: the list is matched without regard to hex case.
        compliant_measurements: vec![hex::encode_upper(listed)],
        admin_token: Some(admin.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let maa = AttestationClient::new(&svc.url).unwrap();
    let jwks = maa.jwks().await.unwrap();
    let policy = ReleasePolicy::from_json(
        format!(
            r#"{{"version":"1.0.0","anyOf":[{{"authority":"{}","allOf":[{PINNED},{{"claim":"x-ms-compliance-status","equals":"azure-compliant-uvm"}}]}}]}}"#,
            svc.url
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
    .import_oct("uvm-key", &[0x5c; 32], &policy)
    .await
    .unwrap();
    let vault = KeyReleaseClient::new(&svc.url, VaultAuth::None, ResponseVerification::Pinned(jwks.clone())).unwrap();
    let rk = RuntimeKey::generate().unwrap();
    let token_for = |measurement: [u8; 48]| {
        let att = MockAttester::new(
            &root,
            MockConfig {
                measurement,
                ..MockConfig::default()
            },
        )
        .unwrap();
        let (maa, rd) = (&maa, rk.runtime_data());
        async move { maa.attest_with(&att, &rd).await.unwrap() }
    };
    let check = TokenCheck::issuer(svc.url.clone());

    let token = token_for(listed).await;
    let claims = verify_token(&token, &jwks, &check).unwrap();
    assert_eq!(claims["x-ms-sevsnpvm-launchmeasurement"], hex::encode(listed));
    assert_eq!(claims["x-ms-compliance-status"], "azure-compliant-uvm");
    let key = vault.release(&KeyRef::parse("uvm-key"), &token, &rk).await.unwrap();
    assert_eq!(
        key.to_model_key(&KeyDerivation::default()).unwrap().expose(),
        &[0x5c; 32]
    );

    // One bit away from the listed measurement: verified and attested, but not compliant, so not released.
    let token = token_for(unlisted).await;
    let claims = verify_token(&token, &jwks, &check).unwrap();
    assert_eq!(claims["x-ms-sevsnpvm-launchmeasurement"], hex::encode(unlisted));
    assert!(claims.get("x-ms-compliance-status").is_none(), "{claims:?}");
    match vault.release(&KeyRef::parse("uvm-key"), &token, &rk).await.unwrap_err() {
        attest::error::ClientError::Status { status, body, .. } => {
            assert_eq!(status, 403, "{body}");
            assert!(
                body.contains("release policy: not satisfied") && body.contains("x-ms-compliance-status"),
                "{body}"
            );
        }
        e => panic!("expected HTTP 403, got {e}"),
    }
    svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_appraisal_refuses_low_tcb_old_report_versions_and_migration_agents() {
    let root = root();
    let mut min_tcb = MinimumTcb::amd_default();
    min_tcb.apply_spec("milan:microcode=220").unwrap();
    let strict = |appraisal: Appraisal| ServiceConfig {
        trust: trust(&root),
        appraisal,
        ..Default::default()
    };
    let refused = |svc: &RunningService, cfg: MockConfig| {
        let maa = AttestationClient::new(&svc.url).unwrap();
        let att = MockAttester::new(&root, cfg).unwrap();
        async move {
            match maa.attest_with(&att, b"{}").await.unwrap_err() {
                attest::error::ClientError::Status { status, body, .. } => {
                    assert_eq!(status, 400, "{body}");
                    body
                }
                e => panic!("expected HTTP 400, got {e}"),
            }
        }
    };
    let svc = RunningService::start(strict(Appraisal {
        min_tcb,
        min_report_version: 3,
        allow_migration_agent: false,
    }))
    .await
    .unwrap();
    let body = refused(&svc, MockConfig::default()).await;
    assert_eq!(body, "tcb minimum: Milan microcode SVN 219 is below the minimum 220");
    svc.stop().await.unwrap();

    // Default floors: version 2 is accepted, a floor of 3 refuses it; migration agents are refused.
    let svc = RunningService::start(strict(Appraisal {
        min_report_version: 3,
        ..Appraisal::default()
    }))
    .await
    .unwrap();
    let v2 = MockConfig {
        version: 2,
        ..MockConfig::default()
    };
    assert_eq!(refused(&svc, v2).await, "report version: 2 is below the minimum 3");
    let ma = || MockConfig {
        migration_agent: true,
        ..MockConfig::default()
    };
    assert!(refused(&svc, ma()).await.starts_with("migration agent:"));
    AttestationClient::new(&svc.url)
        .unwrap()
        .attest_with(&MockAttester::new(&root, MockConfig::default()).unwrap(), b"{}")
        .await
        .unwrap();
    svc.stop().await.unwrap();

    let svc = RunningService::start(strict(Appraisal {
        allow_migration_agent: true,
        ..Appraisal::default()
    }))
    .await
    .unwrap();
    let maa = AttestationClient::new(&svc.url).unwrap();
    let token = maa
        .attest_with(&MockAttester::new(&root, ma()).unwrap(), b"{}")
        .await
        .unwrap();
    let claims = verify_token(&token, &maa.jwks().await.unwrap(), &TokenCheck::issuer(svc.url.clone())).unwrap();
    assert_eq!(claims["x-ms-sevsnpvm-migration-allowed"], true);
    assert_eq!(claims["x-cinfer-report-version"], 3);
    assert_eq!(claims["x-ms-sevsnpvm-microcode-svn"], 219);
    svc.stop().await.unwrap();
}
