//! Attestation-gated key release, one step at a time so a failure names its step: a fresh ephemeral RSA key,
//! evidence, token, release, unwrap + derivation. Transient failures (network, 5xx, 429) are retried with
//! backoff by [`release_with_retry`]; final ones (policy denied, bad token, bad response) are not.

use std::fmt;
use std::time::{Duration, Instant};

use attest::client::{AttestationClient, KeyRef, KeyReleaseClient};
use attest::error::ClientError;
use attest::evidence::Attester;
use attest::keywrap::{KeyDerivation, RuntimeKey};
use attest::secret::ModelKey;
use attest::verify::maa_report_data;

use super::metrics::Metrics;

/// The step of bringing up one filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Step {
    /// Configuration (mount point, source URL).
    Config,
    /// Evidence from the attester (SNP device or mock), incl. the ephemeral key.
    Evidence,
    /// The attestation token (MAA or `cinfer-attest serve`).
    Token,
    /// Secure key release from the vault (incl. policy evaluation and the response signature).
    Release,
    /// Unwrapping the released key and deriving the model key.
    Unwrap,
    /// Opening the image source.
    Source,
    /// Header and index (key check, integrity).
    Index,
    /// The pinned root digest.
    RootPin,
    /// The model signature gate.
    Signature,
    /// The FUSE mount and exposing it.
    Mount,
    /// Extracting the files (`cinfer-encfs extract`) and exposing them.
    Extract,
}

impl Step {
    /// Lower-case name (logs, metrics labels, status JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Evidence => "evidence",
            Self::Token => "token",
            Self::Release => "release",
            Self::Unwrap => "unwrap",
            Self::Source => "source",
            Self::Index => "index",
            Self::RootPin => "root pin",
            Self::Signature => "signature",
            Self::Mount => "mount",
            Self::Extract => "extract",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed step.
#[derive(Debug, thiserror::Error)]
#[error("{step} failed: {message}")]
pub struct StepError {
    /// Which step.
    pub step: Step,
    /// Worth retrying (network, server overload) rather than final (policy denied, bad data).
    pub transient: bool,
    /// What happened.
    pub message: String,
}

impl StepError {
    /// A final (not retried) failure.
    pub(crate) fn fatal(step: Step, message: impl Into<String>) -> Self {
        Self {
            step,
            transient: false,
            message: message.into(),
        }
    }

    /// A client error at `step`, classified: transport errors, 408, 429 and 5xx are transient.
    pub fn from_client(step: Step, e: &ClientError) -> Self {
        let transient = match e {
            ClientError::Http { .. } => true,
            ClientError::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            ClientError::Credential(c) => c.is_transient(),
            _ => false,
        };
        // Unwrap failures surface from `release` (which unwraps inside); name the step that failed.
        let step = match e {
            ClientError::KeyWrap(_) => Step::Unwrap,
            _ => step,
        };
        Self {
            step,
            transient,
            message: format!("{e}"),
        }
    }
}

/// Everything one release needs.
pub(crate) struct ReleaseContext<'a> {
    /// Evidence source.
    pub attester: &'a dyn Attester,
    /// Attestation service.
    pub maa: &'a AttestationClient,
    /// Vault.
    pub vault: &'a KeyReleaseClient,
    /// Which key.
    pub key: &'a KeyRef,
    /// HKDF salt/label (RSA keys).
    pub derivation: &'a KeyDerivation,
}

/// One attempt: fresh ephemeral RSA key → evidence → token → release → unwrap → 32-byte key. Nothing touches
/// disk; the key is zeroized when dropped.
pub(crate) async fn release_once(ctx: &ReleaseContext<'_>) -> Result<ModelKey, StepError> {
    let rk = RuntimeKey::generate().map_err(|e| StepError::fatal(Step::Evidence, format!("ephemeral key: {e}")))?;
    let runtime_data = rk.runtime_data();
    let evidence = ctx
        .attester
        .evidence(&maa_report_data(&runtime_data))
        .map_err(|e| StepError::fatal(Step::Evidence, e.to_string()))?;
    let token = ctx
        .maa
        .attest(&evidence, &runtime_data)
        .await
        .map_err(|e| StepError::from_client(Step::Token, &e))?;
    let released = ctx
        .vault
        .release(ctx.key, &token, &rk)
        .await
        .map_err(|e| StepError::from_client(Step::Release, &e))?;
    released
        .to_model_key(ctx.derivation)
        .map_err(|e| StepError::fatal(Step::Unwrap, e.to_string()))
}

/// Retry policy for transient failures.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// Attempts in total (at least 1).
    pub attempts: u32,
    /// First delay; doubles up to `max`.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            attempts: 6,
            initial: Duration::from_millis(250),
            max: Duration::from_secs(8),
        }
    }
}

/// [`release_once`] with retries of transient failures; records latency and outcome in `metrics`.
pub(crate) async fn release_with_retry(
    ctx: &ReleaseContext<'_>,
    backoff: Backoff,
    metrics: &Metrics,
    fs_label: &str,
) -> Result<ModelKey, StepError> {
    let mut delay = backoff.initial;
    let mut attempt = 1;
    loop {
        let t = Instant::now();
        let r = release_once(ctx).await;
        let outcome = match &r {
            Ok(_) => "ok",
            Err(e) if e.transient => "transient_error",
            Err(e) if e.step == Step::Release => "denied",
            Err(_) => "error",
        };
        metrics.key_release(t.elapsed(), outcome);
        match r {
            Err(e) if e.transient && attempt < backoff.attempts.max(1) => {
                tracing::warn!(
                    filesystem = fs_label,
                    step = %e.step,
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    "transient failure, retrying: {}",
                    e.message
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(backoff.max);
                attempt += 1;
            }
            r => return r,
        }
    }
}
