//! The trust side: the attestation service + key broker (`cinfer-attest serve` with the mock SEV-SNP root
//! trusted explicitly), and the model key imported with the rendered release policy (which pins the hostdata).
//! With GPUs (`--gpu N`): mock GPUs (`cinfer-attest mock-gpu-init`), their root and collateral configured on the
//! service, the release policy extended with the GPU conditions, and a check that shows the composite token's
//! GPU claims and the refusal of the same guest without GPU evidence.

use std::process::Command;
use std::time::Duration;

use attest::gpu::requirement::GpuRequirement;
use base64::Engine as _;
use serde_json::Value;

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
    /// Mock GPUs (`cinfer-attest mock-gpu-init`), when the pipeline runs with GPUs.
    pub(crate) mock_gpu: Option<std::path::PathBuf>,
    admin_token: std::path::PathBuf,
}

/// Starts `cinfer-attest serve` on `port` (0: a free one); with `gpus` > 0 also makes that many mock GPUs and
/// has the service trust their root and use their collateral.
pub(crate) fn start_authority(ctx: &Ctx, port: u16, gpus: u32) -> Result<Authority> {
    let mock = ctx.work.join("mock");
    run(
        "cinfer-attest mock-init",
        Command::new(&ctx.attest).arg("mock-init").arg("--out").arg(&mock),
    )?;
    let mock_gpu = (gpus > 0).then(|| ctx.work.join("mock-gpu"));
    if let Some(dir) = &mock_gpu {
        run(
            "cinfer-attest mock-gpu-init",
            Command::new(&ctx.attest)
                .args(["mock-gpu-init", "--count", &gpus.to_string(), "--out"])
                .arg(dir),
        )?;
    }
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
    if let Some(dir) = &mock_gpu {
        cmd.arg("--trust-mock-gpu-root")
            .arg(dir.join("root.pem"))
            .arg("--gpu-collateral")
            .arg(dir.join("collateral.json"));
    }
    let mut proc = Proc::spawn("attest", cmd, &ctx.logs)?;
    wait_for("the attestation service", Duration::from_secs(30), &ctx.cancel, || {
        proc.check_running()?;
        Ok(http::status(port, "/certs") == Some(200))
    })?;
    Ok(Authority {
        proc,
        url: format!("http://127.0.0.1:{port}"),
        mock,
        mock_gpu,
        admin_token,
    })
}

/// Adds the conditions of [`GpuRequirement::gpus`]`(gpus)` to every `anyOf` clause of a release policy; returns
/// them as text (`claim operator value`).
pub(crate) fn require_gpus(policy: &mut Value, gpus: u32) -> Result<Vec<String>> {
    if policy.get("anyOf").and_then(Value::as_array).is_none() {
        return Err(LocalError::Unexpected {
            what: "release-policy.json".into(),
            got: "no anyOf".into(),
        });
    }
    crate::policy::add_gpu_conditions(policy, &GpuRequirement::gpus(gpus)).map_err(|e| LocalError::Unexpected {
        what: "the GPU requirement".into(),
        got: e.to_string(),
    })
}

/// What `--gpu` shows: the composite token's GPU claims, and the same guest refused the key without GPUs.
#[derive(Debug, Clone, Default)]
pub struct GpuCheck {
    /// The release policy's GPU conditions (`claim {operator: value}`).
    pub conditions: Vec<String>,
    /// The summary claims of a composite token (`x-cinfer-gpu-*`, name and JSON value).
    pub claims: Vec<(String, String)>,
    /// One line per GPU: its NVIDIA claims that matter.
    pub per_gpu: Vec<String>,
    /// The key release refused to the guest without GPU evidence: the service's reason.
    pub refused_without_gpus: String,
}

/// Attests the guest (mock SEV-SNP evidence for `host_data` plus the mock GPUs) once to show the token's GPU
/// claims, then asks for the key `kid` without GPU evidence, which must be refused.
pub(crate) fn gpu_check(ctx: &Ctx, auth: &Authority, kid: &str, host_data: &str) -> Result<GpuCheck> {
    let unexpected = |got: String| LocalError::Unexpected {
        what: "the GPU check".into(),
        got,
    };
    let gpu_dir = auth
        .mock_gpu
        .as_ref()
        .ok_or_else(|| unexpected("no mock GPUs".into()))?;
    let runtime = ctx.work.join("gpu-check-runtime.json");
    std::fs::write(
        &runtime,
        br#"{"purpose":"cinfer-deploy local --gpu: show the composite token"}"#,
    )
    .map_err(LocalError::io(format!("writing {}", runtime.display())))?;
    let mock = |cmd: &mut Command| {
        cmd.args(["--attester", "mock", "--mock-root"]).arg(&auth.mock).args([
            "--host-data",
            host_data,
            "--measurement",
            MEASUREMENT,
        ]);
    };
    let mut attest = Command::new(&ctx.attest);
    attest
        .args(["attest", "--maa", &auth.url, "--runtime-data"])
        .arg(&runtime);
    mock(&mut attest);
    attest.arg("--mock-gpu-dir").arg(gpu_dir);
    let jwt = run("cinfer-attest attest (with GPUs)", &mut attest)?;
    let claims: Value = jwt
        .trim()
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.trim_end_matches('='))
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| unexpected("the attestation token does not decode".into()))?;
    let mut check = GpuCheck::default();
    if let Some(map) = claims.as_object() {
        for (k, v) in map.iter().filter(|(k, _)| k.starts_with("x-cinfer-gpu-")) {
            check.claims.push((k.clone(), v.to_string()));
        }
    }
    if let Some(gpus) = claims.get("x-cinfer-gpu").and_then(Value::as_object) {
        for (name, g) in gpus {
            let s = |k: &str| g.get(k).map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            check.per_gpu.push(format!(
                "{name}: hwmodel {} driver {} vbios {} measres {} cc-mode {} root {} eat_nonce {}",
                s("hwmodel"),
                s("x-nvidia-gpu-driver-version"),
                s("x-nvidia-gpu-vbios-version"),
                s("measres"),
                s("x-cinfer-gpu-cc-mode"),
                s("x-cinfer-gpu-root"),
                s("eat_nonce"),
            ));
        }
    }
    let mut release = Command::new(&ctx.attest);
    release
        .args([
            "release-key",
            "--maa",
            &auth.url,
            "--vault",
            &auth.url,
            "--key",
            kid,
            "--out",
        ])
        .arg(ctx.work.join("no-gpu.key"));
    mock(&mut release);
    check.refused_without_gpus = match run("cinfer-attest release-key (without GPUs)", &mut release) {
        Ok(_) => {
            return Err(unexpected(
                "the key was released to a guest without GPU evidence".into(),
            ));
        }
        Err(LocalError::CommandFailed { output, .. }) => output
            .lines()
            .rev()
            .find(|l| l.contains("x-cinfer-gpu"))
            .map(|l| l.trim().to_owned())
            .ok_or_else(|| unexpected(format!("refused, but not for the GPU: {output}")))?,
        Err(e) => return Err(e),
    };
    Ok(check)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use attest::gpu::claims::{CC_MODE, COUNT, DEVTOOLS, MEASUREMENTS_MATCHED};
    use attest::policy::ReleasePolicy;
    use serde_json::json;

    use super::*;

    /// Every clause (one per product floor) gains the GPU conditions; attest's evaluator is the oracle.
    #[test]
    fn gpu_conditions_join_every_clause_and_attest_enforces_them() {
        let pin = json!({"claim": "x-ms-sevsnpvm-hostdata", "equals": "ab"});
        let mut policy = json!({"version": "1.0.0", "anyOf": [
            {"authority": "http://a", "allOf": [pin]},
            {"authority": "http://a", "allOf": [pin]}]});
        let shown = require_gpus(&mut policy, 2).unwrap();
        assert_eq!(shown[0], r#"x-cinfer-gpu-count {"greaterOrEquals":2}"#);
        assert_eq!(shown.len(), 4);
        for clause in policy["anyOf"].as_array().unwrap() {
            assert_eq!(clause["allOf"].as_array().unwrap().len(), 5);
        }
        let p = ReleasePolicy::from_json(policy.to_string().as_bytes()).unwrap();
        let mut claims = json!({"x-ms-sevsnpvm-hostdata": "ab", COUNT: 2, CC_MODE: "on", DEVTOOLS: false,
                                MEASUREMENTS_MATCHED: true});
        p.evaluate("http://a", claims.as_object().unwrap()).unwrap();
        claims[COUNT] = json!(1);
        let e = p
            .evaluate("http://a", claims.as_object().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("x-cinfer-gpu-count is 1 not greaterOrEquals 2"), "{e}");
        let no_gpu = json!({"x-ms-sevsnpvm-hostdata": "ab"});
        let e = p
            .evaluate("http://a", no_gpu.as_object().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("x-cinfer-gpu-count is absent"), "{e}");
    }
}
