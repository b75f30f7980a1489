//! Comparison of the report's measurement blocks with the RIMs' golden values, as NVIDIA's verifier does:
//! the active entries of the driver and VBIOS RIMs are merged (an index active in both is an error); each
//! must equal one of its alternatives, with the declared size; RIM index 35 is skipped when the report says
//! NVDEC0 is disabled. Golden index `i` is report block `i + 1`.

use super::error::GpuError;
use super::rim::{GoldenMeasurement, VerifiedRim};
use super::spdm::GpuReport;

/// RIM index that is not compared while NVDEC0 is disabled.
const NVDEC0_INDEX: u32 = 35;

/// What the comparison covered.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MeasurementOutcome {
    /// RIM indices compared and equal.
    pub compared: Vec<u32>,
    /// RIM indices skipped (NVDEC0 disabled).
    pub skipped: Vec<u32>,
    /// Whether the driver RIM took part.
    pub driver: bool,
    /// Whether the VBIOS RIM took part.
    pub vbios: bool,
}

/// Compare; fail with the first mismatching indices named.
pub fn compare(
    report: &GpuReport,
    driver: Option<&VerifiedRim>,
    vbios: Option<&VerifiedRim>,
) -> Result<MeasurementOutcome, GpuError> {
    let mut out = compare_golden(
        report,
        driver.map(|r| r.measurements.as_slice()).unwrap_or_default(),
        vbios.map(|r| r.measurements.as_slice()).unwrap_or_default(),
    )?;
    out.driver = driver.is_some();
    out.vbios = vbios.is_some();
    Ok(out)
}

/// [`compare`] on golden values alone (`driver`/`vbios` in the outcome say whether each list was non-empty).
pub fn compare_golden(
    report: &GpuReport,
    driver: &[GoldenMeasurement],
    vbios: &[GoldenMeasurement],
) -> Result<MeasurementOutcome, GpuError> {
    let mut golden: Vec<&GoldenMeasurement> = Vec::new();
    for list in [driver, vbios] {
        for m in list.iter().filter(|m| m.active) {
            if golden.iter().any(|g| g.index == m.index) {
                return Err(GpuError::IndexConflict { index: m.index });
            }
            golden.push(m);
        }
    }
    golden.sort_by_key(|g| g.index);
    let mut compared = Vec::new();
    let mut skipped = Vec::new();
    let mut bad: Vec<String> = Vec::new();
    for g in golden {
        if g.index == NVDEC0_INDEX && report.nvdec0_disabled() {
            skipped.push(g.index);
            continue;
        }
        let block = u8::try_from(g.index + 1).ok().and_then(|i| report.block(i));
        match block {
            None => bad.push(format!("{} (no block {} in the report)", g.index, g.index + 1)),
            Some(b) if b.value.len() != g.size || !g.alternatives.iter().any(|a| a == &b.value) => {
                bad.push(g.index.to_string());
            }
            Some(_) => compared.push(g.index),
        }
    }
    if !bad.is_empty() {
        return Err(GpuError::Mismatch {
            detail: format!(
                "RIM index(es) {} differ from every golden alternative ({} matched)",
                bad.join(", "),
                compared.len()
            ),
        });
    }
    Ok(MeasurementOutcome {
        compared,
        skipped,
        driver: !driver.is_empty(),
        vbios: !vbios.is_empty(),
    })
}
