//! Golden files and structural checks for the renderers, from the example config and a real security policy.
//!
//! Regenerate the golden files with `CINFER_UPDATE_GOLDEN=1 cargo nextest run -p deploy --test render`: the tests
//! rewrite them and then fail, so a run with the variable set never passes; review the diff, run again without it.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use deploy::policy::SignerJwk;
use deploy::{Bundle, DeployConfig, SecurityPolicy, render_aci, render_k8s, validate};
use serde_json::Value;
use sha2::{Digest, Sha256};

const REAL_HOST_DATA: &str = "cadd74f71ebb8fbf9782baab649612520f3c416bc5ce9ac768808ddc8d9b031c";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn config() -> DeployConfig {
    DeployConfig::load(&manifest_dir().join("examples/cinfer.toml")).unwrap()
}

fn real_policy() -> SecurityPolicy {
    let text = std::fs::read_to_string(manifest_dir().join("tests/data/uvm_security_policy.base64")).unwrap();
    SecurityPolicy::parse(&text).unwrap()
}

fn signer() -> SignerJwk {
    SignerJwk::from_pem(&std::fs::read_to_string(manifest_dir().join("tests/data/policy-signer.pem")).unwrap()).unwrap()
}

/// Compares every file of `bundle` with `tests/golden/<name>/`. With `CINFER_UPDATE_GOLDEN` set (any value), it
/// rewrites that directory and fails: regenerating is never a passing test.
fn golden(bundle: &Bundle, name: &str) {
    let dir = manifest_dir().join("tests/golden").join(name);
    if std::env::var_os("CINFER_UPDATE_GOLDEN").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        bundle.write(&dir).unwrap();
        panic!(
            "CINFER_UPDATE_GOLDEN is set: rewrote {}; review the diff and run again without it",
            dir.display()
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    let mut rendered: Vec<String> = bundle.files.iter().map(|f| f.name.clone()).collect();
    rendered.sort();
    assert_eq!(
        rendered, on_disk,
        "file set of {name} differs (CINFER_UPDATE_GOLDEN=1 rewrites the golden files)"
    );
    for file in &bundle.files {
        let want = std::fs::read_to_string(dir.join(&file.name)).unwrap();
        assert!(
            file.contents == want,
            "{name}/{} differs from the golden file (CINFER_UPDATE_GOLDEN=1 rewrites the golden files)\n--- rendered\n{}",
            file.name,
            file.contents
        );
    }
}

fn json(bundle: &Bundle, name: &str) -> Value {
    serde_json::from_str(bundle.file(name).unwrap()).unwrap()
}

fn yaml(bundle: &Bundle, name: &str) -> Value {
    serde_norway::from_str(bundle.file(name).unwrap()).unwrap()
}

#[test]
fn real_policy_hashes_to_the_host_data_of_the_real_report() {
    // host_data at 0xC0 of the production report tests/data/snp_report.bin (tests/data/README.md).
    let policy = real_policy();
    assert_eq!(policy.host_data().to_string(), REAL_HOST_DATA);
    assert_eq!(policy.decoded.len(), 714);
    assert!(policy.decoded.starts_with(b"package policy\n"));
    // The digest is of the decoded Rego text, not of the base64 text given to ARM.
    assert_ne!(hex::encode(Sha256::digest(policy.base64.as_bytes())), REAL_HOST_DATA);
    // The second real policy of the seed's test data.
    let other = std::fs::read_to_string(manifest_dir().join("tests/data/security-policy-base64")).unwrap();
    assert_eq!(
        SecurityPolicy::parse(&other).unwrap().host_data().to_string(),
        "4f4448c67f3c8dfc8de8a5e37125d807dadcc41f06cf23f615dbd52eec777d10"
    );
    // The production report itself (tests/data/README.md): HOST_DATA is 32 bytes at 0xC0 of an SEV-SNP report
    // (AMD SEV-SNP ABI, ATTESTATION_REPORT), read here without cinfer's parser.
    let report = std::fs::read(manifest_dir().join("tests/data/snp_report.bin")).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&report)),
        "8aa044299042322a6b8027c1445cbdd691c9312db75c2da1ad7d95d328750925",
        "tests/data/snp_report.bin is not the report the README names"
    );
    assert_eq!(report.len(), 1184);
    assert_eq!(u32::from_le_bytes(report[..4].try_into().unwrap()), 2, "report version");
    assert_eq!(hex::encode(&report[0xC0..0xE0]), REAL_HOST_DATA);
}

#[test]
fn aci_bundle_matches_golden_and_policies_carry_the_hostdata() {
    let config = config();
    let policy = real_policy();
    let bundle = render_aci(&config, Some(&policy), Some(&signer()));
    golden(&bundle, "aci");

    let template = json(&bundle, "template.json");
    let parameters = json(&bundle, "parameters.json");
    assert_eq!(validate::check_arm(&template, &parameters, true), Vec::<String>::new());
    assert_eq!(parameters["parameters"]["ccePolicy"]["value"], policy.base64.as_str());
    assert_eq!(bundle.file("hostdata.txt").unwrap(), format!("{REAL_HOST_DATA}\n"));

    let release = json(&bundle, "release-policy.json");
    assert_eq!(release["version"], "1.0.0");
    assert_eq!(
        release["anyOf"][0]["authority"],
        "https://sharedeus2.eus2.attest.azure.net"
    );
    let all_of = release["anyOf"][0]["allOf"].as_array().unwrap();
    assert!(
        all_of
            .iter()
            .any(|c| c["claim"] == "x-ms-sevsnpvm-hostdata" && c["equals"] == REAL_HOST_DATA)
    );
    assert!(
        all_of
            .iter()
            .all(|c| c["equals"].is_string() || c["greaterOrEquals"].is_u64()),
        "AKV compares strings; minimums are integers: {release}"
    );
    assert!(
        all_of
            .iter()
            .any(|c| c["claim"] == "x-ms-sevsnpvm-microcode-svn" && c["greaterOrEquals"] == 219),
        "{release}"
    );

    let client = json(&bundle, "client-policy-hostdata.json");
    assert_eq!(client["x-ms-sevsnpvm-hostdata"], REAL_HOST_DATA);
    assert_eq!(client["x-ms-sevsnpvm-is-debuggable"], false);
    let signer_form = json(&bundle, "client-policy-signer.json");
    assert_eq!(signer_form["x-ms-policy-signer"]["kty"], "RSA");
    assert!(signer_form.get("x-ms-sevsnpvm-hostdata").is_none());
    assert!(bundle.file("attestation-policy.txt").unwrap().contains(REAL_HOST_DATA));

    // The containers: init first, then model server, encfs (with its arguments), proxy; only the public port.
    let group = &template["resources"][0]["properties"];
    assert_eq!(
        group["initContainers"][0]["properties"]["command"][2],
        "--proxy-port=15006"
    );
    assert_eq!(
        group["initContainers"][0]["properties"]["command"][3],
        "--exclude-port=15021"
    );
    let names: Vec<&str> = group["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["model-server", "encfs", "proxy"]);
    assert_eq!(
        group["ipAddress"]["ports"],
        serde_json::json!([{ "port": 8000, "protocol": "TCP" }])
    );
}

#[test]
fn encfs_sidecar_args_are_standard_base64_of_the_seed_schema() {
    use base64::Engine as _;
    let bundle = render_aci(&config(), Some(&real_policy()), None);
    let template = json(&bundle, "template.json");
    let env = &template["resources"][0]["properties"]["containers"][1]["properties"]["environmentVariables"][0];
    assert_eq!(env["name"], "EncfsSideCarArgs");
    let b64 = env["value"].as_str().unwrap();
    let args: Value = serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap();
    assert_eq!(args, json(&bundle, "encfs-sidecar-args.json"));
    let fs = &args["azure_filesystems"][0];
    assert_eq!(
        fs["azure_url"],
        "https://cinfermodels.blob.core.windows.net/models/resnet50.img"
    );
    assert_eq!(fs["azure_url_private"], true);
    assert_eq!(fs["mount_point"], "/mnt/remote/models");
    assert_eq!(fs["key"]["kid"], "resnet50-model-key");
    assert_eq!(fs["key"]["authority"]["endpoint"], "sharedeus2.eus2.attest.azure.net");
    assert_eq!(fs["key"]["akv"]["endpoint"], "cinfer-kv.vault.azure.net");
    assert_eq!(fs["key"]["akv"]["api_version"], "api-version=7.4");
    assert_eq!(
        args["azure_info"]["identity"]["client_id"],
        "00000000-1111-2222-3333-444444444444"
    );
    assert!(fs.get("read_write").is_none(), "omitempty, read-only");
}

#[test]
fn aci_without_policy_tells_the_user_and_leaves_only_the_policy_unfilled() {
    let bundle = render_aci(&config(), None, None);
    golden(&bundle, "aci-no-policy");
    let template = json(&bundle, "template.json");
    let parameters = json(&bundle, "parameters.json");
    assert_eq!(validate::check_arm(&template, &parameters, false), Vec::<String>::new());
    assert_eq!(
        validate::check_arm(&template, &parameters, true),
        vec!["parameter \"ccePolicy\" has neither a default nor a value".to_owned()]
    );
    assert!(
        bundle.notes[0].contains("az confcom acipolicygen"),
        "{:?}",
        bundle.notes
    );
    assert!(bundle.file("release-policy.json").is_none());
    // The template does not depend on the policy, so acipolicygen measures what is deployed.
    let with_policy = render_aci(&config(), Some(&real_policy()), None);
    assert_eq!(bundle.file("template.json"), with_policy.file("template.json"));
}

#[test]
fn k8s_bundle_matches_golden_with_replicas_runtime_class_and_policy_annotation() {
    let config = config();
    let policy = real_policy();
    let bundle = render_k8s(&config, Some(&policy), Some(&signer())).expect("k8s render");
    golden(&bundle, "k8s");
    let deployment = yaml(&bundle, "deployment.yaml");
    let service = yaml(&bundle, "service.yaml");
    assert_eq!(validate::check_k8s(&deployment, &service, true), Vec::<String>::new());
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["spec"]["runtimeClassName"], "kata-cc-isolation");
    assert_eq!(
        pod["metadata"]["annotations"]["io.katacontainers.config.agent.policy"],
        policy.base64.as_str()
    );
    assert_eq!(
        pod["spec"]["initContainers"][0]["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN", "NET_RAW"])
    );
    // The same sidecar arguments as ACI, but for the identity: Workload Identity, with its service account and
    // label (AKS confidential pods get no IMDS identity of their own).
    let aci = render_aci(&config, Some(&policy), None);
    let mut k8s_args: Value = serde_json::from_str(bundle.file("encfs-sidecar-args.json").unwrap()).unwrap();
    let aci_args: Value = serde_json::from_str(aci.file("encfs-sidecar-args.json").unwrap()).unwrap();
    assert_eq!(k8s_args["azure_info"]["cinfer_workload_identity"], true);
    assert_ne!(aci_args["azure_info"]["cinfer_workload_identity"], true);
    k8s_args["azure_info"]["cinfer_workload_identity"] = aci_args["azure_info"]["cinfer_workload_identity"].clone();
    if aci_args["azure_info"].get("cinfer_workload_identity").is_none() {
        k8s_args["azure_info"]
            .as_object_mut()
            .unwrap()
            .remove("cinfer_workload_identity");
    }
    assert_eq!(k8s_args, aci_args);
    assert_eq!(pod["spec"]["serviceAccountName"], "cinfer-resnet");
    assert_eq!(pod["metadata"]["labels"]["azure.workload.identity/use"], "true");
    assert_eq!(bundle.file("release-policy.json"), aci.file("release-policy.json"));
    assert_eq!(service["spec"]["ports"][0]["port"], 8000);
    assert_eq!(service["spec"]["type"], "LoadBalancer");

    let unannotated = render_k8s(&config, None, None).expect("k8s render");
    let deployment = yaml(&unannotated, "deployment.yaml");
    let service = yaml(&unannotated, "service.yaml");
    assert_eq!(
        validate::check_k8s(&deployment, &service, true),
        vec![
            "AKS rule policy: the pod has no io.katacontainers.config.agent.policy annotation (its SHA-256 is the \
             hostdata)"
                .to_owned()
        ]
    );
    assert_eq!(validate::check_k8s(&deployment, &service, false), Vec::<String>::new());
}

#[test]
fn validators_catch_unfilled_and_inconsistent_outputs() {
    let bundle = render_aci(&config(), Some(&real_policy()), None);
    let mut template = json(&bundle, "template.json");
    let parameters = json(&bundle, "parameters.json");
    template["resources"][0]["properties"]["containers"][0]["properties"]["image"] = "{{ .Values.image }}".into();
    template["resources"][0]["properties"]["sku"] = "Standard".into();
    template["resources"][0]["name"] = "[parameters('groupName')]".into();
    let problems = validate::check_arm(&template, &parameters, true);
    assert_eq!(problems.len(), 3, "{problems:?}");

    let k8s = render_k8s(&config(), None, None).expect("k8s render");
    let mut deployment = yaml(&k8s, "deployment.yaml");
    let mut service = yaml(&k8s, "service.yaml");
    service["spec"]["selector"]["app.kubernetes.io/name"] = "other".into();
    deployment["spec"]["template"]["spec"]["containers"][1]["command"][2] = "--listen=0.0.0.0:{port}".into();
    let problems = validate::check_k8s(&deployment, &service, false);
    assert_eq!(problems.len(), 2, "{problems:?}");
}

#[test]
fn yaml_config_equals_toml_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let path = dir.path().join("cinfer.yaml");
    std::fs::write(&path, serde_norway::to_string(&config).unwrap()).unwrap();
    assert_eq!(DeployConfig::load(&path).unwrap(), config);
}

fn load_str(name: &str, text: &str) -> Result<DeployConfig, deploy::ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    // The signer key file the example names, beside it.
    std::fs::copy(
        manifest_dir().join("examples/model-signer.pub.pem"),
        dir.path().join("model-signer.pub.pem"),
    )
    .unwrap();
    DeployConfig::load(&path)
}

#[test]
fn config_rejects_unknown_keys_wrong_version_and_bad_values() {
    let base = std::fs::read_to_string(manifest_dir().join("examples/cinfer.toml")).unwrap();
    let unknown = base.replace("[key_vault]\n", "[key_vault]\nendpont = \"typo\"\n");
    let err = format!("{:#}", anyhow::Error::from(load_str("c.toml", &unknown).unwrap_err()));
    assert!(err.contains("endpont"), "{err}");
    // The signer key is read beside the config and must be a PEM public key; it is rendered as the PEM itself.
    let not_pem = base.replace("signer_key = \"model-signer.pub.pem\"", "signer_key = \"c.toml\"");
    assert!(
        matches!(load_str("c.toml", &not_pem), Err(deploy::ConfigError::Invalid(m)) if m.contains("not a PEM public key"))
    );
    let loaded = load_str("c.toml", &base).unwrap();
    assert!(
        loaded
            .model
            .signer_key
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    // An unpinned model is refused (the sidecar would refuse it), unless explicitly allowed: then the sidecar is
    // told so on its (measured) command line.
    let unpinned = base
        .lines()
        .filter(|l| !l.starts_with("expect_root") && !l.starts_with("signer_key"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        matches!(load_str("c.toml", &unpinned), Err(deploy::ConfigError::Invalid(m)) if m.contains("allow_unpinned"))
    );
    let allowed = unpinned.replace("url_private = true", "url_private = true\nallow_unpinned = true");
    let allowed = load_str("c.toml", &allowed).unwrap();
    let template: Value =
        serde_json::from_str(render_aci(&allowed, None, None).file("template.json").unwrap()).unwrap();
    let encfs = &template["resources"][0]["properties"]["containers"][1]["properties"]["command"];
    assert_eq!(encfs.as_array().unwrap().last().unwrap(), "--allow-unpinned", "{encfs}");
    let v2 = base.replace("version = 1", "version = 2");
    assert!(matches!(load_str("c.toml", &v2), Err(deploy::ConfigError::Invalid(m)) if m.contains("version 2")));
    let url = base.replace("authority = \"sharedeus2", "authority = \"https://sharedeus2");
    assert!(matches!(load_str("c.toml", &url), Err(deploy::ConfigError::Invalid(m)) if m.contains("bare host")));
    let mount = base.replace("url_private = true", "url_private = true\nmount_point = \"/models\"");
    assert!(matches!(load_str("c.toml", &mount), Err(deploy::ConfigError::Invalid(m)) if m.contains("mount_point")));
    let ports = base.replace("health_port = 15021", "health_port = 15006");
    assert!(matches!(
        load_str("c.toml", &ports),
        Err(deploy::ConfigError::Invalid(_))
    ));
    let yaml_unknown = "version: 1\nname: x\nsurprise: true\n";
    assert!(matches!(
        load_str("c.yaml", yaml_unknown),
        Err(deploy::ConfigError::Yaml { .. })
    ));
}

#[test]
fn example_config_paths_resolve() {
    // The policy signer path in the example is relative to the config file.
    let config = config();
    let cert = manifest_dir()
        .join("examples")
        .join(config.policy_signer.unwrap().certificate);
    assert!(Path::new(&cert).exists(), "{}", cert.display());
}

#[test]
fn outbound_restriction_reaches_the_init_command_of_both_renderers() {
    let mut config = config();
    config.init.outbound_allow_uids = vec![65532, 0];
    let aci = render_aci(&config, None, None);
    let template = json(&aci, "template.json");
    let command = &template["resources"][0]["properties"]["initContainers"][0]["properties"]["command"];
    assert_eq!(command[4], "--outbound-allow-uid=65532,0");
    let k8s = render_k8s(&config, None, None).expect("k8s render");
    let deployment = yaml(&k8s, "deployment.yaml");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["initContainers"][0]["command"][4],
        "--outbound-allow-uid=65532,0"
    );
    // Off by default: the golden files have no such argument.
    assert!(
        !render_aci(&self::config(), None, None)
            .file("template.json")
            .unwrap()
            .contains("outbound")
    );
}

/// What AKS confidential containers need of a pod: limits (CPU and memory) on every container, since the utility
/// VM is sized from them; an httpGet readiness probe on the proxy's health port (a 503 after the token expired
/// must take the pod out of the Service); and the UVM size each pod gets is told.
#[test]
fn k8s_pods_carry_limits_an_http_probe_and_the_uvm_size_is_told() {
    let config = config();
    let bundle = render_k8s(&config, None, None).expect("k8s render");
    let deployment = yaml(&bundle, "deployment.yaml");
    let spec = &deployment["spec"]["template"]["spec"];
    for kind in ["initContainers", "containers"] {
        for c in spec[kind].as_array().unwrap() {
            let limits = &c["resources"]["limits"];
            assert!(
                limits["cpu"].is_string() && limits["memory"].is_string(),
                "{}: {limits}",
                c["name"]
            );
            assert_eq!(c["resources"]["requests"], *limits, "{}", c["name"]);
        }
    }
    let proxy = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "proxy")
        .unwrap();
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 15021);
    assert!(proxy["readinessProbe"]["tcpSocket"].is_null());
    // Model server 3 + proxy 0.5 CPU -> 4 vCPU (the extracting init container's 1 runs before them); 2 GiB +
    // model server 12 + the model's 1 (model_mb = 1024) + proxy 1 GiB.
    assert_eq!(deploy::k8s::uvm_size(&config), (4, 16.0));
    assert!(
        bundle
            .notes
            .iter()
            .any(|n| n.contains("utility VM of 4 vCPU and 16.00 GiB")),
        "{:?}",
        bundle.notes
    );
}

/// Upstream Confidential Containers cannot attest a render (initdata-measured policy, no /dev/sev-guest, no UVM
/// endorsement): the config is refused with the reasons, and so is any other runtime class.
#[test]
fn runtime_classes_that_cannot_attest_are_refused_with_the_reason() {
    let base = std::fs::read_to_string(manifest_dir().join("examples/cinfer.toml")).unwrap();
    let coco = base.replace(
        "runtime_class = \"kata-cc-isolation\"",
        "runtime_class = \"kata-qemu-snp\"",
    );
    match load_str("c.toml", &coco) {
        Err(deploy::ConfigError::Invalid(m)) => {
            assert!(m.contains("cc_init_data") && m.contains("azure-compliant-uvm"), "{m}")
        }
        other => panic!("kata-qemu-snp accepted: {other:?}"),
    }
    let runc = base.replace("runtime_class = \"kata-cc-isolation\"", "runtime_class = \"runc\"");
    assert!(
        matches!(load_str("c.toml", &runc), Err(deploy::ConfigError::Invalid(m)) if m.contains("not a confidential runtime"))
    );
}

/// The example config with `[attestation]` replaced by `attestation` (TOML table body).
fn with_attestation(attestation: &str) -> DeployConfig {
    let base = std::fs::read_to_string(manifest_dir().join("examples/cinfer.toml")).unwrap();
    let start = base.find("[attestation]\n").unwrap();
    let end = start + base[start..].find("\n[key_vault]").unwrap();
    let text = format!(
        "{}[attestation]\nauthority = \"sharedeus2.eus2.attest.azure.net\"\n{attestation}{}",
        &base[..start],
        &base[end..]
    );
    load_str("c.toml", &text).unwrap()
}

/// The claims a token for the real policy's group carries, on a platform with this TCB.
fn token_claims(tcb: [u8; 4], migration_allowed: bool) -> attest::token::Claims {
    let v = serde_json::json!({
        "x-ms-sevsnpvm-hostdata": REAL_HOST_DATA,
        "x-ms-compliance-status": "azure-compliant-uvm",
        "x-ms-sevsnpvm-is-debuggable": false,
        "x-ms-sevsnpvm-vmpl": 0,
        "x-ms-sevsnpvm-migration-allowed": migration_allowed,
        "x-ms-sevsnpvm-bootloader-svn": tcb[0],
        "x-ms-sevsnpvm-tee-svn": tcb[1],
        "x-ms-sevsnpvm-snpfw-svn": tcb[2],
        "x-ms-sevsnpvm-microcode-svn": tcb[3],
    });
    v.as_object().unwrap().clone()
}

#[test]
fn minimum_tcb_from_the_config_reaches_both_policies_and_attest_enforces_it() {
    let genoa = with_attestation("min_tcb = { genoa = { bootloader = 10, snp = 27, microcode = 86 } }\n");
    let bundle = render_aci(&genoa, Some(&real_policy()), None);
    let text = bundle.file("attestation-policy.txt").unwrap();
    assert!(
        text.contains("[type==\"x-ms-sevsnpvm-snpfw-svn\", value>=27]"),
        "{text}"
    );
    assert!(
        text.contains("[type==\"x-ms-sevsnpvm-migration-allowed\", value==false]"),
        "{text}"
    );
    // attest's evaluators are the oracle: MAA policy text and AKV release policy, each accepting and refusing.
    let maa = attest::policy::AttestationPolicy::parse(text).unwrap();
    let release =
        attest::policy::ReleasePolicy::from_json(bundle.file("release-policy.json").unwrap().as_bytes()).unwrap();
    let issuer = "https://sharedeus2.eus2.attest.azure.net";
    let ok = token_claims([10, 0, 27, 86], false);
    maa.evaluate(&ok).unwrap();
    release.evaluate(issuer, &ok).unwrap();
    for (claims, why) in [
        (
            token_claims([9, 0, 27, 86], false),
            "x-ms-sevsnpvm-bootloader-svn is 9 not",
        ),
        (
            token_claims([10, 0, 26, 86], false),
            "x-ms-sevsnpvm-snpfw-svn is 26 not",
        ),
        (
            token_claims([10, 0, 27, 84], false),
            "x-ms-sevsnpvm-microcode-svn is 84 not",
        ),
        (
            token_claims([10, 0, 27, 86], true),
            "x-ms-sevsnpvm-migration-allowed is true not",
        ),
    ] {
        let e = maa.evaluate(&claims).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
        let e = release.evaluate(issuer, &claims).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }

    // The example's Milan floor (AMD-SB-3019) refuses the real 2022 ACI report's TCB (3, 0, 8, 115).
    let bundle = render_aci(&config(), Some(&real_policy()), None);
    let maa = attest::policy::AttestationPolicy::parse(bundle.file("attestation-policy.txt").unwrap()).unwrap();
    let release =
        attest::policy::ReleasePolicy::from_json(bundle.file("release-policy.json").unwrap().as_bytes()).unwrap();
    let old = token_claims([3, 0, 8, 115], false);
    assert!(maa.evaluate(&old).is_err() && release.evaluate(issuer, &old).is_err());
    let now = token_claims([4, 0, 22, 219], false);
    maa.evaluate(&now).unwrap();
    release.evaluate(issuer, &now).unwrap();

    // allow_migration_agent drops the condition; an empty min_tcb is refused.
    let allow = with_attestation("allow_migration_agent = true\n");
    let bundle = render_aci(&allow, Some(&real_policy()), None);
    let maa = attest::policy::AttestationPolicy::parse(bundle.file("attestation-policy.txt").unwrap()).unwrap();
    maa.evaluate(&token_claims([4, 0, 22, 219], true)).unwrap();
    let base = std::fs::read_to_string(manifest_dir().join("examples/cinfer.toml")).unwrap();
    let empty = base.replace("min_tcb = { milan = { snp = 22, microcode = 219 } }", "min_tcb = {}");
    let e = format!("{:#}", anyhow::Error::from(load_str("c.toml", &empty).unwrap_err()));
    assert!(e.contains("attestation.min_tcb must list at least one product"), "{e}");
    let typo = base.replace("min_tcb = { milan = {", "min_tcb = { rome = {");
    assert!(load_str("c.toml", &typo).is_err());
}

#[test]
fn default_floors_are_cinfer_attest_serves() {
    use attest::report::Generation;
    use deploy::config::Product;
    let serve = attest::appraisal::MinimumTcb::amd_default();
    for (product, generation) in [(Product::Milan, Generation::Milan), (Product::Genoa, Generation::Genoa)] {
        let m = serve.for_generation(generation);
        assert_eq!(
            product.default_floor(),
            [m.bootloader, m.tee, m.snp, m.microcode],
            "{}",
            product.name()
        );
    }
}

/// `[gpu]` renders the composite-evidence conditions into the release policy (every clause) and both client
/// policies; an authority that issues no GPU claims (MAA) is refused, as is a version that does not parse.
#[test]
fn gpu_requirements_reach_the_release_and_client_policies() {
    let mut config = config();
    config.attestation.authority = "attest.cinfer.example".into();
    let gpu: attest::gpu::requirement::GpuRequirement =
        toml::from_str("min_count = 2\nmin_driver = \"550.90.07\"").unwrap();
    config.gpu = Some(gpu);
    config.validate().unwrap();
    let bundle = render_aci(&config, Some(&real_policy()), Some(&signer()));
    let release = json(&bundle, "release-policy.json");
    let clauses = release["anyOf"].as_array().unwrap();
    assert!(!clauses.is_empty());
    for clause in clauses {
        let all_of = clause["allOf"].as_array().unwrap();
        let find = |claim: &str| all_of.iter().find(|c| c["claim"] == claim).cloned();
        assert_eq!(find("x-cinfer-gpu-count").unwrap()["greaterOrEquals"], 2, "{clause}");
        assert_eq!(find("x-cinfer-gpu-cc-mode").unwrap()["equals"], "on", "{clause}");
        assert_eq!(find("x-cinfer-gpu-devtools").unwrap()["equals"], "false", "{clause}");
        assert_eq!(
            find("x-cinfer-gpu-measurements-matched").unwrap()["equals"],
            "true",
            "{clause}"
        );
        assert_eq!(
            find("x-cinfer-gpu-driver-min").unwrap()["greaterOrEquals"],
            550_090_007,
            "{clause}"
        );
        // The SEV-SNP pins stay.
        assert!(find("x-ms-sevsnpvm-hostdata").is_some(), "{clause}");
    }
    for file in ["client-policy-hostdata.json", "client-policy-signer.json"] {
        let client = json(&bundle, file);
        assert_eq!(
            client["x-cinfer-gpu-count"],
            serde_json::json!({"greaterOrEquals": 2}),
            "{file}"
        );
        assert_eq!(
            client["x-cinfer-gpu-cc-mode"],
            serde_json::json!({"equals": "on"}),
            "{file}"
        );
    }
    // Without [gpu], nothing of it (the golden files hold that exactly).
    assert!(
        !render_aci(&self::config(), Some(&real_policy()), None)
            .file("release-policy.json")
            .unwrap()
            .contains("x-cinfer-gpu")
    );

    let mut maa = config.clone();
    maa.attestation.authority = "sharedeus2.eus2.attest.azure.net".into();
    let e = maa.validate().unwrap_err().to_string();
    assert!(
        e.contains("Microsoft Azure Attestation") && e.contains("no GPU claims"),
        "{e}"
    );
    let mut bad = config;
    bad.gpu.as_mut().unwrap().min_driver = Some("five".into());
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("five"), "{e}");
}
