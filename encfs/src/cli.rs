//! Command-line interface of `cinfer-encfs` (clap derive); converts into library configs.

use std::io::BufRead as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use encfs::format::ModelKey;
use encfs::fuse::MountConfig;

const EXIT_CODES: &str = "\
Exit codes:
  0  success (for `mount`: the mount is ready and files are visible)
  1  error: the image was refused (wrong key, corrupt or truncated header or index, root mismatch) or the
     mount or unmount failed; the message says which
  2  usage error

Environment:
  CINFER_LOG  log filter (tracing EnvFilter syntax), default `info`";

/// Mounts an encrypted, read-only cinfer model image in userspace (FUSE).
#[derive(Debug, Parser)]
#[command(name = "cinfer-encfs", version, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Verify an image (header, index, root pin) and mount it read-only. Returns once files are visible and
    /// keeps serving in the background, unless --foreground.
    Mount(MountArgs),
    /// Unmount a cinfer-encfs mount (also cleans up the mountpoint of a killed daemon).
    Unmount(UnmountArgs),
    /// The confidential sidecar: mount every filesystem of the seed's `EncfsSideCarArgs`, each only after
    /// attested key release and verification; serve until SIGTERM, then unmount and exit 0.
    Sidecar(crate::sidecar_main::SidecarCmd),
    /// The sidecar's work without FUSE, for platforms that have none (AKS confidential containers): for every
    /// filesystem of `EncfsSideCarArgs`, release its key through attestation, verify the image, and write its
    /// files (each checked against the authenticated index) into the mount point's volume; exit 0 once all are
    /// there. Run it as an init container writing into a memory-backed volume.
    Extract(crate::sidecar_main::SidecarArgs),
}

/// Arguments of `mount`.
#[derive(Debug, Args)]
pub(crate) struct MountArgs {
    /// The image: a local file path, or an `http://`/`https://` URL that serves Range requests (plain server,
    /// presigned or SAS URL, Azure Blob); or `-` to read it (one line) from standard input, which keeps a URL's
    /// credentials out of the process table (`/proc/PID/cmdline` is world-readable): use `-` for a SAS,
    /// presigned or `user:password@` URL. The daemon never has the URL on its command line; messages, logs and
    /// the mount table show URLs without userinfo and query.
    #[arg(value_name = "SOURCE")]
    pub(crate) image: PathBuf,
    /// An existing directory to mount on.
    pub(crate) mountpoint: PathBuf,
    /// File holding the 32-byte model key (raw bytes).
    #[arg(long, env = "CINFER_ENCFS_KEY_FILE")]
    pub(crate) key_file: PathBuf,
    /// Refuse the image unless its root digest is this (64 hex digits, as `cinfer-mkimage build` prints).
    #[arg(long, value_name = "HEX")]
    pub(crate) expect_root: Option<String>,
    /// Stay in the foreground (log to stderr) instead of returning once the mount is ready.
    #[arg(long)]
    pub(crate) foreground: bool,
    /// Append the background daemon's log to this file (default: discarded).
    #[arg(long, value_name = "PATH", env = "CINFER_ENCFS_LOG_FILE")]
    pub(crate) log_file: Option<PathBuf>,
    /// Let other users access the mount (non-root needs `user_allow_other` in /etc/fuse.conf).
    #[arg(long)]
    pub(crate) allow_other: bool,
    /// FUSE request threads, 1 to 64 [default: one per core (2 to 16) for a local image, whose reads are
    /// CPU-bound; 8 for a URL, whose reads wait on the network]. Each needs a file descriptor: fewer are started,
    /// with a warning, when the open-file limit (`ulimit -n`, raised to its hard limit if needed) has no room.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=encfs::fuse::MAX_THREADS as i64), help_heading = "Tuning")]
    pub(crate) threads: Option<u16>,
    /// Kernel readahead for the mount in KiB, set through sysfs after mounting when possible (root, writable
    /// /sys); 0 keeps the kernel default (128 KiB).
    #[arg(long, default_value_t = encfs::fuse::DEFAULT_READ_AHEAD_KB, value_name = "KIB", help_heading = "Tuning")]
    pub(crate) read_ahead_kb: u32,
    /// Asynchronous requests the kernel may keep in flight.
    #[arg(long, default_value_t = 64, help_heading = "Tuning")]
    pub(crate) max_background: u16,
    #[command(flatten)]
    pub(crate) transport: TransportArg,
    /// How the image file is read: `pread` (safe if the file is truncated under the mount) or `mmap`
    /// (zero-copy; the daemon dies with SIGBUS if the file is truncated while mounted).
    #[arg(long, value_enum, default_value_t = Io::Pread, help_heading = "Tuning")]
    pub(crate) io: Io,
    /// The model signer's ECDSA public key (PEM). The image's embedded OpenSSF model signature must verify with
    /// it and list exactly the image's files with the digests in its index, or the mount is refused (the message
    /// names the file). Without it no signature is checked.
    #[arg(
        long,
        value_name = "PUB_PEM",
        env = "CINFER_ENCFS_SIGNER_KEY",
        help_heading = "Signature"
    )]
    pub(crate) signer_key: Option<PathBuf>,
    /// With --signer-key: `full` also hashes every file through the decrypting read path before the mount is
    /// visible (and warms the cache); `manifest` checks only the signature against the index digests, which is
    /// enough when the model-key owner is the signer (AEAD and the pinned root already bind the content).
    #[arg(long, value_enum, default_value_t = Verify::Full, help_heading = "Signature")]
    pub(crate) verify: Verify,
    /// Remote sources: time allowed for one range request to deliver its response headers, and for a stalled
    /// body, before the attempt is retried (seconds).
    #[arg(long, default_value_t = 10.0, value_name = "SECS", help_heading = "Remote")]
    pub(crate) request_timeout: f64,
    /// Remote sources: the longest a reader waits for EIO while the source fails (5xx, 429, resets, short bodies,
    /// stalls), retries included (seconds, give or take half a second). Reads that start during an outage give up
    /// when the outage is this old (not this long after they started, so the kernel asking again page by page
    /// does not double it); later reads wait at most 0.5 s for a probe, and succeed again as soon as the source
    /// answers.
    #[arg(long, default_value_t = 30.0, value_name = "SECS", help_heading = "Remote")]
    pub(crate) retry_budget: f64,
    /// Remote sources: memory budget of the daemon, in MiB. Ciphertext parts held and in flight (sequential
    /// reads prefetch into them, random reads fetch only their range) get this minus 48 MiB set aside for FUSE
    /// and HTTP buffers and the program, so peak RSS stays near this figure. Any image: the sealed index read
    /// before it is authenticated is at most a quarter of it (at least 1 MiB), so a tampered header cannot make
    /// a mount attempt allocate more; an image with a larger index is refused with a message saying so.
    #[arg(long, default_value_t = encfs::cache::DEFAULT_BUDGET_MIB, value_name = "MIB", help_heading = "Remote")]
    pub(crate) cache_size: u64,
    /// Remote sources: also keep fetched ciphertext in this directory (created if missing), so a restarted
    /// daemon does not fetch it again. Never holds plaintext; keyed by the blob's URL (without query), ETag and
    /// length, so a replaced blob is never served from it; short or corrupt files are dropped and fetched
    /// again. Random reads are rounded out to 64 KiB blocks while it is on.
    #[arg(long, value_name = "DIR", env = "CINFER_ENCFS_CACHE_DIR", value_parser = absolute_dir, help_heading = "Remote")]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Remote sources: size bound of --cache-dir, in MiB (least recently used parts, and other blob versions
    /// first, are removed to stay under it).
    #[arg(long, default_value_t = 10240, value_name = "MIB", help_heading = "Remote")]
    pub(crate) cache_dir_size: u64,
    /// Serve Prometheus metrics (bytes fetched, requests, retries, cache hits/misses) on this address, e.g.
    /// 127.0.0.1:9184.
    #[arg(long, value_name = "ADDR", help_heading = "Remote")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    /// Azure Blob: authorize with a managed identity (IMDS bearer token, https only) instead of the URL's SAS
    /// (the seed's `azure_url_private: true`).
    #[arg(long, help_heading = "Remote")]
    pub(crate) azure_managed_identity: bool,
    /// Azure Blob: client id of the user-assigned managed identity (implies --azure-managed-identity).
    #[arg(long, value_name = "ID", help_heading = "Remote")]
    pub(crate) azure_client_id: Option<String>,
    /// Internal: run as the background daemon, reporting readiness on stdout.
    #[arg(long, hide = true)]
    pub(crate) daemon_child: bool,
}

/// How the image file is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Io {
    /// Positioned reads (`pread`).
    Pread,
    /// A read-only memory map.
    Mmap,
}

/// How much the signature gate checks before the mount is visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Verify {
    /// Signature, manifest and every file's content.
    Full,
    /// Signature and manifest against the index digests only.
    Manifest,
}

impl Verify {
    /// The library's mode.
    pub(crate) fn mode(self) -> encfs::gate::VerifyMode {
        match self {
            Self::Full => encfs::gate::VerifyMode::Full,
            Self::Manifest => encfs::gate::VerifyMode::Manifest,
        }
    }
}

/// Arguments of `unmount`.
#[derive(Debug, Args)]
pub(crate) struct UnmountArgs {
    /// The mountpoint.
    pub(crate) mountpoint: PathBuf,
    /// Detach now even if files are still open (MNT_DETACH / fusermount3 -z).
    #[arg(long)]
    pub(crate) lazy: bool,
}

impl MountArgs {
    /// Reads the key file: a regular file of exactly 32 raw bytes (`encfs::keyfile`), and the warning to show
    /// when group or others may read it.
    pub(crate) fn model_key(&self) -> anyhow::Result<(ModelKey, Option<String>)> {
        let k = encfs::keyfile::read(&self.key_file)?;
        let warning = k.warning();
        Ok((k.key, warning))
    }

    /// The pinned root digest, if any.
    pub(crate) fn expect_root(&self) -> anyhow::Result<Option<[u8; 32]>> {
        let Some(hex_root) = &self.expect_root else {
            return Ok(None);
        };
        let mut root = [0u8; 32];
        if hex::decode_to_slice(hex_root.trim(), &mut root).is_err() {
            bail!("--expect-root must be 64 hex digits");
        }
        Ok(Some(root))
    }

    /// The signer's public key, when --signer-key is given.
    pub(crate) fn signer_key(&self) -> anyhow::Result<Option<encfs::signature::VerifyingKey>> {
        let Some(path) = &self.signer_key else {
            return Ok(None);
        };
        let pem = std::fs::read_to_string(path).with_context(|| format!("reading signer key {}", path.display()))?;
        let key =
            encfs::signature::VerifyingKey::from_pem(&pem).with_context(|| format!("signer key {}", path.display()))?;
        Ok(Some(key))
    }

    /// The image as logs may show it: a URL without userinfo and query (credentials), or the path.
    pub(crate) fn image_shown(&self) -> String {
        encfs::source::BlobKey::new(self.image.to_string_lossy()).to_string()
    }

    /// With SOURCE `-`, reads the source (one line, at most 64 KiB) from standard input. Otherwise warns, on
    /// stderr, when the command line carries a URL's credentials.
    pub(crate) fn resolve_source(&mut self) -> anyhow::Result<()> {
        if self.image.as_os_str() != "-" {
            let shown = self.image_shown();
            if shown != self.image.to_string_lossy() && encfs::source::is_url(&self.image.to_string_lossy()) {
                eprintln!(
                    "cinfer-encfs: warning: the URL's credentials are on this command line, visible to every user in \
                     the process table while `mount` runs; pass SOURCE `-` and the URL on standard input instead"
                );
            }
            return Ok(());
        }
        let mut line = String::new();
        std::io::Read::take(std::io::stdin().lock(), 64 << 10)
            .read_line(&mut line)
            .context("reading SOURCE from standard input")?;
        let spec = line.trim_end_matches(['\n', '\r']);
        if spec.is_empty() {
            bail!("SOURCE is `-` but standard input holds no source (a path or URL on one line)");
        }
        self.image = PathBuf::from(spec);
        Ok(())
    }

    /// Options for [`encfs::source::open`].
    pub(crate) fn source_options(&self) -> anyhow::Result<encfs::source::SourceOptions> {
        let secs = |v: f64, flag: &str| {
            std::time::Duration::try_from_secs_f64(v).with_context(|| format!("{flag} must be a positive number"))
        };
        let mut opts = encfs::source::SourceOptions::default();
        opts.local_io = match self.io {
            Io::Pread => encfs::source::LocalIo::Pread,
            Io::Mmap => encfs::source::LocalIo::Mmap,
        };
        opts.retry.request_timeout = secs(self.request_timeout, "--request-timeout")?;
        opts.retry.stall_timeout = opts.retry.request_timeout;
        opts.retry.budget = secs(self.retry_budget, "--retry-budget")?;
        if self.azure_managed_identity || self.azure_client_id.is_some() {
            let credential = attest::credential::Credential::ManagedIdentity {
                client_id: self.azure_client_id.clone(),
            };
            opts.azure_auth = encfs::source::AzureAuth::Entra(std::sync::Arc::new(
                attest::credential::TokenProvider::new(credential).context("managed identity")?,
            ));
        }
        Ok(opts)
    }

    /// The part cache of remote sources: --cache-size as the memory budget, --cache-dir on disk.
    pub(crate) fn cache_config(&self) -> encfs::cache::CacheConfig {
        let mut cfg = encfs::cache::CacheConfig::for_budget(self.cache_size.saturating_mul(1 << 20));
        if let Some(n) = std::env::var("CINFER_UNSTABLE_MAX_REQUESTS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            tracing::warn!(value = n, "CINFER_UNSTABLE_MAX_REQUESTS is set");
            cfg.max_requests = n;
        }
        if let Some(n) = std::env::var("CINFER_UNSTABLE_SPLIT").ok().and_then(|v| v.parse().ok()) {
            tracing::warn!(value = n, "CINFER_UNSTABLE_SPLIT is set");
            cfg.split.max = n;
        }
        if let Some(n) = std::env::var("CINFER_UNSTABLE_SPLIT_MIN_KIB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            tracing::warn!(value = n, "CINFER_UNSTABLE_SPLIT_MIN_KIB is set");
            cfg.split.min = n << 10;
        }
        cfg.disk = self.cache_dir.as_ref().map(|dir| encfs::cache::DiskConfig {
            dir: dir.clone(),
            limit: self.cache_dir_size.saturating_mul(1 << 20),
        });
        cfg
    }

    /// The mount settings.
    pub(crate) fn mount_config(&self) -> MountConfig {
        MountConfig {
            threads: self
                .threads
                .map(usize::from)
                .unwrap_or_else(|| {
                    if encfs::source::is_url(&self.image.to_string_lossy()) {
                        encfs::fuse::REMOTE_THREADS
                    } else {
                        encfs::fuse::local_threads()
                    }
                })
                .max(1),
            max_background: self.max_background.max(1),
            allow_other: self.allow_other,
            transport: self.transport.transport,
            fs_name: format!("cinfer-encfs:{}", self.image_shown()).replace([',', ' ', '\t', '\n'], "_"),
            ..MountConfig::default()
        }
    }
}

/// The FUSE transport option of `mount` and `sidecar`.
#[derive(Debug, clap::Args)]
pub(crate) struct TransportArg {
    /// How FUSE requests travel: `uring` (FUSE over io_uring, Linux 6.14+ with the `fuse.enable_uring` module
    /// parameter on, root: one queue per CPU, no system call per request), `classic` (`/dev/fuse` read/write,
    /// --threads request threads) or `auto` (io_uring when available, else classic). The log line "mounted"
    /// names the one used.
    #[arg(
        long,
        default_value = "auto",
        env = "CINFER_ENCFS_TRANSPORT",
        value_name = "auto|uring|classic",
        help_heading = "Tuning"
    )]
    pub(crate) transport: encfs::fuse::Transport,
}

/// Parses a directory argument into an absolute path (the background daemon leaves its working directory).
fn absolute_dir(s: &str) -> Result<PathBuf, String> {
    std::path::absolute(s).map_err(|e| format!("{s}: {e}"))
}

#[cfg(test)]
mod sidecar_tests {
    use clap::CommandFactory as _;

    /// Only `EncfsSideCarArgs` (the seed's contract; rendered deployments give it its literal value, so it is
    /// measured) reaches the sidecar through the environment. The attester, its mock inputs, the readiness
    /// directory and the status address come from the (measured) command line only; so does every other
    /// setting except the FUSE transport of `sidecar`, which changes how requests travel, not what is checked.
    #[test]
    fn only_the_sidecar_arguments_come_from_the_environment() {
        let cli = super::Cli::command();
        for name in ["sidecar", "extract"] {
            let sidecar = cli
                .find_subcommand(name)
                .unwrap_or_else(|| unreachable!("{name} subcommand"));
            let envs: Vec<String> = sidecar
                .get_arguments()
                .filter_map(|a| {
                    a.get_env()
                        .map(|e| format!("--{}: {}", a.get_id(), e.to_string_lossy()))
                })
                .collect();
            let mut want = vec![format!("--sidecar_args: {}", sidecar_args::ENV_VAR)];
            if name == "sidecar" {
                // How requests travel changes no check (the same tree answers on both transports).
                want.push("--transport: CINFER_ENCFS_TRANSPORT".into());
            }
            assert_eq!(envs, want, "{name}");
        }
    }

    /// `extract` mounts nothing: the FUSE settings are `sidecar`'s only.
    #[test]
    fn extract_takes_no_fuse_settings() {
        use clap::Parser as _;
        let ok = super::Cli::try_parse_from(["cinfer-encfs", "extract", "--args-file", "a"]);
        assert!(ok.is_ok(), "{ok:?}");
        for flag in ["--allow-other", "--threads=4", "--transport=classic"] {
            let r = super::Cli::try_parse_from(["cinfer-encfs", "extract", "--args-file", "a", flag]);
            assert!(r.is_err(), "extract accepted {flag}");
            let r = super::Cli::try_parse_from(["cinfer-encfs", "sidecar", "--args-file", "a", flag]);
            assert!(r.is_ok(), "sidecar refused {flag}: {r:?}");
        }
    }
}
