//! `EncfsSideCarArgs`: the encfs sidecar's arguments in the seed's schema (seed §5.1), as standard base64 of
//! compact JSON, in the environment variable of that name.
//!
//! Field order follows the seed's Go structs, so the bytes (and hence the measured policy, where the variable
//! is measured) are stable. Unlike the seed, the rendered deployments give this variable its literal value, so
//! `acipolicygen` measures it: the host cannot swap the blob URL, the vault or the authority.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

use crate::config::DeployConfig;

/// Top level of `EncfsSideCarArgs`.
#[derive(Debug, Clone, Serialize)]
pub struct EncfsSideCarArgs {
    /// Platform settings shared by all filesystems.
    pub azure_info: AzureInfo,
    /// The filesystems to mount (cinfer renders exactly one: the model).
    pub azure_filesystems: Vec<AzureFilesystem>,
}

/// `azure_info`.
#[derive(Debug, Clone, Serialize)]
pub struct AzureInfo {
    /// The managed identity to use for IMDS tokens, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityArg>,
}

/// `azure_info.identity`.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityArg {
    /// Client id of a user-assigned managed identity.
    pub client_id: String,
}

/// One entry of `azure_filesystems`.
#[derive(Debug, Clone, Serialize)]
pub struct AzureFilesystem {
    /// The image URL.
    pub azure_url: String,
    /// Authenticate to the blob with the identity (`true`) or anonymously (`false`).
    pub azure_url_private: bool,
    /// Where the model appears.
    pub mount_point: String,
    /// The key to release.
    pub key: KeyBlob,
    /// HKDF parameters for an `RSA-HSM` key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_derivation: Option<KeyDerivationArg>,
    /// cinfer extension: the image root digest (64 hex) the sidecar must find, pinning the content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_root: Option<String>,
}

/// `key` (the seed's `common.KeyBlob`).
#[derive(Debug, Clone, Serialize)]
pub struct KeyBlob {
    /// Key name in the vault.
    pub kid: String,
    /// Key type (informational).
    pub kty: String,
    /// The attestation authority.
    pub authority: Authority,
    /// The vault.
    pub akv: Akv,
}

/// `key.authority`.
#[derive(Debug, Clone, Serialize)]
pub struct Authority {
    /// Authority host.
    pub endpoint: String,
    /// Always `SevSnpVM`.
    pub tee_type: String,
    /// Always `api-version=2020-10-01`.
    pub api_version: String,
}

/// `key.akv`.
#[derive(Debug, Clone, Serialize)]
pub struct Akv {
    /// Vault host.
    pub endpoint: String,
    /// Always `api-version=7.4`.
    pub api_version: String,
}

/// `key_derivation`.
#[derive(Debug, Clone, Serialize)]
pub struct KeyDerivationArg {
    /// Salt, hex.
    pub salt: String,
    /// Label.
    pub label: String,
}

impl EncfsSideCarArgs {
    /// The sidecar arguments for the config's model.
    pub fn from_config(config: &DeployConfig) -> Self {
        let model = &config.model;
        Self {
            azure_info: AzureInfo {
                identity: config.identity.as_ref().map(|i| IdentityArg {
                    client_id: i.client_id.clone(),
                }),
            },
            azure_filesystems: vec![AzureFilesystem {
                azure_url: model.image_url.clone(),
                azure_url_private: model.url_private,
                mount_point: model.mount_point.clone(),
                key: KeyBlob {
                    kid: model.key_id.clone(),
                    kty: model.key_type.clone(),
                    authority: Authority {
                        endpoint: config.attestation.authority.clone(),
                        tee_type: "SevSnpVM".to_owned(),
                        api_version: "api-version=2020-10-01".to_owned(),
                    },
                    akv: Akv {
                        endpoint: config.key_vault.endpoint.clone(),
                        api_version: "api-version=7.4".to_owned(),
                    },
                },
                key_derivation: model.key_derivation.as_ref().map(|kd| KeyDerivationArg {
                    salt: kd.salt.clone(),
                    label: kd.label.clone(),
                }),
                expect_root: model.expect_root.clone(),
            }],
        }
    }

    /// Compact JSON.
    pub fn to_json(&self) -> String {
        // INVARIANT: these structs hold only strings, bools and vectors; serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Standard base64 (with padding) of the compact JSON: the value of the `EncfsSideCarArgs` variable.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.to_json())
    }
}
