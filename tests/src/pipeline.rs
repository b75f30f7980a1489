//! The whole pipeline on one machine, stage by stage, each stage timed:
//!
//! 1. a Triton model repository with a real ONNX classifier (and optionally a ≥ 500 MiB variant);
//! 2. signed and encrypted into an image (`cinfer-mkimage build --sign-key`), root digest pinned;
//! 3. the attestation service + key broker (`cinfer-attest serve`, mock attester root trusted explicitly);
//! 4. the model key imported with a release policy for the expected hostdata H (the policy digest);
//! 5. the encfs sidecar (the seed's `EncfsSideCarArgs`): key release through attestation (mock evidence carrying
//!    the container's host_data), the FUSE mount pinned to the root, with the signature checked;
//! 6. Triton serving the repository from the mount (Python backend + onnxruntime);
//! 7. the attested TLS server proxy in front of Triton, and the client proxy with the client policy for H.
//!
//! [`Options`] can make the evidence or the client policy disagree with H, for the negative paths.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;

use crate::env::{bin, free_port, python, repo_root};
use crate::proc::{Proc, http_status, run, wait_for};
use crate::triton::{self, Triton};

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Also build `classifier_large` with this many MiB of weights (0: none).
    pub large_mb: u32,
    /// host_data the container's evidence carries (default: the expected H).
    pub evidence_host_data: Option<String>,
    /// hostdata the client policy pins (default: the expected H).
    pub client_host_data: Option<String>,
    /// Keep the work directory (print its path) instead of deleting it.
    pub keep: bool,
    /// Print stages as they finish.
    pub verbose: bool,
}

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
    /// Plaintext model repository (for reference outputs).
    pub models: PathBuf,
    /// The FUSE mount point.
    pub mount: PathBuf,
    /// The test input.
    pub input: PathBuf,
    /// Whether the key was released and the image mounted.
    pub mounted: bool,
    /// Attested TLS endpoint (server proxy), `127.0.0.1:port`.
    pub endpoint: String,
    /// Client proxy URL for `http_proxy`.
    pub http_proxy: String,
    /// Triton (direct access, for checks the client cannot do).
    pub triton: Triton,
    // Processes, stopped in reverse order on drop (fields drop in declaration order: proxies first).
    client_proxy: Proc,
    server_proxy: Proc,
    sidecar: Proc,
    _attest: Proc,
    _tmp: Option<tempfile::TempDir>,
}

/// The launch measurement of the (mock) confidential container; the attestation service lists it as a
/// compliant UVM, as MAA does for Azure's endorsed utility VM.
const MEASUREMENT: &str =
    "c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0";

fn hex64(s: &str) -> anyhow::Result<String> {
    let s = s.trim();
    if s.len() != 64 || hex::decode(s).is_err() {
        bail!("expected 64 hex digits, got {s:?}");
    }
    Ok(s.to_owned())
}

impl Pipeline {
    /// Runs every stage; returns with the client proxy ready to take requests.
    pub fn start(opts: &Options) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("cinfer-e2e.")
            .tempdir_in(work_parent())?;
        let work = tmp.path().to_path_buf();
        let logs = work.join("logs");
        std::fs::create_dir_all(&logs)?;
        let (py, mkimage, attest, encfs, proxy, deploy) = (
            python()?,
            bin("cinfer-mkimage")?,
            bin("cinfer-attest")?,
            bin("cinfer-encfs")?,
            bin("cinfer-proxy")?,
            bin("cinfer-deploy")?,
        );
        let mut stages = Vec::new();
        let mut stage = |name: &str, t: Instant| {
            let d = t.elapsed();
            if opts.verbose {
                eprintln!("   {name}: {:.2}s", d.as_secs_f64());
            }
            stages.push((name.to_owned(), d));
        };

        // 1. Model repository.
        let t = Instant::now();
        let models = work.join("models");
        let input = work.join("mug.npy");
        let mut cmd = Command::new(&py);
        cmd.arg(repo_root().join("tests/e2e/make_models.py"))
            .arg(&models)
            .arg("--input-npy")
            .arg(&input);
        if opts.large_mb > 0 {
            cmd.args(["--large-mb", &opts.large_mb.to_string()]);
        }
        run("make_models.py", &mut cmd)?;
        stage("model repository (onnx)", t);

        // 2. Sign + build the image.
        let t = Instant::now();
        let signer = work.join("signer.pem");
        let signer_pub = work.join("signer.pub.pem");
        run(
            "openssl genpkey",
            Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                ])
                .arg(&signer),
        )?;
        run(
            "openssl pkey -pubout",
            Command::new("openssl")
                .arg("pkey")
                .arg("-in")
                .arg(&signer)
                .arg("-pubout")
                .arg("-out")
                .arg(&signer_pub),
        )?;
        let image = work.join("model.img");
        let key = work.join("model.key");
        let out = run(
            "cinfer-mkimage build",
            Command::new(&mkimage)
                .arg("build")
                .arg(&models)
                .arg("-o")
                .arg(&image)
                .arg("--key-file")
                .arg(&key)
                .arg("--sign-key")
                .arg(&signer),
        )?;
        let root = hex64(out.lines().last().unwrap_or_default().trim_start_matches("root: "))?;
        stage("sign + encrypt (cinfer-mkimage build)", t);

        // 3. Attestation service + key broker.
        let t = Instant::now();
        let mock = work.join("mock");
        run(
            "cinfer-attest mock-init",
            Command::new(&attest).arg("mock-init").arg("--out").arg(&mock),
        )?;
        let admin = work.join("admin.token");
        let mut token = [0u8; 24];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut token)?;
        std::fs::write(&admin, hex::encode(token))?;
        let attest_port = free_port()?;
        let maa = format!("http://127.0.0.1:{attest_port}");
        let mut cmd = Command::new(&attest);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{attest_port}"))
            .arg("--state-dir")
            .arg(work.join("attest-state"))
            .arg("--trust-mock-root")
            .arg(mock.join("ark.pem"))
            .arg("--admin-token-file")
            .arg(&admin)
            .args(["--compliant-measurement", MEASUREMENT]);
        let mut attest_proc = Proc::spawn("attest", cmd, &logs)?;
        wait_for("the attestation service", Duration::from_secs(30), || {
            attest_proc.check_running()?;
            Ok(http_status(attest_port, "/certs") == Some(200))
        })?;
        stage("attestation service + key broker (cinfer-attest serve)", t);

        // 4. Policy digest H and key import with a release policy for H.
        let t = Instant::now();
        let policy = work.join("security-policy.rego");
        std::fs::write(
            &policy,
            format!("package policy\n# cinfer local deployment, image root {root}\nallow := true\n"),
        )?;
        let policy_b64 = work.join("security-policy.b64");
        std::fs::write(
            &policy_b64,
            base64::engine::general_purpose::STANDARD.encode(std::fs::read(&policy)?),
        )?;
        let hostdata = hex64(&run(
            "cinfer-deploy hostdata",
            Command::new(&deploy).arg("hostdata").arg(&policy_b64),
        )?)?;
        let release = work.join("release-policy.json");
        std::fs::write(
            &release,
            serde_json::json!({"version": "1.0.0", "anyOf": [{"authority": maa, "allOf": [
                {"claim": "x-ms-sevsnpvm-hostdata", "equals": hostdata},
                {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": "false"}]}]})
            .to_string(),
        )?;
        run(
            "cinfer-attest import-key",
            Command::new(&attest)
                .args(["import-key", "--vault", &maa, "--name", "model", "--key-file"])
                .arg(&key)
                .arg("--release-policy")
                .arg(&release)
                .arg("--token-file")
                .arg(&admin),
        )?;
        stage("key import with release policy for hostdata", t);

        // 5. The encfs sidecar with the seed's EncfsSideCarArgs: attested key release (mock evidence carrying the
        //    container's host_data), image opened with the root pinned and the signature checked, FUSE mount
        //    exposed atomically at the mount point.
        let t = Instant::now();
        let mount = work.join("mnt");
        let evidence_hd = opts.evidence_host_data.clone().unwrap_or_else(|| hostdata.clone());
        let args = serde_json::json!({"azure_filesystems": [{
            "azure_url": image.display().to_string(),
            "azure_url_private": false,
            "mount_point": mount.display().to_string(),
            "read_write": false,
            "key": {"kid": "model", "kty": "oct-HSM", "authority": {"endpoint": maa}, "akv": {"endpoint": maa}},
            "cinfer_expect_root": root,
            "cinfer_signer_key": signer_pub.display().to_string(),
        }]});
        let args_file = work.join("EncfsSideCarArgs.json");
        std::fs::write(&args_file, args.to_string())?;
        let ready = work.join("ready");
        let mut cmd = Command::new(&encfs);
        cmd.arg("sidecar")
            .arg("--args-file")
            .arg(&args_file)
            .args(["--attester", "mock", "--mock-root-dir"])
            .arg(&mock)
            .args([
                "--mock-host-data",
                &evidence_hd,
                "--mock-measurement",
                MEASUREMENT,
                "--ready-dir",
            ])
            .arg(&ready);
        let mut sidecar = Proc::spawn("encfs-sidecar", cmd, &logs)?;
        let mut exited = false;
        wait_for("the sidecar to mount or fail", Duration::from_secs(600), || {
            if ready.join("ready").exists() || ready.join("filesystem-0.failed").exists() {
                return Ok(true);
            }
            if sidecar.check_running().is_err() {
                exited = true;
                return Ok(true);
            }
            Ok(false)
        })?;
        let mounted = ready.join("ready").exists();
        if !mounted {
            if opts.verbose {
                let why = std::fs::read_to_string(ready.join("filesystem-0.failed")).unwrap_or_default();
                eprintln!("   sidecar did not mount (exited: {exited}): {}", why.trim());
            }
            // The model server still starts, on an empty repository: it must report the model not ready.
            std::fs::create_dir_all(&mount)?;
        }
        stage("encfs sidecar: attested key release + FUSE mount", t);

        // 6. Triton on the mount.
        let t = Instant::now();
        let triton = triton::start(&mount, &work, &logs)?;
        if mounted {
            wait_for("the classifier to be ready in Triton", Duration::from_secs(180), || {
                Ok(triton.model_ready("classifier"))
            })?;
            if opts.large_mb > 0 {
                wait_for("classifier_large to be ready", Duration::from_secs(600), || {
                    Ok(triton.model_ready("classifier_large"))
                })?;
            }
        }
        stage("Triton loads the model from the mount", t);

        // 7. Proxies.
        let t = Instant::now();
        let (sp, health, cp) = (free_port()?, free_port()?, free_port()?);
        let mut cmd = Command::new(&proxy);
        cmd.args([
            "server",
            "--listen",
            &format!("127.0.0.1:{sp}"),
            "--upstream",
            &format!("127.0.0.1:{}", triton.http_port),
        ])
        .args([
            "--health",
            &format!("127.0.0.1:{health}"),
            "--attestation-url",
            &maa,
            "--attester",
            "mock",
            "--mock-root",
        ])
        .arg(&mock)
        .args(["--mock-host-data", &evidence_hd, "--mock-measurement", MEASUREMENT]);
        let mut server_proxy = Proc::spawn("server-proxy", cmd, &logs)?;
        wait_for("the server proxy", Duration::from_secs(30), || {
            server_proxy.check_running()?;
            Ok(http_status(health, "/") == Some(200))
        })?;
        let client_policy = work.join("client-policy.json");
        let client_hd = opts.client_host_data.clone().unwrap_or_else(|| hostdata.clone());
        run(
            "cinfer-proxy generate-policy",
            Command::new(&proxy)
                .args(["generate-policy", "--hostdata", &client_hd, "-o"])
                .arg(&client_policy),
        )?;
        let mut cmd = Command::new(&proxy);
        cmd.args(["client", "--listen", &format!("127.0.0.1:{cp}"), "--policy"])
            .arg(&client_policy)
            .args(["--attestation-url", &maa]);
        let mut client_proxy = Proc::spawn("client-proxy", cmd, &logs)?;
        wait_for("the client proxy", Duration::from_secs(30), || {
            client_proxy.check_running()?;
            Ok(std::net::TcpStream::connect(("127.0.0.1", cp)).is_ok())
        })?;
        stage("attested TLS server proxy + client proxy", t);

        let keep = opts.keep;
        Ok(Self {
            stages,
            hostdata,
            root,
            work,
            models,
            mount,
            input,
            mounted,
            endpoint: format!("127.0.0.1:{sp}"),
            http_proxy: format!("http://127.0.0.1:{cp}"),
            triton,
            client_proxy,
            server_proxy,
            sidecar,
            _attest: attest_proc,
            _tmp: if keep {
                let _ = tmp.keep();
                None
            } else {
                Some(tmp)
            },
        })
    }

    /// Runs the e2e client (`tests/e2e/client.py`) with `args` through the client proxy; returns (success, stdout).
    pub fn client(&self, mode: &str, model: &str, extra: &[&str]) -> anyhow::Result<(bool, String)> {
        let labels = self.models.join(model).join("labels.txt");
        let reference = self.models.join(model).join("1/model.onnx");
        let out = Command::new(python()?)
            .arg(repo_root().join("tests/e2e/client.py"))
            .args([mode, "--url", &self.endpoint, "--model", model, "--input"])
            .arg(&self.input)
            .arg("--reference-onnx")
            .arg(&reference)
            .arg("--labels")
            .arg(&labels)
            .args(extra)
            .env("http_proxy", &self.http_proxy)
            .output()
            .context("running client.py")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// Peak and current RSS (KiB) of each long-running process of the pipeline.
    pub fn memory(&self) -> Vec<(String, Option<(u64, u64)>)> {
        let mut v = vec![
            ("attest".to_owned(), self._attest.memory_kib()),
            ("triton".to_owned(), self.triton.proc.memory_kib()),
            ("server-proxy".to_owned(), self.server_proxy.memory_kib()),
            ("client-proxy".to_owned(), self.client_proxy.memory_kib()),
        ];
        v.push(("encfs-sidecar".to_owned(), self.sidecar.memory_kib()));
        v
    }

    /// The log files of the pipeline's processes.
    pub fn logs(&self) -> PathBuf {
        self.work.join("logs")
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Triton holds files of the mount open: stop it before the sidecar unmounts (on SIGTERM).
        let _ = self.triton.proc.terminate(Duration::from_secs(10));
        let _ = self.sidecar.terminate(Duration::from_secs(20));
    }
}

/// Where work directories go: /dev/shm when it has room (the image then lives in RAM like a fast blob store).
fn work_parent() -> PathBuf {
    std::env::var_os("CINFER_E2E_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}
