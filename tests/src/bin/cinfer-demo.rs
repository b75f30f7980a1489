//! `cinfer-demo`: the whole cinfer pipeline on this machine, on embedded defaults (mock attester, local
//! attestation service and key broker), ending like the seed's example: an unmodified Triton client, through the
//! attested proxies, prints the classifier's answer. Prints how long each stage took.
//!
//! Usage: `cinfer-demo [--large-mb N] [--keep]` (see the README; `scripts/demo.sh` builds and runs it).

use std::process::ExitCode;

use cinfer_tests::pipeline::{Options, Pipeline};

fn main() -> ExitCode {
    let mut opts = Options {
        verbose: true,
        ..Default::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--large-mb" => opts.large_mb = args.next().and_then(|v| v.parse().ok()).unwrap_or(512),
            "--keep" => opts.keep = true,
            _ => {
                eprintln!("usage: cinfer-demo [--large-mb N] [--keep]");
                return ExitCode::from(2);
            }
        }
    }
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cinfer-demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: &Options) -> anyhow::Result<()> {
    eprintln!(
        "== starting the pipeline (model -> signed image -> attested key release -> FUSE mount -> Triton -> attested TLS)"
    );
    let p = Pipeline::start(opts)?;
    anyhow::ensure!(p.mounted, "the key was not released; logs in {}", p.logs().display());
    eprintln!(
        "\n== request: tritonclient -> http_proxy {} -> client proxy -> attested TLS -> server proxy {} -> Triton",
        p.http_proxy, p.endpoint
    );
    let mut models = vec!["classifier"];
    if opts.large_mb > 0 {
        models.push("classifier_large");
    }
    for model in models {
        let (ok, out) = p.client("infer", model, &[])?;
        println!("{model}: {}", out.lines().next().unwrap_or_default());
        anyhow::ensure!(ok, "inference failed:\n{out}");
    }
    println!("\nimage root {}  hostdata {}", p.root, p.hostdata);
    println!("stage timings:");
    for (name, d) in &p.stages {
        println!("  {:>7.2}s  {name}", d.as_secs_f64());
    }
    if opts.keep {
        println!("work directory kept: {}", p.work.display());
    }
    Ok(())
}
