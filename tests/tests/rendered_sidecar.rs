//! The sidecar as a rendered deployment runs it: the `encfs` container of `render aci` (example config, pinned to
//! image A's root and its signer), run by the real `cinfer-encfs sidecar` with only its addresses pointed at a
//! local `cinfer-attest serve` (the function `cinfer-deploy local` uses), and the key imported with the rendered
//! release policy. Image A mounts; image B, sealed with the same key and signed by the same signer but with
//! another root, is refused at the root pin.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use deploy::local::env::{bin, free_port};
use deploy::local::proc::{Proc, run, wait_for};
use deploy::local::rendered::{Addresses, Platform, aci_containers, localize, localize_release_policy};
use deploy::local::{Cancel, pipeline::mounts_under};
use deploy::{DeployConfig, SecurityPolicy, render_aci};

const MEASUREMENT: &str =
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

/// Builds `dir` into `out` with `key` (created by the first build) signed by `signer`; returns the root.
fn build(dir: &Path, out: &Path, key: &Path, signer: &Path) -> String {
    let o = run(
        "cinfer-mkimage build",
        Command::new(bin("cinfer-mkimage").unwrap())
            .arg("build")
            .arg(dir)
            .arg("-o")
            .arg(out)
            .arg("--key-file")
            .arg(key)
            .arg("--sign-key")
            .arg(signer),
    )
    .unwrap();
    o.lines()
        .find_map(|l| l.strip_prefix("root: "))
        .unwrap()
        .trim()
        .to_owned()
}

fn model(dir: &Path, weights: &[u8]) {
    std::fs::create_dir_all(dir.join("m/1")).unwrap();
    std::fs::write(dir.join("m/1/weights.bin"), weights).unwrap();
    std::fs::write(dir.join("m/config.pbtxt"), "name: \"m\"\n").unwrap();
}

struct Run {
    proc: Proc,
    ready: PathBuf,
}

/// Runs the rendered `encfs` container against the image at `image`, only its addresses localized.
fn run_rendered_sidecar(
    work: &Path,
    template: &serde_json::Value,
    image: &Path,
    authority: &str,
    (mock, host_data): (&Path, &str),
    tag: &str,
) -> (Run, Vec<String>) {
    let containers = aci_containers(template, "template.json").unwrap();
    let encfs = containers.iter().find(|c| c.name == "encfs").unwrap();
    let ready = work.join(format!("ready-{tag}"));
    let addresses = Addresses {
        programs: vec![("cinfer-encfs".into(), bin("cinfer-encfs").unwrap())],
        blob_url: format!("file://{}", image.display()),
        authority_url: authority.to_owned(),
        mount_point: work.join(format!("mnt-{tag}/models")),
        ..Default::default()
    };
    std::fs::create_dir_all(work.join(format!("mnt-{tag}"))).unwrap();
    let platform = Platform {
        mock_root: mock.to_path_buf(),
        host_data: host_data.to_owned(),
        measurement: MEASUREMENT.to_owned(),
        ready_dir: ready.clone(),
        ..Default::default()
    };
    let cmd = localize(encfs, &addresses, &platform).unwrap();
    let what: Vec<String> = cmd.substituted.iter().map(|s| s.what.clone()).collect();
    let proc = Proc::spawn(&format!("sidecar-{tag}"), cmd.command(), work).unwrap();
    (Run { proc, ready }, what)
}

impl Run {
    /// Waits for `ready` or `filesystem-0.failed`; returns the failure file's JSON, if any.
    fn outcome(&mut self) -> Option<serde_json::Value> {
        let failed = self.ready.join("filesystem-0.failed");
        let ready = self.ready.join("ready");
        wait_for("the sidecar", Duration::from_secs(60), &Cancel::new(), || {
            // The files first: a sidecar whose filesystem failed for good writes the failure, then exits 1.
            if ready.exists() || failed.exists() {
                return Ok(true);
            }
            self.proc.check_running()?;
            Ok(false)
        })
        .unwrap();
        failed
            .exists()
            .then(|| serde_json::from_str(&std::fs::read_to_string(&failed).unwrap()).unwrap())
    }
}

#[test]
fn rendered_sidecar_args_mount_the_pinned_image_and_refuse_another_root() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let (a_dir, b_dir) = (work.join("a"), work.join("b"));
    model(&a_dir, &[0xa5; 300_000]);
    model(&b_dir, &[0x5b; 300_000]);
    let (signer, signer_pub) = deploy::local::make_signer(work).unwrap();
    let signer_pub = std::fs::read_to_string(signer_pub).unwrap();
    let key = work.join("model.key");
    let (a_img, b_img) = (work.join("a.img"), work.join("b.img"));
    let root_a = build(&a_dir, &a_img, &key, &signer);
    let root_b = build(&b_dir, &b_img, &key, &signer);
    assert_ne!(root_a, root_b);

    // The attestation service and key broker, trusting the mock root.
    let mock = work.join("mock");
    let attest = bin("cinfer-attest").unwrap();
    run(
        "mock-init",
        Command::new(&attest).arg("mock-init").arg("--out").arg(&mock),
    )
    .unwrap();
    let token = work.join("admin.token");
    std::fs::write(&token, "rendered-sidecar-test-admin").unwrap();
    let port = free_port().unwrap();
    let authority = format!("http://127.0.0.1:{port}");
    let mut cmd = Command::new(&attest);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
        .arg(work.join("state"))
        .arg("--trust-mock-root")
        .arg(mock.join("ark.pem"))
        .arg("--admin-token-file")
        .arg(&token)
        .args(["--compliant-measurement", MEASUREMENT]);
    let mut svc = Proc::spawn("attest", cmd, work).unwrap();
    wait_for("attest serve", Duration::from_secs(30), &Cancel::new(), || {
        svc.check_running()?;
        Ok(deploy::local::http::status(port, "/certs") == Some(200))
    })
    .unwrap();

    // The deployment: the example config pinned to A and its signer, rendered with a real security policy.
    let mut config = DeployConfig::example().unwrap();
    config.model.expect_root = Some(root_a.clone());
    config.model.signer_key = Some(signer_pub.trim().to_owned());
    config.validate().unwrap();
    let policy_b64 = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tests/data/uvm_security_policy.base64"),
    )
    .unwrap();
    let policy = SecurityPolicy::parse(&policy_b64).unwrap();
    let bundle = render_aci(&config, Some(&policy), None);
    let host_data = bundle.host_data.unwrap().to_string();
    let template: serde_json::Value = serde_json::from_str(bundle.file("template.json").unwrap()).unwrap();
    let release: serde_json::Value = serde_json::from_str(bundle.file("release-policy.json").unwrap()).unwrap();
    let local = Addresses {
        authority_url: authority.clone(),
        ..Default::default()
    };
    let release_file = work.join("release-policy.json");
    std::fs::write(&release_file, localize_release_policy(&release, &local).0.to_string()).unwrap();
    run(
        "import-key",
        Command::new(&attest)
            .args([
                "import-key",
                "--vault",
                &authority,
                "--name",
                &config.model.key_id,
                "--key-file",
            ])
            .arg(&key)
            .arg("--release-policy")
            .arg(&release_file)
            .arg("--token-file")
            .arg(&token),
    )
    .unwrap();

    // Image A: released, pinned root found, signature checked, mounted with A's bytes.
    let (mut a, what) = run_rendered_sidecar(work, &template, &a_img, &authority, (&mock, &host_data), "a");
    assert_eq!(
        what,
        [
            "program",
            "EncfsSideCarArgs azure_url",
            "EncfsSideCarArgs mount_point",
            "EncfsSideCarArgs key.authority.endpoint",
            "EncfsSideCarArgs key.akv.endpoint",
            "EncfsSideCarArgs azure_url_private",
        ],
        "only addresses are substituted"
    );
    assert_eq!(a.outcome(), None, "image A was refused; log {}", a.proc.log().display());
    let ready: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.ready.join("filesystem-0.ready")).unwrap()).unwrap();
    assert_eq!(ready["root"], root_a.as_str());
    let bytes = std::fs::read(work.join("mnt-a/models/m/1/weights.bin")).unwrap();
    assert!(bytes.len() == 300_000 && bytes.iter().all(|&b| b == 0xa5));
    assert!(a.proc.stop().unwrap().success());
    assert!(mounts_under(&work.join("mnt-a")).is_empty());

    // Image B at the same place, same key and signer, another root: refused at the root pin, nothing mounted.
    let (mut b, _) = run_rendered_sidecar(work, &template, &b_img, &authority, (&mock, &host_data), "b");
    let failure = b.outcome().expect("image B was mounted under a pin for image A");
    assert_eq!(failure["step"], "root pin", "{failure}");
    let error = failure["error"].as_str().unwrap();
    assert!(
        error.contains(&root_a) && error.contains(&root_b),
        "names both roots: {error}"
    );
    assert!(mounts_under(&work.join("mnt-b")).is_empty());
    let _ = b.proc.stop();
    let _ = svc.stop();
}
