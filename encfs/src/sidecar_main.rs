//! `cinfer-encfs sidecar`: command-line arguments and the glue to [`encfs::sidecar::run`].

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use encfs::sidecar::config::SidecarConfig;
use encfs::sidecar::release::Backoff;
use encfs::sidecar::toml_config::{AttesterChoice, AttesterSection, SidecarFile};
use encfs::sidecar::{Delivery, SidecarOptions, run};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

/// Arguments of `sidecar`.
#[derive(Debug, Args)]
pub(crate) struct SidecarArgs {
    /// The seed's `EncfsSideCarArgs`: standard base64 of its JSON (or the JSON itself). Several filesystems are
    /// mounted in parallel, each only after attested key release and verification.
    #[arg(long = "args", env = sidecar_args::ENV_VAR, value_name = "B64", hide_env_values = true)]
    pub(crate) sidecar_args: Option<String>,
    /// Read `EncfsSideCarArgs` (base64 or JSON) from this file instead.
    #[arg(long, value_name = "PATH", conflicts_with = "sidecar_args")]
    pub(crate) args_file: Option<PathBuf>,
    /// cinfer's own config file (TOML, strict: unknown fields are errors), instead of `EncfsSideCarArgs`; its
    /// `[attester]` section applies unless the flags below override it. Format: `docs/SIDECAR.md`.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["sidecar_args", "args_file"])]
    pub(crate) config: Option<PathBuf>,
    /// Evidence source: `snp` (the SEV-SNP guest device; fails without it; the default) or `mock` (testing only:
    /// needs --mock-root-dir).
    #[arg(long, value_enum)]
    pub(crate) attester: Option<AttesterKind>,
    /// With `--attester mock`: the mock root directory written by `cinfer-attest mock-init --out DIR`.
    #[arg(long, value_name = "DIR")]
    pub(crate) mock_root_dir: Option<PathBuf>,
    /// With `--attester mock`: the report's host_data (64 hex digits; default zeros).
    #[arg(long, value_name = "HEX")]
    pub(crate) mock_host_data: Option<String>,
    /// With `--attester mock`: the launch measurement (96 hex digits; default zeros).
    #[arg(long, value_name = "HEX")]
    pub(crate) mock_measurement: Option<String>,
    /// With `--attester mock`: add mock GPUs' evidence (directory from `cinfer-attest mock-gpu-init`), each GPU's
    /// nonce derived from the report_data (composite evidence, for keys whose release policy requires GPUs).
    #[arg(long, value_name = "DIR")]
    pub(crate) mock_gpu_dir: Option<PathBuf>,
    /// With the SEV-SNP attester: the UVM reference info (base64 of the endorsement), read when there is no ACI
    /// security context (default: AKS's node file
    /// /opt/confidential-containers/share/kata-containers/reference-info-base64, mounted by a hostPath).
    #[arg(long, value_name = "PATH")]
    pub(crate) reference_info_file: Option<PathBuf>,
    /// With the SEV-SNP attester: THIM, asked for the VCEK chain when there is no ACI host certificate (default
    /// http://169.254.169.254/metadata/THIM/amd/certification; https, loopback or that address only).
    #[arg(long, value_name = "URL")]
    pub(crate) thim_url: Option<String>,
    /// Directory for readiness files: `filesystem-<i>.ready` (JSON: mount point, root), `filesystem-<i>.failed`
    /// (JSON: step, error) and `ready` once all are mounted.
    #[arg(long, value_name = "DIR")]
    pub(crate) ready_dir: Option<PathBuf>,
    /// Serve `/ready`, `/status` and `/metrics` (Prometheus) on this address, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// Attempts per key release when failures are transient (network, 5xx, 429); policy denials are final.
    #[arg(long, default_value_t = 6)]
    pub(crate) release_attempts: u32,
    /// Mount filesystems that pin neither a root (`cinfer_expect_root`) nor a signer (`cinfer_signer_key`).
    /// Without it they are refused before any key is released: any image sealed with the released key would be
    /// served. Testing only (a flag, not an environment variable: the platform measures the command line).
    #[arg(long)]
    pub(crate) allow_unpinned: bool,
}

/// Arguments of `sidecar`: [`SidecarArgs`] and the FUSE settings.
#[derive(Debug, Args)]
pub(crate) struct SidecarCmd {
    #[command(flatten)]
    pub(crate) common: SidecarArgs,
    #[command(flatten)]
    pub(crate) fuse: FuseArgs,
}

/// FUSE settings of `sidecar` (`extract` mounts nothing).
#[derive(Debug, Args)]
pub(crate) struct FuseArgs {
    /// Let other users access the mounts (containers reading as another uid).
    #[arg(long)]
    pub(crate) allow_other: bool,
    /// FUSE request threads per mount, 1 to 64 (fewer, with a warning, when the open-file limit has no room).
    #[arg(long, default_value_t = encfs::fuse::REMOTE_THREADS as u16,
          value_parser = clap::value_parser!(u16).range(1..=encfs::fuse::MAX_THREADS as i64), help_heading = "Tuning")]
    pub(crate) threads: u16,
    #[command(flatten)]
    pub(crate) transport: crate::cli::TransportArg,
}

/// Evidence source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum AttesterKind {
    /// The SEV-SNP guest device.
    Snp,
    /// The mock attester (testing only).
    Mock,
}

fn hex_array<const N: usize>(name: &str, s: Option<&String>) -> anyhow::Result<[u8; N]> {
    let mut out = [0u8; N];
    if let Some(s) = s
        && hex::decode_to_slice(s.trim(), &mut out).is_err()
    {
        bail!("{name} must be {} hex digits", N * 2);
    }
    Ok(out)
}

impl SidecarArgs {
    /// The filesystems, and the attester section of a `--config` file.
    fn config(&self) -> anyhow::Result<(SidecarConfig, Option<AttesterSection>)> {
        if let Some(p) = &self.config {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let file = SidecarFile::parse(&text).with_context(|| p.display().to_string())?;
            return file.into_config().with_context(|| p.display().to_string());
        }
        let value = match (&self.sidecar_args, &self.args_file) {
            (_, Some(p)) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            (Some(v), None) => v.clone(),
            (None, None) => bail!("no configuration: set EncfsSideCarArgs (or --args / --args-file / --config)"),
        };
        Ok((SidecarConfig::from_env_value(&value)?, None))
    }

    /// The evidence source: the flags, else the config file's `[attester]`, else the SEV-SNP device.
    fn attester(&self, file: Option<AttesterSection>) -> anyhow::Result<Arc<dyn attest::evidence::Attester>> {
        let file = file.unwrap_or_default();
        let kind = self.attester.unwrap_or(match file.kind {
            AttesterChoice::Snp => AttesterKind::Snp,
            AttesterChoice::Mock => AttesterKind::Mock,
        });
        let mock_root_dir = self.mock_root_dir.as_ref().or(file.mock_root_dir.as_ref());
        match kind {
            AttesterKind::Snp => {
                if mock_root_dir.is_some() || self.mock_gpu_dir.is_some() {
                    bail!("a mock root or mock GPU directory is only valid with the mock attester");
                }
                let sources =
                    attest::evidence::HostSources::platform(self.reference_info_file.clone(), self.thim_url.clone());
                Ok(Arc::new(
                    attest::evidence::SnpDeviceAttester::open_with(&sources)
                        .context("opening the SEV-SNP guest device")?,
                ))
            }
            AttesterKind::Mock => {
                let dir = mock_root_dir.context(
                    "the mock attester needs --mock-root-dir DIR (from `cinfer-attest mock-init --out DIR`)",
                )?;
                warn!(
                    "!!! MOCK ATTESTER: evidence is NOT from SEV-SNP hardware; keys are released only by services that \
                     explicitly trust this mock root. Never use this in production. !!!"
                );
                let root = attest::evidence::MockRoot::load(dir)
                    .with_context(|| format!("loading mock root {}", dir.display()))?;
                let config = attest::evidence::MockConfig {
                    host_data: hex_array(
                        "mock host_data",
                        self.mock_host_data.as_ref().or(file.mock_host_data.as_ref()),
                    )?,
                    measurement: hex_array(
                        "mock measurement",
                        self.mock_measurement.as_ref().or(file.mock_measurement.as_ref()),
                    )?,
                    ..Default::default()
                };
                let cpu = Arc::new(attest::evidence::MockAttester::new(&root, config)?);
                let Some(gpu_dir) = &self.mock_gpu_dir else {
                    return Ok(cpu);
                };
                let gpus = attest::gpu::mock::MockGpuAttester::load(gpu_dir)
                    .with_context(|| format!("loading mock GPUs {}", gpu_dir.display()))?;
                warn!(
                    count = gpus.config().count,
                    "!!! MOCK GPUs: GPU evidence is NOT from NVIDIA hardware !!!"
                );
                Ok(Arc::new(attest::evidence::CompositeAttester::new(cpu, Arc::new(gpus))))
            }
        }
    }
}

/// Runs the sidecar (`fuse`: mount, until SIGTERM/SIGINT; exit 0 after a clean unmount) or extracts (`None`:
/// exit 0 once every filesystem's files are written and checked).
pub(crate) fn run_sidecar(args: &SidecarArgs, fuse: Option<&FuseArgs>) -> anyhow::Result<()> {
    let (config, attester_section) = args.config()?;
    let attester = args.attester(attester_section)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("cinfer-sidecar-rt")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (mut sigterm, mut sigint) = {
        let _guard = rt.enter();
        (
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        )
    };
    let listener = match &args.listen {
        Some(addr) => {
            let l = rt
                .block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| format!("listening on {addr}"))?;
            info!(addr = %l.local_addr().context("listener address")?, "serving /ready, /status, /metrics");
            Some(l)
        }
        None => None,
    };
    let opts = SidecarOptions {
        attester,
        ready_dir: args.ready_dir.clone(),
        listener,
        backoff: Backoff {
            attempts: args.release_attempts.max(1),
            ..Backoff::default()
        },
        delivery: match fuse {
            Some(fuse) => Delivery::Mount(encfs::fuse::MountConfig {
                threads: usize::from(fuse.threads),
                allow_other: fuse.allow_other,
                transport: fuse.transport.transport,
                ..encfs::fuse::MountConfig::default()
            }),
            None => Delivery::Extract,
        },
        on_ready: None,
        allow_unpinned: args.allow_unpinned,
    };
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => info!("SIGTERM"),
            _ = sigint.recv() => info!("SIGINT"),
        }
    };
    run(&rt, config, opts, shutdown)?;
    Ok(())
}
