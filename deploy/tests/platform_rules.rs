//! The rules of AKS confidential containers (`../shared/docs/k8s-platforms.md`, encoded in `deploy::platform`):
//! the rendered Deployment meets every one, and a render broken in any one way is refused naming that rule.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;

use deploy::{DeployConfig, SecurityPolicy, render_k8s};
use serde_json::{Value, json};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deployment() -> Value {
    let config = DeployConfig::load(&manifest_dir().join("examples/cinfer.toml")).unwrap();
    let text = std::fs::read_to_string(manifest_dir().join("tests/data/uvm_security_policy.base64")).unwrap();
    let policy = SecurityPolicy::parse(&text).unwrap();
    let bundle = render_k8s(&config, Some(&policy), None).unwrap();
    serde_norway::from_str(bundle.file("deployment.yaml").unwrap()).unwrap()
}

/// The rules broken (each once).
fn rules(d: &Value) -> Vec<&'static str> {
    let mut rules: Vec<_> = deploy::platform::check_aks(d, true).iter().map(|v| v.rule).collect();
    rules.dedup();
    rules
}

fn container<'a>(d: &'a mut Value, kind: &str, name: &str) -> &'a mut Value {
    d["spec"]["template"]["spec"][kind]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn the_rendered_pod_meets_every_rule() {
    let d = deployment();
    assert_eq!(deploy::platform::check_aks(&d, true), Vec::new());
    let spec = &d["spec"]["template"]["spec"];
    // The layout the rules leave: no FUSE sidecar; an init container extracts into a memory-backed volume.
    let names: Vec<&str> = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["model-server", "proxy"]);
    let extract = &spec["initContainers"][1];
    assert_eq!(extract["name"], "encfs-extract");
    assert_eq!(extract["command"], json!(["/usr/local/bin/cinfer-encfs", "extract"]));
    assert_eq!(
        spec["volumes"][0]["emptyDir"],
        json!({ "medium": "Memory", "sizeLimit": "1024Mi" })
    );
    assert_eq!(spec["containers"][0]["volumeMounts"][0]["readOnly"], true);
    // The model's room is in the memory limits of the extracting init container and the model server.
    assert_eq!(extract["resources"]["limits"]["memory"], "5120Mi");
    assert_eq!(spec["containers"][0]["resources"]["limits"]["memory"], "13312Mi");
}

/// Each mutation breaks one rule, and the check names exactly that rule.
#[test]
fn each_broken_rule_is_named() {
    type Mutation = fn(&mut Value);
    let cases: Vec<(&str, &str, Mutation)> = vec![
        ("no-propagation", "Bidirectional propagation", |d| {
            container(d, "initContainers", "encfs-extract")["volumeMounts"][0]["mountPropagation"] =
                "Bidirectional".into();
        }),
        ("no-propagation", "HostToContainer propagation", |d| {
            container(d, "containers", "model-server")["volumeMounts"][0]["mountPropagation"] =
                "HostToContainer".into();
        }),
        ("no-host-devices", "a privileged container", |d| {
            container(d, "containers", "model-server")["securityContext"]["privileged"] = true.into();
        }),
        ("no-host-devices", "a FUSE sidecar", |d| {
            container(d, "initContainers", "encfs-extract")["command"][1] = "sidecar".into();
        }),
        ("no-host-devices", "a host path", |d| {
            d["spec"]["template"]["spec"]["volumes"]
                .as_array_mut()
                .unwrap()
                .push(json!({ "name": "fuse", "hostPath": { "path": "/dev/fuse" } }));
        }),
        ("limits", "a missing CPU limit", |d| {
            container(d, "containers", "proxy")["resources"]["limits"]
                .as_object_mut()
                .unwrap()
                .remove("cpu");
        }),
        ("limits", "a request other than the limit", |d| {
            container(d, "initContainers", "cinfer-init")["resources"]["requests"]["memory"] = "1Mi".into();
        }),
        ("probe", "a tcpSocket probe", |d| {
            container(d, "containers", "proxy")["readinessProbe"] = json!({ "tcpSocket": { "port": 15021 } });
        }),
        ("identity", "no Workload Identity label", |d| {
            d["spec"]["template"]["metadata"]["labels"]
                .as_object_mut()
                .unwrap()
                .remove("azure.workload.identity/use");
        }),
        ("identity", "no service account", |d| {
            d["spec"]["template"]["spec"]
                .as_object_mut()
                .unwrap()
                .remove("serviceAccountName");
        }),
        ("identity", "sidecar arguments on IMDS", |d| {
            let c = container(d, "initContainers", "encfs-extract");
            let mut args =
                sidecar_args::EncfsSideCarArgs::from_env_value(c["env"][0]["value"].as_str().unwrap()).unwrap();
            args.azure_info.cinfer_workload_identity = false;
            c["env"][0]["value"] = args.to_base64().into();
        }),
        ("policy", "no policy annotation", |d| {
            d["spec"]["template"]["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("annotations");
        }),
        ("policy", "upstream CoCo's initdata", |d| {
            d["spec"]["template"]["metadata"]["annotations"]["io.katacontainers.config.hypervisor.cc_init_data"] =
                "H4sI".into();
        }),
        ("policy", "another runtime class", |d| {
            d["spec"]["template"]["spec"]["runtimeClassName"] = "kata-qemu-snp".into();
        }),
        ("attestation-inputs", "no reference info for the proxy", |d| {
            container(d, "containers", "proxy")
                .as_object_mut()
                .unwrap()
                .remove("volumeMounts");
        }),
        ("tcp-only", "a UDP port", |d| {
            container(d, "containers", "proxy")["ports"][0]["protocol"] = "UDP".into();
        }),
        ("model-volume", "a disk-backed model volume", |d| {
            d["spec"]["template"]["spec"]["volumes"][0]["emptyDir"] = json!({});
        }),
    ];
    for (rule, what, mutate) in cases {
        let mut d = deployment();
        mutate(&mut d);
        let found = rules(&d);
        assert_eq!(found, [rule], "{what}: {:?}", deploy::platform::check_aks(&d, true));
    }
}

/// `cinfer-deploy render k8s` refuses a config without what the pod needs on AKS.
#[test]
fn a_config_without_identity_or_model_size_is_refused() {
    let mut config = DeployConfig::load(&manifest_dir().join("examples/cinfer.toml")).unwrap();
    config.kubernetes.service_account = None;
    let e = render_k8s(&config, None, None).unwrap_err().to_string();
    assert!(
        e.contains("kubernetes.service_account") && e.contains("Workload Identity"),
        "{e}"
    );
    let mut config = DeployConfig::load(&manifest_dir().join("examples/cinfer.toml")).unwrap();
    config.kubernetes.model_mb = None;
    let e = render_k8s(&config, None, None).unwrap_err().to_string();
    assert!(e.contains("kubernetes.model_mb"), "{e}");
}
