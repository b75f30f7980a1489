//! cinfer's own sidecar configuration file (TOML, `cinfer-encfs sidecar --config FILE`): the same settings as the
//! seed's `EncfsSideCarArgs` plus ours (root pin, signer key, cache size, attester), with plain names and
//! **strict** parsing: an unknown or misspelt field is an error, because in a file we own a typo must not
//! silently drop a security setting (e.g. `expect_rot` for `expect_root`). The seed's format stays lenient
//! (warnings) since newer seed versions may add fields.
//!
//! ```toml
//! identity_client_id = "..."            # optional: user-assigned managed identity (private blobs, vault)
//! workload_identity = false             # true: Entra ID tokens through AKS Workload Identity, not IMDS
//!
//! [attester]                            # optional: default is the SEV-SNP guest device
//! kind = "mock"                         # "snp" or "mock" (testing only)
//! mock_root_dir = "/etc/cinfer/mock-root"
//! mock_host_data = "<64 hex>"
//! mock_measurement = "<96 hex>"
//!
//! [[filesystems]]
//! mount_point = "/mnt/models"
//! url = "https://acct.blob.core.windows.net/models/model.img?<SAS>"
//! url_private = false                   # true: managed-identity token instead of a SAS
//! expect_root = "<64 hex>"              # pin the image (recommended)
//! signer_key = "/etc/cinfer/signer.pub" # require a model signature by this key
//! verify = "manifest"                  # or "full": also hash every file's content before mounting
//! cache_mb = 256
//! key = { kid = "model-key", kty = "oct-HSM", authority = "https://...", vault = "https://..." }
//! # RSA-HSM keys also take: salt = "<hex>", label = "..."
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use sidecar_args::{
    Akv, Authority, AzureFilesystem, AzureInfo, EncfsSideCarArgs, Identity, KeyBlob, KeyDerivation, VerifyMode,
};

use super::config::{ConfigError, SecretString, SidecarConfig};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarFile {
    /// User-assigned managed identity client id.
    #[serde(default)]
    pub identity_client_id: Option<String>,
    /// Tokens through Workload Identity (`azure_info.cinfer_workload_identity`).
    #[serde(default)]
    pub workload_identity: bool,
    /// Evidence source (default: the SEV-SNP device).
    #[serde(default)]
    pub attester: Option<AttesterSection>,
    /// The images to mount, each at its own mount point.
    pub filesystems: Vec<FilesystemSection>,
}

/// `[attester]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AttesterSection {
    /// `snp` or `mock`.
    pub kind: AttesterChoice,
    /// Mock root directory (`cinfer-attest mock-init --out DIR`).
    #[serde(default)]
    pub mock_root_dir: Option<PathBuf>,
    /// Mock report host_data (64 hex digits).
    #[serde(default)]
    pub mock_host_data: Option<String>,
    /// Mock launch measurement (96 hex digits).
    #[serde(default)]
    pub mock_measurement: Option<String>,
}

/// Which evidence source.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AttesterChoice {
    /// The SEV-SNP guest device.
    #[default]
    Snp,
    /// The mock attester (testing only).
    Mock,
}

/// `[[filesystems]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesystemSection {
    /// Where the filesystem appears.
    pub mount_point: String,
    /// The image: a path, `file://`, HTTP(S) or Azure Blob URL.
    pub url: String,
    /// Fetch with a managed-identity token.
    #[serde(default)]
    pub url_private: bool,
    /// Root digest pin (64 hex digits).
    #[serde(default)]
    pub expect_root: Option<String>,
    /// Signer public key (PEM file).
    #[serde(default)]
    pub signer_key: Option<String>,
    /// Cache size in MiB for remote sources.
    #[serde(default)]
    pub cache_mb: Option<u64>,
    /// What the signature gate checks: "manifest" (default) or "full" (also every file's content).
    #[serde(default)]
    pub verify: Option<VerifyMode>,
    /// Accept a plain `http://` authority or vault that is not on a loopback address (testing only).
    #[serde(default)]
    pub dangerously_allow_plain_http: bool,
    /// The key to release.
    pub key: KeySection,
}

/// `key = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySection {
    /// Key name, optionally `name/version`.
    pub kid: String,
    /// `oct`, `oct-HSM` (default) or `RSA-HSM`.
    #[serde(default)]
    pub kty: String,
    /// Attestation service (MAA or `cinfer-attest serve`).
    pub authority: String,
    /// Key vault / mHSM or the local broker.
    pub vault: String,
    /// Vault bearer token (else managed identity, or none for a local broker).
    #[serde(default)]
    pub bearer_token: Option<SecretString>,
    /// HKDF salt (hex) for RSA keys.
    #[serde(default)]
    pub salt: String,
    /// HKDF label for RSA keys.
    #[serde(default)]
    pub label: String,
}

impl SidecarFile {
    /// Parses the TOML text; unknown fields are errors naming the field.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))
    }

    /// The validated configuration (the same checks as for the seed's format) and the attester section.
    pub fn into_config(self) -> Result<(SidecarConfig, Option<AttesterSection>), ConfigError> {
        let args = EncfsSideCarArgs {
            azure_info: AzureInfo {
                certcache: None,
                identity: self.identity_client_id.map(|client_id| Identity { client_id }),
                cinfer_workload_identity: self.workload_identity,
            },
            azure_filesystems: self.filesystems.into_iter().map(FilesystemSection::into_args).collect(),
        };
        Ok((SidecarConfig::from_args(args)?, self.attester))
    }
}

impl FilesystemSection {
    fn into_args(self) -> AzureFilesystem {
        let kd = (!self.key.salt.is_empty() || !self.key.label.is_empty()).then_some(KeyDerivation {
            salt: self.key.salt,
            label: self.key.label,
        });
        AzureFilesystem {
            azure_url: self.url,
            azure_url_private: self.url_private,
            mount_point: self.mount_point,
            read_write: false,
            key: KeyBlob {
                kid: self.key.kid,
                kty: self.key.kty,
                key_ops: Vec::new(),
                authority: Authority {
                    endpoint: self.key.authority,
                    ..Default::default()
                },
                akv: Akv {
                    endpoint: self.key.vault,
                    bearer_token: self.key.bearer_token,
                    ..Default::default()
                },
            },
            key_derivation: kd,
            raw_key: None,
            cinfer_expect_root: self.expect_root,
            cinfer_signer_key: self.signer_key,
            cinfer_cache_mb: self.cache_mb,
            cinfer_verify: self.verify,
            cinfer_dangerously_allow_plain_http: self.dangerously_allow_plain_http,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
identity_client_id = "11111111-2222-3333-4444-555555555555"

[attester]
kind = "mock"
mock_root_dir = "/etc/cinfer/mock-root"
mock_host_data = "aa"

[[filesystems]]
mount_point = "/mnt/models"
url = "https://acct.blob.core.windows.net/models/model.img?sv=1&sig=x"
expect_root = "0101010101010101010101010101010101010101010101010101010101010101"
cache_mb = 128
verify = "full"
key = { kid = "model-key", authority = "https://maa.example", vault = "https://vault.example" }

[[filesystems]]
mount_point = "/mnt/other"
url = "/srv/other.img"
key = { kid = "k2/v1", kty = "RSA-HSM", authority = "a.example", vault = "v.example", salt = "00ff", label = "l" }
"#;

    #[test]
    fn parses_into_the_validated_config() {
        let (cfg, attester) = SidecarFile::parse(GOOD)
            .and_then(SidecarFile::into_config)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        assert_eq!(
            cfg.identity_client_id.as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
        assert!(!cfg.workload_identity);
        let wi = format!("workload_identity = true\n{GOOD}");
        let (wi, _) = SidecarFile::parse(&wi)
            .and_then(SidecarFile::into_config)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(wi.workload_identity);
        assert_eq!(cfg.filesystems.len(), 2);
        let a = &cfg.filesystems[0];
        assert_eq!(a.expect_root, Some([1; 32]));
        assert_eq!(a.verify, crate::gate::VerifyMode::Full);
        assert_eq!(cfg.filesystems[1].verify, crate::gate::VerifyMode::Manifest);
        assert_eq!(
            (a.cache_mb, a.kid.as_str(), a.vault.as_str()),
            (Some(128), "model-key", "https://vault.example")
        );
        let b = &cfg.filesystems[1];
        assert_eq!(
            (b.kty.as_str(), b.salt.as_str(), b.label.as_str()),
            ("RSA-HSM", "00ff", "l")
        );
        let attester = attester.unwrap_or_default();
        assert_eq!(attester.kind, AttesterChoice::Mock);
        assert_eq!(attester.mock_root_dir, Some(PathBuf::from("/etc/cinfer/mock-root")));
    }

    #[test]
    fn unknown_fields_are_errors_that_name_the_field() {
        for (typo, field) in [
            (GOOD.replace("expect_root =", "expect_rot ="), "expect_rot"),
            (GOOD.replace("cache_mb", "cachemb"), "cachemb"),
            (
                GOOD.replace("kind = \"mock\"", "kind = \"mock\"\nhost_data = \"aa\""),
                "host_data",
            ),
            (
                GOOD.replace("kid = \"model-key\"", "kid = \"model-key\", kyt = \"oct\""),
                "kyt",
            ),
            (format!("read_write = true\n{GOOD}"), "read_write"),
        ] {
            let e = SidecarFile::parse(&typo)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(field), "{field}: {e}");
        }
        let e = SidecarFile::parse(&GOOD.replace("\"mock\"", "\"sgx\""))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("sgx"), "{e}");
    }

    #[test]
    fn the_seed_checks_apply() {
        let bad = GOOD.replace("0101010101010101010101010101010101010101010101010101010101010101", "zz");
        let e = SidecarFile::parse(&bad)
            .and_then(SidecarFile::into_config)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("expect_root") || e.contains("64 hex"), "{e}");
        let dup = GOOD.replace("/mnt/other", "/mnt/models");
        let e = SidecarFile::parse(&dup)
            .and_then(SidecarFile::into_config)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("used twice"), "{e}");
        assert!(
            SidecarFile::parse("filesystems = []")
                .and_then(SidecarFile::into_config)
                .is_err()
        );
    }
}
