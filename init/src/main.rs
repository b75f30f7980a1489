//! `cinfer-init`: command-line entry point (not implemented yet).

fn main() -> std::process::ExitCode {
    eprintln!("cinfer-init: not implemented yet");
    std::process::ExitCode::from(2)
}
