//! `cinfer-encfs`: mounts an encrypted, read-only cinfer model image with FUSE. See `cinfer-encfs --help`.

mod cli;
mod daemon;
mod sidecar_main;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
use crate::daemon::Ready;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mount(mut args) => match args.resolve_source() {
            Err(e) => Err(e),
            Ok(()) if !args.foreground && !args.daemon_child => daemon::mount_background(&args),
            Ok(()) => {
                init_logging();
                let ready = if args.daemon_child { Ready::Pipe } else { Ready::Log };
                let r = daemon::run_mount(&args, &ready);
                if let Err(e) = &r {
                    ready.error(e);
                }
                r
            }
        },
        Command::Unmount(args) => {
            init_logging();
            daemon::unmount(&args)
        }
        Command::Sidecar(args) => {
            init_logging();
            sidecar_main::run_sidecar(&args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("cinfer-encfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = EnvFilter::try_from_env("CINFER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
