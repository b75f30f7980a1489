//! Median time for `cinfer-attest serve` (in process, loopback HTTP) to attest composite evidence: SEV-SNP only,
//! SNP + 1 GPU, SNP + 8 GPUs, each GPU verified with its chain and both RIMs from the offline bundle. The GPUs
//! are mock GPUs (`gpu::mock`: 16 measurements, small RIMs; NVIDIA's RIMs are larger, see
//! `gpu_verify_bench`); the evidence is made once, outside the timing, so the figures are the request, the SNP
//! and GPU verification, the claims and the token.
//!
//! `cargo run --release -p attest --example gpu_composite_bench [ROUNDS]` (default 30 rounds).
#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark: a panic is the failure report

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use attest::client::AttestationClient;
use attest::evidence::{Attester, CompositeAttester, MockAttester, MockConfig, MockRoot};
use attest::gpu::mock::{MockGpuAttester, MockGpuConfig, MockGpuRoot};
use attest::gpu::{GpuAttester, verify_gpu};
use attest::service::{GpuServiceConfig, RunningService, ServiceConfig};
use attest::verify::{TrustStore, maa_report_data};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(30);
    let snp_root = MockRoot::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/mock-root"
    )))
    .unwrap();
    let mut trust = TrustStore::amd();
    trust.add_mock_root(snp_root.ark_pem().as_bytes()).unwrap();
    let gpu_root = MockGpuRoot::generate().unwrap();
    let config = |count| MockGpuConfig {
        count,
        ..MockGpuConfig::default()
    };
    let bundle = gpu_root.collateral(&config(1), Duration::from_secs(3600)).unwrap();
    let svc = RunningService::start(ServiceConfig {
        trust,
        gpu: GpuServiceConfig {
            trust: gpu_root.trust().unwrap(),
            collateral: Some(bundle.clone()),
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let maa = AttestationClient::new(&svc.url).unwrap();
    let runtime = br#"{"keys":[]}"#;
    let report_data = maa_report_data(runtime);
    let cpu = Arc::new(MockAttester::new(&snp_root, MockConfig::default()).unwrap());

    // One GPU verified alone (no HTTP), for comparison with gpu_verify_bench's NVIDIA figure.
    let one = MockGpuAttester::new(&gpu_root, config(1)).unwrap();
    let ev = one.gpu_evidence(&[7; 32]).unwrap().remove(0);
    let report = attest::gpu::spdm::GpuReport::parse(&ev.report).unwrap();
    let opts = bundle.options_for(&report, SystemTime::now(), Some([7; 32])).unwrap();
    let gpu_trust = gpu_root.trust().unwrap();
    let alone = median(
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                verify_gpu(&ev, &gpu_trust, &opts).unwrap();
                t.elapsed()
            })
            .collect(),
    );

    println!("rounds: {rounds}");
    println!(
        "mock GPU verified alone (chain, signature, 2 RIMs):  {:>8.2} ms",
        ms(alone)
    );
    let mut snp_only = Duration::ZERO;
    for gpus in [0u32, 1, 8] {
        let evidence = if gpus == 0 {
            cpu.evidence(&report_data).unwrap()
        } else {
            let att = CompositeAttester::new(
                cpu.clone(),
                Arc::new(MockGpuAttester::new(&gpu_root, config(gpus)).unwrap()),
            );
            att.evidence(&report_data).unwrap()
        };
        maa.attest(&evidence, runtime).await.unwrap(); // warm up
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            maa.attest(&evidence, runtime).await.unwrap();
            times.push(t.elapsed());
        }
        let m = median(times);
        if gpus == 0 {
            snp_only = m;
        }
        println!(
            "attest through the service, SNP + {gpus} GPU(s):        {:>8.2} ms  (GPU part {:>7.2} ms)",
            ms(m),
            ms(m.saturating_sub(snp_only))
        );
    }
    svc.stop().await.unwrap();
}
