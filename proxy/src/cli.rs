//! Command line (clap): `server`, `client`, `generate-policy`.
//!
//! Exit codes: 0 success, 1 any error (printed with its causes), 2 usage error.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use attest::client::AttestationClient;
use attest::evidence::{Attester, HostSources, MockAttester, MockConfig, MockRoot, SnpDeviceAttester};
use attest::token::Jwks;
use clap::{Args, Parser, Subcommand, ValueEnum};
use proxy::atls::limit::FreshLimits;
use proxy::atls::{TokenIssuer, VerifierConfig};
use proxy::client::ClientConfig;
use proxy::policy::ClientPolicy;
use proxy::server::{AtlsServer, IdentitySource, ServerConfig};

/// Attested TLS for cinfer: the server proxy in front of Triton and the client proxy that verifies it.
#[derive(Debug, Parser)]
#[command(
    name = "cinfer-proxy",
    version,
    about,
    after_help = "Logs: CINFER_LOG (tracing filter, default info).\nExit codes: 0 ok, 1 error, 2 usage."
)]
pub(crate) struct Cli {
    /// Worker threads of the async runtime (default: one per core).
    #[arg(long, global = true, env = "CINFER_PROXY_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Attested TLS 1.3 server in front of the upstream (inside the TEE).
    Server(ServerArgs),
    /// HTTP forward proxy (http_proxy / CONNECT) that opens attested TLS to targets and verifies them.
    Client(ClientArgs),
    /// Write the seed's client policy JSON (hostdata-pinned or policy-signer-pinned).
    GeneratePolicy(GeneratePolicyArgs),
}

/// Which attester produces evidence.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum AttesterKind {
    /// The SNP guest device (`/dev/sev-guest` or `/dev/sev`); fails when absent.
    Snp,
    /// The mock attester (needs `--mock-root`). Local testing only.
    Mock,
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Attested TLS listen address.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: String,
    /// Upstream (Triton HTTP).
    #[arg(long, default_value = "127.0.0.1:8000")]
    upstream: String,
    /// Upstream for HTTP/2 prior-knowledge connections (Triton gRPC); default: --upstream.
    #[arg(long)]
    grpc_upstream: Option<String>,
    /// Plain-HTTP health listen address (exclude this port from the init redirect).
    #[arg(long)]
    health: Option<String>,
    /// Attestation service (MAA or `cinfer-attest serve`).
    #[arg(long)]
    attestation_url: String,
    /// Evidence source.
    #[arg(long, value_enum, default_value_t = AttesterKind::Snp)]
    attester: AttesterKind,
    /// With `--attester snp`: the UVM reference info (base64 of the endorsement), read when there is no ACI
    /// security context (default: AKS's node file
    /// /opt/confidential-containers/share/kata-containers/reference-info-base64, mounted by a hostPath).
    #[arg(long, value_name = "PATH")]
    reference_info_file: Option<PathBuf>,
    /// With `--attester snp`: THIM, asked for the VCEK chain when there is no ACI host certificate (default
    /// http://169.254.169.254/metadata/THIM/amd/certification; https, loopback or that address only).
    #[arg(long, value_name = "URL")]
    thim_url: Option<String>,
    /// Certificate subject name.
    #[arg(long, default_value = "cinfer")]
    name: String,
    /// Accept a plain `http://` attestation service that is not on a loopback address (tokens over it can be
    /// substituted by the network).
    #[arg(long)]
    dangerously_allow_plain_http: bool,
    /// Rotate the key and token this many seconds before the token expires (not before its half-life).
    #[arg(long, default_value_t = 120)]
    rotate_margin_secs: u64,
    /// Fresh tokens (strict freshness) made at once; beyond, clients get 429.
    #[arg(long, default_value_t = FreshLimits::default().concurrent, help_heading = "Fresh-token limits")]
    fresh_concurrent: usize,
    /// Fresh tokens per second on average, over all clients.
    #[arg(long, default_value_t = FreshLimits::default().rate, help_heading = "Fresh-token limits")]
    fresh_rate: f64,
    /// Fresh tokens in a burst above the average.
    #[arg(long, default_value_t = FreshLimits::default().burst, help_heading = "Fresh-token limits")]
    fresh_burst: f64,
    /// Fresh tokens on one connection.
    #[arg(long, default_value_t = FreshLimits::default().per_connection, help_heading = "Fresh-token limits")]
    fresh_per_connection: u32,
    /// Mock attester fields.
    #[command(flatten)]
    mock: MockArgs,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Mock attester (--attester mock)")]
struct MockArgs {
    /// Mock root directory (`cinfer-attest mock-init`).
    #[arg(long)]
    mock_root: Option<PathBuf>,
    /// host_data (64 hex digits).
    #[arg(long)]
    mock_host_data: Option<String>,
    /// Launch measurement (96 hex digits).
    #[arg(long)]
    mock_measurement: Option<String>,
    /// Set the debug bit.
    #[arg(long)]
    mock_debug: bool,
    /// Add mock GPUs' evidence (directory from `cinfer-attest mock-gpu-init`), bound to the same report_data.
    #[arg(long)]
    mock_gpu_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// HTTP proxy listen address (point http_proxy here).
    #[arg(long, env = "CINFER_PROXY_CLIENT_LISTEN", default_value = "127.0.0.1:15001")]
    listen: String,
    /// Client policy JSON (`generate-policy`).
    #[arg(long)]
    policy: PathBuf,
    /// Trusted attestation service: its JWKS is fetched once at start (unless --jwks) and pinned; its URL
    /// is the expected issuer (unless --issuer).
    #[arg(long)]
    attestation_url: Option<String>,
    /// Pinned token-signing keys (JWKS JSON file) instead of fetching them.
    #[arg(long)]
    jwks: Option<PathBuf>,
    /// Expected token issuer (default: --attestation-url).
    #[arg(long)]
    issuer: Option<String>,
    /// Per-connection freshness: a nonce and the TLS exporter bound into a fresh token.
    #[arg(long)]
    strict_freshness: bool,
    /// Clock-skew allowance for token exp/nbf, seconds.
    #[arg(long, default_value_t = 60)]
    leeway_secs: u64,
    /// Close pooled connections idle this long, seconds.
    #[arg(long, default_value_t = 60)]
    pool_idle_secs: u64,
    /// Fetch the JWKS from a plain `http://` attestation service that is not on a loopback address. Whoever
    /// answers on the network could then mint tokens for its own TLS key: testing only (or pin --jwks).
    #[arg(long)]
    dangerously_allow_plain_http: bool,
    /// Accept a client policy that pins neither hostdata nor a policy signer, or does not pin a non-debuggable
    /// guest. Such a policy trusts other SNP guests: testing only.
    #[arg(long)]
    dangerously_accept_weak_policy: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("pin").required(true).multiple(false)))]
struct GeneratePolicyArgs {
    /// Pin x-ms-sevsnpvm-hostdata (the CCE policy digest, 64 hex digits).
    #[arg(long, group = "pin")]
    hostdata: Option<String>,
    /// Pin x-ms-policy-signer to this certificate (PEM or DER).
    #[arg(long, group = "pin", value_name = "CERT.pem")]
    policysigner: Option<PathBuf>,
    /// Output file (default: stdout).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Also require at least this many GPUs in the server's composite token, in CC mode, not in DevTools mode,
    /// with measurements matching their RIMs.
    #[arg(long, value_name = "N", help_heading = "GPU requirements")]
    gpus: Option<u32>,
    /// With --gpus: lowest driver version accepted (e.g. 550.90.07).
    #[arg(long, requires = "gpus", help_heading = "GPU requirements")]
    gpu_min_driver: Option<String>,
    /// With --gpus: lowest VBIOS version accepted (e.g. 96.00.9F.00.01).
    #[arg(long, requires = "gpus", help_heading = "GPU requirements")]
    gpu_min_vbios: Option<String>,
}

pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::GeneratePolicy(a) => generate_policy(&a),
        Command::Server(a) => runtime(cli.threads)?.block_on(server(a)),
        Command::Client(a) => runtime(cli.threads)?.block_on(client(a)),
    }
}

fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    builder.enable_all().build().context("starting the async runtime")
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

fn generate_policy(a: &GeneratePolicyArgs) -> anyhow::Result<()> {
    let policy = match (&a.hostdata, &a.policysigner) {
        (Some(h), _) => ClientPolicy::hostdata(h)?,
        (None, Some(path)) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            ClientPolicy::policy_signer_cert(&bytes)?
        }
        (None, None) => bail!("give --hostdata or --policysigner"),
    };
    let policy = match a.gpus {
        None => policy,
        Some(n) => policy.require_gpus(&attest::gpu::requirement::GpuRequirement {
            min_driver: a.gpu_min_driver.clone(),
            min_vbios: a.gpu_min_vbios.clone(),
            ..attest::gpu::requirement::GpuRequirement::gpus(n)
        })?,
    };
    let json = policy.to_json_pretty() + "\n";
    match &a.output {
        Some(p) => std::fs::write(p, json).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{json}"),
    }
    Ok(())
}

fn hex_array<const N: usize>(s: &str, what: &str) -> anyhow::Result<[u8; N]> {
    let v = hex::decode(s.trim()).with_context(|| format!("{what}: not hex"))?;
    v.try_into()
        .map_err(|_| anyhow::anyhow!("{what}: expected {} hex digits", 2 * N))
}

fn attester(a: &ServerArgs) -> anyhow::Result<Arc<dyn Attester>> {
    let m = &a.mock;
    Ok(match a.attester {
        AttesterKind::Snp => {
            let sources = HostSources::platform(a.reference_info_file.clone(), a.thim_url.clone());
            Arc::new(SnpDeviceAttester::open_with(&sources).context("opening the SNP guest device")?)
        }
        AttesterKind::Mock => {
            let dir = m.mock_root.as_ref().context("--attester mock needs --mock-root")?;
            let root = MockRoot::load(dir).with_context(|| format!("loading the mock root from {}", dir.display()))?;
            let mut config = MockConfig {
                debuggable: m.mock_debug,
                ..MockConfig::default()
            };
            if let Some(h) = &m.mock_host_data {
                config.host_data = hex_array(h, "--mock-host-data")?;
            }
            if let Some(h) = &m.mock_measurement {
                config.measurement = hex_array(h, "--mock-measurement")?;
            }
            tracing::warn!("using the MOCK attester: evidence is not from an SNP guest");
            let cpu = Arc::new(MockAttester::new(&root, config).context("building the mock attester")?);
            match &m.mock_gpu_dir {
                None => cpu,
                Some(dir) => {
                    let gpus = attest::gpu::mock::MockGpuAttester::load(dir)
                        .with_context(|| format!("loading the mock GPUs from {}", dir.display()))?;
                    tracing::warn!(count = gpus.config().count, "adding MOCK GPU evidence");
                    Arc::new(attest::evidence::CompositeAttester::new(cpu, Arc::new(gpus)))
                }
            }
        }
    })
}

async fn server(a: ServerArgs) -> anyhow::Result<()> {
    let att = attester(&a)?;
    attest::transport::check_endpoint("--attestation-url", &a.attestation_url, a.dangerously_allow_plain_http)?;
    let client = AttestationClient::new(&a.attestation_url).context("attestation client")?;
    let issuer = Arc::new(TokenIssuer::new(client, att));
    let config = ServerConfig {
        upstream: a.upstream,
        grpc_upstream: a.grpc_upstream,
        name: a.name,
        rotate_margin: Duration::from_secs(a.rotate_margin_secs),
        fresh_limits: FreshLimits {
            concurrent: a.fresh_concurrent.max(1),
            rate: a.fresh_rate.max(0.01),
            burst: a.fresh_burst.max(1.0),
            per_connection: a.fresh_per_connection,
        },
        ..ServerConfig::default()
    };
    let server = AtlsServer::new(config, IdentitySource::Attested(issuer))
        .await
        .context("getting the first attested identity")?;
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    if let Some(h) = &a.health {
        let health = tokio::net::TcpListener::bind(h)
            .await
            .with_context(|| format!("binding {h}"))?;
        let s = server.clone();
        tokio::spawn(async move { s.run_health(health, std::future::pending::<()>()).await });
    }
    server.run(listener, shutdown_signal()).await.context("serving")
}

async fn client(a: ClientArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&a.policy).with_context(|| format!("reading {}", a.policy.display()))?;
    let policy = ClientPolicy::from_json(&bytes)?;
    match policy.require_pins() {
        Ok(()) => {}
        Err(e) if a.dangerously_accept_weak_policy => {
            tracing::warn!("!!! {e}: accepted because of --dangerously-accept-weak-policy (testing only) !!!");
        }
        Err(e) => return Err(e).with_context(|| a.policy.display().to_string()),
    }
    if let (None, Some(url)) = (&a.jwks, &a.attestation_url) {
        attest::transport::check_endpoint("--attestation-url", url, a.dangerously_allow_plain_http)?;
    }
    let jwks = match (&a.jwks, &a.attestation_url) {
        (Some(path), _) => {
            let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Jwks::from_json(&b).with_context(|| format!("parsing {}", path.display()))?
        }
        (None, Some(url)) => AttestationClient::new(url)?
            .jwks()
            .await
            .with_context(|| format!("fetching the pinned JWKS from {url}"))?,
        (None, None) => bail!("give --attestation-url (JWKS fetched once and pinned) or --jwks"),
    };
    let issuer = match (&a.issuer, &a.attestation_url) {
        (Some(i), _) => i.clone(),
        (None, Some(url)) => AttestationClient::new(url)?.url().to_string(),
        (None, None) => bail!("give --issuer or --attestation-url"),
    };
    let mut verifier = VerifierConfig::new(jwks, issuer, policy);
    verifier.leeway = Duration::from_secs(a.leeway_secs);
    let mut config = ClientConfig::new(verifier);
    config.strict_freshness = a.strict_freshness;
    config.pool_idle_timeout = Duration::from_secs(a.pool_idle_secs);
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    proxy::client::run(listener, config, shutdown_signal())
        .await
        .context("serving")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// The environment variables a flag may fall back to. A security setting must come from the (measured)
    /// command line: a host able to add environment to the container must not be able to redirect the
    /// decrypted upstream, swap the attestation service or the client policy. Only these are safe:
    /// `CINFER_PROXY_THREADS` tunes the runtime; `CINFER_PROXY_CLIENT_LISTEN` is the client proxy's local
    /// address on the client's own machine.
    const SAFE_ENV: &[&str] = &["CINFER_PROXY_THREADS", "CINFER_PROXY_CLIENT_LISTEN"];

    fn envs(cmd: &clap::Command, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            if let Some(e) = a.get_env() {
                out.push(format!("{} --{}: {}", cmd.get_name(), a.get_id(), e.to_string_lossy()));
            }
        }
        for sub in cmd.get_subcommands() {
            envs(sub, out);
        }
    }

    #[test]
    fn security_settings_never_fall_back_to_the_environment() {
        let mut found = Vec::new();
        envs(&Cli::command(), &mut found);
        let unsafe_env: Vec<&String> = found
            .iter()
            .filter(|f| !SAFE_ENV.iter().any(|s| f.ends_with(&format!(": {s}"))))
            .collect();
        assert!(unsafe_env.is_empty(), "flags that read the environment: {unsafe_env:?}");
    }
}
