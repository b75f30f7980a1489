//! Command-line interface of `cinfer-deploy`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Exit status: 0 success; 1 error (config, policy file, or a rendered output failed its structural check); 2 usage.
Environment: CINFER_LOG  log filter (tracing EnvFilter syntax), default `warn`.
See docs/DEPLOY.md for the config reference and the two-step policy workflow.";

/// Renders cinfer deployments (Azure Container Instances, Kubernetes) and their policies from one config file.
#[derive(Debug, Parser)]
#[command(name = "cinfer-deploy", version, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Renders a deployment into a directory.
    Render {
        #[command(subcommand)]
        target: Target,
    },
    /// Prints the hostdata (SHA-256 of the decoded policy, lowercase hex) of a security policy file.
    Hostdata {
        /// Base64 policy (`--print-policy` output), or an ARM template / parameters file holding `ccePolicy`.
        policy: PathBuf,
    },
    /// Runs the whole pipeline on this machine as processes (mock attester, Azurite, encfs sidecar, Triton,
    /// attested proxies), prints where to send requests, runs one example inference, then serves until Ctrl-C.
    #[command(after_help = LOCAL_AFTER_HELP)]
    Local(LocalArgs),
}

const LOCAL_AFTER_HELP: &str = "\
Exit status: 0 after Ctrl-C (SIGINT) or SIGTERM with everything stopped and unmounted, or after --once; 1 error
(a stage failed: the message names it and shows the end of its log; with --once, also a model Triton could not
load: its name and Triton's reason are printed); 130 interrupted while starting.
What runs is the rendered deployment (`render aci` of --config or the example config) with only its addresses
substituted; the rendered files are in <work>/rendered and docs/DEPLOY.md lists the substitutions.
Needs: the workspace binaries next to this one (or CINFER_BIN_DIR), the Python environment of scripts/pyenv.sh
(or CINFER_PYTHON), Azurite for the default image store (scripts/azurite.sh, or CINFER_AZURITE), /dev/fuse.
Ports 0 mean any free port. Without --config, the proxy ports are the config defaults (15006, health 15021,
model server 8000).";

/// Where `cinfer-deploy local` serves the image from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StoreArg {
    /// Azurite (Azure Blob API, uploaded with `cinfer-mkimage upload`, read with a SAS).
    Azurite,
    /// A local HTTP server with Range support.
    Http,
}

/// Which rendered deployment `cinfer-deploy local` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LayoutArg {
    /// `render aci`: the encfs sidecar mounts the image with FUSE beside the model server.
    Aci,
    /// `render k8s`: the pod's init container extracts the verified files (no FUSE), then the containers start.
    K8s,
}

#[derive(Debug, Args)]
pub(crate) struct LocalArgs {
    /// Exit after the example inference instead of serving until Ctrl-C.
    #[arg(long)]
    pub(crate) once: bool,
    /// Also build `classifier_large` with N MiB of weights, to stream a large model through the mount.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) large_mb: u32,
    /// Serve this Triton model repository instead of generating the example classifier.
    #[arg(long, value_name = "DIR")]
    pub(crate) models: Option<PathBuf>,
    /// Where the encrypted image is served from.
    #[arg(long, value_enum, default_value = "azurite")]
    pub(crate) image_store: StoreArg,
    /// Which rendered deployment to run: the ACI container group or the Kubernetes pod.
    #[arg(long, value_enum, default_value = "aci")]
    pub(crate) layout: LayoutArg,
    /// Work directory (image, keys, logs, mount point); kept. Default: a temporary directory, removed on exit.
    #[arg(long, value_name = "DIR")]
    pub(crate) work: Option<PathBuf>,
    /// Keep the temporary work directory.
    #[arg(long)]
    pub(crate) keep: bool,
    /// The deployment config to render and run (TOML, or YAML when it ends in .yaml/.yml) [default: the example
    /// config, deploy/examples/cinfer.toml]. Its pin and signer are set to the image built here; its `[proxy]`
    /// ports are the default local ports.
    #[arg(short, long)]
    pub(crate) config: Option<PathBuf>,
    /// Give the confidential container N mock GPUs (default 1 with a bare `--gpu`): composite evidence (SEV-SNP +
    /// GPUs, bound to one runtime data); the key's release policy and the client policy then require N GPUs in CC
    /// mode, not in DevTools mode, with measurements matching their RIMs; prints a composite token's GPU claims
    /// and the key refused to the same guest without GPU evidence.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "1")]
    pub(crate) gpu: Option<u32>,
    /// Ports (0: any free port).
    #[command(flatten)]
    pub(crate) ports: LocalPorts,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Ports")]
pub(crate) struct LocalPorts {
    /// Server proxy (attested TLS), where requests go [default: config proxy.port, 15006].
    #[arg(long, value_name = "PORT")]
    pub(crate) proxy_port: Option<u16>,
    /// Server proxy health [default: config proxy.health_port, 15021].
    #[arg(long, value_name = "PORT")]
    pub(crate) health_port: Option<u16>,
    /// Model server (Triton) HTTP on loopback [default: config proxy.upstream_port, 8000].
    #[arg(long, value_name = "PORT")]
    pub(crate) model_server_port: Option<u16>,
    /// Client proxy, the clients' http_proxy.
    #[arg(long, value_name = "PORT", default_value_t = 15001)]
    pub(crate) client_proxy_port: u16,
    /// Attestation service + key broker.
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub(crate) attest_port: u16,
    /// Image store (Azurite or the HTTP range server).
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub(crate) store_port: u16,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Target {
    /// Confidential container group for ACI: template.json, parameters.json, policies.
    Aci(RenderArgs),
    /// Confidential pods for Kubernetes: deployment.yaml, service.yaml, policies.
    K8s(RenderArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RenderArgs {
    /// The config file (TOML, or YAML when it ends in .yaml/.yml).
    #[arg(short, long, env = "CINFER_DEPLOY_CONFIG")]
    pub(crate) config: PathBuf,
    /// Output directory (created if missing; files in it are overwritten).
    #[arg(short, long)]
    pub(crate) output: PathBuf,
    /// The security policy: `az confcom acipolicygen --print-policy` (ACI) or `katapolicygen --print-policy`
    /// (Kubernetes) output, or an ARM template/parameters file holding `ccePolicy`. Without it, the deployment is
    /// rendered for the policy generator and the policies are not written.
    #[arg(short, long)]
    pub(crate) policy: Option<PathBuf>,
}
