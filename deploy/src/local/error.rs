//! The one error type of [`crate::local`]: which step failed, with the evidence needed to fix it (a log tail,
//! the command's output) and never a secret (URLs are shown without their query).

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// A local pipeline could not be started or run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LocalError {
    /// A file or directory operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A workspace binary or helper program is not where it is looked for.
    #[error("{name} not found in {searched:?}: build the workspace binaries first (`cargo build --bins`)")]
    MissingBinary {
        /// Its name.
        name: String,
        /// Directories searched.
        searched: Vec<PathBuf>,
    },
    /// The Python environment with tritonclient, onnxruntime and nvidia-pytriton is missing.
    #[error("no Python environment at {0}: run `bash scripts/pyenv.sh` or set CINFER_PYTHON")]
    MissingPython(PathBuf),
    /// Azurite is not installed and could not be installed.
    #[error("Azurite is not available ({0}): run `bash scripts/azurite.sh` (needs node and npm) or set CINFER_AZURITE")]
    MissingAzurite(String),
    /// A process could not be started.
    #[error("starting {name}")]
    Spawn {
        /// Its short name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command ran to completion and failed.
    #[error("{what} failed ({status}):\n{output}")]
    CommandFailed {
        /// What was run.
        what: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its stdout and stderr.
        output: String,
    },
    /// A long-running process exited while it should be serving.
    #[error("{name} exited ({status}); log {log}:\n{tail}")]
    Exited {
        /// Its short name.
        name: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The last lines of the log.
        tail: String,
    },
    /// Something did not become ready in time.
    #[error("timed out after {after:?} waiting for {what}{}", last.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
        /// The last error seen while polling.
        last: Option<String>,
    },
    /// A tool printed something that is not what it documents.
    #[error("unexpected output of {what}: {got:?}")]
    Unexpected {
        /// The tool.
        what: String,
        /// What it printed.
        got: String,
    },
    /// A fixed port asked for is already taken.
    #[error("port {port} ({what}) is already in use on 127.0.0.1: pick another, or 0 for any free port")]
    PortInUse {
        /// The port.
        port: u16,
        /// What it was for.
        what: String,
    },
    /// An HTTP exchange with a local service failed.
    #[error("HTTP {what}: {reason}")]
    Http {
        /// The request.
        what: String,
        /// Why.
        reason: String,
    },
    /// The models directory is not a Triton model repository.
    #[error("{0} holds no model (a Triton repository has one directory per model, each with a config.pbtxt)")]
    NoModels(PathBuf),
    /// A shutdown was requested (SIGINT/SIGTERM) while starting.
    #[error("interrupted")]
    Interrupted,
}

impl LocalError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// Result of [`crate::local`] operations.
pub type Result<T, E = LocalError> = std::result::Result<T, E>;
