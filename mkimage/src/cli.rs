//! Command-line interface of `cinfer-mkimage`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Builds, inspects and verifies encrypted cinfer model images.
///
/// Exit status: 0 on success, 1 on any error (the message names the path, chunk or check that failed).
#[derive(Debug, Parser)]
#[command(name = "cinfer-mkimage", version)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Builds an encrypted image from a model directory; the last line printed is `root: <hex>`.
    Build {
        /// The model directory (e.g. a Triton model repository).
        src: PathBuf,
        /// The image to write.
        #[arg(short, long)]
        output: PathBuf,
        /// File with the 32-byte model key; created (random, mode 0600) if it does not exist.
        #[arg(long)]
        key_file: PathBuf,
        /// Key id or URI recorded in the header to name the key (default: `file:<key file name>`).
        #[arg(long)]
        key_id: Option<String>,
        /// Plaintext bytes per chunk: a power of two from 4096 to 16 MiB (suffixes k, M accepted).
        #[arg(long, default_value = "64k", value_parser = parse_size)]
        chunk_size: u32,
        /// Overwrite IMAGE if it exists.
        #[arg(long)]
        force: bool,
        /// Sealing threads (default: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Sign the model while building (OpenSSF Model Signing, verifiable with `model_signing verify key`) with
        /// this ECDSA private key (PEM: PKCS#8, encrypted PKCS#8 or SEC1; P-256, P-384 or P-521) and embed the
        /// signature in the image, where `cinfer-encfs mount --signer-key` checks it.
        #[arg(long, help_heading = "Signing")]
        sign_key: Option<PathBuf>,
        /// Password of an encrypted --sign-key.
        #[arg(long, env = "CINFER_SIGN_PASSWORD", hide_env_values = true, help_heading = "Signing")]
        password: Option<String>,
        /// Also write the signature (Sigstore bundle JSON) to this file.
        #[arg(long, requires = "sign_key", help_heading = "Signing")]
        signature: Option<PathBuf>,
        /// Sign symlinks as the files they point to (`model_signing --allow_symlinks`); otherwise a symlink in a
        /// signed model is an error.
        #[arg(long, requires = "sign_key", help_heading = "Signing")]
        allow_symlinks: bool,
    },
    /// Signs a model directory (or single file) with OpenSSF Model Signing: writes a Sigstore bundle that
    /// `model_signing verify key` accepts.
    Sign {
        /// The model directory or file.
        model: PathBuf,
        /// ECDSA private key (PEM: PKCS#8, encrypted PKCS#8 or SEC1; P-256, P-384 or P-521).
        #[arg(long)]
        private_key: PathBuf,
        /// Password of an encrypted private key.
        #[arg(long, env = "CINFER_SIGN_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Where to write the signature.
        #[arg(long, default_value = "model.sig")]
        signature: PathBuf,
        /// Paths to leave unsigned (recorded in the signature); relative to the working directory when that lands
        /// inside the model, else to the model root.
        #[arg(long, num_args = 1..)]
        ignore_paths: Vec<String>,
        /// Sign `.git`, `.gitattributes`, `.github` and `.gitignore` too (they are ignored by default).
        #[arg(long)]
        no_ignore_git_paths: bool,
        /// Sign symlinks as the files they point to; otherwise a symlink is an error.
        #[arg(long)]
        allow_symlinks: bool,
    },
    /// Checks a model directory (or single file) against an OpenSSF Model Signing signature (e.g. one
    /// `model_signing sign key` wrote): the signature, then that the files are exactly the signed ones. With
    /// --key-file, MODEL is a signed image instead: its embedded signature must list exactly the image's files and
    /// digests, and every chunk and file digest is checked (what `cinfer-encfs mount --signer-key` will check).
    VerifySignature {
        /// The model directory or file (or, with --key-file, a signed image).
        model: PathBuf,
        /// The image's 32-byte model key file: MODEL is an image built with `build --sign-key`.
        #[arg(long, conflicts_with_all = ["signature", "allow_sha1", "allow_signer_ignores"])]
        key_file: Option<PathBuf>,
        /// The signature (Sigstore bundle JSON; or, with --allow-sha1, the seed's `signature.bin`).
        #[arg(long)]
        signature: Option<PathBuf>,
        /// The signer's ECDSA public key (PEM SubjectPublicKeyInfo).
        #[arg(long)]
        public_key: PathBuf,
        /// Accept ignore paths the signer declared beyond `.git`, `.gitattributes`, `.github`, `.gitignore`: files
        /// there are not covered by the signature.
        #[arg(long)]
        allow_signer_ignores: bool,
        /// Check the seed's per-directory `signature.bin` files instead (ECDSA over SHA-1 of each `model*` file;
        /// names and other files unsigned). Insecure; for migration only.
        #[arg(long)]
        allow_sha1: bool,
    },
    /// Prints header facts (no key needed); with --key-file, also the file listing.
    Inspect {
        /// The image.
        image: PathBuf,
        /// The 32-byte model key file.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Converts a legacy image (the seed's LUKS2 aes-xts-plain64 + ext4) into an authenticated image, streamed:
    /// no root, no device-mapper. The last line printed is `root: <hex>`.
    Convert {
        /// The legacy image (e.g. made by the seed's `generatefs.sh`).
        legacy: PathBuf,
        /// The image to write.
        #[arg(short, long)]
        output: PathBuf,
        /// The legacy image's key file: its bytes are the LUKS passphrase (the seed's 32-byte released key).
        #[arg(long)]
        key_file: PathBuf,
        /// File with the 32-byte model key for the new image; created (random, mode 0600) if it does not exist.
        #[arg(long)]
        new_key_file: PathBuf,
        /// Key id or URI recorded in the header to name the key (default: `file:<new key file name>`).
        #[arg(long)]
        key_id: Option<String>,
        /// Plaintext bytes per chunk: a power of two from 4096 to 16 MiB (suffixes k, M accepted).
        #[arg(long, default_value = "64k", value_parser = parse_size)]
        chunk_size: u32,
        /// Overwrite the output if it exists.
        #[arg(long)]
        force: bool,
        /// Sealing threads (default: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Imports the model key into AKV/mHSM or the local broker with a release policy for a container policy
    /// digest (host_data) and an attestation authority; prints the sidecar's key fields.
    ImportKey(mkimage::keys::ImportKeyArgs),
    /// Uploads an image to Azure Blob Storage as a block blob: blocks staged in parallel, an interrupted upload
    /// resumed, and the result verified (length, per-block and whole-blob MD5, committed block list). Prints
    /// `size:`, `md5:` (base64) and `etag:` lines.
    Upload {
        /// The image.
        image: PathBuf,
        /// The blob URL with a SAS query allowing create/write/read (`https://<account>.blob.core.windows.net/
        /// <container>/<blob>?<SAS>`, or path style `http://127.0.0.1:10000/<account>/<container>/<blob>?<SAS>`
        /// for Azurite). Read from `CINFER_BLOB_URL` when absent, so the SAS stays out of shell history.
        #[arg(env = "CINFER_BLOB_URL", hide_env_values = true)]
        url: String,
        /// Create the container first (the SAS must allow it, e.g. an account SAS); an existing one is fine.
        #[arg(long)]
        create_container: bool,
        /// Bytes per block (suffixes k, M).
        #[arg(long, default_value = "8M", value_parser = parse_size)]
        block_size: u32,
        /// Blocks in flight at once.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        /// Replace an existing blob that holds different content.
        #[arg(long)]
        force: bool,
    },
    /// Opens every chunk and checks every tag and file digest; prints the root.
    Verify {
        /// The image.
        image: PathBuf,
        /// The 32-byte model key file.
        #[arg(long)]
        key_file: PathBuf,
    },
}

fn parse_size(s: &str) -> Result<u32, String> {
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1u64 << 20),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s}"))?;
    u32::try_from(n * mult).map_err(|_| format!("size too large: {s}"))
}
