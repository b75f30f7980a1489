//! The confidential container group (ARM template and parameters) for Azure Container Instances.
//!
//! One group shares one network namespace and one UVM: `cinfer-init` (init container) installs the redirect,
//! then the model server, the encfs sidecar and the server proxy start. Only the public port is exposed; the
//! init's redirect sends it to the proxy. The `ccePolicy` is a template parameter filled from
//! `az confcom acipolicygen` output: the template itself never changes with the policy, so running
//! `acipolicygen` on a template rendered without a policy measures exactly what is later deployed.

use serde_json::{Value, json};

use crate::config::{DeployConfig, Resource};
use crate::policy::SecurityPolicy;
use crate::sidecar::{args_for, encfs_command};

/// The ARM API version of `Microsoft.ContainerInstance/containerGroups` used (confidential SKU, init containers,
/// security contexts).
pub const ACI_API_VERSION: &str = "2023-05-01";

/// The shared volume holding the mount point.
pub const VOLUME: &str = "remotemounts";

/// The directory the shared volume is mounted at: the parent of the model mount point.
pub fn volume_path(config: &DeployConfig) -> String {
    match config.model.mount_point.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) | None => "/".to_owned(),
        Some((parent, _)) => parent.to_owned(),
    }
}

/// The `cinfer-init apply` command shared by ACI and Kubernetes.
pub fn init_command(config: &DeployConfig) -> Vec<String> {
    let mut command = vec![
        "/usr/local/bin/cinfer-init".to_owned(),
        "apply".to_owned(),
        format!("--proxy-port={}", config.proxy.port),
        format!("--exclude-port={}", config.proxy.health_port),
    ];
    if !config.init.outbound_allow_uids.is_empty() {
        let uids: Vec<String> = config.init.outbound_allow_uids.iter().map(u32::to_string).collect();
        command.push(format!("--outbound-allow-uid={}", uids.join(",")));
    }
    command
}

fn requests(r: &Resource) -> Value {
    json!({ "requests": { "cpu": r.cpu, "memoryInGB": r.memory_gb } })
}

/// The ARM template (deterministic: it does not depend on the policy).
pub fn template(config: &DeployConfig) -> Value {
    let mount = json!([{ "name": VOLUME, "mountPath": volume_path(config) }]);
    let p = &config.proxy;
    let mut group = json!({
        "type": "Microsoft.ContainerInstance/containerGroups",
        "apiVersion": ACI_API_VERSION,
        "name": "[parameters('name')]",
        "location": "[parameters('location')]",
        "properties": {
            "sku": "Confidential",
            "confidentialComputeProperties": { "ccePolicy": "[parameters('ccePolicy')]" },
            "initContainers": [{
                "name": "cinfer-init",
                "properties": {
                    "image": config.images.init,
                    "command": init_command(config),
                    // iptables needs CAP_NET_ADMIN in the group's network namespace (the seed's init is privileged).
                    "securityContext": { "privileged": true },
                },
            }],
            "containers": [
                {
                    "name": "model-server",
                    "properties": {
                        "image": config.images.model_server,
                        "command": config.expand(&config.commands.model_server),
                        "volumeMounts": mount,
                        "resources": requests(&config.resources.model_server),
                    },
                },
                {
                    "name": "encfs",
                    "properties": {
                        "image": config.images.encfs,
                        "command": encfs_command(config),
                        "environmentVariables": [
                            { "name": sidecar_args::ENV_VAR, "value": args_for(config).to_base64() },
                        ],
                        "volumeMounts": mount,
                        "resources": requests(&config.resources.encfs),
                        // /dev/fuse and the mount into the shared volume; ACI offers no device mapping.
                        "securityContext": { "privileged": true },
                    },
                },
                {
                    "name": "proxy",
                    "properties": {
                        "image": config.images.proxy,
                        "command": config.expand(&config.commands.proxy),
                        "ports": [{ "protocol": "TCP", "port": p.public_port }],
                        "resources": requests(&config.resources.proxy),
                    },
                },
            ],
            "osType": "Linux",
            "restartPolicy": "Always",
            "ipAddress": {
                "type": "Public",
                "ports": [{ "protocol": "TCP", "port": p.public_port }],
            },
            "volumes": [{ "name": VOLUME, "emptyDir": {} }],
        },
    });
    if let Some(label) = &config.aci.dns_name_label {
        group["properties"]["ipAddress"]["dnsNameLabel"] = json!(label);
    }
    if let Some(resource_id) = config.identity.as_ref().and_then(|i| i.resource_id.as_ref()) {
        group["identity"] = json!({ "type": "UserAssigned", "userAssignedIdentities": { resource_id: {} } });
    }
    json!({
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {
            "name": {
                "type": "string",
                "defaultValue": config.name,
                "metadata": { "description": "Name of the confidential container group." },
            },
            "location": {
                "type": "string",
                "defaultValue": "[resourceGroup().location]",
                "metadata": { "description": "Region (must offer confidential container groups)." },
            },
            "ccePolicy": {
                "type": "string",
                "metadata": { "description": "Base64 security policy from `az confcom acipolicygen`; its SHA-256 (decoded) is the hostdata." },
            },
        },
        "resources": [group],
        "outputs": {
            "ipAddress": {
                "type": "string",
                "value": "[reference(resourceId('Microsoft.ContainerInstance/containerGroups', parameters('name'))).ipAddress.ip]",
            },
        },
    })
}

/// The ARM parameters file; carries the `ccePolicy` once there is one.
pub fn parameters(policy: Option<&SecurityPolicy>) -> Value {
    let mut params = serde_json::Map::new();
    if let Some(policy) = policy {
        params.insert("ccePolicy".to_owned(), json!({ "value": policy.base64 }));
    }
    json!({
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
        "contentVersion": "1.0.0.0",
        "parameters": params,
    })
}
