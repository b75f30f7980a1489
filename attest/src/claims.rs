//! MAA claim names and the claims a verified SNP report (and, on ACI, its UVM endorsement) yields.

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::aci::VerifiedAci;
use crate::token::Claims;
use crate::verify::VerifiedReport;

/// `x-ms-attestation-type` (`"sevsnpvm"`).
pub const ATTESTATION_TYPE: &str = "x-ms-attestation-type";
/// `x-ms-compliance-status` (`"azure-compliant-uvm"` when the UVM endorsement verified for the report, or
/// the measurement is listed with `--compliant-measurement`).
pub const COMPLIANCE_STATUS: &str = "x-ms-compliance-status";
/// `x-ms-runtime`: the runtime data JSON (holds `keys`, the runtime RSA JWKS).
pub const RUNTIME: &str = "x-ms-runtime";
/// `x-ms-policy-signer`: JWK of the attestation-policy signer.
pub const POLICY_SIGNER: &str = "x-ms-policy-signer";
/// `x-ms-policy-hash`.
pub const POLICY_HASH: &str = "x-ms-policy-hash";
/// host_data, lowercase hex.
pub const HOSTDATA: &str = "x-ms-sevsnpvm-hostdata";
/// Launch measurement, lowercase hex.
pub const LAUNCH_MEASUREMENT: &str = "x-ms-sevsnpvm-launchmeasurement";
/// Debug bit of the guest policy (boolean).
pub const IS_DEBUGGABLE: &str = "x-ms-sevsnpvm-is-debuggable";
/// VMPL (number).
pub const VMPL: &str = "x-ms-sevsnpvm-vmpl";
/// report_data, hex.
pub const REPORTDATA: &str = "x-ms-sevsnpvm-reportdata";
/// Guest SVN: the report's GUEST_SVN, or the endorsed UVM SVN when a UVM endorsement verified.
pub const GUEST_SVN: &str = "x-ms-sevsnpvm-guestsvn";
/// The report's GUEST_SVN when `x-ms-sevsnpvm-guestsvn` carries the endorsed SVN; not an MAA claim.
pub const CINFER_REPORT_GUEST_SVN: &str = "x-cinfer-report-guestsvn";
/// The verified UVM endorsement: `{"iss", "feed", "svn", "signingtime"}`; not an MAA claim.
pub const CINFER_UVM_ENDORSEMENT: &str = "x-cinfer-uvm-endorsement";
/// Why `x-ms-compliance-status` was set: `uvm-endorsement` or `listed-measurement`; not an MAA claim.
pub const CINFER_COMPLIANCE: &str = "x-cinfer-compliance";
/// Which root the chain ended in (`amd-milan`, `mock:<fp>`); not an MAA claim.
pub const CINFER_ROOT: &str = "x-cinfer-root";
/// The report format version (a number); not an MAA claim (MAA's SEV-SNP claims carry no report version).
pub const CINFER_REPORT_VERSION: &str = "x-cinfer-report-version";
/// Boot loader SVN of the reported TCB (number).
pub const BOOTLOADER_SVN: &str = "x-ms-sevsnpvm-bootloader-svn";
/// TEE SVN of the reported TCB (number).
pub const TEE_SVN: &str = "x-ms-sevsnpvm-tee-svn";
/// SNP firmware SVN of the reported TCB (number).
pub const SNPFW_SVN: &str = "x-ms-sevsnpvm-snpfw-svn";
/// Microcode SVN of the reported TCB (number).
pub const MICROCODE_SVN: &str = "x-ms-sevsnpvm-microcode-svn";
/// Whether the guest policy allows a migration agent (boolean).
pub const MIGRATION_ALLOWED: &str = "x-ms-sevsnpvm-migration-allowed";
/// Value of `x-ms-attestation-type` for SNP.
pub const SEVSNPVM: &str = "sevsnpvm";
/// Value of `x-ms-compliance-status` for a compliant UVM.
pub const AZURE_COMPLIANT_UVM: &str = "azure-compliant-uvm";

/// The `x-ms-sevsnpvm-*` claims and `x-ms-attestation-type` of a verified report, with MAA's names and
/// JSON types (hex strings for digests, numbers for SVNs and VMPL, booleans for policy bits).
pub fn snp_claims(v: &VerifiedReport) -> Claims {
    let r = &v.report;
    let obj = json!({
        ATTESTATION_TYPE: SEVSNPVM,
        "x-ms-ver": "1.0",
        "x-ms-sevsnpvm-authorkeydigest": hex::encode(r.author_key_digest()),
        BOOTLOADER_SVN: v.tcb.bootloader,
        "x-ms-sevsnpvm-familyId": hex::encode_upper(r.family_id()),
        GUEST_SVN: r.guest_svn(),
        HOSTDATA: hex::encode(r.host_data()),
        "x-ms-sevsnpvm-idkeydigest": hex::encode(r.id_key_digest()),
        "x-ms-sevsnpvm-imageId": hex::encode_upper(r.image_id()),
        IS_DEBUGGABLE: r.is_debuggable(),
        LAUNCH_MEASUREMENT: hex::encode(r.measurement()),
        MICROCODE_SVN: v.tcb.microcode,
        MIGRATION_ALLOWED: r.migration_allowed(),
        REPORTDATA: hex::encode(r.report_data()),
        "x-ms-sevsnpvm-reportid": hex::encode(r.report_id()),
        "x-ms-sevsnpvm-smt-allowed": r.smt_allowed(),
        SNPFW_SVN: v.tcb.snp,
        TEE_SVN: v.tcb.tee,
        VMPL: r.vmpl(),
        "x-ms-sevsnpvm-guest-policy": r.policy(),
        CINFER_ROOT: v.root.label(),
        CINFER_REPORT_VERSION: r.version(),
    });
    match obj {
        Value::Object(m) => m,
        _ => Claims::new(),
    }
}

/// The claims of verified ACI evidence: [`snp_claims`], plus, when the UVM endorsement verified, what MAA
/// derives from it under MAA's names — `x-ms-compliance-status: azure-compliant-uvm` and the endorsed
/// `x-ms-sevsnpvm-guestsvn` (a number; the endorsement payload's names are MAA claim names) — and, under
/// cinfer names, the report's own GUEST_SVN and the endorsement's issuer, feed, SVN and signing time.
pub fn aci_claims(v: &VerifiedAci) -> Claims {
    let mut claims = snp_claims(&v.report);
    if let Some(uvm) = &v.uvm {
        claims.insert(COMPLIANCE_STATUS.into(), Value::String(AZURE_COMPLIANT_UVM.into()));
        claims.insert(CINFER_COMPLIANCE.into(), Value::String("uvm-endorsement".into()));
        claims.insert(CINFER_REPORT_GUEST_SVN.into(), json!(v.report.report.guest_svn()));
        claims.insert(GUEST_SVN.into(), json!(uvm.payload.guest_svn));
        let signing_time = uvm
            .signing_time
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| json!(d.as_secs()))
            .unwrap_or(Value::Null);
        claims.insert(
            CINFER_UVM_ENDORSEMENT.into(),
            json!({"iss": uvm.issuer, "feed": uvm.feed, "svn": uvm.payload.guest_svn, "signingtime": signing_time}),
        );
    }
    claims
}

/// Mark claims compliant because the launch measurement is listed (`--compliant-measurement`: the documented
/// test and air-gap override for evidence without a UVM endorsement). No-op when already compliant.
pub fn mark_listed_compliant(claims: &mut Claims) {
    if claims.contains_key(COMPLIANCE_STATUS) {
        return;
    }
    claims.insert(COMPLIANCE_STATUS.into(), Value::String(AZURE_COMPLIANT_UVM.into()));
    claims.insert(CINFER_COMPLIANCE.into(), Value::String("listed-measurement".into()));
}
