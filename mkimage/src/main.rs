//! `cinfer-mkimage`: the model owner's CLI (see `cinfer-mkimage --help`).

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command};
use mkimage::build::{BuildOptions, build};
use mkimage::{inspect, keyfile, verify};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CINFER_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cinfer-mkimage: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Build {
            src,
            output,
            key_file,
            key_id,
            chunk_size,
            force,
            threads,
        } => {
            let (key, created) = keyfile::read_or_create(&key_file)?;
            if created {
                eprintln!(
                    "created key file {} (32 random bytes, mode 0600): keep it secret",
                    key_file.display()
                );
            }
            let key_id = key_id.unwrap_or_else(|| {
                format!(
                    "file:{}",
                    key_file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
                )
            });
            let mut opts = BuildOptions::new(&src, &output, key_id);
            opts.chunk_size = chunk_size;
            opts.force = force;
            opts.threads = threads;
            let bar = progress_bar(&src)?;
            let start = Instant::now();
            let summary = build(&opts, &key, &|n| {
                if let Some(b) = &bar {
                    b.set_position(n);
                }
            })
            .with_context(|| format!("building {}", output.display()))?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "built {}: {} files, {} directories, {} symlinks, {} bytes in {:.2}s ({:.0} MB/s), image {} bytes",
                output.display(),
                summary.files,
                summary.dirs,
                summary.symlinks,
                summary.bytes,
                secs,
                summary.bytes as f64 / secs.max(1e-9) / 1e6,
                summary.image_len
            );
            println!("root: {}", hex::encode(summary.root));
        }
        Command::Inspect { image, key_file } => {
            let key = key_file.as_deref().map(keyfile::read).transpose()?;
            print!("{}", inspect::inspect(&image, key.as_ref())?);
        }
        Command::Verify { image, key_file } => {
            let key = keyfile::read(&key_file)?;
            let start = Instant::now();
            let r = verify::verify(&image, &key)?;
            eprintln!(
                "verified {} chunks of {} files ({} bytes) in {:.2}s",
                r.chunks,
                r.files,
                r.bytes,
                start.elapsed().as_secs_f64()
            );
            println!("root: {}", hex::encode(r.root));
        }
    }
    Ok(())
}

/// A byte progress bar sized to the tree, only when stderr is a terminal.
fn progress_bar(src: &std::path::Path) -> anyhow::Result<Option<indicatif::ProgressBar>> {
    if !std::io::stderr().is_terminal() {
        return Ok(None);
    }
    let total: u64 = mkimage::build::walk(src)?
        .iter()
        .filter_map(|w| match w.entry.kind {
            encfs::format::EntryKind::File { size, .. } => Some(size),
            _ => None,
        })
        .sum();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Ok(Some(bar))
}
