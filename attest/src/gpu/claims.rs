//! Claims of a verified GPU under NVIDIA's names (the per-GPU claims of NRAS and of nvtrust's local
//! verifier), plus `x-cinfer-gpu-*` where cinfer says more. Only what was established is claimed: a claim
//! NVIDIA derives from a check that was not run here is `false` or absent, never guessed.

use serde_json::{Map, Value, json};

use super::rim::VerifiedRim;
use super::spdm::field;
use super::{VerifiedGpu, mode};
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
    m.insert(CC_MODE.into(), json!(mode::cc_mode(v).as_str()));
    m.insert(DEVTOOLS.into(), devtools_claim(mode::devtools(v)));
    m
}

/// Per GPU and in summary: `on`, `ppcie` or `unknown` ([`mode::cc_mode`]); the summary is `on` only when
/// every GPU's is, `none` without GPUs.
pub const CC_MODE: &str = "x-cinfer-gpu-cc-mode";
/// Per GPU and in summary: `false` when DevTools mode is established off ([`mode::devtools`]), else
/// `"unknown"`; the summary is `false` only when every GPU's is.
pub const DEVTOOLS: &str = "x-cinfer-gpu-devtools";
/// The per-GPU claims, an object keyed `GPU-0`, `GPU-1`, … (NVIDIA's `submods` keys).
pub const GPUS: &str = "x-cinfer-gpu";
/// Number of GPUs whose evidence verified.
pub const COUNT: &str = "x-cinfer-gpu-count";
/// `true` when every GPU's measurements matched both RIMs (NVIDIA's `measres: success` for all).
pub const MEASUREMENTS_MATCHED: &str = "x-cinfer-gpu-measurements-matched";
/// The lowest driver version over the GPUs as an integer ([`driver_version_number`]), for minimums.
pub const DRIVER_MIN: &str = "x-cinfer-gpu-driver-min";
/// The lowest VBIOS version over the GPUs as an integer ([`vbios_version_number`]), for minimums.
pub const VBIOS_MIN: &str = "x-cinfer-gpu-vbios-min";

fn devtools_claim(d: Option<bool>) -> Value {
    match d {
        Some(b) => json!(b),
        None => json!("unknown"),
    }
}

/// A driver version as an integer that orders like the version: `major·10⁶ + minor·10³ + patch`
/// (`550.90.07` → 550090007, `560.00` → 560000000). `None` unless 2 or 3 decimal parts each below 1000.
pub fn driver_version_number(v: &str) -> Option<i64> {
    let parts: Vec<&str> = v.trim().split('.').collect();
    if !(2..=3).contains(&parts.len()) {
        return None;
    }
    let mut n: i64 = 0;
    for i in 0..3 {
        let p = match parts.get(i) {
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<i64>().ok()?
            }
            Some(_) => return None,
            None => 0,
        };
        n = n * 1000 + p;
    }
    Some(n)
}

/// A VBIOS version as NVIDIA prints it (dot-separated hex pairs, `96.00.9F.00.01`) as the integer its pairs
/// spell in order (0x96009F0001). `None` unless 1 to 7 pairs of hex digits.
pub fn vbios_version_number(v: &str) -> Option<i64> {
    let parts: Vec<&str> = v.trim().split('.').collect();
    if parts.is_empty() || parts.len() > 7 {
        return None;
    }
    let mut n: i64 = 0;
    for p in parts {
        if p.len() != 2 {
            return None;
        }
        n = (n << 8) | i64::from(u8::from_str_radix(p, 16).ok()?);
    }
    Some(n)
}

/// The claims of a set of verified GPUs, to stand beside the SNP claims in one token: the per-GPU claims
/// under [`GPUS`] and the summary claims release policies test ([`COUNT`], [`CC_MODE`], [`DEVTOOLS`],
/// [`MEASUREMENTS_MATCHED`], [`DRIVER_MIN`], [`VBIOS_MIN`]).
pub fn composite_claims(gpus: &[VerifiedGpu]) -> Map<String, Value> {
    let mut m = Map::new();
    let per_gpu: Map<String, Value> = gpus
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("GPU-{i}"), Value::Object(gpu_claims(v))))
        .collect();
    m.insert(GPUS.into(), Value::Object(per_gpu));
    m.insert(COUNT.into(), json!(gpus.len()));
    let modes: Vec<mode::CcMode> = gpus.iter().map(mode::cc_mode).collect();
    let cc = match modes.iter().find(|m| **m != mode::CcMode::On) {
        _ if gpus.is_empty() => "none",
        Some(other) => other.as_str(),
        None => mode::CcMode::On.as_str(),
    };
    m.insert(CC_MODE.into(), json!(cc));
    let devtools_off = !gpus.is_empty() && gpus.iter().all(|v| mode::devtools(v) == Some(false));
    m.insert(DEVTOOLS.into(), devtools_claim(devtools_off.then_some(false)));
    m.insert(
        MEASUREMENTS_MATCHED.into(),
        json!(!gpus.is_empty() && gpus.iter().all(VerifiedGpu::measurements_matched)),
    );
    let lowest = |f: &dyn Fn(&VerifiedGpu) -> Option<i64>| -> Option<i64> {
        let all: Option<Vec<i64>> = gpus.iter().map(f).collect();
        all.and_then(|v| v.into_iter().min())
    };
    if let Some(n) = lowest(&|v| v.report.driver_version().as_deref().and_then(driver_version_number)) {
        m.insert(DRIVER_MIN.into(), json!(n));
    }
    if let Some(n) = lowest(&|v| v.report.vbios_version().as_deref().and_then(vbios_version_number)) {
        m.insert(VBIOS_MIN.into(), json!(n));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_numbers_order_like_the_versions() {
        assert_eq!(driver_version_number("550.90.07"), Some(550_090_007));
        assert_eq!(driver_version_number("560.00"), Some(560_000_000));
        assert!(driver_version_number("535.86.09") < driver_version_number("535.104.05"));
        assert!(driver_version_number("580.159.03") > driver_version_number("570.124.03"));
        for bad in ["", "550", "550.1000.1", "550.9a.07", "1.2.3.4", "550..07"] {
            assert_eq!(driver_version_number(bad), None, "{bad}");
        }
        assert_eq!(vbios_version_number("96.00.9F.00.01"), Some(0x96_00_9F_00_01));
        assert!(vbios_version_number("96.00.74.00.20") > vbios_version_number("96.00.5E.00.04"));
        for bad in ["", "96.0.9F", "96.00.XX.00.01", "01.02.03.04.05.06.07.08"] {
            assert_eq!(vbios_version_number(bad), None, "{bad}");
        }
    }
}
