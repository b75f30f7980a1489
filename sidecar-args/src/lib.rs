//! `EncfsSideCarArgs`: the encfs sidecar's arguments, in the seed's schema plus cinfer's `cinfer_*` fields.
//!
//! This crate is the one definition of that contract. `cinfer-deploy render` serialises it into the rendered
//! ACI and Kubernetes deployments (where the variable is measured into the policy), `cinfer-encfs sidecar`
//! parses it, and `cinfer-deploy local` and the tests go through the same types, so a field cannot be written
//! under one name and read under another.
//!
//! Unknown fields are an error ([`ArgsError::Json`] names the field): a misspelt or newer security setting must
//! never be dropped silently. The seed's own fields are all known, including those the sidecar does not use
//! (`certcache`, `key_ops`, `tee_type`, `api_version`, `raw_key`), so the seed's arguments parse unchanged.
//!
//! Field order follows the seed's Go structs, so the serialised bytes (and hence a measured policy) are stable.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The name of the environment variable that carries the arguments (standard base64 of the compact JSON).
pub const ENV_VAR: &str = "EncfsSideCarArgs";

/// The arguments could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArgsError {
    /// Not standard base64 (the seed decodes with `base64.StdEncoding`).
    #[error("EncfsSideCarArgs is not standard base64: {0}")]
    Base64(base64::DecodeError),
    /// Not JSON of the contract's shape; the error names the field (an unknown one included).
    #[error("EncfsSideCarArgs is not valid JSON of the sidecar's schema: at {path}: {source}")]
    Json {
        /// Where, e.g. `azure_filesystems[0].cinfer_verify` (`.` for the top level).
        path: String,
        /// What serde found there.
        #[source]
        source: serde_json::Error,
    },
}

/// Top level (the seed's `RemoteFilesystemsInformation`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncfsSideCarArgs {
    /// Platform settings shared by all filesystems.
    #[serde(default)]
    pub azure_info: AzureInfo,
    /// The filesystems to mount.
    #[serde(default)]
    pub azure_filesystems: Vec<AzureFilesystem>,
}

/// `azure_info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureInfo {
    /// The seed's certificate cache (THIM/AMD endpoint). Accepted; cinfer's evidence carries its own chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certcache: Option<CertCache>,
    /// The user-assigned managed identity for IMDS tokens. With [`Self::cinfer_workload_identity`], the client id
    /// the webhook injects (`AZURE_CLIENT_ID`) must equal this one when it is given (so the measured arguments pin
    /// the identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// cinfer: get Entra ID tokens (the vault's, unless `key.akv.bearer_token` is given, and those of
    /// `azure_url_private` blobs) through Azure Workload Identity instead of IMDS: the federated service-account
    /// token in `AZURE_FEDERATED_TOKEN_FILE` is exchanged at `AZURE_AUTHORITY_HOST` for tenant `AZURE_TENANT_ID`
    /// and client `AZURE_CLIENT_ID` (the four variables the AKS webhook injects into a pod labelled
    /// `azure.workload.identity/use: "true"`). When true the sidecar refuses to start without them, naming the
    /// missing one; it never falls back to IMDS. Omitted when false, so arguments without it serialise as before.
    #[serde(default, skip_serializing_if = "is_false")]
    pub cinfer_workload_identity: bool,
}

/// `azure_info.certcache` (seed only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertCache {
    /// `AMD`, `AzCache` or `LocalTHIM`.
    #[serde(default)]
    pub endpoint_type: String,
    /// The cache's host.
    #[serde(default)]
    pub endpoint: String,
    /// TEE type.
    #[serde(default)]
    pub tee_type: String,
    /// API version.
    #[serde(default)]
    pub api_version: String,
    /// `clientId=…`.
    #[serde(default)]
    pub client_id: String,
}

/// `azure_info.identity`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Client id of a user-assigned managed identity.
    #[serde(default)]
    pub client_id: String,
}

/// One entry of `azure_filesystems`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureFilesystem {
    /// The image: an HTTP(S) or Azure Blob URL (a SAS may follow `?`), a `file://` URL or a local path.
    #[serde(default)]
    pub azure_url: String,
    /// `true`: fetch the blob with a managed-identity token; `false`: anonymously (public or SAS URL).
    #[serde(default)]
    pub azure_url_private: bool,
    /// Where the model appears (a symlink to the hidden mount next to it).
    #[serde(default)]
    pub mount_point: String,
    /// Must be false: cinfer images are read-only (the sidecar refuses `true`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_write: bool,
    /// The key to release.
    #[serde(default)]
    pub key: KeyBlob,
    /// HKDF salt and label turning an `RSA-HSM` key into the model key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_derivation: Option<KeyDerivation>,
    /// Seed: a raw key for testing. Never used (keys come only from attested release); a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_key: Option<SecretString>,
    /// cinfer: refuse the image unless its root digest is this (64 hex digits). `expect_root`, the name that
    /// renders before this contract existed wrote, is read as the same field.
    #[serde(default, alias = "expect_root", skip_serializing_if = "Option::is_none")]
    pub cinfer_expect_root: Option<String>,
    /// cinfer: the model signer's public key for the signature gate: the PEM itself (so a rendered deployment
    /// measures it) or the path of a PEM file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cinfer_signer_key: Option<String>,
    /// cinfer: memory budget in MiB of a remote image's part cache (the sidecar's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cinfer_cache_mb: Option<u64>,
    /// cinfer: what the signature gate checks before mounting (default [`VerifyMode::Manifest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cinfer_verify: Option<VerifyMode>,
    /// cinfer: accept a plain `http://` authority or vault that is not on a loopback address. Keys and tokens
    /// over it can be substituted by the network: testing only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub cinfer_dangerously_allow_plain_http: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What the signature gate checks before the image is mounted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// The signature and the index's per-file digests.
    #[default]
    Manifest,
    /// Also every file's content, read and hashed through the decrypting path.
    Full,
}

impl VerifyMode {
    /// The name used in the arguments and in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manifest => "manifest",
            Self::Full => "full",
        }
    }
}

impl std::str::FromStr for VerifyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "manifest" => Ok(Self::Manifest),
            "full" => Ok(Self::Full),
            other => Err(format!("verify mode must be \"manifest\" or \"full\", not {other:?}")),
        }
    }
}

/// `key` (the seed's `common.KeyBlob`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBlob {
    /// Key name in the vault, optionally `name/version`.
    #[serde(default)]
    pub kid: String,
    /// `oct`, `oct-HSM`, `RSA-HSM` (informational: the released key's type decides).
    #[serde(default)]
    pub kty: String,
    /// Key operations (informational).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_ops: Vec<String>,
    /// The attestation authority.
    #[serde(default)]
    pub authority: Authority,
    /// The vault or managed HSM.
    #[serde(default)]
    pub akv: Akv,
}

/// `key.authority`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authority {
    /// The attestation service: a host (`https://` is implied) or a URL.
    #[serde(default)]
    pub endpoint: String,
    /// `SevSnpVM` (the seed overwrites it; informational).
    #[serde(default)]
    pub tee_type: String,
    /// `api-version=2020-10-01` (the seed overwrites it; informational).
    #[serde(default)]
    pub api_version: String,
}

/// `key.akv`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Akv {
    /// The vault or managed HSM: a host (`https://` is implied) or a URL.
    #[serde(default)]
    pub endpoint: String,
    /// `api-version=7.4` (the seed overwrites it; informational).
    #[serde(default)]
    pub api_version: String,
    /// An AAD token for the vault; when absent, the managed identity (or none for a loopback broker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<SecretString>,
}

/// `key_derivation` (seed §2.7: HKDF-SHA256 over the RSA key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyDerivation {
    /// Salt, hex.
    #[serde(default)]
    pub salt: String,
    /// Info label, e.g. `Model Encryption Key`.
    #[serde(default)]
    pub label: String,
}

/// A secret string (a bearer token, a raw key): zeroized on drop, redacted in `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Wraps a secret.
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

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

impl Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

impl EncfsSideCarArgs {
    /// Compact JSON.
    pub fn to_json(&self) -> String {
        // INVARIANT: these types hold only strings, integers, bools, enums and vectors; serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Standard base64 (with padding) of the compact JSON: the value of the [`ENV_VAR`] variable.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.to_json())
    }

    /// Parses JSON; an unknown field anywhere is an error naming it.
    pub fn from_json(json: &[u8]) -> Result<Self, ArgsError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        serde_path_to_error::deserialize(de).map_err(|e| ArgsError::Json {
            path: e.path().to_string(),
            source: e.into_inner(),
        })
    }

    /// Parses the variable's value: standard base64 of the JSON, or the JSON itself (starting with `{`).
    pub fn from_env_value(value: &str) -> Result<Self, ArgsError> {
        let t = value.trim();
        if t.starts_with('{') {
            return Self::from_json(t.as_bytes());
        }
        let json = STANDARD.decode(t).map_err(ArgsError::Base64)?;
        Self::from_json(&json)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The seed's own example, with every seed field, parses unchanged.
    #[test]
    fn seed_fields_are_accepted() {
        let json = r#"{"azure_info":{"certcache":{"endpoint_type":"LocalTHIM","endpoint":"169.254.169.254/metadata/THIM/amd/certification","tee_type":"SevSnpVM","api_version":"api-version=2021-07-01","client_id":"clientId=x"},"identity":{"client_id":"abc"}},
            "azure_filesystems":[{"azure_url":"https://a.blob.core.windows.net/c/b","azure_url_private":true,"mount_point":"/mnt/remote/models","read_write":false,
            "key":{"kid":"k","kty":"RSA-HSM","key_ops":["wrapKey"],"authority":{"endpoint":"maa","tee_type":"SevSnpVM","api_version":"x"},"akv":{"endpoint":"kv","api_version":"7.4","bearer_token":"s3cr3t-T0ken"}},
            "key_derivation":{"salt":"00ff","label":"Model Encryption Key"},"raw_key":"00"}]}"#;
        let a = EncfsSideCarArgs::from_json(json.as_bytes()).unwrap();
        assert_eq!(a.azure_info.identity.unwrap().client_id, "abc");
        let fs = &a.azure_filesystems[0];
        assert_eq!(fs.key.akv.bearer_token.as_ref().unwrap().expose(), "s3cr3t-T0ken");
        assert_eq!(fs.key_derivation.as_ref().unwrap().label, "Model Encryption Key");
        assert!(!format!("{fs:?}").contains("s3cr3t"), "a token in Debug output");
    }

    /// An unknown field is an error that names it, at any level.
    #[test]
    fn unknown_fields_are_errors_naming_the_field() {
        for json in [
            r#"{"azure_filesystems":[{"cinfer_expect_rot":"00"}]}"#,
            r#"{"azure_filesystems":[{"key":{"akv":{"endpoint":"x","policy":"y"}}}]}"#,
            r#"{"azure_info":{"identity":{"client_id":"a","object_id":"b"}}}"#,
            r#"{"azure_filesystems":[],"cinfer_strict":false}"#,
        ] {
            let e = EncfsSideCarArgs::from_json(json.as_bytes()).unwrap_err().to_string();
            assert!(e.contains("unknown field"), "{json}: {e}");
            assert!(!e.contains("at .:") || json.contains("cinfer_strict"), "{json}: {e}");
        }
    }

    /// `expect_root` (what earlier renders wrote) is the root pin; both names at once are refused.
    #[test]
    fn legacy_expect_root_name_is_the_pin() {
        let a = EncfsSideCarArgs::from_json(br#"{"azure_filesystems":[{"expect_root":"ab"}]}"#).unwrap();
        assert_eq!(a.azure_filesystems[0].cinfer_expect_root.as_deref(), Some("ab"));
        let both = br#"{"azure_filesystems":[{"expect_root":"ab","cinfer_expect_root":"cd"}]}"#;
        assert!(EncfsSideCarArgs::from_json(both).is_err());
    }

    /// What is written is what is read, through base64, for every field.
    #[test]
    fn base64_round_trip_keeps_every_field() {
        let a = EncfsSideCarArgs {
            azure_info: AzureInfo {
                certcache: None,
                identity: Some(Identity { client_id: "id".into() }),
                cinfer_workload_identity: true,
            },
            azure_filesystems: vec![AzureFilesystem {
                azure_url: "https://h/c/b".into(),
                azure_url_private: true,
                mount_point: "/m".into(),
                read_write: false,
                key: KeyBlob {
                    kid: "k".into(),
                    kty: "oct-HSM".into(),
                    key_ops: vec![],
                    authority: Authority {
                        endpoint: "maa".into(),
                        ..Default::default()
                    },
                    akv: Akv {
                        endpoint: "kv".into(),
                        ..Default::default()
                    },
                },
                key_derivation: Some(KeyDerivation {
                    salt: "00".into(),
                    label: "l".into(),
                }),
                raw_key: None,
                cinfer_expect_root: Some("ab".repeat(32)),
                cinfer_signer_key: Some("-----BEGIN PUBLIC KEY-----\n".into()),
                cinfer_cache_mb: Some(64),
                cinfer_verify: Some(VerifyMode::Full),
                cinfer_dangerously_allow_plain_http: true,
            }],
        };
        let b64 = a.to_base64();
        assert_eq!(EncfsSideCarArgs::from_env_value(&b64).unwrap(), a);
        assert_eq!(EncfsSideCarArgs::from_env_value(&a.to_json()).unwrap(), a);
        assert!(a.to_json().contains(r#""cinfer_verify":"full""#));
        assert!(a.to_json().contains(r#""cinfer_workload_identity":true"#));
        // False is omitted: arguments rendered before the field existed serialise (and measure) as before.
        assert!(!EncfsSideCarArgs::default().to_json().contains("workload"));
        assert!(EncfsSideCarArgs::from_env_value("not base64!").is_err());
        let bad = EncfsSideCarArgs::from_json(br#"{"azure_filesystems":[{},{"cinfer_verify":"some"}]}"#);
        let e = bad.unwrap_err().to_string();
        assert!(
            e.contains("azure_filesystems[1].cinfer_verify") && e.contains("some"),
            "{e}"
        );
    }
}
