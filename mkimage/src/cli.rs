//! Command-line interface of `cinfer-mkimage`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Builds, inspects and verifies encrypted cinfer model images.
///
/// Exit status: 0 on success, 1 on any error (the message names the path, chunk or check that failed).
#[derive(Debug, Parser)]
#[command(name = "cinfer-mkimage", version)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Builds an encrypted image from a model directory; the last line printed is `root: <hex>`.
    Build {
        /// The model directory (e.g. a Triton model repository).
        src: PathBuf,
        /// The image to write.
        #[arg(short, long)]
        output: PathBuf,
        /// File with the 32-byte model key; created (random, mode 0600) if it does not exist.
        #[arg(long)]
        key_file: PathBuf,
        /// Key id or URI recorded in the header to name the key (default: `file:<key file name>`).
        #[arg(long)]
        key_id: Option<String>,
        /// Plaintext bytes per chunk: a power of two from 4096 to 16 MiB (suffixes k, M accepted).
        #[arg(long, default_value = "64k", value_parser = parse_size)]
        chunk_size: u32,
        /// Overwrite IMAGE if it exists.
        #[arg(long)]
        force: bool,
        /// Sealing threads (default: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Prints header facts (no key needed); with --key-file, also the file listing.
    Inspect {
        /// The image.
        image: PathBuf,
        /// The 32-byte model key file.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Opens every chunk and checks every tag and file digest; prints the root.
    Verify {
        /// The image.
        image: PathBuf,
        /// The 32-byte model key file.
        #[arg(long)]
        key_file: PathBuf,
    },
}

fn parse_size(s: &str) -> Result<u32, String> {
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1u64 << 20),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s}"))?;
    u32::try_from(n * mult).map_err(|_| format!("size too large: {s}"))
}
