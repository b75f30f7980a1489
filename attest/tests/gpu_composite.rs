//! Composite evidence (issue 22 items 3, 4): SEV-SNP evidence plus mock GPU evidence bound to the same
//! runtime data, verified by the service into one token; release policies that require the GPU; the mock
//! GPU through the real verifier (the positive driver-RIM comparison the NVIDIA data set cannot give).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use attest::client::{AttestationClient, KeyRef, KeyReleaseClient, ResponseVerification, VaultAuth};
use attest::error::ClientError;
use attest::evidence::{Attester, CompositeAttester, MockAttester, MockConfig, MockRoot};
use attest::gpu::binding::gpu_nonce;
use attest::gpu::claims::{composite_claims, gpu_claims};
use attest::gpu::mock::{DEVTOOLS_INDEX, MOCK_HWMODEL, MockGpuAttester, MockGpuConfig, MockGpuRoot};
use attest::gpu::requirement::GpuRequirement;
use attest::gpu::{GpuAttester, GpuTrust, RimKind, verify_gpu};
use attest::keywrap::KeyDerivation;
use attest::policy::{ClaimCondition, ReleaseClause, ReleasePolicy};
use attest::secret::SecretBytes;
use attest::service::{GpuServiceConfig, RunningService, ServiceConfig};
use attest::token::{TokenCheck, verify_token};
use attest::verify::{TrustStore, maa_report_data};
use serde_json::json;

fn snp_root() -> MockRoot {
    MockRoot::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/mock-root"
    )))
    .unwrap()
}

fn snp_trust(root: &MockRoot) -> TrustStore {
    let mut t = TrustStore::amd();
    t.add_mock_root(root.ark_pem().as_bytes()).unwrap();
    t
}

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn gpus(root: &MockGpuRoot, config: MockGpuConfig) -> MockGpuAttester {
    MockGpuAttester::new(root, config).unwrap()
}

fn config(count: u32) -> MockGpuConfig {
    MockGpuConfig {
        count,
        ..MockGpuConfig::default()
    }
}

fn options(root: &MockGpuRoot, cfg: &MockGpuConfig, report: &[u8], nonce: [u8; 32]) -> attest::gpu::GpuVerifyOptions {
    let bundle = root.collateral(cfg, YEAR).unwrap();
    let report = attest::gpu::spdm::GpuReport::parse(report).unwrap();
    bundle.options_for(&report, SystemTime::now(), Some(nonce)).unwrap()
}

#[test]
fn mock_gpu_verifies_with_both_rims_and_claims_cc_on() {
    let root = MockGpuRoot::generate().unwrap();
    let cfg = config(1);
    let nonce = [0x42; 32];
    let ev = gpus(&root, cfg.clone()).gpu_evidence(&nonce).unwrap().remove(0);
    let v = verify_gpu(&ev, &root.trust().unwrap(), &options(&root, &cfg, &ev.report, nonce)).unwrap();
    assert!(v.measurements_matched(), "the driver and VBIOS RIMs both compared");
    let m = v.measurements.as_ref().unwrap();
    assert_eq!(m.compared, (0..16).collect::<Vec<u32>>());
    assert!(m.driver && m.vbios);
    let c = gpu_claims(&v);
    assert_eq!(c["measres"], "success");
    assert_eq!(c["hwmodel"], MOCK_HWMODEL);
    assert_eq!(c["x-nvidia-gpu-driver-version"], "550.90.07");
    assert_eq!(c["x-nvidia-gpu-vbios-version"], "96.00.9F.00.01");
    assert_eq!(c["x-nvidia-gpu-driver-rim-signature-verified"], true);
    assert_eq!(c["x-nvidia-gpu-attestation-report-cert-chain-fwid-match"], true);
    assert_eq!(c["x-nvidia-gpu-attestation-report-nonce-match"], true);
    assert_eq!(c["eat_nonce"], hex::encode(nonce));
    assert_eq!(c["x-cinfer-gpu-cc-mode"], "on");
    assert_eq!(c["x-cinfer-gpu-devtools"], false);
    assert_eq!(c["x-cinfer-gpu-feature-flag"], 1, "one GPU: SPT");
    assert!(c["x-cinfer-gpu-root"].as_str().unwrap().starts_with("mock:"));
}

#[test]
fn mock_gpu_is_refused_where_its_root_is_not_configured() {
    let root = MockGpuRoot::generate().unwrap();
    let cfg = config(1);
    let ev = gpus(&root, cfg).gpu_evidence(&[1; 32]).unwrap().remove(0);
    let opts = attest::gpu::GpuVerifyOptions::at(SystemTime::now());
    let e = verify_gpu(&ev, &GpuTrust::nvidia(), &opts).unwrap_err();
    assert_eq!(e.check(), "gpu root", "{e}");
    // Another mock's root does not do either.
    let other = MockGpuRoot::generate().unwrap();
    let e = verify_gpu(&ev, &other.trust().unwrap(), &opts).unwrap_err();
    assert_eq!(e.check(), "gpu root", "{e}");
    // A RIM of another mock root fails its chain.
    let foreign = other.rim(RimKind::Driver, "550.90.07").unwrap();
    let opts = attest::gpu::GpuVerifyOptions {
        driver_rim: Some(foreign.into_bytes()),
        ..attest::gpu::GpuVerifyOptions::at(SystemTime::now())
    };
    let e = verify_gpu(&ev, &root.trust().unwrap(), &opts).unwrap_err();
    assert_eq!(e.check(), "rim chain", "{e}");
}

#[test]
fn devtools_measurement_and_wrong_versions_fail_the_comparison() {
    let root = MockGpuRoot::generate().unwrap();
    let cfg = MockGpuConfig {
        devtools: true,
        ..config(1)
    };
    let ev = gpus(&root, cfg.clone()).gpu_evidence(&[3; 32]).unwrap().remove(0);
    let e = verify_gpu(&ev, &root.trust().unwrap(), &options(&root, &cfg, &ev.report, [3; 32])).unwrap_err();
    assert_eq!(e.check(), "measurements", "{e}");
    assert!(
        e.to_string()
            .contains(&format!("RIM index(es) {DEVTOOLS_INDEX} differ")),
        "{e}"
    );

    // A bundle for another driver has no RIM for the report: nothing is compared, nothing is claimed on.
    let ev = gpus(&root, config(1)).gpu_evidence(&[3; 32]).unwrap().remove(0);
    let other = MockGpuConfig {
        driver_version: "535.86.09".into(),
        ..config(1)
    };
    let v = verify_gpu(
        &ev,
        &root.trust().unwrap(),
        &options(&root, &other, &ev.report, [3; 32]),
    )
    .unwrap();
    assert!(!v.measurements_matched());
    let c = gpu_claims(&v);
    assert_eq!(c["x-cinfer-gpu-cc-mode"], "unknown");
    assert_eq!(c["x-cinfer-gpu-devtools"], "unknown");
    assert_eq!(c["x-nvidia-gpu-driver-rim-fetched"], false);
}

#[test]
fn ppcie_feature_flag_is_not_cc_mode_and_summary_needs_every_gpu() {
    let root = MockGpuRoot::generate().unwrap();
    let cc = config(2);
    let ppcie = MockGpuConfig {
        ppcie: true,
        ..config(1)
    };
    let verify = |cfg: &MockGpuConfig| {
        let ev = gpus(&root, cfg.clone()).gpu_evidence(&[5; 32]).unwrap();
        ev.iter()
            .map(|e| verify_gpu(e, &root.trust().unwrap(), &options(&root, cfg, &e.report, [5; 32])).unwrap())
            .collect::<Vec<_>>()
    };
    let mut all = verify(&cc);
    let s = composite_claims(&all);
    assert_eq!(s["x-cinfer-gpu-count"], 2);
    assert_eq!(s["x-cinfer-gpu-cc-mode"], "on");
    assert_eq!(s["x-cinfer-gpu-devtools"], false);
    assert_eq!(s["x-cinfer-gpu-measurements-matched"], true);
    assert_eq!(s["x-cinfer-gpu-driver-min"], 550_090_007);
    assert_eq!(s["x-cinfer-gpu-vbios-min"], 0x96_00_9F_00_01_i64);
    assert_eq!(
        s["x-cinfer-gpu"]["GPU-1"]["x-cinfer-gpu-feature-flag"], 0,
        "two GPUs: MPT"
    );
    assert_ne!(
        s["x-cinfer-gpu"]["GPU-0"]["ueid"], s["x-cinfer-gpu"]["GPU-1"]["ueid"],
        "each GPU has its own leaf"
    );
    let p = verify(&ppcie);
    assert_eq!(gpu_claims(&p[0])["x-cinfer-gpu-cc-mode"], "ppcie");
    all.extend(p);
    let s = composite_claims(&all);
    assert_eq!(s["x-cinfer-gpu-count"], 3);
    assert_eq!(
        s["x-cinfer-gpu-cc-mode"], "ppcie",
        "one GPU not in CC mode makes the set not"
    );
    let none = composite_claims(&[]);
    assert_eq!(none["x-cinfer-gpu-cc-mode"], "none");
    assert_eq!(none["x-cinfer-gpu-measurements-matched"], false);
}

/// The service with the mock SEV-SNP root, a mock GPU root and its collateral (RIMs for `cfg` and for
/// driver 535.86.09), and an admin token.
async fn service(gpu_root: &MockGpuRoot, cfg: &MockGpuConfig) -> (RunningService, SecretBytes) {
    let admin = SecretBytes::from_slice(b"composite-admin-token");
    let mut bundle = gpu_root.collateral(cfg, YEAR).unwrap();
    bundle
        .driver_rims
        .push(gpu_root.rim(RimKind::Driver, OLD_DRIVER).unwrap());
    let svc = RunningService::start(ServiceConfig {
        trust: snp_trust(&snp_root()),
        admin_token: Some(admin.clone()),
        gpu: GpuServiceConfig {
            trust: gpu_root.trust().unwrap(),
            collateral: Some(bundle),
        },
        ..Default::default()
    })
    .await
    .unwrap();
    (svc, admin)
}

/// Pins the mock SNP guest (zero host_data, not debuggable) and requires `gpu` of its GPUs.
fn release_policy(authority: &str, gpu: &GpuRequirement) -> ReleasePolicy {
    let mut all_of = vec![
        ClaimCondition::equals("x-ms-sevsnpvm-hostdata", hex::encode([0u8; 32])),
        ClaimCondition::equals("x-ms-sevsnpvm-is-debuggable", "false"),
    ];
    all_of.extend(gpu.conditions().unwrap());
    ReleasePolicy {
        version: "1.0.0".into(),
        any_of: vec![ReleaseClause {
            authority: authority.into(),
            all_of,
        }],
    }
}

fn composite(gpus: MockGpuAttester) -> CompositeAttester {
    let cpu = MockAttester::new(&snp_root(), MockConfig::default()).unwrap();
    CompositeAttester::new(Arc::new(cpu), Arc::new(gpus))
}

const OLD_DRIVER: &str = "535.86.09";

async fn release(
    att: &dyn Attester,
    maa: &AttestationClient,
    vault: &KeyReleaseClient,
) -> Result<[u8; 32], ClientError> {
    let key = attest::client::secure_key_release(
        att,
        maa,
        vault,
        &KeyRef::parse("gpu-model"),
        &KeyDerivation::default(),
        None,
    )
    .await?;
    Ok(*key.expose())
}

fn refusal(e: ClientError) -> (u16, String) {
    match e {
        ClientError::Status { status, body, .. } => (status, body),
        e => panic!("expected an HTTP refusal, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_carries_gpu_claims_and_a_gpu_key_is_released_only_with_valid_gpu_evidence() {
    let gpu_root = MockGpuRoot::generate().unwrap();
    let cfg = config(2);
    let (svc, admin) = service(&gpu_root, &cfg).await;
    let maa = AttestationClient::new(&svc.url).unwrap();
    let jwks = maa.jwks().await.unwrap();

    let guest = composite(gpus(&gpu_root, cfg.clone()));
    let token = maa.attest_with(&guest, br#"{"keys":[]}"#).await.unwrap();
    let claims = verify_token(&token, &jwks, &TokenCheck::issuer(svc.url.clone())).unwrap();
    assert_eq!(claims["x-ms-attestation-type"], "sevsnpvm", "SNP claims stay");
    assert_eq!(claims["x-cinfer-gpu-count"], 2);
    assert_eq!(claims["x-cinfer-gpu-cc-mode"], "on");
    assert_eq!(claims["x-cinfer-gpu-devtools"], false);
    assert_eq!(claims["x-cinfer-gpu-measurements-matched"], true);
    let nonce = gpu_nonce(&maa_report_data(br#"{"keys":[]}"#));
    assert_eq!(claims["x-cinfer-gpu"]["GPU-0"]["eat_nonce"], hex::encode(nonce));
    assert_eq!(claims["x-cinfer-gpu"]["GPU-1"]["measres"], "success");

    // A key that requires two GPUs at driver 550.90.07 or later.
    let mut need = GpuRequirement::gpus(2);
    need.min_driver = Some("550.90.07".into());
    let policy = release_policy(&svc.url, &need);
    KeyReleaseClient::new(
        &svc.url,
        VaultAuth::Bearer(admin),
        ResponseVerification::Pinned(jwks.clone()),
    )
    .unwrap()
    .import_oct("gpu-model", &[9u8; 32], &policy)
    .await
    .unwrap();
    let vault = KeyReleaseClient::new(&svc.url, VaultAuth::None, ResponseVerification::Pinned(jwks)).unwrap();
    assert_eq!(release(&guest, &maa, &vault).await.unwrap(), [9u8; 32]);

    // The same guest without GPU evidence: a token, but no key, naming the first condition it fails.
    let cpu_only = MockAttester::new(&snp_root(), MockConfig::default()).unwrap();
    let (status, body) = refusal(release(&cpu_only, &maa, &vault).await.unwrap_err());
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("x-cinfer-gpu-count is absent not greaterOrEquals 2"),
        "{body}"
    );

    // One GPU is not two.
    let one = composite(gpus(&gpu_root, config(1)));
    let (status, body) = refusal(release(&one, &maa, &vault).await.unwrap_err());
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("x-cinfer-gpu-count is 1 not greaterOrEquals 2"), "{body}");

    // GPUs in protected-PCIe mode: CC mode is not on.
    let ppcie = composite(gpus(
        &gpu_root,
        MockGpuConfig {
            ppcie: true,
            ..cfg.clone()
        },
    ));
    let (status, body) = refusal(release(&ppcie, &maa, &vault).await.unwrap_err());
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(r#"x-cinfer-gpu-cc-mode is "ppcie" not "on""#), "{body}");

    // An older driver than the policy's minimum (its RIM is in the bundle: everything else holds).
    let old = composite(gpus(
        &gpu_root,
        MockGpuConfig {
            driver_version: OLD_DRIVER.into(),
            ..cfg.clone()
        },
    ));
    let (status, body) = refusal(release(&old, &maa, &vault).await.unwrap_err());
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("x-cinfer-gpu-driver-min is 535086009 not greaterOrEquals 550090007"),
        "{body}"
    );

    // A driver whose RIM the bundle lacks: nothing is compared, so CC mode is not established.
    let unknown = composite(gpus(
        &gpu_root,
        MockGpuConfig {
            driver_version: "580.159.03".into(),
            ..cfg.clone()
        },
    ));
    let (status, body) = refusal(release(&unknown, &maa, &vault).await.unwrap_err());
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(r#"x-cinfer-gpu-cc-mode is "unknown" not "on""#), "{body}");
    svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_evidence_is_bound_to_the_snp_evidence_and_invalid_gpu_evidence_gets_no_token() {
    let gpu_root = MockGpuRoot::generate().unwrap();
    let cfg = config(1);
    let (svc, _) = service(&gpu_root, &cfg).await;
    let maa = AttestationClient::new(&svc.url).unwrap();
    let cpu = MockAttester::new(&snp_root(), MockConfig::default()).unwrap();
    let mock = gpus(&gpu_root, cfg.clone());
    let (rt_a, rt_b) = (br#"{"a":1}"#.as_slice(), br#"{"b":2}"#.as_slice());

    // Fresh SNP evidence for runtime data B with GPU evidence replayed from runtime data A.
    let mut ev = cpu.evidence(&maa_report_data(rt_b)).unwrap();
    ev.gpus = mock.gpu_evidence(&gpu_nonce(&maa_report_data(rt_a))).unwrap();
    let (status, body) = refusal(maa.attest(&ev, rt_b).await.unwrap_err());
    assert_eq!(status, 400, "{body}");
    assert!(body.starts_with("gpu nonce:") && body.ends_with("(GPU-0)"), "{body}");

    // GPU evidence for B with SNP evidence replayed from A: the SNP binding fails first.
    let mut ev = cpu.evidence(&maa_report_data(rt_a)).unwrap();
    ev.gpus = mock.gpu_evidence(&gpu_nonce(&maa_report_data(rt_b))).unwrap();
    let (status, body) = refusal(maa.attest(&ev, rt_b).await.unwrap_err());
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("report_data"), "{body}");

    // A nonce that is the report_data itself (no derivation) is refused too.
    let mut ev = cpu.evidence(&maa_report_data(rt_a)).unwrap();
    let mut raw = [0u8; 32];
    raw.copy_from_slice(&maa_report_data(rt_a)[..32]);
    ev.gpus = mock.gpu_evidence(&raw).unwrap();
    let (_, body) = refusal(maa.attest(&ev, rt_a).await.unwrap_err());
    assert!(body.starts_with("gpu nonce:"), "{body}");

    // A tampered GPU report: its signature names the GPU.
    let mut ev = cpu.evidence(&maa_report_data(rt_a)).unwrap();
    ev.gpus = mock.gpu_evidence(&gpu_nonce(&maa_report_data(rt_a))).unwrap();
    let last = ev.gpus[0].report.len() - 200;
    ev.gpus[0].report[last] ^= 1;
    let (status, body) = refusal(maa.attest(&ev, rt_a).await.unwrap_err());
    assert_eq!(status, 400, "{body}");
    assert!(body.starts_with("gpu signature:"), "{body}");

    // DevTools measurements: refused at the comparison.
    let devtools = gpus(
        &gpu_root,
        MockGpuConfig {
            devtools: true,
            ..cfg.clone()
        },
    );
    let mut ev = cpu.evidence(&maa_report_data(rt_a)).unwrap();
    ev.gpus = devtools.gpu_evidence(&gpu_nonce(&maa_report_data(rt_a))).unwrap();
    let (_, body) = refusal(maa.attest(&ev, rt_a).await.unwrap_err());
    assert!(body.starts_with("measurements:"), "{body}");

    // Too many GPUs.
    let mut ev = cpu.evidence(&maa_report_data(rt_a)).unwrap();
    let one = mock.gpu_evidence(&gpu_nonce(&maa_report_data(rt_a))).unwrap().remove(0);
    ev.gpus = vec![one; attest::service::MAX_GPUS + 1];
    let (status, body) = refusal(maa.attest(&ev, rt_a).await.unwrap_err());
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("at most 16"), "{body}");
    svc.stop().await.unwrap();

    // A service configured as in production (NVIDIA's roots) refuses the mock GPU: no token at all.
    let prod = RunningService::start(ServiceConfig {
        trust: snp_trust(&snp_root()),
        ..Default::default()
    })
    .await
    .unwrap();
    let maa = AttestationClient::new(&prod.url).unwrap();
    let (status, body) = refusal(maa.attest_with(&composite(mock), rt_a).await.unwrap_err());
    assert_eq!(status, 400, "{body}");
    assert!(body.starts_with("gpu root:"), "{body}");
    prod.stop().await.unwrap();
}

#[test]
fn request_body_carries_nvidias_evidence_objects_only_with_gpus() {
    let cpu = MockAttester::new(&snp_root(), MockConfig::default()).unwrap();
    let ev = cpu.evidence(&maa_report_data(b"{}")).unwrap();
    let body = AttestationClient::request_body(&ev, b"{}");
    assert!(body.get("gpuEvidence").is_none(), "MAA requests stay as they were");
    let gpu_root = MockGpuRoot::generate().unwrap();
    let ev = composite(gpus(&gpu_root, config(1)))
        .evidence(&maa_report_data(b"{}"))
        .unwrap();
    let body = AttestationClient::request_body(&ev, b"{}");
    let list = body["gpuEvidence"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    let object = list[0].as_object().unwrap();
    assert_eq!(object.keys().collect::<Vec<_>>(), ["certificate", "evidence"]);
    let b64 = |k: &str| {
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, object[k].as_str().unwrap()).unwrap()
    };
    assert_eq!(b64("evidence"), ev.gpus[0].report);
    assert!(
        String::from_utf8(b64("certificate"))
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert_eq!(json!(ev.gpus[0]), list[0]);
}
