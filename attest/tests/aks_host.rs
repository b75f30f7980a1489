//! The SNP attester's host inputs on AKS confidential containers: no ACI security context, the UVM reference info
//! from the node file, the VCEK chain from THIM. A THIM-shaped server in the test serves the real ACI vector set's
//! recorded THIM JSON (it answers only requests with `Metadata: true`). The evidence gathered that way is the
//! evidence the ACI path gives for the same host, and the attestation service finds the real report with it an
//! `azure-compliant-uvm`. Every failure names what was missing.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use attest::client::AttestationClient;
use attest::evidence::{HostSources, Origin, ThimCerts, UvmInformation};
use attest::service::RunningService;
use attest::token::{TokenCheck, verify_token};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/aci");
const REPORT: &[u8] = include_bytes!("data/aci/snp_report.bin");
const ENDORSEMENT: &[u8] = include_bytes!("data/aci/body.uvm_reference_info.bin");
const THIM_JSON: &[u8] = include_bytes!("data/aci/uvm_host_amd_certificate.json");
const RUNTIME: &[u8] = b"{\n   \"akey\" : \"avalue\"\n}\n";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A THIM-shaped server: `GET /metadata/THIM/amd/certification` answers `answers[i]` for the i-th request (the
/// last one again after that), 400 without `Metadata: true`. Counts requests.
struct Thim {
    url: String,
    hits: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

impl Thim {
    fn start(answers: Vec<(u16, Vec<u8>)>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let answers = Arc::new(answers);
        let app = axum::Router::new().route(
            "/metadata/THIM/amd/certification",
            axum::routing::get(move |headers: HeaderMap| {
                let i = counter.fetch_add(1, Ordering::SeqCst);
                let answers = answers.clone();
                async move {
                    if headers.get("Metadata").and_then(|v| v.to_str().ok()) != Some("true") {
                        return (StatusCode::BAD_REQUEST, b"no Metadata: true header".to_vec());
                    }
                    let (status, body) = answers[i.min(answers.len() - 1)].clone();
                    (StatusCode::from_u16(status).unwrap(), body)
                }
            }),
        );
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!(
            "http://{}/metadata/THIM/amd/certification",
            listener.local_addr().unwrap()
        );
        rt.spawn(async move { axum::serve(listener, app).await });
        Self { url, hits, _rt: rt }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// An AKS node: no ACI directory, no `UVM_*` variables; the reference info file holds `reference` (base64 text).
fn aks(dir: &tempfile::TempDir, reference: Option<&str>, thim_url: &str) -> HostSources {
    let file = dir.path().join("reference-info-base64");
    if let Some(r) = reference {
        std::fs::write(&file, r).unwrap();
    }
    HostSources {
        security_context_dir: None,
        uvm_env: false,
        reference_info_file: file,
        thim_url: thim_url.to_owned(),
    }
}

/// An ACI security-context directory holding the real set, each file base64 as the host writes it.
fn aci_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        format!("{DATA}/uvm_security_policy.base64"),
        dir.path().join("security-policy-base64"),
    )
    .unwrap();
    std::fs::write(dir.path().join("host-amd-cert-base64"), b64(THIM_JSON)).unwrap();
    std::fs::write(dir.path().join("reference-info-base64"), b64(ENDORSEMENT)).unwrap();
    dir
}

#[test]
fn aks_inputs_come_from_the_node_file_and_thim_and_attest_as_a_compliant_uvm() {
    let thim = Thim::start(vec![(200, THIM_JSON.to_vec())]);
    let node = tempfile::tempdir().unwrap();
    // The node file as AKS writes it: base64 text (a trailing newline is fine).
    let found = aks(&node, Some(&format!("{}\n", b64(ENDORSEMENT))), &thim.url)
        .gather()
        .unwrap();
    assert_eq!(thim.hits(), 1);
    assert!(
        matches!(&found.certs_from, Origin::Thim(u) if *u == thim.url),
        "{:?}",
        found.certs_from
    );
    assert_eq!(
        found.reference_info_from,
        Origin::File(node.path().join("reference-info-base64"))
    );
    assert_eq!(
        found.uvm.host_amd_certs.as_ref().unwrap(),
        &ThimCerts::from_json(THIM_JSON).unwrap()
    );
    assert!(found.uvm.security_policy.is_empty(), "AKS gives no policy file");

    // The same evidence as on ACI for the same host, byte for byte.
    let aks_evidence = found.uvm.evidence(REPORT.to_vec()).unwrap();
    let aci = UvmInformation::from_dir(aci_dir().path()).unwrap();
    assert_eq!(aks_evidence, aci.evidence(REPORT.to_vec()).unwrap());
    assert_eq!(
        aks_evidence.cert_chain_pem.as_bytes(),
        std::fs::read(format!("{DATA}/uvm_host_amd_certificate.pem")).unwrap()
    );

    // The attestation service verifies the THIM chain to the AMD root and the endorsement: compliant.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let svc = RunningService::start(common::config_2022()).await.unwrap();
        let maa = AttestationClient::new(&svc.url).unwrap();
        let token = maa.attest(&aks_evidence, RUNTIME).await.unwrap();
        let jwks = maa.jwks().await.unwrap();
        let claims = verify_token(&token, &jwks, &TokenCheck::issuer(svc.url.clone())).unwrap();
        assert_eq!(claims["x-ms-compliance-status"], "azure-compliant-uvm");
        assert_eq!(claims["x-ms-runtime"]["akey"], "avalue");
        svc.stop().await.unwrap();
    });
}

#[test]
fn an_aci_security_context_wins_and_thim_is_not_asked() {
    let thim = Thim::start(vec![(500, Vec::new())]);
    let node = tempfile::tempdir().unwrap();
    let aci = aci_dir();
    let sources = HostSources {
        security_context_dir: Some(aci.path().to_owned()),
        ..aks(&node, Some("not base64 !"), &thim.url)
    };
    let found = sources.gather().unwrap();
    assert_eq!(thim.hits(), 0);
    assert_eq!(
        found.certs_from,
        Origin::SecurityContext(aci.path().join("host-amd-cert-base64"))
    );
    assert_eq!(
        found.reference_info_from,
        Origin::SecurityContext(aci.path().join("reference-info-base64"))
    );
    assert_eq!(found.uvm, UvmInformation::from_dir(aci.path()).unwrap());
}

#[test]
fn an_aci_directory_without_a_certificate_falls_back_to_thim_and_the_node_file() {
    let thim = Thim::start(vec![(200, THIM_JSON.to_vec())]);
    let node = tempfile::tempdir().unwrap();
    let aci = tempfile::tempdir().unwrap();
    std::fs::copy(
        format!("{DATA}/uvm_security_policy.base64"),
        aci.path().join("security-policy-base64"),
    )
    .unwrap();
    let sources = HostSources {
        security_context_dir: Some(aci.path().to_owned()),
        ..aks(&node, Some(&b64(ENDORSEMENT)), &thim.url)
    };
    let found = sources.gather().unwrap();
    assert!(
        matches!(&found.certs_from, Origin::Thim(u) if *u == thim.url),
        "{:?}",
        found.certs_from
    );
    assert!(matches!(found.reference_info_from, Origin::File(_)));
    assert_eq!(
        hex::encode(found.uvm.policy_digest()),
        "cadd74f71ebb8fbf9782baab649612520f3c416bc5ce9ac768808ddc8d9b031c"
    );
}

#[test]
fn without_a_certificate_the_error_names_every_place_and_what_thim_answered() {
    let thim = Thim::start(vec![(404, b"{\"error\":\"not found\"}".to_vec())]);
    let node = tempfile::tempdir().unwrap();
    let e = aks(&node, None, &thim.url).gather().unwrap_err().to_string();
    assert!(e.contains("no host AMD certificate"), "{e}");
    assert!(e.contains("no ACI security context"), "{e}");
    assert!(e.contains(&format!("THIM at {} answered HTTP 404", thim.url)), "{e}");
    assert_eq!(thim.hits(), 1, "a 404 is final");

    let aci = tempfile::tempdir().unwrap();
    let with_dir = HostSources {
        security_context_dir: Some(aci.path().to_owned()),
        ..aks(&node, None, &thim.url)
    };
    let e = with_dir.gather().unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "the ACI security context {} has no host-amd-cert-base64",
            aci.path().display()
        )),
        "{e}"
    );

    // Nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/metadata/THIM/amd/certification", l.local_addr().unwrap())
    };
    let t = std::time::Instant::now();
    let e = aks(&node, None, &closed).gather().unwrap_err().to_string();
    assert!(e.contains(&format!("THIM at {closed} could not be reached")), "{e}");
    assert!(
        t.elapsed() >= std::time::Duration::from_secs(3),
        "retried after 1 s and 2 s"
    );

    // A success that is no THIM certificate.
    let junk = Thim::start(vec![(200, b"{\"vcekCert\":\"\"}".to_vec())]);
    let e = aks(&node, None, &junk.url).gather().unwrap_err().to_string();
    assert!(e.contains("answered something that is not a THIM certificate"), "{e}");
}

#[test]
fn transient_thim_failures_are_retried() {
    let thim = Thim::start(vec![(503, Vec::new()), (200, THIM_JSON.to_vec())]);
    let node = tempfile::tempdir().unwrap();
    let found = aks(&node, Some(&b64(ENDORSEMENT)), &thim.url).gather().unwrap();
    assert_eq!(thim.hits(), 2);
    assert!(found.uvm.host_amd_certs.is_some());
}

#[test]
fn thim_over_plain_http_only_at_the_metadata_address_or_loopback() {
    let node = tempfile::tempdir().unwrap();
    let e = aks(&node, None, "http://10.1.2.3/metadata/THIM/amd/certification")
        .gather()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no host AMD certificate: THIM: plain http:// to 10.1.2.3"),
        "{e}"
    );
    let platform = HostSources::platform(None, None);
    assert_eq!(
        platform.thim_url,
        "http://169.254.169.254/metadata/THIM/amd/certification"
    );
    assert_eq!(
        platform.reference_info_file,
        PathBuf::from("/opt/confidential-containers/share/kata-containers/reference-info-base64")
    );
}

#[test]
fn the_reference_info_file_is_optional_but_must_be_base64_when_present() {
    let thim = Thim::start(vec![(200, THIM_JSON.to_vec())]);
    let node = tempfile::tempdir().unwrap();
    let found = aks(&node, None, &thim.url).gather().unwrap();
    assert_eq!(found.reference_info_from, Origin::Absent);
    assert!(found.uvm.evidence(REPORT.to_vec()).unwrap().uvm_endorsements.is_none());
    let e = aks(&node, Some("not base64 !"), &thim.url)
        .gather()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&node.path().join("reference-info-base64").display().to_string()) && e.contains("not base64"),
        "{e}"
    );
}
