//! The trust side: the attestation service + key broker (`cinfer-attest serve` with the mock SEV-SNP root
//! trusted explicitly), and the model key imported with the rendered release policy (which pins the hostdata).

use std::process::Command;
use std::time::Duration;

use super::{Ctx, MEASUREMENT};
use crate::local::env::port_or_free;
use crate::local::error::{LocalError, Result};
use crate::local::http;
use crate::local::proc::{Proc, run, wait_for};

/// The running attestation service and what the other stages need from it.
#[derive(Debug)]
pub(crate) struct Authority {
    pub(crate) proc: Proc,
    /// `http://127.0.0.1:PORT`: attestation endpoint and key vault.
    pub(crate) url: String,
    /// Mock attester root (`cinfer-attest mock-init`).
    pub(crate) mock: std::path::PathBuf,
    admin_token: std::path::PathBuf,
}

/// Starts `cinfer-attest serve` on `port` (0: a free one).
pub(crate) fn start_authority(ctx: &Ctx, port: u16) -> Result<Authority> {
    let mock = ctx.work.join("mock");
    run(
        "cinfer-attest mock-init",
        Command::new(&ctx.attest).arg("mock-init").arg("--out").arg(&mock),
    )?;
    let admin_token = ctx.work.join("admin.token");
    let mut token = [0u8; 24];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(LocalError::io("opening /dev/urandom"))?,
        &mut token,
    )
    .map_err(LocalError::io("reading /dev/urandom"))?;
    write_private(&admin_token, hex::encode(token).as_bytes())?;
    let port = port_or_free(port, "attestation service")?;
    let mut cmd = Command::new(&ctx.attest);
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(ctx.work.join("attest-state"))
        .arg("--trust-mock-root")
        .arg(mock.join("ark.pem"))
        .arg("--admin-token-file")
        .arg(&admin_token)
        .args(["--compliant-measurement", MEASUREMENT]);
    let mut proc = Proc::spawn("attest", cmd, &ctx.logs)?;
    wait_for("the attestation service", Duration::from_secs(30), &ctx.cancel, || {
        proc.check_running()?;
        Ok(http::status(port, "/certs") == Some(200))
    })?;
    Ok(Authority {
        proc,
        url: format!("http://127.0.0.1:{port}"),
        mock,
        admin_token,
    })
}

/// Imports the model key into the broker as `kid` with the release policy in `release` (the rendered one, its
/// authority pointed at the local service).
pub(crate) fn import_key(
    ctx: &Ctx,
    auth: &Authority,
    kid: &str,
    key: &std::path::Path,
    release: &std::path::Path,
) -> Result<()> {
    run(
        "cinfer-attest import-key",
        Command::new(&ctx.attest)
            .args(["import-key", "--vault", &auth.url, "--name", kid, "--key-file"])
            .arg(key)
            .arg("--release-policy")
            .arg(release)
            .arg("--token-file")
            .arg(&auth.admin_token),
    )?;
    Ok(())
}

/// Writes a file readable by its owner only.
fn write_private(path: &std::path::Path, data: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(LocalError::io(format!("writing {}", path.display())))
}
