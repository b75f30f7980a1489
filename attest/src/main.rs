//! `cinfer-attest`: command-line entry point.

mod cli;
mod gpu_cmd;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, bail};
use attest::aci::{AciEvidence, verify_aci};
use attest::appraisal::{Appraisal, MinimumTcb};
use attest::client::{AttestationClient, KeyRef, KeyReleaseClient, ResponseVerification, VaultAuth};
use attest::collateral::{Collateral, CollateralBuilder};
use attest::credential::{Credential, TokenProvider, WorkloadIdentity};
use attest::endorsement::{UvmIssuer, UvmTrust};
use attest::evidence::{
    Attester, CompositeAttester, HostSources, MockAttester, MockConfig, MockRoot, SnpDeviceAttester,
};
use attest::gpu::GpuTrust;
use attest::gpu::collateral::GpuCollateral;
use attest::gpu::mock::{self, MockGpuAttester, MockGpuConfig};
use attest::keywrap::KeyDerivation;
use attest::report::Generation;
use attest::secret::SecretBytes;
use attest::service::{GpuServiceConfig, ServiceConfig};
use attest::tls::{ServerTls, TlsTrust};
use attest::verify::{CertChain, TrustStore, VerifyOptions, maa_report_data};
use clap::Parser;
use cli::{
    AppraisalArgs, AttesterArgs, AttesterKind, Cli, ClientTlsArgs, CollateralCommand, Command, GenerationArg,
    LogFormat, MockArgs, ServeArgs,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cinfer-attest: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CINFER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")
}

fn hex_array<const N: usize>(s: &str, what: &str) -> anyhow::Result<[u8; N]> {
    let v = hex::decode(s.trim()).with_context(|| format!("{what}: not hex"))?;
    v.try_into()
        .map_err(|v: Vec<u8>| anyhow::anyhow!("{what}: {} bytes, expected {N}", v.len()))
}

/// A bearer token (admin token, AAD token) from a file, surrounding whitespace removed; at least
/// [`attest::service::MIN_ADMIN_TOKEN_BYTES`] bytes.
fn read_token_file(path: &Path, option: &str) -> anyhow::Result<SecretBytes> {
    let t =
        zeroize::Zeroizing::new(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?);
    let token = SecretBytes::from_slice(t.trim().as_bytes());
    let min = attest::service::MIN_ADMIN_TOKEN_BYTES;
    if token.len() < min {
        bail!(
            "{option} {}: a token of {} bytes; at least {min} are required (for example `head -c 24 /dev/urandom | \
             base64 > FILE`)",
            path.display(),
            token.len()
        );
    }
    Ok(token)
}

/// Refuses plain `http://` to a non-loopback `endpoint` unless `--dangerously-allow-plain-http` was given.
fn check_endpoint(option: &str, endpoint: &str, tls: &ClientTlsArgs) -> anyhow::Result<()> {
    attest::transport::check_endpoint(option, endpoint, tls.dangerously_allow_plain_http)
        .map_err(|e| anyhow::anyhow!("{e} (--dangerously-allow-plain-http)"))
}

/// Which `https://` servers a client trusts (`--tls-ca`, `--tls-pin-cert`, `--tls-pin-sha256`; default the
/// system's CA certificates).
fn client_tls(a: &ClientTlsArgs) -> anyhow::Result<TlsTrust> {
    Ok(match (&a.tls_ca, &a.tls_pin_cert, &a.tls_pin_sha256) {
        (Some(ca), _, _) => TlsTrust::CaCerts(attest::tls::read_certificates(ca)?),
        (None, Some(cert), _) => {
            let mut certs = attest::tls::read_certificates(cert)?;
            if certs.len() != 1 {
                bail!(
                    "--tls-pin-cert {}: holds {} certificates, expected one",
                    cert.display(),
                    certs.len()
                );
            }
            TlsTrust::PinnedCert(certs.remove(0))
        }
        (None, None, Some(hex)) => TlsTrust::PinnedSha256(hex_array(hex, "--tls-pin-sha256")?),
        (None, None, None) => TlsTrust::SystemRoots,
    })
}

/// The host part of a listen address (`HOST:PORT`, `[V6]:PORT`, or a bare host).
fn listen_host(listen: &str) -> &str {
    let l = listen.trim();
    if let Some(rest) = l.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match l.rsplit_once(':') {
        Some((host, _port)) if !host.contains(':') => host,
        Some(_) => l, // a bare IPv6 address
        None => l,
    }
}

/// The TLS configuration `serve` was asked for; refuses plain HTTP on a non-loopback `--listen` unless
/// `--dangerously-serve-plain-http` was given.
fn serve_tls(a: &ServeArgs) -> anyhow::Result<Option<ServerTls>> {
    let host = listen_host(&a.listen);
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls::from_pem_files(cert, key)?),
        _ if a.tls_self_signed => {
            let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
            let issuer_host = a
                .issuer
                .as_deref()
                .and_then(|i| reqwest::Url::parse(i).ok())
                .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_owned()));
            for h in [Some(host.to_owned()), issuer_host].into_iter().flatten() {
                let unspecified = h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified());
                if !h.is_empty() && !unspecified && !names.contains(&h) {
                    names.push(h);
                }
            }
            Some(ServerTls::self_signed(&names)?)
        }
        _ => None,
    };
    if tls.is_none() && !attest::transport::is_loopback_host(host) {
        if !a.dangerously_serve_plain_http {
            bail!(
                "--listen {}: not a loopback address, and plain HTTP there would let anyone on the network read the \
                 admin token and imported keys and substitute token-signing keys and released keys; serve TLS \
                 (--tls-cert and --tls-key, or --tls-self-signed) or pass --dangerously-serve-plain-http",
                a.listen
            );
        }
        tracing::warn!(
            listen = %a.listen,
            "!!! serving plain HTTP on a non-loopback address (--dangerously-serve-plain-http): keys and tokens can be read and substituted !!!"
        );
    }
    Ok(tls)
}

/// Prints what clients pin (stdout, one `NAME VALUE` per line) and writes the certificate if asked.
fn announce_tls(tls: &ServerTls, cert_out: Option<&Path>) -> anyhow::Result<()> {
    let f = tls.fingerprints();
    let (cert, spki) = (hex::encode(f.cert_sha256), hex::encode(f.spki_sha256));
    tracing::info!(
        cert_sha256 = %cert,
        spki_sha256 = %spki,
        self_signed = tls.is_self_signed(),
        "serving TLS; clients pin either fingerprint (--tls-pin-sha256) or the certificate (--tls-pin-cert)"
    );
    if let Some(p) = cert_out {
        std::fs::write(p, tls.cert_pem()).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("tls-cert-sha256 {cert}");
    println!("tls-spki-sha256 {spki}");
    Ok(())
}

fn mock_attester(m: &MockArgs) -> anyhow::Result<MockAttester> {
    let dir = m
        .mock_root
        .as_ref()
        .context("--attester mock needs --mock-root DIR (from `cinfer-attest mock-init`)")?;
    let root = MockRoot::load(dir)?;
    let mut cfg = MockConfig {
        debuggable: m.debug,
        vmpl: m.vmpl,
        ..MockConfig::default()
    };
    if let Some(h) = &m.measurement {
        cfg.measurement = hex_array(h, "--measurement")?;
    }
    if let Some(h) = &m.host_data {
        cfg.host_data = hex_array(h, "--host-data")?;
    }
    Ok(MockAttester::new(&root, cfg)?)
}

fn attester(a: &AttesterArgs) -> anyhow::Result<Box<dyn Attester>> {
    Ok(match a.attester {
        AttesterKind::Snp => Box::new(SnpDeviceAttester::open_with(&HostSources::platform(
            a.reference_info_file.clone(),
            a.thim_url.clone(),
        ))?),
        AttesterKind::Mock => {
            tracing::warn!("using the MOCK attester: evidence verifies only where its root is explicitly trusted");
            let cpu = mock_attester(&a.mock)?;
            match &a.mock.mock_gpu_dir {
                None => Box::new(cpu),
                Some(dir) => {
                    let gpus = MockGpuAttester::load(dir)
                        .with_context(|| format!("loading the mock GPUs from {}", dir.display()))?;
                    tracing::warn!(count = gpus.config().count, "adding MOCK GPU evidence");
                    Box::new(CompositeAttester::new(Arc::new(cpu), Arc::new(gpus)))
                }
            }
        }
    })
}

/// The GPU verification settings of `serve`: NVIDIA's roots unless a mock root is given, and the collateral.
fn gpu_service_config(a: &ServeArgs) -> anyhow::Result<GpuServiceConfig> {
    let trust = match &a.trust_mock_gpu_root {
        None => GpuTrust::nvidia(),
        Some(p) => {
            let pem = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            let t = GpuTrust::mock(&pem, &pem).with_context(|| format!("{}: not a mock GPU root", p.display()))?;
            tracing::warn!(root = %t.label, "trusting a MOCK GPU root instead of NVIDIA's");
            t
        }
    };
    let collateral = match &a.gpu_collateral {
        None => None,
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            let c = GpuCollateral::from_json(&bytes).with_context(|| format!("{}", p.display()))?;
            c.check_valid(SystemTime::now())
                .with_context(|| format!("{}", p.display()))?;
            Some(c)
        }
    };
    Ok(GpuServiceConfig { trust, collateral })
}

fn trust_store(amd: bool, mock_roots: &[std::path::PathBuf]) -> anyhow::Result<TrustStore> {
    let mut t = if amd { TrustStore::amd() } else { TrustStore::empty() };
    for p in mock_roots {
        let pem = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let fp = t.add_mock_root(&pem)?;
        tracing::warn!(root = %fp, "trusting a MOCK root");
    }
    Ok(t)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => {
            let tls = serve_tls(&a)?;
            let admin_token = a
                .admin_token_file
                .as_deref()
                .map(|p| read_token_file(p, "--admin-token-file"))
                .transpose()?;
            let mut policy_signers = Vec::new();
            for p in &a.policy_signer {
                let pem = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                let der = pem_to_der(&pem).with_context(|| format!("{}: not a PEM certificate", p.display()))?;
                policy_signers.push(der);
            }
            let collateral = a.collateral.as_deref().map(load_collateral).transpose()?;
            if let Some(c) = &collateral {
                c.check_valid(SystemTime::now())?;
            }
            let uvm_trust = match (&collateral, a.uvm_issuer.is_empty()) {
                (Some(c), true) => c.uvm_trust().unwrap_or_default(),
                _ => uvm_trust(&a.uvm_issuer)?,
            };
            let gpu = gpu_service_config(&a)?;
            let config = ServiceConfig {
                issuer: a.issuer,
                state_dir: a.state_dir,
                trust: trust_store(!a.no_amd_roots, &a.trust_mock_root)?,
                allow_debug: a.danger_allow_debug,
                appraisal: appraisal(&a.appraisal)?,
                policy_file: a.policy,
                policy: None,
                policy_signers,
                admin_token,
                token_lifetime: std::time::Duration::from_secs(a.token_lifetime_secs),
                uvm_trust,
                collateral,
                compliant_measurements: a.compliant_measurement,
                trusted_authorities: a
                    .trusted_authority
                    .iter()
                    .map(|spec| trusted_authority(spec))
                    .collect::<anyhow::Result<_>>()?,
                tls: tls.clone(),
                dangerously_accept_weak_release_policies: a.dangerously_accept_weak_policy,
                gpu,
            };
            runtime()?.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&a.listen)
                    .await
                    .with_context(|| format!("binding {}", a.listen))?;
                if let Some(tls) = &tls {
                    announce_tls(tls, a.tls_cert_out.as_deref())?;
                }
                let shutdown = async {
                    let _ = tokio::signal::ctrl_c().await;
                };
                attest::service::run(listener, config, shutdown).await?;
                Ok(())
            })
        }
        Command::MockInit(a) => {
            let generation = match a.generation {
                GenerationArg::Milan => Generation::Milan,
                GenerationArg::Genoa => Generation::Genoa,
                GenerationArg::Turin => Generation::Turin,
            };
            let root = MockRoot::generate(generation)?;
            root.save(&a.out)?;
            println!("{}", a.out.join("ark.pem").display());
            Ok(())
        }
        Command::MockGpuInit(a) => {
            let config = MockGpuConfig {
                count: a.count,
                driver_version: a.driver_version,
                vbios_version: a.vbios_version,
                devtools: a.devtools,
                ppcie: a.ppcie,
            };
            mock::init_dir(
                &a.out,
                &config,
                std::time::Duration::from_secs(a.validity_days * 24 * 3600),
            )?;
            println!("{}", a.out.join("root.pem").display());
            Ok(())
        }
        Command::MockEvidence(a) => {
            if a.mock.mock_gpu_dir.is_some() {
                bail!("--mock-gpu-dir is for `attest` and `release-key` (mock-evidence writes the SNP part only)");
            }
            let att = mock_attester(&a.mock)?;
            let rt = std::fs::read(&a.runtime_data).with_context(|| format!("reading {}", a.runtime_data.display()))?;
            let ev = att.evidence(&maa_report_data(&rt))?;
            std::fs::write(&a.out_report, &ev.report).with_context(|| format!("writing {}", a.out_report.display()))?;
            std::fs::write(&a.out_certs, &ev.cert_chain_pem)
                .with_context(|| format!("writing {}", a.out_certs.display()))?;
            Ok(())
        }
        Command::VerifyReport(a) => {
            let report = std::fs::read(&a.report).with_context(|| format!("reading {}", a.report.display()))?;
            let at = parse_at(a.at.as_deref())?;
            let expected_report_data = match (&a.report_data, &a.runtime_data) {
                (Some(h), _) => Some(hex_array::<64>(h, "--report-data")?),
                (None, Some(p)) => Some(maa_report_data(
                    &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
                )),
                (None, None) => None,
            };
            let opts = VerifyOptions {
                at,
                allow_debug: a.danger_allow_debug,
                expected_report_data,
                expected_host_data: a
                    .host_data
                    .as_deref()
                    .map(|h| hex_array::<32>(h, "--host-data"))
                    .transpose()?,
                expected_measurement: None,
                appraisal: appraisal(&a.appraisal)?,
            };
            let collateral = a.collateral.as_deref().map(load_collateral).transpose()?;
            let chain = match (&a.certs, &collateral) {
                (Some(p), _) => {
                    CertChain::from_pem(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)?
                }
                (None, Some(c)) => {
                    c.check_valid(at)?;
                    c.chain_for(&attest::report::AttestationReport::from_bytes(&report)?)?
                }
                (None, None) => bail!("--certs or --collateral is required"),
            };
            if let Some(c) = &collateral {
                c.check_chain(&chain, at)?;
            }
            let uvm = match (&collateral, a.uvm_issuer.is_empty()) {
                (Some(c), true) => c.uvm_trust().unwrap_or_default(),
                _ => uvm_trust(&a.uvm_issuer)?,
            };
            let trust = trust_store(true, &a.trust_mock_root)?;
            let endorsement = a.endorsement.as_deref().map(read_endorsement).transpose()?;
            let policy = a.security_policy.as_ref().map(|p| read_base64_file(p)).transpose()?;
            let evidence = AciEvidence {
                report: &report,
                chain: &chain,
                uvm_endorsement: endorsement.as_deref(),
                security_policy: policy.as_deref(),
            };
            let verified = verify_aci(&evidence, &trust, &uvm, &opts)?;
            let claims = attest::claims::aci_claims(&verified);
            println!("{}", serde_json::to_string_pretty(&claims)?);
            Ok(())
        }
        Command::VerifyGpu(a) => gpu_cmd::run(&a, parse_at(a.at.as_deref())?),
        Command::Attest(a) => {
            check_endpoint("--maa", &a.maa, &a.tls)?;
            let trust = client_tls(&a.tls)?;
            let att = attester(&a.attester)?;
            let rt = std::fs::read(&a.runtime_data).with_context(|| format!("reading {}", a.runtime_data.display()))?;
            let client = AttestationClient::new(&a.maa)?.with_tls(&trust)?;
            let token = runtime()?.block_on(client.attest_with(att.as_ref(), &rt))?;
            println!("{token}");
            Ok(())
        }
        Command::ImportKey(a) => {
            check_endpoint("--vault", &a.vault, &a.tls)?;
            let trust = client_tls(&a.tls)?;
            let policy_bytes =
                std::fs::read(&a.release_policy).with_context(|| format!("reading {}", a.release_policy.display()))?;
            let policy = attest::policy::ReleasePolicy::from_json(&policy_bytes)
                .with_context(|| a.release_policy.display().to_string())?;
            match attest::pins::require_release_pins(&policy) {
                Ok(()) => {}
                Err(e) if a.dangerously_accept_weak_policy => {
                    tracing::warn!("!!! {e}: imported because of --dangerously-accept-weak-policy (testing only) !!!");
                }
                Err(e) => bail!(
                    "{}: {e}; pin them (as `cinfer-deploy render` and `cinfer-mkimage import-key` do) or pass \
                     --dangerously-accept-weak-policy",
                    a.release_policy.display()
                ),
            }
            let key = SecretBytes::new(
                std::fs::read(&a.key_file).with_context(|| format!("reading {}", a.key_file.display()))?,
            );
            let auth = vault_auth(a.token_file.as_deref(), a.imds, a.workload_identity)?;
            let client = KeyReleaseClient::new(&a.vault, auth, ResponseVerification::system_roots(&a.vault))?
                .with_tls(&trust)?;
            let bundle = runtime()?.block_on(client.import_oct(&a.name, key.expose(), &policy))?;
            println!(
                "{}",
                bundle.pointer("/key/kid").and_then(|v| v.as_str()).unwrap_or_default()
            );
            Ok(())
        }
        Command::ReleaseKey(a) => {
            check_endpoint("--maa", &a.maa, &a.tls)?;
            check_endpoint("--vault", &a.vault, &a.tls)?;
            let trust = client_tls(&a.tls)?;
            let att = attester(&a.attester)?;
            let rt = runtime()?;
            let maa = AttestationClient::new(&a.maa)?.with_tls(&trust)?;
            let auth = vault_auth(a.token_file.as_deref(), a.imds, a.workload_identity)?;
            let key = rt.block_on(async {
                // The local broker signs release responses with the attestation service's key; AKV's x5c
                // chain is validated against the system CA certificates for the vault's host name.
                let verification = if a.maa == a.vault {
                    ResponseVerification::Pinned(maa.jwks().await?)
                } else {
                    ResponseVerification::system_roots(&a.vault)
                };
                let vault = KeyReleaseClient::new(&a.vault, auth, verification)?.with_tls(&trust)?;
                let derivation = KeyDerivation {
                    salt: a.salt.clone(),
                    label: a.label.clone(),
                };
                attest::client::secure_key_release(
                    att.as_ref(),
                    &maa,
                    &vault,
                    &KeyRef::parse(&a.key),
                    &derivation,
                    None,
                )
                .await
                .map_err(anyhow::Error::from)
            })?;
            attest::store::write_private_file(&a.out, key.expose())
                .with_context(|| format!("writing {}", a.out.display()))?;
            Ok(())
        }
        Command::Collateral(CollateralCommand::Build(a)) => {
            let mut b = CollateralBuilder::new();
            for p in &a.certs {
                b.pem_certificates(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
                    .with_context(|| p.display().to_string())?;
            }
            for p in &a.thim {
                b.thim_json(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
                    .with_context(|| p.display().to_string())?;
            }
            for p in &a.crl {
                b.crl(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
                    .with_context(|| p.display().to_string())?;
            }
            for i in uvm_trust(&a.uvm_issuer)?.issuers {
                b.uvm_issuer(i);
            }
            if let Some(t) = &a.not_after {
                b.not_after(parse_at(Some(t))?);
            }
            let bundle = b.build()?;
            std::fs::write(&a.out, bundle.to_json()?).with_context(|| format!("writing {}", a.out.display()))?;
            print_collateral(&bundle);
            Ok(())
        }
        Command::Collateral(CollateralCommand::Show(a)) => {
            let bundle = load_collateral(&a.bundle)?;
            print_collateral(&bundle);
            bundle.check_valid(parse_at(a.at.as_deref())?)?;
            Ok(())
        }
        Command::SignPolicy(a) => {
            let text = std::fs::read_to_string(&a.policy).with_context(|| format!("reading {}", a.policy.display()))?;
            let key = zeroize::Zeroizing::new(
                std::fs::read_to_string(&a.key).with_context(|| format!("reading {}", a.key.display()))?,
            );
            let cert =
                pem_to_der(&std::fs::read_to_string(&a.cert).with_context(|| format!("reading {}", a.cert.display()))?)
                    .context("--cert: not a PEM certificate")?;
            let jws = attest::policy::sign_policy(&text, &key, &cert)?;
            std::fs::write(&a.out, jws).with_context(|| format!("writing {}", a.out.display()))?;
            Ok(())
        }
    }
}

/// `--min-tcb`, `--min-report-version`, `--danger-allow-migration-agent` over the defaults.
fn appraisal(a: &AppraisalArgs) -> anyhow::Result<Appraisal> {
    let mut min_tcb = MinimumTcb::amd_default();
    for spec in &a.min_tcb {
        min_tcb.apply_spec(spec).context("--min-tcb")?;
    }
    if a.danger_allow_migration_agent {
        tracing::warn!("accepting guests that allow a migration agent (--danger-allow-migration-agent)");
    }
    Ok(Appraisal {
        min_tcb,
        min_report_version: a.min_report_version,
        allow_migration_agent: a.danger_allow_migration_agent,
    })
}

/// `--at` (RFC 3339), or now.
fn parse_at(at: Option<&str>) -> anyhow::Result<SystemTime> {
    Ok(match at {
        Some(s) => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .with_context(|| format!("{s:?}: not RFC 3339"))?;
            SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(u64::try_from(t.unix_timestamp()).context("time before 1970")?)
        }
        None => SystemTime::now(),
    })
}

fn load_collateral(path: &Path) -> anyhow::Result<Collateral> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Collateral::from_json(&bytes).with_context(|| path.display().to_string())
}

/// A bundle's contents and validity window, one item per line.
fn print_collateral(c: &Collateral) {
    let w = c.window();
    let t = |t| {
        time::OffsetDateTime::from(t)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    println!(
        "valid {} .. {} (ends with {})",
        t(w.not_before),
        t(w.not_after),
        w.limited_by
    );
    for a in c.amd() {
        let crl = match &a.crl {
            Some(crl) => format!(
                "CRL with {} revoked, next update {}",
                crl.tbs_cert_list.revoked_certificates.as_ref().map_or(0, Vec::len),
                crl.tbs_cert_list
                    .next_update
                    .map(|n| t(n.to_system_time()))
                    .unwrap_or_else(|| "none".into())
            ),
            None => "no CRL (revocation not checked)".into(),
        };
        println!("{}: ARK, ASK, {crl}", a.generation.name());
    }
    println!("{} VCEK(s)", c.vceks().len());
    match c.uvm_trust() {
        Some(u) => {
            for i in u.issuers {
                println!("UVM issuer {} feed {} min SVN {}", i.did, i.feed, i.min_svn);
            }
        }
        None => println!("no UVM issuers (the verifier's default applies)"),
    }
}

/// `--uvm-issuer` values, or the ACI default when none is given.
fn uvm_trust(specs: &[String]) -> anyhow::Result<UvmTrust> {
    if specs.is_empty() {
        return Ok(UvmTrust::default());
    }
    Ok(UvmTrust {
        issuers: specs
            .iter()
            .map(|s| UvmIssuer::parse(s).with_context(|| format!("--uvm-issuer {s:?}")))
            .collect::<anyhow::Result<_>>()?,
    })
}

/// A UVM endorsement file: COSE_Sign1 bytes, or ACI's `reference-info-base64` as is (base64 text).
fn read_endorsement(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // A COSE_Sign1 starts with tag 18 (0xd2) or, untagged, a 4-element array (0x84); base64 text never does.
    if matches!(bytes.first(), Some(0xd2 | 0x84)) {
        Ok(bytes)
    } else {
        read_base64_file(path)
    }
}

/// A base64 (standard alphabet) text file, whitespace ignored, decoded.
fn read_base64_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let clean: Vec<u8> = text.into_iter().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean)
        .with_context(|| format!("{}: not base64", path.display()))
}

fn trusted_authority(spec: &str) -> anyhow::Result<attest::service::TrustedAuthority> {
    let (issuer, path) = spec
        .split_once('=')
        .context("--trusted-authority: expected ISSUER=JWKS_FILE")?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    let jwks = attest::token::Jwks::from_json(&bytes).with_context(|| format!("{path}: not a JWKS"))?;
    Ok(attest::service::TrustedAuthority {
        issuer: issuer.to_string(),
        jwks,
    })
}

fn vault_auth(token_file: Option<&Path>, imds: bool, workload_identity: bool) -> anyhow::Result<VaultAuth> {
    Ok(match (token_file, imds) {
        (Some(_), true) => bail!("--token-file and --imds are exclusive"),
        _ if workload_identity => {
            let wi = WorkloadIdentity::from_env().context("--workload-identity")?;
            tracing::info!(client_id = %wi.client_id, tenant = %wi.tenant_id, "vault token through workload identity");
            VaultAuth::Entra(Arc::new(TokenProvider::new(Credential::WorkloadIdentity(wi))?))
        }
        (Some(p), false) => VaultAuth::Bearer(read_token_file(p, "--token-file")?),
        (None, true) => VaultAuth::imds(std::env::var("AZURE_CLIENT_ID").ok())?,
        (None, false) => VaultAuth::None,
    })
}

fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        bail!("no certificate");
    }
    Ok(base64::engine::general_purpose::STANDARD.decode(body.trim())?)
}
