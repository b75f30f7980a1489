//! `EncfsSideCarArgs` for a config: the sidecar's arguments (the contract type of the `sidecar-args` crate, which
//! the sidecar itself parses), as standard base64 of compact JSON in the environment variable of that name.
//!
//! Unlike the seed, the rendered deployments give this variable its literal value, so `acipolicygen` measures
//! it: the host cannot swap the blob URL, the vault, the authority, the root pin or the signer key.

pub use sidecar_args::EncfsSideCarArgs;
use sidecar_args::{Akv, Authority, AzureFilesystem, AzureInfo, Identity, KeyBlob, KeyDerivation};

use crate::config::DeployConfig;

/// The sidecar's command: the configured one, plus `--allow-unpinned` when the config allows an unpinned image.
pub fn encfs_command(config: &DeployConfig) -> Vec<String> {
    with_pin_setting(config, &config.commands.encfs)
}

/// The extracting init container's command (Kubernetes), with the same additions.
pub fn encfs_extract_command(config: &DeployConfig) -> Vec<String> {
    with_pin_setting(config, &config.commands.encfs_extract)
}

fn with_pin_setting(config: &DeployConfig, command: &[String]) -> Vec<String> {
    let mut command = config.expand(command);
    if config.model.allow_unpinned {
        command.push("--allow-unpinned".to_owned());
    }
    command
}

/// The sidecar arguments for the config's model: one filesystem, every setting from the config.
pub fn args_for(config: &DeployConfig) -> EncfsSideCarArgs {
    let model = &config.model;
    EncfsSideCarArgs {
        azure_info: AzureInfo {
            certcache: None,
            identity: config.identity.as_ref().map(|i| Identity {
                client_id: i.client_id.clone(),
            }),
            cinfer_workload_identity: false,
        },
        azure_filesystems: vec![AzureFilesystem {
            azure_url: model.image_url.clone(),
            azure_url_private: model.url_private,
            mount_point: model.mount_point.clone(),
            read_write: false,
            key: KeyBlob {
                kid: model.key_id.clone(),
                kty: model.key_type.clone(),
                key_ops: Vec::new(),
                authority: Authority {
                    endpoint: config.attestation.authority.clone(),
                    tee_type: "SevSnpVM".to_owned(),
                    api_version: "api-version=2020-10-01".to_owned(),
                },
                akv: Akv {
                    endpoint: config.key_vault.endpoint.clone(),
                    api_version: "api-version=7.4".to_owned(),
                    bearer_token: None,
                },
            },
            key_derivation: model.key_derivation.as_ref().map(|kd| KeyDerivation {
                salt: kd.salt.clone(),
                label: kd.label.clone(),
            }),
            raw_key: None,
            cinfer_expect_root: model.expect_root.clone(),
            cinfer_signer_key: model.signer_key.clone(),
            cinfer_cache_mb: model.cache_mb,
            cinfer_verify: model.verify,
            cinfer_dangerously_allow_plain_http: false,
        }],
    }
}
