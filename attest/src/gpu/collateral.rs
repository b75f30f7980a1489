//! Offline GPU collateral: the RIMs NVIDIA's RIM service would serve and the certificate serials its OCSP
//! service would call revoked, in one JSON bundle with its own validity window (the operator refreshes it
//! while online; verification never needs the network).
//!
//! ```json
//! {"version": 1, "not_before": "2026-01-01T00:00:00Z", "not_after": "2026-07-01T00:00:00Z",
//!  "driver_rims": ["<SoftwareIdentity …>"], "vbios_rims": ["…"], "revoked_serials": ["5fa1…"]}
//! ```
//!
//! RIMs are chosen by the report's versions (driver version, VBIOS version) from their `colloquialVersion`;
//! the chosen RIM is then verified in full like one given by file.

use std::time::SystemTime;

use super::error::GpuError;
use super::spdm::GpuReport;
use super::{GpuVerifyOptions, spdm};
use crate::verify::fmt_time;

/// The bundle.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuCollateral {
    /// Format version: 1.
    pub version: u32,
    /// Start of validity (RFC 3339).
    pub not_before: String,
    /// End of validity (RFC 3339).
    pub not_after: String,
    /// Driver RIMs (SWID XML text).
    #[serde(default)]
    pub driver_rims: Vec<String>,
    /// VBIOS RIMs (SWID XML text).
    #[serde(default)]
    pub vbios_rims: Vec<String>,
    /// Revoked certificate serial numbers (hex, as encoded in the certificate).
    #[serde(default)]
    pub revoked_serials: Vec<String>,
}

fn err(detail: impl Into<String>) -> GpuError {
    GpuError::Collateral { detail: detail.into() }
}

fn parse_time(s: &str) -> Result<SystemTime, GpuError> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| err(format!("{s:?} is not RFC 3339: {e}")))?;
    let secs = u64::try_from(t.unix_timestamp()).map_err(|_| err(format!("{s:?} is before 1970")))?;
    Ok(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// `Meta/@colloquialVersion` of a RIM, read without verifying it (to choose; verification follows).
fn colloquial_version(xml: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    doc.root_element()
        .children()
        .find(|c| c.is_element() && c.tag_name().name() == "Meta")?
        .attribute("colloquialVersion")
        .map(str::to_string)
}

impl GpuCollateral {
    /// Parse JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, GpuError> {
        let c: Self = serde_json::from_slice(bytes).map_err(|e| err(format!("bundle JSON: {e}")))?;
        if c.version != 1 {
            return Err(err(format!("bundle version {}, expected 1", c.version)));
        }
        parse_time(&c.not_before)?;
        parse_time(&c.not_after)?;
        Ok(c)
    }

    /// JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Fail unless `at` is inside the bundle's window.
    pub fn check_valid(&self, at: SystemTime) -> Result<(), GpuError> {
        let (nb, na) = (parse_time(&self.not_before)?, parse_time(&self.not_after)?);
        if at < nb || at > na {
            return Err(err(format!(
                "the bundle is valid from {} to {}, not at {}",
                self.not_before,
                self.not_after,
                fmt_time(at)
            )));
        }
        Ok(())
    }

    /// Options for verifying `report` at `at`: the bundle's RIMs for the report's versions (if any) and
    /// its revocation list. Fails when the bundle is not valid at `at`.
    pub fn options_for(
        &self,
        report: &GpuReport,
        at: SystemTime,
        nonce: Option<[u8; spdm::NONCE_LEN]>,
    ) -> Result<GpuVerifyOptions, GpuError> {
        self.check_valid(at)?;
        let pick = |rims: &[String], version: Option<String>| -> Option<Vec<u8>> {
            let version = version?;
            rims.iter()
                .find(|x| colloquial_version(x).is_some_and(|v| v.eq_ignore_ascii_case(&version)))
                .map(|x| x.as_bytes().to_vec())
        };
        Ok(GpuVerifyOptions {
            at,
            nonce,
            driver_rim: pick(&self.driver_rims, report.driver_version()),
            vbios_rim: pick(&self.vbios_rims, report.vbios_version()),
            revoked_serials: self.revoked_serials.iter().map(|s| s.to_ascii_lowercase()).collect(),
        })
    }
}
