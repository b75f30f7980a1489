//! Rendering a config into a set of files (a [`Bundle`]), and writing them.

use std::path::Path;

use serde_json::Value;

use crate::canonical::{to_json_pretty, to_yaml};
use crate::config::DeployConfig;
use crate::policy::{
    HostData, SecurityPolicy, SignerJwk, client_policy_hostdata, client_policy_signer, maa_policy, release_policy,
};
use crate::sidecar::args_for;
use crate::{aci, k8s};

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// File name inside the output directory.
    pub name: String,
    /// Its contents.
    pub contents: String,
}

/// Everything one `render` produces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    /// The files, in a stable order.
    pub files: Vec<OutputFile>,
    /// The hostdata, when a security policy was given.
    pub host_data: Option<HostData>,
    /// What the user still has to do (unfilled parts are listed here, never left silently).
    pub notes: Vec<String>,
}

impl Bundle {
    fn add(&mut self, name: &str, contents: String) {
        self.files.push(OutputFile {
            name: name.to_owned(),
            contents,
        });
    }

    /// The file called `name`.
    pub fn file(&self, name: &str) -> Option<&str> {
        self.files.iter().find(|f| f.name == name).map(|f| f.contents.as_str())
    }

    /// Writes every file into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for file in &self.files {
            std::fs::write(dir.join(&file.name), &file.contents)?;
        }
        Ok(())
    }
}

/// The ACI deployment: `template.json`, `parameters.json`, the sidecar arguments and the policies.
pub fn render_aci(config: &DeployConfig, policy: Option<&SecurityPolicy>, signer: Option<&SignerJwk>) -> Bundle {
    let mut bundle = Bundle::default();
    bundle.add("template.json", to_json_pretty(&aci::template(config)));
    bundle.add("parameters.json", to_json_pretty(&aci::parameters(policy)));
    add_common(&mut bundle, config, &args_for(config), policy, signer);
    if policy.is_none() {
        bundle.notes.insert(
            0,
            "parameters.json has no ccePolicy yet: run `az confcom acipolicygen -a template.json --print-policy > \
             ccepolicy.b64`, then render again with `--policy ccepolicy.b64` to fill it and write the policies"
                .to_owned(),
        );
    }
    bundle
}

/// The Kubernetes deployment: `deployment.yaml`, `service.yaml`, the sidecar arguments and the policies. Fails
/// when the config lacks what only Kubernetes needs ([`k8s::check_config`]).
pub fn render_k8s(
    config: &DeployConfig,
    policy: Option<&SecurityPolicy>,
    signer: Option<&SignerJwk>,
) -> Result<Bundle, k8s::K8sConfigError> {
    k8s::check_config(config)?;
    let mut bundle = Bundle::default();
    bundle.add("deployment.yaml", to_yaml(&k8s::deployment(config, policy)));
    bundle.add("service.yaml", to_yaml(&k8s::service(config)));
    add_common(&mut bundle, config, &k8s::k8s_args_for(config), policy, signer);
    let (vcpus, gib) = k8s::uvm_size(config);
    bundle.notes.push(format!(
        "each pod runs in its own utility VM of {vcpus} vCPU and {gib:.2} GiB (CPU = sum of the containers' CPU \
         limits, memory = 2 GiB + sum of the memory limits, the model's {} MiB of plaintext included; [resources] \
         and kubernetes.model_mb set them)",
        config.kubernetes.model_mb.unwrap_or(0)
    ));
    if policy.is_none() {
        bundle.notes.insert(
            0,
            format!(
                "deployment.yaml has no {} annotation yet: run `az confcom katapolicygen -y deployment.yaml \
                 --print-policy > policy.b64`, then render again with `--policy policy.b64` to add it and write \
                 the policies",
                k8s::POLICY_ANNOTATION
            ),
        );
    }
    Ok(bundle)
}

fn add_common(
    bundle: &mut Bundle,
    config: &DeployConfig,
    args: &crate::sidecar::EncfsSideCarArgs,
    policy: Option<&SecurityPolicy>,
    signer: Option<&SignerJwk>,
) {
    let args: Value = serde_json::from_str(&args.to_json()).unwrap_or_default();
    bundle.add("encfs-sidecar-args.json", to_json_pretty(&args));
    let Some(policy) = policy else {
        bundle.notes.push(
            "no security policy given: hostdata.txt, release-policy.json, attestation-policy.txt and the client \
             policies are not written"
                .to_owned(),
        );
        return;
    };
    let host_data = policy.host_data();
    bundle.host_data = Some(host_data);
    bundle.add("hostdata.txt", format!("{host_data}\n"));
    let mut release = release_policy(&config.attestation, host_data);
    let mut client_hostdata = client_policy_hostdata(host_data);
    if let Some(gpu) = &config.gpu {
        // DeployConfig::validate checked that the requirement's versions parse.
        let _ = crate::policy::add_gpu_conditions(&mut release, gpu);
        let _ = crate::policy::add_gpu_claims(&mut client_hostdata, gpu);
    }
    bundle.add("release-policy.json", to_json_pretty(&release));
    bundle.add("attestation-policy.txt", maa_policy(&config.attestation, host_data));
    bundle.add("client-policy-hostdata.json", to_json_pretty(&client_hostdata));
    match signer {
        Some(signer) => {
            let mut policy = client_policy_signer(signer);
            if let Some(gpu) = &config.gpu {
                let _ = crate::policy::add_gpu_claims(&mut policy, gpu);
            }
            bundle.add("client-policy-signer.json", to_json_pretty(&policy));
        }
        None => bundle.notes.push(
            "no policy_signer in the config: client-policy-signer.json is not written (the hostdata form is)"
                .to_owned(),
        ),
    }
}
