//! The sidecar's configuration: `EncfsSideCarArgs` (the contract type of the `sidecar-args` crate, the seed's
//! fields plus `cinfer_*`) validated into [`FilesystemSpec`]s.
//!
//! Unknown fields are errors (the contract type refuses them), so a misspelt or newer security setting is never
//! dropped; seed fields the sidecar does not use are warnings. `read_write: true` is refused: images are
//! read-only.

use std::fmt;
use std::path::PathBuf;

use attest::credential::{Credential, WorkloadIdentity};
use sidecar_args::ArgsError;

/// A configuration error (the message names the filesystem and field).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not base64 or not JSON of the contract's shape (an unknown field is named).
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// A field has an invalid value.
    #[error("azure_filesystems[{index}]: {detail}")]
    Invalid {
        /// Which filesystem.
        index: usize,
        /// What is wrong.
        detail: String,
    },
    /// No filesystems.
    #[error("EncfsSideCarArgs has no azure_filesystems")]
    Empty,
    /// cinfer's own config file is not valid TOML of its shape (unknown fields included).
    #[error("sidecar config file: {0}")]
    Toml(String),
    /// `azure_info.cinfer_workload_identity` is set, but the workload identity is incomplete or not the one named.
    #[error("azure_info.cinfer_workload_identity: {0}")]
    WorkloadIdentity(String),
}

pub use sidecar_args::{EncfsSideCarArgs, SecretString, VerifyMode as ArgsVerifyMode};

/// Where the signature gate's public key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerKey {
    /// The PEM itself, carried in the arguments (so a rendered deployment measures it).
    Pem(String),
    /// A PEM file in the container.
    File(PathBuf),
}

impl SignerKey {
    /// `cinfer_signer_key`'s value: a PEM (`-----BEGIN ...`) or a path.
    pub fn parse(value: &str) -> Self {
        let t = value.trim();
        if t.starts_with("-----BEGIN") {
            Self::Pem(t.to_owned())
        } else {
            Self::File(PathBuf::from(t))
        }
    }

    /// The PEM text (read from the file for [`SignerKey::File`]).
    pub fn pem(&self) -> std::io::Result<String> {
        match self {
            Self::Pem(pem) => Ok(pem.clone()),
            Self::File(path) => std::fs::read_to_string(path),
        }
    }
}

impl fmt::Display for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pem(_) => f.write_str("the signer key in the arguments"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// One filesystem, validated.
#[derive(Debug)]
pub struct FilesystemSpec {
    /// Position in `azure_filesystems` (names the hidden mount `.filesystem-<index>`).
    pub index: usize,
    /// Image location as configured.
    pub url: String,
    /// Seed's `azure_url_private`.
    pub url_private: bool,
    /// The visible mount point (a symlink once mounted).
    pub mount_point: PathBuf,
    /// Key name (and version).
    pub kid: String,
    /// Configured key type (informational).
    pub kty: String,
    /// Attestation service endpoint.
    pub authority: String,
    /// Vault endpoint.
    pub vault: String,
    /// Vault bearer token from the config.
    pub bearer_token: Option<SecretString>,
    /// HKDF salt (hex) and label.
    pub salt: String,
    /// HKDF label.
    pub label: String,
    /// Root pin.
    pub expect_root: Option<[u8; 32]>,
    /// The signer's public key.
    pub signer_key: Option<SignerKey>,
    /// Cache size, MiB.
    pub cache_mb: Option<u64>,
    /// What the signature gate checks (when a signer key is set).
    pub verify: crate::gate::VerifyMode,
    /// Plain `http://` to a non-loopback authority or vault was accepted on request.
    pub allow_plain_http: bool,
}

/// The parsed configuration and the warnings it produced.
#[derive(Debug)]
pub struct SidecarConfig {
    /// The filesystems, in order.
    pub filesystems: Vec<FilesystemSpec>,
    /// User-assigned managed identity client id (`azure_info.identity.client_id`).
    pub identity_client_id: Option<String>,
    /// Entra ID tokens through Workload Identity instead of IMDS (`azure_info.cinfer_workload_identity`).
    pub workload_identity: bool,
    /// Warnings (unknown fields, ignored seed fields).
    pub warnings: Vec<String>,
}

impl SidecarConfig {
    /// Where Entra ID tokens come from (the vault's unless `akv.bearer_token` is given, and `azure_url_private`
    /// blobs'): with `azure_info.cinfer_workload_identity`, Workload Identity from the webhook's variables (`env`
    /// looks one up; every one is required, and `AZURE_CLIENT_ID` must equal `azure_info.identity.client_id` when
    /// that is given); otherwise the IMDS managed identity. Never the one in place of the other.
    pub fn credential(&self, env: impl Fn(&str) -> Option<String>) -> Result<Credential, ConfigError> {
        if !self.workload_identity {
            return Ok(Credential::ManagedIdentity {
                client_id: self.identity_client_id.clone(),
            });
        }
        let wi = WorkloadIdentity::from_vars(env).map_err(|e| ConfigError::WorkloadIdentity(e.to_string()))?;
        if let Some(id) = &self.identity_client_id
            && *id != wi.client_id
        {
            return Err(ConfigError::WorkloadIdentity(format!(
                "AZURE_CLIENT_ID {} is not azure_info.identity.client_id {id}",
                wi.client_id
            )));
        }
        Ok(Credential::WorkloadIdentity(wi))
    }

    /// Parses `EncfsSideCarArgs`: standard base64 of the JSON, or the JSON itself (starting with `{`).
    pub fn from_env_value(value: &str) -> Result<Self, ConfigError> {
        Self::from_args(EncfsSideCarArgs::from_env_value(value)?)
    }

    /// Parses the JSON.
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        Self::from_args(EncfsSideCarArgs::from_json(json)?)
    }

    /// Validates the arguments (unknown fields were already refused by the contract type).
    pub fn from_args(args: EncfsSideCarArgs) -> Result<Self, ConfigError> {
        let mut warnings = Vec::new();
        let workload_identity = args.azure_info.cinfer_workload_identity;
        let identity_client_id = args
            .azure_info
            .identity
            .map(|i| i.client_id.trim().to_owned())
            .filter(|s| !s.is_empty());
        if args.azure_info.certcache.is_some() {
            warnings.push("azure_info.certcache is not used: the evidence carries its certificate chain".to_owned());
        }
        if args.azure_filesystems.is_empty() {
            return Err(ConfigError::Empty);
        }
        let mut filesystems = Vec::new();
        for (index, fs) in args.azure_filesystems.into_iter().enumerate() {
            let invalid = |detail: String| ConfigError::Invalid { index, detail };
            let at = format!("azure_filesystems[{index}]");
            if fs.raw_key.is_some() {
                warnings.push(format!(
                    "{at}: raw_key is ignored (keys come only from attested release)"
                ));
            }
            if fs.read_write {
                return Err(invalid(
                    "read_write: true is not supported: cinfer images are read-only (set it to false or omit it)"
                        .into(),
                ));
            }
            if fs.mount_point.trim().is_empty() {
                return Err(invalid("mount_point is empty".into()));
            }
            if fs.azure_url.trim().is_empty() {
                return Err(invalid("azure_url is empty".into()));
            }
            if fs.key.kid.trim().is_empty() {
                return Err(invalid("key.kid is empty".into()));
            }
            if fs.key.authority.endpoint.trim().is_empty() {
                return Err(invalid("key.authority.endpoint is empty".into()));
            }
            if fs.key.akv.endpoint.trim().is_empty() {
                return Err(invalid("key.akv.endpoint is empty".into()));
            }
            match fs.key.kty.as_str() {
                "" | "oct" | "oct-HSM" | "RSA" | "RSA-HSM" => {}
                other => return Err(invalid(format!("key.kty {other:?} is not oct, oct-HSM or RSA-HSM"))),
            }
            let kd = fs.key_derivation.unwrap_or_default();
            if !kd.salt.is_empty() && hex::decode(&kd.salt).is_err() {
                return Err(invalid("key_derivation.salt is not hex".into()));
            }
            // Keys and tokens only over a transport that cannot be substituted: https, or http on loopback.
            for (what, endpoint) in [
                ("key.authority.endpoint", &fs.key.authority.endpoint),
                ("key.akv.endpoint", &fs.key.akv.endpoint),
            ] {
                attest::transport::check_endpoint(what, endpoint, fs.cinfer_dangerously_allow_plain_http)
                    .map_err(|e| invalid(e.to_string()))?;
            }
            let verify = match fs.cinfer_verify.unwrap_or_default() {
                ArgsVerifyMode::Manifest => crate::gate::VerifyMode::Manifest,
                ArgsVerifyMode::Full => crate::gate::VerifyMode::Full,
            };
            let expect_root = match &fs.cinfer_expect_root {
                None => None,
                Some(h) => {
                    let mut root = [0u8; 32];
                    hex::decode_to_slice(h.trim(), &mut root)
                        .map_err(|_| invalid("cinfer_expect_root must be 64 hex digits".into()))?;
                    Some(root)
                }
            };
            let mount_point = PathBuf::from(fs.mount_point.trim());
            if !mount_point.is_absolute() {
                return Err(invalid(format!(
                    "mount_point {} is relative: give an absolute path (the sidecar's working directory is not the \
                     consumers')",
                    mount_point.display()
                )));
            }
            if filesystems
                .iter()
                .any(|f: &FilesystemSpec| f.mount_point == mount_point)
            {
                return Err(invalid(format!("mount_point {} is used twice", mount_point.display())));
            }
            filesystems.push(FilesystemSpec {
                index,
                url: fs.azure_url.trim().to_string(),
                url_private: fs.azure_url_private,
                mount_point,
                kid: fs.key.kid.trim().to_string(),
                kty: fs.key.kty,
                authority: fs.key.authority.endpoint.trim().to_string(),
                vault: fs.key.akv.endpoint.trim().to_string(),
                bearer_token: fs.key.akv.bearer_token.filter(|t| !t.expose().is_empty()),
                salt: kd.salt,
                label: kd.label,
                expect_root,
                signer_key: fs
                    .cinfer_signer_key
                    .as_deref()
                    .filter(|s| !s.trim().is_empty())
                    .map(SignerKey::parse),
                cache_mb: fs.cinfer_cache_mb,
                verify,
                allow_plain_http: fs.cinfer_dangerously_allow_plain_http,
            });
        }
        Ok(Self {
            filesystems,
            identity_client_id,
            workload_identity,
            warnings,
        })
    }
}
