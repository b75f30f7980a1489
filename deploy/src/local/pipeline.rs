//! The whole pipeline on this machine, stage by stage, each stage timed:
//!
//! 1. a Triton model repository: the example (a real ONNX classifier, optionally a large variant) or the user's;
//! 2. signed and encrypted into an image (`cinfer-mkimage build --sign-key`), root digest pinned;
//! 3. the image in a blob store: uploaded to Azurite (`cinfer-mkimage upload`), or a local HTTP range server;
//! 4. the attestation service + key broker (`cinfer-attest serve`, mock attester root trusted explicitly);
//! 5. the deployment rendered (`render aci` of the example config or the user's, pinned to this image and its
//!    signer) into `work/rendered/`, and the model key imported with its release policy for the hostdata H;
//! 6. the rendered `encfs` container: key release through attestation (mock evidence carrying the container's
//!    host_data), the FUSE mount of the image's URL, root pinned and signature checked as rendered; with
//!    [`Layout::K8s`], the rendered Kubernetes pod's init container `encfs-extract` instead, run to its end: the
//!    same steps, then the verified files written into the model volume (no FUSE);
//! 7. the rendered `model-server` container: Triton serving the repository from the mount (Python backend, and
//!    a Python-based onnxruntime backend for standard ONNX models); a model that fails to load is reported;
//! 8. the rendered `proxy` container (attested TLS in front of Triton), and the client proxy with the rendered
//!    client policy for H.
//!
//! The rendered containers run with only their addresses changed ([`super::rendered::localize`]).
//!
//! With [`Options::gpus`] the confidential container has mock GPUs: the service trusts their root and uses their
//! collateral, the key's release policy and the client policy require them (at least that many, CC mode on, no
//! DevTools, measurements matched), the sidecar and the server proxy send composite evidence, and stage 5 also
//! shows a composite token's GPU claims and the key refused to the same guest without GPU evidence
//! ([`Pipeline::gpu`]).
//!
//! [`Options`] can make the evidence or the client policy disagree with H, for the negative paths. Dropping a
//! [`Pipeline`] (or [`Pipeline::shutdown`]) stops everything in reverse order: the proxies, Triton (it holds
//! files of the mount open), the sidecar (SIGTERM: it unmounts), the attestation service, the store.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::env::{bin, port_or_free, python};
use super::error::{LocalError, Result};
use super::proc::{Proc, run};
pub use super::rendered::Layout;
use super::rendered::{Addresses, LocalCommand, Platform, localize, localize_release_policy};
use super::scripts;
use super::shutdown::Cancel;
use super::stages::image::{self, ExampleInput};
use super::stages::keys::{self, Authority};
use super::stages::proxies::{self, ClientPolicy, Proxies, ProxyInput};
use super::stages::render;
use super::stages::sidecar::{self, Sidecar};
use super::stages::store::{self, Store, Stored};
use super::stages::{Ctx, MEASUREMENT, hex64};
use super::triton::Triton;

/// Where the encrypted image is served from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageStore {
    /// Azurite (Azure Blob API), uploaded with `cinfer-mkimage upload`; the sidecar reads it with a read SAS.
    #[default]
    Azurite,
    /// A local HTTP server with Range support (what a web server or a presigned URL gives).
    Http,
}

/// Fixed ports on 127.0.0.1; 0 picks a free one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ports {
    /// Attestation service + key broker.
    pub attest: u16,
    /// Image store (Azurite or the range server).
    pub store: u16,
    /// Model server HTTP (KServe V2), the proxy's upstream.
    pub model_server: u16,
    /// Server proxy, attested TLS: where requests are sent.
    pub server_proxy: u16,
    /// Server proxy health.
    pub health: u16,
    /// Client proxy: the `http_proxy` of clients.
    pub client_proxy: u16,
}

/// A stage starting or finished, for progress display.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum StageEvent {
    /// Stage `index` of `total` starts.
    Start {
        /// 1-based position.
        index: usize,
        /// Number of stages.
        total: usize,
        /// What it does.
        name: &'static str,
    },
    /// The stage ended after `took`.
    Done {
        /// What it did.
        name: &'static str,
        /// How long it took.
        took: Duration,
    },
    /// Triton marked a model unavailable.
    ModelFailed {
        /// The model.
        name: String,
        /// Triton's reason.
        reason: String,
    },
}

/// A process of the pipeline started from the rendered deployment.
#[derive(Clone, Debug)]
pub struct Launched {
    /// The process's name in the logs.
    pub process: String,
    /// The rendered container it came from, e.g. `template.json containers[1] "encfs"`.
    pub source: String,
    /// What was substituted (addresses only).
    pub substituted: Vec<super::rendered::Substitution>,
    /// What this machine added (the mock attester, ...).
    pub added: Vec<String>,
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(&StageEvent) + Send + Sync>;

/// What to run.
#[derive(Clone, Default)]
pub struct Options {
    /// Also build `classifier_large` with this many MiB of weights (0: none). Ignored with `models`.
    pub large_mb: u32,
    /// Serve this Triton model repository instead of generating the example.
    pub models: Option<PathBuf>,
    /// Where the image is served from.
    pub store: ImageStore,
    /// Work directory (created; kept). Default: a fresh temporary directory under `CINFER_E2E_DIR` or the
    /// system's, removed on drop unless `keep`.
    pub work_dir: Option<PathBuf>,
    /// Keep the temporary work directory.
    pub keep: bool,
    /// Fixed ports.
    pub ports: Ports,
    /// host_data the container's evidence carries (default: the expected H).
    pub evidence_host_data: Option<String>,
    /// hostdata the client policy pins (default: the expected H).
    pub client_host_data: Option<String>,
    /// The deployment config to render (TOML or YAML); None: the example config.
    pub config: Option<PathBuf>,
    /// Which rendered deployment runs.
    pub layout: Layout,
    /// Mock GPUs in the confidential container (0: none); the key and the client then require them.
    pub gpus: u32,
    /// Set to stop a start in progress.
    pub cancel: Cancel,
    /// Called when a stage starts and ends.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("large_mb", &self.large_mb)
            .field("models", &self.models)
            .field("store", &self.store)
            .field("work_dir", &self.work_dir)
            .field("keep", &self.keep)
            .field("ports", &self.ports)
            .field("evidence_host_data", &self.evidence_host_data)
            .field("client_host_data", &self.client_host_data)
            .field("config", &self.config)
            .field("layout", &self.layout)
            .field("gpus", &self.gpus)
            .finish_non_exhaustive()
    }
}

const STAGES: [&str; 8] = [
    "model repository",
    "sign + encrypt (cinfer-mkimage build)",
    "image store: Azurite + upload (cinfer-mkimage upload)",
    "attestation service + key broker (cinfer-attest serve)",
    "render the deployment + key import with its release policy",
    "encfs sidecar: attested key release + FUSE mount",
    "Triton loads the model repository",
    "attested TLS server proxy + client proxy",
];

/// A running pipeline. Dropping it stops every process and unmounts.
pub struct Pipeline {
    /// Stage names and durations, in order.
    pub stages: Vec<(String, Duration)>,
    /// The expected policy digest (hostdata).
    pub hostdata: String,
    /// The image's root digest.
    pub root: String,
    /// Work directory.
    pub work: PathBuf,
    /// The plaintext model repository.
    pub models: PathBuf,
    /// Names of its models.
    pub model_names: Vec<String>,

    /// Models Triton marked unavailable, with its reason.
    pub failed_models: Vec<(String, String)>,
    /// The rendered deployment (`work/rendered`).
    pub rendered: PathBuf,
    /// Which rendered deployment runs.
    pub layout: Layout,
    /// What local mode set in the config before rendering (the pin and signer of the image built here).
    pub config_notes: Vec<String>,
    /// The processes started from the rendered deployment.
    pub launched: Vec<Launched>,
    /// The example's input (None with a user repository).
    pub example: Option<ExampleInput>,
    /// The mount point Triton reads.
    pub mount: PathBuf,
    /// Whether the key was released and the image mounted.
    pub mounted: bool,
    /// Why not, when not.
    pub mount_failure: Option<String>,
    /// The image's URL (query removed) and size.
    pub image_url: String,
    /// Image size in bytes.
    pub image_size: u64,
    /// The image's ETag in the store (empty for the range server).
    pub image_etag: String,
    /// Attested TLS endpoint (server proxy), `127.0.0.1:port`.
    pub endpoint: String,
    /// Client proxy URL for `http_proxy`.
    pub http_proxy: String,
    /// `client.py` in the work directory.
    pub client_script: PathBuf,
    /// The Python interpreter with tritonclient.
    pub python: PathBuf,
    /// With [`Options::gpus`]: the GPU conditions, a composite token's GPU claims, and the refusal without GPUs.
    pub gpu: Option<keys::GpuCheck>,
    // Processes, stopped in this order by `stop_all`.
    proxies: Option<Proxies>,
    triton: Option<Triton>,
    sidecar: Option<Sidecar>,
    authority: Option<Authority>,
    store: Option<Stored>,
    tmp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("work", &self.work)
            .field("endpoint", &self.endpoint)
            .field("http_proxy", &self.http_proxy)
            .field("mounted", &self.mounted)
            .finish_non_exhaustive()
    }
}

/// Partly started processes, stopped in the right order if a later stage fails.
#[derive(Default)]
struct Partial {
    proxies: Option<Proxies>,
    triton: Option<Triton>,
    sidecar: Option<Sidecar>,
    authority: Option<Authority>,
    store: Option<Stored>,
}

impl Drop for Partial {
    fn drop(&mut self) {
        stop_in_order(
            &mut self.proxies,
            &mut self.triton,
            &mut self.sidecar,
            &mut self.authority,
            &mut self.store,
        );
    }
}

fn stop_in_order(
    proxies: &mut Option<Proxies>,
    triton: &mut Option<Triton>,
    sidecar: &mut Option<Sidecar>,
    authority: &mut Option<Authority>,
    store: &mut Option<Stored>,
) {
    if let Some(mut p) = proxies.take() {
        let _ = p.client.stop();
        let _ = p.server.stop();
    }
    if let Some(mut t) = triton.take() {
        let _ = t.proc_mut().stop();
    }
    if let Some(mut s) = sidecar.take().and_then(|s| s.proc) {
        match s.stop() {
            Ok(st) if !st.success() => warn!(status = %st, "the encfs sidecar stopped with an error"),
            _ => {}
        }
    }
    if let Some(mut a) = authority.take() {
        let _ = a.proc.stop();
    }
    drop(store.take());
}

struct Timer {
    stages: Vec<(String, Duration)>,
    progress: Option<ProgressFn>,
    cancel: Cancel,
}

impl Timer {
    fn run<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.cancel.is_cancelled() {
            return Err(LocalError::Interrupted);
        }
        let index = self.stages.len() + 1;
        if let Some(p) = &self.progress {
            p(&StageEvent::Start {
                index,
                total: STAGES.len(),
                name,
            });
        }
        info!(stage = name, "starting");
        let t = Instant::now();
        let out = f()?;
        let took = t.elapsed();
        info!(stage = name, secs = took.as_secs_f64(), "done");
        if let Some(p) = &self.progress {
            p(&StageEvent::Done { name, took });
        }
        self.stages.push((name.to_owned(), took));
        Ok(out)
    }
}

impl Pipeline {
    /// Runs every stage; returns with the client proxy ready to take requests.
    pub fn start(opts: &Options) -> Result<Self> {
        check_ports(&opts.ports)?;
        let (work, tmp) = match &opts.work_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(LocalError::io(format!("creating {}", dir.display())))?;
                let dir = std::fs::canonicalize(dir).map_err(LocalError::io(format!("resolving {}", dir.display())))?;
                (dir, None)
            }
            None => {
                let parent = std::env::var_os("CINFER_E2E_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(std::env::temp_dir);
                let tmp = tempfile::Builder::new()
                    .prefix("cinfer-local.")
                    .tempdir_in(&parent)
                    .map_err(LocalError::io(format!(
                        "creating a work directory in {}",
                        parent.display()
                    )))?;
                (tmp.path().to_path_buf(), Some(tmp))
            }
        };
        clear_previous_run(&work, opts.models.is_none())?;
        let logs = work.join("logs");
        std::fs::create_dir_all(&logs).map_err(LocalError::io(format!("creating {}", logs.display())))?;
        let ctx = Ctx {
            python: python()?,
            mkimage: bin("cinfer-mkimage")?,
            attest: bin("cinfer-attest")?,
            encfs: bin("cinfer-encfs")?,
            proxy: bin("cinfer-proxy")?,
            work: work.clone(),
            logs,
            cancel: opts.cancel.clone(),
        };
        let (make_models, client_script) = scripts::write(&work)?;
        let mut timer = Timer {
            stages: Vec::new(),
            progress: opts.progress.clone(),
            cancel: opts.cancel.clone(),
        };
        let mut up = Partial::default();

        let (models, example) = timer.run(STAGES[0], || match &opts.models {
            Some(dir) => Ok((
                std::fs::canonicalize(dir).map_err(LocalError::io(format!("resolving {}", dir.display())))?,
                None,
            )),
            None => image::make_example(&ctx, &make_models, opts.large_mb).map(|(m, i)| (m, Some(i))),
        })?;
        let model_names = image::model_names(&models)?;
        let img = timer.run(STAGES[1], || image::build(&ctx, &models))?;
        let stored = match opts.store {
            ImageStore::Azurite => timer.run(STAGES[2], || store::azurite(&ctx, &img.path, opts.ports.store))?,
            ImageStore::Http => timer.run("image store: local HTTP range server", || {
                store::http(&img.path, opts.ports.store)
            })?,
        };
        let (url, image_url, image_size, image_etag) =
            (stored.url.clone(), stored.shown_url(), stored.size, stored.etag.clone());
        up.store = Some(stored);
        let authority = timer.run(STAGES[3], || keys::start_authority(&ctx, opts.ports.attest, opts.gpus))?;
        let (authority_url, mock, mock_gpu) = (
            authority.url.clone(),
            authority.mock.clone(),
            authority.mock_gpu.clone(),
        );
        up.authority = Some(authority);
        let mut gpu = None;
        let rendered = timer.run(STAGES[4], || {
            let r = render::render(&ctx, opts.config.as_deref(), &img.root, &img.signer_pub, opts.layout)?;
            let mut policy = localize_release_policy(
                &r.json("release-policy.json")?,
                &Addresses {
                    authority_url: authority_url.clone(),
                    ..Default::default()
                },
            )
            .0;
            let conditions = match opts.gpus {
                0 => Vec::new(),
                n => keys::require_gpus(&mut policy, n)?,
            };
            let release = work.join("release-policy.json");
            std::fs::write(&release, policy.to_string())
                .map_err(LocalError::io(format!("writing {}", release.display())))?;
            if let Some(a) = &up.authority {
                keys::import_key(&ctx, a, &r.config.model.key_id, &img.key, &release)?;
                if opts.gpus > 0 {
                    let host_data = opts.evidence_host_data.clone().unwrap_or_else(|| r.hostdata.clone());
                    let mut check = keys::gpu_check(&ctx, a, &r.config.model.key_id, &host_data)?;
                    check.conditions = conditions;
                    gpu = Some(check);
                }
            }
            Ok(r)
        })?;
        let hostdata = rendered.hostdata.clone();
        let evidence_hd = opts.evidence_host_data.clone().unwrap_or_else(|| hostdata.clone());
        let client_hd = opts.client_host_data.clone();
        let leaf = Path::new(&rendered.config.model.mount_point)
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "models".into());
        let addresses = Addresses {
            programs: vec![
                ("tritonserver".into(), work.join("tritonserver/bin/tritonserver")),
                ("cinfer-encfs".into(), ctx.encfs.clone()),
                ("cinfer-proxy".into(), ctx.proxy.clone()),
            ],
            blob_url: url,
            authority_url: authority_url.clone(),
            mount_point: work.join("mnt").join(leaf),
            model_server_port: port_or_free(opts.ports.model_server, "model server HTTP")?,
            proxy_port: port_or_free(opts.ports.server_proxy, "server proxy")?,
            health_port: port_or_free(opts.ports.health, "server proxy health")?,
        };
        let mut platform = Platform {
            mock_root: mock,
            mock_gpu_dir: mock_gpu,
            host_data: evidence_hd,
            measurement: MEASUREMENT.to_owned(),
            ready_dir: work.join("ready"),
            ..Default::default()
        };
        let mut launched = Vec::new();
        let mut launch = |process: &str, cmd: &LocalCommand| {
            launched.push(Launched {
                process: process.to_owned(),
                source: format!("{}/{}", rendered.dir.display(), cmd.source),
                substituted: cmd.substituted.clone(),
                added: cmd.added.clone(),
            });
        };
        let sc = match opts.layout {
            Layout::Aci => timer.run(STAGES[5], || {
                let cmd = localize(rendered.container("encfs")?, &addresses, &platform)?;
                launch("encfs-sidecar", &cmd);
                sidecar::start(&ctx, &cmd, addresses.mount_point.clone(), platform.ready_dir.clone())
            })?,
            Layout::K8s => timer.run(
                "encfs-extract (init container): attested key release + verified extraction",
                || {
                    let cmd = localize(rendered.container("encfs-extract")?, &addresses, &platform)?;
                    launch("encfs-extract", &cmd);
                    sidecar::extract(&ctx, &cmd, addresses.mount_point.clone(), platform.ready_dir.clone())
                },
            )?,
        };
        let (mount, mounted, mount_failure) = (sc.mount.clone(), sc.mounted, sc.failure.clone());
        if let Some(why) = &mount_failure {
            warn!(%why, "the sidecar did not mount the image");
        }
        up.sidecar = Some(sc);
        let progress = opts.progress.clone();
        let (triton, failed_models) = timer.run(STAGES[6], || {
            let (dir, env) = super::triton::prepare(&work)?;
            platform.backend_dir = dir.join("backends");
            platform.triton_env = env;
            let cmd = localize(rendered.container("model-server")?, &addresses, &platform)?;
            launch("triton", &cmd);
            let mut triton = Triton::start(&cmd, addresses.model_server_port, &ctx.logs, &ctx.cancel)?;
            let mut failed = Vec::new();
            if mounted {
                failed = triton.wait_models(&model_names, Duration::from_secs(600), &ctx.cancel, |name, reason| {
                    info!(model = name, %reason, "Triton could not load the model");
                    if let Some(p) = &progress {
                        p(&StageEvent::ModelFailed {
                            name: name.to_owned(),
                            reason: reason.to_owned(),
                        });
                    }
                })?;
            }
            Ok((triton, failed))
        })?;
        up.triton = Some(triton);
        let client_policy_file = match opts.gpus {
            0 => rendered.dir.join("client-policy-hostdata.json"),
            n => gpu_client_policy(&rendered.dir.join("client-policy-hostdata.json"), n, &work)?,
        };
        let proxies = timer.run(STAGES[7], || {
            let cmd = localize(rendered.container("proxy")?, &addresses, &platform)?;
            launch("server-proxy", &cmd);
            proxies::start(
                &ctx,
                &ProxyInput {
                    server: &cmd,
                    server_port: addresses.proxy_port,
                    health_port: addresses.health_port,
                    client_port: opts.ports.client_proxy,
                    authority: &authority_url,
                    client_policy: match &client_hd {
                        Some(h) => ClientPolicy::HostData(h),
                        None => ClientPolicy::File(&client_policy_file),
                    },
                },
            )
        })?;
        let (endpoint, http_proxy) = (
            format!("127.0.0.1:{}", proxies.server_port),
            format!("http://127.0.0.1:{}", proxies.client_port),
        );
        up.proxies = Some(proxies);

        let tmp = match tmp {
            Some(t) if opts.keep => {
                let _ = t.keep();
                None
            }
            other => other,
        };
        Ok(Self {
            stages: timer.stages,
            hostdata: hex64("hostdata", &hostdata)?,
            root: img.root,
            work,
            models,
            model_names,
            failed_models,
            rendered: rendered.dir.clone(),
            layout: opts.layout,
            config_notes: rendered.notes.clone(),
            launched,
            example,
            mount,
            mounted,
            mount_failure,
            image_url,
            image_size,
            image_etag,
            endpoint,
            http_proxy,
            client_script,
            python: ctx.python,
            proxies: up.proxies.take(),
            triton: up.triton.take(),
            sidecar: up.sidecar.take(),
            authority: up.authority.take(),
            gpu,
            store: up.store.take(),
            tmp,
        })
    }

    /// Runs `client.py MODE` against `model` through the client proxy (`http_proxy`), with the example's input
    /// and, for `infer`, the plaintext model as reference; returns (success, stdout + stderr).
    pub fn client(&self, mode: &str, model: &str, extra: &[&str]) -> Result<(bool, String)> {
        let Some(example) = &self.example else {
            return Err(LocalError::NoModels(self.models.clone()));
        };
        self.client_on(mode, model, &example.npy, extra)
    }

    /// [`Pipeline::client`] with a given `.npy` input (for a user's repository of the example's shape).
    pub fn client_on(&self, mode: &str, model: &str, input: &Path, extra: &[&str]) -> Result<(bool, String)> {
        let mut cmd = self.client_command(mode, model, input);
        cmd.arg("--reference-onnx")
            .arg(self.models.join(model).join("1/model.onnx"))
            .args(extra);
        let out = cmd.output().map_err(|source| LocalError::Spawn {
            name: "client.py".into(),
            source,
        })?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    /// One example inference of `model` as a user would run it (no reference): the result line,
    /// e.g. `1.000000 (1) = COFFEE MUG`.
    pub fn example_inference(&self, model: &str) -> Result<String> {
        let Some(example) = &self.example else {
            return Err(LocalError::NoModels(self.models.clone()));
        };
        let out = run(
            "client.py infer",
            &mut self.client_command("infer", model, &example.npy),
        )?;
        Ok(out.lines().next().unwrap_or_default().to_owned())
    }

    fn client_command(&self, mode: &str, model: &str, input: &Path) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.client_script)
            .args([mode, "--url", &self.endpoint, "--model", model, "--input"])
            .arg(input)
            .arg("--labels")
            .arg(self.models.join(model).join("labels.txt"))
            .env("http_proxy", &self.http_proxy);
        cmd
    }

    /// The shell command a user runs for an inference with the example's client.
    pub fn client_shell_command(&self, model: &str) -> Option<String> {
        let example = self.example.as_ref()?;
        Some(format!(
            "http_proxy={} {} {} infer --url {} --model {model} --input {} --labels {}",
            self.http_proxy,
            self.python.display(),
            self.client_script.display(),
            self.endpoint,
            example.npy.display(),
            self.models.join(model).join("labels.txt").display()
        ))
    }

    /// The curl command of a KServe V2 inference (the example's JSON request) through the client proxy.
    pub fn curl_command(&self, model: &str) -> String {
        match &self.example {
            Some(example) => format!(
                "curl -s --proxy {} -H 'Content-Type: application/json' -d @{} http://{}/v2/models/{model}/infer",
                self.http_proxy,
                example.json.display(),
                self.endpoint
            ),
            None => format!(
                "curl -s --proxy {} http://{}/v2/models/{model}",
                self.http_proxy, self.endpoint
            ),
        }
    }

    /// A GET of `path` on the attested endpoint through the client proxy (absolute-form, as `http_proxy` clients
    /// send it): what a client sees.
    pub fn get_through_proxies(&self, path: &str) -> Result<super::http::Response> {
        let port = self
            .http_proxy
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| LocalError::Unexpected {
                what: "client proxy URL".into(),
                got: self.http_proxy.clone(),
            })?;
        let target = format!("http://{}{path}", self.endpoint);
        super::http::send(
            port,
            &super::http::Request {
                method: "GET",
                target: &target,
                headers: &[],
                body: super::http::Body::Bytes(&[]),
            },
            Duration::from_secs(30),
        )
    }

    /// Fails if a process of the pipeline has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(p) = &mut self.proxies {
            p.client.check_running()?;
            p.server.check_running()?;
        }
        if let Some(t) = &mut self.triton {
            t.proc_mut().check_running()?;
        }
        if let Some(p) = self.sidecar.as_mut().and_then(|s| s.proc.as_mut())
            && self.mounted
        {
            p.check_running()?;
        }
        if let Some(a) = &mut self.authority {
            a.proc.check_running()?;
        }
        if let Some(Stored {
            store: Store::Azurite(az),
            ..
        }) = &mut self.store
        {
            az.check_running()?;
        }
        Ok(())
    }

    /// The model server (direct access, for checks a client cannot do).
    pub fn triton(&self) -> Option<&Triton> {
        self.triton.as_ref()
    }

    /// Pids and names of the pipeline's running processes.
    pub fn processes(&self) -> Vec<(&str, u32)> {
        self.procs().into_iter().map(|p| (p.name(), p.pid())).collect()
    }

    fn procs(&self) -> Vec<&Proc> {
        let mut v = Vec::new();
        if let Some(Stored {
            store: Store::Azurite(az),
            ..
        }) = &self.store
        {
            v.push(az.proc());
        }
        if let Some(a) = &self.authority {
            v.push(&a.proc);
        }
        if let Some(p) = self.sidecar.as_ref().and_then(|s| s.proc.as_ref()) {
            v.push(p);
        }
        if let Some(t) = &self.triton {
            v.push(t.proc());
        }
        if let Some(p) = &self.proxies {
            v.push(&p.server);
            v.push(&p.client);
        }
        v
    }

    /// Peak and current RSS (KiB) of each long-running process of the pipeline.
    pub fn memory(&self) -> Vec<(String, Option<(u64, u64)>)> {
        self.procs()
            .into_iter()
            .map(|p| (p.name().to_owned(), p.memory_kib()))
            .collect()
    }

    /// The log directory.
    pub fn logs(&self) -> PathBuf {
        self.work.join("logs")
    }

    /// Stops everything in order and checks that nothing is left mounted under the work directory (a leftover
    /// mount is detached lazily and reported as an error).
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_all();
        let left = mounts_under(&self.work);
        if left.is_empty() {
            return Ok(());
        }
        for m in &left {
            let _ = Command::new("fusermount3").args(["-u", "-z"]).arg(m).output();
        }
        Err(LocalError::Unexpected {
            what: "shutdown (mounts left after the sidecar stopped)".into(),
            got: format!("{left:?}"),
        })
    }

    fn stop_all(&mut self) {
        stop_in_order(
            &mut self.proxies,
            &mut self.triton,
            &mut self.sidecar,
            &mut self.authority,
            &mut self.store,
        );
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop_all();
        for m in mounts_under(&self.work) {
            warn!(mount = %m.display(), "still mounted after the sidecar stopped: detaching");
            let _ = Command::new("fusermount3").args(["-u", "-z"]).arg(&m).output();
        }
        drop(self.tmp.take());
    }
}

/// The rendered client policy with the GPU conditions for `gpus` GPUs added, written to `work`.
fn gpu_client_policy(rendered: &Path, gpus: u32, work: &Path) -> Result<PathBuf> {
    let text = std::fs::read(rendered).map_err(LocalError::io(format!("reading {}", rendered.display())))?;
    let mut policy: serde_json::Value = serde_json::from_slice(&text).map_err(|e| LocalError::Unexpected {
        what: rendered.display().to_string(),
        got: e.to_string(),
    })?;
    crate::policy::add_gpu_claims(&mut policy, &attest::gpu::requirement::GpuRequirement::gpus(gpus)).map_err(|e| {
        LocalError::Unexpected {
            what: "the GPU requirement".into(),
            got: e.to_string(),
        }
    })?;
    let out = work.join("client-policy-gpu.json");
    std::fs::write(&out, serde_json::to_string_pretty(&policy).unwrap_or_default())
        .map_err(LocalError::io(format!("writing {}", out.display())))?;
    Ok(out)
}

/// What a previous run in the same `--work` directory left and this one makes anew: keys, image, store data,
/// broker state, ready files, and the generated example repository when it is generated again (a previous
/// `--large-mb` model must not linger). The Triton copy and the logs (appended) stay. A mount still there is an
/// error.
fn clear_previous_run(work: &Path, generate: bool) -> Result<()> {
    let mounted = mounts_under(work);
    if !mounted.is_empty() {
        return Err(LocalError::Unexpected {
            what: format!("work directory {}", work.display()),
            got: format!("still mounted by an earlier run: {mounted:?} (fusermount3 -u them)"),
        });
    }
    let generated: &[&str] = if generate { &["models"] } else { &[] };
    for name in ["ready", "azurite", "attest-state", "mock", "mock-gpu"]
        .iter()
        .chain(generated)
    {
        let p = work.join(name);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).map_err(LocalError::io(format!("removing {}", p.display())))?;
        }
    }
    for name in ["model.img", "model.key", "signer.pem", "signer.pub.pem", "admin.token"] {
        let p = work.join(name);
        if p.is_file() {
            std::fs::remove_file(&p).map_err(LocalError::io(format!("removing {}", p.display())))?;
        }
    }
    Ok(())
}

/// Fails fast, before any stage runs, when a fixed port is taken or given twice.
fn check_ports(p: &Ports) -> Result<()> {
    let fixed = [
        (p.attest, "attestation service"),
        (p.store, "image store"),
        (p.model_server, "model server HTTP"),
        (p.server_proxy, "server proxy"),
        (p.health, "server proxy health"),
        (p.client_proxy, "client proxy"),
    ];
    for (i, &(port, what)) in fixed.iter().enumerate() {
        if port == 0 {
            continue;
        }
        if let Some((_, other)) = fixed[..i].iter().find(|(q, _)| *q == port) {
            return Err(LocalError::PortInUse {
                port,
                what: format!("{what}, also given for the {other}"),
            });
        }
        port_or_free(port, what)?;
    }
    Ok(())
}

/// Mount points at or under `dir` (from `/proc/self/mountinfo`).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect()
}
