//! The one config file that describes a service (TOML or YAML, `version = 1`).
//!
//! Every renderer reads only this struct, so the ACI template, the Kubernetes manifests, the sidecar arguments
//! and the policies cannot disagree about an image, a port or a key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The only config version this build understands.
pub const CONFIG_VERSION: u32 = 1;

/// A config file could not be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or schema error (unknown keys are errors).
    #[error("parsing {path} as TOML")]
    Toml {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// YAML syntax or schema error (unknown keys are errors).
    #[error("parsing {path} as YAML")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_norway::Error,
    },
    /// The file parsed but says something impossible.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The service: what runs, where the model is, which key and which authorities guard it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// Config schema version; must be [`CONFIG_VERSION`].
    pub version: u32,
    /// Name of the container group / Deployment (DNS label: lowercase letters, digits, `-`).
    pub name: String,
    /// Container images.
    pub images: Images,
    /// The encrypted model image and its key.
    pub model: Model,
    /// The attestation service that signs tokens (MAA or `cinfer-attest serve`).
    pub attestation: Attestation,
    /// The key vault / key broker holding the model key.
    pub key_vault: KeyVault,
    /// Managed identity used by the encfs sidecar for the blob and the vault (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// The auditor who signs the attestation policy; enables the policy-signer client policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_signer: Option<PolicySigner>,
    /// Ports of the server proxy and the model server.
    #[serde(default)]
    pub proxy: ProxyPorts,
    /// Pod replicas (Kubernetes). ACI renders one container group; deploy it once per replica.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Container commands (override when an image's entrypoint differs); part of the measured policy.
    #[serde(default)]
    pub commands: Commands,
    /// CPU and memory per container.
    #[serde(default)]
    pub resources: Resources,
    /// ACI-only settings.
    #[serde(default)]
    pub aci: AciOptions,
    /// Kubernetes-only settings.
    #[serde(default)]
    pub kubernetes: KubernetesOptions,
    /// Confidential GPUs the key and the clients require (composite evidence: SEV-SNP + NVIDIA GPU reports), as
    /// conditions of the release policy and the client policies. Needs an attestation service that verifies GPU
    /// evidence (`cinfer-attest serve --gpu-collateral`); MAA issues no GPU claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<attest::gpu::requirement::GpuRequirement>,
    /// The init step (`cinfer-init`).
    #[serde(default)]
    pub init: InitOptions,
}

fn one() -> u32 {
    1
}

/// Container image references, e.g. `myregistry.azurecr.io/cinfer-encfs:0.1.0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Images {
    /// `cinfer-init` (deploy/containers/init.Containerfile).
    pub init: String,
    /// `cinfer-encfs` sidecar (deploy/containers/encfs.Containerfile).
    pub encfs: String,
    /// `cinfer-proxy` server proxy (deploy/containers/proxy.Containerfile).
    pub proxy: String,
    /// The model server reading the mount, e.g. `nvcr.io/nvidia/tritonserver:24.08-py3`.
    pub model_server: String,
}

/// The encrypted model image (made by `cinfer-mkimage build`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Where the image is, e.g. `https://acct.blob.core.windows.net/models/resnet.img` (a SAS may follow `?`).
    pub image_url: String,
    /// `true`: the sidecar authenticates with the managed identity; `false`: anonymous (public or SAS URL).
    #[serde(default = "yes")]
    pub url_private: bool,
    /// Where the model server sees the plaintext model.
    #[serde(default = "default_mount_point")]
    pub mount_point: String,
    /// Name of the model key in the vault.
    pub key_id: String,
    /// Key type in the vault (`oct-HSM` for a 32-byte model key; `RSA-HSM` with `key_derivation`).
    #[serde(default = "default_kty")]
    pub key_type: String,
    /// HKDF parameters turning an `RSA-HSM` key into the model key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_derivation: Option<KeyDerivation>,
    /// Root digest printed by `cinfer-mkimage build` (64 hex); pins the image content when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_root: Option<String>,
    /// The model signer's public key: a PEM file (relative to the config file) or the PEM itself. The sidecar
    /// mounts only an image signed by this key; the PEM is rendered into `EncfsSideCarArgs`, so it is measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer_key: Option<String>,
    /// What the sidecar's signature gate checks before mounting: `manifest` (default) or `full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<sidecar_args::VerifyMode>,
    /// Memory budget in MiB of the sidecar's cache of image parts (its default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_mb: Option<u64>,
    /// Mount an image that neither `expect_root` nor `signer_key` pins (the sidecar refuses one otherwise; this
    /// renders its `--allow-unpinned`). Any image sealed with the key would then be served.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unpinned: bool,
}

fn yes() -> bool {
    true
}

fn default_mount_point() -> String {
    "/mnt/remote/models".to_owned()
}

fn default_kty() -> String {
    "oct-HSM".to_owned()
}

/// HKDF-SHA256 parameters (seed §2.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyDerivation {
    /// Salt, hex.
    pub salt: String,
    /// Info label, e.g. `Model Encryption Key`.
    pub label: String,
}

/// The attestation authority, and what the rendered attestation and release policies require of the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// Host name of the authority, e.g. `sharedeus2.eus2.attest.azure.net` (no scheme).
    pub authority: String,
    /// Minimum TCB per processor product, rendered into `attestation-policy.txt` and `release-policy.json`.
    /// Absent: Milan at AMD-SB-3019's levels ([`MinTcb::default`]).
    #[serde(default)]
    pub min_tcb: MinTcb,
    /// Render policies that also accept guests whose policy allows a migration agent. Default `false`: they
    /// require `x-ms-sevsnpvm-migration-allowed = false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_migration_agent: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A processor product with SEV-SNP whose TCB the policies can floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    /// Zen 4 EPYC 9004.
    Genoa,
    /// Zen 3 EPYC 7003.
    Milan,
}

impl Product {
    /// Lowercase name, as in the config.
    pub fn name(self) -> &'static str {
        match self {
            Self::Genoa => "genoa",
            Self::Milan => "milan",
        }
    }

    /// AMD-SB-3019's levels `[bootloader, tee, snp, microcode]`, the same as `cinfer-attest serve`'s default
    /// floor (`attest::appraisal::MinimumTcb::amd_default`; a test checks they agree). Sources: attest/README.md.
    pub fn default_floor(self) -> [u8; 4] {
        match self {
            Self::Genoa => [0, 0, 23, 84],
            Self::Milan => [0, 0, 22, 219],
        }
    }
}

/// Minimum TCB per product. The attestation token does not say which product the host is (MAA's claims carry no
/// CPUID), so the policies hold one alternative per product listed here and a host passes by meeting any one of
/// them: list only the products the deployment runs on (a Milan host meeting Genoa's lower microcode floor would
/// pass).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinTcb {
    /// Zen 3 EPYC 7003 (e.g. Azure DCasv5/ECasv5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milan: Option<TcbFloor>,
    /// Zen 4 EPYC 9004 (e.g. Azure DCasv6/ECasv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genoa: Option<TcbFloor>,
}

impl Default for MinTcb {
    /// Milan at AMD-SB-3019's levels; a Genoa host is refused until `genoa` is listed.
    fn default() -> Self {
        Self {
            milan: Some(TcbFloor::default()),
            genoa: None,
        }
    }
}

impl MinTcb {
    /// The listed products with their effective floors `[bootloader, tee, snp, microcode]`, Milan first.
    pub fn floors(&self) -> Vec<(Product, [u8; 4])> {
        [(Product::Milan, &self.milan), (Product::Genoa, &self.genoa)]
            .into_iter()
            .filter_map(|(product, floor)| floor.as_ref().map(|f| (product, f.resolve(product))))
            .collect()
    }
}

/// Minimum SVNs of one product; an absent component takes the product's default ([`Product::default_floor`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcbFloor {
    /// Boot loader SVN (`x-ms-sevsnpvm-bootloader-svn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<u8>,
    /// TEE SVN (`x-ms-sevsnpvm-tee-svn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tee: Option<u8>,
    /// SNP firmware SVN (`x-ms-sevsnpvm-snpfw-svn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snp: Option<u8>,
    /// Microcode SVN (`x-ms-sevsnpvm-microcode-svn`, the low byte of the patch level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microcode: Option<u8>,
}

impl TcbFloor {
    /// `[bootloader, tee, snp, microcode]` with absent components from the product's default.
    pub fn resolve(&self, product: Product) -> [u8; 4] {
        let d = product.default_floor();
        [
            self.bootloader.unwrap_or(d[0]),
            self.tee.unwrap_or(d[1]),
            self.snp.unwrap_or(d[2]),
            self.microcode.unwrap_or(d[3]),
        ]
    }
}

/// The key vault or managed HSM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyVault {
    /// Host name, e.g. `myvault.vault.azure.net` or `myhsm.managedhsm.azure.net` (no scheme).
    pub endpoint: String,
}

/// A user-assigned managed identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Its client id (used by the sidecar to ask IMDS for tokens).
    pub client_id: String,
    /// Its ARM resource id (ACI attaches it to the container group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
}

/// The auditor whose certificate signs the attestation policy (the `x-ms-policy-signer` claim).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySigner {
    /// PEM certificate file, relative to the config file.
    pub certificate: PathBuf,
}

/// Ports. The defaults are the seed's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyPorts {
    /// Port clients connect to from outside; `cinfer-init` redirects it (and every other port) to `port`.
    pub public_port: u16,
    /// The server proxy's attested TLS port.
    pub port: u16,
    /// The proxy's plain health port, excluded from the redirect.
    pub health_port: u16,
    /// The model server's HTTP port on loopback, where the proxy forwards.
    pub upstream_port: u16,
}

impl Default for ProxyPorts {
    fn default() -> Self {
        Self {
            public_port: 8000,
            port: 15006,
            health_port: 15021,
            upstream_port: 8000,
        }
    }
}

/// Container commands. Each is measured into the security policy, so changing one changes the hostdata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Commands {
    /// The model server's command; `{mount_point}` and `{upstream_port}` are substituted.
    pub model_server: Vec<String>,
    /// The encfs sidecar's command (it reads `EncfsSideCarArgs` from the environment).
    pub encfs: Vec<String>,
    /// The command of the Kubernetes pod's init container that releases the key, verifies the image and
    /// extracts its files into a memory-backed volume (no FUSE there); same arguments as `encfs`.
    pub encfs_extract: Vec<String>,
    /// The server proxy's command; `{port}`, `{health_port}`, `{upstream_port}`, `{authority}` are substituted.
    pub proxy: Vec<String>,
}

impl Default for Commands {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Self {
            model_server: s(&[
                "tritonserver",
                "--model-repository={mount_point}",
                "--http-port={upstream_port}",
                "--http-address=127.0.0.1",
                "--allow-grpc=false",
                "--grpc-address=127.0.0.1",
                "--allow-metrics=false",
                "--exit-on-error=false",
            ]),
            encfs: s(&["/usr/local/bin/cinfer-encfs", "sidecar"]),
            encfs_extract: s(&["/usr/local/bin/cinfer-encfs", "extract"]),
            proxy: s(&[
                "/usr/local/bin/cinfer-proxy",
                "server",
                "--listen=0.0.0.0:{port}",
                "--health=0.0.0.0:{health_port}",
                "--upstream=127.0.0.1:{upstream_port}",
                "--attestation-url=https://{authority}",
            ]),
        }
    }
}

/// CPU cores and memory (GiB) for one container.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// CPU cores (fractions allowed).
    pub cpu: f64,
    /// Memory in GiB.
    pub memory_gb: f64,
}

impl Eq for Resource {}

/// Resources per container; the defaults are the seed's (the init step's is ours).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    /// The init step (`cinfer-init`), Kubernetes only (ACI init containers take no resources).
    pub init: Resource,
    /// The model server.
    pub model_server: Resource,
    /// The encfs sidecar.
    pub encfs: Resource,
    /// The server proxy.
    pub proxy: Resource,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            init: Resource {
                cpu: 0.25,
                memory_gb: 0.25,
            },
            model_server: Resource {
                cpu: 3.0,
                memory_gb: 12.0,
            },
            encfs: Resource {
                cpu: 1.0,
                memory_gb: 4.0,
            },
            proxy: Resource {
                cpu: 0.5,
                memory_gb: 1.0,
            },
        }
    }
}

/// Settings of the init step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InitOptions {
    /// When not empty, only these UIDs may open outbound connections (loopback and replies stay allowed). The
    /// proxy (65532 in its image) and the encfs sidecar (0) need the network; run the model server under another
    /// UID, or allowing 0 lets it out too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outbound_allow_uids: Vec<u32>,
}

/// ACI-only settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AciOptions {
    /// DNS name label of the public IP (`<label>.<region>.azurecontainer.io`); none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_name_label: Option<String>,
}

/// Kubernetes-only settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesOptions {
    /// Namespace of the rendered objects.
    pub namespace: String,
    /// Runtime class of confidential pods: `kata-cc-isolation` (AKS confidential containers), the only one a render
    /// can attest on; see [`DeployConfig::validate`] for why upstream Confidential Containers is refused.
    pub runtime_class: String,
    /// Service type: `LoadBalancer`, `ClusterIP` or `NodePort`.
    pub service_type: String,
    /// The Kubernetes service account the pods run as, federated with an Entra ID identity that may release the
    /// model key (and read a private image): Workload Identity, the only identity confidential pods get on AKS
    /// (the node's IMDS serves node-pool identities only). Required to render Kubernetes manifests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Room for the model's plaintext, MiB: the size limit of the memory-backed volume the pod's `cinfer-encfs
    /// extract` init container writes the verified files into (at least the total size of the image's files;
    /// `cinfer-mkimage inspect` prints it). It is added to the memory limits of the extracting init container and
    /// of the model server, so the utility VM is sized for it. Required to render Kubernetes manifests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_mb: Option<u64>,
}

impl Default for KubernetesOptions {
    fn default() -> Self {
        Self {
            namespace: "default".to_owned(),
            runtime_class: "kata-cc-isolation".to_owned(),
            service_type: "LoadBalancer".to_owned(),
            service_account: None,
            model_mb: None,
        }
    }
}

impl DeployConfig {
    /// The example config (`deploy/examples/cinfer.toml`, embedded with its signer key): what `cinfer-deploy
    /// local` renders when no config is given.
    pub fn example() -> Result<Self, ConfigError> {
        let path = Path::new("deploy/examples/cinfer.toml");
        let mut config: Self =
            toml::from_str(include_str!("../examples/cinfer.toml")).map_err(|source| ConfigError::Toml {
                path: path.into(),
                source,
            })?;
        if config.model.signer_key.as_deref() == Some("model-signer.pub.pem") {
            config.model.signer_key = Some(include_str!("../examples/model-signer.pub.pem").trim().to_owned());
        }
        config.validate()?;
        Ok(config)
    }

    /// Reads and checks a config file; `.yaml`/`.yml` is YAML, anything else TOML.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
        let config: Self = if yaml {
            serde_norway::from_str(&text).map_err(|source| ConfigError::Yaml {
                path: path.into(),
                source,
            })?
        } else {
            toml::from_str(&text).map_err(|source| ConfigError::Toml {
                path: path.into(),
                source,
            })?
        };
        config.validate()?;
        let mut config = config;
        // Checks that the file holds a PEM public key, as `validate` does for an inline one.
        config.resolve_signer_key(path.parent().unwrap_or(Path::new(".")))?;
        Ok(config)
    }

    /// Replaces a `model.signer_key` path (relative to `base`) by the PEM it names, so what is rendered is the key
    /// itself.
    pub fn resolve_signer_key(&mut self, base: &Path) -> Result<(), ConfigError> {
        let Some(value) = &self.model.signer_key else {
            return Ok(());
        };
        if is_pem(value) {
            return Ok(());
        }
        let path = base.join(value.trim());
        let pem = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        if !(is_pem(&pem) && pem.contains("PUBLIC KEY-----")) {
            return Err(ConfigError::Invalid(format!(
                "model.signer_key: {} is not a PEM public key",
                path.display()
            )));
        }
        self.model.signer_key = Some(pem.trim().to_owned());
        Ok(())
    }

    /// Checks what serde cannot: the version, names, hosts, ports and hex fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        if self.version != CONFIG_VERSION {
            return bad(format!(
                "version {} is not supported (this build reads version {CONFIG_VERSION})",
                self.version
            ));
        }
        if !is_dns_label(&self.name) {
            return bad(format!(
                "name {:?} must be a DNS label (a-z, 0-9, '-', at most 63)",
                self.name
            ));
        }
        for (what, host) in [
            ("attestation.authority", &self.attestation.authority),
            ("key_vault.endpoint", &self.key_vault.endpoint),
        ] {
            if host.is_empty() || host.contains("://") || host.contains('/') || host.contains(char::is_whitespace) {
                return bad(format!(
                    "{what} must be a bare host name like `example.azure.net`, got {host:?}"
                ));
            }
        }
        if self.attestation.min_tcb.floors().is_empty() {
            return bad(
                "attestation.min_tcb must list at least one product (milan, genoa); to drop a floor, set its \
                 components to 0"
                    .to_owned(),
            );
        }
        if self.model.image_url.is_empty() || !self.model.image_url.contains("://") {
            return bad(format!("model.image_url must be a URL, got {:?}", self.model.image_url));
        }
        if self.model.key_id.is_empty() {
            return bad("model.key_id must not be empty".to_owned());
        }
        let mount = self.model.mount_point.trim_end_matches('/');
        if !mount.starts_with('/') || mount.rfind('/').is_none_or(|i| i == 0) {
            // The shared volume is mounted at the parent, so the parent must not be `/`.
            return bad(format!(
                "model.mount_point must be absolute and below a directory (e.g. /mnt/remote/models), got {:?}",
                self.model.mount_point
            ));
        }
        if let Some(root) = &self.model.expect_root
            && (root.len() != 64 || hex::decode(root).is_err())
        {
            return bad("model.expect_root must be 64 hex digits".to_owned());
        }
        // A path is resolved to its PEM by `load`; what is rendered must be a PEM public key.
        if let Some(pem) = &self.model.signer_key
            && (pem.trim().is_empty() || (is_pem(pem) && !pem.contains("PUBLIC KEY-----")))
        {
            return bad("model.signer_key must be a PEM public key (or a file holding one)".to_owned());
        }
        if self.model.expect_root.is_none() && self.model.signer_key.is_none() && !self.model.allow_unpinned {
            return bad(
                "model: neither expect_root nor signer_key is set, and the sidecar refuses an unpinned image: set \
                 expect_root (the root `cinfer-mkimage build` prints) or signer_key, or allow_unpinned = true"
                    .to_owned(),
            );
        }
        if self.model.cache_mb == Some(0) {
            return bad("model.cache_mb must be at least 1".to_owned());
        }
        if let Some(kd) = &self.model.key_derivation
            && hex::decode(&kd.salt).is_err()
        {
            return bad("model.key_derivation.salt must be hex".to_owned());
        }
        let p = &self.proxy;
        let ports = [p.public_port, p.port, p.health_port, p.upstream_port];
        if ports.contains(&0) {
            return bad("ports must not be 0".to_owned());
        }
        if p.port == p.health_port || p.port == p.upstream_port || p.health_port == p.upstream_port {
            return bad("proxy.port, proxy.health_port and proxy.upstream_port must differ".to_owned());
        }
        if p.public_port == p.health_port {
            return bad("proxy.public_port must not be the (unprotected) health port".to_owned());
        }
        if self.replicas == 0 {
            return bad("replicas must be at least 1".to_owned());
        }
        for (what, cmd) in [
            ("commands.model_server", &self.commands.model_server),
            ("commands.encfs", &self.commands.encfs),
            ("commands.encfs_extract", &self.commands.encfs_extract),
            ("commands.proxy", &self.commands.proxy),
        ] {
            if cmd.is_empty() {
                return bad(format!("{what} must not be empty"));
            }
        }
        match self.kubernetes.runtime_class.as_str() {
            "kata-cc-isolation" => {}
            "kata-qemu-snp" | "kata-qemu-snp-experimental" => {
                return bad(format!(
                    "kubernetes.runtime_class {:?} (upstream Confidential Containers) is not supported: there the policy \
                     is measured through the cc_init_data initdata annotation (HOST_DATA is the digest of the initdata \
                     document, not of the policy), containers get no /dev/sev-guest (evidence comes from the guest's \
                     Attestation Agent, verified by trustee), and there is no Microsoft UVM endorsement, so no \
                     azure-compliant-uvm: a rendered deployment could not attest. Use kata-cc-isolation (AKS \
                     confidential containers) or ACI",
                    self.kubernetes.runtime_class
                ));
            }
            other => {
                return bad(format!(
                    "kubernetes.runtime_class {other:?} is not a confidential runtime cinfer can attest on: use \
                     kata-cc-isolation (AKS confidential containers)"
                ));
            }
        }
        for (what, r) in [
            ("resources.init", &self.resources.init),
            ("resources.model_server", &self.resources.model_server),
            ("resources.encfs", &self.resources.encfs),
            ("resources.proxy", &self.resources.proxy),
        ] {
            if !(r.cpu > 0.0 && r.memory_gb > 0.0 && r.cpu.is_finite() && r.memory_gb.is_finite()) {
                return bad(format!("{what}: cpu and memory_gb must be positive"));
            }
        }
        if let Some(sa) = &self.kubernetes.service_account
            && !is_dns_subdomain(sa)
        {
            return bad(format!(
                "kubernetes.service_account {sa:?} is not a valid Kubernetes name"
            ));
        }
        if self.kubernetes.model_mb == Some(0) {
            return bad("kubernetes.model_mb must be at least 1".to_owned());
        }
        if let Some(gpu) = &self.gpu {
            if gpu.min_count == 0 {
                return bad("gpu.min_count must be at least 1 (leave out [gpu] for no GPU)".to_owned());
            }
            if let Err(e) = gpu.conditions() {
                return bad(e.to_string());
            }
            if self.attestation.authority.ends_with(".attest.azure.net") {
                return bad(format!(
                    "[gpu] needs an attestation service that verifies GPU evidence (cinfer-attest serve with \
                     --gpu-collateral): {} is Microsoft Azure Attestation, which issues no GPU claims, so the key \
                     could never be released",
                    self.attestation.authority
                ));
            }
        }
        if !matches!(
            self.kubernetes.service_type.as_str(),
            "LoadBalancer" | "ClusterIP" | "NodePort"
        ) {
            return bad(format!(
                "kubernetes.service_type {:?} is not LoadBalancer, ClusterIP or NodePort",
                self.kubernetes.service_type
            ));
        }
        Ok(())
    }

    /// A command with its `{placeholders}` replaced by values from this config.
    pub fn expand(&self, command: &[String]) -> Vec<String> {
        let p = &self.proxy;
        command
            .iter()
            .map(|arg| {
                arg.replace("{mount_point}", &self.model.mount_point)
                    .replace("{upstream_port}", &p.upstream_port.to_string())
                    .replace("{health_port}", &p.health_port.to_string())
                    .replace("{port}", &p.port.to_string())
                    .replace("{authority}", &self.attestation.authority)
            })
            .collect()
    }
}

fn is_pem(s: &str) -> bool {
    s.trim_start().starts_with("-----BEGIN ")
}

/// A Kubernetes object name (RFC 1123 subdomain).
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
