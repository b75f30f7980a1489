//! Median time to verify NVIDIA GPU evidence offline, per GPU and for an 8-GPU composite (eight reports,
//! each with its chain and both RIMs), on NVIDIA's real data in `tests/data/nvidia/`. No network.
//!
//! `cargo run --release -p attest --example gpu_verify_bench [ROUNDS]` (default 40 rounds).
#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark: a panic is the failure report

use std::time::{Duration, Instant, SystemTime};

use attest::gpu::{GpuEvidence, GpuTrust, GpuVerifyOptions, RimKind, rim, verify_gpu};

fn data(rel: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/nvidia/{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<F: FnMut()>(rounds: usize, mut f: F) -> Duration {
    f(); // warm up
    median(
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(40);
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_717_200_000); // 2024-06-01
    let trust = GpuTrust::nvidia();
    let ev = GpuEvidence::from_files(
        &data("hopper/hopperAttestationReport.txt"),
        &data("hopper/hopperCertChain.txt"),
    )
    .unwrap();
    let vbios = data("rims/1010_0200_882_96005E0001_PROD.swidtag");
    let driver = data("rims/NV_GPU_DRIVER_GH100_550.144.03.xml");
    let at_driver = SystemTime::UNIX_EPOCH + Duration::from_secs(1_748_736_000); // 2025-06-01

    let mut opts = GpuVerifyOptions::at(at);
    opts.nonce = Some(attest::gpu::spdm::GpuReport::parse(&ev.report).unwrap().request.nonce);
    let report_only = time(rounds, || {
        verify_gpu(&ev, &trust, &opts).unwrap();
    });
    let mut with_vbios = opts;
    with_vbios.vbios_rim = Some(vbios);
    let report_vbios = time(rounds, || {
        verify_gpu(&ev, &trust, &with_vbios).unwrap();
    });
    // No report of the set has a driver RIM that matches, so the driver RIM is verified on its own (chain,
    // C14N, digest, signature) and added: the same work verify_gpu does before comparing.
    let driver_rim = time(rounds, || {
        rim::verify_rim(&driver, RimKind::Driver, &trust.rim_root, at_driver).unwrap();
    });
    let composite = time(rounds.div_ceil(4), || {
        for _ in 0..8 {
            verify_gpu(&ev, &trust, &with_vbios).unwrap();
            rim::verify_rim(&driver, RimKind::Driver, &trust.rim_root, at_driver).unwrap();
        }
    });
    println!("rounds: {rounds} (composite: {})", rounds.div_ceil(4));
    println!(
        "report + chain + signature:                  {:>8.2} ms",
        report_only.as_secs_f64() * 1e3
    );
    println!(
        "  + VBIOS RIM (XML-DSig, chain, 12 compared): {:>8.2} ms",
        report_vbios.as_secs_f64() * 1e3
    );
    println!(
        "driver RIM alone (XML-DSig, chain):           {:>8.2} ms",
        driver_rim.as_secs_f64() * 1e3
    );
    println!(
        "per GPU, both RIMs (sum):                     {:>8.2} ms",
        (report_vbios + driver_rim).as_secs_f64() * 1e3
    );
    println!(
        "8-GPU composite, sequential:                  {:>8.2} ms",
        composite.as_secs_f64() * 1e3
    );
}
