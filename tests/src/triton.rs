//! A real Triton Inference Server: the `tritonserver` binary that PyPI's `nvidia-pytriton` bundles, run directly
//! on a model repository (the FUSE mount). Its Python backend runs each model's `model.py`, which loads the ONNX
//! file next to it with onnxruntime.
//!
//! Two environment details make the bundled server work outside PyTriton: the Python backend stub for the
//! running interpreter's version is copied into `backends/python/`, and the stub must load *this* interpreter's
//! libpython (`LD_LIBRARY_PATH=<base prefix>/lib`, else it may pick up the system's and fail) and see the
//! venv's packages (the venv's `bin` first on `PATH`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::env::{free_port, python};
use crate::proc::{Proc, http_status, run, wait_for};

/// A running Triton server.
pub struct Triton {
    /// The server process.
    pub proc: Proc,
    /// HTTP port (KServe V2 REST).
    pub http_port: u16,
}

/// Copies the bundled server into `work/tritonserver` with the right Python stub; returns (server dir, env).
fn prepare(work: &Path) -> anyhow::Result<(PathBuf, Vec<(String, String)>)> {
    let py = python()?;
    let info = run(
        "python (locate pytriton)",
        Command::new(&py).args([
            "-c",
            "import pytriton, sys, os; p = os.path.dirname(pytriton.__file__); \
             print(p); print(f'{sys.version_info[0]}.{sys.version_info[1]}'); print(sys.base_prefix); \
             print(os.path.join(os.path.dirname(p), 'nvidia_pytriton.libs'))",
        ]),
    )?;
    let lines: Vec<&str> = info.lines().collect();
    let [pkg, version, base_prefix, libs] = lines[..] else {
        anyhow::bail!("unexpected python output: {info}")
    };
    let dir = work.join("tritonserver");
    if !dir.join("bin/tritonserver").is_file() {
        run(
            "copy tritonserver",
            Command::new("cp")
                .arg("-r")
                .arg(Path::new(pkg).join("tritonserver"))
                .arg(&dir),
        )?;
        std::fs::copy(
            dir.join("python_backend_stubs")
                .join(version)
                .join("triton_python_backend_stub"),
            dir.join("backends/python/triton_python_backend_stub"),
        )
        .context("copying the Python backend stub")?;
    }
    let venv_bin = py.parent().map(Path::to_path_buf).unwrap_or_default();
    let path = format!("{}:{}", venv_bin.display(), std::env::var("PATH").unwrap_or_default());
    let ld = format!("{libs}:{base_prefix}/lib");
    Ok((dir, vec![("PATH".into(), path), ("LD_LIBRARY_PATH".into(), ld)]))
}

/// Starts Triton on `repo` and waits until it answers `/v2/health/live`. Models that fail to load (or a missing
/// repository content) leave the server running with those models not ready.
pub fn start(repo: &Path, work: &Path, log_dir: &Path) -> anyhow::Result<Triton> {
    let (dir, env) = prepare(work)?;
    let (http_port, grpc_port, metrics_port) = (free_port()?, free_port()?, free_port()?);
    let mut cmd = Command::new(dir.join("bin/tritonserver"));
    cmd.arg(format!("--model-repository={}", repo.display()))
        .arg(format!("--backend-directory={}", dir.join("backends").display()))
        .arg(format!("--http-port={http_port}"))
        .arg(format!("--grpc-port={grpc_port}"))
        .arg(format!("--metrics-port={metrics_port}"))
        .arg("--exit-on-error=false")
        .arg("--log-verbose=0")
        .envs(env);
    let mut proc = Proc::spawn("triton", cmd, log_dir)?;
    wait_for("Triton to come up", Duration::from_secs(300), || {
        proc.check_running()?;
        Ok(http_status(http_port, "/v2/health/live") == Some(200))
    })?;
    Ok(Triton { proc, http_port })
}

impl Triton {
    /// Whether `model` is ready (HTTP 200 on its ready route).
    pub fn model_ready(&self, model: &str) -> bool {
        http_status(self.http_port, &format!("/v2/models/{model}/ready")) == Some(200)
    }

    /// Successful inference count of `model` from Triton's statistics (0 if unknown).
    pub fn inference_count(&self, model: &str) -> anyhow::Result<u64> {
        let (_, body) = crate::proc::http_get(self.http_port, &format!("/v2/models/{model}/stats"))?;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        Ok(v["model_stats"][0]["inference_count"].as_u64().unwrap_or(0))
    }
}
