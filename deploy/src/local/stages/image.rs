//! The model owner's side: a Triton model repository (the generated example or the user's), signed with a fresh
//! P-256 key (OpenSSF model signing) and encrypted into one image by `cinfer-mkimage build`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Ctx, hex64};
use crate::local::error::{LocalError, Result};
use crate::local::proc::run;

/// The example's input files: the mug picture as `.npy` (for `client.py`) and as a KServe V2 JSON request.
#[derive(Debug, Clone)]
pub struct ExampleInput {
    /// `mug.npy`: a batch of one 3x64x64 FP32 picture.
    pub npy: PathBuf,
    /// `mug.json`: the same picture as a KServe V2 JSON inference request (for curl).
    pub json: PathBuf,
}

/// Generates the example repository (`classifier`, and `classifier_large` with `large_mb` MiB of weights).
pub(crate) fn make_example(ctx: &Ctx, script: &Path, large_mb: u32) -> Result<(PathBuf, ExampleInput)> {
    let models = ctx.work.join("models");
    let input = ExampleInput {
        npy: ctx.work.join("mug.npy"),
        json: ctx.work.join("mug.json"),
    };
    let mut cmd = Command::new(&ctx.python);
    cmd.arg(script)
        .arg(&models)
        .arg("--input-npy")
        .arg(&input.npy)
        .arg("--input-json")
        .arg(&input.json);
    if large_mb > 0 {
        cmd.args(["--large-mb", &large_mb.to_string()]);
    }
    run("make_models.py", &mut cmd)?;
    Ok((models, input))
}

/// Names of the models in a Triton repository (directories with a `config.pbtxt`), sorted.
pub(crate) fn model_names(repo: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(repo).map_err(LocalError::io(format!("reading {}", repo.display())))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("config.pbtxt").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(LocalError::NoModels(repo.to_path_buf()));
    }
    Ok(names)
}

/// The built image and what pins it.
#[derive(Debug, Clone)]
pub(crate) struct Image {
    pub(crate) path: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) root: String,
    pub(crate) signer_pub: PathBuf,
}

/// A fresh P-256 model-signing key in `dir`: `signer.pem` (private, PKCS#8) and `signer.pub.pem`; returns both.
pub fn make_signer(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let signer = dir.join("signer.pem");
    let signer_pub = dir.join("signer.pub.pem");
    run(
        "openssl genpkey",
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&signer),
    )?;
    run(
        "openssl pkey -pubout",
        Command::new("openssl")
            .arg("pkey")
            .arg("-in")
            .arg(&signer)
            .arg("-pubout")
            .arg("-out")
            .arg(&signer_pub),
    )?;
    Ok((signer, signer_pub))
}

/// Makes a signing key and builds the signed, encrypted image of `models`.
pub(crate) fn build(ctx: &Ctx, models: &Path) -> Result<Image> {
    let (signer, signer_pub) = make_signer(&ctx.work)?;
    let path = ctx.work.join("model.img");
    let key = ctx.work.join("model.key");
    let out = run(
        "cinfer-mkimage build",
        Command::new(&ctx.mkimage)
            .arg("build")
            .arg(models)
            .arg("-o")
            .arg(&path)
            .arg("--key-file")
            .arg(&key)
            .arg("--sign-key")
            .arg(&signer),
    )?;
    let root_line = out.lines().find_map(|l| l.strip_prefix("root: ")).unwrap_or_default();
    let root = hex64("cinfer-mkimage build (root)", root_line)?;
    Ok(Image {
        path,
        key,
        root,
        signer_pub,
    })
}
