//! `cinfer-proxy`: command-line entry point (not implemented yet).

fn main() -> std::process::ExitCode {
    eprintln!("cinfer-proxy: not implemented yet");
    std::process::ExitCode::from(2)
}
