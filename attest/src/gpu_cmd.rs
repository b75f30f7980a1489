//! `cinfer-attest verify-gpu`: NVIDIA GPU evidence from files, verified offline; claims JSON on stdout.

use anyhow::Context;
use attest::gpu::collateral::GpuCollateral;
use attest::gpu::spdm::GpuReport;
use attest::gpu::{GpuEvidence, GpuTrust, GpuVerifyOptions, claims, verify_gpu};

use crate::cli::VerifyGpuArgs;

fn read(p: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

/// Run `verify-gpu`; an error's text starts with the failed check's name.
pub(crate) fn run(a: &VerifyGpuArgs, at: std::time::SystemTime) -> anyhow::Result<()> {
    let evidence = GpuEvidence::from_files(&read(&a.report)?, &read(&a.cert_chain)?)?;
    let device_root = a.device_root.as_deref().map(read).transpose()?;
    let rim_root = a.rim_root.as_deref().map(read).transpose()?;
    let trust = GpuTrust::with_roots(device_root.as_deref(), rim_root.as_deref())?;
    let nonce = a
        .nonce
        .as_deref()
        .map(|h| {
            let v = hex::decode(h.trim()).context("--nonce: not hex")?;
            <[u8; 32]>::try_from(v.as_slice())
                .map_err(|_| anyhow::anyhow!("--nonce: expected 32 bytes (64 hex digits)"))
        })
        .transpose()?;
    let mut opts = match &a.collateral {
        Some(p) => GpuCollateral::from_json(&read(p)?)?.options_for(&GpuReport::parse(&evidence.report)?, at, nonce)?,
        None => GpuVerifyOptions::at(at),
    };
    opts.nonce = nonce;
    if let Some(p) = &a.driver_rim {
        opts.driver_rim = Some(read(p)?);
    }
    if let Some(p) = &a.vbios_rim {
        opts.vbios_rim = Some(read(p)?);
    }
    let verified = verify_gpu(&evidence, &trust, &opts)?;
    println!("{}", serde_json::to_string_pretty(&claims::gpu_claims(&verified))?);
    Ok(())
}
