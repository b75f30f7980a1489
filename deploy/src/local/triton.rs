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

use super::env::python;
use super::error::{LocalError, Result};
use super::http;
use super::proc::{Proc, run, wait_for};
use super::rendered::LocalCommand;
use super::scripts;
use super::shutdown::Cancel;

/// A model in Triton's repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelState {
    /// Its name.
    pub name: String,
    /// `READY`, `UNAVAILABLE`, `LOADING`, ...
    pub state: String,
    /// Why it is unavailable (Triton's message, without the Python backend's traceback).
    pub reason: String,
}

/// Triton's reason without the traceback the Python backend's stub appends (`\n\nAt:\n  file(line): ...`).
fn reason(r: &str) -> String {
    r.split("\n\nAt:\n").next().unwrap_or_default().trim().to_owned()
}

/// A running Triton server.
#[derive(Debug)]
pub struct Triton {
    proc: Proc,
    http_port: u16,
}

/// Copies the bundled server into `work/tritonserver` with the right Python stub and our `onnxruntime` backend;
/// returns (server dir, the environment it needs).
pub fn prepare(work: &Path) -> Result<(PathBuf, Vec<(String, String)>)> {
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
    /// Starts the (localized, rendered) model server command, whose HTTP endpoint is `http_port`, and waits until
    /// it is live. Models that fail to load (or an empty repository) leave it running with those models not ready.
    pub fn start(cmd: &LocalCommand, http_port: u16, log_dir: &Path, cancel: &Cancel) -> Result<Self> {
        let mut proc = Proc::spawn("triton", cmd.command(), log_dir)?;
        wait_for("Triton to come up", Duration::from_secs(300), cancel, || {
            proc.check_running()?;
            Ok(http::status(http_port, "/v2/health/live") == Some(200))
        })?;
        Ok(Self { proc, http_port })
    }

    /// Every model of the repository with its state and, when unavailable, Triton's reason
    /// (`POST /v2/repository/index`).
    pub fn models(&self) -> Result<Vec<ModelState>> {
        let r = http::send(
            self.http_port,
            &http::Request {
                method: "POST",
                target: "/v2/repository/index",
                headers: &[("Content-Type", "application/json".to_owned())],
                body: http::Body::Bytes(b"{}"),
            },
            Duration::from_secs(10),
        )?;
        let v: Vec<serde_json::Value> = serde_json::from_str(&r.body).map_err(|e| LocalError::Unexpected {
            what: "Triton's repository index".into(),
            got: format!("HTTP {}: {e}: {}", r.status, r.body),
        })?;
        Ok(v.iter()
            .map(|m| ModelState {
                name: m["name"].as_str().unwrap_or_default().to_owned(),
                state: m["state"].as_str().unwrap_or_default().to_owned(),
                reason: m["reason"].as_str().map(reason).unwrap_or_default(),
            })
            .collect())
    }

    /// Waits until each of `names` is READY or UNAVAILABLE; calls `on_failed` as soon as one is unavailable, and
    /// returns the failed ones (name, Triton's reason).
    pub fn wait_models(
        &mut self,
        names: &[String],
        timeout: Duration,
        cancel: &Cancel,
        mut on_failed: impl FnMut(&str, &str),
    ) -> Result<Vec<(String, String)>> {
        let mut failed: Vec<(String, String)> = Vec::new();
        let mut ready: Vec<String> = Vec::new();
        wait_for("the models to load in Triton", timeout, cancel, || {
            self.proc.check_running()?;
            for m in self.models()? {
                if !names.contains(&m.name) || ready.contains(&m.name) || failed.iter().any(|(n, _)| *n == m.name) {
                    continue;
                }
                match m.state.as_str() {
                    "READY" => ready.push(m.name),
                    "UNAVAILABLE" => {
                        on_failed(&m.name, &m.reason);
                        failed.push((m.name, m.reason));
                    }
                    _ => {}
                }
            }
            Ok(ready.len() + failed.len() >= names.len())
        })?;
        Ok(failed)
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
