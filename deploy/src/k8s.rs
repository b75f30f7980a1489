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
use crate::sidecar::{args_for, encfs_command};

/// The pod annotation that carries the Kata agent policy (its SHA-256 is the hostdata).
pub const POLICY_ANNOTATION: &str = "io.katacontainers.config.agent.policy";

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

/// The utility VM one pod gets on AKS confidential containers: vCPUs = the sum of the containers' CPU limits
/// (rounded up; init containers run before the others, so the largest of them counts against the rest), memory =
/// 2 GiB + the sum of the memory limits. Returns (vCPUs, GiB).
pub fn uvm_size(config: &DeployConfig) -> (u32, f64) {
    let r = &config.resources;
    let main = [&r.model_server, &r.encfs, &r.proxy];
    let cpu: f64 = main.iter().map(|c| c.cpu).sum::<f64>().max(r.init.cpu);
    let memory: f64 = main.iter().map(|c| c.memory_gb).sum::<f64>().max(r.init.memory_gb);
    (cpu.ceil() as u32, 2.0 + memory)
}

/// The Deployment. With a policy (from `az confcom katapolicygen`), it goes into the pod annotation.
pub fn deployment(config: &DeployConfig, policy: Option<&SecurityPolicy>) -> Value {
    let p = &config.proxy;
    let volume = volume_path(config);
    let mut pod_meta = json!({ "labels": labels(config) });
    if let Some(policy) = policy {
        pod_meta["annotations"] = json!({ POLICY_ANNOTATION: policy.base64 });
    }
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
                    "initContainers": [{
                        "name": "cinfer-init",
                        "image": config.images.init,
                        "command": init_command(config),
                        "resources": resources(&config.resources.init),
                        "securityContext": {
                            "runAsUser": 0,
                            "runAsNonRoot": false,
                            "capabilities": { "drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"] },
                        },
                    }],
                    "containers": [
                        {
                            "name": "model-server",
                            "image": config.images.model_server,
                            "command": config.expand(&config.commands.model_server),
                            "volumeMounts": [{ "name": VOLUME, "mountPath": volume, "mountPropagation": "HostToContainer" }],
                            "resources": resources(&config.resources.model_server),
                            "securityContext": { "allowPrivilegeEscalation": false },
                        },
                        {
                            "name": "encfs",
                            "image": config.images.encfs,
                            "command": encfs_command(config),
                            "env": [{ "name": sidecar_args::ENV_VAR, "value": args_for(config).to_base64() }],
                            "volumeMounts": [{ "name": VOLUME, "mountPath": volume, "mountPropagation": "Bidirectional" }],
                            "resources": resources(&config.resources.encfs),
                            // Bidirectional propagation (the mount must reach the model server) requires privileged.
                            "securityContext": { "privileged": true },
                        },
                        {
                            "name": "proxy",
                            "image": config.images.proxy,
                            "command": config.expand(&config.commands.proxy),
                            "ports": [
                                { "name": "atls", "containerPort": p.port, "protocol": "TCP" },
                                { "name": "health", "containerPort": p.health_port, "protocol": "TCP" },
                            ],
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
                    "volumes": [{ "name": VOLUME, "emptyDir": {} }],
                },
            },
        },
    })
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
