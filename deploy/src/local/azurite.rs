//! Azurite, Microsoft's Azure Storage emulator (npm `azurite`), as a blob store on this machine.
//!
//! [`Azurite`] starts `azurite-blob` on a free loopback port with a data folder of its own and stops it on drop;
//! [`account_sas`] signs an account SAS with the emulator's well-known key, which is public (Microsoft documents
//! it for every Azurite install), so nothing here is a secret. Tests of other crates use both as a
//! dev-dependency: this module depends on nothing but `std`, `hmac`/`sha2` and `base64`.
//!
//! The executable comes from `CINFER_AZURITE`, else the cache `scripts/azurite.sh` installs into
//! (`~/.cache/cinfer/azurite`), else that script is run to install it (needs node and npm).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit as _, Mac as _};
use tracing::info;

use super::env::{free_port, home, repo_root};
use super::error::{LocalError, Result};
use super::http::{self, Body, Request};
use super::proc::{Proc, run, wait_for};
use super::shutdown::Cancel;

/// The emulator's account name.
pub const ACCOUNT: &str = "devstoreaccount1";

/// The emulator's account key: public, the same in every Azurite (Microsoft's documentation lists it).
pub const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The storage service version Azurite is addressed with.
pub const API_VERSION: &str = "2021-08-06";

/// A running Azurite blob service on 127.0.0.1; stopped on drop (its temporary data folder removed with it).
#[derive(Debug)]
pub struct Azurite {
    proc: Proc,
    port: u16,
    data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Azurite {
    /// Starts Azurite on a free port with a temporary data folder; returns once it accepts connections.
    pub fn start() -> Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("cinfer-azurite.")
            .tempdir()
            .map_err(LocalError::io("creating Azurite's data folder"))?;
        let data = tmp.path().to_path_buf();
        let mut az = Self::start_in(&data, 0, &Cancel::new())?;
        az._tmp = Some(tmp);
        Ok(az)
    }

    /// Starts Azurite on `port` (0: a free one) with its blobs and log in `data` (created if missing, kept).
    pub fn start_in(data: &Path, port: u16, cancel: &Cancel) -> Result<Self> {
        let bin = azurite_bin()?;
        std::fs::create_dir_all(data).map_err(LocalError::io(format!("creating {}", data.display())))?;
        let port = if port == 0 { free_port()? } else { port };
        let mut cmd = Command::new(&bin);
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--location"])
            .arg(data)
            .args(["--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent"]);
        let mut proc = Proc::spawn("azurite", cmd, data)?.with_grace(Duration::from_secs(5));
        wait_for("Azurite to accept connections", Duration::from_secs(60), cancel, || {
            proc.check_running()?;
            Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        })?;
        info!(port, "Azurite is up");
        Ok(Self {
            proc,
            port,
            data: data.to_path_buf(),
            _tmp: None,
        })
    }

    /// Its blob port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data folder.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Fails with the log's tail if Azurite has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.proc.check_running()
    }

    /// The process (for its memory figures).
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1`.
    pub fn account_url(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// URL of a blob, without a SAS.
    pub fn blob_url(&self, container: &str, blob: &str) -> String {
        format!("{}/{container}/{blob}", self.account_url())
    }

    /// Creates a container (anonymous read access to its blobs when `public`); an existing one is fine.
    pub fn create_container(&self, container: &str, public: bool) -> Result<()> {
        let sas = account_sas(&SasOptions::full());
        let target = format!("/{ACCOUNT}/{container}?restype=container&{sas}");
        let mut headers = vec![("x-ms-version", API_VERSION.to_owned())];
        if public {
            headers.push(("x-ms-blob-public-access", "blob".to_owned()));
        }
        let r = http::send(
            self.port,
            &Request {
                method: "PUT",
                target: &target,
                headers: &headers,
                body: Body::Bytes(&[]),
            },
            Duration::from_secs(30),
        )?;
        match r.status {
            201 | 409 => Ok(()),
            s => Err(LocalError::Http {
                what: format!("create container {container}"),
                reason: format!("status {s}: {}", r.body),
            }),
        }
    }

    /// Uploads `body` as block blob `container/blob` in one Put Blob request; returns its ETag.
    pub fn put_blob(&self, container: &str, blob: &str, body: Body<'_>) -> Result<String> {
        let sas = account_sas(&SasOptions::full());
        let target = format!("/{ACCOUNT}/{container}/{blob}?{sas}");
        let headers = [
            ("x-ms-version", API_VERSION.to_owned()),
            ("x-ms-blob-type", "BlockBlob".to_owned()),
        ];
        let r = http::send(
            self.port,
            &Request {
                method: "PUT",
                target: &target,
                headers: &headers,
                body,
            },
            Duration::from_secs(600),
        )?;
        if r.status != 201 {
            return Err(LocalError::Http {
                what: format!("put blob {container}/{blob}"),
                reason: format!("status {}: {}", r.status, r.body),
            });
        }
        Ok(r.header("etag").unwrap_or_default().to_owned())
    }
}

/// What an account SAS allows, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasOptions {
    /// `sp`: permissions, in the order Azure lists them (`r`ead, `w`rite, `d`elete, `l`ist, `a`dd, `c`reate).
    pub permissions: String,
    /// `srt`: resource types (`s`ervice, `c`ontainer, `o`bject).
    pub resource_types: String,
    /// `se`: expiry, ISO 8601 UTC.
    pub expiry: String,
}

impl SasOptions {
    /// Everything on every resource type: for uploads and container creation.
    pub fn full() -> Self {
        Self {
            permissions: "rwdlac".into(),
            resource_types: "sco".into(),
            expiry: "2035-01-01T00:00:00Z".into(),
        }
    }

    /// Read blobs only: what a reader (the encfs sidecar) gets.
    pub fn read_only() -> Self {
        Self {
            permissions: "r".into(),
            resource_types: "o".into(),
            expiry: "2035-01-01T00:00:00Z".into(),
        }
    }
}

/// An account SAS query string (`sv=2019-12-12`, blob service, http and https) signed with the emulator's
/// [`DEV_KEY`] (HMAC-SHA256 of the account string-to-sign).
pub fn account_sas(opts: &SasOptions) -> String {
    let (ss, spr, sv) = ("b", "https,http", "2019-12-12");
    let SasOptions {
        permissions: sp,
        resource_types: srt,
        expiry: se,
    } = opts;
    // account, sp, ss, srt, st (empty), se, sip (empty), spr, sv.
    let to_sign = format!("{ACCOUNT}\n{sp}\n{ss}\n{srt}\n\n{se}\n\n{spr}\n{sv}\n");
    // INVARIANT: DEV_KEY is a base64 constant and HMAC takes keys of any length.
    #[allow(clippy::unwrap_used)]
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&B64.decode(DEV_KEY).unwrap()).unwrap();
    mac.update(to_sign.as_bytes());
    let sig = B64.encode(mac.finalize().into_bytes());
    format!(
        "sv={sv}&ss={ss}&srt={srt}&sp={sp}&se={}&spr={}&sig={}",
        pct(se),
        pct(spr),
        pct(&sig)
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `azurite-blob` executable: `CINFER_AZURITE`, the cache of `scripts/azurite.sh`, or that script's install.
pub fn azurite_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CINFER_AZURITE").map(PathBuf::from)
        && p.is_file()
    {
        return Ok(p);
    }
    let cached = home().join(".cache/cinfer/azurite/node_modules/.bin/azurite-blob");
    if cached.is_file() {
        return Ok(cached);
    }
    let script = repo_root().join("scripts/azurite.sh");
    if !script.is_file() {
        return Err(LocalError::MissingAzurite(format!("{} is missing", cached.display())));
    }
    let out = run("scripts/azurite.sh", Command::new("bash").arg(&script))
        .map_err(|e| LocalError::MissingAzurite(e.to_string()))?;
    Ok(PathBuf::from(out.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_sas_is_stable_and_scoped() {
        let read = account_sas(&SasOptions::read_only());
        assert!(read.starts_with("sv=2019-12-12&ss=b&srt=o&sp=r&se=2035-01-01T00%3A00%3A00Z&spr=https%2Chttp&sig="));
        assert_eq!(read, account_sas(&SasOptions::read_only()), "deterministic");
        assert_ne!(read, account_sas(&SasOptions::full()), "permissions are signed");
    }
}
