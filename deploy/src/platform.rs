//! The rules AKS confidential containers (`kata-cc-isolation`) impose on a pod, as gathered from the platform's
//! own code in `docs/k8s-platforms.md`, checked on a rendered Deployment. The generated agent policy enforces them
//! inside the utility VM, so a pod that breaks one fails at run time, not at `kubectl apply`; this check fails the
//! render instead ([`crate::validate::check_k8s`] runs it).

use serde_json::Value;
use sidecar_args::EncfsSideCarArgs;

use crate::k8s::{POLICY_ANNOTATION, REFERENCE_INFO_PATH, WORKLOAD_IDENTITY_LABEL};

/// One broken rule: which, where, and why the platform needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule's short name (`no-propagation`, `no-host-devices`, `limits`, `probe`, `identity`, `policy`,
    /// `attestation-inputs`, `tcp-only`, `model-volume`).
    pub rule: &'static str,
    /// Where and what.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AKS rule {}: {}", self.rule, self.message)
    }
}

/// The annotation of upstream Confidential Containers' initdata (not measured on AKS; the agent policy is).
const INITDATA_ANNOTATION: &str = "io.katacontainers.config.hypervisor.cc_init_data";

/// Checks the pod template of `deployment` against the AKS confidential containers rules; `expect_policy` says
/// whether the policy annotation must already be there.
pub fn check_aks(deployment: &Value, expect_policy: bool) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut bad = |rule: &'static str, message: String| out.push(Violation { rule, message });
    let pod = &deployment["spec"]["template"];
    let spec = &pod["spec"];
    let all: Vec<(&str, &Value)> = ["initContainers", "containers"]
        .into_iter()
        .flat_map(|kind| {
            spec[kind]
                .as_array()
                .map(|a| a.iter().map(move |c| (kind, c)).collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect();
    let name = |c: &Value| c["name"].as_str().unwrap_or("?").to_owned();

    // Policy: the agent policy annotation, not upstream's initdata.
    if spec["runtimeClassName"] != "kata-cc-isolation" {
        bad(
            "policy",
            format!(
                "runtimeClassName is {}, not kata-cc-isolation",
                spec["runtimeClassName"]
            ),
        );
    }
    let annotations = &pod["metadata"]["annotations"];
    if expect_policy && annotations[POLICY_ANNOTATION].as_str().is_none_or(str::is_empty) {
        bad(
            "policy",
            format!("the pod has no {POLICY_ANNOTATION} annotation (its SHA-256 is the hostdata)"),
        );
    }
    if !annotations[INITDATA_ANNOTATION].is_null() {
        bad(
            "policy",
            format!("{INITDATA_ANNOTATION} is upstream CoCo's; AKS measures {POLICY_ANNOTATION}"),
        );
    }

    // Volumes: no host devices or paths besides the reference-info file; the model volume in memory.
    for v in spec["volumes"].as_array().into_iter().flatten() {
        let vname = v["name"].as_str().unwrap_or("?");
        if let Some(path) = v["hostPath"]["path"].as_str()
            && path != REFERENCE_INFO_PATH
        {
            bad(
                "no-host-devices",
                format!(
                    "volume {vname:?} is the host path {path:?}: only the UVM reference info may come from the node"
                ),
            );
        }
        if !v["emptyDir"].is_null() && (v["emptyDir"]["medium"] != "Memory" || v["emptyDir"]["sizeLimit"].is_null()) {
            bad(
                "model-volume",
                format!(
                    "emptyDir {vname:?} must be memory-backed with a sizeLimit (the plaintext stays in the utility \
                     VM's encrypted memory, sized by the limits)"
                ),
            );
        }
    }

    let mut args = None;
    for (kind, c) in &all {
        let cname = name(c);
        let sc = &c["securityContext"];
        if sc["privileged"] == true {
            bad(
                "no-host-devices",
                format!(
                    "{kind} {cname:?} is privileged: kata-cc gives a privileged container no host devices, and the policy does not allow it"
                ),
            );
        }
        if c["volumeDevices"].as_array().is_some_and(|d| !d.is_empty()) {
            bad("no-host-devices", format!("{kind} {cname:?} asks for volumeDevices"));
        }
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            if let Some(p) = m["mountPropagation"].as_str()
                && p != "None"
            {
                bad(
                    "no-propagation",
                    format!(
                        "{kind} {cname:?} mounts {} with mountPropagation {p}: the generated policy requires an empty \
                         RootfsPropagation and gives emptyDir mounts rprivate",
                        m["mountPath"]
                    ),
                );
            }
        }
        let command: Vec<&str> = c["command"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let encfs = command.first().is_some_and(|p| p.ends_with("cinfer-encfs"));
        if encfs && command.iter().skip(1).any(|a| matches!(*a, "sidecar" | "mount")) {
            bad(
                "no-host-devices",
                format!(
                    "{kind} {cname:?} runs a FUSE mount ({}): /dev/fuse is not in a kata-cc container's device cgroup",
                    command.join(" ")
                ),
            );
        }
        // Limits, equal to the requests.
        let r = &c["resources"];
        for what in ["cpu", "memory"] {
            if r["limits"][what].is_null() {
                bad(
                    "limits",
                    format!("{kind} {cname:?} has no {what} limit: kata-cc sizes the utility VM from limits"),
                );
            } else if !r["requests"][what].is_null() && r["requests"][what] != r["limits"][what] {
                bad(
                    "limits",
                    format!("{kind} {cname:?}: {what} request differs from its limit (requests are not honoured)"),
                );
            }
        }
        for port in c["ports"].as_array().into_iter().flatten() {
            if port["protocol"].as_str().is_some_and(|p| p != "TCP") {
                bad(
                    "tcp-only",
                    format!("{kind} {cname:?} exposes a {} port", port["protocol"]),
                );
            }
        }
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            if !c[probe]["tcpSocket"].is_null() {
                bad(
                    "probe",
                    format!("{kind} {cname:?}: a tcpSocket {probe} does not see the proxy's 503; use httpGet"),
                );
            }
        }
        let attests = command
            .first()
            .is_some_and(|p| p.ends_with("cinfer-encfs") || p.ends_with("cinfer-proxy"));
        if attests {
            let mounted = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["mountPath"] == REFERENCE_INFO_PATH);
            if !mounted {
                bad(
                    "attestation-inputs",
                    format!(
                        "{kind} {cname:?} attests but does not mount {REFERENCE_INFO_PATH} (there is no ACI security \
                         context on AKS)"
                    ),
                );
            }
        }
        if command.first().is_some_and(|p| p.ends_with("cinfer-proxy")) {
            let health = &c["readinessProbe"]["httpGet"];
            if health.is_null() {
                bad(
                    "probe",
                    format!("{kind} {cname:?} needs an httpGet readiness probe on its health port"),
                );
            }
        }
        for e in c["env"].as_array().into_iter().flatten() {
            if e["name"] == sidecar_args::ENV_VAR
                && let Some(v) = e["value"].as_str()
            {
                args = EncfsSideCarArgs::from_env_value(v).ok();
            }
        }
    }

    // Identity: Workload Identity, wired on both sides.
    let labelled = pod["metadata"]["labels"][WORKLOAD_IDENTITY_LABEL] == "true";
    let account = spec["serviceAccountName"].as_str().is_some_and(|s| !s.is_empty());
    let wi = args.as_ref().is_some_and(|a| a.azure_info.cinfer_workload_identity);
    if args.is_none() {
        bad(
            "identity",
            format!("no container carries a readable {}", sidecar_args::ENV_VAR),
        );
    } else if !wi {
        bad(
            "identity",
            "the encfs arguments do not select Workload Identity (cinfer_workload_identity): the node's IMDS serves \
             node-pool identities only"
                .to_owned(),
        );
    }
    if !labelled {
        bad(
            "identity",
            format!("the pod lacks the label {WORKLOAD_IDENTITY_LABEL}: \"true\" (no federated token is projected)"),
        );
    }
    if !account {
        bad(
            "identity",
            "the pod names no serviceAccountName (the federated identity's subject)".to_owned(),
        );
    }
    out
}
