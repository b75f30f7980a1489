//! `upload`: put an image into Azure Blob Storage as a block blob, the way large model images need it: blocks
//! staged in parallel, an interrupted upload resumed without re-sending what the service already holds, and the
//! result checked (length, per-block MD5 checked by the service, committed block list, whole-blob MD5).
//!
//! It uses the official Azure SDK (`azure_storage_blob`) over the workspace's reqwest + rustls (ring) stack. The
//! blob URL carries its authorization as a SAS query (what `az storage blob generate-sas` or the portal gives);
//! the SDK has no shared-key auth, and Entra ID tokens are only accepted over https.
//!
//! Resuming works because block ids are deterministic: `cinfer-v1-<index>-<md5 of the block>`. Uncommitted
//! blocks the service already holds with the same id and size are not sent again; a changed image changes the ids,
//! so stale blocks are never committed.

mod blocks;
mod client;
mod transfer;

pub use blocks::{BlockPlan, MAX_BLOCK_SIZE, MAX_BLOCKS, block_id};
pub use client::{BlobUrl, parse_blob_url};
pub use transfer::{UploadOptions, UploadReport, upload};

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// The URL is not a usable blob URL (the message says why).
    #[error("blob URL: {0}")]
    Url(String),
    /// Reading the local image failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A storage call failed after the SDK's retries.
    #[error("{step}: {message}")]
    Storage {
        /// What was being done (e.g. `stage block 3`).
        step: String,
        /// The service's or transport's message (status and error code included).
        message: String,
    },
    /// The blob exists with other content and `--force` was not given.
    #[error(
        "the blob already exists with different content ({size} bytes, etag {etag}); pass --force to replace it \
         (running sidecars pin the old ETag and will fail their reads)"
    )]
    Exists {
        /// Its size.
        size: u64,
        /// Its ETag.
        etag: String,
    },
    /// The uploaded blob does not match the local image.
    #[error("verification failed: {0}")]
    Verify(String),
    /// Bad options.
    #[error("{0}")]
    Invalid(String),
}

impl UploadError {
    pub(crate) fn storage(step: impl Into<String>, e: &azure_core::Error) -> Self {
        Self::Storage {
            step: step.into(),
            message: client::describe(e),
        }
    }
}
