//! What `cinfer-deploy local` runs is what `cinfer-deploy render aci` (or, with `--layout k8s`, `render k8s`)
//! wrote: each container of the rendered container group (or pod) becomes a local process with the rendered
//! command, arguments and environment.
//!
//! [`localize`] is the one place where the rendered deployment is changed for this machine, and it changes only
//! where things are:
//!
//! | rendered                                   | local                                              |
//! |--------------------------------------------|----------------------------------------------------|
//! | the program (`tritonserver`, `/usr/local/bin/cinfer-encfs`, `/usr/local/bin/cinfer-proxy`) | the bundled Triton, this build's binaries |
//! | `--model-repository=<mount point>`          | the local mount point                              |
//! | `--http-port=<upstream port>`               | the local model server port                        |
//! | `--listen=` / `--health=` (`0.0.0.0:<port>`) | `127.0.0.1:<local port>`                          |
//! | `--upstream=127.0.0.1:<upstream port>`      | `127.0.0.1:<local model server port>`              |
//! | `--attestation-url=https://<authority>`    | the local attestation service (`http://127.0.0.1:…`) |
//! | `EncfsSideCarArgs`: `azure_url`            | the local store's URL (its SAS authenticates, so `azure_url_private` is false) |
//! | `EncfsSideCarArgs`: `key.authority.endpoint`, `key.akv.endpoint` | the local attestation service and key broker |
//! | `EncfsSideCarArgs`: `mount_point`          | the local mount point                              |
//! | release policy: `anyOf[].authority`        | the local attestation service                      |
//! | `EncfsSideCarArgs`: `azure_info.cinfer_workload_identity` (Kubernetes) | false: the local broker and store take no Entra ID token |
//!
//! Everything else (the root pin, the signer key, the verify mode, the cache size, the key id, the identity,
//! Triton's loopback binding, every other flag) is passed as rendered. What this machine lacks is *added*, never
//! substituted, and listed with the substitutions ([`Platform`]): the mock SEV-SNP attester (root, host_data,
//! measurement, as flags) for the sidecar and the server proxy, with `--gpu` the mock GPUs (`--mock-gpu-dir`) for
//! both, the sidecar's readiness directory, and the bundled Triton's backend directory and environment. (With
//! `--gpu` the release policy and the client policy also gain the GPU conditions, added by the pipeline.)

use std::path::{Path, PathBuf};

use serde_json::Value;
use sidecar_args::EncfsSideCarArgs;

use super::error::{LocalError, Result};
use super::http::redact;

/// Which rendered deployment runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Layout {
    /// `render aci`: the encfs sidecar mounts the image with FUSE beside the model server.
    #[default]
    Aci,
    /// `render k8s`: the pod's init container `encfs-extract` writes the verified files into the model volume
    /// (no FUSE), then the model server and the proxy start.
    K8s,
}

/// One container of the rendered deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedContainer {
    /// Its name (`model-server`, `encfs`, `proxy`).
    pub name: String,
    /// Where it was read: file and position, e.g. `template.json containers[1] "encfs"`.
    pub source: String,
    /// The rendered command (program and arguments).
    pub command: Vec<String>,
    /// The rendered environment.
    pub env: Vec<(String, String)>,
}

/// The containers of a rendered ACI template (`resources[0].properties.containers`), in order.
pub fn aci_containers(template: &Value, file: &str) -> Result<Vec<RenderedContainer>> {
    let bad = |got: &str| LocalError::Unexpected {
        what: format!("the rendered {file}"),
        got: got.to_owned(),
    };
    let containers = template
        .pointer("/resources/0/properties/containers")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no resources[0].properties.containers"))?;
    containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = c["name"]
                .as_str()
                .ok_or_else(|| bad("a container without a name"))?
                .to_owned();
            let p = &c["properties"];
            Ok(RenderedContainer {
                source: format!("{file} containers[{i}] {name:?}"),
                name,
                command: strings(&p["command"]),
                env: env_pairs(&p["environmentVariables"]),
            })
        })
        .collect()
}

/// A JSON array's strings.
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// `[{name, value}]` (ACI `environmentVariables`, Kubernetes `env`) as pairs; secure values are not read.
fn env_pairs(vars: &Value) -> Vec<(String, String)> {
    vars.as_array()
        .map(|vars| {
            vars.iter()
                .filter_map(|v| Some((v["name"].as_str()?.to_owned(), v["value"].as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The containers of a rendered Kubernetes Deployment: its init containers, then its containers, in order.
pub fn k8s_containers(deployment: &Value, file: &str) -> Result<Vec<RenderedContainer>> {
    let spec = deployment
        .pointer("/spec/template/spec")
        .ok_or_else(|| LocalError::Unexpected {
            what: format!("the rendered {file}"),
            got: "no spec.template.spec".into(),
        })?;
    let mut out = Vec::new();
    for kind in ["initContainers", "containers"] {
        for (i, c) in spec[kind].as_array().into_iter().flatten().enumerate() {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            out.push(RenderedContainer {
                source: format!("{file} {kind}[{i}] {name:?}"),
                name,
                command: strings(&c["command"]),
                env: env_pairs(&c["env"]),
            });
        }
    }
    Ok(out)
}

/// Where things are on this machine: the only values [`localize`] puts into a rendered deployment.
#[derive(Debug, Clone, Default)]
pub struct Addresses {
    /// Local programs by the file name of the rendered program (`tritonserver`, `cinfer-encfs`, `cinfer-proxy`).
    pub programs: Vec<(String, PathBuf)>,
    /// The image in the local store (may carry a SAS: never shown unredacted).
    pub blob_url: String,
    /// The local attestation service, which is also the key broker (`http://127.0.0.1:PORT`).
    pub authority_url: String,
    /// The local mount point.
    pub mount_point: PathBuf,
    /// The model server's HTTP port.
    pub model_server_port: u16,
    /// The server proxy's attested TLS port.
    pub proxy_port: u16,
    /// The server proxy's health port.
    pub health_port: u16,
}

/// What this machine adds because it is not a confidential container (never a substitution).
#[derive(Debug, Clone, Default)]
pub struct Platform {
    /// The mock attester's root (`cinfer-attest mock-init --out DIR`).
    pub mock_root: PathBuf,
    /// The host_data the mock evidence carries (what the platform would measure).
    pub host_data: String,
    /// The mock launch measurement.
    pub measurement: String,
    /// Mock GPUs (`cinfer-attest mock-gpu-init --out DIR`) whose evidence the encfs and proxy containers add.
    pub mock_gpu_dir: Option<PathBuf>,
    /// The sidecar's readiness directory.
    pub ready_dir: PathBuf,
    /// The bundled Triton's backend directory.
    pub backend_dir: PathBuf,
    /// The bundled Triton's environment (`PATH`, `LD_LIBRARY_PATH`).
    pub triton_env: Vec<(String, String)>,
}

/// One value changed from the rendered deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Substitution {
    /// What: a flag, a field of `EncfsSideCarArgs`, or `program`.
    pub what: String,
    /// The rendered value.
    pub rendered: String,
    /// The local value (URLs without their query).
    pub local: String,
}

/// A rendered container, localized: what is run.
#[derive(Debug, Clone)]
pub struct LocalCommand {
    /// The container's name.
    pub name: String,
    /// Where it was rendered.
    pub source: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments: the rendered ones, substituted, then the platform's additions.
    pub args: Vec<String>,
    /// Its environment: the rendered one, substituted, then the platform's additions.
    pub env: Vec<(String, String)>,
    /// Every rendered value that was changed.
    pub substituted: Vec<Substitution>,
    /// Every argument or variable added for this machine (values of secrets are not listed).
    pub added: Vec<String>,
}

impl LocalCommand {
    /// A `Command` running it.
    pub fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args).envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// Substitutes a rendered container's addresses with this machine's and adds what the platform lacks (see the
/// module documentation for the exact list). Fails on a program it cannot run here, and on a sidecar argument
/// set it cannot localize; it never drops a setting.
pub fn localize(c: &RenderedContainer, a: &Addresses, platform: &Platform) -> Result<LocalCommand> {
    let (rendered_program, rest) = c.command.split_first().ok_or_else(|| LocalError::Unexpected {
        what: c.source.clone(),
        got: "an empty command".into(),
    })?;
    let base = Path::new(rendered_program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let program = a
        .programs
        .iter()
        .find(|(name, _)| name == base)
        .map(|(_, p)| p.clone())
        .ok_or_else(|| LocalError::Unexpected {
            what: format!("{}: the program", c.source),
            got: format!("{rendered_program} (local mode runs tritonserver, cinfer-encfs and cinfer-proxy)"),
        })?;
    let mut substituted = vec![Substitution {
        what: "program".into(),
        rendered: rendered_program.clone(),
        local: program.display().to_string(),
    }];
    let mut args = Vec::with_capacity(rest.len());
    let mut iter = rest.iter().peekable();
    while let Some(arg) = iter.next() {
        // `--flag=value`, or `--flag value` for the flags we substitute.
        let (flag, value, joined) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned()), true),
            _ if arg.starts_with("--") && local_value(arg, a).is_some() => (arg.clone(), iter.next().cloned(), false),
            _ => (arg.clone(), None, true),
        };
        let Some(value) = value else {
            args.push(flag);
            continue;
        };
        let new = match local_value(&flag, a) {
            Some(local) if local != value => {
                substituted.push(Substitution {
                    what: flag.clone(),
                    rendered: value,
                    local: local.clone(),
                });
                local
            }
            _ => value,
        };
        if joined {
            args.push(format!("{flag}={new}"));
        } else {
            args.push(flag);
            args.push(new);
        }
    }
    let mut env = Vec::with_capacity(c.env.len());
    for (k, v) in &c.env {
        if k == sidecar_args::ENV_VAR {
            let (local, subs) = localize_sidecar_args(v, a)?;
            substituted.extend(subs);
            env.push((k.clone(), local.to_base64()));
        } else {
            env.push((k.clone(), v.clone()));
        }
    }
    let mut added = Vec::new();
    match base {
        "cinfer-encfs" => {
            let extra = [
                "--attester=mock".to_owned(),
                format!("--mock-root-dir={}", platform.mock_root.display()),
                format!("--mock-host-data={}", platform.host_data),
                format!("--mock-measurement={}", platform.measurement),
                format!("--ready-dir={}", platform.ready_dir.display()),
            ];
            added.extend(extra.iter().cloned());
            args.extend(extra);
            if let Some(dir) = &platform.mock_gpu_dir {
                let gpu = format!("--mock-gpu-dir={}", dir.display());
                added.push(gpu.clone());
                args.push(gpu);
            }
        }
        "cinfer-proxy" => {
            let extra = [
                "--attester=mock".to_owned(),
                format!("--mock-root={}", platform.mock_root.display()),
                format!("--mock-host-data={}", platform.host_data),
                format!("--mock-measurement={}", platform.measurement),
            ];
            added.extend(extra.iter().cloned());
            args.extend(extra);
            if let Some(dir) = &platform.mock_gpu_dir {
                let gpu = format!("--mock-gpu-dir={}", dir.display());
                added.push(gpu.clone());
                args.push(gpu);
            }
        }
        "tritonserver" => {
            let extra = format!("--backend-directory={}", platform.backend_dir.display());
            added.push(extra.clone());
            args.push(extra);
            for (k, v) in &platform.triton_env {
                added.push(format!("{k}=<bundled Triton's>"));
                env.push((k.clone(), v.clone()));
            }
        }
        _ => {}
    }
    Ok(LocalCommand {
        name: c.name.clone(),
        source: c.source.clone(),
        program,
        args,
        env,
        substituted,
        added,
    })
}

/// The local value of an address flag, or None when `flag` is not one.
fn local_value(flag: &str, a: &Addresses) -> Option<String> {
    Some(match flag {
        "--model-repository" => a.mount_point.display().to_string(),
        "--http-port" => a.model_server_port.to_string(),
        "--listen" => format!("127.0.0.1:{}", a.proxy_port),
        "--health" => format!("127.0.0.1:{}", a.health_port),
        "--upstream" => format!("127.0.0.1:{}", a.model_server_port),
        "--attestation-url" => a.authority_url.clone(),
        _ => return None,
    })
}

/// `EncfsSideCarArgs` (base64) with its addresses substituted: each filesystem's blob URL (and
/// `azure_url_private: false`, the SAS authenticates), authority, vault and mount point. One filesystem only.
pub fn localize_sidecar_args(value: &str, a: &Addresses) -> Result<(EncfsSideCarArgs, Vec<Substitution>)> {
    let mut args = EncfsSideCarArgs::from_env_value(value).map_err(|e| LocalError::Unexpected {
        what: "the rendered EncfsSideCarArgs".into(),
        got: e.to_string(),
    })?;
    if args.azure_filesystems.len() != 1 {
        return Err(LocalError::Unexpected {
            what: "the rendered EncfsSideCarArgs".into(),
            got: format!(
                "{} filesystems (local mode serves one image)",
                args.azure_filesystems.len()
            ),
        });
    }
    let mut subs = Vec::new();
    let mut sub = |what: &str, field: &mut String, local: &str, shown: String| {
        if field != local {
            subs.push(Substitution {
                what: format!("{} {what}", sidecar_args::ENV_VAR),
                rendered: redact(field),
                local: shown,
            });
            *field = local.to_owned();
        }
    };
    let fs = &mut args.azure_filesystems[0];
    sub("azure_url", &mut fs.azure_url, &a.blob_url, redact(&a.blob_url));
    let mount = a.mount_point.display().to_string();
    sub("mount_point", &mut fs.mount_point, &mount, mount.clone());
    let url = &a.authority_url;
    sub(
        "key.authority.endpoint",
        &mut fs.key.authority.endpoint,
        url,
        url.clone(),
    );
    sub("key.akv.endpoint", &mut fs.key.akv.endpoint, url, url.clone());
    if fs.azure_url_private {
        fs.azure_url_private = false;
        subs.push(Substitution {
            what: format!("{} azure_url_private", sidecar_args::ENV_VAR),
            rendered: "true".into(),
            local: "false (the local store's URL carries a SAS)".into(),
        });
    }
    if args.azure_info.cinfer_workload_identity {
        args.azure_info.cinfer_workload_identity = false;
        subs.push(Substitution {
            what: format!("{} azure_info.cinfer_workload_identity", sidecar_args::ENV_VAR),
            rendered: "true".into(),
            local: "false (the local key broker and store take no Entra ID token)".into(),
        });
    }
    Ok((args, subs))
}

/// The rendered release policy with each `anyOf[].authority` pointed at the local attestation service.
pub fn localize_release_policy(policy: &Value, a: &Addresses) -> (Value, Vec<Substitution>) {
    let mut policy = policy.clone();
    let mut subs = Vec::new();
    if let Some(any) = policy.get_mut("anyOf").and_then(Value::as_array_mut) {
        for rule in any {
            if let Some(auth) = rule.get_mut("authority")
                && auth.as_str() != Some(&a.authority_url)
            {
                let sub = Substitution {
                    what: "release-policy.json anyOf[].authority".into(),
                    rendered: auth.as_str().unwrap_or_default().to_owned(),
                    local: a.authority_url.clone(),
                };
                // One clause per product floor, all with the same authority: say it once.
                if !subs.contains(&sub) {
                    subs.push(sub);
                }
                *auth = Value::String(a.authority_url.clone());
            }
        }
    }
    (policy, subs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{DeployConfig, render_aci};

    fn addresses() -> Addresses {
        Addresses {
            programs: vec![
                ("tritonserver".into(), "/w/tritonserver/bin/tritonserver".into()),
                ("cinfer-encfs".into(), "/t/cinfer-encfs".into()),
                ("cinfer-proxy".into(), "/t/cinfer-proxy".into()),
            ],
            blob_url: "http://127.0.0.1:10000/devstoreaccount1/models/model.img?sv=1&sig=SECRET".into(),
            authority_url: "http://127.0.0.1:9000".into(),
            mount_point: "/w/mnt/models".into(),
            model_server_port: 18000,
            proxy_port: 25006,
            health_port: 25021,
        }
    }

    fn platform() -> Platform {
        Platform {
            mock_root: "/w/mock".into(),
            host_data: "ab".repeat(32),
            measurement: "cd".repeat(48),
            ready_dir: "/w/ready".into(),
            backend_dir: "/w/tritonserver/backends".into(),
            triton_env: vec![("LD_LIBRARY_PATH".into(), "/x".into())],
            mock_gpu_dir: None,
        }
    }

    fn rendered() -> Vec<RenderedContainer> {
        let config = DeployConfig::example().unwrap();
        let bundle = render_aci(&config, None, None);
        let template: Value = serde_json::from_str(bundle.file("template.json").unwrap()).unwrap();
        aci_containers(&template, "template.json").unwrap()
    }

    fn subs(l: &LocalCommand) -> Vec<(String, String, String)> {
        l.substituted
            .iter()
            .map(|s| (s.what.clone(), s.rendered.clone(), s.local.clone()))
            .collect()
    }

    fn t(what: &str, rendered: &str, local: &str) -> (String, String, String) {
        (what.into(), rendered.into(), local.into())
    }

    /// The Kubernetes pod's containers, in order (init containers first), and the extracting init container
    /// localized with the ACI sidecar's substitutions plus Workload Identity off (the local broker takes no token).
    #[test]
    fn k8s_containers_localize_like_the_sidecar_plus_the_identity() {
        let config = DeployConfig::example().unwrap();
        let bundle = crate::render_k8s(&config, None, None).unwrap();
        let d: Value = serde_norway::from_str(bundle.file("deployment.yaml").unwrap()).unwrap();
        let c = k8s_containers(&d, "deployment.yaml").unwrap();
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["cinfer-init", "encfs-extract", "model-server", "proxy"]);
        assert_eq!(c[1].source, "deployment.yaml initContainers[1] \"encfs-extract\"");
        let (a, p) = (addresses(), platform());
        let extract = localize(&c[1], &a, &p).unwrap();
        assert_eq!(extract.args[0], "extract");
        let aci_sidecar = localize(&rendered()[1], &a, &p).unwrap();
        let mut want = subs(&aci_sidecar);
        want.push(t(
            "EncfsSideCarArgs azure_info.cinfer_workload_identity",
            "true",
            "false (the local key broker and store take no Entra ID token)",
        ));
        assert_eq!(subs(&extract), want);
        assert_eq!(extract.added, aci_sidecar.added);
        // The model server reads the extracted tree where the sidecar's mount was.
        assert_eq!(
            subs(&localize(&c[2], &a, &p).unwrap()),
            subs(&localize(&rendered()[0], &a, &p).unwrap())
        );
    }

    /// Exactly these values are substituted, and exactly these are added; everything else is as rendered.
    #[test]
    fn localize_substitutes_exactly_the_addresses() {
        let c = rendered();
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["model-server", "encfs", "proxy"]);
        let (a, p) = (addresses(), platform());

        let triton = localize(&c[0], &a, &p).unwrap();
        assert_eq!(
            subs(&triton),
            [
                t("program", "tritonserver", "/w/tritonserver/bin/tritonserver"),
                t("--model-repository", "/mnt/remote/models", "/w/mnt/models"),
                t("--http-port", "8000", "18000"),
            ]
        );
        assert_eq!(
            triton.args,
            [
                "--model-repository=/w/mnt/models",
                "--http-port=18000",
                "--http-address=127.0.0.1",
                "--allow-grpc=false",
                "--grpc-address=127.0.0.1",
                "--allow-metrics=false",
                "--exit-on-error=false",
                "--backend-directory=/w/tritonserver/backends",
            ]
        );
        assert_eq!(
            triton.added,
            [
                "--backend-directory=/w/tritonserver/backends",
                "LD_LIBRARY_PATH=<bundled Triton's>"
            ]
        );

        let encfs = localize(&c[1], &a, &p).unwrap();
        let url = "https://cinfermodels.blob.core.windows.net/models/resnet50.img";
        assert_eq!(
            subs(&encfs),
            [
                t("program", "/usr/local/bin/cinfer-encfs", "/t/cinfer-encfs"),
                t(
                    "EncfsSideCarArgs azure_url",
                    url,
                    "http://127.0.0.1:10000/devstoreaccount1/models/model.img?<redacted>"
                ),
                t("EncfsSideCarArgs mount_point", "/mnt/remote/models", "/w/mnt/models"),
                t(
                    "EncfsSideCarArgs key.authority.endpoint",
                    "sharedeus2.eus2.attest.azure.net",
                    "http://127.0.0.1:9000"
                ),
                t(
                    "EncfsSideCarArgs key.akv.endpoint",
                    "cinfer-kv.vault.azure.net",
                    "http://127.0.0.1:9000"
                ),
                t(
                    "EncfsSideCarArgs azure_url_private",
                    "true",
                    "false (the local store's URL carries a SAS)"
                ),
            ]
        );
        assert_eq!(encfs.args[0], "sidecar");
        assert!(
            !format!("{:?}", encfs.substituted).contains("SECRET"),
            "a SAS in a listing"
        );
        // The localized arguments are the rendered ones with only those four fields (and the SAS mode) changed.
        let rendered_args = EncfsSideCarArgs::from_env_value(&c[1].env[0].1).unwrap();
        let local_args = EncfsSideCarArgs::from_env_value(&encfs.env[0].1).unwrap();
        let mut expected = rendered_args;
        let fs = &mut expected.azure_filesystems[0];
        fs.azure_url = a.blob_url.clone();
        fs.mount_point = "/w/mnt/models".into();
        fs.key.authority.endpoint = a.authority_url.clone();
        fs.key.akv.endpoint = a.authority_url.clone();
        fs.azure_url_private = false;
        assert_eq!(local_args, expected);
        assert!(local_args.azure_filesystems[0].cinfer_expect_root.is_some());
        assert!(local_args.azure_filesystems[0].cinfer_signer_key.is_some());
        let added: Vec<&str> = encfs.added.iter().map(|s| s.split('=').next().unwrap()).collect();
        assert_eq!(
            added,
            [
                "--attester",
                "--mock-root-dir",
                "--mock-host-data",
                "--mock-measurement",
                "--ready-dir"
            ]
        );
        assert_eq!(
            encfs.args[1..],
            encfs.added[..],
            "only additions follow the rendered arguments"
        );
        assert_eq!(encfs.env.len(), 1, "the environment is the rendered one");

        let proxy = localize(&c[2], &a, &p).unwrap();
        assert_eq!(
            subs(&proxy),
            [
                t("program", "/usr/local/bin/cinfer-proxy", "/t/cinfer-proxy"),
                t("--listen", "0.0.0.0:15006", "127.0.0.1:25006"),
                t("--health", "0.0.0.0:15021", "127.0.0.1:25021"),
                t("--upstream", "127.0.0.1:8000", "127.0.0.1:18000"),
                t(
                    "--attestation-url",
                    "https://sharedeus2.eus2.attest.azure.net",
                    "http://127.0.0.1:9000"
                ),
            ]
        );
        assert_eq!(
            proxy.args[..5],
            [
                "server",
                "--listen=127.0.0.1:25006",
                "--health=127.0.0.1:25021",
                "--upstream=127.0.0.1:18000",
                "--attestation-url=http://127.0.0.1:9000"
            ]
        );
        assert_eq!(proxy.added.len(), 4);
    }

    /// With mock GPUs, the sidecar and the server proxy also get `--mock-gpu-dir`, listed as added; Triton does not.
    #[test]
    fn mock_gpus_are_added_to_the_attesting_containers_only() {
        let (a, p) = (addresses(), platform());
        let p = Platform {
            mock_gpu_dir: Some("/w/mock-gpu".into()),
            ..p
        };
        let c = rendered();
        for (i, with) in [(0, false), (1, true), (2, true)] {
            let l = localize(&c[i], &a, &p).unwrap();
            let flag = "--mock-gpu-dir=/w/mock-gpu".to_owned();
            assert_eq!(l.args.contains(&flag), with, "{}: {:?}", c[i].name, l.args);
            assert_eq!(l.added.contains(&flag), with, "{}", c[i].name);
        }
    }

    /// `--flag value` forms are substituted too; unknown programs are refused, not run as something else.
    #[test]
    fn localize_handles_split_flags_and_refuses_unknown_programs() {
        let (a, p) = (addresses(), platform());
        let c = RenderedContainer {
            name: "proxy".into(),
            source: "x".into(),
            command: ["cinfer-proxy", "server", "--listen", "0.0.0.0:1", "--keep", "v"]
                .map(String::from)
                .to_vec(),
            env: vec![("OTHER".into(), "kept".into())],
        };
        let l = localize(&c, &a, &p).unwrap();
        assert_eq!(l.args[..5], ["server", "--listen", "127.0.0.1:25006", "--keep", "v"]);
        assert_eq!(l.env[0], ("OTHER".into(), "kept".into()));
        let other = RenderedContainer {
            command: vec!["/bin/sh".into()],
            ..c
        };
        let e = localize(&other, &a, &p).unwrap_err().to_string();
        assert!(e.contains("/bin/sh"), "{e}");
    }

    #[test]
    fn release_policy_authority_is_the_local_service() {
        let attestation = crate::config::Attestation {
            authority: "maa.example".into(),
            min_tcb: crate::config::MinTcb::default(),
            allow_migration_agent: false,
        };
        let policy = crate::policy::release_policy(&attestation, crate::HostData([7; 32]));
        let (local, subs) = localize_release_policy(&policy, &addresses());
        assert_eq!(local["anyOf"][0]["authority"], "http://127.0.0.1:9000");
        assert_eq!(subs.len(), 1);
        let mut back = local;
        back["anyOf"][0]["authority"] = policy["anyOf"][0]["authority"].clone();
        assert_eq!(back, policy, "only the authority changed");
    }
}
