//! Where the pieces are: the workspace's binaries, the Python environment, free ports.

use std::path::{Path, PathBuf};

use super::error::{LocalError, Result};

/// The repository this crate was built from (scripts such as `scripts/azurite.sh` live there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Path of a workspace binary (`cinfer-encfs`, ...): in `CINFER_BIN_DIR` when set, else next to the running
/// executable or up to two directories above it (a test executable lives in `target/debug/deps`).
pub fn bin(name: &str) -> Result<PathBuf> {
    let dirs: Vec<PathBuf> = match std::env::var_os("CINFER_BIN_DIR") {
        Some(d) => vec![PathBuf::from(d)],
        None => {
            let exe = std::env::current_exe().map_err(LocalError::io("locating the running executable"))?;
            exe.ancestors().skip(1).take(3).map(PathBuf::from).collect()
        }
    };
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| LocalError::MissingBinary {
            name: name.into(),
            searched: dirs,
        })
}

/// The Python interpreter with the real peers (tritonclient, onnxruntime, nvidia-pytriton): `CINFER_PYTHON`,
/// else the virtual environment `scripts/pyenv.sh` makes in `~/.cache/cinfer/venv`.
pub fn python() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CINFER_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let p = home().join(".cache/cinfer/venv/bin/python");
    if p.is_file() {
        Ok(p)
    } else {
        Err(LocalError::MissingPython(p))
    }
}

/// `$HOME`, or `/root`.
pub(crate) fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(LocalError::io("finding a free port"))
}

/// `port`, checked to be free on 127.0.0.1; 0 picks any free port.
pub fn port_or_free(port: u16, what: &str) -> Result<u16> {
    if port == 0 {
        return free_port();
    }
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(port),
        Err(_) => Err(LocalError::PortInUse {
            port,
            what: what.into(),
        }),
    }
}
