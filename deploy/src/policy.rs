//! The security policy digest (hostdata) and every policy derived from it.
//!
//! The platform measures the confidential group's security policy (ACI `ccePolicy`, AKS/Kata
//! `io.katacontainers.config.agent.policy`) into the SNP report's HOST_DATA at launch:
//! `HOST_DATA = SHA-256(base64-decode(policy))`, i.e. the digest of the decoded Rego text, not of its base64
//! (seed `tools/securitypolicydigest`). MAA surfaces it as the `x-ms-sevsnpvm-hostdata` claim in lowercase hex.
//! The same 64 hex digits go into the key release policy (who may get the model key), the MAA attestation
//! policy (what the auditor signs) and the hostdata form of the client policy (which server a client talks
//! to). Computing all of them here, from one value, removes the seed's copy-by-hand step.
//!
//! The attestation and release policies also floor the platform: per listed processor product a minimum
//! bootloader, TEE, SNP firmware and microcode SVN (`x-ms-sevsnpvm-*-svn >= N`), and no migration agent
//! (`x-ms-sevsnpvm-migration-allowed = false`) unless allowed ([`crate::config::Attestation`]). The token names
//! no product, so each product is one alternative: a rule of the attestation policy, an `anyOf` clause of the
//! release policy.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use attest::gpu::requirement::{GpuRequirement, RequirementError};

use crate::config::Attestation;

/// A security policy could not be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy text is not standard base64 (with padding), after trimming surrounding whitespace.
    #[error("the security policy is not standard base64")]
    Base64(#[source] base64::DecodeError),
    /// The input looked like a JSON document but has no `ccePolicy`.
    #[error("no ccePolicy found in the JSON document (expected an ARM template or parameters file)")]
    NoCcePolicy,
    /// The input is empty.
    #[error("the security policy is empty")]
    Empty,
    /// A PEM certificate could not be read.
    #[error("the policy signer certificate is not a PEM certificate")]
    Pem,
}

/// A security policy as given to the platform (base64 text), and its decoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityPolicy {
    /// The base64 text, exactly as it goes into `ccePolicy` or the pod annotation.
    pub base64: String,
    /// The decoded policy (Rego text).
    pub decoded: Vec<u8>,
}

/// The 32-byte HOST_DATA of a confidential group, shown as lowercase hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostData(pub [u8; 32]);

impl std::fmt::Display for HostData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl SecurityPolicy {
    /// Reads the output of `az confcom acipolicygen --print-policy` / `katapolicygen` (base64 text), or an ARM
    /// template or parameters file that `acipolicygen` filled in (the first `ccePolicy` string found).
    pub fn parse(input: &str) -> Result<Self, PolicyError> {
        let text = input.trim();
        let base64 = if text.starts_with('{') {
            let doc: Value = serde_json::from_str(text).map_err(|_| PolicyError::NoCcePolicy)?;
            find_cce_policy(&doc).ok_or(PolicyError::NoCcePolicy)?.to_owned()
        } else {
            text.to_owned()
        };
        if base64.is_empty() {
            return Err(PolicyError::Empty);
        }
        let decoded = STANDARD.decode(&base64).map_err(PolicyError::Base64)?;
        Ok(Self { base64, decoded })
    }

    /// `SHA-256(decoded policy)`: what the platform puts in HOST_DATA.
    pub fn host_data(&self) -> HostData {
        HostData(Sha256::digest(&self.decoded).into())
    }
}

/// The first string value under a `ccePolicy` key that is not an ARM expression (`[parameters(..)]`).
fn find_cce_policy(doc: &Value) -> Option<&str> {
    match doc {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "ccePolicy" {
                    match value {
                        Value::String(s) if !s.starts_with('[') && !s.is_empty() => return Some(s),
                        // parameters.json: {"ccePolicy": {"value": "..."}}
                        Value::Object(inner) => {
                            if let Some(Value::String(s)) = inner.get("value")
                                && !s.is_empty()
                            {
                                return Some(s);
                            }
                        }
                        _ => {}
                    }
                }
            }
            map.values().find_map(find_cce_policy)
        }
        Value::Array(items) => items.iter().find_map(find_cce_policy),
        _ => None,
    }
}

/// The MAA claims of the TCB components, in the order of a floor `[bootloader, tee, snp, microcode]`.
pub const TCB_CLAIMS: [&str; 4] = [
    "x-ms-sevsnpvm-bootloader-svn",
    "x-ms-sevsnpvm-tee-svn",
    "x-ms-sevsnpvm-snpfw-svn",
    "x-ms-sevsnpvm-microcode-svn",
];

/// The MAA claim that says whether the guest policy allows a migration agent.
pub const MIGRATION_ALLOWED: &str = "x-ms-sevsnpvm-migration-allowed";

/// One condition of an AKV release policy: `{"claim", "equals": "<string>"}` (AKV compares strings, seed §2.8)
/// or `{"claim", "greaterOrEquals": <integer>}` for a minimum SVN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimCondition {
    /// Claim name.
    pub claim: String,
    /// Required value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    /// Required minimum.
    #[serde(rename = "greaterOrEquals", skip_serializing_if = "Option::is_none")]
    pub greater_or_equals: Option<u8>,
}

impl ClaimCondition {
    fn equals(claim: &str, value: impl Into<String>) -> Self {
        Self {
            claim: claim.to_owned(),
            equals: Some(value.into()),
            greater_or_equals: None,
        }
    }

    fn at_least(claim: &str, minimum: u8) -> Self {
        Self {
            claim: claim.to_owned(),
            equals: None,
            greater_or_equals: Some(minimum),
        }
    }
}

/// The AKV/mHSM secure key release policy for the model key: only a group with this hostdata, attested by
/// this authority, on a compliant UVM, not debuggable, at VMPL 0, without a migration agent (unless allowed),
/// on a platform at or above one listed product's minimum TCB (one `anyOf` clause per product).
pub fn release_policy(attestation: &Attestation, host_data: HostData) -> Value {
    let any_of: Vec<Value> = attestation
        .min_tcb
        .floors()
        .into_iter()
        .map(|(_, floor)| {
            let mut all_of = vec![
                ClaimCondition::equals("x-ms-sevsnpvm-hostdata", host_data.to_string()),
                ClaimCondition::equals("x-ms-compliance-status", "azure-compliant-uvm"),
                ClaimCondition::equals("x-ms-sevsnpvm-is-debuggable", "false"),
                ClaimCondition::equals("x-ms-sevsnpvm-vmpl", "0"),
            ];
            if !attestation.allow_migration_agent {
                all_of.push(ClaimCondition::equals(MIGRATION_ALLOWED, "false"));
            }
            all_of.extend(
                TCB_CLAIMS
                    .iter()
                    .zip(floor)
                    .map(|(claim, minimum)| ClaimCondition::at_least(claim, minimum)),
            );
            json!({ "authority": format!("https://{}", attestation.authority), "allOf": all_of })
        })
        .collect();
    json!({ "version": "1.0.0", "anyOf": any_of })
}

/// The client attestation policy, hostdata form: the client proxy talks only to a group with this hostdata.
/// Every key must equal the token's claim of the same name (Microsoft's `att_tls` semantics).
pub fn client_policy_hostdata(host_data: HostData) -> Value {
    json!({
        "x-ms-attestation-type": "sevsnpvm",
        "x-ms-compliance-status": "azure-compliant-uvm",
        "x-ms-sevsnpvm-hostdata": host_data.to_string(),
        "x-ms-sevsnpvm-is-debuggable": false,
    })
}

/// Adds the release-policy conditions of `gpu` (composite evidence: GPU count, CC mode, DevTools, measurements,
/// driver and VBIOS minimums; `attest::gpu::requirement`) to every `anyOf` clause of a release policy. Returns
/// them as text (`claim {operator: value}`), for display.
pub fn add_gpu_conditions(policy: &mut Value, gpu: &GpuRequirement) -> Result<Vec<String>, RequirementError> {
    let conditions = gpu.conditions()?;
    for clause in policy
        .get_mut("anyOf")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(all_of) = clause.get_mut("allOf").and_then(Value::as_array_mut) {
            all_of.extend(conditions.iter().map(|c| json!(c)));
        }
    }
    Ok(conditions
        .iter()
        .map(|c| {
            let mut v = json!(c);
            let claim = v.as_object_mut().and_then(|o| o.remove("claim")).unwrap_or_default();
            format!("{} {}", claim.as_str().unwrap_or_default(), v)
        })
        .collect())
}

/// Adds the client-policy members of `gpu` to a client attestation policy.
pub fn add_gpu_claims(policy: &mut Value, gpu: &GpuRequirement) -> Result<(), RequirementError> {
    let claims = gpu.client_policy_claims()?;
    if let Some(o) = policy.as_object_mut() {
        o.extend(claims);
    }
    Ok(())
}

/// The client attestation policy, policy-signer form: the client trusts whatever group passed an attestation
/// policy signed by this auditor (the auditor's signed policy pins the hostdata; see [`maa_policy`]).
pub fn client_policy_signer(signer: &SignerJwk) -> Value {
    json!({
        "x-ms-attestation-type": "sevsnpvm",
        "x-ms-compliance-status": "azure-compliant-uvm",
        "x-ms-policy-signer": signer,
        "x-ms-sevsnpvm-is-debuggable": false,
    })
}

/// The attestation policy (MAA policy language) for the auditor to sign and upload: permit only this hostdata
/// on a compliant UVM, never a debuggable guest nor (unless allowed) one allowing a migration agent, on a platform
/// at or above one listed product's minimum TCB (one rule per product, `value>=N`).
pub fn maa_policy(attestation: &Attestation, host_data: HostData) -> String {
    let mut rules = String::new();
    for (_, floor) in attestation.min_tcb.floors() {
        rules.push_str(&format!(
            "[type==\"x-ms-sevsnpvm-hostdata\", value==\"{host_data}\"]\n\
             && [type==\"x-ms-compliance-status\", value==\"azure-compliant-uvm\"]\n\
             && [type==\"x-ms-sevsnpvm-is-debuggable\", value==false]\n"
        ));
        if !attestation.allow_migration_agent {
            rules.push_str(&format!("&& [type==\"{MIGRATION_ALLOWED}\", value==false]\n"));
        }
        for (claim, minimum) in TCB_CLAIMS.iter().zip(floor) {
            rules.push_str(&format!("&& [type==\"{claim}\", value>={minimum}]\n"));
        }
        rules.push_str("=> permit();\n");
    }
    format!("version= 1.0;\nauthorizationrules\n{{\n{rules}}};\n")
}

/// The `x-ms-policy-signer` claim value: a JWK with the signer's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignerJwk {
    /// `RSA` or `EC`, from the certificate's key.
    pub kty: String,
    /// The certificate, standard base64 of DER.
    pub x5c: Vec<String>,
}

impl SignerJwk {
    /// Builds the JWK from a PEM certificate (the first `CERTIFICATE` block).
    pub fn from_pem(pem: &str) -> Result<Self, PolicyError> {
        let body: String = pem
            .lines()
            .map(str::trim)
            .skip_while(|l| *l != "-----BEGIN CERTIFICATE-----")
            .skip(1)
            .take_while(|l| *l != "-----END CERTIFICATE-----")
            .collect();
        let der = STANDARD.decode(&body).map_err(|_| PolicyError::Pem)?;
        if der.is_empty() {
            return Err(PolicyError::Pem);
        }
        // The SPKI algorithm OID names the key type: rsaEncryption or id-ecPublicKey (DER-encoded OID bodies).
        const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
        const ID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
        let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
        let kty = if has(RSA_ENCRYPTION) {
            "RSA"
        } else if has(ID_EC_PUBLIC_KEY) {
            "EC"
        } else {
            return Err(PolicyError::Pem);
        };
        Ok(Self {
            kty: kty.to_owned(),
            x5c: vec![STANDARD.encode(der)],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_data_hashes_decoded_policy_not_base64_text() {
        let policy = SecurityPolicy::parse("cGFja2FnZSBwb2xpY3kK").unwrap();
        assert_eq!(policy.decoded, b"package policy\n");
        assert_eq!(
            policy.host_data().0,
            <[u8; 32]>::from(Sha256::digest(b"package policy\n"))
        );
        assert_ne!(
            policy.host_data().0,
            <[u8; 32]>::from(Sha256::digest(b"cGFja2FnZSBwb2xpY3kK"))
        );
    }

    #[test]
    fn parse_rejects_url_safe_base64_and_empty_input() {
        assert!(matches!(SecurityPolicy::parse("ab-_"), Err(PolicyError::Base64(_))));
        assert!(matches!(SecurityPolicy::parse(" \n"), Err(PolicyError::Empty)));
    }

    #[test]
    fn parse_finds_cce_policy_in_template_and_parameters_but_not_expressions() {
        let template =
            r#"{"resources":[{"properties":{"confidentialComputeProperties":{"ccePolicy":"cGFja2FnZSBwb2xpY3kK"}}}]}"#;
        assert_eq!(SecurityPolicy::parse(template).unwrap().decoded, b"package policy\n");
        let params = r#"{"parameters":{"ccePolicy":{"value":"cGFja2FnZSBwb2xpY3kK"}}}"#;
        assert_eq!(SecurityPolicy::parse(params).unwrap().decoded, b"package policy\n");
        let unfilled = r#"{"properties":{"ccePolicy":"[parameters('ccePolicy')]"}}"#;
        assert!(matches!(SecurityPolicy::parse(unfilled), Err(PolicyError::NoCcePolicy)));
    }

    fn attestation(min_tcb: &str, allow_migration_agent: bool) -> Attestation {
        toml::from_str(&format!(
            "authority = \"maa.example\"\nallow_migration_agent = {allow_migration_agent}\n{min_tcb}"
        ))
        .unwrap()
    }

    #[test]
    fn release_policy_has_the_seed_shape_with_string_values_and_integer_minimums() {
        let policy = release_policy(&attestation("", false), HostData([0xab; 32]));
        let text = serde_json::to_string(&policy).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"anyOf\":[{{\"allOf\":[{{\"claim\":\"x-ms-sevsnpvm-hostdata\",\"equals\":\"{}\"}},\
                 {{\"claim\":\"x-ms-compliance-status\",\"equals\":\"azure-compliant-uvm\"}},\
                 {{\"claim\":\"x-ms-sevsnpvm-is-debuggable\",\"equals\":\"false\"}},\
                 {{\"claim\":\"x-ms-sevsnpvm-vmpl\",\"equals\":\"0\"}},\
                 {{\"claim\":\"x-ms-sevsnpvm-migration-allowed\",\"equals\":\"false\"}},\
                 {{\"claim\":\"x-ms-sevsnpvm-bootloader-svn\",\"greaterOrEquals\":0}},\
                 {{\"claim\":\"x-ms-sevsnpvm-tee-svn\",\"greaterOrEquals\":0}},\
                 {{\"claim\":\"x-ms-sevsnpvm-snpfw-svn\",\"greaterOrEquals\":22}},\
                 {{\"claim\":\"x-ms-sevsnpvm-microcode-svn\",\"greaterOrEquals\":219}}],\
                 \"authority\":\"https://maa.example\"}}],\"version\":\"1.0.0\"}}",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn each_listed_product_is_one_alternative_with_its_floor() {
        let a = attestation(
            "[min_tcb]\nmilan = { snp = 24 }\ngenoa = { bootloader = 10, microcode = 86 }",
            true,
        );
        let release = release_policy(&a, HostData([1; 32]));
        let clauses = release["anyOf"].as_array().unwrap();
        assert_eq!(clauses.len(), 2);
        let floor = |i: usize| -> Vec<(String, u64)> {
            clauses[i]["allOf"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|c| Some((c["claim"].as_str()?.to_owned(), c["greaterOrEquals"].as_u64()?)))
                .collect()
        };
        let named = |v: [u64; 4]| -> Vec<(String, u64)> { TCB_CLAIMS.iter().map(|c| (*c).to_owned()).zip(v).collect() };
        assert_eq!(floor(0), named([0, 0, 24, 219]));
        assert_eq!(floor(1), named([10, 0, 23, 86]));
        let maa = maa_policy(&a, HostData([1; 32]));
        assert_eq!(maa.matches("=> permit();").count(), 2);
        assert!(maa.contains("[type==\"x-ms-sevsnpvm-snpfw-svn\", value>=24]"), "{maa}");
        assert!(
            maa.contains("[type==\"x-ms-sevsnpvm-microcode-svn\", value>=86]"),
            "{maa}"
        );
        // allow_migration_agent drops the condition from both.
        assert!(!maa.contains(MIGRATION_ALLOWED) && !release.to_string().contains(MIGRATION_ALLOWED));
    }

    #[test]
    fn signer_jwk_rejects_non_certificates() {
        assert!(SignerJwk::from_pem("hello").is_err());
        assert!(SignerJwk::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
    }
}
