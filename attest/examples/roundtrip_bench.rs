//! Benchmark: attest + release round trip on loopback (mock attester → service → token → release →
//! unwrap). Prints median, p90 and mean over N iterations.
//!
//! `cargo run --release -p attest --example roundtrip_bench [-- N]`
#![allow(clippy::unwrap_used)] // a benchmark: a panic is the failure report

use std::time::{Duration, Instant};

use attest::client::{
    AttestationClient, KeyRef, KeyReleaseClient, ResponseVerification, VaultAuth, secure_key_release,
};
use attest::evidence::{MockAttester, MockConfig, MockRoot};
use attest::keywrap::{KeyDerivation, RuntimeKey};
use attest::policy::ReleasePolicy;
use attest::secret::SecretBytes;
use attest::service::{RunningService, ServiceConfig};
use attest::verify::TrustStore;

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
    println!(
        "{name}: n={} median={:.2} ms p90={:.2} ms min={:.2} ms max={:.2} ms mean={:.2} ms",
        v.len(),
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(v[0]),
        ms(v[v.len() - 1]),
        mean
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let root = MockRoot::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/mock-root"
    )))
    .unwrap();
    let mut trust = TrustStore::amd();
    trust.add_mock_root(root.ark_pem().as_bytes()).unwrap();
    let admin = SecretBytes::from_slice(b"bench-admin-token");
    let svc = RunningService::start(ServiceConfig {
        trust,
        admin_token: Some(admin.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let maa = AttestationClient::new(&svc.url).unwrap();
    let jwks = maa.jwks().await.unwrap();
    let policy = ReleasePolicy::from_json(
        format!(
            r#"{{"version":"1.0.0","anyOf":[{{"authority":"{}","allOf":[{{"claim":"x-ms-sevsnpvm-hostdata","equals":"{}"}},{{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"}},{{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}}]}}]}}"#,
            svc.url,
            hex::encode(MockConfig::default().host_data)
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
    .import_oct("bench", &[0x42; 32], &policy)
    .await
    .unwrap();
    let vault = KeyReleaseClient::new(&svc.url, VaultAuth::None, ResponseVerification::Pinned(jwks)).unwrap();
    let attester = MockAttester::new(&root, MockConfig::default()).unwrap();
    let key = KeyRef::parse("bench");
    let rk = RuntimeKey::generate().unwrap();

    // Warm-up.
    for _ in 0..5 {
        secure_key_release(&attester, &maa, &vault, &key, &KeyDerivation::default(), Some(&rk))
            .await
            .unwrap();
    }
    let mut rt = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let k = secure_key_release(&attester, &maa, &vault, &key, &KeyDerivation::default(), Some(&rk))
            .await
            .unwrap();
        rt.push(t.elapsed());
        assert_eq!(k.expose(), &[0x42; 32]);
    }
    stats("attest+release round trip (runtime key reused)", rt);

    let mut attest_only = Vec::with_capacity(n);
    let data = rk.runtime_data();
    for _ in 0..n {
        let t = Instant::now();
        maa.attest_with(&attester, &data).await.unwrap();
        attest_only.push(t.elapsed());
    }
    stats("attest only", attest_only);

    let m = 10.min(n);
    let mut keygen = Vec::with_capacity(m);
    for _ in 0..m {
        let t = Instant::now();
        let _ = RuntimeKey::generate().unwrap();
        keygen.push(t.elapsed());
    }
    stats("RSA-2048 runtime key generation (once per process)", keygen);
    svc.stop().await.unwrap();
}
