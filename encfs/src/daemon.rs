//! Running a mount: verification, the FUSE session, readiness reporting, background mode, signals, unmount.
//!
//! Background mode re-executes this binary with a hidden `--daemon-child` flag, its stdout a pipe and its
//! stderr the log file (or /dev/null). The child starts a new session (`setsid`), verifies and mounts, then
//! writes one line to the pipe: `ready <root>` once files are visible, or `error <message>`. The parent waits
//! for that line and exits 0 or 1 accordingly, so `mount` returns only when the mount can be used.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use encfs::format::ModelKey;
use encfs::fs::EncFsConfig;
use encfs::fuse;
use encfs::pipeline::{self, ImageSpec, Serving};
use encfs::source::{BlobKey, BlobSource};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::cli::{MountArgs, UnmountArgs};

/// `mount` without `--foreground`: starts the daemon and waits until it reports ready or failed.
pub(crate) fn mount_background(args: &MountArgs) -> anyhow::Result<()> {
    // The key file is checked here too, so a bad one (a FIFO, a device, a wrong length) is refused before a
    // daemon starts, and a too-open one is warned about where the operator sees it.
    let (key, warning) = args.model_key()?;
    drop(key);
    if let Some(w) = warning {
        eprintln!("cinfer-encfs: warning: {w}");
    }
    if let Some(w) = unpinned_warning(args) {
        eprintln!("cinfer-encfs: WARNING: {w}");
    }
    refuse_stacking(&args.mountpoint)?;
    let exe = std::env::current_exe().context("locating the cinfer-encfs executable")?;
    let stderr = match &args.log_file {
        Some(p) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening log file {}", p.display()))?,
        ),
        None => Stdio::null(),
    };
    let mut child = Command::new(exe)
        .args(child_args()?)
        .arg("--daemon-child")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("starting the daemon")?;
    // The source goes to the daemon on its standard input (its SOURCE is `-`), never on its command line, which
    // every user can read in /proc.
    {
        let mut stdin = child.stdin.take().context("daemon stdin")?;
        writeln!(stdin, "{}", args.image.display()).context("handing the source to the daemon")?;
    }
    let out = child.stdout.take().context("daemon stdout")?;
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .context("waiting for the daemon")?;
    let line = line.trim_end();
    if line.starts_with("ready") {
        return Ok(());
    }
    if let Some(msg) = line.strip_prefix("error ") {
        let _ = child.wait();
        bail!("{msg}");
    }
    let status = child.wait().context("waiting for the daemon")?;
    bail!("the daemon exited before the mount was ready ({status})")
}

/// This command's arguments with SOURCE replaced by `-` (the daemon reads it from standard input). SOURCE is
/// found by trying each argument equal to it: the one whose replacement makes the parsed SOURCE `-`.
fn child_args() -> anyhow::Result<Vec<std::ffi::OsString>> {
    use clap::Parser as _;
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let source_is_dash = |argv: &[std::ffi::OsString]| {
        matches!(crate::cli::Cli::try_parse_from(argv), Ok(crate::cli::Cli { command: crate::cli::Command::Mount(m) })
            if m.image.as_os_str() == "-")
    };
    if source_is_dash(&argv) {
        return Ok(argv[1..].to_vec());
    }
    let Ok(crate::cli::Cli {
        command: crate::cli::Command::Mount(parsed),
    }) = crate::cli::Cli::try_parse_from(&argv)
    else {
        bail!("re-reading the command line");
    };
    for i in 1..argv.len() {
        if argv[i] == parsed.image.as_os_str() {
            let mut cand = argv.clone();
            cand[i] = "-".into();
            if source_is_dash(&cand) {
                return Ok(cand[1..].to_vec());
            }
        }
    }
    bail!("could not find SOURCE on the command line")
}

/// How a foreground run reports readiness.
pub(crate) enum Ready {
    /// Log only (`--foreground`).
    Log,
    /// Write `ready`/`error` lines to stdout (the background parent's pipe).
    Pipe,
}

impl Ready {
    fn ready(&self, root: &str) {
        if let Self::Pipe = self {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "ready {root}");
            let _ = out.flush();
        }
    }

    /// Reports a failure before readiness (for `Pipe`; `Log` leaves it to main's error print).
    pub(crate) fn error(&self, err: &anyhow::Error) {
        if let Self::Pipe = self {
            let msg = format!("{err:#}").replace('\n', " ");
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "error {msg}");
            let _ = out.flush();
        }
    }
}

/// The daemon proper: verify, mount, report readiness, serve until unmounted or signalled.
pub(crate) fn run_mount(args: &MountArgs, ready: &Ready) -> anyhow::Result<()> {
    if let Ready::Pipe = ready {
        detach_session();
    }
    let (model_key, key_warning) = args.model_key()?;
    if let Some(w) = key_warning {
        warn!("{w}");
    }
    if let Some(w) = unpinned_warning(args) {
        warn!("{w}");
    }
    refuse_stacking(&args.mountpoint)?;
    let expect_root = args.expect_root()?;
    // Read before the daemon leaves its working directory, so a relative path works.
    let signer = args.signer_key()?;
    // Absolute paths, so the background daemon can leave its working directory (and not keep it busy); a URL
    // stays as given (`source::open` tells them apart).
    let spec = args
        .image
        .to_str()
        .ok_or_else(|| anyhow!("image path {} is not UTF-8", args.image.display()))?;
    let source_opts = args.source_options()?;
    let metrics = source_opts.metrics.clone();
    let (source, key) = encfs::source::open(spec, &source_opts).context("opening the image source")?;
    let image_shown = args.image_shown();
    let image = image_shown.as_str();
    let mountpoint = std::path::absolute(&args.mountpoint).context("resolving the mountpoint")?;
    let meta = std::fs::metadata(&mountpoint).with_context(|| format!("mountpoint {}", args.mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", args.mountpoint.display());
    }
    if let Ready::Pipe = ready {
        std::env::set_current_dir("/").context("changing to /")?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cinfer-encfs-rt")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Signal handlers go in before the mount, so a SIGTERM right after readiness is not lost.
    let (sigterm, sigint) = {
        let _guard = rt.enter();
        (
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        )
    };
    let (uid, gid) = ids();
    let mut fs_config = EncFsConfig::default();
    if let Ok(v) = std::env::var("CINFER_UNSTABLE_PARALLEL_MIN_CHUNKS") {
        fs_config.parallel_min_chunks = v.parse().context("CINFER_UNSTABLE_PARALLEL_MIN_CHUNKS")?;
        warn!(
            value = fs_config.parallel_min_chunks,
            "CINFER_UNSTABLE_PARALLEL_MIN_CHUNKS is set"
        );
    }
    // The mount, as data: the same pipeline the sidecar runs.
    let image_spec = ImageSpec {
        shown: image.to_owned(),
        expect_root,
        signer,
        verify: args.verify.mode(),
        budget: args.cache_size.saturating_mul(1 << 20),
        uid,
        gid,
        fs: fs_config,
    };
    let serving = Serving {
        config: args.mount_config(),
        local: !encfs::source::is_url(spec),
        read_ahead_kb: args.read_ahead_kb,
    };
    if let Some(addr) = args.metrics_addr {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("binding the metrics address {addr}"))?;
        rt.spawn(encfs::metrics::serve(listener, metrics.clone()));
        info!(%addr, "metrics endpoint up");
    }
    let signals = Signals { sigterm, sigint };
    let session = if encfs::source::is_url(spec) {
        // Remote: prefetch and cache ciphertext parts within --cache-size.
        let source = encfs::cache::CachingSource::new(source, args.cache_config(), metrics);
        open_and_mount(source, key, model_key, &image_spec, &mountpoint, &serving, &rt)?
    } else {
        open_and_mount(source, key, model_key, &image_spec, &mountpoint, &serving, &rt)?
    };
    serve(session, &mountpoint, ready, &rt, signals)
}

struct Signals {
    sigterm: tokio::signal::unix::Signal,
    sigint: tokio::signal::unix::Signal,
}

/// The pipeline's open, verify and mount; returns the session and the root to report.
fn open_and_mount<B: BlobSource>(
    source: B,
    blob: BlobKey,
    model_key: ModelKey,
    spec: &ImageSpec,
    mountpoint: &Path,
    serving: &Serving,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<(fuse::MountSession, String)> {
    let verified = pipeline::open_verified(source, blob, model_key, spec, rt.handle())?;
    Ok(pipeline::mount(verified, spec, mountpoint, serving, rt.handle())?)
}

/// Reports readiness, then serves until unmounted or signalled.
fn serve(
    (session, root): (fuse::MountSession, String),
    mountpoint: &Path,
    ready: &Ready,
    rt: &tokio::runtime::Runtime,
    mut signals: Signals,
) -> anyhow::Result<()> {
    ready.ready(&root);
    let signalled = rt.block_on(async {
        loop {
            tokio::select! {
                _ = signals.sigterm.recv() => break Some("SIGTERM"),
                _ = signals.sigint.recv() => break Some("SIGINT"),
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if session.is_finished() {
                        break None;
                    }
                }
            }
        }
    });
    match signalled {
        Some(sig) => {
            info!("{sig}: unmounting");
            let mountpoint = session.mountpoint().to_path_buf();
            if let Err(e) = session.unmount() {
                warn!("unmount failed ({e}); detaching lazily");
                unmount_path(&mountpoint, true)?;
            }
        }
        None => match session.finish_ended() {
            fuse::Ended::Dead { detached } => {
                let shown = mountpoint.display();
                match detached {
                    Ok(()) => bail!("the filesystem stopped serving (its request threads ended); detached {shown}"),
                    Err(e) => {
                        bail!("the filesystem stopped serving (its request threads ended); detaching {shown}: {e}")
                    }
                }
            }
            _ => info!("unmounted externally"),
        },
    }
    Ok(())
}

/// `unmount`: only a cinfer-encfs mount (live, or left by a killed daemon); `umount2` as root, else (or on EPERM)
/// `fusermount3 -u`.
pub(crate) fn unmount(args: &UnmountArgs) -> anyhow::Result<()> {
    let path = table_path(&args.mountpoint)?;
    let shown = args.mountpoint.display();
    match fuse::mountinfo::top_at(&path).context("reading the mount table")? {
        None => bail!("{shown} is not a mountpoint"),
        Some(e) if !e.is_cinfer() => bail!(
            "{shown} is a {} mount of {}, not a cinfer-encfs mount: refusing to unmount it",
            e.fs_type,
            e.source
        ),
        Some(_) => unmount_path(&args.mountpoint, args.lazy),
    }
}

/// `path` as the mount table lists it: absolute, with its parent directory resolved (the path itself is not
/// resolved: a dead mount there answers ENOTCONN, a live one would be asked).
fn table_path(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    let abs = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(parent
            .canonicalize()
            .with_context(|| format!("resolving {}", parent.display()))?
            .join(name)),
        _ => Ok(abs),
    }
}

/// Refuses to mount on a path where a cinfer-encfs mount already is (live, or dead): a second one would stack on
/// top of it, hiding it, and its daemon would serve on unseen.
fn refuse_stacking(mountpoint: &Path) -> anyhow::Result<()> {
    let path = table_path(mountpoint)?;
    if let Some(e) = fuse::mountinfo::top_at(&path).context("reading the mount table")?
        && e.is_cinfer()
    {
        bail!(
            "{} is already a cinfer-encfs mount (of {}): unmount it first (cinfer-encfs unmount {})",
            mountpoint.display(),
            e.source.strip_prefix("cinfer-encfs:").unwrap_or(&e.source),
            mountpoint.display()
        );
    }
    Ok(())
}

/// The warning for a mount that pins nothing: no root digest and no signer, so any image sealed with the key
/// (an older one, another model) is served.
fn unpinned_warning(args: &MountArgs) -> Option<&'static str> {
    (args.expect_root.is_none() && args.signer_key.is_none()).then_some(
        "UNPINNED MOUNT: neither --expect-root nor --signer-key is given, so ANY image sealed with this key is \
         served (an older version, another model). Pin the root that `cinfer-mkimage build` printed.",
    )
}

fn unmount_path(mountpoint: &Path, lazy: bool) -> anyhow::Result<()> {
    let shown = mountpoint.display();
    match fuse::unmount_path(mountpoint, lazy) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => bail!("{shown} is not a mountpoint"),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            bail!("{shown} is busy (files open?); use --lazy to detach anyway")
        }
        Err(e) => Err(e).with_context(|| format!("unmounting {shown}")),
    }
}

#[allow(unsafe_code)]
fn ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid cannot fail and have no preconditions.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Leaves the parent's session and process group, so terminal signals and hangups do not reach the daemon.
fn detach_session() {
    #[allow(unsafe_code)]
    // SAFETY: setsid has no preconditions; it fails harmlessly if we already lead a process group.
    let _ = unsafe { libc::setsid() };
}
