//! Interoperability of `cinfer-mkimage sign` / `verify-signature` / `build --sign-key` with the OpenSSF reference
//! implementation, `model_signing` 1.1.1 from PyPI (key method), both ways, plus the seed's SHA-1 `signature.bin`.
//!
//! The reference CLI runs from the test venv (`bash scripts/pyenv.sh` creates it; `scripts/test.sh` exports
//! `CINFER_PYTHON`). Without it these tests fail, never skip.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mkimage(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cinfer-mkimage"))
        .args(args)
        .current_dir(cwd)
        .env_remove("CINFER_SIGN_PASSWORD")
        .output()
        .expect("spawn cinfer-mkimage")
}

/// The venv's python: `CINFER_PYTHON`, else the default cache location; panics (test failure) without one.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CINFER_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let p = home.join(".cache/cinfer/venv/bin/python");
    assert!(
        p.exists(),
        "no Python with model_signing: set CINFER_PYTHON or run `bash scripts/pyenv.sh` (creates {})",
        p.display()
    );
    p
}

/// Runs the reference CLI (`python -m model_signing ...`).
fn reference(args: &[&str], cwd: &Path) -> Output {
    let py = python();
    let o = Command::new(&py)
        .args(["-m", "model_signing"])
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {} -m model_signing: {e}; run `bash scripts/pyenv.sh`",
                py.display()
            )
        });
    let all = text(&o);
    assert!(
        !all.contains("No module named"),
        "model_signing is not installed in {}: run `bash scripts/pyenv.sh`\n{all}",
        py.display()
    );
    o
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
fn ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed:\n{}", text(o));
}

#[track_caller]
fn fails(o: &Output, what: &str, needle: &str) {
    assert!(!o.status.success(), "{what} unexpectedly succeeded:\n{}", text(o));
    assert!(text(o).contains(needle), "{what}: expected {needle:?} in:\n{}", text(o));
}

fn openssl(args: &[&str], cwd: &Path) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("openssl");
    ok(&o, &format!("openssl {args:?}"));
}

/// Makes `name.pem` (private, in the given form) and `name.pub.pem` on `curve`.
fn keypair(dir: &Path, name: &str, curve: &str, form: &str) {
    let pem = format!("{name}.pem");
    match form {
        "pkcs8" => openssl(
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                &format!("ec_paramgen_curve:{curve}"),
                "-out",
                &pem,
            ],
            dir,
        ),
        "sec1" => openssl(&["ecparam", "-name", curve, "-genkey", "-out", &pem], dir),
        "encrypted" => {
            openssl(
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    &format!("ec_paramgen_curve:{curve}"),
                    "-out",
                    "plain.tmp",
                ],
                dir,
            );
            openssl(
                &[
                    "pkcs8",
                    "-topk8",
                    "-v2",
                    "aes-256-cbc",
                    "-in",
                    "plain.tmp",
                    "-out",
                    &pem,
                    "-passout",
                    "pass:s3cret",
                ],
                dir,
            );
            std::fs::remove_file(dir.join("plain.tmp")).unwrap();
        }
        _ => unreachable!(),
    }
    let passin = if form == "encrypted" {
        vec!["-passin", "pass:s3cret"]
    } else {
        vec![]
    };
    let mut args = vec!["pkey", "-in", pem.as_str(), "-pubout", "-out"];
    let pubf = format!("{name}.pub.pem");
    args.push(&pubf);
    args.extend(passin);
    openssl(&args, dir);
}

/// A nested model directory with a git folder (ignored by default) and a large-ish weights file.
fn model(root: &Path) {
    std::fs::create_dir_all(root.join("1/nested/deeper")).unwrap();
    std::fs::create_dir_all(root.join(".git")).unwrap();
    std::fs::write(
        root.join("config.pbtxt"),
        "name: \"m\"\nplatform: \"onnxruntime_onnx\"\n",
    )
    .unwrap();
    let weights: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
        .collect();
    std::fs::write(root.join("1/model.onnx"), weights).unwrap();
    std::fs::write(root.join("1/nested/deeper/tokenizer.json"), "{}").unwrap();
    std::fs::write(root.join("1/nested/empty"), b"").unwrap();
    // Names whose byte order and path-component order differ ("a.b" < "a/…" bytewise, not by component).
    std::fs::write(root.join("1/nested.txt"), "x").unwrap();
    std::fs::write(root.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
}

#[test]
fn our_signatures_verify_with_model_signing_on_every_curve_and_key_form() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    model(&p.join("m"));
    for (curve, form) in [
        ("P-256", "pkcs8"),
        ("P-384", "sec1"),
        ("P-521", "pkcs8"),
        ("P-256", "encrypted"),
        ("P-521", "sec1"),
    ] {
        let name = format!("{curve}-{form}");
        keypair(p, &name, curve, form);
        let sig = format!("{name}.sig");
        let key = format!("{name}.pem");
        let mut args = vec!["sign", "m", "--private-key", key.as_str(), "--signature", sig.as_str()];
        if form == "encrypted" {
            fails(&mkimage(&args, p), "sign without password", "password");
            args.extend(["--password", "wrong"]);
            fails(&mkimage(&args, p), "sign with a wrong password", "wrong password");
            args.truncate(args.len() - 2);
            args.extend(["--password", "s3cret"]);
        }
        ok(&mkimage(&args, p), &format!("cinfer-mkimage sign ({name})"));
        let pubk = format!("{name}.pub.pem");
        let o = reference(&["verify", "key", "m", "--signature", &sig, "--public_key", &pubk], p);
        ok(&o, &format!("model_signing verify key of our {name} signature"));
        assert!(text(&o).contains("Verification succeeded"), "{}", text(&o));
        // And our own verifier agrees.
        ok(
            &mkimage(
                &["verify-signature", "m", "--signature", &sig, "--public-key", &pubk],
                p,
            ),
            "verify-signature of our own signature",
        );
    }
    // A signature does not verify with another key (both verifiers).
    let o = reference(
        &[
            "verify",
            "key",
            "m",
            "--signature",
            "P-256-pkcs8.sig",
            "--public_key",
            "P-521-pkcs8.pub.pem",
        ],
        p,
    );
    assert!(!o.status.success(), "{}", text(&o));
    fails(
        &mkimage(
            &[
                "verify-signature",
                "m",
                "--signature",
                "P-256-pkcs8.sig",
                "--public-key",
                "P-256-encrypted.pub.pem",
            ],
            p,
        ),
        "verify-signature with another key",
        "key mismatch",
    );
}

#[test]
fn model_signing_signatures_verify_with_ours() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    model(&p.join("m"));
    // Not "encrypted": model_signing 1.1.1's `--password` passes a str where `cryptography` wants bytes and fails
    // ("Cannot convert <class 'str'> instance to a buffer"); the key's storage form does not change the signature.
    for (curve, form) in [("P-256", "pkcs8"), ("P-384", "pkcs8"), ("P-521", "sec1")] {
        let name = format!("{curve}-{form}");
        keypair(p, &name, curve, form);
        let sig = format!("{name}.sig");
        let key = format!("{name}.pem");
        let mut args = vec![
            "sign",
            "key",
            "m",
            "--private_key",
            key.as_str(),
            "--signature",
            sig.as_str(),
        ];
        if form == "encrypted" {
            args.extend(["--password", "s3cret"]);
        }
        ok(&reference(&args, p), &format!("model_signing sign key ({name})"));
        let pubk = format!("{name}.pub.pem");
        let o = mkimage(
            &["verify-signature", "m", "--signature", &sig, "--public-key", &pubk],
            p,
        );
        ok(
            &o,
            &format!("cinfer-mkimage verify-signature of model_signing's {name} signature"),
        );
        // The reference records the git defaults as ignored: reported, not refused.
        assert!(text(&o).contains("signer-declared ignore paths"), "{}", text(&o));
        assert!(text(&o).contains(".git"), "{}", text(&o));
    }
}

/// Modified, added and removed files fail with both verifiers, for both signers' signatures.
#[test]
fn tampered_models_fail_both_verifiers() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    keypair(p, "k", "P-256", "pkcs8");
    type Tamper = fn(&Path);
    let tampers: [(&str, Tamper, &str); 4] = [
        (
            "modified",
            |m| std::fs::write(m.join("1/nested/deeper/tokenizer.json"), "{ }").unwrap(),
            "1/nested/deeper/tokenizer.json",
        ),
        (
            "added",
            |m| std::fs::write(m.join("1/extra.bin"), "x").unwrap(),
            "1/extra.bin",
        ),
        (
            "removed",
            |m| std::fs::remove_file(m.join("config.pbtxt")).unwrap(),
            "config.pbtxt",
        ),
        (
            "emptied",
            |m| std::fs::write(m.join("1/model.onnx"), b"").unwrap(),
            "1/model.onnx",
        ),
    ];
    for (what, tamper, file) in tampers {
        let m = p.join(format!("m-{what}"));
        model(&m);
        let mname = m.file_name().unwrap().to_str().unwrap().to_owned();
        ok(
            &mkimage(
                &["sign", &mname, "--private-key", "k.pem", "--signature", "ours.sig"],
                p,
            ),
            "sign",
        );
        ok(
            &reference(
                &[
                    "sign",
                    "key",
                    &mname,
                    "--private_key",
                    "k.pem",
                    "--signature",
                    "theirs.sig",
                ],
                p,
            ),
            "model_signing sign key",
        );
        tamper(&m);
        for sig in ["ours.sig", "theirs.sig"] {
            let o = reference(
                &["verify", "key", &mname, "--signature", sig, "--public_key", "k.pub.pem"],
                p,
            );
            assert!(
                !o.status.success(),
                "model_signing accepted a {what} file ({sig}):\n{}",
                text(&o)
            );
            assert!(text(&o).contains("Verification failed"), "{}", text(&o));
            let o = mkimage(
                &[
                    "verify-signature",
                    &mname,
                    "--signature",
                    sig,
                    "--public-key",
                    "k.pub.pem",
                ],
                p,
            );
            fails(&o, &format!("verify-signature of a {what} file ({sig})"), file);
        }
    }
}

#[test]
fn single_file_models_interoperate_both_ways() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    keypair(p, "k", "P-384", "pkcs8");
    std::fs::write(p.join("model.onnx"), vec![7u8; 200_000]).unwrap();
    ok(
        &mkimage(
            &[
                "sign",
                "model.onnx",
                "--private-key",
                "k.pem",
                "--signature",
                "ours.sig",
            ],
            p,
        ),
        "sign one file",
    );
    ok(
        &reference(
            &[
                "sign",
                "key",
                "model.onnx",
                "--private_key",
                "k.pem",
                "--signature",
                "theirs.sig",
            ],
            p,
        ),
        "model_signing sign one file",
    );
    for sig in ["ours.sig", "theirs.sig"] {
        ok(
            &reference(
                &[
                    "verify",
                    "key",
                    "model.onnx",
                    "--signature",
                    sig,
                    "--public_key",
                    "k.pub.pem",
                ],
                p,
            ),
            &format!("model_signing verify one file ({sig})"),
        );
        ok(
            &mkimage(
                &[
                    "verify-signature",
                    "model.onnx",
                    "--signature",
                    sig,
                    "--public-key",
                    "k.pub.pem",
                ],
                p,
            ),
            &format!("verify-signature one file ({sig})"),
        );
    }
    // The reference's single-file resource name is ".": ours emits the same.
    let bundle: serde_json::Value = serde_json::from_slice(&std::fs::read(p.join("ours.sig")).unwrap()).unwrap();
    let payload = bundle["dsseEnvelope"]["payload"].as_str().unwrap();
    let statement = base64_decode(payload);
    let st: serde_json::Value = serde_json::from_slice(&statement).unwrap();
    assert_eq!(st["predicate"]["resources"][0]["name"], ".");
    assert_eq!(st["subject"][0]["name"], "model.onnx");

    std::fs::write(p.join("model.onnx"), vec![8u8; 200_000]).unwrap();
    for sig in ["ours.sig", "theirs.sig"] {
        let o = reference(
            &[
                "verify",
                "key",
                "model.onnx",
                "--signature",
                sig,
                "--public_key",
                "k.pub.pem",
            ],
            p,
        );
        assert!(!o.status.success(), "{}", text(&o));
        fails(
            &mkimage(
                &[
                    "verify-signature",
                    "model.onnx",
                    "--signature",
                    sig,
                    "--public-key",
                    "k.pub.pem",
                ],
                p,
            ),
            "verify-signature of a changed single file",
            "content differs",
        );
    }
}

#[test]
fn ignore_paths_are_recorded_reported_and_refused_unless_allowed() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    keypair(p, "k", "P-256", "pkcs8");
    model(&p.join("m"));
    std::fs::create_dir_all(p.join("m/scratch")).unwrap();
    std::fs::write(p.join("m/scratch/notes.txt"), "unsigned").unwrap();
    // The reference resolves --ignore-paths against the working directory.
    ok(
        &reference(
            &[
                "sign",
                "key",
                "m",
                "--private_key",
                "k.pem",
                "--signature",
                "theirs.sig",
                "--ignore-paths",
                "m/scratch",
            ],
            p,
        ),
        "model_signing sign with an ignore path",
    );
    ok(
        &mkimage(
            &[
                "sign",
                "m",
                "--private-key",
                "k.pem",
                "--signature",
                "ours.sig",
                "--ignore-paths",
                "m/scratch",
            ],
            p,
        ),
        "sign with an ignore path",
    );
    // Files in the ignored path change: the reference still accepts (it honours the signer's ignores) ...
    std::fs::write(p.join("m/scratch/notes.txt"), "changed").unwrap();
    std::fs::write(p.join("m/scratch/new.txt"), "added").unwrap();
    for sig in ["ours.sig", "theirs.sig"] {
        ok(
            &reference(
                &["verify", "key", "m", "--signature", sig, "--public_key", "k.pub.pem"],
                p,
            ),
            &format!("model_signing verify with signer ignores ({sig})"),
        );
        // ... ours refuses the non-default ignore unless allowed, and names it.
        let o = mkimage(
            &["verify-signature", "m", "--signature", sig, "--public-key", "k.pub.pem"],
            p,
        );
        fails(&o, "verify-signature with a signer ignore path", "scratch");
        assert!(text(&o).contains("--allow-signer-ignores"), "{}", text(&o));
        let o = mkimage(
            &[
                "verify-signature",
                "m",
                "--signature",
                sig,
                "--public-key",
                "k.pub.pem",
                "--allow-signer-ignores",
            ],
            p,
        );
        ok(&o, "verify-signature --allow-signer-ignores");
        assert!(
            text(&o).contains("scratch"),
            "ignore paths must be reported:\n{}",
            text(&o)
        );
    }
    // A signature written inside the model is left out of the manifest and recorded as ignored, as the
    // reference does.
    ok(
        &mkimage(
            &["sign", "m", "--private-key", "k.pem", "--signature", "m/model.sig"],
            p,
        ),
        "sign into the model",
    );
    ok(
        &reference(
            &[
                "verify",
                "key",
                "m",
                "--signature",
                "m/model.sig",
                "--public_key",
                "k.pub.pem",
            ],
            p,
        ),
        "model_signing verify with the signature inside the model",
    );
}

#[test]
fn build_sign_key_signs_in_one_pass_and_model_signing_accepts_it() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    keypair(p, "k", "P-256", "encrypted");
    std::fs::create_dir_all(p.join("m/1/sub")).unwrap();
    std::fs::write(p.join("m/config.pbtxt"), "name: \"m\"\n").unwrap();
    std::fs::write(p.join("m/1/model.onnx"), vec![3u8; 300_000]).unwrap();
    std::fs::write(p.join("m/1/sub/vocab.txt"), "a\nb\n").unwrap();
    let o = mkimage(
        &[
            "build",
            "m",
            "-o",
            "m.img",
            "--key-file",
            "m.key",
            "--sign-key",
            "k.pem",
            "--password",
            "s3cret",
            "--signature",
            "build.sig",
        ],
        p,
    );
    ok(&o, "build --sign-key");
    assert!(text(&o).contains("signed"), "{}", text(&o));
    ok(
        &reference(
            &[
                "verify",
                "key",
                "m",
                "--signature",
                "build.sig",
                "--public_key",
                "k.pub.pem",
            ],
            p,
        ),
        "model_signing verify of the build signature",
    );
    // The image embeds exactly these bytes (index extension 1): the encrypted index is not readable here, but
    // verify still opens every chunk of an image with the extension.
    ok(
        &mkimage(&["verify", "m.img", "--key-file", "m.key"], p),
        "verify of a signed image",
    );
    // The image's embedded signature checks offline, and only with the signer's key.
    let o = mkimage(
        &[
            "verify-signature",
            "m.img",
            "--key-file",
            "m.key",
            "--public-key",
            "k.pub.pem",
        ],
        p,
    );
    ok(&o, "verify-signature of a signed image");
    keypair(p, "other", "P-256", "pkcs8");
    let o = mkimage(
        &[
            "verify-signature",
            "m.img",
            "--key-file",
            "m.key",
            "--public-key",
            "other.pub.pem",
        ],
        p,
    );
    fails(
        &o,
        "verify-signature of a signed image with another key",
        "key mismatch",
    );
    ok(
        &mkimage(&["build", "m", "-o", "unsigned.img", "--key-file", "m.key"], p),
        "unsigned build",
    );
    let o = mkimage(
        &[
            "verify-signature",
            "unsigned.img",
            "--key-file",
            "m.key",
            "--public-key",
            "k.pub.pem",
        ],
        p,
    );
    fails(
        &o,
        "verify-signature of an unsigned image",
        "no embedded model signature",
    );
    // A symlink needs --allow-symlinks to be signed.
    std::os::unix::fs::symlink("1/model.onnx", p.join("m/current")).unwrap();
    let o = mkimage(
        &[
            "build",
            "m",
            "-o",
            "m2.img",
            "--key-file",
            "m.key",
            "--sign-key",
            "k.pem",
            "--password",
            "s3cret",
        ],
        p,
    );
    fails(&o, "build --sign-key with a symlink", "current");
    ok(
        &mkimage(
            &[
                "build",
                "m",
                "-o",
                "m2.img",
                "--key-file",
                "m.key",
                "--sign-key",
                "k.pem",
                "--password",
                "s3cret",
                "--allow-symlinks",
                "--signature",
                "build2.sig",
            ],
            p,
        ),
        "build --sign-key --allow-symlinks",
    );
    ok(
        &reference(
            &[
                "verify",
                "key",
                "m",
                "--signature",
                "build2.sig",
                "--public_key",
                "k.pub.pem",
                "--allow_symlinks",
            ],
            p,
        ),
        "model_signing verify of a signature with a followed symlink",
    );
}

#[test]
fn seed_sha1_signatures_need_allow_sha1_and_still_detect_tampering() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    keypair(p, "k", "P-384", "pkcs8");
    std::fs::create_dir_all(p.join("m/1")).unwrap();
    std::fs::write(p.join("m/config.pbtxt"), "name: \"m\"\n").unwrap();
    std::fs::write(p.join("m/1/model.onnx"), vec![5u8; 100_000]).unwrap();
    // What the seed's sign.py does: ECDSA over SHA-1 of each model* file, into signature.bin beside it.
    openssl(
        &[
            "dgst",
            "-sha1",
            "-sign",
            "k.pem",
            "-out",
            "m/1/signature.bin",
            "m/1/model.onnx",
        ],
        p,
    );
    let o = mkimage(
        &[
            "verify-signature",
            "m",
            "--signature",
            "m/1/signature.bin",
            "--public-key",
            "k.pub.pem",
        ],
        p,
    );
    fails(&o, "seed signature without --allow-sha1", "--allow-sha1");
    let o = mkimage(
        &["verify-signature", "m", "--public-key", "k.pub.pem", "--allow-sha1"],
        p,
    );
    ok(&o, "seed signature with --allow-sha1");
    assert!(text(&o).contains("warning"), "{}", text(&o));
    assert!(
        text(&o).contains("config.pbtxt"),
        "unsigned files must be named:\n{}",
        text(&o)
    );
    std::fs::write(p.join("m/1/model.onnx"), vec![6u8; 100_000]).unwrap();
    let o = mkimage(
        &["verify-signature", "m", "--public-key", "k.pub.pem", "--allow-sha1"],
        p,
    );
    fails(&o, "tampered seed model", "model.onnx");
}

fn base64_decode(s: &str) -> Vec<u8> {
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s).unwrap()
}
