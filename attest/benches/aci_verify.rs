//! Verification cost of the real ACI evidence set (`tests/data/aci/`): the report alone (chain parse, ARK →
//! ASK → VCEK, report signature, TCB, binding) next to the full set (the same plus HOST_DATA = SHA-256 of the
//! policy, the UVM endorsement's COSE parse, x5chain path validation, did:x509 resolution, PS384 signature
//! and measurement equality). One thread, the same run, the CPU model printed with the figures.
//!
//! `cargo bench -p attest --bench aci_verify [-- N]` (default N = 300 per case, after 20 warm-up rounds).
#![allow(clippy::unwrap_used)] // a benchmark: a panic is the failure report
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use attest::aci::{AciEvidence, verify_aci};
use attest::endorsement::UvmTrust;
use attest::verify::{CertChain, TrustStore, VerifyOptions, maa_report_data, verify_report};
use base64::Engine as _;

const REPORT: &[u8] = include_bytes!("../tests/data/aci/snp_report.bin");
const CHAIN: &[u8] = include_bytes!("../tests/data/aci/uvm_host_amd_certificate.pem");
const ENDORSEMENT: &[u8] = include_bytes!("../tests/data/aci/body.uvm_reference_info.bin");
const POLICY_B64: &str = include_str!("../tests/data/aci/uvm_security_policy.base64");
const RUNTIME: &[u8] = b"{\n   \"akey\" : \"avalue\"\n}\n";

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn measure(n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..20 {
        f();
    }
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v
}

fn print(name: &str, v: &[Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<52} n={} median={:.3} ms p90={:.3} ms min={:.3} ms",
        v.len(),
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(v[0])
    );
}

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(300);
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    // The 2022 report predates the bulletins behind the default minimum TCB: its own TCB as the Milan floor.
    let mut appraisal = attest::appraisal::Appraisal::default();
    appraisal
        .min_tcb
        .apply_spec("milan:bootloader=3,tee=0,snp=8,microcode=115")
        .unwrap();
    let opts = VerifyOptions {
        at,
        expected_report_data: Some(maa_report_data(RUNTIME)),
        appraisal,
        ..VerifyOptions::default()
    };
    let trust = TrustStore::amd();
    let uvm_trust = UvmTrust::default();
    let policy = base64::engine::general_purpose::STANDARD
        .decode(POLICY_B64.trim())
        .unwrap();

    let report_only = measure(n, || {
        let chain = CertChain::from_pem(black_box(CHAIN)).unwrap();
        black_box(verify_report(black_box(REPORT), &chain, &trust, &opts).unwrap());
    });
    let full = measure(n, || {
        let chain = CertChain::from_pem(black_box(CHAIN)).unwrap();
        let ev = AciEvidence {
            report: black_box(REPORT),
            chain: &chain,
            uvm_endorsement: Some(black_box(ENDORSEMENT)),
            security_policy: Some(black_box(&policy)),
        };
        let v = verify_aci(&ev, &trust, &uvm_trust, &opts).unwrap();
        assert!(v.is_endorsed());
        black_box(v);
    });
    let endorsement_only = measure(n, || {
        black_box(attest::endorsement::verify_uvm_endorsement(black_box(ENDORSEMENT), &uvm_trust, at).unwrap());
    });
    println!(
        "CPU: {} ({} logical CPUs available, one thread used)",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    print("report only (chain + report)", &report_only);
    print("full ACI set (report + chain + endorsement + policy)", &full);
    print("endorsement alone", &endorsement_only);
}
