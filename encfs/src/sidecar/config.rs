//! The sidecar's configuration: the seed's `EncfsSideCarArgs` (base64 JSON), accepted unchanged, plus optional
//! `cinfer_*` fields for what the seed has no place for.
//!
//! Unknown fields are a warning (the seed's format is open-ended: newer seed versions may add fields), never
//! silently dropped. `read_write: true` is refused: images are read-only.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

/// A configuration error (the message names the filesystem and field).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not standard base64 (the seed uses `base64.StdEncoding`).
    #[error("EncfsSideCarArgs is not standard base64: {0}")]
    Base64(base64::DecodeError),
    /// Not JSON of the expected shape.
    #[error("EncfsSideCarArgs is not valid JSON of the seed's shape: {0}")]
    Json(serde_json::Error),
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
}

/// A secret string from the config (a bearer token): zeroized on drop, redacted in `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// The secret.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "<redacted>" })
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Self(Zeroizing::new(s)))
    }
}

/// The seed's `RemoteFilesystemsInformation` (top level of `EncfsSideCarArgs`).
#[derive(Debug, Default, Deserialize)]
pub struct SeedArgs {
    /// `azure_info` (certcache, identity); kept as JSON, only `identity.client_id` is used.
    #[serde(default)]
    pub azure_info: Option<Value>,
    /// The filesystems to mount.
    #[serde(default)]
    pub azure_filesystems: Vec<SeedFilesystem>,
    /// Unknown fields (warned about).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One entry of `azure_filesystems`.
#[derive(Debug, Default, Deserialize)]
pub struct SeedFilesystem {
    /// Image location: a local path, `file://` URL, or (with the remote sources) an HTTP(S)/Azure Blob URL.
    #[serde(default)]
    pub azure_url: String,
    /// Seed: fetch the blob with a managed-identity token (IMDS; https only).
    #[serde(default)]
    pub azure_url_private: bool,
    /// Where the filesystem appears (a symlink to the hidden mount next to it).
    #[serde(default)]
    pub mount_point: String,
    /// Must be false: images are read-only.
    #[serde(default)]
    pub read_write: bool,
    /// The key to release.
    #[serde(default)]
    pub key: SeedKeyBlob,
    /// HKDF salt and label for RSA keys.
    #[serde(default)]
    pub key_derivation: SeedKeyDerivation,
    /// Ignored by the seed as well (testing only there); a warning here.
    #[serde(default)]
    pub raw_key: Option<SecretString>,
    /// cinfer: refuse the image unless its root digest is this (64 hex digits).
    #[serde(default)]
    pub cinfer_expect_root: Option<String>,
    /// cinfer: the model signer's public key (PEM file path) for the signature gate.
    #[serde(default)]
    pub cinfer_signer_key: Option<String>,
    /// cinfer: memory budget in MiB of a remote image's part cache (default 256).
    #[serde(default)]
    pub cinfer_cache_mb: Option<u64>,
    /// cinfer: how much the signature gate checks before mounting: `manifest` (default: the signature and the
    /// index's digests) or `full` (also every file's content, read and hashed through the decrypting path).
    #[serde(default)]
    pub cinfer_verify: Option<String>,
    /// Unknown fields (warned about).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The seed's `KeyBlob`.
#[derive(Debug, Default, Deserialize)]
pub struct SeedKeyBlob {
    /// Key name, optionally `name/version`.
    #[serde(default)]
    pub kid: String,
    /// `oct`, `oct-HSM`, `RSA-HSM` (informational: the released payload's `kty` decides).
    #[serde(default)]
    pub kty: String,
    /// Key operations (informational).
    #[serde(default)]
    pub key_ops: Vec<String>,
    /// The attestation service.
    #[serde(default)]
    pub authority: SeedAuthority,
    /// The vault.
    #[serde(default)]
    pub akv: SeedAkv,
    /// Unknown fields (warned about).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The seed's `AttestationAuthority`.
#[derive(Debug, Default, Deserialize)]
pub struct SeedAuthority {
    /// MAA host (or URL; a bare host gets `https://`).
    #[serde(default)]
    pub endpoint: String,
    /// Overwritten by the seed (`SevSnpVM`); ignored.
    #[serde(default)]
    pub tee_type: String,
    /// Overwritten by the seed; ignored.
    #[serde(default)]
    pub api_version: String,
    /// Unknown fields (warned about).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The seed's `AKV`.
#[derive(Debug, Default, Deserialize)]
pub struct SeedAkv {
    /// Vault or mHSM host (or URL).
    #[serde(default)]
    pub endpoint: String,
    /// Overwritten by the seed (7.4); ignored.
    #[serde(default)]
    pub api_version: String,
    /// An AAD token; when absent, IMDS managed identity (or none for a local `http://` broker).
    #[serde(default)]
    pub bearer_token: Option<SecretString>,
    /// Unknown fields (warned about).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The seed's `KeyDerivation`.
#[derive(Debug, Default, Deserialize)]
pub struct SeedKeyDerivation {
    /// Hex salt.
    #[serde(default)]
    pub salt: String,
    /// HKDF info label.
    #[serde(default)]
    pub label: String,
    /// Unknown fields (warned about).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
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
    /// Signer public key file.
    pub signer_key: Option<PathBuf>,
    /// Cache size, MiB.
    pub cache_mb: Option<u64>,
    /// What the signature gate checks (when a signer key is set).
    pub verify: crate::gate::VerifyMode,
}

/// The parsed configuration and the warnings it produced.
#[derive(Debug)]
pub struct SidecarConfig {
    /// The filesystems, in order.
    pub filesystems: Vec<FilesystemSpec>,
    /// User-assigned managed identity client id (`azure_info.identity.client_id`).
    pub identity_client_id: Option<String>,
    /// Warnings (unknown fields, ignored seed fields).
    pub warnings: Vec<String>,
}

fn warn_extra(warnings: &mut Vec<String>, at: &str, extra: &BTreeMap<String, Value>) {
    for k in extra.keys() {
        warnings.push(format!("{at}: unknown field {k:?} ignored"));
    }
}

impl SidecarConfig {
    /// Parses `EncfsSideCarArgs`: standard base64 of the JSON, or the JSON itself (starting with `{`).
    pub fn from_env_value(value: &str) -> Result<Self, ConfigError> {
        let t = value.trim();
        if t.starts_with('{') {
            return Self::from_json(t.as_bytes());
        }
        let json = base64::engine::general_purpose::STANDARD
            .decode(t)
            .map_err(ConfigError::Base64)?;
        Self::from_json(&json)
    }

    /// Parses the seed's JSON.
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        let seed: SeedArgs = serde_json::from_slice(json).map_err(ConfigError::Json)?;
        Self::from_seed(seed)
    }

    /// Validates the seed's structure.
    pub fn from_seed(seed: SeedArgs) -> Result<Self, ConfigError> {
        let mut warnings = Vec::new();
        warn_extra(&mut warnings, "EncfsSideCarArgs", &seed.extra);
        let identity_client_id = seed
            .azure_info
            .as_ref()
            .and_then(|v| v.pointer("/identity/client_id"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        if seed.azure_filesystems.is_empty() {
            return Err(ConfigError::Empty);
        }
        let mut filesystems = Vec::new();
        for (index, fs) in seed.azure_filesystems.into_iter().enumerate() {
            let invalid = |detail: String| ConfigError::Invalid { index, detail };
            let at = format!("azure_filesystems[{index}]");
            warn_extra(&mut warnings, &at, &fs.extra);
            warn_extra(&mut warnings, &format!("{at}.key"), &fs.key.extra);
            warn_extra(&mut warnings, &format!("{at}.key.authority"), &fs.key.authority.extra);
            warn_extra(&mut warnings, &format!("{at}.key.akv"), &fs.key.akv.extra);
            warn_extra(&mut warnings, &format!("{at}.key_derivation"), &fs.key_derivation.extra);
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
            if !fs.key_derivation.salt.is_empty() && hex::decode(&fs.key_derivation.salt).is_err() {
                return Err(invalid("key_derivation.salt is not hex".into()));
            }
            let verify = match fs.cinfer_verify.as_deref().map(str::trim) {
                None | Some("manifest") => crate::gate::VerifyMode::Manifest,
                Some("full") => crate::gate::VerifyMode::Full,
                Some(other) => {
                    return Err(invalid(format!(
                        "cinfer_verify must be \"manifest\" or \"full\", not {other:?}"
                    )));
                }
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
                salt: fs.key_derivation.salt,
                label: fs.key_derivation.label,
                expect_root,
                signer_key: fs.cinfer_signer_key.map(PathBuf::from),
                cache_mb: fs.cinfer_cache_mb,
                verify,
            });
        }
        Ok(Self {
            filesystems,
            identity_client_id,
            warnings,
        })
    }
}
