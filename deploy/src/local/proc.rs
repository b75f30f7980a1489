//! Supervision of child processes: each [`Proc`] runs in its own process group (so a Ctrl-C on the terminal
//! reaches only `cinfer-deploy`, which then stops the children in order), logs to a file, and is stopped
//! (SIGTERM, then SIGKILL after a grace period) when its guard is dropped, so an error or a panic leaves nothing
//! running.

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::error::{LocalError, Result};
use super::shutdown::Cancel;

/// A running child process.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    grace: Duration,
}

impl Proc {
    /// Starts `cmd` in a new process group with stdout and stderr appended to `log_dir/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(LocalError::io(format!("opening {}", log.display())))?;
        let err = out.try_clone().map_err(LocalError::io("duplicating a log handle"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|source| LocalError::Spawn {
                name: name.into(),
                source,
            })?;
        debug!(name, pid = child.id(), log = %log.display(), "started");
        Ok(Self {
            name: name.into(),
            child,
            log,
            grace: Duration::from_secs(10),
        })
    }

    /// Sets how long a stop waits after SIGTERM before SIGKILL (default 10 s).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Short name (also the log file's stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(LocalError::Exited {
                name: self.name.clone(),
                status,
                log: self.log.clone(),
                tail: tail(&self.log, 30),
            }),
            Ok(None) => Ok(()),
            Err(e) => Err(LocalError::io(format!("waiting for {}", self.name))(e)),
        }
    }

    /// Peak and current resident memory in KiB (`VmHWM`, `VmRSS`), while it runs.
    pub fn memory_kib(&self) -> Option<(u64, u64)> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let field = |k: &str| {
            s.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        };
        Some((field("VmHWM:")?, field("VmRSS:")?))
    }

    /// Sends SIGTERM, waits up to the grace period, then SIGKILLs; returns the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let wait_err = LocalError::io(format!("waiting for {}", self.name));
        if let Ok(Some(st)) = self.child.try_wait() {
            return Ok(st);
        }
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + self.grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    info!(name = %self.name, status = %st, "stopped");
                    return Ok(st);
                }
                Ok(None) if Instant::now() > deadline => {
                    warn!(name = %self.name, grace = ?self.grace, "did not stop on SIGTERM: killing it");
                    let _ = self.child.kill();
                    return self.child.wait().map_err(wait_err);
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(wait_err(e)),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[allow(unsafe_code)]
fn signal(pid: u32, sig: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) has no memory-safety preconditions; a stale pid at worst gets ESRCH.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a command to completion; fails with its output if it exits non-zero. Returns stdout.
pub fn run(what: &str, cmd: &mut Command) -> Result<String> {
    debug!(what, "running");
    let out = cmd.stdin(Stdio::null()).output().map_err(|source| LocalError::Spawn {
        name: what.into(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(LocalError::CommandFailed {
            what: what.into(),
            status: out.status,
            output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        });
    }
    Ok(stdout)
}

/// Polls `f` every 100 ms until it returns `Ok(true)`, `timeout` passes, `f` fails with a process exit, or
/// `cancel` is set.
pub fn wait_for(what: &str, timeout: Duration, cancel: &Cancel, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if cancel.is_cancelled() {
            return Err(LocalError::Interrupted);
        }
        match f() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e @ (LocalError::Exited { .. } | LocalError::Interrupted)) => return Err(e),
            Err(e) => last = Some(e.to_string()),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(LocalError::Timeout {
        what: what.into(),
        after: timeout,
        last,
    })
}
