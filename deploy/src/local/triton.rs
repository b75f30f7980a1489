//! The model server: a real Triton Inference Server, the `tritonserver` binary that PyPI's `nvidia-pytriton`
//! bundles, run directly on a model repository (the FUSE mount).
//!
//! Backends: that build ships only the Python backend. Models with a `model.py` run on it as they are; standard
//! ONNX models (`platform: "onnxruntime_onnx"` / `backend: "onnxruntime"`, no `model.py`) run on
//! `backends/onnxruntime/model.py`, a Python-based backend of ours ([`scripts::ONNXRUNTIME_BACKEND`]) that Triton
//! picks when it finds no `libtriton_onnxruntime.so`. Other backends (TensorRT, PyTorch, TensorFlow, OpenVINO, ...)
//! are not available locally.
//!
//! Two environment details make the bundled server work outside PyTriton: the Python backend stub for the
//! running interpreter's version is copied into `backends/python/`, and the stub must load *this* interpreter's
//! libpython (`LD_LIBRARY_PATH=<base prefix>/lib`, else it may pick up the system's and fail) and see the
//! venv's packages (the venv's `bin` first on `PATH`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::env::{free_port, port_or_free, python};
use super::error::{LocalError, Result};
use super::http;
use super::proc::{Proc, run, wait_for};
use super::scripts;
use super::shutdown::Cancel;

/// A running Triton server.
#[derive(Debug)]
pub struct Triton {
    proc: Proc,
    http_port: u16,
}

/// Copies the bundled server into `work/tritonserver` with the right Python stub; returns (server dir, env).
fn prepare(work: &Path) -> Result<(PathBuf, Vec<(String, String)>)> {
    let py = python()?;
    let info = run(
        "python (locate nvidia-pytriton)",
        Command::new(&py).args([
            "-c",
            "import pytriton, sys, os; p = os.path.dirname(pytriton.__file__); \
             print(p); print(f'{sys.version_info[0]}.{sys.version_info[1]}'); print(sys.base_prefix); \
             print(os.path.join(os.path.dirname(p), 'nvidia_pytriton.libs'))",
        ]),
    )?;
    let lines: Vec<&str> = info.lines().collect();
    let [pkg, version, base_prefix, libs] = lines[..] else {
        return Err(LocalError::Unexpected {
            what: "python (locate nvidia-pytriton)".into(),
            got: info,
        });
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
        let stub = dir
            .join("python_backend_stubs")
            .join(version)
            .join("triton_python_backend_stub");
        std::fs::copy(&stub, dir.join("backends/python/triton_python_backend_stub"))
            .map_err(LocalError::io(format!("copying {}", stub.display())))?;
    }
    // Installed on every start, so the backend is always this build's.
    let ort = dir.join("backends/onnxruntime");
    std::fs::create_dir_all(&ort).map_err(LocalError::io(format!("creating {}", ort.display())))?;
    std::fs::write(ort.join("model.py"), scripts::ONNXRUNTIME_BACKEND)
        .map_err(LocalError::io(format!("writing {}", ort.join("model.py").display())))?;
    let venv_bin = py.parent().map(Path::to_path_buf).unwrap_or_default();
    let path = format!("{}:{}", venv_bin.display(), std::env::var("PATH").unwrap_or_default());
    let ld = format!("{libs}:{base_prefix}/lib");
    Ok((dir, vec![("PATH".into(), path), ("LD_LIBRARY_PATH".into(), ld)]))
}

impl Triton {
    /// Starts Triton on `repo` with its HTTP endpoint on `http_port` (0: a free port) and waits until it is
    /// live. Models that fail to load (or an empty repository) leave it running with those models not ready.
    pub fn start(repo: &Path, work: &Path, log_dir: &Path, http_port: u16, cancel: &Cancel) -> Result<Self> {
        let (dir, env) = prepare(work)?;
        let http_port = port_or_free(http_port, "model server HTTP")?;
        let (grpc_port, metrics_port) = (free_port()?, free_port()?);
        let mut cmd = Command::new(dir.join("bin/tritonserver"));
        cmd.arg(format!("--model-repository={}", repo.display()))
            .arg(format!("--backend-directory={}", dir.join("backends").display()))
            .arg("--http-address=127.0.0.1")
            .arg(format!("--http-port={http_port}"))
            .arg("--grpc-address=127.0.0.1")
            .arg(format!("--grpc-port={grpc_port}"))
            .arg(format!("--metrics-port={metrics_port}"))
            .arg("--exit-on-error=false")
            .arg("--log-verbose=0")
            .envs(env);
        let mut proc = Proc::spawn("triton", cmd, log_dir)?;
        wait_for("Triton to come up", Duration::from_secs(300), cancel, || {
            proc.check_running()?;
            Ok(http::status(http_port, "/v2/health/live") == Some(200))
        })?;
        Ok(Self { proc, http_port })
    }

    /// Its KServe V2 HTTP port on 127.0.0.1.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The process.
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// The process, to check or stop it.
    pub fn proc_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Whether `model` is ready (HTTP 200 on its ready route).
    pub fn model_ready(&self, model: &str) -> bool {
        http::status(self.http_port, &format!("/v2/models/{model}/ready")) == Some(200)
    }

    /// Successful inference count of `model` from Triton's statistics (0 if unknown).
    pub fn inference_count(&self, model: &str) -> Result<u64> {
        let r = http::get(self.http_port, &format!("/v2/models/{model}/stats"))?;
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        Ok(v["model_stats"][0]["inference_count"].as_u64().unwrap_or(0))
    }
}
