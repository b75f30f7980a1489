//! Blob URLs and the SDK clients for them, over the workspace's reqwest + rustls (ring) stack.

use std::sync::Arc;
use std::time::Duration;

use azure_core::http::{ClientOptions, Transport, Url};
use azure_storage_blob::{BlobClient, BlobClientOptions, BlobContainerClient, BlobContainerClientOptions};

use super::UploadError;

/// A parsed blob URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobUrl {
    /// The blob, as given (SAS query included).
    pub blob: Url,
    /// Its container, with the same query (so the same SAS authorizes `--create-container`).
    pub container: Url,
    /// Container name.
    pub container_name: String,
    /// Blob name (may contain `/`).
    pub blob_name: String,
}

impl BlobUrl {
    /// The blob URL without its query: safe to print (a SAS signature is a bearer credential).
    pub fn redacted(&self) -> String {
        let mut u = self.blob.clone();
        let had_query = u.query().is_some();
        u.set_query(None);
        if had_query { format!("{u}?<SAS>") } else { u.to_string() }
    }
}

/// Parses `https://<account>.blob.core.windows.net/<container>/<blob>?<SAS>` or the path-style form emulators
/// and private endpoints use, `http(s)://host[:port]/<account>/<container>/<blob>?<SAS>` (any host without
/// `.blob.` in its name).
pub fn parse_blob_url(url: &str) -> Result<BlobUrl, UploadError> {
    let blob = Url::parse(url).map_err(|e| UploadError::Url(format!("not a URL: {e}")))?;
    if !matches!(blob.scheme(), "http" | "https") {
        return Err(UploadError::Url(format!(
            "scheme {:?} is not http or https",
            blob.scheme()
        )));
    }
    let host = blob
        .host_str()
        .ok_or_else(|| UploadError::Url("no host".into()))?
        .to_ascii_lowercase();
    let segments: Vec<&str> = blob.path().trim_start_matches('/').split('/').collect();
    let skip = usize::from(!host.contains(".blob."));
    if segments.len() < skip + 2 || segments[skip..].iter().any(|s| s.is_empty()) {
        let want = if skip == 1 {
            "/<account>/<container>/<blob>"
        } else {
            "/<container>/<blob>"
        };
        return Err(UploadError::Url(format!(
            "path {:?} does not have the form {want}",
            blob.path()
        )));
    }
    let container_name = segments[skip].to_owned();
    let blob_name = segments[skip + 1..].join("/");
    let mut container = blob.clone();
    container.set_path(&format!("/{}", segments[..=skip].join("/")));
    Ok(BlobUrl {
        blob,
        container,
        container_name,
        blob_name,
    })
}

fn client_options() -> Result<ClientOptions, UploadError> {
    // One process-wide rustls provider (ring, as in the rest of the workspace); ignore "already installed".
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| UploadError::Invalid(format!("building the HTTP client: {e}")))?;
    Ok(ClientOptions {
        transport: Some(Transport::new(Arc::new(http))),
        ..Default::default()
    })
}

/// The SDK client for the blob.
pub(crate) fn blob_client(url: &BlobUrl) -> Result<BlobClient, UploadError> {
    let options = BlobClientOptions {
        client_options: client_options()?,
        ..Default::default()
    };
    BlobClient::new(url.blob.clone(), None, Some(options)).map_err(|e| UploadError::Url(describe(&e)))
}

/// The SDK client for the blob's container.
pub(crate) fn container_client(url: &BlobUrl) -> Result<BlobContainerClient, UploadError> {
    let options = BlobContainerClientOptions {
        client_options: client_options()?,
        ..Default::default()
    };
    BlobContainerClient::new(url.container.clone(), None, Some(options)).map_err(|e| UploadError::Url(describe(&e)))
}

/// A one-line description of an SDK error: the HTTP status and the service's error code with a hint for the
/// common ones, or the transport error's innermost cause (the SDK's own message is only "retry policy expired").
pub(crate) fn describe(e: &azure_core::Error) -> String {
    match e.kind() {
        azure_core::error::ErrorKind::HttpResponse { status, error_code, .. } => {
            let code = error_code.as_deref().unwrap_or("(no error code)");
            let hint = match (u16::from(*status), code) {
                (403, _) => " (the SAS is invalid, expired, or lacks a needed permission: create, write and read)",
                (404, "ContainerNotFound") => " (create it, or pass --create-container)",
                (412, _) | (409, "BlobAlreadyExists") => " (the blob changed during the upload)",
                _ => "",
            };
            format!("HTTP {} {code}{hint}", u16::from(*status))
        }
        _ => {
            let mut msg = e.to_string();
            let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(e);
            while let Some(c) = cause {
                msg = c.to_string();
                cause = c.source();
            }
            msg
        }
    }
}

/// The HTTP status of an SDK error, if it was a service response.
pub(crate) fn status(e: &azure_core::Error) -> Option<u16> {
    e.http_status().map(u16::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_and_path_style_urls() {
        let u = parse_blob_url("https://acct.blob.core.windows.net/models/a/b.img?sv=1&sig=x")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((u.container_name.as_str(), u.blob_name.as_str()), ("models", "a/b.img"));
        assert_eq!(
            u.container.as_str(),
            "https://acct.blob.core.windows.net/models?sv=1&sig=x"
        );
        assert_eq!(u.redacted(), "https://acct.blob.core.windows.net/models/a/b.img?<SAS>");
        let u = parse_blob_url("http://127.0.0.1:10000/devstoreaccount1/models/m.img?sig=x")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((u.container_name.as_str(), u.blob_name.as_str()), ("models", "m.img"));
        assert_eq!(
            u.container.as_str(),
            "http://127.0.0.1:10000/devstoreaccount1/models?sig=x"
        );
    }

    #[test]
    fn bad_urls_are_named() {
        for (url, want) in [
            ("ftp://x.blob.core.windows.net/c/b", "scheme"),
            ("https://x.blob.core.windows.net/c", "form"),
            ("http://127.0.0.1/devstoreaccount1/c", "form"),
            ("https://x.blob.core.windows.net/c//b", "form"),
            ("not a url", "not a URL"),
        ] {
            let e = parse_blob_url(url).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want), "{url}: {e}");
        }
    }
}
