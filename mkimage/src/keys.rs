//! `import-key`: put the model key into AKV/mHSM or the local broker (`cinfer-attest serve`) with a release
//! policy that only an attested container with the expected policy digest (SNP `host_data`) satisfies.
//!
//! Key types, as the seed's `importkey` (protocol doc §2.9):
//!
//! * `oct-HSM` (default) / `oct`: the 32-byte model key itself (the key file `build` used) is imported.
//! * `RSA-HSM`: an RSA-2048 key (new, or `--rsa-key PEM`) is imported; the model key is derived from it with
//!   HKDF-SHA256 (salt, label; §2.7) and written to `--out-key-file` (mode 0600) to build the image with. An
//!   empty salt draws 32 random bytes, printed so they can go into the sidecar's `key_derivation.salt`.

use std::path::Path;

use attest::client::{KeyReleaseClient, ResponseVerification, VaultAuth};
use attest::keywrap::{KeyDerivation, derive_from_rsa, rsa_private_pkcs8};
use attest::policy::ReleasePolicy;
use attest::secret::{ModelKey, SecretBytes};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::traits::{PrivateKeyParts as _, PublicKeyParts as _};
use serde_json::{Value, json};

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    /// Bad input (message says which).
    #[error("{0}")]
    Invalid(String),
    /// The vault call failed.
    #[error(transparent)]
    Client(#[from] attest::error::ClientError),
    /// Key material.
    #[error(transparent)]
    Key(#[from] attest::error::KeyWrapError),
    /// I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The seed's key types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// Symmetric, software-protected name (`oct`); imported as the seed does with `hsm: true`.
    Oct,
    /// Symmetric in an HSM.
    OctHsm,
    /// RSA in an HSM; the model key is derived with HKDF.
    RsaHsm,
}

impl KeyType {
    /// Parses `oct`, `oct-HSM`, `RSA-HSM` (also `RSA`).
    pub fn parse(s: &str) -> Result<Self, KeysError> {
        match s {
            "oct" => Ok(Self::Oct),
            "" | "oct-HSM" => Ok(Self::OctHsm),
            "RSA" | "RSA-HSM" => Ok(Self::RsaHsm),
            other => Err(KeysError::Invalid(format!(
                "key type {other:?} is not oct, oct-HSM or RSA-HSM"
            ))),
        }
    }

    /// The seed's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oct => "oct",
            Self::OctHsm => "oct-HSM",
            Self::RsaHsm => "RSA-HSM",
        }
    }
}

/// `https://` + a bare host, or the URL as given (`http://127.0.0.1:8443` for the local service).
pub fn authority_url(endpoint: &str) -> String {
    let e = endpoint.trim().trim_end_matches('/');
    if e.starts_with("http://") || e.starts_with("https://") {
        e.to_string()
    } else {
        format!("https://{e}")
    }
}

/// The release policy (AKV JSON, seed shape §2.8): `authority` must have issued the token, and its claims
/// must show `host_data` (the container policy digest), a non-debuggable guest at VMPL 0, plus `extra`
/// `(claim, value)` conditions (for example `x-ms-compliance-status = azure-compliant-uvm`).
pub fn release_policy(
    authority: &str,
    host_data: &str,
    extra: &[(String, String)],
) -> Result<ReleasePolicy, KeysError> {
    let h = host_data.trim().to_ascii_lowercase();
    if h.len() != 64 || hex::decode(&h).is_err() {
        return Err(KeysError::Invalid(
            "--host-data must be 64 hex digits (the policy digest)".into(),
        ));
    }
    let mut all_of = vec![
        json!({"claim": "x-ms-sevsnpvm-hostdata", "equals": h}),
        json!({"claim": "x-ms-sevsnpvm-is-debuggable", "equals": "false"}),
        json!({"claim": "x-ms-sevsnpvm-vmpl", "equals": "0"}),
    ];
    for (c, v) in extra {
        all_of.push(json!({"claim": c, "equals": v}));
    }
    let doc = json!({"version": "1.0.0", "anyOf": [{"authority": authority_url(authority), "allOf": all_of}]});
    ReleasePolicy::from_json(doc.to_string().as_bytes()).map_err(|e| KeysError::Invalid(e.to_string()))
}

/// What to import.
pub struct ImportSpec<'a> {
    /// Vault endpoint (AKV/mHSM host or the local broker's URL).
    pub vault: &'a str,
    /// Key name.
    pub name: &'a str,
    /// Key type.
    pub kty: KeyType,
    /// The release policy.
    pub policy: &'a ReleasePolicy,
    /// Bearer token (AAD token for AKV/mHSM, the admin token for the local broker); IMDS when `None`.
    pub token: Option<SecretBytes>,
    /// Key operations recorded on the key.
    pub key_ops: Vec<String>,
}

/// The outcome of an import.
#[derive(Debug)]
pub struct Imported {
    /// The vault's key id (`kid` of the returned bundle).
    pub kid: String,
    /// The model key to build the image with (the oct key itself, or the one derived from the RSA key).
    pub model_key: ModelKey,
    /// For RSA-HSM: the salt (hex) and label used.
    pub derivation: Option<KeyDerivation>,
}

fn client(vault: &str, token: Option<SecretBytes>) -> Result<KeyReleaseClient, KeysError> {
    let auth = match token {
        Some(t) => VaultAuth::Bearer(t),
        None => VaultAuth::imds(None)?,
    };
    // Imports get no signed response; the verification setting only matters for releases.
    Ok(KeyReleaseClient::new(
        vault,
        auth,
        ResponseVerification::system_roots(vault),
    )?)
}

fn kid_of(resp: &Value) -> String {
    resp.pointer("/key/kid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Imports a symmetric key (`oct`/`oct-HSM`): exactly 32 bytes.
pub async fn import_symmetric(spec: &ImportSpec<'_>, key: &[u8]) -> Result<Imported, KeysError> {
    let model_key = ModelKey::from_slice(key)
        .ok_or_else(|| KeysError::Invalid(format!("the model key must be 32 bytes, not {}", key.len())))?;
    let mut jwk = json!({"kty": spec.kty.as_str(), "k": B64URL.encode(key), "key_size": key.len() * 8});
    if !spec.key_ops.is_empty() {
        jwk["key_ops"] = json!(spec.key_ops);
    }
    let resp = client(spec.vault, spec.token.clone())?
        .import(spec.name, jwk, spec.policy)
        .await?;
    Ok(Imported {
        kid: kid_of(&resp),
        model_key,
        derivation: None,
    })
}

/// Imports an RSA key (`RSA-HSM`): `pem` (PKCS#8) or a new RSA-2048 key; derives the model key with HKDF.
pub async fn import_rsa(
    spec: &ImportSpec<'_>,
    pem: Option<&str>,
    derivation: &KeyDerivation,
) -> Result<Imported, KeysError> {
    let key = match pem {
        Some(p) => rsa::PrivateKey::from_pkcs8_pem(p).map_err(|e| KeysError::Invalid(format!("--rsa-key: {e}")))?,
        None => rsa::PrivateKey::new(&mut getrandom::SysRng, 2048)
            .map_err(|e| KeysError::Invalid(format!("generating an RSA key: {e}")))?,
    };
    let mut derivation = derivation.clone();
    if derivation.salt.trim().is_empty() {
        derivation.salt = hex::encode(rand::random::<[u8; 32]>());
    }
    let der = rsa_private_pkcs8(&key)?;
    let model_key = derive_from_rsa(der.expose(), &derivation)?;
    let b = |v: &rsa::BoxedUint| B64URL.encode(v.to_be_bytes_trimmed_vartime());
    let primes = key.primes();
    if primes.len() != 2 {
        return Err(KeysError::Invalid("only two-prime RSA keys are supported".into()));
    }
    let (p, q) = (&primes[0], &primes[1]);
    let mut jwk = json!({
        "kty": "RSA",
        "n": B64URL.encode(key.n().to_be_bytes_trimmed_vartime()),
        "e": B64URL.encode(key.e().to_be_bytes_trimmed_vartime()),
        "d": b(key.d()),
        "p": b(p.as_ref()),
        "q": b(q.as_ref()),
        "key_ops": spec.key_ops,
    });
    if let (Some(dp), Some(dq)) = (key.dp(), key.dq()) {
        jwk["dp"] = json!(b(dp));
        jwk["dq"] = json!(b(dq));
    }
    if let Some(qi) = key.qinv() {
        jwk["qi"] = json!(b(&qi.retrieve()));
    }
    let resp = client(spec.vault, spec.token.clone())?
        .import(spec.name, jwk, spec.policy)
        .await;
    let resp = resp?;
    Ok(Imported {
        kid: kid_of(&resp),
        model_key,
        derivation: Some(derivation),
    })
}

/// Writes a 32-byte key file with mode 0600 (refusing to overwrite).
pub fn write_key_file(path: &Path, key: &ModelKey) -> Result<(), KeysError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| KeysError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(key.expose()).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_has_the_seed_shape() {
        let p = release_policy("sharedeus2.eus2.attest.azure.net", &"AB".repeat(32), &[]).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["version"], "1.0.0");
        assert_eq!(v["anyOf"][0]["authority"], "https://sharedeus2.eus2.attest.azure.net");
        assert_eq!(v["anyOf"][0]["allOf"][0]["claim"], "x-ms-sevsnpvm-hostdata");
        assert_eq!(v["anyOf"][0]["allOf"][0]["equals"], "ab".repeat(32));
        assert!(release_policy("x", "abc", &[]).is_err());
        assert_eq!(authority_url("http://127.0.0.1:1/"), "http://127.0.0.1:1");
    }

    #[test]
    fn key_types_parse() {
        assert_eq!(KeyType::parse("").unwrap(), KeyType::OctHsm);
        assert_eq!(KeyType::parse("RSA-HSM").unwrap(), KeyType::RsaHsm);
        assert!(KeyType::parse("EC-HSM").is_err());
    }
}

/// Arguments of `cinfer-mkimage import-key`.
#[derive(Debug, clap::Args)]
pub struct ImportKeyArgs {
    /// Vault: AKV/mHSM host (`myvault.vault.azure.net`, `myhsm.managedhsm.azure.net`) or the local broker's URL
    /// (`http://127.0.0.1:8443`).
    #[arg(long)]
    pub vault: String,
    /// Key name (the sidecar's `key.kid`).
    #[arg(long)]
    pub name: String,
    /// Key type: `oct-HSM` (default), `oct`, or `RSA-HSM` (model key derived with HKDF).
    #[arg(long, default_value = "oct-HSM")]
    pub kty: String,
    /// oct/oct-HSM: the 32-byte model key file `build` used. RSA-HSM: where to write the derived model key
    /// (mode 0600, must not exist) to build the image with.
    #[arg(long)]
    pub key_file: std::path::PathBuf,
    /// RSA-HSM: import this RSA private key (PKCS#8 PEM) instead of generating one.
    #[arg(long)]
    pub rsa_key: Option<std::path::PathBuf>,
    /// RSA-HSM: HKDF salt (hex); empty draws 32 random bytes (printed).
    #[arg(long, default_value = "")]
    pub salt: String,
    /// RSA-HSM: HKDF label (default `Symmetric Encryption Key`, the seed's).
    #[arg(long, default_value = "")]
    pub label: String,
    /// The attestation authority whose tokens may release the key: MAA host or `cinfer-attest serve` URL.
    #[arg(long)]
    pub authority: String,
    /// The container policy digest (SNP host_data, 64 hex digits) the release requires.
    #[arg(long)]
    pub host_data: String,
    /// Also require `x-ms-compliance-status = azure-compliant-uvm` (as the seed's policies do on ACI).
    #[arg(long)]
    pub compliant_uvm: bool,
    /// Extra required claims, `CLAIM=VALUE` (repeatable).
    #[arg(long, value_name = "CLAIM=VALUE")]
    pub claim: Vec<String>,
    /// File with the bearer token: an Azure AD token for AKV/mHSM, the admin token for the local broker.
    /// Without it, a managed identity token from IMDS is used.
    #[arg(long, env = "CINFER_VAULT_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Key operations to record (repeatable; default encrypt, decrypt... as the seed: none for oct).
    #[arg(long)]
    pub key_op: Vec<String>,
    /// Print the release policy and exit without importing.
    #[arg(long)]
    pub dry_run: bool,
    /// Send the key and the token over plain `http://` to a vault (or name an authority) that is not on a
    /// loopback address: anyone on the network could read the model key. Testing only.
    #[arg(long)]
    pub dangerously_allow_plain_http: bool,
}

/// Runs `import-key`: prints the key id, the release policy and the sidecar's `key`/`key_derivation` JSON.
pub fn run_import_key(args: &ImportKeyArgs) -> Result<(), KeysError> {
    let kty = KeyType::parse(&args.kty)?;
    let mut extra = Vec::new();
    if args.compliant_uvm {
        extra.push(("x-ms-compliance-status".to_string(), "azure-compliant-uvm".to_string()));
    }
    for c in &args.claim {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| KeysError::Invalid(format!("--claim {c:?} is not CLAIM=VALUE")))?;
        extra.push((k.to_string(), v.to_string()));
    }
    for (what, endpoint) in [("--vault", &args.vault), ("--authority", &args.authority)] {
        attest::transport::check_endpoint(what, endpoint, args.dangerously_allow_plain_http)
            .map_err(|e| KeysError::Invalid(e.to_string()))?;
    }
    let policy = release_policy(&args.authority, &args.host_data, &extra)?;
    let policy_json = serde_json::to_string_pretty(&policy).map_err(|e| KeysError::Invalid(e.to_string()))?;
    if args.dry_run {
        println!("{policy_json}");
        return Ok(());
    }
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| KeysError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    let token = args
        .token_file
        .as_deref()
        .map(|p| read(p).map(|b| SecretBytes::from_slice(String::from_utf8_lossy(&b).trim().as_bytes())))
        .transpose()?;
    let spec = ImportSpec {
        vault: &args.vault,
        name: &args.name,
        kty,
        policy: &policy,
        token,
        key_ops: args.key_op.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| KeysError::Io {
            path: "tokio runtime".into(),
            source,
        })?;
    let imported = match kty {
        KeyType::Oct | KeyType::OctHsm => {
            let key = zeroize::Zeroizing::new(read(&args.key_file)?);
            rt.block_on(import_symmetric(&spec, &key))?
        }
        KeyType::RsaHsm => {
            if args.key_file.exists() {
                return Err(KeysError::Invalid(format!(
                    "{} exists: for RSA-HSM --key-file is where the derived model key is written",
                    args.key_file.display()
                )));
            }
            let pem = args
                .rsa_key
                .as_deref()
                .map(|p| read(p).map(|b| zeroize::Zeroizing::new(String::from_utf8_lossy(&b).into_owned())))
                .transpose()?;
            let derivation = KeyDerivation {
                salt: args.salt.clone(),
                label: args.label.clone(),
            };
            let imported = rt.block_on(import_rsa(&spec, pem.as_deref().map(|s| s.as_str()), &derivation))?;
            write_key_file(&args.key_file, &imported.model_key)?;
            eprintln!(
                "wrote the derived model key to {} (mode 0600): build the image with it",
                args.key_file.display()
            );
            imported
        }
    };
    println!("kid: {}", imported.kid);
    println!("release policy:\n{policy_json}");
    let d = imported.derivation.unwrap_or_default();
    let sidecar = json!({
        "key": {"kid": args.name, "kty": kty.as_str(),
                "authority": {"endpoint": args.authority}, "akv": {"endpoint": args.vault}},
        "key_derivation": {"salt": d.salt, "label": d.label},
    });
    println!("EncfsSideCarArgs key fields:\n{sidecar}");
    Ok(())
}
