//! The trust side: the attestation service + key broker (`cinfer-attest serve` with the mock SEV-SNP root
//! trusted explicitly), the policy digest H of the local deployment's security policy, and the model key
//! imported with a release policy that pins H.

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;

use super::{Ctx, MEASUREMENT};
use crate::local::env::port_or_free;
use crate::local::error::{LocalError, Result};
use crate::local::http;
use crate::local::proc::{Proc, run, wait_for};
use crate::policy::SecurityPolicy;

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

/// Writes the local deployment's security policy and returns its hostdata H (SHA-256 of the decoded policy, as
/// the platform measures it). The policy names the image root, so another image means another H.
pub(crate) fn host_data(ctx: &Ctx, root: &str) -> Result<String> {
    let rego = format!("package policy\n# cinfer local deployment, image root {root}\nallow := true\n");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&rego);
    let path = ctx.work.join("security-policy.b64");
    std::fs::write(&path, &b64).map_err(LocalError::io(format!("writing {}", path.display())))?;
    let policy = SecurityPolicy::parse(&b64).map_err(|e| LocalError::Unexpected {
        what: "the local security policy".into(),
        got: e.to_string(),
    })?;
    Ok(policy.host_data().to_string())
}

/// Imports the model key into the broker as `model` with a release policy for `host_data`.
pub(crate) fn import_key(ctx: &Ctx, auth: &Authority, key: &std::path::Path, host_data: &str) -> Result<()> {
    let release = ctx.work.join("release-policy.json");
    let policy = serde_json::json!({"version": "1.0.0", "anyOf": [{"authority": auth.url, "allOf": [
        {"claim": "x-ms-sevsnpvm-hostdata", "equals": host_data},
        {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": "false"}]}]});
    std::fs::write(&release, policy.to_string()).map_err(LocalError::io(format!("writing {}", release.display())))?;
    run(
        "cinfer-attest import-key",
        Command::new(&ctx.attest)
            .args(["import-key", "--vault", &auth.url, "--name", "model", "--key-file"])
            .arg(key)
            .arg("--release-policy")
            .arg(&release)
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
