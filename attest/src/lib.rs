//! Attestation for cinfer.
//!
//! Will hold: SEV-SNP evidence (from `/dev/sev-guest`, or a mock attester only when asked), report verification
//! up to the AMD roots, an MAA-compatible attestation service issuing JWTs, auditor-signed policies, and secure
//! key release (an Azure Key Vault/mHSM client plus a local key broker speaking the same API).
