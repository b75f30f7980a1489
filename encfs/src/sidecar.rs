//! The confidential sidecar (`cinfer-encfs sidecar`): for every filesystem of the seed's `EncfsSideCarArgs`,
//! release its key through attestation, verify the image and mount it, in parallel; expose each mount
//! atomically; report readiness; unmount everything on shutdown.
//!
//! Per filesystem `i` with mount point `P`:
//!
//! 1. key: fresh ephemeral RSA key → evidence → token → release → unwrap (+ HKDF for RSA keys), in memory only
//!    ([`release`]); transient failures are retried with backoff;
//! 2. open the image source and verify header, index and the optional root pin and signature;
//! 3. mount FUSE on the hidden directory `parent(P)/.filesystem-i`, then atomically replace `P` with the symlink
//!    `P -> .filesystem-i` (the seed's trick), so consumers never see a half-mounted directory;
//! 4. mark it ready ([`ready`]): `<ready-dir>/filesystem-i.ready`, `GET /ready`, metrics.
//!
//! Failures are reported per filesystem with the [`release::Step`] that failed.

pub mod config;
pub mod metrics;
pub mod ready;
pub mod release;
pub mod toml_config;

use std::future::Future;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attest::client::{AttestationClient, KeyRef, KeyReleaseClient, ResponseVerification, VaultAuth};
use attest::credential::{Credential, TokenProvider};
use attest::evidence::Attester;
use attest::keywrap::KeyDerivation;
use attest::secret::SecretBytes;
use tracing::{error, info, warn};

use crate::cache::{CacheConfig, CachingSource};
use crate::format::ModelKey;
use crate::fs::EncFs;
use crate::fuse::{MountConfig, MountSession};
use crate::pipeline::{self, ImageSpec, PipelineError, Serving, Stage, Verified};
use crate::source::{AnySource, AzureAuth, BlobKey, BlobSource, SourceOptions};

use self::config::{ConfigError, FilesystemSpec, SidecarConfig};
use self::ready::{FsState, Status};
use self::release::{Backoff, ReleaseContext, Step, StepError};

/// Why the sidecar stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// Some filesystems could not be mounted (each line names the filesystem and step).
    #[error("{} of {total} filesystem(s) failed:\n{}", failures.len(), failures.join("\n"))]
    Failed {
        /// One line per failed filesystem.
        failures: Vec<String>,
        /// How many were configured.
        total: usize,
    },
    /// Setup (listener, attester).
    #[error("{0}")]
    Setup(String),
    /// A mount ended while serving (unmounted from outside, or its filesystem died); the others were unmounted.
    #[error("{}", .0.join("\n"))]
    MountEnded(Vec<String>),
}

/// Runtime options (from the command line).
pub struct SidecarOptions {
    /// Evidence source.
    pub attester: Arc<dyn Attester>,
    /// Where to write `filesystem-<i>.ready` / `.failed` and `ready`.
    pub ready_dir: Option<PathBuf>,
    /// The HTTP listener for `/ready`, `/status`, `/metrics`.
    pub listener: Option<tokio::net::TcpListener>,
    /// Retries of transient failures.
    pub backoff: Backoff,
    /// Mount each filesystem (FUSE), or extract its files.
    pub delivery: Delivery,
    /// Called once every filesystem is ready (for example to log the start→ready time).
    pub on_ready: Option<Box<dyn FnOnce(Duration) + Send>>,
    /// Mount filesystems that pin neither a root nor a signer (testing only); otherwise they fail at
    /// [`Step::Config`] before any key is released.
    pub allow_unpinned: bool,
}

/// What the sidecar does with a verified image.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// Mount it with FUSE (these settings; `fs_name` is set per filesystem) and serve until shutdown.
    Mount(MountConfig),
    /// Write its files into the mount point's volume ([`crate::extract`]) and return once all are written and
    /// checked: for platforms without FUSE (`cinfer-encfs extract`, an init container on AKS). Legacy LUKS2
    /// images are refused (convert them with `cinfer-mkimage convert`).
    Extract,
}

/// Why an unpinned filesystem is refused.
const UNPINNED: &str = "neither cinfer_expect_root nor cinfer_signer_key pins the image: any image sealed with the \
                        released key (an older version, another model) would be served. Pin the root that \
                        `cinfer-mkimage build` printed (or start the sidecar with --allow-unpinned, testing only)";

/// The image source for a configured URL: a local path, a `file://` URL, or an HTTP(S)/Azure Blob URL (SAS or
/// public) through [`crate::source::open`]. The one place that chooses a backend.
fn open_source(url: &str, opts: &SourceOptions) -> Result<(AnySource, BlobKey), StepError> {
    crate::source::open(url, opts)
        .map_err(|e| StepError::fatal(Step::Source, format!("{}: {}", BlobKey::new(url), pipeline::chain(&e))))
}

/// The hidden mount directory and the visible mount point of `spec`.
fn paths(spec: &FilesystemSpec) -> Result<(PathBuf, PathBuf), StepError> {
    let mp = std::path::absolute(&spec.mount_point)
        .map_err(|e| StepError::fatal(Step::Config, format!("mount_point: {e}")))?;
    let parent = mp
        .parent()
        .ok_or_else(|| StepError::fatal(Step::Config, "mount_point has no parent directory"))?;
    Ok((parent.join(format!(".filesystem-{}", spec.index)), mp))
}

/// Lazily detaches a stale FUSE mount (a killed previous run) at `dir`, if any.
fn clean_stale(dir: &Path) {
    let stale = match std::fs::metadata(dir) {
        Err(e) => e.raw_os_error() == Some(libc::ENOTCONN),
        Ok(m) => {
            // Still a live mount of ours from a previous run: different device than its parent.
            let parent_dev = dir.parent().and_then(|p| std::fs::metadata(p).ok()).map(|p| p.dev());
            parent_dev.is_some_and(|d| d != m.dev())
        }
    };
    if stale {
        warn!(dir = %dir.display(), "detaching a stale mount from a previous run");
        let _ = std::process::Command::new(crate::fuse::FUSERMOUNT)
            .args(["-u", "-z", "--"])
            .arg(dir)
            .output();
    }
}

/// Prepares the mount point: a stale symlink from a previous run goes now (consumers must not follow it to a
/// dead mount); an empty directory is replaced at expose time; anything else is refused.
fn prepare_mount_point(mp: &Path) -> Result<(), StepError> {
    match std::fs::symlink_metadata(mp) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StepError::fatal(Step::Mount, format!("{}: {e}", mp.display()))),
        Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(mp)
            .map_err(|e| StepError::fatal(Step::Mount, format!("removing stale symlink {}: {e}", mp.display()))),
        Ok(m) if m.is_dir() => {
            let empty = std::fs::read_dir(mp).map(|mut d| d.next().is_none()).unwrap_or(false);
            if empty {
                Ok(())
            } else {
                Err(StepError::fatal(
                    Step::Mount,
                    format!("mount_point {} exists and is not an empty directory", mp.display()),
                ))
            }
        }
        Ok(_) => Err(StepError::fatal(
            Step::Mount,
            format!("mount_point {} exists and is not a directory", mp.display()),
        )),
    }
}

/// Atomically makes `mp` a symlink to the hidden directory's name.
fn expose(hidden: &Path, mp: &Path) -> std::io::Result<()> {
    let name = hidden
        .file_name()
        .ok_or_else(|| std::io::Error::other("hidden dir has no name"))?;
    let tmp = mp.with_file_name(format!(
        ".{}.cinfer-link",
        mp.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp)?;
    if std::fs::symlink_metadata(mp).is_ok_and(|m| m.is_dir()) {
        std::fs::remove_dir(mp)?;
    }
    std::fs::rename(&tmp, mp)
}

/// One mounted (or extracted) filesystem.
struct Mounted {
    index: usize,
    /// The FUSE session; None for an extracted tree (nothing to serve).
    session: Option<MountSession>,
    hidden: PathBuf,
    mount_point: PathBuf,
}

impl Mounted {
    fn unmount(self) {
        // The symlink goes first, so nobody opens the mount while it is being torn down.
        let _ = std::fs::remove_file(&self.mount_point);
        let Some(session) = self.session else {
            // An extracted tree of a run that failed elsewhere: its plaintext goes too.
            if let Err(e) = crate::extract::remove_tree(&self.hidden) {
                warn!("removing the extracted tree: {e}");
            }
            info!(mount_point = %self.mount_point.display(), "extracted tree removed");
            return;
        };
        if let Err(e) = session.unmount() {
            warn!(mountpoint = %self.hidden.display(), "unmount failed ({e}); detaching lazily");
            clean_stale(&self.hidden);
        }
        let _ = std::fs::remove_dir(&self.hidden);
        info!(mount_point = %self.mount_point.display(), "unmounted");
    }

    fn is_finished(&self) -> bool {
        self.session.as_ref().is_some_and(MountSession::is_finished)
    }
}

/// The vault client: the configured bearer token; else with Workload Identity its token (a local broker ignores
/// it); else none for a local `http://` broker; else the managed identity's token.
fn vault_client(
    spec: &FilesystemSpec,
    tokens: &Arc<TokenProvider>,
    jwks: Option<attest::token::Jwks>,
) -> Result<KeyReleaseClient, StepError> {
    let local = spec.vault.starts_with("http://");
    let workload_identity = matches!(tokens.credential(), Credential::WorkloadIdentity(_));
    let auth = match &spec.bearer_token {
        Some(t) => VaultAuth::Bearer(SecretBytes::from_slice(t.expose().as_bytes())),
        None if local && !workload_identity => VaultAuth::None,
        None => VaultAuth::Entra(tokens.clone()),
    };
    let verification = match jwks {
        Some(j) => ResponseVerification::Pinned(j),
        None => ResponseVerification::system_roots(&spec.vault),
    };
    KeyReleaseClient::new(&spec.vault, auth, verification).map_err(|e| StepError::from_client(Step::Release, &e))
}

async fn bring_up(
    spec: &FilesystemSpec,
    attester: &dyn Attester,
    tokens: &Arc<TokenProvider>,
    backoff: Backoff,
    status: &Status,
    delivery: &Delivery,
    rt: tokio::runtime::Handle,
) -> Result<(Mounted, String), StepError> {
    let label = spec.index.to_string();
    let (hidden, mp) = paths(spec)?;
    prepare_mount_point(&mp)?;
    // The sources share the sidecar's counters (served at /metrics); `azure_url_private` fetches the blob with an
    // Entra ID token (the seed's meaning): the managed identity's (user-assigned when configured), or Workload
    // Identity's.
    let source_opts = SourceOptions {
        metrics: status.sources.clone(),
        azure_auth: if spec.url_private {
            AzureAuth::Entra(tokens.clone())
        } else {
            AzureAuth::UrlOrAnonymous
        },
        ..SourceOptions::default()
    };
    let (source, blob) = open_source(&spec.url, &source_opts)?;
    let maa = AttestationClient::new(&spec.authority).map_err(|e| StepError::from_client(Step::Token, &e))?;
    // A local broker (`http://`, e.g. `cinfer-attest serve`) signs release responses with its token keys:
    // pin its JWKS. AKV/mHSM responses are checked against the system CAs for the vault's host name.
    let jwks = if spec.vault.starts_with("http://") {
        let c = AttestationClient::new(&spec.vault).map_err(|e| StepError::from_client(Step::Release, &e))?;
        Some(c.jwks().await.map_err(|e| StepError::from_client(Step::Release, &e))?)
    } else {
        None
    };
    let vault = vault_client(spec, tokens, jwks)?;
    let key_ref = KeyRef::parse(&spec.kid);
    let derivation = KeyDerivation {
        salt: spec.salt.clone(),
        label: spec.label.clone(),
    };
    let ctx = ReleaseContext {
        attester,
        maa: &maa,
        vault: &vault,
        key: &key_ref,
        derivation: &derivation,
    };
    let t = Instant::now();
    // On this thread, to the end: the unwrapped key passes through the attestation client's buffers on the
    // stack, which are wiped once the key sits in its one heap copy (a task could move between worker threads
    // at every await).
    let model_key = tokio::task::block_in_place(|| {
        let released = rt.block_on(release::release_with_retry(&ctx, backoff, &status.metrics, &label));
        let key = released
            .and_then(|r| ModelKey::from_slice(r.expose()).map_err(|e| StepError::fatal(Step::Unwrap, e.to_string())));
        crate::format::scrub_stack();
        key
    })?;
    info!(filesystem = spec.index, kid = %spec.kid, ms = t.elapsed().as_millis() as u64, "key released");
    if matches!(source, AnySource::Http(_) | AnySource::Azure(_)) {
        // Remote: prefetch and cache ciphertext parts within the filesystem's cache budget.
        let budget = spec
            .cache_mb
            .unwrap_or(crate::cache::DEFAULT_BUDGET_MIB)
            .saturating_mul(1 << 20);
        let source = CachingSource::new(source, CacheConfig::for_budget(budget), status.sources.clone());
        return open_and_mount(source, blob, model_key, spec, (hidden, mp), delivery, rt).await;
    }
    open_and_mount(source, blob, model_key, spec, (hidden, mp), delivery, rt).await
}

/// The pipeline's step, as the sidecar reports it.
fn step_of(stage: Stage) -> Step {
    match stage {
        Stage::Source => Step::Source,
        Stage::RootPin => Step::RootPin,
        Stage::Signature => Step::Signature,
        Stage::Mount => Step::Mount,
        _ => Step::Index,
    }
}

/// Opens and verifies the image with the released key through the one pipeline ([`crate::pipeline`]: header,
/// index, root pin, signature, or a legacy image's demands), then mounts it on the hidden directory and exposes
/// it at the mount point, or extracts it. Returns the mount and the image root (hex).
async fn open_and_mount<B: BlobSource>(
    source: B,
    blob: BlobKey,
    model_key: ModelKey,
    spec: &FilesystemSpec,
    (hidden, mp): (PathBuf, PathBuf),
    delivery: &Delivery,
    rt: tokio::runtime::Handle,
) -> Result<(Mounted, String), StepError> {
    let ids = std::fs::metadata("/proc/self")
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or((0, 0));
    let signer = match &spec.signer_key {
        None => None,
        Some(signer) => {
            let pem = signer
                .pem()
                .map_err(|e| StepError::fatal(Step::Signature, format!("{signer}: {e}")))?;
            Some(
                crate::signature::VerifyingKey::from_pem(&pem)
                    .map_err(|e| StepError::fatal(Step::Signature, format!("{signer}: {e}")))?,
            )
        }
    };
    let image = ImageSpec {
        shown: blob.to_string(),
        expect_root: spec.expect_root,
        signer,
        verify: spec.verify,
        budget: spec
            .cache_mb
            .unwrap_or(crate::cache::DEFAULT_BUDGET_MIB)
            .saturating_mul(1 << 20),
        uid: ids.0,
        gid: ids.1,
        fs: crate::fs::EncFsConfig::default(),
    };
    let local = !crate::source::is_url(&spec.url);
    let pipeline_err = |e: PipelineError| StepError::fatal(step_of(e.stage), e.message);
    let verified = tokio::task::block_in_place(|| pipeline::open_verified(source, blob, model_key, &image, &rt))
        .map_err(pipeline_err)?;
    match (delivery, verified) {
        (Delivery::Mount(cfg), verified) => {
            let serving = Serving {
                config: prepare_hidden(spec, &hidden, cfg)?,
                local,
                read_ahead_kb: crate::fuse::DEFAULT_READ_AHEAD_KB,
            };
            let (session, root) =
                tokio::task::block_in_place(|| pipeline::mount(verified, &image, &hidden, &serving, &rt))
                    .map_err(pipeline_err)?;
            Ok((finish_mount(spec, session, (hidden, mp))?, root))
        }
        (Delivery::Extract, Verified::Image(fs)) => {
            let root = hex::encode(fs.root());
            Ok((extract_tree(&fs, spec, (hidden, mp), &rt)?, root))
        }
        (Delivery::Extract, Verified::Legacy(..)) => Err(StepError::fatal(
            Step::Extract,
            "a legacy LUKS2 image cannot be extracted (it has no authenticated index to check the files against): \
             convert it with `cinfer-mkimage convert`",
        )),
    }
}

/// Writes the verified image's files to the hidden directory and exposes it at the mount point.
fn extract_tree<B: BlobSource>(
    fs: &EncFs<B>,
    spec: &FilesystemSpec,
    (hidden, mp): (PathBuf, PathBuf),
    rt: &tokio::runtime::Handle,
) -> Result<Mounted, StepError> {
    // A previous run's tree (a restarted init container) is replaced, never trusted.
    clean_stale(&hidden);
    crate::extract::remove_tree(&hidden).map_err(|e| StepError::fatal(Step::Extract, e.to_string()))?;
    let stats = tokio::task::block_in_place(|| crate::extract::extract(fs, &hidden, rt))
        .map_err(|e| StepError::fatal(Step::Extract, e.to_string()))?;
    info!(filesystem = spec.index, files = stats.files, dirs = stats.dirs, symlinks = stats.symlinks,
          bytes = stats.bytes, ms = stats.ms, dir = %hidden.display(), "image extracted");
    let mounted = Mounted {
        index: spec.index,
        session: None,
        hidden,
        mount_point: mp,
    };
    if let Err(e) = expose(&mounted.hidden, &mounted.mount_point) {
        let msg = format!("exposing {}: {e}", mounted.mount_point.display());
        mounted.unmount();
        return Err(StepError::fatal(Step::Extract, msg));
    }
    Ok(mounted)
}

/// Makes an empty hidden directory to mount on, and the mount settings for `spec`.
fn prepare_hidden(spec: &FilesystemSpec, hidden: &Path, mount_cfg: &MountConfig) -> Result<MountConfig, StepError> {
    clean_stale(hidden);
    std::fs::create_dir_all(hidden)
        .map_err(|e| StepError::fatal(Step::Mount, format!("creating {}: {e}", hidden.display())))?;
    Ok(MountConfig {
        fs_name: format!("cinfer-encfs:{}", BlobKey::new(spec.url.as_str())).replace([',', ' ', '\t', '\n'], "_"),
        ..mount_cfg.clone()
    })
}

/// Raises the new mount's readahead and exposes it at the mount point; unmounts it again if that fails.
fn finish_mount(
    spec: &FilesystemSpec,
    session: MountSession,
    (hidden, mp): (PathBuf, PathBuf),
) -> Result<Mounted, StepError> {
    let mounted = Mounted {
        index: spec.index,
        session: Some(session),
        hidden,
        mount_point: mp,
    };
    if let Err(e) = expose(&mounted.hidden, &mounted.mount_point) {
        let msg = format!("exposing {}: {e}", mounted.mount_point.display());
        mounted.unmount();
        return Err(StepError::fatal(Step::Mount, msg));
    }
    Ok(mounted)
}

/// Runs the sidecar on `rt` until `shutdown` completes (SIGTERM) or a mount disappears: brings every
/// filesystem up in parallel, then serves. If any filesystem fails for good, the others are unmounted and the
/// error lists each failure with its step. A mount that ends while serving (unmounted from outside, or dead:
/// detached) unmounts the others and returns [`SidecarError::MountEnded`]. Returns `Ok` only after a clean
/// shutdown.
pub fn run(
    rt: &tokio::runtime::Runtime,
    config: SidecarConfig,
    mut opts: SidecarOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SidecarError> {
    let start = Instant::now();
    for w in &config.warnings {
        warn!("EncfsSideCarArgs: {w}");
    }
    if let Some(dir) = &opts.ready_dir {
        std::fs::create_dir_all(dir).map_err(|e| SidecarError::Setup(format!("ready dir {}: {e}", dir.display())))?;
    }
    let status = Arc::new(Status::new(
        config
            .filesystems
            .iter()
            .map(|f| f.mount_point.display().to_string())
            .collect(),
        opts.ready_dir.clone(),
    ));
    let server = opts.listener.take().map(|l| rt.spawn(ready::serve(l, status.clone())));
    let total = config.filesystems.len();
    // One provider for every filesystem, vault and blob: one cached token per resource. Workload Identity's
    // variables are checked here, before any filesystem starts.
    let tokens = config
        .credential(|name| std::env::var(name).ok())
        .and_then(|c| TokenProvider::new(c).map_err(|e| ConfigError::WorkloadIdentity(e.to_string())))
        .map(Arc::new)
        .map_err(|e| SidecarError::Setup(e.to_string()))?;
    if let Credential::WorkloadIdentity(wi) = tokens.credential() {
        info!(client_id = %wi.client_id, tenant = %wi.tenant_id, authority = %wi.authority_host,
              "Entra ID tokens through workload identity");
    }
    let specs: Vec<Arc<FilesystemSpec>> = config.filesystems.into_iter().map(Arc::new).collect();
    let tasks: Vec<_> = specs
        .iter()
        .map(|spec| {
            let spec = spec.clone();
            let attester = opts.attester.clone();
            let tokens = tokens.clone();
            let status = status.clone();
            let backoff = opts.backoff;
            let delivery = opts.delivery.clone();
            let handle = rt.handle().clone();
            let allow_unpinned = opts.allow_unpinned;
            rt.spawn(async move {
                let r = if !allow_unpinned && spec.expect_root.is_none() && spec.signer_key.is_none() {
                    Err(StepError::fatal(Step::Config, UNPINNED))
                } else {
                    if spec.expect_root.is_none() && spec.signer_key.is_none() {
                        warn!(filesystem = spec.index, "UNPINNED (--allow-unpinned): {UNPINNED}");
                    }
                    bring_up(&spec, &*attester, &tokens, backoff, &status, &delivery, handle).await
                };
                match &r {
                    Ok((_, root)) => {
                        status.metrics.ready(&spec.index.to_string(), start.elapsed());
                        status.set(spec.index, FsState::Ready(root.clone()));
                        info!(filesystem = spec.index, mount_point = %spec.mount_point.display(), root = %root,
                              ms = start.elapsed().as_millis() as u64, "filesystem ready");
                    }
                    Err(e) => {
                        status.metrics.failure(&spec.index.to_string(), e.step.as_str());
                        status.set(
                            spec.index,
                            FsState::Failed {
                                step: e.step.as_str(),
                                message: e.message.clone(),
                            },
                        );
                        error!(filesystem = spec.index, mount_point = %spec.mount_point.display(), step = %e.step, "{}", e.message);
                    }
                }
                r.map(|(m, _)| m)
            })
        })
        .collect();
    let results: Vec<Result<Mounted, StepError>> = rt.block_on(async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(
                t.await
                    .unwrap_or_else(|e| Err(StepError::fatal(Step::Mount, format!("task panicked: {e}")))),
            );
        }
        out
    });
    let mut mounted = Vec::new();
    let mut failures = Vec::new();
    for (spec, r) in specs.iter().zip(results) {
        match r {
            Ok(m) => mounted.push(m),
            Err(e) => failures.push(format!(
                "azure_filesystems[{}] ({}): {} failed: {}",
                spec.index,
                spec.mount_point.display(),
                e.step,
                e.message
            )),
        }
    }
    if !failures.is_empty() {
        for m in mounted {
            let i = m.index;
            m.unmount();
            status.metrics.unmounted(&i.to_string());
            // Its ready file must not outlive the mount.
            status.clear(i);
        }
        if let Some(s) = server {
            s.abort();
        }
        return Err(SidecarError::Failed { failures, total });
    }
    info!(
        filesystems = total,
        ms = start.elapsed().as_millis() as u64,
        "all filesystems ready"
    );
    if let Some(f) = opts.on_ready.take() {
        f(start.elapsed());
    }
    if let Delivery::Extract = opts.delivery {
        // Nothing to serve: the trees stay for their consumers (and the ready files with them).
        if let Some(s) = server {
            s.abort();
        }
        return Ok(());
    }
    rt.block_on(async {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => { info!("shutdown: unmounting"); break; }
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    if let Some(m) = mounted.iter().find(|m| m.is_finished()) {
                        error!(mount_point = %m.mount_point.display(), "a mount ended; unmounting the others and exiting");
                        break;
                    }
                }
            }
        }
    });
    let mut ended = Vec::new();
    for m in mounted {
        let i = m.index;
        if m.is_finished() {
            // The consumers' path goes first; a dead mount (nobody serves it) is detached, not left behind.
            let _ = std::fs::remove_file(&m.mount_point);
            let how = match m.session.map(MountSession::finish_ended) {
                Some(crate::fuse::Ended::Dead { detached: Ok(()) }) => "stopped serving (detached)".to_string(),
                Some(crate::fuse::Ended::Dead { detached: Err(e) }) => {
                    format!("stopped serving (detaching failed: {e})")
                }
                _ => "was unmounted from outside".to_string(),
            };
            let _ = std::fs::remove_dir(&m.hidden);
            ended.push(format!("azure_filesystems[{i}] ({}) {how}", m.mount_point.display()));
        } else {
            m.unmount();
        }
        status.metrics.unmounted(&i.to_string());
        status.clear(i);
    }
    if let Some(s) = server {
        s.abort();
    }
    if !ended.is_empty() {
        return Err(SidecarError::MountEnded(ended));
    }
    Ok(())
}
