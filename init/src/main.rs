//! `cinfer-init`: forces inbound traffic through the server proxy (see `cinfer-init --help`).

mod cli;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use cli::{BackendKind, Cli, Command, CommonArgs};
use init::{Backend, Change, InitError, IptablesRestore, Nft, NftRunner, Recording, RulePlan};

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
    let (plan, common) = match &cli.command {
        Command::Apply { plan, common } => (Some(plan.plan()), common),
        Command::Clean { common } => (None, common),
    };
    let what = if plan.is_some() {
        "applying the inbound redirect"
    } else {
        "removing cinfer rules"
    };
    let changes = match common.backend {
        BackendKind::Iptables => {
            let real = IptablesRestore {
                flavor: common.iptables.flavor(),
            };
            fallback::<dyn Backend>(common, &real, &Recording::default(), |b: &dyn Backend| match &plan {
                Some(plan) => init::apply(b, plan, common.families.list(), common.dry_run),
                None => init::clean(b, common.families.list(), common.dry_run),
            })
        }
        BackendKind::Nftables => fallback::<dyn NftRunner>(common, &Nft, &Recording::default(), |r: &dyn NftRunner| {
            nft_change(r, plan.as_ref(), common).map(|c| vec![c])
        }),
    }
    .context(what)?;
    report(&changes, common);
    Ok(())
}

fn nft_change(runner: &dyn NftRunner, plan: Option<&RulePlan>, common: &CommonArgs) -> Result<Change, InitError> {
    match plan {
        Some(plan) => init::apply_nft(runner, plan, common.families.nft(), common.dry_run),
        None => init::clean_nft(runner, common.families.nft(), common.dry_run),
    }
}

/// Runs `f` on the real backend; a dry run that cannot read the rules (no tool, not root) assumes none.
fn fallback<'a, B: ?Sized + 'a>(
    common: &CommonArgs,
    real: &'a B,
    empty: &'a B,
    f: impl Fn(&'a B) -> Result<Vec<Change>, InitError>,
) -> Result<Vec<Change>, InitError> {
    match f(real) {
        Err(InitError::Backend { target, source }) if common.dry_run => {
            let error = source.to_string();
            tracing::warn!(%target, %error, "cannot read the current rules; showing the script for an empty rule set");
            f(empty)
        }
        other => other,
    }
}

fn report(changes: &[Change], common: &CommonArgs) {
    let format = match common.backend {
        BackendKind::Iptables => "iptables-restore --noflush",
        BackendKind::Nftables => "nft -f",
    };
    for change in changes {
        match (&change.script, common.dry_run) {
            (Some(script), true) => print!("# {} ({format})\n{script}", change.target),
            (None, true) => println!("# {}: nothing to do", change.target),
            (Some(_), false) => eprintln!("{}: done", change.target),
            (None, false) => eprintln!("{}: nothing of ours to remove", change.target),
        }
    }
}
