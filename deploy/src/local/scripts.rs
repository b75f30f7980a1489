//! The Python helpers the local pipeline runs, embedded so that `cinfer-deploy local` needs no checkout:
//! `make_models.py` (the example Triton model repository with a real ONNX classifier) and `client.py` (an
//! unmodified `tritonclient` through `http_proxy`), written into the work directory; and the local Triton's
//! `onnxruntime` backend.

use std::path::{Path, PathBuf};

use super::error::{LocalError, Result};

/// `deploy/python/make_models.py`.
pub const MAKE_MODELS: &str = include_str!("../../python/make_models.py");

/// `deploy/python/client.py`.
pub const CLIENT: &str = include_str!("../../python/client.py");

/// `deploy/python/onnxruntime_backend.py`: Triton's `onnxruntime` backend as a Python-based backend, installed as
/// `<backends>/onnxruntime/model.py` of the local server (see [`crate::local::triton`]).
pub const ONNXRUNTIME_BACKEND: &str = include_str!("../../python/onnxruntime_backend.py");

/// Writes both scripts into `dir`; returns `(make_models.py, client.py)`.
pub fn write(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let make = dir.join("make_models.py");
    let client = dir.join("client.py");
    for (path, text) in [(&make, MAKE_MODELS), (&client, CLIENT)] {
        std::fs::write(path, text).map_err(LocalError::io(format!("writing {}", path.display())))?;
    }
    Ok((make, client))
}
