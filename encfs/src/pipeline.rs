//! One mount pipeline. An image is described as data ([`ImageSpec`]: what it must be, who may read it, how much
//! memory its index may take); one function opens and verifies it ([`open_verified`]: header, index, root pin,
//! signature, or a legacy LUKS2 image's demands), and one serves it ([`mount`]: FUSE, read-ahead) — or
//! [`crate::extract`] writes it out. `cinfer-encfs mount`, the attested sidecar and `cinfer-encfs extract` are thin
//! callers: they differ only in where the key comes from (a key file, an attested release) and how they report
//! (exit status, readiness files).

use std::path::Path;
use std::sync::Arc;

use tracing::{info, warn};

use crate::format::{FormatError, ModelKey};
use crate::fs::{EncFs, EncFsConfig, OpenError};
use crate::fuse::{MountConfig, MountSession};
use crate::gate::VerifyMode;
use crate::legacy::mount::{BlobReadAt, Unverifiable, check_demands};
use crate::signature::VerifyingKey;
use crate::source::{BlobKey, BlobSource};

/// The pipeline step that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Reading the image from its source.
    Source,
    /// Header and index (key check, integrity), or a legacy image's header.
    Index,
    /// The pinned root digest.
    RootPin,
    /// The model signature gate.
    Signature,
    /// The FUSE mount.
    Mount,
}

/// Why the pipeline refused or failed, and at which step. The message names the image (without credentials).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PipelineError {
    /// The step.
    pub stage: Stage,
    /// What happened.
    pub message: String,
}

impl PipelineError {
    fn new(stage: Stage, message: impl Into<String>) -> Self {
        Self {
            stage,
            message: message.into(),
        }
    }
}

/// What an image must be, and how it is read.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// The image's name in messages (a path, or a URL without userinfo and query).
    pub shown: String,
    /// The root digest the image must have.
    pub expect_root: Option<[u8; 32]>,
    /// The model signer whose signature the image must carry.
    pub signer: Option<VerifyingKey>,
    /// How much of the signed manifest to check against the content.
    pub verify: VerifyMode,
    /// The memory budget for the image's metadata and cache, bytes: the header's index length is not authenticated
    /// until the index is, so no more than this allows is read ([`crate::fs::index_limit_for_budget`]).
    pub budget: u64,
    /// Owner of the served files.
    pub uid: u32,
    /// Group of the served files.
    pub gid: u32,
    /// The filesystem's tuning beyond the above (defaults otherwise).
    pub fs: EncFsConfig,
}

/// An opened image that passed every check its [`ImageSpec`] demands.
pub enum Verified<B: BlobSource> {
    /// A cinfer image: header, index, root pin and signature checked; the key is no longer held.
    Image(Box<EncFs<B>>),
    /// A legacy LUKS2 image (no integrity, nothing pinned); its passphrase, for the mount.
    Legacy(BlobReadAt<B>, ModelKey),
}

/// Opens `source` with `key` and verifies it against `spec`. Blocks on `rt`: call it from a thread that may
/// (not a runtime worker without `block_in_place`).
pub fn open_verified<B: BlobSource>(
    source: B,
    blob: BlobKey,
    key: ModelKey,
    spec: &ImageSpec,
    rt: &tokio::runtime::Handle,
) -> Result<Verified<B>, PipelineError> {
    let image = spec.shown.as_str();
    let source_err =
        |e: &dyn std::error::Error| PipelineError::new(Stage::Source, format!("reading {image}: {}", chain(e)));
    // A legacy LUKS2 image (what the seed's users have in blob storage) is recognised and served from the same
    // source.
    let reader = BlobReadAt::open(source, blob.clone(), rt.clone()).map_err(|e| source_err(&e))?;
    if reader.is_luks().map_err(|e| source_err(&e))? {
        check_demands(spec.expect_root.is_some(), spec.signer.is_some()).map_err(|e| {
            let stage = match e {
                Unverifiable::Signature => Stage::Signature,
                _ => Stage::RootPin,
            };
            PipelineError::new(stage, format!("refusing to mount {image}: {e}"))
        })?;
        return Ok(Verified::Legacy(reader, key));
    }
    let config = EncFsConfig {
        uid: spec.uid,
        gid: spec.gid,
        max_index_len: crate::fs::index_limit_for_budget(spec.budget),
        ..spec.fs.clone()
    };
    let fs = rt
        .block_on(EncFs::open(
            reader.into_source(),
            blob,
            &key,
            spec.expect_root.as_ref(),
            config,
        ))
        .map_err(|e| {
            let stage = match &e {
                OpenError::Format(FormatError::RootMismatch { .. }) => Stage::RootPin,
                OpenError::Source { .. } => Stage::Source,
                _ => Stage::Index,
            };
            PipelineError::new(stage, format!("refusing to mount {image}: {}", chain(&e)))
        })?;
    drop(key);
    // The key schedule and derived image keys passed through this thread's stack (`block_on` ran the open here).
    crate::format::scrub_stack();
    info!(image, root = %hex::encode(fs.root()), chunk_size = fs.header().chunk_size, "image verified");
    if let Some(signer) = &spec.signer {
        crate::gate::run(&fs, signer, spec.verify, rt)
            .map_err(|e| PipelineError::new(Stage::Signature, format!("refusing to mount {image}: {}", chain(&e))))?;
    }
    Ok(Verified::Image(Box::new(fs)))
}

/// How a verified image is mounted.
#[derive(Clone, Debug)]
pub struct Serving {
    /// FUSE settings (threads, `allow_other`, the name in the mount table).
    pub config: MountConfig,
    /// The image is a local file (decrypt-ahead when the kernel's window is small; a remote image's part cache
    /// fetches ahead on its own).
    pub local: bool,
    /// Kernel readahead for the mount in KiB, set through sysfs when possible; 0 keeps the kernel's.
    pub read_ahead_kb: u32,
}

/// Mounts a verified image read-only at `mountpoint`. Returns the session and the image's root (hex, or
/// `legacy-luks2:<uuid>`).
pub fn mount<B: BlobSource>(
    verified: Verified<B>,
    spec: &ImageSpec,
    mountpoint: &Path,
    serving: &Serving,
    rt: &tokio::runtime::Handle,
) -> Result<(MountSession, String), PipelineError> {
    let mount_err = |e: &dyn std::error::Error| {
        PipelineError::new(
            Stage::Mount,
            format!("mounting on {}: {}", mountpoint.display(), chain(e)),
        )
    };
    let mut config = serving.config.clone();
    let (session, root) = match verified {
        Verified::Legacy(reader, key) => {
            let mounted = crate::legacy::mount::mount(reader, key.expose(), spec.uid, spec.gid, mountpoint, &config);
            drop(key);
            // The passphrase went through the LUKS2 key derivation on this thread.
            crate::format::scrub_stack();
            let (session, uuid) = mounted.map_err(|e| {
                PipelineError::new(
                    Stage::Index,
                    format!("legacy LUKS2 image {}: {}", spec.shown, chain(&e)),
                )
            })?;
            info!(image = %spec.shown, uuid = %uuid, "legacy LUKS2 image mounted (no integrity: XTS)");
            (session, format!("legacy-luks2:{uuid}"))
        }
        Verified::Image(fs) => {
            if serving.local && serving.read_ahead_kb <= crate::fuse::DECRYPT_AHEAD_MAX_WINDOW_KB {
                // A local file read through a small kernel window gets decrypt-ahead (a larger window keeps
                // several READs in flight by itself).
                config.read_ahead = crate::fs::readahead::ReadAheadConfig::LOCAL;
            }
            if let Ok(v) = std::env::var("CINFER_UNSTABLE_READ_AHEAD_STREAMS") {
                config.read_ahead.max_streams = v.parse().map_err(|e: std::num::ParseIntError| {
                    PipelineError::new(Stage::Mount, format!("CINFER_UNSTABLE_READ_AHEAD_STREAMS: {e}"))
                })?;
                warn!(
                    value = config.read_ahead.max_streams,
                    "CINFER_UNSTABLE_READ_AHEAD_STREAMS is set"
                );
            }
            let root = hex::encode(fs.root());
            let session =
                crate::fuse::mount(Arc::new(*fs), rt.clone(), mountpoint, &config).map_err(|e| mount_err(&e))?;
            (session, root)
        }
    };
    if serving.read_ahead_kb > 0 {
        match session.set_read_ahead_kb(serving.read_ahead_kb) {
            Ok(()) => info!(kb = serving.read_ahead_kb, "readahead raised"),
            Err(e) => warn!("could not raise readahead (needs root and a writable /sys): {e}"),
        }
    }
    Ok((session, root))
}

/// An error and its sources, on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    crate::errchain::ErrorChain(e).to_string()
}
