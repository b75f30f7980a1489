//! `cinfer-deploy`: renders ACI and Kubernetes deployments and their policies, and runs the whole pipeline on
//! this machine (`local`); see `cinfer-deploy --help`.

mod cli;
mod local_cmd;

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use cli::{Cli, Command, RenderArgs, Target};
use deploy::canonical::to_json_compact;
use deploy::{Bundle, DeployConfig, SecurityPolicy, SignerJwk, render_aci, render_k8s, validate};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CINFER_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Command::Local(args) = &cli.command {
        return match local_cmd::run(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("cinfer-deploy: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cinfer-deploy: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Hostdata { policy } => {
            println!("{}", read_policy(&policy)?.host_data());
        }
        Command::Local(_) => unreachable!("handled in main"),
        Command::Render { target } => {
            let (args, aci) = match &target {
                Target::Aci(args) => (args, true),
                Target::K8s(args) => (args, false),
            };
            let (config, policy, signer) = load(args)?;
            let bundle = if aci {
                render_aci(&config, policy.as_ref(), signer.as_ref())
            } else {
                render_k8s(&config, policy.as_ref(), signer.as_ref())?
            };
            check(&bundle, aci, policy.is_some())?;
            bundle
                .write(&args.output)
                .with_context(|| format!("writing {}", args.output.display()))?;
            summarize(&bundle, args, &config, aci);
        }
    }
    Ok(())
}

fn read_policy(path: &std::path::Path) -> anyhow::Result<SecurityPolicy> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    SecurityPolicy::parse(&text).with_context(|| format!("security policy {}", path.display()))
}

fn load(args: &RenderArgs) -> anyhow::Result<(DeployConfig, Option<SecurityPolicy>, Option<SignerJwk>)> {
    let config = DeployConfig::load(&args.config)?;
    let policy = args.policy.as_deref().map(read_policy).transpose()?;
    let signer = match &config.policy_signer {
        Some(signer) => {
            let base = args.config.parent().unwrap_or(std::path::Path::new("."));
            let path = base.join(&signer.certificate);
            let pem = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            Some(SignerJwk::from_pem(&pem).with_context(|| format!("policy signer {}", path.display()))?)
        }
        None => None,
    };
    Ok((config, policy, signer))
}

/// Parses the rendered files back and runs the structural checks; refuses to write a broken bundle.
fn check(bundle: &Bundle, aci: bool, with_policy: bool) -> anyhow::Result<()> {
    let json = |name: &str| -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(bundle.file(name).unwrap_or_default()).with_context(|| format!("re-reading {name}"))
    };
    let yaml = |name: &str| -> anyhow::Result<serde_json::Value> {
        serde_norway::from_str(bundle.file(name).unwrap_or_default()).with_context(|| format!("re-reading {name}"))
    };
    let problems = if aci {
        validate::check_arm(&json("template.json")?, &json("parameters.json")?, with_policy)
    } else {
        validate::check_k8s(&yaml("deployment.yaml")?, &yaml("service.yaml")?, with_policy)
    };
    if !problems.is_empty() {
        bail!("the rendered deployment is not valid:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

fn summarize(bundle: &Bundle, args: &RenderArgs, config: &DeployConfig, aci: bool) {
    eprintln!("wrote {}:", args.output.display());
    for file in &bundle.files {
        eprintln!("  {}", file.name);
    }
    if let Some(host_data) = bundle.host_data {
        eprintln!("hostdata: {host_data}");
        if let Some(policy) = bundle.file("client-policy-hostdata.json")
            && let Ok(value) = serde_json::from_str::<serde_json::Value>(policy)
        {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(to_json_compact(&value));
            eprintln!("client policy (hostdata form, base64 for ATTESTATION_POLICY): {b64}");
        }
        let policy = args.output.join("client-policy-hostdata.json");
        eprintln!(
            "client: cinfer-proxy client --policy {} --attestation-url https://{}",
            policy.display(),
            config.attestation.authority
        );
        eprintln!(
            "then:   curl --proxy http://127.0.0.1:15001 http://<{}>:{}/v2/health/ready",
            if aci {
                "the group's IP (template output ipAddress)"
            } else {
                "the Service's external IP"
            },
            config.proxy.public_port
        );
    }
    for note in &bundle.notes {
        eprintln!("note: {note}");
    }
}
