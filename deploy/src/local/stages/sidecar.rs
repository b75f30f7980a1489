//! The confidential container's storage side: `cinfer-encfs sidecar` with the seed's `EncfsSideCarArgs`. It
//! releases the key through attestation (mock evidence carrying the container's host_data), opens the image from
//! its URL with the root pinned and the signature checked, and exposes the FUSE mount at the mount point.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{Ctx, MEASUREMENT};
use crate::local::error::{LocalError, Result};
use crate::local::proc::{Proc, wait_for};

/// The sidecar and the outcome of its first attempt.
#[derive(Debug)]
pub(crate) struct Sidecar {
    pub(crate) proc: Proc,
    pub(crate) mount: PathBuf,
    /// Whether the key was released and the image mounted.
    pub(crate) mounted: bool,
    /// Why not, when not (the sidecar's failure file).
    pub(crate) failure: Option<String>,
}

/// What the sidecar is given.
#[derive(Debug)]
pub(crate) struct SidecarInput<'a> {
    pub(crate) url: &'a str,
    pub(crate) authority: &'a str,
    pub(crate) mock: &'a std::path::Path,
    pub(crate) root: &'a str,
    pub(crate) signer_pub: &'a std::path::Path,
    /// host_data the container's evidence carries.
    pub(crate) evidence_host_data: &'a str,
}

/// Starts the sidecar and waits until it has mounted or reported a failure.
pub(crate) fn start(ctx: &Ctx, input: &SidecarInput<'_>) -> Result<Sidecar> {
    let mount = ctx.work.join("mnt");
    let args = serde_json::json!({"azure_filesystems": [{
        "azure_url": input.url,
        "azure_url_private": false,
        "mount_point": mount.display().to_string(),
        "read_write": false,
        "key": {"kid": "model", "kty": "oct-HSM",
                "authority": {"endpoint": input.authority}, "akv": {"endpoint": input.authority}},
        "cinfer_expect_root": input.root,
        "cinfer_signer_key": input.signer_pub.display().to_string(),
    }]});
    let args_file = ctx.work.join("EncfsSideCarArgs.json");
    std::fs::write(&args_file, args.to_string()).map_err(LocalError::io(format!("writing {}", args_file.display())))?;
    let ready = ctx.work.join("ready");
    let mut cmd = Command::new(&ctx.encfs);
    cmd.arg("sidecar")
        .arg("--args-file")
        .arg(&args_file)
        .args(["--attester", "mock", "--mock-root-dir"])
        .arg(input.mock)
        .args([
            "--mock-host-data",
            input.evidence_host_data,
            "--mock-measurement",
            MEASUREMENT,
            "--ready-dir",
        ])
        .arg(&ready);
    let mut proc = Proc::spawn("encfs-sidecar", cmd, &ctx.logs)?.with_grace(Duration::from_secs(20));
    let failed = ready.join("filesystem-0.failed");
    let mut exited = None;
    wait_for(
        "the sidecar to mount or fail",
        Duration::from_secs(600),
        &ctx.cancel,
        || {
            if ready.join("ready").exists() || failed.exists() {
                return Ok(true);
            }
            if let Err(e) = proc.check_running() {
                exited = Some(e.to_string());
                return Ok(true);
            }
            Ok(false)
        },
    )?;
    let mounted = ready.join("ready").exists();
    let failure = (!mounted).then(|| {
        std::fs::read_to_string(&failed)
            .map(|s| s.trim().to_owned())
            .ok()
            .or(exited)
            .unwrap_or_else(|| "unknown".into())
    });
    if !mounted {
        // The model server still starts, on an empty repository: it must report the model not ready.
        std::fs::create_dir_all(&mount).map_err(LocalError::io(format!("creating {}", mount.display())))?;
    }
    Ok(Sidecar {
        proc,
        mount,
        mounted,
        failure,
    })
}
