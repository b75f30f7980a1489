//! Tests of the real `cinfer-mkimage` binary: build, inspect, verify, and every bad input named in the issue.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cinfer-mkimage"))
}

fn run(args: &[&str], cwd: &Path) -> Output {
    bin()
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("spawn cinfer-mkimage")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A small Triton-like model repository.
fn model_tree(root: &Path) {
    std::fs::create_dir_all(root.join("densenet/1")).unwrap();
    std::fs::write(root.join("densenet/config.pbtxt"), "name: \"densenet\"\n").unwrap();
    let model: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    std::fs::write(root.join("densenet/1/model.onnx"), model).unwrap();
    std::fs::write(root.join("densenet/empty"), b"").unwrap();
    std::fs::create_dir(root.join("densenet/emptydir")).unwrap();
    symlink("1/model.onnx", root.join("densenet/current")).unwrap();
}

/// No leftover temporary files next to the output.
fn assert_no_temp_files(dir: &Path) {
    let leftovers: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
}

#[test]
fn build_inspect_verify_round_trip() {
    let d = tempfile::tempdir().unwrap();
    model_tree(&d.path().join("src"));
    let o = run(&["build", "src", "-o", "m.img", "--key-file", "m.key"], d.path());
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let root = stdout
        .lines()
        .last()
        .unwrap()
        .strip_prefix("root: ")
        .expect("last line is root: <hex>")
        .to_owned();
    assert_eq!(root.len(), 64);
    assert_eq!(
        std::fs::metadata(d.path().join("m.key")).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::metadata(d.path().join("m.key")).unwrap().len(), 32);

    let o = run(&["inspect", "m.img"], d.path());
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains(&format!("root:       {root}")) && t.contains("chunk size: 65536"),
        "{t}"
    );
    assert!(
        !t.contains("model.onnx"),
        "names must not be visible without the key: {t}"
    );

    let o = run(&["inspect", "m.img", "--key-file", "m.key"], d.path());
    let t = text(&o);
    assert!(t.contains("/densenet/1/model.onnx") && t.contains("300000"), "{t}");
    assert!(
        t.contains("/densenet/current -> 1/model.onnx") && t.contains("/densenet/emptydir"),
        "{t}"
    );

    let o = run(&["verify", "m.img", "--key-file", "m.key"], d.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&root));
    assert_no_temp_files(d.path());
}

#[test]
fn existing_image_is_kept_without_force() {
    let d = tempfile::tempdir().unwrap();
    model_tree(&d.path().join("src"));
    std::fs::write(d.path().join("m.img"), b"precious").unwrap();
    let o = run(&["build", "src", "-o", "m.img", "--key-file", "m.key"], d.path());
    assert!(!o.status.success());
    assert!(text(&o).contains("--force"), "{}", text(&o));
    assert_eq!(std::fs::read(d.path().join("m.img")).unwrap(), b"precious");
    let o = run(
        &["build", "src", "-o", "m.img", "--key-file", "m.key", "--force"],
        d.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(std::fs::read(d.path().join("m.img")).unwrap(), b"precious");
}

#[test]
fn verify_names_the_tampered_chunk_and_file() {
    let d = tempfile::tempdir().unwrap();
    model_tree(&d.path().join("src"));
    assert!(
        run(&["build", "src", "-o", "m.img", "--key-file", "m.key"], d.path())
            .status
            .success()
    );
    let mut img = std::fs::read(d.path().join("m.img")).unwrap();
    // Files are laid out in index order: densenet/1/model.onnx is the first file; its chunk 2 starts here.
    let off = 4096 + 2 * (65536 + 16) + 100;
    img[off] ^= 0x40;
    std::fs::write(d.path().join("m.img"), &img).unwrap();
    let o = run(&["verify", "m.img", "--key-file", "m.key"], d.path());
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("chunk 2 of /densenet/1/model.onnx"), "{t}");
}

#[test]
fn wrong_key_and_bad_key_files_are_refused() {
    let d = tempfile::tempdir().unwrap();
    model_tree(&d.path().join("src"));
    assert!(
        run(&["build", "src", "-o", "m.img", "--key-file", "m.key"], d.path())
            .status
            .success()
    );
    std::fs::write(d.path().join("other.key"), [7u8; 32]).unwrap();
    let o = run(&["verify", "m.img", "--key-file", "other.key"], d.path());
    assert!(!o.status.success() && text(&o).contains("wrong key"), "{}", text(&o));
    std::fs::write(d.path().join("short.key"), [7u8; 16]).unwrap();
    let o = run(&["build", "src", "-o", "n.img", "--key-file", "short.key"], d.path());
    assert!(!o.status.success());
    assert!(text(&o).contains("short.key has 16 bytes"), "{}", text(&o));
    assert!(!d.path().join("n.img").exists());
}

#[test]
fn special_files_are_refused_by_path_and_nothing_is_left() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    model_tree(&src);
    let sock = std::os::unix::net::UnixListener::bind(src.join("densenet/control.sock")).unwrap();
    let o = run(&["build", "src", "-o", "m.img", "--key-file", "m.key"], d.path());
    assert!(!o.status.success());
    assert!(text(&o).contains("control.sock is a socket"), "{}", text(&o));
    assert!(!d.path().join("m.img").exists());
    assert_no_temp_files(d.path());
    drop(sock);
    std::fs::remove_file(src.join("densenet/control.sock")).unwrap();

    let fifo = src.join("pipe");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let o = run(&["build", "src", "-o", "m.img", "--key-file", "m.key"], d.path());
    assert!(
        !o.status.success() && text(&o).contains("pipe is a FIFO"),
        "{}",
        text(&o)
    );
}

#[test]
fn symlinks_out_of_the_tree_are_refused() {
    for (target, name) in [
        ("/etc/passwd", "abs"),
        ("../../outside", "up"),
        ("x/../../..", "sneaky"),
    ] {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        model_tree(&src);
        symlink(target, src.join("densenet").join(name)).unwrap();
        let o = run(&["build", "src", "-o", "m.img", "--key-file", "m.key"], d.path());
        assert!(!o.status.success(), "{target} accepted");
        assert!(text(&o).contains("points outside the model directory"), "{}", text(&o));
        assert!(!d.path().join("m.img").exists());
    }
    // A chain through another link that escapes for real is refused too.
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    model_tree(&src);
    symlink("..", src.join("densenet/parent")).unwrap();
    symlink("parent/..", src.join("densenet/escape")).unwrap();
    let o = run(&["build", "src", "-o", "m.img", "--key-file", "m.key"], d.path());
    assert!(text(&o).contains("escape -> parent/.. points outside"), "{}", text(&o));
}

#[test]
fn chunk_size_choices_and_deep_odd_trees_verify() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    model_tree(&src);
    let mut deep = src.clone();
    for i in 0..120 {
        deep.push(format!("d{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("leaf"), b"bottom").unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9 \xff name");
    std::fs::write(src.join(odd), b"latin-1 name").unwrap();
    for cs in ["4096", "1M"] {
        let o = run(
            &[
                "build",
                "src",
                "-o",
                "m.img",
                "--key-file",
                "m.key",
                "--chunk-size",
                cs,
                "--force",
            ],
            d.path(),
        );
        assert!(o.status.success(), "{}", text(&o));
        let o = run(&["verify", "m.img", "--key-file", "m.key"], d.path());
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = run(
        &[
            "build",
            "src",
            "-o",
            "x.img",
            "--key-file",
            "m.key",
            "--chunk-size",
            "5000",
        ],
        d.path(),
    );
    assert!(
        !o.status.success() && text(&o).contains("chunk size 5000"),
        "{}",
        text(&o)
    );
}

#[test]
fn no_space_left_is_reported_and_cleaned_up() {
    // A 1 MiB tmpfs cannot hold a 3 MiB image. Needs root (CI runs as root).
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("big"), vec![1u8; 3 << 20]).unwrap();
    let small = d.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs needs root");
    let o = run(&["build", "src", "-o", "small/m.img", "--key-file", "m.key"], d.path());
    let leftover: Vec<_> = std::fs::read_dir(&small).unwrap().collect();
    let _ = Command::new("umount").arg(&small).status();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("No space left on device") && text(&o).contains("small/"),
        "{}",
        text(&o)
    );
    assert!(leftover.is_empty(), "left in the full filesystem: {leftover:?}");
}

/// Issue 17, item 7: an output that is the key file is refused (it used to create the key, then overwrite it with
/// the image, `--force` or not), and key files that are not regular files are refused without reading them.
#[test]
fn an_output_that_is_the_key_file_is_refused_and_the_key_survives() {
    let d = tempfile::tempdir().unwrap();
    model_tree(&d.path().join("src"));
    for args in [
        &["build", "src", "-o", "k.key", "--key-file", "k.key", "--force"][..],
        &["build", "src", "-o", "./sub/../k.key", "--key-file", "k.key", "--force"][..],
    ] {
        std::fs::create_dir_all(d.path().join("sub")).unwrap();
        let o = run(args, d.path());
        assert!(!o.status.success(), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("is the key file"), "{}", text(&o));
    }
    // A fresh key was never written over: no key file was created, or the one there is still 32 bytes.
    assert!(std::fs::metadata(d.path().join("k.key")).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound));
    let o = run(&["build", "src", "-o", "m.img", "--key-file", "k.key"], d.path());
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        &["build", "src", "-o", "k.key", "--key-file", "k.key", "--force"],
        d.path(),
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::metadata(d.path().join("k.key")).unwrap().len(), 32);
    // Not a regular file: refused at once, by kind.
    let o = run(&["verify", "m.img", "--key-file", "/dev/zero"], d.path());
    assert!(!o.status.success());
    assert!(
        text(&o).contains("character device, not a regular file"),
        "{}",
        text(&o)
    );
    // A key others may read works, with a warning.
    std::fs::set_permissions(d.path().join("k.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&["verify", "m.img", "--key-file", "k.key"], d.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("mode 0644"), "{}", text(&o));
}
