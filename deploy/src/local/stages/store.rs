//! Where the encrypted image is served from: Azurite (the default, the same Azure Blob API as production,
//! uploaded with `cinfer-mkimage upload`), or a local HTTP range server (what a plain web server or a
//! presigned URL gives). The sidecar gets a URL; for Azurite it carries a read-only SAS.

use std::path::Path;
use std::process::Command;

use tracing::info;

use super::Ctx;
use crate::local::azurite::{Azurite, SasOptions, account_sas};
use crate::local::error::{LocalError, Result};
use crate::local::http::redact;
use crate::local::proc::run;
use crate::local::range_server::RangeServer;

/// Container and blob name of the image in Azurite.
const CONTAINER: &str = "models";
const BLOB: &str = "model.img";

/// A running image store.
#[derive(Debug)]
pub(crate) enum Store {
    /// Azurite with the image uploaded.
    Azurite(Azurite),
    /// The in-process range server (held until the pipeline stops).
    Http {
        /// The server.
        _server: RangeServer,
    },
}

/// The image in its store.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) store: Store,
    /// The URL the sidecar reads (with a read SAS for Azurite: do not log it).
    pub(crate) url: String,
    /// Size in bytes and ETag after upload.
    pub(crate) size: u64,
    pub(crate) etag: String,
}

impl Stored {
    /// The URL without its query, for messages.
    pub(crate) fn shown_url(&self) -> String {
        self.url.split('?').next().unwrap_or_default().to_owned()
    }
}

/// Starts Azurite (data in `work/azurite`) and uploads the image into container `models`.
pub(crate) fn azurite(ctx: &Ctx, image: &Path, port: u16) -> Result<Stored> {
    let az = Azurite::start_in(&ctx.work.join("azurite"), port, &ctx.cancel)?;
    let size = std::fs::metadata(image)
        .map_err(LocalError::io(format!("reading {}", image.display())))?
        .len();
    let upload_url = format!("{}?{}", az.blob_url(CONTAINER, BLOB), account_sas(&SasOptions::full()));
    let out = run(
        "cinfer-mkimage upload",
        Command::new(&ctx.mkimage)
            .arg("upload")
            .arg(image)
            .arg(&upload_url)
            .arg("--create-container"),
    )
    .map_err(|e| match e {
        // The command line holds the SAS: say which upload failed without it.
        LocalError::CommandFailed { status, output, .. } => LocalError::CommandFailed {
            what: format!("cinfer-mkimage upload {}", redact(&upload_url)),
            status,
            output,
        },
        other => other,
    })?;
    // `cinfer-mkimage upload` verifies length and MD5 itself; check that it reports the size we built.
    let field = |k: &str| out.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
    if field("size:").and_then(|s| s.parse::<u64>().ok()) != Some(size) {
        return Err(LocalError::Unexpected {
            what: "cinfer-mkimage upload (size)".into(),
            got: out,
        });
    }
    let etag = field("etag:").unwrap_or_default().to_owned();
    info!(url = %az.blob_url(CONTAINER, BLOB), size, %etag, "image uploaded to Azurite");
    let url = format!(
        "{}?{}",
        az.blob_url(CONTAINER, BLOB),
        account_sas(&SasOptions::read_only())
    );
    Ok(Stored {
        store: Store::Azurite(az),
        url,
        size,
        etag,
    })
}

/// Serves the image from the in-process range server.
pub(crate) fn http(image: &Path, port: u16) -> Result<Stored> {
    let size = std::fs::metadata(image)
        .map_err(LocalError::io(format!("reading {}", image.display())))?
        .len();
    let server = RangeServer::start(image, port)?;
    Ok(Stored {
        url: server.url(),
        store: Store::Http { _server: server },
        size,
        etag: String::new(),
    })
}
