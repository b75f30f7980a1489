//! Where rules are read from and written to: the real `iptables-save`/`iptables-restore` pair, or a recorder.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use thiserror::Error;

use crate::chains::Family;

/// A failure to read or write rules.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The program could not be started (not installed?).
    #[error("cannot run `{program}` (is it installed?)")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The program ran and failed; for `iptables-restore` nothing was changed (the transaction is atomic).
    #[error("`{program}` failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

/// Reads and atomically replaces packet filter rules.
pub trait Backend {
    /// All tables of `family` in `iptables-save` format.
    fn save(&self, family: Family) -> Result<String, BackendError>;
    /// Applies `script` (in `iptables-restore` format) to `family` in one transaction, without flushing
    /// anything the script does not name.
    fn restore(&self, family: Family, script: &str) -> Result<(), BackendError>;
}

/// Which iptables implementation to run; both read and write the same `iptables-restore` format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Flavor {
    /// Whatever `iptables-restore` is on this system (Debian's alternatives; nf_tables since bookworm).
    #[default]
    System,
    /// `iptables-legacy-restore` (x_tables), for kernels without nf_tables.
    Legacy,
    /// `iptables-nft-restore` (nf_tables).
    Nft,
}

/// The real backend: `iptables-save` and `iptables-restore --noflush` (and their `ip6tables-*` twins).
#[derive(Debug, Clone, Default)]
pub struct IptablesRestore {
    /// The implementation to run.
    pub flavor: Flavor,
}

impl IptablesRestore {
    /// The save and restore programs for `family`.
    pub fn programs(&self, family: Family) -> (String, String) {
        let base = match family {
            Family::Ipv4 => "iptables",
            Family::Ipv6 => "ip6tables",
        };
        let flavor = match self.flavor {
            Flavor::System => "",
            Flavor::Legacy => "-legacy",
            Flavor::Nft => "-nft",
        };
        (format!("{base}{flavor}-save"), format!("{base}{flavor}-restore"))
    }
}

/// Runs `program` with `args`, feeding `stdin`; its stdout on success.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, BackendError> {
    let spawn_err = |source| BackendError::Spawn {
        program: program.to_owned(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(BackendError::Failed {
            program: program.to_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Backend for IptablesRestore {
    fn save(&self, family: Family) -> Result<String, BackendError> {
        run(&self.programs(family).0, &[], None)
    }

    fn restore(&self, family: Family, script: &str) -> Result<(), BackendError> {
        run(&self.programs(family).1, &["--noflush", "--wait"], Some(script)).map(drop)
    }
}

/// A backend for tests and dry runs: returns fixed saved rules and records what would be restored.
#[derive(Debug, Default)]
pub struct Recording {
    /// What `save` returns, for every family.
    pub saved: String,
    /// Every `restore` call, in order.
    pub restored: Mutex<Vec<(Family, String)>>,
}

impl Backend for Recording {
    fn save(&self, _family: Family) -> Result<String, BackendError> {
        Ok(self.saved.clone())
    }

    fn restore(&self, family: Family, script: &str) -> Result<(), BackendError> {
        self.restored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((family, script.to_owned()));
        Ok(())
    }
}
