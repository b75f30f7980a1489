//! Kubernetes manifests for confidential pods (AKS confidential containers, `kata-cc-isolation`; upstream
//! Confidential Containers is refused by config validation, see [`crate::config::DeployConfig::validate`]).
//!
//! Each replica is its own pod, and each confidential pod is its own SNP-protected utility VM: it gets its
//! own report, its encfs sidecar attests and releases the model key on its own, and its proxy attests its own
//! TLS key. All replicas run the same policy, so they share one hostdata, and one release policy and one
//! client policy cover any number of them. The Service balances TCP connections (layer 4); attested TLS is
//! terminated inside the pod, so a client always verifies the replica that serves it.

use serde_json::{Value, json};

use crate::aci::{VOLUME, init_command, volume_path};
use crate::config::{DeployConfig, Resource};
use crate::policy::SecurityPolicy;
use crate::sidecar::{args_for, encfs_extract_command};

/// The pod annotation that carries the Kata agent policy (its SHA-256 is the hostdata).
pub const POLICY_ANNOTATION: &str = "io.katacontainers.config.agent.policy";

/// The pod label that makes AKS's Workload Identity webhook project the federated token into the pod.
pub const WORKLOAD_IDENTITY_LABEL: &str = "azure.workload.identity/use";

/// The node file with the utility VM's reference info (its endorsement), mounted at the same path.
pub const REFERENCE_INFO_PATH: &str = "/opt/confidential-containers/share/kata-containers/reference-info-base64";

/// The volume carrying [`REFERENCE_INFO_PATH`].
pub const REFERENCE_INFO_VOLUME: &str = "uvm-reference-info";

fn labels(config: &DeployConfig) -> Value {
    json!({ "app.kubernetes.io/name": config.name, "app.kubernetes.io/part-of": "cinfer" })
}

/// Requests and limits, equal: kata-cc sizes the pod's utility VM from the limits (requests are not honoured, and
/// without a CPU limit all containers share one vCPU).
fn resources(r: &Resource) -> Value {
    let memory = format!("{}Mi", (r.memory_gb * 1024.0).round() as u64);
    let cpu = format!("{}m", (r.cpu * 1000.0).round() as u64);
    json!({ "requests": { "cpu": cpu, "memory": memory }, "limits": { "cpu": cpu, "memory": memory } })
}

/// The model volume's memory (GiB) from `kubernetes.model_mb` (0 when unset: rendering refuses that).
fn model_gib(config: &DeployConfig) -> f64 {
    config.kubernetes.model_mb.unwrap_or(0) as f64 / 1024.0
}

/// `r` with `extra_gib` more memory.
fn plus(r: &Resource, extra_gib: f64) -> Resource {
    Resource {
        cpu: r.cpu,
        memory_gb: r.memory_gb + extra_gib,
    }
}

/// The utility VM one pod gets on AKS confidential containers: vCPUs = the sum of the containers' CPU limits
/// (rounded up; init containers run before the others, so the largest of them counts against the rest), memory =
/// 2 GiB + the sum of the memory limits. The model's plaintext (`kubernetes.model_mb`) is in the limits of the
/// extracting init container and of the model server. Returns (vCPUs, GiB).
pub fn uvm_size(config: &DeployConfig) -> (u32, f64) {
    let r = &config.resources;
    let model = model_gib(config);
    let main = [plus(&r.model_server, model), r.proxy];
    let init = [r.init, plus(&r.encfs, model)];
    let sum = |v: &[Resource], f: fn(&Resource) -> f64| v.iter().map(f).sum::<f64>();
    let max = |v: &[Resource], f: fn(&Resource) -> f64| v.iter().map(f).fold(0.0, f64::max);
    let cpu = sum(&main, |c| c.cpu).max(max(&init, |c| c.cpu));
    let memory = sum(&main, |c| c.memory_gb).max(max(&init, |c| c.memory_gb));
    (cpu.ceil() as u32, 2.0 + memory)
}

/// Why a config cannot be rendered for Kubernetes.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct K8sConfigError(pub String);

/// Checks what only Kubernetes needs: the Workload Identity service account and the model volume's size.
pub fn check_config(config: &DeployConfig) -> Result<(), K8sConfigError> {
    if config.kubernetes.service_account.is_none() {
        return Err(K8sConfigError(
            "kubernetes.service_account is not set: confidential pods on AKS get their Entra ID token through \
             Workload Identity (the node's IMDS serves node-pool identities only), so the key could not be released; \
             name the service account federated with the identity the release policy's vault trusts"
                .to_owned(),
        ));
    }
    if config.kubernetes.model_mb.is_none() {
        return Err(K8sConfigError(
            "kubernetes.model_mb is not set: the pod extracts the verified model into a memory-backed volume (AKS \
             confidential containers have no FUSE), whose size limit and memory this sets; give at least the \
             image's total file size in MiB (`cinfer-mkimage inspect`)"
                .to_owned(),
        ));
    }
    Ok(())
}

/// The pod's volume mount of the node's UVM reference info (the attester's endorsement input on AKS).
fn reference_info_mount() -> Value {
    json!({ "name": REFERENCE_INFO_VOLUME, "mountPath": REFERENCE_INFO_PATH, "readOnly": true })
}

/// The init container that releases the key, verifies the image and extracts it into the model volume.
fn extract_container(config: &DeployConfig, volume: &str) -> Value {
    json!({
        "name": "encfs-extract",
        "image": config.images.encfs,
        "command": encfs_extract_command(config),
        "env": [{ "name": sidecar_args::ENV_VAR, "value": k8s_args_for(config).to_base64() }],
        "volumeMounts": [{ "name": VOLUME, "mountPath": volume }, reference_info_mount()],
        "resources": resources(&plus(&config.resources.encfs, model_gib(config))),
        // No FUSE, no device, no capability: it reads /dev/sev-guest (which kata-cc gives every container) and
        // writes files into the volume.
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "capabilities": { "drop": ["ALL"] },
        },
    })
}

/// The Deployment. With a policy (from `az confcom katapolicygen`), it goes into the pod annotation.
///
/// The pod layout AKS confidential containers allow (`../docs/DEPLOY.md`, "Kubernetes"): no FUSE and no mount
/// propagation. The init container `encfs-extract` attests, releases the key, verifies the image and writes its
/// files into a memory-backed `emptyDir` (the utility VM's encrypted memory); the model server reads them
/// read-only. Call [`check_config`] first.
pub fn deployment(config: &DeployConfig, policy: Option<&SecurityPolicy>) -> Value {
    let p = &config.proxy;
    let volume = volume_path(config);
    let mut pod_labels = labels(config);
    pod_labels[WORKLOAD_IDENTITY_LABEL] = json!("true");
    let mut pod_meta = json!({ "labels": pod_labels });
    if let Some(policy) = policy {
        pod_meta["annotations"] = json!({ POLICY_ANNOTATION: policy.base64 });
    }
    let model_mb = config.kubernetes.model_mb.unwrap_or(0);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": config.name, "namespace": config.kubernetes.namespace, "labels": labels(config) },
        "spec": {
            "replicas": config.replicas,
            "selector": { "matchLabels": { "app.kubernetes.io/name": config.name } },
            "template": {
                "metadata": pod_meta,
                "spec": {
                    "runtimeClassName": config.kubernetes.runtime_class,
                    "serviceAccountName": config.kubernetes.service_account,
                    "initContainers": [
                        {
                            "name": "cinfer-init",
                            "image": config.images.init,
                            "command": init_command(config),
                            "resources": resources(&config.resources.init),
                            "securityContext": {
                                "runAsUser": 0,
                                "runAsNonRoot": false,
                                "capabilities": { "drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"] },
                            },
                        },
                        extract_container(config, &volume),
                    ],
                    "containers": [
                        {
                            "name": "model-server",
                            "image": config.images.model_server,
                            "command": config.expand(&config.commands.model_server),
                            "volumeMounts": [{ "name": VOLUME, "mountPath": volume, "readOnly": true }],
                            "resources": resources(&plus(&config.resources.model_server, model_gib(config))),
                            "securityContext": { "allowPrivilegeEscalation": false },
                        },
                        {
                            "name": "proxy",
                            "image": config.images.proxy,
                            "command": config.expand(&config.commands.proxy),
                            "ports": [
                                { "name": "atls", "containerPort": p.port, "protocol": "TCP" },
                                { "name": "health", "containerPort": p.health_port, "protocol": "TCP" },
                            ],
                            "volumeMounts": [reference_info_mount()],
                            // httpGet: the health port answers 503 once the attested token expired (tcpSocket
                            // would only see the port open).
                            "readinessProbe": { "httpGet": { "path": "/", "port": p.health_port }, "periodSeconds": 5 },
                            "resources": resources(&config.resources.proxy),
                            "securityContext": {
                                "runAsUser": 65532,
                                "runAsNonRoot": true,
                                "allowPrivilegeEscalation": false,
                                "capabilities": { "drop": ["ALL"] },
                            },
                        },
                    ],
                    "volumes": [
                        { "name": VOLUME, "emptyDir": { "medium": "Memory", "sizeLimit": format!("{model_mb}Mi") } },
                        { "name": REFERENCE_INFO_VOLUME, "hostPath": { "path": REFERENCE_INFO_PATH, "type": "File" } },
                    ],
                },
            },
        },
    })
}

/// The sidecar arguments of the Kubernetes layout: as for ACI, with Workload Identity.
pub fn k8s_args_for(config: &DeployConfig) -> sidecar_args::EncfsSideCarArgs {
    let mut args = args_for(config);
    args.azure_info.cinfer_workload_identity = true;
    args
}

/// The Service: the public port of every replica (redirected to its proxy by `cinfer-init`).
pub fn service(config: &DeployConfig) -> Value {
    let p = &config.proxy;
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": config.name, "namespace": config.kubernetes.namespace, "labels": labels(config) },
        "spec": {
            "type": config.kubernetes.service_type,
            "selector": { "app.kubernetes.io/name": config.name },
            "ports": [{ "name": "inference", "port": p.public_port, "targetPort": p.public_port, "protocol": "TCP" }],
        },
    })
}
