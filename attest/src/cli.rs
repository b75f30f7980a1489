//! Command-line arguments of `cinfer-attest`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// cinfer attestation: SEV-SNP evidence, verification, MAA-compatible attestation service, AKV-compatible
/// key broker.
///
/// Exit codes: 0 success; 1 a check or request failed (one line on stderr names it); 2 usage error.
#[derive(Debug, Parser)]
#[command(name = "cinfer-attest", version)]
pub(crate) struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable.
    Text,
    /// JSON lines.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the attestation service and key broker.
    Serve(ServeArgs),
    /// Generate a mock ARK/ASK root into a directory (for `--attester mock` and `--trust-mock-root`).
    MockInit(MockInitArgs),
    /// Produce mock evidence (report + chain) for runtime data.
    MockEvidence(MockEvidenceArgs),
    /// Generate mock GPUs into a directory: a root (for `serve --trust-mock-gpu-root DIR/root.pem`), the
    /// GPUs' configuration (for `--mock-gpu-dir DIR`) and the matching collateral (`DIR/collateral.json`, for
    /// `serve --gpu-collateral`).
    MockGpuInit(MockGpuInitArgs),
    /// Verify a report and chain; print MAA claims as JSON.
    VerifyReport(VerifyReportArgs),
    /// Verify NVIDIA GPU evidence offline (report, device chain, RIMs); print the claims as JSON.
    VerifyGpu(VerifyGpuArgs),
    /// Attest: get an attestation token for runtime data (prints the JWT).
    Attest(AttestArgs),
    /// Import a symmetric key with a release policy (AKV JSON) into a vault or the local broker.
    ImportKey(ImportKeyArgs),
    /// Attest and release a key; write the 32-byte model key to a file (mode 0600).
    ReleaseKey(ReleaseKeyArgs),
    /// Sign an attestation policy as an auditor (RS256 JWS with x5c).
    SignPolicy(SignPolicyArgs),
    /// Build or inspect an offline collateral bundle (AMD ARK/ASK/CRL and VCEKs, UVM endorsement issuers).
    #[command(subcommand)]
    Collateral(CollateralCommand),
}

/// `collateral`.
#[derive(Debug, Subcommand)]
pub(crate) enum CollateralCommand {
    /// Build a bundle from files; prints its validity window.
    Build(CollateralBuildArgs),
    /// Print a bundle's contents and validity window; exit 1 when it is not valid at `--at` (default now).
    Show(CollateralShowArgs),
}

/// `collateral build`.
#[derive(Debug, Args)]
pub(crate) struct CollateralBuildArgs {
    /// Output file (JSON).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// PEM certificates: a VCEK ‖ ASK ‖ ARK chain, a KDS `cert_chain` (ASK ‖ ARK) or single VCEKs
    /// (repeatable). A VCEK's generation without its ASK/ARK given gets AMD's pinned ones.
    #[arg(long)]
    pub(crate) certs: Vec<PathBuf>,
    /// THIM JSON (ACI's `host-amd-cert`, decoded): its VCEK and chain (repeatable).
    #[arg(long)]
    pub(crate) thim: Vec<PathBuf>,
    /// CRL, DER or PEM, as AMD KDS serves it (`/vcek/v1/{Milan,Genoa,Turin}/crl`) (repeatable).
    #[arg(long)]
    pub(crate) crl: Vec<PathBuf>,
    /// Trusted UVM endorsement source `DID,FEED[,MIN_SVN]` (repeatable; default: Microsoft's ACI feed).
    #[arg(long, value_name = "DID,FEED[,MIN_SVN]")]
    pub(crate) uvm_issuer: Vec<String>,
    /// End the bundle's validity at this time at the latest (RFC 3339).
    #[arg(long)]
    pub(crate) not_after: Option<String>,
}

/// `collateral show`.
#[derive(Debug, Args)]
pub(crate) struct CollateralShowArgs {
    /// Bundle file.
    pub(crate) bundle: PathBuf,
    /// Check validity at this time (RFC 3339) instead of now.
    #[arg(long)]
    pub(crate) at: Option<String>,
}

/// `serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on. Plain HTTP only on a loopback address (127.0.0.0/8, ::1, localhost); elsewhere
    /// serve TLS (`--tls-cert`/`--tls-key` or `--tls-self-signed`).
    #[arg(long, default_value = "127.0.0.1:8443", env = "CINFER_ATTEST_LISTEN")]
    pub(crate) listen: String,
    /// Serve HTTPS with this certificate chain (PEM, leaf first; needs `--tls-key`).
    #[arg(long, requires = "tls_key", conflicts_with = "tls_self_signed")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// Private key of `--tls-cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Serve HTTPS with a key pair and certificate generated at start (in memory only). Prints the SHA-256
    /// fingerprints of the certificate and of its public key (`tls-cert-sha256 HEX`, `tls-spki-sha256 HEX` on
    /// stdout) for clients to pin (`--tls-pin-sha256`).
    #[arg(long)]
    pub(crate) tls_self_signed: bool,
    /// Also write the served certificate (PEM) to this file, for clients' `--tls-pin-cert`.
    #[arg(long)]
    pub(crate) tls_cert_out: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address: anyone on the network could read the admin token and the
    /// keys imported, and replace the token-signing keys and released keys clients receive. Testing only.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_self_signed"])]
    pub(crate) dangerously_serve_plain_http: bool,
    /// Import keys whose release policy pins neither `x-ms-sevsnpvm-hostdata` nor `x-ms-policy-signer`, or not
    /// `x-ms-sevsnpvm-is-debuggable = false`: such a key is released to other guests. Testing only.
    #[arg(long)]
    pub(crate) dangerously_accept_weak_policy: bool,
    /// Token issuer (default `http://<listen address>`, `https://` with TLS).
    #[arg(long, env = "CINFER_ATTEST_ISSUER")]
    pub(crate) issuer: Option<String>,
    /// State directory: signing key and keys (mode 0700/0600). Without it, state is in memory.
    #[arg(long, env = "CINFER_ATTEST_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Trust a mock ARK (PEM file written by `mock-init`). Never in production.
    #[arg(long)]
    pub(crate) trust_mock_root: Vec<PathBuf>,
    /// Do not trust the pinned AMD roots (only the mock roots given).
    #[arg(long)]
    pub(crate) no_amd_roots: bool,
    /// Accept debuggable guests. Never in production.
    #[arg(long)]
    pub(crate) danger_allow_debug: bool,
    /// Minimum TCB, report version, migration agents.
    #[command(flatten)]
    pub(crate) appraisal: AppraisalArgs,
    /// Attestation policy file (MAA text or signed JWS); reloaded when it changes.
    #[arg(long)]
    pub(crate) policy: Option<PathBuf>,
    /// Trusted policy signer certificate (PEM). When given, only signed policies are accepted.
    #[arg(long)]
    pub(crate) policy_signer: Vec<PathBuf>,
    /// File holding the admin bearer token for key import and policy update, at least 16 bytes (disabled
    /// without it).
    #[arg(long, env = "CINFER_ATTEST_ADMIN_TOKEN_FILE")]
    pub(crate) admin_token_file: Option<PathBuf>,
    /// Token lifetime in seconds.
    #[arg(long, default_value_t = 8 * 3600)]
    pub(crate) token_lifetime_secs: u64,
    /// Offline collateral bundle (`collateral build`): evidence chains must be its ARK/ASK and not revoked by
    /// its CRLs; its UVM issuers apply unless `--uvm-issuer` is given. Refuses to start when it is expired.
    #[arg(long)]
    pub(crate) collateral: Option<PathBuf>,
    /// Trusted UVM endorsement source `DID,FEED[,MIN_SVN]` (repeatable). Given ones replace the default,
    /// Microsoft's ACI feed (`did:x509:0:sha256:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s::eku:1.3.6.1.4.1.311.76.59.1.2`,
    /// `ContainerPlat-AMD-UVM`, minimum SVN 0).
    #[arg(long, value_name = "DID,FEED[,MIN_SVN]")]
    pub(crate) uvm_issuer: Vec<String>,
    /// Test and air-gap override: a launch measurement (hex) that earns `x-ms-compliance-status:
    /// azure-compliant-uvm` without a UVM endorsement. Production evidence carries the endorsement instead.
    #[arg(long)]
    pub(crate) compliant_measurement: Vec<String>,
    /// Another attestation service whose tokens the key broker accepts: `ISSUER=JWKS_FILE` (e.g. an MAA
    /// instance and a saved copy of its `/certs`).
    #[arg(long, value_name = "ISSUER=JWKS_FILE")]
    pub(crate) trusted_authority: Vec<String>,
    /// Offline GPU collateral bundle (JSON: driver and VBIOS RIMs, chosen by each report's versions, revoked
    /// serials, a validity window). Without it GPU measurements are not compared (CC mode then `unknown`).
    /// Refuses to start when it is not valid now.
    #[arg(long)]
    pub(crate) gpu_collateral: Option<PathBuf>,
    /// Trust a mock GPU root (`root.pem` from `mock-gpu-init`) as device and RIM root instead of NVIDIA's.
    /// Never in production.
    #[arg(long)]
    pub(crate) trust_mock_gpu_root: Option<PathBuf>,
}

/// `mock-gpu-init`.
#[derive(Debug, Args)]
pub(crate) struct MockGpuInitArgs {
    /// Output directory (created 0700; the mock's private keys are written 0600).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Number of GPUs.
    #[arg(long, default_value_t = 1)]
    pub(crate) count: u32,
    /// Driver version the GPUs report (and of the generated driver RIM).
    #[arg(long, default_value = "550.90.07")]
    pub(crate) driver_version: String,
    /// VBIOS version the GPUs report (and of the generated VBIOS RIM).
    #[arg(long, default_value = "96.00.9F.00.01")]
    pub(crate) vbios_version: String,
    /// The GPUs report a DevTools-mode measurement (their measurements then do not match the RIMs).
    #[arg(long)]
    pub(crate) devtools: bool,
    /// The GPUs report feature flag PPCIe (protected PCIe: CC mode off on the GPUs).
    #[arg(long)]
    pub(crate) ppcie: bool,
    /// Validity of the collateral bundle, in days.
    #[arg(long, default_value_t = 365)]
    pub(crate) validity_days: u64,
}

/// `mock-init`.
#[derive(Debug, Args)]
pub(crate) struct MockInitArgs {
    /// Output directory.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Processor generation the mock claims.
    #[arg(long, value_enum, default_value_t = GenerationArg::Milan)]
    pub(crate) generation: GenerationArg,
}

/// Processor generation.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum GenerationArg {
    /// Milan.
    Milan,
    /// Genoa.
    Genoa,
    /// Turin.
    Turin,
}

/// Which attester produces evidence.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum AttesterKind {
    /// The SNP guest device (`/dev/sev-guest` or `/dev/sev`); fails when absent.
    Snp,
    /// The mock attester (needs `--mock-root`). Only for local testing.
    Mock,
}

/// Mock report fields.
#[derive(Debug, Args)]
pub(crate) struct MockArgs {
    /// Mock root directory (from `mock-init`).
    #[arg(long)]
    pub(crate) mock_root: Option<PathBuf>,
    /// Launch measurement (96 hex digits).
    #[arg(long)]
    pub(crate) measurement: Option<String>,
    /// host_data (64 hex digits).
    #[arg(long)]
    pub(crate) host_data: Option<String>,
    /// Set the debug bit.
    #[arg(long)]
    pub(crate) debug: bool,
    /// VMPL.
    #[arg(long, default_value_t = 0)]
    pub(crate) vmpl: u32,
    /// Add mock GPUs' evidence (directory from `mock-gpu-init`), each GPU's SPDM nonce derived from the
    /// report_data (composite evidence). With `attest` and `release-key`.
    #[arg(long)]
    pub(crate) mock_gpu_dir: Option<PathBuf>,
}

/// `mock-evidence`.
#[derive(Debug, Args)]
pub(crate) struct MockEvidenceArgs {
    /// Mock fields.
    #[command(flatten)]
    pub(crate) mock: MockArgs,
    /// Runtime data file (report_data = SHA-256 of it ‖ 0³²).
    #[arg(long)]
    pub(crate) runtime_data: PathBuf,
    /// Where to write the 1184-byte report.
    #[arg(long)]
    pub(crate) out_report: PathBuf,
    /// Where to write the PEM chain (VCEK, ASK, ARK).
    #[arg(long)]
    pub(crate) out_certs: PathBuf,
}

/// `verify-gpu`: exit 0 with the claims on stdout, or 1 with the failed check named on stderr.
#[derive(Debug, Args)]
pub(crate) struct VerifyGpuArgs {
    /// Attestation report: hex text as NVIDIA's tools write it, or the raw bytes.
    #[arg(long)]
    pub(crate) report: PathBuf,
    /// The GPU's PEM certificate chain, leaf first, ending in the device root.
    #[arg(long)]
    pub(crate) cert_chain: PathBuf,
    /// Driver RIM (SWID tag) to compare the driver's measurements with.
    #[arg(long)]
    pub(crate) driver_rim: Option<PathBuf>,
    /// VBIOS RIM (SWID tag) to compare the VBIOS measurements with.
    #[arg(long)]
    pub(crate) vbios_rim: Option<PathBuf>,
    /// Offline GPU collateral bundle (JSON: RIMs chosen by the report's versions, revoked serials).
    #[arg(long)]
    pub(crate) collateral: Option<PathBuf>,
    /// RIM signing root (PEM; default: NVIDIA's CoRIM signing root, shipped in the binary).
    #[arg(long)]
    pub(crate) rim_root: Option<PathBuf>,
    /// Device identity root (PEM; default: NVIDIA's Device Identity CA, shipped in the binary).
    #[arg(long)]
    pub(crate) device_root: Option<PathBuf>,
    /// Expected nonce of the SPDM request (64 hex digits).
    #[arg(long)]
    pub(crate) nonce: Option<String>,
    /// Verification time (RFC 3339) for certificate and RIM validity; default now.
    #[arg(long)]
    pub(crate) at: Option<String>,
}

/// `verify-report`.
#[derive(Debug, Args)]
pub(crate) struct VerifyReportArgs {
    /// Report file (1184 bytes).
    #[arg(long)]
    pub(crate) report: PathBuf,
    /// PEM chain: VCEK, ASK, ARK (optional with `--collateral`, which then supplies the chain).
    #[arg(long, required_unless_present = "collateral")]
    pub(crate) certs: Option<PathBuf>,
    /// Offline collateral bundle: the chain (unless `--certs`), revocation, UVM issuers; no network.
    #[arg(long)]
    pub(crate) collateral: Option<PathBuf>,
    /// UVM endorsement: COSE_Sign1 bytes, or ACI's `reference-info-base64` file as is. When it verifies and
    /// endorses the report's measurement, the claims say `x-ms-compliance-status: azure-compliant-uvm`.
    #[arg(long)]
    pub(crate) endorsement: Option<PathBuf>,
    /// Security policy as ACI provides it (`security-policy-base64`: base64 of the CCE policy); host_data
    /// must be SHA-256 of the decoded policy.
    #[arg(long)]
    pub(crate) security_policy: Option<PathBuf>,
    /// Trusted UVM endorsement source `DID,FEED[,MIN_SVN]` (repeatable; replaces the bundle's issuers and
    /// the ACI default).
    #[arg(long, value_name = "DID,FEED[,MIN_SVN]")]
    pub(crate) uvm_issuer: Vec<String>,
    /// Check certificate validity at this time (RFC 3339) instead of now.
    #[arg(long)]
    pub(crate) at: Option<String>,
    /// Expected report_data (128 hex digits), compared exactly.
    #[arg(long)]
    pub(crate) report_data: Option<String>,
    /// Expected runtime data file; report_data must be SHA-256 of it ‖ 0³².
    #[arg(long, conflicts_with = "report_data")]
    pub(crate) runtime_data: Option<PathBuf>,
    /// Expected host_data (64 hex digits).
    #[arg(long)]
    pub(crate) host_data: Option<String>,
    /// Trust a mock ARK (PEM).
    #[arg(long)]
    pub(crate) trust_mock_root: Vec<PathBuf>,
    /// Accept debuggable guests.
    #[arg(long)]
    pub(crate) danger_allow_debug: bool,
    /// Minimum TCB, report version, migration agents.
    #[command(flatten)]
    pub(crate) appraisal: AppraisalArgs,
}

/// What a verified report must meet besides chain, signature and binding (`serve` and `verify-report`).
#[derive(Debug, Args)]
pub(crate) struct AppraisalArgs {
    /// Minimum reported TCB of a processor product, `PRODUCT:COMPONENT=N[,COMPONENT=N…]` (products milan,
    /// genoa, turin; components bootloader, tee, snp, microcode, fmc), repeatable. Named components replace
    /// the default, the others keep it. Defaults (AMD-SB-3019): milan snp=22,microcode=219; genoa
    /// snp=23,microcode=84; turin none.
    #[arg(long, value_name = "PRODUCT:COMPONENT=N,…", help_heading = "Appraisal")]
    pub(crate) min_tcb: Vec<String>,
    /// Lowest accepted report format version (2 accepts every version the parser reads).
    #[arg(long, default_value_t = attest::appraisal::MIN_REPORT_VERSION, help_heading = "Appraisal")]
    pub(crate) min_report_version: u32,
    /// Accept guests whose policy allows a migration agent (policy bit 18) or that are bound to one. The agent
    /// can export the guest's memory.
    #[arg(long, help_heading = "Appraisal")]
    pub(crate) danger_allow_migration_agent: bool,
}

/// Attester selection shared by `attest` and `release-key`.
#[derive(Debug, Args)]
pub(crate) struct AttesterArgs {
    /// Evidence source. There is no default fallback: `snp` fails without the device.
    #[arg(long, value_enum, default_value_t = AttesterKind::Snp)]
    pub(crate) attester: AttesterKind,
    /// With `snp`: the UVM reference info (base64 of the endorsement), read when there is no ACI security context
    /// (default: AKS's node file /opt/confidential-containers/share/kata-containers/reference-info-base64).
    #[arg(long, value_name = "PATH")]
    pub(crate) reference_info_file: Option<PathBuf>,
    /// With `snp`: THIM, asked for the VCEK chain when there is no ACI host certificate (default
    /// http://169.254.169.254/metadata/THIM/amd/certification; https, loopback or that address only).
    #[arg(long, value_name = "URL")]
    pub(crate) thim_url: Option<String>,
    /// Mock fields.
    #[command(flatten)]
    pub(crate) mock: MockArgs,
}

/// How a client reaches the attestation service or vault: which `https://` servers it trusts, and whether it
/// may use plain HTTP beyond loopback. Shared by `attest`, `import-key` and `release-key`.
#[derive(Debug, Args)]
pub(crate) struct ClientTlsArgs {
    /// Trust these CA certificates (PEM) for `https://` instead of the system's.
    #[arg(long, conflicts_with_all = ["tls_pin_cert", "tls_pin_sha256"])]
    pub(crate) tls_ca: Option<PathBuf>,
    /// Trust exactly this server certificate (PEM or DER), such as the one `serve --tls-cert-out` wrote; its
    /// name and dates are not checked.
    #[arg(long, conflicts_with = "tls_pin_sha256")]
    pub(crate) tls_pin_cert: Option<PathBuf>,
    /// Trust the server whose certificate, or whose public key (SubjectPublicKeyInfo), has this SHA-256 (64 hex
    /// digits: either fingerprint `serve --tls-self-signed` prints).
    #[arg(long, value_name = "HEX")]
    pub(crate) tls_pin_sha256: Option<String>,
    /// Use plain `http://` to a host that is not loopback: anyone on the network could read what is sent (keys,
    /// tokens) and substitute what comes back (token-signing keys, released keys). Testing only.
    #[arg(long)]
    pub(crate) dangerously_allow_plain_http: bool,
}

/// `attest`.
#[derive(Debug, Args)]
pub(crate) struct AttestArgs {
    /// Attestation service (MAA endpoint or `cinfer-attest serve` URL).
    #[arg(long)]
    pub(crate) maa: String,
    /// Runtime data file (JSON).
    #[arg(long)]
    pub(crate) runtime_data: PathBuf,
    /// Transport.
    #[command(flatten)]
    pub(crate) tls: ClientTlsArgs,
    /// Attester.
    #[command(flatten)]
    pub(crate) attester: AttesterArgs,
}

/// `import-key`.
#[derive(Debug, Args)]
pub(crate) struct ImportKeyArgs {
    /// Vault (AKV/mHSM endpoint or `cinfer-attest serve` URL).
    #[arg(long)]
    pub(crate) vault: String,
    /// Key name.
    #[arg(long)]
    pub(crate) name: String,
    /// File with the raw key bytes (32 bytes for a model key).
    #[arg(long)]
    pub(crate) key_file: PathBuf,
    /// Release policy JSON file (AKV format).
    #[arg(long)]
    pub(crate) release_policy: PathBuf,
    /// File with the bearer token (admin token for the local broker, AAD token for AKV; at least 16 bytes).
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// Use an IMDS managed identity token instead.
    #[arg(long)]
    pub(crate) imds: bool,
    /// Use an Entra ID token from Azure Workload Identity instead (AKS): needs AZURE_CLIENT_ID, AZURE_TENANT_ID,
    /// AZURE_FEDERATED_TOKEN_FILE and AZURE_AUTHORITY_HOST, as the workload-identity webhook injects them.
    #[arg(long, conflicts_with_all = ["token_file", "imds"])]
    pub(crate) workload_identity: bool,
    /// Import with a release policy that pins neither `x-ms-sevsnpvm-hostdata` nor `x-ms-policy-signer`, or not
    /// `x-ms-sevsnpvm-is-debuggable = false`: the key would be released to other guests. Testing only.
    #[arg(long)]
    pub(crate) dangerously_accept_weak_policy: bool,
    /// Transport.
    #[command(flatten)]
    pub(crate) tls: ClientTlsArgs,
}

/// `release-key`.
#[derive(Debug, Args)]
pub(crate) struct ReleaseKeyArgs {
    /// Attestation service.
    #[arg(long)]
    pub(crate) maa: String,
    /// Vault.
    #[arg(long)]
    pub(crate) vault: String,
    /// Key `name` or `name/version`.
    #[arg(long)]
    pub(crate) key: String,
    /// Output file for the 32-byte key (mode 0600).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// HKDF salt (hex) for RSA keys.
    #[arg(long, default_value = "")]
    pub(crate) salt: String,
    /// HKDF label for RSA keys.
    #[arg(long, default_value = "")]
    pub(crate) label: String,
    /// Bearer token file for the vault (AKV; at least 16 bytes).
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// Use an IMDS managed identity token for the vault.
    #[arg(long)]
    pub(crate) imds: bool,
    /// Use an Entra ID token from Azure Workload Identity for the vault (AKS): needs AZURE_CLIENT_ID,
    /// AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE and AZURE_AUTHORITY_HOST, as the workload-identity webhook
    /// injects them; the federated token file is read for every exchange.
    #[arg(long, conflicts_with_all = ["token_file", "imds"])]
    pub(crate) workload_identity: bool,
    /// Transport (for both `--maa` and `--vault`).
    #[command(flatten)]
    pub(crate) tls: ClientTlsArgs,
    /// Attester.
    #[command(flatten)]
    pub(crate) attester: AttesterArgs,
}

/// `sign-policy`.
#[derive(Debug, Args)]
pub(crate) struct SignPolicyArgs {
    /// Policy text file.
    #[arg(long)]
    pub(crate) policy: PathBuf,
    /// Auditor private key (PKCS#8 PEM, RSA).
    #[arg(long)]
    pub(crate) key: PathBuf,
    /// Auditor certificate (PEM).
    #[arg(long)]
    pub(crate) cert: PathBuf,
    /// Output file for the JWS.
    #[arg(long)]
    pub(crate) out: PathBuf,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// Environment fallbacks allowed: only `serve`'s operator settings. The attestation service is not part of the
    /// confidential container group (it is the authority its operator runs), so its environment is its operator's.
    /// Everything a guest runs (`attest`, `release-key`, `mock-evidence`, ...) takes its settings from the measured
    /// command line only.
    const SAFE_ENV: &[(&str, &str)] = &[
        ("serve", "CINFER_ATTEST_LISTEN"),
        ("serve", "CINFER_ATTEST_ISSUER"),
        ("serve", "CINFER_ATTEST_STATE_DIR"),
        ("serve", "CINFER_ATTEST_ADMIN_TOKEN_FILE"),
    ];

    fn envs(cmd: &clap::Command, out: &mut Vec<(String, String)>) {
        for a in cmd.get_arguments() {
            if let Some(e) = a.get_env() {
                out.push((cmd.get_name().to_owned(), e.to_string_lossy().into_owned()));
            }
        }
        for sub in cmd.get_subcommands() {
            envs(sub, out);
        }
    }

    #[test]
    fn only_the_services_operator_settings_come_from_the_environment() {
        let mut found = Vec::new();
        envs(&Cli::command(), &mut found);
        let extra: Vec<&(String, String)> = found
            .iter()
            .filter(|(cmd, var)| !SAFE_ENV.contains(&(cmd.as_str(), var.as_str())))
            .collect();
        assert!(extra.is_empty(), "flags that read the environment: {extra:?}");
    }
}
