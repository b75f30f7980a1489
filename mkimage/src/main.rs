//! `cinfer-mkimage`: the model owner's CLI (see `cinfer-mkimage --help`).

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command};
use mkimage::build::{BuildOptions, build};
use mkimage::{inspect, keyfile, sign, verify};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CINFER_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cinfer-mkimage: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Build {
            src,
            output,
            key_file,
            key_id,
            chunk_size,
            force,
            threads,
            sign_key,
            password,
            signature,
            allow_symlinks,
        } => {
            let sign_key = sign_key
                .map(|p| load_signing_key(&p, password.as_deref()).map(std::sync::Arc::new))
                .transpose()?;
            keyfile::ensure_not_key(&output, &[&key_file])?;
            let (key, created) = keyfile::read_or_create(&key_file)?;
            if created {
                eprintln!(
                    "created key file {} (32 random bytes, mode 0600): keep it secret",
                    key_file.display()
                );
            }
            let key = checked_key(key);
            let key_id = key_id.unwrap_or_else(|| {
                format!(
                    "file:{}",
                    key_file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
                )
            });
            let mut opts = BuildOptions::new(&src, &output, key_id);
            opts.chunk_size = chunk_size;
            opts.force = force;
            opts.threads = threads;
            opts.sign_key = sign_key;
            opts.sign_allow_symlinks = allow_symlinks;
            let bar = progress_bar(&src)?;
            let start = Instant::now();
            let summary = build(&opts, &key, &|n| {
                if let Some(b) = &bar {
                    b.set_position(n);
                }
            })
            .with_context(|| format!("building {}", output.display()))?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "built {}: {} files, {} directories, {} symlinks, {} bytes in {:.2}s ({:.0} MB/s), image {} bytes",
                output.display(),
                summary.files,
                summary.dirs,
                summary.symlinks,
                summary.bytes,
                secs,
                summary.bytes as f64 / secs.max(1e-9) / 1e6,
                summary.image_len
            );
            if let Some(bundle) = &summary.signature {
                eprintln!("signed: OMS signature embedded in the index (extension 1)");
                if let Some(path) = &signature {
                    std::fs::write(path, bundle).with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("wrote the signature to {}", path.display());
                }
            }
            println!("root: {}", hex::encode(summary.root));
        }
        Command::Convert {
            legacy,
            output,
            key_file,
            new_key_file,
            key_id,
            chunk_size,
            force,
            threads,
        } => convert(
            legacy,
            output,
            key_file,
            new_key_file,
            key_id,
            chunk_size,
            force,
            threads,
        )?,
        Command::Sign {
            model,
            private_key,
            password,
            signature,
            ignore_paths,
            no_ignore_git_paths,
            allow_symlinks,
        } => {
            let key = load_signing_key(&private_key, password.as_deref())?;
            let opts = sign::SignOptions {
                ignore_git_paths: !no_ignore_git_paths,
                ignore_paths,
                signature_path: Some(signature.clone()),
                allow_symlinks,
            };
            let start = Instant::now();
            let bundle =
                sign::sign_model(&model, &key, &opts).with_context(|| format!("signing {}", model.display()))?;
            std::fs::write(&signature, &bundle).with_context(|| format!("writing {}", signature.display()))?;
            eprintln!(
                "signed {} with {} key {} in {:.2}s",
                model.display(),
                key.curve(),
                key.verifying_key().hint(),
                start.elapsed().as_secs_f64()
            );
            println!("Signing succeeded: {}", signature.display());
        }
        Command::VerifySignature {
            model,
            key_file: Some(key_file),
            public_key,
            ..
        } => verify_image_signature(&model, &key_file, &public_key)?,
        Command::VerifySignature {
            model,
            signature,
            public_key,
            allow_signer_ignores,
            allow_sha1,
            key_file: None,
        } => verify_signature(&model, signature, &public_key, allow_signer_ignores, allow_sha1)?,
        Command::ImportKey(args) => mkimage::keys::run_import_key(&args)?,
        Command::Inspect { image, key_file } => {
            let key = key_file.as_deref().map(keyfile::read).transpose()?.map(checked_key);
            print!("{}", inspect::inspect(&image, key.as_ref())?);
        }
        Command::Upload {
            image,
            url,
            create_container,
            block_size,
            parallel,
            force,
        } => {
            let opts = mkimage::upload::UploadOptions {
                block_size: u64::from(block_size),
                parallel,
                create_container,
                force,
            };
            upload(&image, &url, &opts)?;
        }
        Command::Verify { image, key_file } => {
            let key = checked_key(keyfile::read(&key_file)?);
            let start = Instant::now();
            let r = verify::verify(&image, &key)?;
            eprintln!(
                "verified {} chunks of {} files ({} bytes) in {:.2}s",
                r.chunks,
                r.files,
                r.bytes,
                start.elapsed().as_secs_f64()
            );
            println!("root: {}", hex::encode(r.root));
        }
    }
    Ok(())
}

/// The key of a key file, after warning (on stderr) when group or others may read it.
fn checked_key(k: keyfile::KeyFile) -> encfs::format::ModelKey {
    if let Some(w) = k.warning() {
        eprintln!("warning: {w}");
    }
    k.key
}

/// A legacy image's passphrase file: a regular file of 1 byte to 8 MiB (cryptsetup's limit), read no further.
fn read_passphrase(path: &std::path::Path) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    const MAX: u64 = 8 << 20;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("reading key file {}", path.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("reading key file {}", path.display()))?;
    anyhow::ensure!(
        meta.is_file(),
        "key file {} is a {}, not a regular file",
        path.display(),
        encfs::keyfile::file_kind(&meta)
    );
    let mut buf = zeroize::Zeroizing::new(Vec::new());
    f.take(MAX + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading key file {}", path.display()))?;
    anyhow::ensure!(
        !buf.is_empty() && buf.len() as u64 <= MAX,
        "key file {} must hold 1 byte to 8 MiB",
        path.display()
    );
    if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0 {
        eprintln!(
            "warning: key file {} has mode {:04o}: group or others may read it (chmod 600)",
            path.display(),
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777
        );
    }
    Ok(buf)
}

/// `convert`: legacy LUKS2 + ext4 image → authenticated image.
#[allow(clippy::too_many_arguments)]
fn convert(
    legacy: std::path::PathBuf,
    output: std::path::PathBuf,
    key_file: std::path::PathBuf,
    new_key_file: std::path::PathBuf,
    key_id: Option<String>,
    chunk_size: u32,
    force: bool,
    threads: usize,
) -> anyhow::Result<()> {
    keyfile::ensure_not_key(&output, &[&key_file, &new_key_file])?;
    // cryptsetup reads at most 8 MiB of a key file; the seed's is 32 bytes.
    let passphrase = read_passphrase(&key_file)?;
    let (key, created) = keyfile::read_or_create(&new_key_file)?;
    if created {
        eprintln!(
            "created key file {} (32 random bytes, mode 0600): keep it secret",
            new_key_file.display()
        );
    }
    let key = checked_key(key);
    let key_id = key_id.unwrap_or_else(|| {
        format!(
            "file:{}",
            new_key_file
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        )
    });
    let mut opts = BuildOptions::new(&legacy, &output, key_id);
    opts.chunk_size = chunk_size;
    opts.force = force;
    opts.threads = threads;
    let start = Instant::now();
    let summary = mkimage::convert::convert(&legacy, &passphrase, &opts, &key, &|_| {})
        .with_context(|| format!("converting {} to {}", legacy.display(), output.display()))?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "converted {} to {}: {} files, {} directories, {} symlinks, {} bytes in {:.2}s ({:.0} MB/s), image {} bytes",
        legacy.display(),
        output.display(),
        summary.files,
        summary.dirs,
        summary.symlinks,
        summary.bytes,
        secs,
        summary.bytes as f64 / secs.max(1e-9) / 1e6,
        summary.image_len
    );
    println!("root: {}", hex::encode(summary.root));
    Ok(())
}

fn load_signing_key(path: &std::path::Path, password: Option<&str>) -> anyhow::Result<encfs::signature::SigningKey> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    encfs::signature::SigningKey::from_pem(&pem, password.map(str::as_bytes))
        .with_context(|| format!("private key {}", path.display()))
}

fn load_verifying_key(path: &std::path::Path) -> anyhow::Result<encfs::signature::VerifyingKey> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    encfs::signature::VerifyingKey::from_pem(&pem).with_context(|| format!("public key {}", path.display()))
}

/// `verify-signature --key-file`: a signed image's embedded signature against its index, then every chunk and
/// file digest.
fn verify_image_signature(
    image: &std::path::Path,
    key_file: &std::path::Path,
    public_key: &std::path::Path,
) -> anyhow::Result<()> {
    let signer = load_verifying_key(public_key)?;
    let key = checked_key(keyfile::read(key_file)?);
    let img = mkimage::image_file::ImageFile::open(image)?;
    let (opened, _) = img.open_with_key(&key)?;
    let manifest = encfs::signature::check_index(&opened.index, &signer)
        .with_context(|| format!("checking the signature embedded in {}", image.display()))?;
    let start = Instant::now();
    let r = verify::verify(image, &key)?;
    eprintln!(
        "signature of {} verified: {} signed files match the index; {} chunks and every file digest checked in {:.2}s",
        manifest.model_name,
        manifest.files.len(),
        r.chunks,
        start.elapsed().as_secs_f64()
    );
    println!("Verification succeeded");
    Ok(())
}

/// `verify-signature`: an OMS bundle, or (only with --allow-sha1) the seed's `signature.bin` files.
fn verify_signature(
    model: &std::path::Path,
    signature: Option<std::path::PathBuf>,
    public_key: &std::path::Path,
    allow_signer_ignores: bool,
    allow_sha1: bool,
) -> anyhow::Result<()> {
    let key = load_verifying_key(public_key)?;
    let bundle = match &signature {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
        None if allow_sha1 => None,
        None => {
            let path = std::path::Path::new("model.sig");
            Some(std::fs::read(path).context("reading model.sig (pass --signature)")?)
        }
    };
    let seed = match &bundle {
        None => true,
        Some(b) => !b.trim_ascii_start().starts_with(b"{"),
    };
    if seed {
        if !allow_sha1 {
            anyhow::bail!(
                "{} is not an OMS signature bundle; if it is the seed's signature.bin (ECDSA over SHA-1, per model* \
                 file, names and other files unsigned), pass --allow-sha1 to check it for migration",
                signature
                    .as_deref()
                    .unwrap_or(std::path::Path::new("model.sig"))
                    .display()
            );
        }
        tracing::warn!(
            "checking seed signature.bin files: SHA-1 is broken for collisions and only model* files are signed"
        );
        eprintln!(
            "warning: --allow-sha1: checking the seed's signature.bin (ECDSA over SHA-1); SHA-1 is broken for \
             collisions and file names and non-model files are unsigned. Re-sign with `cinfer-mkimage sign`."
        );
        let r = sign::verify_seed(model, &key)?;
        for p in &r.unsigned {
            eprintln!("warning: not covered by any seed signature: {}", p.display());
        }
        println!("Verification succeeded (seed SHA-1): {} model files", r.signed.len());
        return Ok(());
    }
    let bundle = bundle.unwrap_or_default();
    let opts = sign::VerifyOptions {
        allow_signer_ignores,
        signature_path: signature,
    };
    let start = Instant::now();
    let r =
        sign::verify_model(model, &bundle, &key, &opts).with_context(|| format!("verifying {}", model.display()))?;
    if !r.signer_ignores.is_empty() {
        eprintln!(
            "signer-declared ignore paths (not covered by the signature): {}",
            r.signer_ignores.join(", ")
        );
    }
    eprintln!(
        "verified {} files ({} bytes) of {} in {:.2}s, root {}",
        r.files,
        r.bytes,
        r.manifest.model_name,
        start.elapsed().as_secs_f64(),
        hex::encode(r.manifest.root)
    );
    println!("Verification succeeded");
    Ok(())
}

/// `upload`: the image to its blob, with a progress bar on a terminal.
fn upload(image: &std::path::Path, url: &str, opts: &mkimage::upload::UploadOptions) -> anyhow::Result<()> {
    let url = mkimage::upload::parse_blob_url(url)?;
    let size = std::fs::metadata(image)
        .with_context(|| format!("reading {}", image.display()))?
        .len();
    let bar = std::io::stderr().is_terminal().then(|| byte_bar(size));
    let progress = |n: u64| {
        if let Some(b) = &bar {
            b.inc(n);
        }
    };
    let start = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let r = rt.block_on(mkimage::upload::upload(image, &url, opts, &progress))?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let secs = start.elapsed().as_secs_f64();
    if r.unchanged {
        eprintln!("{} already holds this image; nothing sent", url.redacted());
    } else {
        eprintln!(
            "uploaded {} to {}: {} blocks ({} sent, {} resumed) in {secs:.2}s ({:.1} MB/s), verified",
            image.display(),
            url.redacted(),
            r.blocks,
            r.sent_blocks,
            r.resumed_blocks,
            r.size as f64 / secs.max(1e-9) / 1e6
        );
    }
    use base64::Engine as _;
    println!("size: {}", r.size);
    println!("md5: {}", base64::engine::general_purpose::STANDARD.encode(r.md5));
    println!("etag: {}", r.etag);
    Ok(())
}

/// A byte progress bar sized to the tree, only when stderr is a terminal.
fn progress_bar(src: &std::path::Path) -> anyhow::Result<Option<indicatif::ProgressBar>> {
    if !std::io::stderr().is_terminal() {
        return Ok(None);
    }
    let total: u64 = mkimage::build::walk(src)?
        .iter()
        .filter_map(|w| match w.entry.kind {
            encfs::format::EntryKind::File { size, .. } => Some(size),
            _ => None,
        })
        .sum();
    Ok(Some(byte_bar(total)))
}

/// A progress bar over `total` bytes, with the rate and the time left.
fn byte_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
