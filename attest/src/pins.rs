//! Does a release policy pin the workload?
//!
//! A release policy is a list of alternatives (`anyOf`); the key goes to a token that satisfies any one of
//! them. An alternative that only asks for, say, `x-ms-sevsnpvm-vmpl = 0` releases the key to every SEV-SNP
//! guest the authority attests, debuggable ones and ones running someone else's containers included. So every
//! alternative must pin
//!
//! * **what runs**: `x-ms-sevsnpvm-hostdata` (the digest of the container group's security policy), or
//!   `x-ms-policy-signer` (the auditor whose signed attestation policy the token was issued under), and
//! * **a guest that cannot be inspected**: `x-ms-sevsnpvm-is-debuggable` equal to `false`.
//!
//! These are the same pins the client proxy requires of its policy (`cinfer-proxy`, `require_pins`), here for
//! the AKV release policy language ([`crate::policy::ReleasePolicy`]: claim equals value). The rendered
//! `release-policy.json` of `cinfer-deploy` and `cinfer-mkimage import-key` pin both.

use serde_json::{Value, json};

use crate::claims::{HOSTDATA, IS_DEBUGGABLE, POLICY_SIGNER};
use crate::policy::{ReleaseClause, ReleasePolicy, claim_equals};

/// A release policy that would release the key to guests it does not pin.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("release policy too weak: {missing} (it would release the key to other guests)")]
pub struct WeakPolicyError {
    /// What is missing, per `anyOf` alternative.
    pub missing: String,
}

/// What one alternative lacks; empty when it pins both.
fn clause_gaps(clause: &ReleaseClause) -> Vec<String> {
    let pinned = |claim: &str| {
        clause
            .all_of
            .iter()
            .any(|c| c.claim == claim && !c.equals.is_null() && c.equals != Value::String(String::new()))
    };
    let mut gaps = Vec::new();
    if !pinned(HOSTDATA) && !pinned(POLICY_SIGNER) {
        gaps.push(format!("pins neither {HOSTDATA} nor {POLICY_SIGNER}"));
    }
    if !clause
        .all_of
        .iter()
        .any(|c| c.claim == IS_DEBUGGABLE && claim_equals(&c.equals, &json!(false)))
    {
        gaps.push(format!("does not require {IS_DEBUGGABLE} = false"));
    }
    gaps
}

/// Checks that every `anyOf` alternative pins the workload (`x-ms-sevsnpvm-hostdata` or `x-ms-policy-signer`)
/// and `x-ms-sevsnpvm-is-debuggable = false`; the error says, per alternative, what is missing.
pub fn require_release_pins(policy: &ReleasePolicy) -> Result<(), WeakPolicyError> {
    let missing: Vec<String> = policy
        .any_of
        .iter()
        .enumerate()
        .filter_map(|(i, clause)| {
            let gaps = clause_gaps(clause);
            (!gaps.is_empty()).then(|| format!("anyOf[{i}] (authority {}) {}", clause.authority, gaps.join(" and ")))
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(WeakPolicyError {
            missing: missing.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(clauses: &[&str]) -> ReleasePolicy {
        let any_of: Vec<String> = clauses
            .iter()
            .map(|all_of| format!(r#"{{"authority":"https://maa.example","allOf":[{all_of}]}}"#))
            .collect();
        ReleasePolicy::from_json(format!(r#"{{"version":"1.0.0","anyOf":[{}]}}"#, any_of.join(",")).as_bytes()).unwrap()
    }

    const HD: &str = r#"{"claim":"x-ms-sevsnpvm-hostdata","equals":"abababababababababababababababababababababababababababababababab"}"#;
    const NOT_DEBUG: &str = r#"{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"}"#;
    const VMPL: &str = r#"{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}"#;

    #[test]
    fn every_alternative_must_pin_the_workload_and_a_non_debuggable_guest() {
        require_release_pins(&policy(&[&format!("{HD},{NOT_DEBUG},{VMPL}")])).unwrap();
        let signer = r#"{"claim":"x-ms-policy-signer","equals":{"kty":"RSA","x5c":["AA=="]}}"#;
        require_release_pins(&policy(&[&format!("{signer},{NOT_DEBUG}")])).unwrap();
        // A boolean `false` counts as AKV's string "false".
        require_release_pins(&policy(&[&format!(
            r#"{HD},{{"claim":"x-ms-sevsnpvm-is-debuggable","equals":false}}"#
        )]))
        .unwrap();

        let e = require_release_pins(&policy(&[VMPL])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "release policy too weak: anyOf[0] (authority https://maa.example) pins neither x-ms-sevsnpvm-hostdata \
             nor x-ms-policy-signer and does not require x-ms-sevsnpvm-is-debuggable = false (it would release \
             the key to other guests)"
        );
        let e = require_release_pins(&policy(&[HD])).unwrap_err();
        assert_eq!(
            e.missing,
            "anyOf[0] (authority https://maa.example) does not require x-ms-sevsnpvm-is-debuggable = false"
        );
        let debuggable = r#"{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"true"}"#;
        assert!(require_release_pins(&policy(&[&format!("{HD},{debuggable}")])).is_err());
        let empty_hd = r#"{"claim":"x-ms-sevsnpvm-hostdata","equals":""}"#;
        assert!(require_release_pins(&policy(&[&format!("{empty_hd},{NOT_DEBUG}")])).is_err());
        // One weak alternative is enough to release the key: named by its index.
        let e = require_release_pins(&policy(&[&format!("{HD},{NOT_DEBUG}"), NOT_DEBUG])).unwrap_err();
        assert!(e.missing.starts_with("anyOf[1] "), "{e}");
        assert!(!e.missing.contains("anyOf[0]"), "{e}");
    }
}
