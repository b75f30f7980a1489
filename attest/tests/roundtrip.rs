//! Loopback round trip: mock attester → attestation service → token → key release → unwrap → same key.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use attest::client::{
    AttestationClient, KeyRef, KeyReleaseClient, ResponseVerification, VaultAuth, secure_key_release,
};
use attest::evidence::{MockAttester, MockConfig, MockRoot};
use attest::keywrap::{KeyDerivation, RuntimeKey};
use attest::policy::ReleasePolicy;
use attest::report::Generation;
use attest::secret::SecretBytes;
use attest::service::{RunningService, ServiceConfig};
use attest::token::{TokenCheck, verify_token};
use attest::verify::TrustStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_attest_release_unwrap_yields_the_imported_key() {
    let root = MockRoot::generate(Generation::Milan).unwrap();
    let mut trust = TrustStore::amd();
    trust.add_mock_root(root.ark_pem().as_bytes()).unwrap();
    let admin = SecretBytes::from_slice(b"test-admin-token");
    let svc = RunningService::start(ServiceConfig {
        trust,
        admin_token: Some(admin.clone()),
        ..Default::default()
    })
    .await
    .unwrap();

    let host_data = [0xabu8; 32];
    let policy = ReleasePolicy::from_json(
        format!(
            r#"{{"version":"1.0.0","anyOf":[{{"authority":"{}","allOf":[
                {{"claim":"x-ms-sevsnpvm-hostdata","equals":"{}"}},
                {{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"}},
                {{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}}]}}]}}"#,
            svc.url,
            hex::encode(host_data)
        )
        .as_bytes(),
    )
    .unwrap();
    let maa = AttestationClient::new(&svc.url).unwrap();
    let jwks = maa.jwks().await.unwrap();
    let model_key: [u8; 32] = std::array::from_fn(|i| i as u8 ^ 0x5c);
    KeyReleaseClient::new(
        &svc.url,
        VaultAuth::Bearer(admin),
        ResponseVerification::Pinned(jwks.clone()),
    )
    .unwrap()
    .import_oct("model-key", &model_key, &policy)
    .await
    .unwrap();

    // Import without the admin token is refused.
    let anon = KeyReleaseClient::new(&svc.url, VaultAuth::None, ResponseVerification::Pinned(jwks.clone())).unwrap();
    let err = anon.import_oct("model-key", &[0u8; 32], &policy).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    let attester = MockAttester::new(
        &root,
        MockConfig {
            host_data,
            ..MockConfig::default()
        },
    )
    .unwrap();
    let rk = RuntimeKey::generate().unwrap();
    let got = secure_key_release(
        &attester,
        &maa,
        &anon,
        &KeyRef::parse("model-key"),
        &KeyDerivation::default(),
        Some(&rk),
    )
    .await
    .unwrap();
    assert_eq!(got.expose(), &model_key);

    // The token verifies with the pinned JWKS and carries the runtime key and MAA claims.
    let token = maa.attest_with(&attester, &rk.runtime_data()).await.unwrap();
    let claims = verify_token(&token, &jwks, &TokenCheck::issuer(svc.url.clone())).unwrap();
    assert_eq!(claims["x-ms-attestation-type"], "sevsnpvm");
    assert_eq!(claims["x-ms-sevsnpvm-hostdata"], hex::encode(host_data));
    assert_eq!(claims["x-ms-sevsnpvm-is-debuggable"], false);
    assert_eq!(claims["x-ms-runtime"]["keys"][0]["kid"], rk.kid());
    assert!(claims["x-cinfer-root"].as_str().unwrap().starts_with("mock:"));

    // A guest with other host_data gets a token but not the key.
    let other = MockAttester::new(
        &root,
        MockConfig {
            host_data: [1; 32],
            ..MockConfig::default()
        },
    )
    .unwrap();
    let err = secure_key_release(
        &other,
        &maa,
        &anon,
        &KeyRef::parse("model-key"),
        &KeyDerivation::default(),
        Some(&rk),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("release policy: not satisfied"), "{err}");
    svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_evidence_is_refused_when_the_mock_root_is_not_trusted() {
    let root = MockRoot::generate(Generation::Milan).unwrap();
    let svc = RunningService::start(ServiceConfig::default()).await.unwrap();
    let maa = AttestationClient::new(&svc.url).unwrap();
    let attester = MockAttester::new(&root, MockConfig::default()).unwrap();
    let err = maa.attest_with(&attester, br#"{"keys":[]}"#).await.unwrap_err();
    assert!(err.to_string().contains("root: ARK"), "{err}");
    svc.stop().await.unwrap();
}
