//! `cinfer-deploy local`: starts [`deploy::local::Pipeline`] with progress on stderr, prints where to send
//! requests and the example inference on stdout, then serves until SIGINT/SIGTERM (or exits with `--once`).

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use deploy::DeployConfig;
use deploy::config::ProxyPorts;
use deploy::local::{Cancel, ImageStore, Layout, LocalError, Options, Pipeline, Ports, StageEvent};

use crate::cli::{LayoutArg, LocalArgs, StoreArg};

/// Runs the command; the exit code follows `cinfer-deploy local --help`.
pub(crate) fn run(args: &LocalArgs) -> anyhow::Result<ExitCode> {
    let cancel = Cancel::on_signals().context("installing the Ctrl-C handler")?;
    let opts = options(args, cancel.clone())?;
    let store = match opts.store {
        ImageStore::Http => "local HTTP range server",
        _ => "Azurite",
    };
    let delivery = match opts.layout {
        Layout::K8s => "verified extraction (Kubernetes pod: init container encfs-extract)",
        _ => "FUSE mount (ACI: encfs sidecar)",
    };
    eprintln!(
        "== cinfer local: model -> signed, encrypted image -> {store} -> attested key release -> {delivery} -> \
         Triton -> attested TLS proxies"
    );
    let p = match Pipeline::start(&opts) {
        Ok(p) => p,
        Err(LocalError::Interrupted) => {
            eprintln!("interrupted while starting: everything started so far is stopped");
            return Ok(ExitCode::from(130));
        }
        Err(e) => return Err(e).context("starting the local pipeline"),
    };
    if !p.mounted {
        bail!(
            "the model key was not released to the sidecar ({}); logs in {}",
            p.mount_failure.as_deref().unwrap_or("unknown"),
            p.logs().display()
        );
    }
    let serving: Vec<String> = p
        .model_names
        .iter()
        .filter(|m| !p.failed_models.iter().any(|(f, _)| f == *m))
        .cloned()
        .collect();
    if !p.failed_models.is_empty() && (args.once || serving.is_empty()) {
        let list: Vec<String> = p.failed_models.iter().map(|(m, r)| format!("{m}: {r}")).collect();
        let logs = p.logs();
        p.shutdown().context("stopping")?;
        bail!(
            "Triton could not load {} of {} models (everything is stopped; logs in {}):
  {}",
            list.len(),
            list.len() + serving.len(),
            logs.display(),
            list.join("\n  ")
        );
    }
    let first = serving.first().cloned().unwrap_or_default();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\nready: attested TLS endpoint {}  (send requests through the client proxy)",
        p.endpoint
    )?;
    writeln!(out, "  http_proxy   {}", p.http_proxy)?;
    writeln!(out, "  models       {}", serving.join(", "))?;
    for (model, reason) in &p.failed_models {
        writeln!(out, "  FAILED       {model}: {reason}")?;
    }
    writeln!(
        out,
        "  image        {} ({}, root {})",
        p.image_url,
        size(p.image_size),
        p.root
    )?;
    writeln!(out, "  hostdata     {}", p.hostdata)?;
    writeln!(out, "  work dir     {} (logs in logs/)", p.work.display())?;
    writeln!(
        out,
        "  rendered     {} (cinfer-deploy render {})",
        p.rendered.display(),
        match p.layout {
            Layout::K8s => "k8s",
            _ => "aci",
        }
    )?;
    for note in &p.config_notes {
        writeln!(out, "  config       {note}")?;
    }
    if let Some(gpu) = &p.gpu {
        writeln!(
            out,
            "GPUs (mock, composite evidence: SEV-SNP report + SPDM reports bound to one runtime data):"
        )?;
        writeln!(out, "  key release policy also requires:")?;
        for c in &gpu.conditions {
            writeln!(out, "    {c}")?;
        }
        writeln!(out, "  a composite token's GPU claims:")?;
        for (k, v) in &gpu.claims {
            writeln!(out, "    {k:<34} {v}")?;
        }
        for line in &gpu.per_gpu {
            writeln!(out, "    {line}")?;
        }
        writeln!(
            out,
            "  the same guest without GPU evidence: key refused: {}",
            gpu.refused_without_gpus
        )?;
        writeln!(
            out,
            "  the client policy requires the same of the server ({})",
            p.work.join("client-policy-gpu.json").display()
        )?;
    }
    writeln!(
        out,
        "processes, from the rendered deployment (only addresses substituted):"
    )?;
    for l in &p.launched {
        writeln!(out, "  {:<14} <- {}", l.process, l.source)?;
        let subs: Vec<String> = l
            .substituted
            .iter()
            .map(|s| format!("{} {} -> {}", s.what, s.rendered, s.local))
            .collect();
        writeln!(out, "  {:<14}    substituted: {}", "", subs.join("; "))?;
        if !l.added.is_empty() {
            writeln!(out, "  {:<14}    added (local platform): {}", "", l.added.join(" "))?;
        }
    }
    if let Some(cmd) = p.client_shell_command(&first) {
        writeln!(out, "client:\n  {cmd}")?;
    }
    writeln!(out, "or with curl (KServe V2):\n  {}", p.curl_command(&first))?;
    if p.example.is_some() {
        writeln!(
            out,
            "\nexample inference: tritonclient -> client proxy -> attested TLS -> server proxy -> Triton -> {}",
            match p.layout {
                Layout::K8s => "extracted, verified files",
                _ => "FUSE mount",
            }
        )?;
        out.flush()?;
        for model in &serving {
            let line = p.example_inference(model).context("the example inference")?;
            writeln!(out, "{model}: {line}")?;
            out.flush()?;
        }
    } else {
        writeln!(
            out,
            "\nexample request: model metadata through client proxy -> attested TLS -> server proxy -> Triton"
        )?;
        for model in &serving {
            let r = p
                .get_through_proxies(&format!("/v2/models/{model}"))
                .context("the example request")?;
            writeln!(out, "{model}: HTTP {} {}", r.status, r.body.trim())?;
            if r.status != 200 {
                bail!("the model server answered HTTP {} for {model}", r.status);
            }
        }
    }
    writeln!(out, "\nstage timings:")?;
    for (name, d) in &p.stages {
        writeln!(out, "  {:>7.2}s  {name}", d.as_secs_f64())?;
    }
    let total: f64 = p.stages.iter().map(|(_, d)| d.as_secs_f64()).sum();
    writeln!(out, "  {total:>7.2}s  total")?;
    if args.once {
        out.flush()?;
        drop(out);
        p.shutdown().context("stopping")?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "\nserving; Ctrl-C stops everything")?;
    out.flush()?;
    drop(out);
    serve(p, &cancel)
}

/// Waits for Ctrl-C while watching the processes; then stops everything.
fn serve(mut p: Pipeline, cancel: &Cancel) -> anyhow::Result<ExitCode> {
    while !cancel.is_cancelled() {
        if let Err(e) = p.check_running() {
            let _ = p.shutdown();
            return Err(e).context("a process of the pipeline stopped");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("stopping: proxies, Triton, encfs sidecar (unmount), attestation service, image store");
    let work = p.work.clone();
    p.shutdown().context("stopping")?;
    println!("stopped; nothing left mounted under {}", work.display());
    Ok(ExitCode::SUCCESS)
}

/// A byte count for people.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / f64::from(1u32 << 30)),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}

fn options(args: &LocalArgs, cancel: Cancel) -> anyhow::Result<Options> {
    let proxy = match &args.config {
        Some(path) => DeployConfig::load(path)?.proxy,
        None => ProxyPorts::default(),
    };
    let progress = Arc::new(|ev: &StageEvent| match ev {
        StageEvent::Start { index, total, name } => {
            eprint!("[{index}/{total}] {name} ...");
            let _ = std::io::stderr().flush();
        }
        StageEvent::Done { took, .. } => eprintln!(" {:.2}s", took.as_secs_f64()),
        StageEvent::ModelFailed { name, reason } => {
            eprint!("\n  model {name} failed to load: {reason}\n  ...");
            let _ = std::io::stderr().flush();
        }
        _ => {}
    });
    let keep = args.keep || args.work.is_some();
    Ok(Options {
        large_mb: args.large_mb,
        models: args.models.clone(),
        store: match args.image_store {
            StoreArg::Azurite => ImageStore::Azurite,
            StoreArg::Http => ImageStore::Http,
        },
        work_dir: args.work.clone(),
        keep,
        ports: Ports {
            attest: args.ports.attest_port,
            store: args.ports.store_port,
            model_server: args.ports.model_server_port.unwrap_or(proxy.upstream_port),
            server_proxy: args.ports.proxy_port.unwrap_or(proxy.port),
            health: args.ports.health_port.unwrap_or(proxy.health_port),
            client_proxy: args.ports.client_proxy_port,
        },
        config: args.config.clone(),
        layout: match args.layout {
            LayoutArg::Aci => Layout::Aci,
            LayoutArg::K8s => Layout::K8s,
        },
        gpus: args.gpu.unwrap_or(0),
        cancel,
        progress: Some(progress),
        ..Default::default()
    })
}
