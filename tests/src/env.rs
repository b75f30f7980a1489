//! Where the pieces are: the workspace's binaries, the test Python environment, free ports.

use std::path::PathBuf;

use anyhow::{Context, bail};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Path of a workspace binary (`cinfer-encfs`, ...), next to the running executable's target directory.
/// `CINFER_BIN_DIR` overrides it.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let dirs: Vec<PathBuf> = match std::env::var_os("CINFER_BIN_DIR") {
        Some(d) => vec![PathBuf::from(d)],
        None => {
            let exe = std::env::current_exe().context("current_exe")?;
            exe.ancestors().skip(1).take(3).map(PathBuf::from).collect()
        }
    };
    for d in &dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} not found in {dirs:?}: build the workspace binaries first (`cargo build --bins`)")
}

/// The Python interpreter of the test environment (`CINFER_PYTHON`, or the venv `scripts/pyenv.sh` makes).
pub fn python() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("CINFER_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    let p = home.join(".cache/cinfer/venv/bin/python");
    if p.is_file() {
        return Ok(p);
    }
    bail!("no test Python environment: run `bash scripts/pyenv.sh` (it installs tritonclient, onnxruntime, ...)")
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
