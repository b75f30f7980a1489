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
    // libfuse-based code runs the program `FUSERMOUNT_PATH` names to mount and unmount: a setting the measured
    // command line does not carry. This daemon never reads it (see `encfs::fuse::FUSERMOUNT`); it is dropped
    // before any thread exists all the same, so no library that does can be steered by it.
    #[allow(unsafe_code)]
    // SAFETY: first statement of `main`: no other thread exists yet that could read the environment.
    unsafe {
        std::env::remove_var("FUSERMOUNT_PATH");
    }
    // Before anything holds a key: no core dump of this process (mount daemon, sidecar), and no same-user
    // process may read its memory or attach to it.
    let not_dumpable = make_not_dumpable();
    bound_large_allocations();
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
            sidecar_main::run_sidecar(&args.common, Some(&args.fuse))
        }
        Command::Extract(args) => {
            init_logging();
            log_dumpable(not_dumpable);
            sidecar_main::run_sidecar(&args, None)
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

/// Serves allocations of 8 MiB and more with their own mapping, always (glibc's `M_MMAP_THRESHOLD`, which
/// otherwise rises to the size of any large block freed, up to 32 MiB).
///
/// fuser, which served the classic transport before the project's own FUSE session did, gave each request thread a
/// 16 MiB receive buffer, zero-filled: once the threshold had risen past it (after a 4 MiB part buffer was freed,
/// say), the buffer came from a malloc arena, whose zero-fill made all 16 MiB resident, and a sidecar with 40
/// filesystems of 8 threads each held 2.1 GiB. The own session's request buffers are 128 KiB, but any large,
/// sparsely used block is better mapped on its own. Blocks below 8 MiB (reads, part buffers) still come from the
/// arenas, as fast as before.
fn bound_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        #[allow(unsafe_code)]
        // SAFETY: mallopt only changes the allocator's tuning; it is called before any other thread exists.
        let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20) };
    }
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
