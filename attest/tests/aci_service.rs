//! `cinfer-attest serve` computes `x-ms-compliance-status` from the UVM endorsement sent with the evidence
//! (MAA's `Endorsements.Uvm`), as the sidecar and the proxy server send it: evidence assembled from an ACI
//! security-context directory ([`UvmInformation::evidence`], what the SNP device attester returns) and the
//! client's request body. A failing endorsement is refused with its check named; no endorsement, no
//! compliance; a mock UVM signer's endorsement counts only where its issuer is configured.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use attest::client::{AttestationClient, KeyRef, KeyReleaseClient, ResponseVerification, VaultAuth};
use attest::endorsement::UvmTrust;
use attest::endorsement::mock::MockUvmSigner;
use attest::error::{ClientError, EvidenceError};
use attest::evidence::{Attester, Evidence, MockAttester, MockConfig, MockRoot, UvmInformation};
use attest::keywrap::{KeyDerivation, RuntimeKey};
use attest::policy::ReleasePolicy;
use attest::secret::SecretBytes;
use attest::service::{RunningService, ServiceConfig};
use attest::token::{Claims, TokenCheck, verify_token};
use attest::verify::TrustStore;
use base64::Engine as _;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/aci");
const REPORT: &[u8] = include_bytes!("data/aci/snp_report.bin");
const ENDORSEMENT: &[u8] = include_bytes!("data/aci/body.uvm_reference_info.bin");
const RUNTIME: &[u8] = b"{\n   \"akey\" : \"avalue\"\n}\n";

/// An ACI security-context directory holding the real set, each file base64 as the host writes it.
fn security_context(endorsement: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    std::fs::copy(
        format!("{DATA}/uvm_security_policy.base64"),
        dir.path().join("security-policy-base64"),
    )
    .unwrap();
    let thim = std::fs::read(format!("{DATA}/uvm_host_amd_certificate.json")).unwrap();
    std::fs::write(dir.path().join("host-amd-cert-base64"), b64(&thim)).unwrap();
    if !endorsement.is_empty() {
        std::fs::write(dir.path().join("reference-info-base64"), b64(endorsement)).unwrap();
    }
    dir
}

/// The evidence an SNP device attester on that host returns for the real report.
fn aci_evidence(endorsement: &[u8]) -> Evidence {
    let dir = security_context(endorsement);
    UvmInformation::from_dir(dir.path())
        .unwrap()
        .evidence(REPORT.to_vec())
        .unwrap()
}

async fn claims_of(svc: &RunningService, token: &str) -> Claims {
    let jwks = AttestationClient::new(&svc.url).unwrap().jwks().await.unwrap();
    verify_token(token, &jwks, &TokenCheck::issuer(svc.url.clone())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_aci_evidence_with_its_endorsement_is_an_azure_compliant_uvm() {
    let ev = aci_evidence(ENDORSEMENT);
    assert_eq!(ev.uvm_endorsements.as_deref(), Some(ENDORSEMENT));
    // The request body carries it as MAA's SevSnpVm request does.
    let body = AttestationClient::request_body(&ev, RUNTIME);
    let b64 = &base64::engine::general_purpose::URL_SAFE;
    let report: serde_json::Value =
        serde_json::from_slice(&b64.decode(body["report"].as_str().unwrap()).unwrap()).unwrap();
    let endorsements: serde_json::Value =
        serde_json::from_slice(&b64.decode(report["Endorsements"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(
        b64.decode(endorsements["Uvm"][0].as_str().unwrap()).unwrap(),
        ENDORSEMENT
    );

    let svc = RunningService::start(common::config_2022()).await.unwrap();
    let maa = AttestationClient::new(&svc.url).unwrap();
    let token = maa.attest(&ev, RUNTIME).await.unwrap();
    let claims = claims_of(&svc, &token).await;
    assert_eq!(claims["x-ms-compliance-status"], "azure-compliant-uvm");
    assert_eq!(claims["x-cinfer-compliance"], "uvm-endorsement");
    assert_eq!(claims["x-ms-sevsnpvm-guestsvn"], 22);
    assert_eq!(claims["x-cinfer-report-guestsvn"], 2);
    assert_eq!(
        claims["x-ms-sevsnpvm-hostdata"],
        "cadd74f71ebb8fbf9782baab649612520f3c416bc5ce9ac768808ddc8d9b031c"
    );
    assert_eq!(claims["x-ms-runtime"]["akey"], "avalue");
    svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endorsement_the_token_is_not_compliant_and_a_failing_one_is_refused() {
    let svc = RunningService::start(common::config_2022()).await.unwrap();
    let maa = AttestationClient::new(&svc.url).unwrap();

    let token = maa.attest(&aci_evidence(&[]), RUNTIME).await.unwrap();
    let claims = claims_of(&svc, &token).await;
    assert!(claims.get("x-ms-compliance-status").is_none(), "{claims:?}");
    assert_eq!(claims["x-ms-sevsnpvm-guestsvn"], 2);

    let mut bad = ENDORSEMENT.to_vec();
    *bad.last_mut().unwrap() ^= 1;
    match maa.attest(&aci_evidence(&bad), RUNTIME).await.unwrap_err() {
        ClientError::Status { status, body, .. } => {
            assert_eq!(status, 400, "{body}");
            assert!(body.starts_with("endorsement signature:"), "{body}");
        }
        e => panic!("expected HTTP 400, got {e}"),
    }
    // An issuer the service does not trust.
    let svc2 = RunningService::start(ServiceConfig {
        uvm_trust: UvmTrust::none(),
        ..common::config_2022()
    })
    .await
    .unwrap();
    let maa2 = AttestationClient::new(&svc2.url).unwrap();
    match maa2.attest(&aci_evidence(ENDORSEMENT), RUNTIME).await.unwrap_err() {
        ClientError::Status { status, body, .. } => {
            assert_eq!(status, 400, "{body}");
            assert!(body.starts_with("endorsement trust:"), "{body}");
        }
        e => panic!("expected HTTP 400, got {e}"),
    }
    svc2.stop().await.unwrap();
    svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_appraisal_refuses_the_2022_report_naming_the_component() {
    let svc = RunningService::start(ServiceConfig::default()).await.unwrap();
    let maa = AttestationClient::new(&svc.url).unwrap();
    match maa.attest(&aci_evidence(ENDORSEMENT), RUNTIME).await.unwrap_err() {
        ClientError::Status { status, body, .. } => {
            assert_eq!(status, 400, "{body}");
            assert_eq!(body, "tcb minimum: Milan snp SVN 8 is below the minimum 22");
        }
        e => panic!("expected HTTP 400, got {e}"),
    }
    svc.stop().await.unwrap();
}

/// Mock evidence with an endorsement attached, as the device attester attaches the host's.
struct Endorsed {
    inner: MockAttester,
    endorsement: Vec<u8>,
}

impl Attester for Endorsed {
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let mut ev = self.inner.evidence(report_data)?;
        ev.uvm_endorsements = Some(self.endorsement.clone());
        Ok(ev)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_requiring_compliance_is_released_to_endorsed_evidence_only() {
    let root = MockRoot::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/mock-root"
    )))
    .unwrap();
    let mut trust = TrustStore::amd();
    trust.add_mock_root(root.ark_pem().as_bytes()).unwrap();
    let signer = MockUvmSigner::generate("Mock-UVM").unwrap();
    let admin = SecretBytes::from_slice(b"uvm-admin-token-1");
    let svc = RunningService::start(ServiceConfig {
        trust,
        uvm_trust: UvmTrust {
            issuers: vec![signer.issuer(3)],
        },
        admin_token: Some(admin.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let maa = AttestationClient::new(&svc.url).unwrap();
    let jwks = maa.jwks().await.unwrap();
    let policy = ReleasePolicy::from_json(
        format!(
            r#"{{"version":"1.0.0","anyOf":[{{"authority":"{}","allOf":[{{"claim":"x-ms-sevsnpvm-hostdata","equals":"{}"}},{{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"}},{{"claim":"x-ms-compliance-status","equals":"azure-compliant-uvm"}},{{"claim":"x-ms-sevsnpvm-guestsvn","equals":"7"}}]}}]}}"#,
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
    .import_oct("uvm-key", &[0x33; 32], &policy)
    .await
    .unwrap();
    let vault = KeyReleaseClient::new(&svc.url, VaultAuth::None, ResponseVerification::Pinned(jwks)).unwrap();
    let measurement = [0x42u8; 48];
    let mock = || {
        MockAttester::new(
            &root,
            MockConfig {
                measurement,
                ..MockConfig::default()
            },
        )
        .unwrap()
    };
    let endorsed = Endorsed {
        inner: mock(),
        endorsement: signer.endorse(&measurement, 7).unwrap(),
    };
    let key = attest::client::secure_key_release(
        &endorsed,
        &maa,
        &vault,
        &KeyRef::parse("uvm-key"),
        &KeyDerivation::default(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(key.expose(), &[0x33; 32]);

    // The same report without the endorsement: a token, but no compliance, so no key.
    let rk = RuntimeKey::generate().unwrap();
    let token = maa.attest_with(&mock(), &rk.runtime_data()).await.unwrap();
    match vault.release(&KeyRef::parse("uvm-key"), &token, &rk).await.unwrap_err() {
        ClientError::Status { status, body, .. } => {
            assert_eq!(status, 403, "{body}");
            assert!(body.contains("x-ms-compliance-status"), "{body}");
        }
        e => panic!("expected HTTP 403, got {e}"),
    }
    // An endorsement of another measurement is refused at attestation, naming the check.
    let other = Endorsed {
        inner: mock(),
        endorsement: signer.endorse(&[0x43; 48], 7).unwrap(),
    };
    match maa.attest_with(&other, &rk.runtime_data()).await.unwrap_err() {
        ClientError::Status { status, body, .. } => {
            assert_eq!(status, 400, "{body}");
            assert!(body.starts_with("endorsement measurement:"), "{body}");
        }
        e => panic!("expected HTTP 400, got {e}"),
    }
    // Below the feed's minimum SVN.
    let old = Endorsed {
        inner: mock(),
        endorsement: signer.endorse(&measurement, 2).unwrap(),
    };
    match maa.attest_with(&old, &rk.runtime_data()).await.unwrap_err() {
        ClientError::Status { body, .. } => assert!(body.starts_with("endorsement svn:"), "{body}"),
        e => panic!("expected HTTP 400, got {e}"),
    }
    svc.stop().await.unwrap();
}
