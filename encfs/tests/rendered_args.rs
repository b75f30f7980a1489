//! What `cinfer-deploy render` writes into a deployment is what the sidecar reads: the rendered `EncfsSideCarArgs`
//! of ACI and Kubernetes renders, with and without a policy, decoded from the rendered files and parsed with the
//! sidecar's own parser, carry every value the config gave.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use deploy::config::KeyDerivation;
use deploy::{Bundle, DeployConfig, SecurityPolicy, render_aci, render_k8s};
use encfs::sidecar::config::{SidecarConfig, SignerKey};
use serde_json::Value;

const ROOT: &str = "5e1f0c0d6b2a4e8f9d3c7b1a0f2e4d6c8b0a9f8e7d6c5b4a39281706f5e4d3c2";

/// The example config with every setting the sidecar takes set to a value that is not its default.
fn config() -> DeployConfig {
    let mut c = DeployConfig::example().unwrap();
    c.model.expect_root = Some(ROOT.to_owned());
    c.model.verify = Some(sidecar_args::VerifyMode::Full);
    c.model.cache_mb = Some(96);
    c.model.key_type = "RSA-HSM".to_owned();
    c.model.key_derivation = Some(KeyDerivation {
        salt: "92a631483ca875aad7e2477da755d58cac3876b77d10bcdd7b33bfa11e7d8b8e".to_owned(),
        label: "Model Encryption Key".to_owned(),
    });
    c.validate().unwrap();
    c
}

fn policy() -> SecurityPolicy {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/tests/data/uvm_security_policy.base64");
    SecurityPolicy::parse(&std::fs::read_to_string(dir).unwrap()).unwrap()
}

/// The `EncfsSideCarArgs` value of the `encfs` container in a rendered ACI template, or of the `encfs-extract`
/// init container of a Kubernetes Deployment.
fn rendered_args(bundle: &Bundle, aci: bool) -> String {
    let encfs = if aci {
        let t: Value = serde_json::from_str(bundle.file("template.json").unwrap()).unwrap();
        let containers = t["resources"][0]["properties"]["containers"]
            .as_array()
            .unwrap()
            .clone();
        let c = containers.into_iter().find(|c| c["name"] == "encfs").unwrap();
        c["properties"]["environmentVariables"].clone()
    } else {
        let d: Value = serde_norway::from_str(bundle.file("deployment.yaml").unwrap()).unwrap();
        let spec = &d["spec"]["template"]["spec"];
        let c = spec["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "encfs-extract")
            .unwrap();
        assert_eq!(c["command"][1], "extract");
        c["env"].clone()
    };
    let vars = encfs.as_array().unwrap();
    assert_eq!(vars.len(), 1, "{vars:?}");
    assert_eq!(vars[0]["name"], "EncfsSideCarArgs");
    vars[0]["value"].as_str().unwrap().to_owned()
}

#[test]
fn rendered_sidecar_args_parse_into_every_configured_value() {
    let c = config();
    let p = policy();
    for (what, bundle, aci) in [
        ("aci", render_aci(&c, None, None), true),
        ("aci -p", render_aci(&c, Some(&p), None), true),
        ("k8s", render_k8s(&c, None, None).expect("k8s render"), false),
        ("k8s -p", render_k8s(&c, Some(&p), None).expect("k8s render"), false),
    ] {
        let value = rendered_args(&bundle, aci);
        let parsed = SidecarConfig::from_env_value(&value).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(parsed.warnings.is_empty(), "{what}: {:?}", parsed.warnings);
        assert_eq!(
            parsed.identity_client_id.as_deref(),
            Some(c.identity.as_ref().unwrap().client_id.as_str()),
            "{what}"
        );
        // Kubernetes pods take their Entra ID token through Workload Identity; ACI through IMDS.
        assert_eq!(parsed.workload_identity, !aci, "{what}");
        assert_eq!(parsed.filesystems.len(), 1, "{what}");
        let fs = &parsed.filesystems[0];
        assert_eq!(fs.url, c.model.image_url, "{what}");
        assert_eq!(fs.url_private, c.model.url_private, "{what}");
        assert_eq!(fs.mount_point, PathBuf::from(&c.model.mount_point), "{what}");
        assert_eq!(fs.kid, c.model.key_id, "{what}");
        assert_eq!(fs.kty, "RSA-HSM", "{what}");
        assert_eq!(fs.authority, c.attestation.authority, "{what}");
        assert_eq!(fs.vault, c.key_vault.endpoint, "{what}");
        let kd = c.model.key_derivation.as_ref().unwrap();
        assert_eq!(
            (fs.salt.as_str(), fs.label.as_str()),
            (kd.salt.as_str(), kd.label.as_str()),
            "{what}"
        );
        assert_eq!(
            fs.expect_root.map(hex::encode).as_deref(),
            Some(ROOT),
            "{what}: the root pin"
        );
        assert_eq!(
            fs.signer_key,
            Some(SignerKey::Pem(c.model.signer_key.clone().unwrap())),
            "{what}: the signer key"
        );
        let pem = fs.signer_key.as_ref().unwrap().pem().unwrap();
        encfs::signature::VerifyingKey::from_pem(&pem).unwrap_or_else(|e| panic!("{what}: signer key: {e}"));
        assert_eq!(fs.verify, encfs::gate::VerifyMode::Full, "{what}");
        assert_eq!(fs.cache_mb, Some(96), "{what}");
        // The file written beside the deployment is the same arguments.
        let file: Value = serde_json::from_str(bundle.file("encfs-sidecar-args.json").unwrap()).unwrap();
        let env: Value = serde_json::from_str(
            &sidecar_args::EncfsSideCarArgs::from_env_value(&value)
                .unwrap()
                .to_json(),
        )
        .unwrap();
        assert_eq!(file, env, "{what}: encfs-sidecar-args.json");
    }
}

/// The pin is rendered under the name the sidecar enforces, and a render from a config without one carries none
/// (so a missing pin is visible, never a pin under a name the sidecar ignores).
#[test]
fn the_rendered_pin_is_enforced_by_name() {
    let c = config();
    let json = sidecar_args::EncfsSideCarArgs::from_env_value(&rendered_args(&render_aci(&c, None, None), true))
        .unwrap()
        .to_json();
    assert!(json.contains(&format!("\"cinfer_expect_root\":\"{ROOT}\"")), "{json}");
    let mut unpinned = c;
    unpinned.model.expect_root = None;
    let parsed = SidecarConfig::from_env_value(&rendered_args(&render_aci(&unpinned, None, None), true)).unwrap();
    assert_eq!(parsed.filesystems[0].expect_root, None);
}

/// The sidecar takes keys and tokens only over a transport it can trust: a plain `http://` authority or vault that
/// is not loopback is refused by name, unless the dangerous field says otherwise; loopback (a local service) is fine.
#[test]
fn plain_http_endpoints_must_be_loopback() {
    let c = config();
    let mut args =
        sidecar_args::EncfsSideCarArgs::from_env_value(&rendered_args(&render_aci(&c, None, None), true)).unwrap();
    let fs = &mut args.azure_filesystems[0];
    fs.key.authority.endpoint = "http://127.0.0.1:8443".into();
    fs.key.akv.endpoint = "http://[::1]:8443".into();
    SidecarConfig::from_args(args.clone()).unwrap();
    args.azure_filesystems[0].key.akv.endpoint = "http://10.1.2.3:8443".into();
    let e = SidecarConfig::from_args(args.clone()).unwrap_err().to_string();
    assert!(
        e.contains("azure_filesystems[0]") && e.contains("key.akv.endpoint: plain http:// to 10.1.2.3"),
        "{e}"
    );
    args.azure_filesystems[0].cinfer_dangerously_allow_plain_http = true;
    let parsed = SidecarConfig::from_args(args).unwrap();
    assert!(parsed.filesystems[0].allow_plain_http);
}
