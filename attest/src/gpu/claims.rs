//! Claims of a verified GPU under NVIDIA's names (the per-GPU claims of NRAS and of nvtrust's local
//! verifier), plus `x-cinfer-gpu-*` where cinfer says more. Only what was established is claimed: a claim
//! NVIDIA derives from a check that was not run here is `false` or absent, never guessed.

use serde_json::{Map, Value, json};

use super::VerifiedGpu;
use super::rim::VerifiedRim;
use super::spdm::field;
use crate::verify::fmt_time;

fn cert_chain_claim(not_after: std::time::SystemTime) -> Value {
    json!({
        "x-nvidia-cert-status": "valid",
        "x-nvidia-cert-ocsp-status": "not-checked",
        "x-nvidia-cert-expiration-date": fmt_time(not_after),
        "x-nvidia-cert-revocation-reason": null,
    })
}

fn rim_claims(m: &mut Map<String, Value>, prefix: &str, rim: Option<&VerifiedRim>) {
    let ok = rim.is_some();
    m.insert(format!("x-nvidia-gpu-{prefix}-rim-fetched"), json!(ok));
    m.insert(format!("x-nvidia-gpu-{prefix}-rim-signature-verified"), json!(ok));
    m.insert(format!("x-nvidia-gpu-{prefix}-rim-version-match"), json!(ok));
    m.insert(format!("x-nvidia-gpu-{prefix}-rim-measurements-available"), json!(ok));
    if let Some(r) = rim {
        m.insert(
            format!("x-nvidia-gpu-{prefix}-rim-cert-chain"),
            cert_chain_claim(r.chain_not_after),
        );
    }
}

/// The claims of one GPU, as a JSON object.
pub fn gpu_claims(v: &VerifiedGpu) -> Map<String, Value> {
    let r = &v.report;
    let mut m = Map::new();
    m.insert("eat_nonce".into(), json!(hex::encode(r.request.nonce)));
    m.insert("hwmodel".into(), json!(v.hwmodel));
    m.insert("ueid".into(), json!(v.ueid));
    if let Some(oem) = v.driver_rim.as_ref().and_then(|d| d.manufacturer_id.clone()) {
        m.insert("oemid".into(), json!(oem));
    }
    m.insert("x-nvidia-gpu-arch-check".into(), json!(v.hwmodel.starts_with("GH100")));
    m.insert("x-nvidia-gpu-driver-version".into(), json!(r.driver_version()));
    m.insert("x-nvidia-gpu-vbios-version".into(), json!(r.vbios_version()));
    m.insert("x-nvidia-gpu-attestation-report-parsed".into(), json!(true));
    m.insert(
        "x-nvidia-gpu-attestation-report-nonce-match".into(),
        json!(v.nonce_checked),
    );
    m.insert("x-nvidia-gpu-attestation-report-signature-verified".into(), json!(true));
    m.insert(
        "x-nvidia-gpu-attestation-report-cert-chain".into(),
        cert_chain_claim(v.chain_not_after),
    );
    m.insert(
        "x-nvidia-gpu-attestation-report-cert-chain-fwid-match".into(),
        json!(v.fwid_matched.unwrap_or(false)),
    );
    rim_claims(&mut m, "driver", v.driver_rim.as_ref());
    rim_claims(&mut m, "vbios", v.vbios_rim.as_ref());
    m.insert(
        "x-nvidia-gpu-vbios-index-no-conflict".into(),
        json!(v.measurements.is_some()),
    );
    m.insert("x-nvidia-attestation-warning".into(), Value::Null);
    if v.measurements_matched() {
        // nvtrust's ClaimsUtils: secure boot and debug state follow from measurements that match the RIMs
        // (a GPU in CC DevTools mode, or with debug firmware, measures differently).
        m.insert("measres".into(), json!("success"));
        m.insert("secboot".into(), json!(true));
        m.insert("dbgstat".into(), json!("disabled"));
    } else {
        m.insert(
            "measres".into(),
            json!(if v.measurements.is_some() { "partial" } else { "not-run" }),
        );
    }
    m.insert("x-cinfer-gpu-root".into(), json!(v.root_label));
    if let Some(mo) = &v.measurements {
        m.insert("x-cinfer-gpu-measurements".into(), json!(mo));
    }
    if let Some(flag) = r.opaque_field(field::FEATURE_FLAG) {
        m.insert("x-cinfer-gpu-feature-flag".into(), json!(flag.first().copied()));
    }
    m
}
