//! The deployment itself: the config (the example, or the user's) rendered exactly as `cinfer-deploy render aci`
//! renders it, into `work/rendered/`, for the image built here. Later stages run its containers
//! ([`crate::local::rendered`]) and import the key with its release policy.
//!
//! The local stand-in for `az confcom acipolicygen` is a policy that names the SHA-256 of the rendered
//! `template.json` and the image root, so the hostdata changes with anything rendered (the sidecar's arguments
//! with the pin and signer included), as the platform's measurement does.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::Ctx;
use crate::local::error::{LocalError, Result};
use crate::local::rendered::{Layout, RenderedContainer, aci_containers, k8s_containers};
use crate::{Bundle, DeployConfig, SecurityPolicy, render_aci, render_k8s};

/// The rendered deployment.
#[derive(Debug)]
pub(crate) struct Rendered {
    /// `work/rendered`.
    pub(crate) dir: PathBuf,
    /// The config as rendered (with the local image's pin and signer).
    pub(crate) config: DeployConfig,
    /// The containers of `template.json`.
    pub(crate) containers: Vec<RenderedContainer>,
    /// The hostdata (SHA-256 of the local security policy).
    pub(crate) hostdata: String,
    /// The bundle's files.
    pub(crate) bundle: Bundle,
    /// What local mode set in the config, for the user.
    pub(crate) notes: Vec<String>,
}

impl Rendered {
    /// A rendered file parsed as JSON.
    pub(crate) fn json(&self, name: &str) -> Result<serde_json::Value> {
        serde_json::from_str(self.bundle.file(name).unwrap_or_default()).map_err(|e| LocalError::Unexpected {
            what: format!("the rendered {name}"),
            got: e.to_string(),
        })
    }

    /// The container called `name`.
    pub(crate) fn container(&self, name: &str) -> Result<&RenderedContainer> {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| LocalError::Unexpected {
                what: "the rendered deployment".into(),
                got: format!("no container {name:?}"),
            })
    }
}

/// Loads the config (`None`: the example), points its pin and signer at the image built here, and renders it.
pub(crate) fn render(
    ctx: &Ctx,
    config: Option<&Path>,
    root: &str,
    signer_pub: &Path,
    layout: Layout,
) -> Result<Rendered> {
    let invalid = |e: crate::ConfigError| LocalError::Unexpected {
        what: "the deployment config".into(),
        got: format!("{e:#}"),
    };
    let mut config = match config {
        Some(path) => DeployConfig::load(path).map_err(invalid)?,
        None => DeployConfig::example().map_err(invalid)?,
    };
    if !matches!(config.model.key_type.as_str(), "oct" | "oct-HSM") {
        return Err(LocalError::Unexpected {
            what: "the deployment config".into(),
            got: format!(
                "model.key_type {:?}: local mode imports a 32-byte oct-HSM key",
                config.model.key_type
            ),
        });
    }
    let signer = std::fs::read_to_string(signer_pub)
        .map_err(LocalError::io(format!("reading {}", signer_pub.display())))?
        .trim()
        .to_owned();
    let mut notes = Vec::new();
    if config.model.expect_root.as_deref() != Some(root) {
        notes.push(format!(
            "[model] expect_root = {root} (the image built here; the config had {})",
            config.model.expect_root.as_deref().unwrap_or("none")
        ));
        config.model.expect_root = Some(root.to_owned());
    }
    if config.model.signer_key.as_deref() != Some(signer.as_str()) {
        notes.push(format!(
            "[model] signer_key = {} (this run's signer; the config had {})",
            signer_pub.display(),
            if config.model.signer_key.is_some() {
                "another key"
            } else {
                "none"
            }
        ));
        config.model.signer_key = Some(signer);
    }
    config.validate().map_err(invalid)?;

    let k8s_render = |policy: Option<&SecurityPolicy>| {
        render_k8s(&config, policy, None).map_err(|e| LocalError::Unexpected {
            what: "the deployment config (--layout k8s)".into(),
            got: e.to_string(),
        })
    };
    let (unpolicied, main_file, tool) = match layout {
        Layout::Aci => (
            render_aci(&config, None, None),
            "template.json",
            "az confcom acipolicygen",
        ),
        Layout::K8s => (k8s_render(None)?, "deployment.yaml", "az confcom katapolicygen"),
    };
    let template = unpolicied.file(main_file).unwrap_or_default();
    let rego = format!(
        "package policy\n# cinfer-deploy local: stand-in for {tool}\n\
         # {main_file} sha256 {}\n# image root {root}\nallow := true\n",
        hex::encode(Sha256::digest(template.as_bytes()))
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(&rego);
    let policy = SecurityPolicy::parse(&b64).map_err(|e| LocalError::Unexpected {
        what: "the local security policy".into(),
        got: e.to_string(),
    })?;
    let bundle = match layout {
        Layout::Aci => render_aci(&config, Some(&policy), None),
        Layout::K8s => k8s_render(Some(&policy))?,
    };
    let dir = ctx.work.join("rendered");
    bundle
        .write(&dir)
        .map_err(LocalError::io(format!("writing {}", dir.display())))?;
    let policy_file = dir.join("security-policy.b64");
    std::fs::write(&policy_file, &b64).map_err(LocalError::io(format!("writing {}", policy_file.display())))?;
    let hostdata = policy.host_data().to_string();
    let mut rendered = Rendered {
        dir,
        config,
        containers: Vec::new(),
        hostdata,
        bundle,
        notes,
    };
    rendered.containers = match layout {
        Layout::Aci => aci_containers(&rendered.json("template.json")?, "template.json")?,
        Layout::K8s => {
            let text = rendered.bundle.file("deployment.yaml").unwrap_or_default();
            let deployment: serde_json::Value = serde_norway::from_str(text).map_err(|e| LocalError::Unexpected {
                what: "the rendered deployment.yaml".into(),
                got: e.to_string(),
            })?;
            k8s_containers(&deployment, "deployment.yaml")?
        }
    };
    Ok(rendered)
}
