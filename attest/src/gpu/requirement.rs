//! What a relying party requires of a guest's GPUs, written once and turned into conditions on the
//! composite token's summary claims ([`super::claims::composite_claims`]): AKV release-policy conditions (the
//! key broker evaluates them like any other) and the operator form of a proxy client policy.
//!
//! | requirement | condition |
//! |---|---|
//! | `min_count = N` (≥ 1) | `x-cinfer-gpu-count` `greaterOrEquals` N |
//! | `cc_mode_on` | `x-cinfer-gpu-cc-mode` `equals` `on` |
//! | `no_devtools` | `x-cinfer-gpu-devtools` `equals` `false` |
//! | `measurements_matched` | `x-cinfer-gpu-measurements-matched` `equals` `true` |
//! | `min_driver = "550.90.07"` | `x-cinfer-gpu-driver-min` `greaterOrEquals` 550090007 |
//! | `min_vbios = "96.00.9F.00.01"` | `x-cinfer-gpu-vbios-min` `greaterOrEquals` 0x96009F0001 |
//!
//! Versions are compared as the integers [`super::claims::driver_version_number`] and
//! [`super::claims::vbios_version_number`] make of them, because AKV's ordered operators compare integers.
//! A token without GPU claims (no GPU evidence) fails the first condition, named in the refusal:
//! `x-cinfer-gpu-count is absent not greaterOrEquals 1`.

use serde_json::{Map, Value, json};

use super::claims::{
    CC_MODE, COUNT, DEVTOOLS, DRIVER_MIN, MEASUREMENTS_MATCHED, VBIOS_MIN, driver_version_number, vbios_version_number,
};
use crate::policy::ClaimCondition;

/// A GPU requirement that cannot be expressed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequirementError {
    /// A minimum version that does not parse.
    #[error("gpu requirement: {what} {value:?} is not a version like {example}")]
    Version {
        /// `min_driver` or `min_vbios`.
        what: &'static str,
        /// The value given.
        value: String,
        /// What a valid one looks like.
        example: &'static str,
    },
    /// Conditions on GPUs without requiring one.
    #[error("gpu requirement: conditions on GPUs need min_count of at least 1")]
    NoCount,
}

/// Requirements on the GPUs of a guest; `min_count = 0` requires nothing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuRequirement {
    /// At least this many verified GPUs.
    pub min_count: u32,
    /// Every GPU in CC mode (default true).
    #[serde(default = "yes")]
    pub cc_mode_on: bool,
    /// No GPU in DevTools mode (default true).
    #[serde(default = "yes")]
    pub no_devtools: bool,
    /// Every GPU's measurements matched its driver and VBIOS RIMs (default true).
    #[serde(default = "yes")]
    pub measurements_matched: bool,
    /// Lowest driver version accepted (`550.90.07`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_driver: Option<String>,
    /// Lowest VBIOS version accepted (`96.00.9F.00.01`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_vbios: Option<String>,
}

fn yes() -> bool {
    true
}

/// `claim greaterOrEquals number(value)` when a minimum is given; `(what, example)` name it in the error.
fn minimum(
    value: Option<&str>,
    (what, example): (&'static str, &'static str),
    number: fn(&str) -> Option<i64>,
    claim: &str,
) -> Result<Option<ClaimCondition>, RequirementError> {
    value
        .map(|v| {
            number(v)
                .map(|n| ClaimCondition::at_least(claim, n))
                .ok_or_else(|| RequirementError::Version {
                    what,
                    value: v.to_string(),
                    example,
                })
        })
        .transpose()
}

impl Default for GpuRequirement {
    fn default() -> Self {
        Self::gpus(0)
    }
}

impl GpuRequirement {
    /// At least `n` GPUs, in CC mode, not in DevTools mode, with matching measurements.
    pub fn gpus(n: u32) -> Self {
        Self {
            min_count: n,
            cc_mode_on: true,
            no_devtools: true,
            measurements_matched: true,
            min_driver: None,
            min_vbios: None,
        }
    }

    /// The release-policy conditions (empty when `min_count` is 0 and nothing else is asked).
    pub fn conditions(&self) -> Result<Vec<ClaimCondition>, RequirementError> {
        let mut out = Vec::new();
        let any_other = self.min_driver.is_some() || self.min_vbios.is_some();
        if self.min_count == 0 {
            return if any_other {
                Err(RequirementError::NoCount)
            } else {
                Ok(out)
            };
        }
        out.push(ClaimCondition::at_least(COUNT, i64::from(self.min_count)));
        if self.cc_mode_on {
            out.push(ClaimCondition::equals(CC_MODE, "on"));
        }
        if self.no_devtools {
            out.push(ClaimCondition::equals(DEVTOOLS, "false"));
        }
        if self.measurements_matched {
            out.push(ClaimCondition::equals(MEASUREMENTS_MATCHED, "true"));
        }
        out.extend(minimum(
            self.min_driver.as_deref(),
            ("min_driver", "550.90.07"),
            driver_version_number,
            DRIVER_MIN,
        )?);
        out.extend(minimum(
            self.min_vbios.as_deref(),
            ("min_vbios", "96.00.9F.00.01"),
            vbios_version_number,
            VBIOS_MIN,
        )?);
        Ok(out)
    }

    /// The same conditions as members of a proxy client policy: claim → `{"<operator>": value}`
    /// ([`ClaimCondition::from_operator`] reads them back).
    pub fn client_policy_claims(&self) -> Result<Map<String, Value>, RequirementError> {
        Ok(self
            .conditions()?
            .into_iter()
            .map(|c| {
                let mut v = json!(c);
                if let Some(o) = v.as_object_mut() {
                    o.remove("claim");
                }
                (c.claim, v)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_name_the_summary_claims() {
        let mut r = GpuRequirement::gpus(2);
        r.min_driver = Some("550.90.07".into());
        r.min_vbios = Some("96.00.9F.00.01".into());
        let c = r.conditions().unwrap();
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(
            text,
            r#"[{"claim":"x-cinfer-gpu-count","greaterOrEquals":2},{"claim":"x-cinfer-gpu-cc-mode","equals":"on"},{"claim":"x-cinfer-gpu-devtools","equals":"false"},{"claim":"x-cinfer-gpu-measurements-matched","equals":"true"},{"claim":"x-cinfer-gpu-driver-min","greaterOrEquals":550090007},{"claim":"x-cinfer-gpu-vbios-min","greaterOrEquals":644255514625}]"#
        );
        assert_eq!(GpuRequirement::gpus(0).conditions().unwrap(), vec![]);
        r.min_count = 0;
        assert_eq!(r.conditions().unwrap_err(), RequirementError::NoCount);
        let bad = GpuRequirement {
            min_driver: Some("latest".into()),
            ..GpuRequirement::gpus(1)
        };
        assert!(
            bad.conditions()
                .unwrap_err()
                .to_string()
                .contains("min_driver \"latest\"")
        );
    }

    #[test]
    fn omitted_flags_default_to_strict() {
        let r: GpuRequirement = serde_json::from_str(r#"{"min_count":1,"min_driver":"550.90.07"}"#).unwrap();
        assert_eq!(
            r,
            GpuRequirement {
                min_driver: Some("550.90.07".into()),
                ..GpuRequirement::gpus(1)
            }
        );
        assert!(serde_json::from_str::<GpuRequirement>(r#"{"min_count":1,"cc":false}"#).is_err());
    }
}
