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
    // Before anything holds a key: no core dump of this process (mount daemon, sidecar), and no same-user
    // process may read its memory or attach to it.
    let not_dumpable = make_not_dumpable();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mount(mut args) => match args.resolve_source() {
            Err(e) => Err(e),
            Ok(()) if !args.foreground && !args.daemon_child => daemon::mount_background(&args),
            Ok(()) => {
                init_logging();
                log_dumpable(not_dumpable);
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
            log_dumpable(not_dumpable);
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

/// `prctl(PR_SET_DUMPABLE, 0)`: the kernel writes no core dump of this process and only root may read its
/// memory (`/proc/PID/mem`) or trace it. True if it took effect.
fn make_not_dumpable() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: PR_SET_DUMPABLE takes one integer argument and changes only this process's dumpable flag.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    rc == 0
}

fn log_dumpable(not_dumpable: bool) {
    if not_dumpable {
        tracing::info!("process not dumpable: no core dump, memory readable by root only");
    } else {
        tracing::warn!(
            "could not make the process non-dumpable: {}",
            std::io::Error::last_os_error()
        );
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
