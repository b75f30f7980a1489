//! The key broker's store: named keys with versions, each with key material and an AKV release policy.
//!
//! With a directory, every key is a JSON file `<dir>/<name>.json` (mode 0600) written atomically (temp file,
//! fsync, rename, fsync dir) before an import is acknowledged, and everything is loaded at start. Key
//! material is held in [`SecretBytes`] (zeroized on drop) and never logged.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::error::{ReleaseError, ServiceError};
use crate::keywrap::ReleasedKey;
use crate::policy::ReleasePolicy;
use crate::secret::SecretBytes;
use crate::store::write_private_file;

/// One version of a key.
#[derive(Clone, Debug)]
pub struct KeyVersion {
    /// Version id (32 hex digits).
    pub version: String,
    /// `oct-HSM`, `oct`, `RSA-HSM`, `RSA`.
    pub kty: String,
    /// Key operations.
    pub key_ops: Vec<String>,
    /// Key bytes (oct) or PKCS#8 DER (RSA).
    pub material: SecretBytes,
    /// The release policy, as imported (JSON bytes).
    pub release_policy_json: Vec<u8>,
    /// The parsed release policy.
    pub release_policy: ReleasePolicy,
    /// Whether the key may be released.
    pub exportable: bool,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// Public JWK fields for RSA keys (`n`, `e`).
    pub public: Option<(String, String)>,
}

impl KeyVersion {
    /// The released form.
    pub fn released(&self) -> Result<ReleasedKey, ReleaseError> {
        Ok(ReleasedKey::from_kty(&self.kty, self.material.clone())?)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredVersion {
    version: String,
    kty: String,
    key_ops: Vec<String>,
    material_b64: Zeroizing<String>,
    release_policy: String,
    exportable: bool,
    created: i64,
    #[serde(default)]
    public: Option<(String, String)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredKey {
    name: String,
    versions: Vec<StoredVersion>,
}

/// Valid key names: 1–127 of `[A-Za-z0-9-]` (AKV's rule; also keeps names safe as file names).
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 127 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Named, versioned keys, optionally persisted.
#[derive(Debug, Default)]
pub struct KeyStore {
    dir: Option<PathBuf>,
    keys: RwLock<HashMap<String, Vec<KeyVersion>>>,
}

impl KeyStore {
    /// In-memory only.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Persisted in `dir` (created with mode 0700); loads existing keys.
    pub fn open(dir: PathBuf) -> Result<Self, ServiceError> {
        use std::os::unix::fs::DirBuilderExt;
        let io = |context: String| move |source| ServiceError::Io { context, source };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(format!("creating {}", dir.display())))?;
        let mut keys = HashMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io(format!("reading {}", dir.display())))? {
            let entry = entry.map_err(io(format!("reading {}", dir.display())))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let bytes = Zeroizing::new(std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?);
            let stored: StoredKey = serde_json::from_slice(&bytes)
                .map_err(|e| ServiceError::Config(format!("key file {}: {e}", path.display())))?;
            let mut versions = Vec::new();
            for v in stored.versions {
                let material = SecretBytes::new(
                    B64URL
                        .decode(v.material_b64.as_bytes())
                        .map_err(|e| ServiceError::Config(format!("key file {}: {e}", path.display())))?,
                );
                let release_policy = ReleasePolicy::from_json(v.release_policy.as_bytes())
                    .map_err(|e| ServiceError::Config(format!("key file {}: {e}", path.display())))?;
                versions.push(KeyVersion {
                    version: v.version,
                    kty: v.kty,
                    key_ops: v.key_ops,
                    material,
                    release_policy_json: v.release_policy.into_bytes(),
                    release_policy,
                    exportable: v.exportable,
                    created: v.created,
                    public: v.public,
                });
            }
            keys.insert(stored.name, versions);
        }
        Ok(Self {
            dir: Some(dir),
            keys: RwLock::new(keys),
        })
    }

    fn persist(&self, name: &str, versions: &[KeyVersion]) -> Result<(), ServiceError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let stored = StoredKey {
            name: name.to_string(),
            versions: versions
                .iter()
                .map(|v| StoredVersion {
                    version: v.version.clone(),
                    kty: v.kty.clone(),
                    key_ops: v.key_ops.clone(),
                    material_b64: Zeroizing::new(B64URL.encode(v.material.expose())),
                    release_policy: String::from_utf8_lossy(&v.release_policy_json).into_owned(),
                    exportable: v.exportable,
                    created: v.created,
                    public: v.public.clone(),
                })
                .collect(),
        };
        let bytes = Zeroizing::new(serde_json::to_vec(&stored).map_err(|e| ServiceError::Config(e.to_string()))?);
        let path = dir.join(format!("{name}.json"));
        write_private_file(&path, &bytes).map_err(|source| ServiceError::Io {
            context: format!("writing {}", path.display()),
            source,
        })
    }

    /// Add a new version of `name` (durably, before returning).
    pub fn insert(&self, name: &str, version: KeyVersion) -> Result<(), ServiceError> {
        if !valid_key_name(name) {
            return Err(ServiceError::Config(format!("invalid key name {name:?}")));
        }
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let mut versions = keys.get(name).cloned().unwrap_or_default();
        versions.push(version);
        self.persist(name, &versions)?;
        keys.insert(name.to_string(), versions);
        Ok(())
    }

    /// A version of `name` (the latest when `version` is `None`).
    pub fn get(&self, name: &str, version: Option<&str>) -> Option<KeyVersion> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let versions = keys.get(name)?;
        match version {
            Some(v) => versions.iter().find(|k| k.version == v).cloned(),
            None => versions.last().cloned(),
        }
    }
}

/// The public part of a key version as AKV returns it (`key`, `attributes`, `release_policy`).
pub fn key_bundle(base_url: &str, name: &str, v: &KeyVersion) -> Value {
    let mut key = serde_json::json!({
        "kid": format!("{}/keys/{name}/{}", base_url.trim_end_matches('/'), v.version),
        "kty": v.kty,
        "key_ops": v.key_ops,
    });
    if let Some((n, e)) = &v.public {
        key["n"] = Value::String(n.clone());
        key["e"] = Value::String(e.clone());
    }
    serde_json::json!({
        "key": key,
        "attributes": {"enabled": true, "exportable": v.exportable, "created": v.created, "updated": v.created,
                        "recoveryLevel": "Purgeable"},
        "release_policy": {"contentType": "application/json; charset=utf-8",
                           "data": B64URL.encode(&v.release_policy_json)},
    })
}
