//! Every rendered Kubernetes manifest passes `kubernetes-validate --strict` (PyPI, in the test venv) for the oldest
//! and the newest supported Kubernetes versions, with and without a policy; and the validator is shown to refuse
//! a manifest with an unknown field, so a pass means something.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use deploy::{DeployConfig, SecurityPolicy, render_k8s};

/// The oldest and newest Kubernetes versions the manifests are checked against.
const VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the validator on `files` for `version`; returns (success, output).
fn validate(version: &str, files: &[PathBuf]) -> (bool, String) {
    let python = deploy::local::env::python().unwrap();
    let out = Command::new(python)
        .args(["-m", "kubernetes_validate", "--strict", "-k", version])
        .args(files)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn rendered_manifests_pass_strict_schema_validation_for_the_supported_versions() {
    let config = DeployConfig::load(&manifest_dir().join("examples/cinfer.toml")).unwrap();
    let policy = SecurityPolicy::parse(
        &std::fs::read_to_string(manifest_dir().join("tests/data/uvm_security_policy.base64")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (what, bundle) in [
        ("without policy", render_k8s(&config, None, None).expect("k8s render")),
        (
            "with policy",
            render_k8s(&config, Some(&policy), None).expect("k8s render"),
        ),
    ] {
        let files = [
            write(dir.path(), "deployment.yaml", bundle.file("deployment.yaml").unwrap()),
            write(dir.path(), "service.yaml", bundle.file("service.yaml").unwrap()),
        ];
        for v in VERSIONS {
            let (ok, out) = validate(v, &files);
            assert!(ok, "{what}, Kubernetes {v}:\n{out}");
            assert!(out.matches("passed").count() == 2, "{what}, Kubernetes {v}:\n{out}");
        }
    }
    // The validator refuses what a strict API server would: an unknown field in the pod spec.
    let bundle = render_k8s(&config, None, None).expect("k8s render");
    let broken = bundle
        .file("deployment.yaml")
        .unwrap()
        .replace("runtimeClassName:", "runtimeClasName:");
    let file = write(dir.path(), "broken.yaml", &broken);
    let (ok, out) = validate(VERSIONS[1], &[file]);
    assert!(!ok && out.contains("runtimeClasName"), "{out}");
}
