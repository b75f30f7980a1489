//! The seed's client policy: a JSON object of claim → value that the token must carry, compared by exact
//! equality. Two forms are generated (the seed's templates), and any object of claims is accepted:
//!
//! ```json
//! {"x-ms-attestation-type":"sevsnpvm","x-ms-compliance-status":"azure-compliant-uvm",
//!  "x-ms-sevsnpvm-hostdata":"<64 hex>","x-ms-sevsnpvm-is-debuggable":false}
//! {"x-ms-attestation-type":"sevsnpvm","x-ms-compliance-status":"azure-compliant-uvm",
//!  "x-ms-policy-signer":{"kty":"RSA","x5c":["<base64 DER of the policy-signing certificate>"]},
//!  "x-ms-sevsnpvm-is-debuggable":false}
//! ```
//!
//! Scalars compare as MAA does ([`attest::policy::claim_equals`]: `false` equals `"false"`). An object
//! value pins each of its members: `x-ms-policy-signer` in the token also carries `n` and `e`, so the
//! policy's `{"kty","x5c"}` matches the token's signer when `kty` and the whole `x5c` array are equal.
//!
//! An object holding exactly one of AKV's release-policy operators is a condition instead
//! ([`attest::policy::ClaimCondition::from_operator`]), which is how GPU requirements are written
//! ([`ClientPolicy::require_gpus`], `generate-policy --gpus N`):
//!
//! ```json
//! {"x-cinfer-gpu-count": {"greaterOrEquals": 1}, "x-cinfer-gpu-cc-mode": {"equals": "on"},
//!  "x-cinfer-gpu-devtools": {"equals": "false"}, "x-cinfer-gpu-measurements-matched": {"equals": "true"},
//!  "x-cinfer-gpu-driver-min": {"greaterOrEquals": 550090007}}
//! ```

use attest::claims::{
    ATTESTATION_TYPE, AZURE_COMPLIANT_UVM, COMPLIANCE_STATUS, HOSTDATA, IS_DEBUGGABLE, POLICY_SIGNER, SEVSNPVM,
};
use attest::gpu::requirement::{GpuRequirement, RequirementError};
use attest::policy::{ClaimCondition, claim_equals};
use attest::token::Claims;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64STD;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Map, Value, json};

/// A client policy could not be read or built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not a JSON object.
    #[error("client policy: not a JSON object of claims: {detail}")]
    Json {
        /// Parser detail.
        detail: String,
    },
    /// The policy pins no claim, so it would accept any attested service.
    #[error("client policy: pins no claim (an empty policy would accept any attested service)")]
    Empty,
    /// A hostdata value that is not 64 hex digits.
    #[error("client policy: hostdata must be 64 hex digits, got {value:?}")]
    HostData {
        /// The value given.
        value: String,
    },
    /// The policy pins neither the workload nor its auditor, or accepts a debuggable guest: any SNP guest (a
    /// debuggable one, or one running other code) would pass it.
    #[error(
        "client policy: too weak: {missing} (it would trust other guests); pin x-ms-sevsnpvm-hostdata or \
         x-ms-policy-signer and x-ms-sevsnpvm-is-debuggable=false (cinfer-proxy generate-policy), or pass \
         --dangerously-accept-weak-policy"
    )]
    Weak {
        /// What is missing.
        missing: String,
    },
    /// A policy-signer certificate that is not PEM or DER.
    #[error("client policy: policy signer certificate: {detail}")]
    Certificate {
        /// What is wrong.
        detail: String,
    },
    /// GPU requirements that cannot be written as conditions.
    #[error("client policy: {0}")]
    Gpu(#[from] RequirementError),
}

/// Claims the attestation token must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientPolicy {
    claims: Map<String, Value>,
}

fn base(pin: (&str, Value)) -> ClientPolicy {
    let mut claims = Map::new();
    claims.insert(ATTESTATION_TYPE.into(), json!(SEVSNPVM));
    claims.insert(COMPLIANCE_STATUS.into(), json!(AZURE_COMPLIANT_UVM));
    claims.insert(pin.0.into(), pin.1);
    claims.insert(IS_DEBUGGABLE.into(), json!(false));
    ClientPolicy { claims }
}

impl ClientPolicy {
    /// Parse policy JSON (an object of claims; at least one).
    pub fn from_json(bytes: &[u8]) -> Result<Self, PolicyError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| PolicyError::Json { detail: e.to_string() })?;
        Self::from_claims(v)
    }

    /// A policy from a JSON value (an object of claims; at least one).
    pub fn from_claims(v: Value) -> Result<Self, PolicyError> {
        match v {
            Value::Object(claims) if claims.is_empty() => Err(PolicyError::Empty),
            Value::Object(claims) => Ok(Self { claims }),
            other => Err(PolicyError::Json {
                detail: format!("found {other}"),
            }),
        }
    }

    /// Checks that the policy pins something: the workload (`x-ms-sevsnpvm-hostdata`) or the auditor who signed
    /// its attestation policy (`x-ms-policy-signer`), and a non-debuggable guest. A policy holding only, say,
    /// `x-ms-attestation-type` would trust every SNP guest.
    pub fn require_pins(&self) -> Result<(), PolicyError> {
        let mut missing = Vec::new();
        if !self.claims.contains_key(HOSTDATA) && !self.claims.contains_key(POLICY_SIGNER) {
            missing.push(format!("neither {HOSTDATA} nor {POLICY_SIGNER}"));
        }
        match self.claims.get(IS_DEBUGGABLE) {
            Some(v) if claim_equals(v, &json!(false)) => {}
            _ => missing.push(format!("{IS_DEBUGGABLE} is not pinned to false")),
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(PolicyError::Weak {
                missing: missing.join("; "),
            })
        }
    }

    /// The hostdata-pinned form (`x-ms-sevsnpvm-hostdata`, lowercase hex).
    pub fn hostdata(hex_digest: &str) -> Result<Self, PolicyError> {
        let h = hex_digest.trim().to_ascii_lowercase();
        if h.len() != 64 || hex::decode(&h).is_err() {
            return Err(PolicyError::HostData {
                value: hex_digest.to_string(),
            });
        }
        Ok(base((HOSTDATA, Value::String(h))))
    }

    /// The policy-signer-pinned form (`x-ms-policy-signer` = `{"kty":"RSA","x5c":[cert]}`).
    pub fn policy_signer(cert_der: &[u8]) -> Self {
        base((POLICY_SIGNER, json!({"kty": "RSA", "x5c": [B64STD.encode(cert_der)]})))
    }

    /// [`Self::policy_signer`] from a PEM (or DER) certificate file's bytes.
    pub fn policy_signer_cert(bytes: &[u8]) -> Result<Self, PolicyError> {
        let der = if bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            CertificateDer::from_pem_slice(bytes)
                .map_err(|e| PolicyError::Certificate { detail: e.to_string() })?
                .as_ref()
                .to_vec()
        } else {
            bytes.to_vec()
        };
        if x509_parser::parse_x509_certificate(&der).is_err() {
            return Err(PolicyError::Certificate {
                detail: "not an X.509 certificate".into(),
            });
        }
        Ok(Self::policy_signer(&der))
    }

    /// Also require the server's GPUs to meet `gpu` (conditions on the composite token's GPU claims).
    pub fn require_gpus(mut self, gpu: &GpuRequirement) -> Result<Self, PolicyError> {
        self.claims.extend(gpu.client_policy_claims()?);
        Ok(self)
    }

    /// The pinned claims.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// Pretty JSON (sorted keys), as `generate-policy` writes it.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(&Value::Object(self.claims.clone())).unwrap_or_default()
    }

    /// Every pinned claim must be present in `claims` and equal (or meet its operator condition); the first
    /// difference is returned.
    pub fn check(&self, claims: &Claims) -> Result<(), PolicyMismatch> {
        for (name, expected) in &self.claims {
            let actual = claims.get(name);
            let holds = match ClaimCondition::from_operator(name, expected) {
                Some(condition) => condition.holds(claims),
                None => actual.is_some_and(|a| matches(a, expected)),
            };
            if !holds {
                return Err(PolicyMismatch {
                    claim: name.clone(),
                    expected: expected.to_string(),
                    actual: actual.map_or_else(|| "missing".to_string(), short),
                });
            }
        }
        Ok(())
    }
}

/// A client-policy claim is missing or differs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("claim {claim} is {actual}, the policy requires {expected}")]
pub struct PolicyMismatch {
    /// Claim name.
    pub claim: String,
    /// Expected value (JSON).
    pub expected: String,
    /// Actual value (JSON, or `missing`).
    pub actual: String,
}

fn short(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 200 {
        s.truncate(200);
        s.push_str("...");
    }
    s
}

fn matches(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e.iter().all(|(k, ev)| a.get(k).is_some_and(|av| matches(av, ev))),
        _ => claim_equals(actual, expected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(v: Value) -> Claims {
        match v {
            Value::Object(m) => m,
            _ => Claims::new(),
        }
    }

    #[test]
    fn hostdata_form_matches_the_seed_template() {
        let p = ClientPolicy::hostdata(&"AB".repeat(32)).unwrap();
        let v: Value = serde_json::from_str(&p.to_json_pretty()).unwrap();
        assert_eq!(
            v,
            json!({"x-ms-attestation-type":"sevsnpvm","x-ms-compliance-status":"azure-compliant-uvm",
                   "x-ms-sevsnpvm-hostdata":"ab".repeat(32),"x-ms-sevsnpvm-is-debuggable":false})
        );
        assert!(ClientPolicy::hostdata("abc").is_err());
        assert!(ClientPolicy::hostdata(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn weak_policies_are_named() {
        let weak = |v: Value| {
            ClientPolicy::from_claims(v)
                .unwrap()
                .require_pins()
                .unwrap_err()
                .to_string()
        };
        let e = weak(json!({"x-ms-attestation-type": "sevsnpvm"}));
        assert!(
            e.contains("neither x-ms-sevsnpvm-hostdata nor x-ms-policy-signer"),
            "{e}"
        );
        let e = weak(json!({HOSTDATA: "ab".repeat(32)}));
        assert!(e.contains("is-debuggable is not pinned to false"), "{e}");
        let e = weak(json!({HOSTDATA: "ab".repeat(32), IS_DEBUGGABLE: true}));
        assert!(e.contains("is-debuggable is not pinned to false"), "{e}");
        ClientPolicy::hostdata(&"ab".repeat(32))
            .unwrap()
            .require_pins()
            .unwrap();
        ClientPolicy::policy_signer(b"x").require_pins().unwrap();
        // The seed's string form of the debug claim counts as pinned.
        let s = json!({HOSTDATA: "ab".repeat(32), IS_DEBUGGABLE: "false"});
        ClientPolicy::from_claims(s).unwrap().require_pins().unwrap();
    }

    #[test]
    fn empty_and_non_object_policies_are_refused() {
        assert!(matches!(ClientPolicy::from_json(b"{}"), Err(PolicyError::Empty)));
        assert!(matches!(ClientPolicy::from_json(b"[1]"), Err(PolicyError::Json { .. })));
    }

    #[test]
    fn check_compares_each_claim_and_names_the_first_difference() {
        let p = ClientPolicy::hostdata(&"11".repeat(32)).unwrap();
        let mut c = claims(
            json!({"x-ms-attestation-type":"sevsnpvm","x-ms-compliance-status":"azure-compliant-uvm",
                                  "x-ms-sevsnpvm-hostdata":"11".repeat(32),"x-ms-sevsnpvm-is-debuggable":false}),
        );
        p.check(&c).unwrap();
        c.insert(IS_DEBUGGABLE.into(), json!(true));
        // As a refusal shows it: the check's name, then the claim.
        let e = crate::atls::AtlsError::from(p.check(&c).unwrap_err());
        assert!(
            e.to_string()
                .starts_with("policy: claim x-ms-sevsnpvm-is-debuggable is true"),
            "{e}"
        );
        c.remove(HOSTDATA);
        let e = p.check(&c).unwrap_err().to_string();
        assert!(e.contains("x-ms-sevsnpvm-hostdata is missing"), "{e}");
    }

    #[test]
    fn gpu_requirements_are_conditions_on_the_composite_claims() {
        let mut need = GpuRequirement::gpus(2);
        need.min_driver = Some("550.90.07".into());
        let p = ClientPolicy::hostdata(&"11".repeat(32))
            .unwrap()
            .require_gpus(&need)
            .unwrap();
        let v: Value = serde_json::from_str(&p.to_json_pretty()).unwrap();
        assert_eq!(v["x-cinfer-gpu-count"], json!({"greaterOrEquals": 2}));
        assert_eq!(v["x-cinfer-gpu-cc-mode"], json!({"equals": "on"}));
        let mut c = claims(
            json!({"x-ms-attestation-type":"sevsnpvm","x-ms-compliance-status":"azure-compliant-uvm",
            "x-ms-sevsnpvm-hostdata":"11".repeat(32),"x-ms-sevsnpvm-is-debuggable":false,
            "x-cinfer-gpu-count": 2, "x-cinfer-gpu-cc-mode": "on", "x-cinfer-gpu-devtools": false,
            "x-cinfer-gpu-measurements-matched": true, "x-cinfer-gpu-driver-min": 550_090_007}),
        );
        p.check(&c).unwrap();
        c.insert("x-cinfer-gpu-count".into(), json!(1));
        let e = p.check(&c).unwrap_err().to_string();
        assert!(e.contains("claim x-cinfer-gpu-count is 1"), "{e}");
        c.insert("x-cinfer-gpu-count".into(), json!(8));
        c.insert("x-cinfer-gpu-driver-min".into(), json!(535_086_009));
        let e = p.check(&c).unwrap_err().to_string();
        assert!(e.contains("x-cinfer-gpu-driver-min is 535086009"), "{e}");
        c.remove("x-cinfer-gpu-driver-min");
        c.remove("x-cinfer-gpu-count");
        let e = p.check(&c).unwrap_err().to_string();
        assert!(e.contains("x-cinfer-gpu-count is missing"), "{e}");
        let bad = GpuRequirement {
            min_vbios: Some("new".into()),
            ..GpuRequirement::gpus(1)
        };
        assert!(ClientPolicy::policy_signer(b"x").require_gpus(&bad).is_err());
    }

    #[test]
    fn policy_signer_matches_by_kty_and_x5c() {
        let p = ClientPolicy::policy_signer(b"cert-bytes");
        let signer = json!({"kty":"RSA","x5c":[B64STD.encode(b"cert-bytes")],"n":"AQAB","e":"AQAB"});
        let mut c = claims(
            json!({"x-ms-attestation-type":"sevsnpvm","x-ms-compliance-status":"azure-compliant-uvm",
                                  "x-ms-sevsnpvm-is-debuggable":false}),
        );
        c.insert(POLICY_SIGNER.into(), signer);
        p.check(&c).unwrap();
        c.insert(
            POLICY_SIGNER.into(),
            json!({"kty":"RSA","x5c":[B64STD.encode(b"other")]}),
        );
        assert!(p.check(&c).unwrap_err().to_string().contains("x-ms-policy-signer"));
    }
}
