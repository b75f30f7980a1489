//! The confidential container's storage side: the rendered `encfs` container (`cinfer-encfs sidecar` with the
//! rendered `EncfsSideCarArgs`, addresses localized). It releases the key through attestation (mock evidence
//! carrying the container's host_data), opens the image from its URL with the rendered root pin and signer key,
//! and exposes the FUSE mount at the mount point.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Ctx;
use crate::local::error::{LocalError, Result};
use crate::local::proc::{Proc, wait_for};
use crate::local::rendered::LocalCommand;

/// The sidecar and the outcome of its first attempt.
#[derive(Debug)]
pub(crate) struct Sidecar {
    /// The running sidecar (None for the Kubernetes layout's init container, which has exited).
    pub(crate) proc: Option<Proc>,
    pub(crate) mount: PathBuf,
    /// Whether the key was released and the image mounted.
    pub(crate) mounted: bool,
    /// Why not, when not (the sidecar's failure file).
    pub(crate) failure: Option<String>,
}

/// Starts the sidecar and waits until it has mounted or reported a failure in `ready_dir`.
pub(crate) fn start(ctx: &Ctx, cmd: &LocalCommand, mount: PathBuf, ready: PathBuf) -> Result<Sidecar> {
    make_parent(&mount)?;
    let mut proc = Proc::spawn("encfs-sidecar", cmd.command(), &ctx.logs)?.with_grace(Duration::from_secs(20));
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
    outcome(
        Some(proc),
        mount,
        &ready,
        mounted,
        exited.unwrap_or_else(|| "unknown".into()),
    )
}

/// The Kubernetes layout's init container `encfs-extract` (`cinfer-encfs extract`): runs it to its end, as the
/// pod does before its containers start; the extracted tree is at `mount` when it succeeded.
pub(crate) fn extract(ctx: &Ctx, cmd: &LocalCommand, mount: PathBuf, ready: PathBuf) -> Result<Sidecar> {
    make_parent(&mount)?;
    let mut proc = Proc::spawn("encfs-extract", cmd.command(), &ctx.logs)?.with_grace(Duration::from_secs(20));
    let mut exited = None;
    wait_for(
        "the init container encfs-extract to finish",
        Duration::from_secs(600),
        &ctx.cancel,
        || {
            if let Err(e) = proc.check_running() {
                exited = Some(e.to_string());
                return Ok(true);
            }
            Ok(false)
        },
    )?;
    let status = proc.stop()?;
    let mounted = status.success() && ready.join("ready").exists();
    let otherwise = exited.unwrap_or_else(|| format!("encfs-extract exited with {status}"));
    outcome(None, mount, &ready, mounted, otherwise)
}

fn make_parent(mount: &Path) -> Result<()> {
    if let Some(parent) = mount.parent() {
        std::fs::create_dir_all(parent).map_err(LocalError::io(format!("creating {}", parent.display())))?;
    }
    Ok(())
}

/// The stage's result: when nothing was mounted, why (the failure file, else `otherwise`), and an empty mount
/// point, so the model server still starts, on an empty repository, and must report the model not ready.
fn outcome(proc: Option<Proc>, mount: PathBuf, ready: &Path, mounted: bool, otherwise: String) -> Result<Sidecar> {
    let failure = (!mounted).then(|| {
        std::fs::read_to_string(ready.join("filesystem-0.failed"))
            .map(|s| s.trim().to_owned())
            .unwrap_or(otherwise)
    });
    if !mounted {
        std::fs::create_dir_all(&mount).map_err(LocalError::io(format!("creating {}", mount.display())))?;
    }
    Ok(Sidecar {
        proc,
        mount,
        mounted,
        failure,
    })
}
