//! Builds every container image with buildah (vfs storage, chroot isolation, a debootstrap minbase: no engine,
//! no registry) through `deploy/containers/build.sh`, in a storage directory of its own, and runs each image's
//! entrypoint with `--help` (plus the init image's redirect in a throwaway network namespace and the rendered
//! proxy command). Uses the workspace binaries of this build (stripped of debug info in the build context).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding this build's binaries (`target/<profile>`), found from this test's own executable.
fn bin_dir() -> PathBuf {
    let deploy = PathBuf::from(env!("CARGO_BIN_EXE_cinfer-deploy"));
    deploy.parent().unwrap().to_path_buf()
}

#[test]
fn every_image_builds_and_runs_its_help() {
    let bins = bin_dir();
    for b in ["cinfer-init", "cinfer-encfs", "cinfer-proxy", "cinfer-attest"] {
        assert!(
            bins.join(b).is_file(),
            "{b} is not built in {}: build the workspace binaries first (`cargo build --workspace --bins`)",
            bins.display()
        );
    }
    for tool in ["buildah", "debootstrap"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap()
                .status
                .success(),
            "{tool} is missing: scripts/setup.sh installs it"
        );
    }
    let storage = tempfile::Builder::new()
        .prefix("cinfer-buildah.")
        .tempdir_in("/var/tmp")
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("containers/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("CINFER_BIN_DIR", &bins)
        .env("CINFER_BUILDAH_ROOT", storage.path())
        .env("CINFER_IMAGE_TAG", "test")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!("{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    // vfs layers are plain directories, some owned by other uids: remove them with the storage root.
    let _ = Command::new("buildah")
        .args(["--storage-driver", "vfs", "--root"])
        .arg(storage.path().join("storage"))
        .arg("--runroot")
        .arg(storage.path().join("run"))
        .args(["rmi", "--all", "--force"])
        .output();
    assert!(out.status.success(), "build.sh failed:\n{report}");
    assert!(!stdout.contains("SKIP") && !stdout.contains("FAIL"), "{report}");
    for image in ["init", "encfs", "proxy", "client-proxy", "attest"] {
        assert!(
            stdout.lines().any(
                |l| l.starts_with(&format!("ok   {image}: localhost/cinfer-{image}:test")) && l.contains("--help ok")
            ),
            "no --help check for {image}:\n{report}"
        );
    }
    for backend in ["iptables", "nftables"] {
        assert!(
            stdout.contains(&format!(
                "'cinfer-init apply --backend {backend}' in the image installed the redirect"
            )),
            "{report}"
        );
    }
    assert!(stdout.contains("ok   proxy: the rendered command"), "{report}");
}
