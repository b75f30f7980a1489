//! Command-line interface of `cinfer-deploy`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
