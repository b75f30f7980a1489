//! `cinfer-init`: forces inbound traffic through the server proxy (see `cinfer-init --help`).

mod cli;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command, CommonArgs};
use init::{Backend, Change, IptablesRestore, Recording};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CINFER_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cinfer-init: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Apply { plan, common } => {
            let real = IptablesRestore {
                flavor: common.iptables.flavor(),
            };
            let plan = plan.plan();
            let changes = with_backend(&real, &common, |b| {
                init::apply(b, &plan, common.families.list(), common.dry_run)
            })
            .context("applying the inbound redirect")?;
            report(&changes, &common);
        }
        Command::Clean { common } => {
            let real = IptablesRestore {
                flavor: common.iptables.flavor(),
            };
            let changes = with_backend(&real, &common, |b| {
                init::clean(b, common.families.list(), common.dry_run)
            })
            .context("removing cinfer rules")?;
            report(&changes, &common);
        }
    }
    Ok(())
}

/// Runs `f` on the real backend; a dry run that cannot read the rules (no iptables, not root) assumes none.
fn with_backend(
    real: &IptablesRestore,
    common: &CommonArgs,
    f: impl Fn(&dyn Backend) -> Result<Vec<Change>, init::InitError>,
) -> Result<Vec<Change>, init::InitError> {
    match f(real) {
        Err(init::InitError::Backend {
            family,
            source: init::BackendError::Spawn { program, .. },
        }) if common.dry_run => {
            tracing::warn!(%family, %program, "cannot read the current rules; showing the script for an empty rule set");
            f(&Recording::default())
        }
        other => other,
    }
}

fn report(changes: &[Change], common: &CommonArgs) {
    for change in changes {
        match (&change.script, common.dry_run) {
            (Some(script), true) => print!("# {} (iptables-restore --noflush)\n{script}", change.family),
            (None, true) => println!("# {}: nothing to do", change.family),
            (Some(_), false) => eprintln!("{}: done", change.family),
            (None, false) => eprintln!("{}: nothing of ours to remove", change.family),
        }
    }
}
