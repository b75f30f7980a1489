//! The wire types of the attestation and key-release protocols (MAA's SEV-SNP attestation, AKV's secure key
//! release and key import, their error bodies): one definition that the clients ([`crate::client`]) serialise and
//! the service ([`crate::service`]) parses, so the in-guest clients need nothing of the service. Field names are
//! the services' own (`docs/azure-protocols.md`); cinfer's one extension is `gpuEvidence` (composite evidence).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE as B64URL_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::gpu::GpuEvidence;

/// Base64url decoding that accepts padded and unpadded input (Go's `URLEncoding` pads).
pub(crate) const B64URL_ANY: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `{data, dataType}`: runtime or init-time data, base64url.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataField {
    /// The data, base64url.
    #[serde(default)]
    pub data: String,
    /// `JSON` or `Binary` (empty for none).
    #[serde(default)]
    pub data_type: String,
}

/// `POST /attest/SevSnpVm`: the request body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttestRequest {
    /// Base64url of the JSON [`SnpReportEnvelope`].
    pub report: String,
    /// The runtime data whose SHA-256 the report's report_data carries.
    #[serde(default)]
    pub runtime_data: Option<DataField>,
    /// Init-time data (sent empty, as the seed does).
    #[serde(default)]
    pub init_time_data: Option<DataField>,
    /// A client nonce (not bound to the evidence; MAA echoes it).
    #[serde(default)]
    pub nonce: Option<Value>,
    /// Composite evidence (cinfer's extension; MAA has none): NVIDIA's per-GPU evidence objects. Left out when
    /// there are none, so a plain SEV-SNP request is MAA's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_evidence: Vec<GpuEvidence>,
}

/// The `report` of an [`AttestRequest`], before its base64url layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnpReportEnvelope {
    /// The SNP report, base64url.
    pub snp_report: String,
    /// VCEK ‖ ASK ‖ ARK (PEM), base64url.
    pub vcek_cert_chain: String,
    /// Base64url of the JSON [`EndorsementsEnvelope`], if the guest has a UVM endorsement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endorsements: Option<String>,
}

/// `Endorsements`, after its base64url layer: `{"Uvm": [b64url(COSE_Sign1)]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndorsementsEnvelope {
    /// The UVM endorsements (COSE_Sign1), base64url; the seed sends one.
    #[serde(default)]
    pub uvm: Vec<String>,
}

impl AttestRequest {
    /// The request for `report` (raw), its VCEK chain (PEM), an optional UVM endorsement (COSE_Sign1) and GPU
    /// evidence, binding `runtime_data` (JSON); padded base64url everywhere, as the seed sends.
    pub fn new(
        report: &[u8],
        cert_chain_pem: &str,
        uvm_endorsement: Option<&[u8]>,
        gpus: &[GpuEvidence],
        runtime_data: &[u8],
        nonce: u64,
    ) -> Self {
        let endorsements = uvm_endorsement.map(|uvm| {
            let env = EndorsementsEnvelope {
                uvm: vec![B64URL_PAD.encode(uvm)],
            };
            B64URL_PAD.encode(serde_json::to_vec(&env).unwrap_or_default())
        });
        let envelope = SnpReportEnvelope {
            snp_report: B64URL_PAD.encode(report),
            vcek_cert_chain: B64URL_PAD.encode(cert_chain_pem.as_bytes()),
            endorsements,
        };
        Self {
            report: B64URL_PAD.encode(serde_json::to_vec(&envelope).unwrap_or_default()),
            runtime_data: Some(DataField {
                data: B64URL_PAD.encode(runtime_data),
                data_type: "JSON".to_owned(),
            }),
            init_time_data: Some(DataField::default()),
            nonce: Some(Value::from(nonce)),
            gpu_evidence: gpus.to_vec(),
        }
    }
}

/// `POST /attest/SevSnpVm`: the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestResponse {
    /// The attestation token (JWT).
    pub token: String,
}

/// `POST /keys/{name}[/{version}]/release`: the request body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    /// The attestation token.
    pub target: String,
    /// The wrapping algorithm (AKV: `CKM_RSA_AES_KEY_WRAP`); the token's runtime key decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enc: Option<String>,
    /// A nonce (not used by the release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// `POST /keys/{name}[/{version}]/release`: the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResponse {
    /// The signed release (JWS) carrying the wrapped key.
    pub value: String,
}

/// `PUT /keys/{name}` (AKV key import): the request body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImportRequest {
    /// The key (JWK).
    pub key: Value,
    /// Whether it goes into an HSM (accepted, not used by the local broker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsm: Option<bool>,
    /// Key attributes (`exportable` must be true for a releasable key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Value>,
    /// The release policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_policy: Option<PolicyBlob>,
}

/// `{contentType, data}`: a release policy as AKV carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyBlob {
    /// `application/json; charset=utf-8`.
    #[serde(default)]
    pub content_type: String,
    /// Base64url of the policy's JSON.
    pub data: String,
}

/// An error body of MAA and AKV: `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The `error` of an [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A short code (`BadRequest`, `Forbidden`, ...).
    pub code: String,
    /// What failed (names the failed check).
    pub message: String,
}
