//! `cinfer-proxy`: the attested-TLS server proxy (inside the TEE), the client HTTP proxy that verifies it,
//! and client-policy generation. See `cinfer-proxy --help`.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("CINFER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cinfer-proxy: {e:#}");
            ExitCode::from(1)
        }
    }
}
