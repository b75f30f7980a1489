//! `cinfer-attest serve`: an MAA-compatible attestation service and an AKV-compatible key broker in one
//! HTTP server.
//!
//! | route | what |
//! |---|---|
//! | `POST /attest/SevSnpVm?api-version=..` | MAA SEV-SNP attestation → `{"token": JWT}` |
//! | `GET /certs` | JWKS of the token-signing key |
//! | `GET /.well-known/openid-configuration` | OpenID metadata (`issuer`, `jwks_uri`) |
//! | `GET`/`PUT /policies/SevSnpVm` | current attestation policy; replace it (admin bearer token) |
//! | `PUT /keys/{name}` | import a key with an AKV release policy (admin bearer token) |
//! | `GET /keys/{name}[/{version}]` | public key bundle |
//! | `POST /keys/{name}[/{version}]/release` | `{"target": JWT}` → `{"value": JWS}` (CKM_RSA_AES_KEY_WRAP) |
//!
//! **Caller authentication.** Routes that change state (key import, policy update) require
//! `Authorization: Bearer <admin token>`; the token is configured at start (`--admin-token-file`, at least
//! [`MIN_ADMIN_TOKEN_BYTES`] bytes), kept only as a SHA-256 digest and compared in constant time. Without an
//! admin token those routes are disabled (403), so a network peer can never replace a key or its policy.
//! Release needs no bearer token: the attestation token *is* the credential, and the key leaves only wrapped
//! to the token's runtime key.
//!
//! **Release policies must pin the workload.** A key import whose release policy has an alternative that pins
//! neither `x-ms-sevsnpvm-hostdata` nor `x-ms-policy-signer`, or not `x-ms-sevsnpvm-is-debuggable = false`, is
//! refused (400, naming what is missing: [`crate::pins::require_release_pins`]) unless
//! [`ServiceConfig::dangerously_accept_weak_release_policies`] is set. The attestation policy
//! (`/policies/SevSnpVm`) is not held to this: it decides who gets a token, MAA's default permits every
//! verified guest, and the tokens carry the claims the release policy then pins.
//!
//! **Transport.** With [`ServiceConfig::tls`] the service speaks only TLS ([`crate::tls`]); without it, plain
//! HTTP, which `cinfer-attest serve` allows only on loopback addresses unless told otherwise.
//!
//! **ACI compliance.** The SevSnpVm request may carry the UVM endorsement the ACI host provides
//! (`report` → `Endorsements` → `{"Uvm": [b64url(COSE_Sign1)]}`, as MAA's). It is verified with
//! [`crate::aci::verify_aci`] against [`ServiceConfig::uvm_trust`]; when it verifies and its launch
//! measurement is the report's, the token says `x-ms-compliance-status: azure-compliant-uvm` and carries the
//! endorsed `x-ms-sevsnpvm-guestsvn` ([`crate::claims::aci_claims`]). An endorsement that fails a check
//! refuses the request (400, naming the check). [`ServiceConfig::compliant_measurements`] is the documented
//! override for tests and air-gapped setups without endorsements.
//!
//! **Appraisal.** Before the attestation policy runs, every report must meet [`ServiceConfig::appraisal`]: the
//! minimum TCB of its processor product (AMD-SB-3019 levels by default), the report-version floor, and no
//! migration agent ([`crate::appraisal`]); a report below is refused with 400 naming the component, the
//! reported and the minimum value.
//!
//! **GPU evidence (composite attestation).** The SevSnpVm request may carry `gpuEvidence`: a list of NVIDIA
//! per-GPU evidence objects (`{"evidence": b64(SPDM report), "certificate": b64(PEM chain)}`, as nvtrust's
//! remote evidence and NRAS take them), at most [`MAX_GPUS`]. Each GPU's SPDM nonce must be
//! [`crate::gpu::binding::gpu_nonce`] of the report_data the SNP report binds; each report is verified with
//! [`crate::gpu::verify_gpu`] against [`ServiceConfig::gpu`] (NVIDIA's roots unless a mock root is configured;
//! RIMs and revoked serials from the offline bundle). One that fails refuses the request (400, naming the
//! check and the GPU); when all verify, the token carries the GPU claims beside the SNP ones
//! ([`crate::gpu::claims::composite_claims`]: `x-cinfer-gpu` per GPU under NVIDIA's names, and the summary
//! `x-cinfer-gpu-count`, `-cc-mode`, `-devtools`, `-measurements-matched`, `-driver-min`, `-vbios-min`).
//! Without `gpuEvidence` nothing changes.
//!
//! **Policy reload.** With a policy file, every attestation checks the file's content digest and reloads
//! it when changed; an invalid (or unreadable) new policy makes attestation fail closed until it is fixed.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::aci::{AciEvidence, verify_aci};
use crate::appraisal::Appraisal;
use crate::claims;
use crate::collateral::Collateral;
use crate::endorsement::UvmTrust;
use crate::error::{CollateralError, PolicyError, ReleaseError, ServiceError};
use crate::gpu::collateral::GpuCollateral;
use crate::gpu::{GpuEvidence, GpuTrust, GpuVerifyOptions, VerifiedGpu, binding, verify_gpu};
use crate::keystore::{KeyStore, KeyVersion, key_bundle, valid_key_name};
use crate::keywrap::{CKM_RSA_AES_KEY_WRAP, rsa_aes_wrap, rsa_public_from_jwk};
use crate::pins::require_release_pins;
use crate::policy::{AttestationPolicy, ReleasePolicy};
use crate::protocol::{
    AttestRequest, AttestResponse, B64URL_ANY, EndorsementsEnvelope, ErrorBody, ErrorDetail, ImportRequest,
    ReleaseRequest, ReleaseResponse, SnpReportEnvelope,
};
use crate::secret::{SecretBytes, random_bytes};
use crate::tls::{ServerTls, TlsListener};
use crate::token::{Claims, Jwks, SigningIdentity, TokenCheck, normalize_issuer, verify_token};
use crate::verify::{CertChain, TrustStore, VerifyOptions, maa_report_data};

/// An attestation authority whose tokens the key broker accepts besides its own.
#[derive(Clone, Debug)]
pub struct TrustedAuthority {
    /// The authority's issuer (`iss`).
    pub issuer: String,
    /// Its token-signing keys.
    pub jwks: Jwks,
}

/// The shortest admin token the service accepts: 16 bytes (128 bits if random). It guards key import, so a
/// guessable one would let anyone who reaches the service replace a model key's release policy.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 16;

/// Checks an admin token's length (at least [`MIN_ADMIN_TOKEN_BYTES`]).
pub fn check_admin_token(token: &SecretBytes) -> Result<(), ServiceError> {
    if token.len() < MIN_ADMIN_TOKEN_BYTES {
        return Err(ServiceError::Config(format!(
            "admin token: {} bytes, at least {MIN_ADMIN_TOKEN_BYTES} are required (for example `head -c 24 \
             /dev/urandom | base64`)",
            token.len()
        )));
    }
    Ok(())
}

/// The most GPUs one request may carry (NVIDIA's largest systems have 8; each costs ~11 ms to verify).
pub const MAX_GPUS: usize = 16;

/// How the service verifies GPU evidence.
#[derive(Clone, Debug)]
pub struct GpuServiceConfig {
    /// Device and RIM roots: NVIDIA's by default; a mock GPU root only when configured explicitly.
    pub trust: GpuTrust,
    /// Offline collateral (RIMs chosen by the reports' versions, revoked serials, validity window). Without
    /// it, measurements are not compared and the claims say so (`measres: not-run`, CC mode `unknown`).
    pub collateral: Option<GpuCollateral>,
}

impl Default for GpuServiceConfig {
    fn default() -> Self {
        Self {
            trust: GpuTrust::nvidia(),
            collateral: None,
        }
    }
}

/// Service configuration (plain data; the CLI builds it).
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Token issuer; default `http://<bound address>` (`https://` with [`ServiceConfig::tls`]).
    pub issuer: Option<String>,
    /// Where the signing key and keys persist; `None` keeps everything in memory.
    pub state_dir: Option<PathBuf>,
    /// Accepted roots (AMD by default; add the mock root explicitly for local testing).
    pub trust: TrustStore,
    /// Accept debuggable guests (never in production).
    pub allow_debug: bool,
    /// Minimum TCB per product, report version floor, migration agents: checked for every report before the
    /// attestation policy runs (default: AMD-SB-3019 floors, any parsable version, no migration agent).
    pub appraisal: Appraisal,
    /// Attestation policy file (text or signed JWS), reloaded when it changes.
    pub policy_file: Option<PathBuf>,
    /// Initial policy document when there is no file; `None` = permit any verified evidence (MAA default).
    pub policy: Option<String>,
    /// Trusted policy signers (DER certificates). When non-empty, only signed policies are accepted.
    pub policy_signers: Vec<Vec<u8>>,
    /// Admin bearer token for key import and policy update (at least [`MIN_ADMIN_TOKEN_BYTES`] bytes); `None`
    /// disables both.
    pub admin_token: Option<SecretBytes>,
    /// Lifetime of issued tokens.
    pub token_lifetime: Duration,
    /// Trusted UVM endorsement sources (default: Microsoft's ACI feed).
    pub uvm_trust: UvmTrust,
    /// Offline collateral: when set, every evidence chain must be the bundle's ARK/ASK, not revoked by its
    /// CRLs, and the bundle valid at the time of the request.
    pub collateral: Option<Collateral>,
    /// Override for tests and air-gapped setups: launch measurements (hex) that earn
    /// `x-ms-compliance-status: azure-compliant-uvm` without a UVM endorsement.
    pub compliant_measurements: Vec<String>,
    /// Other attestation services whose tokens the broker accepts.
    pub trusted_authorities: Vec<TrustedAuthority>,
    /// Serve TLS with this certificate and key; `None` serves plain HTTP.
    pub tls: Option<ServerTls>,
    /// Import keys whose release policy does not pin the workload and a non-debuggable guest. Testing only.
    pub dangerously_accept_weak_release_policies: bool,
    /// GPU evidence verification (composite attestation).
    pub gpu: GpuServiceConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            state_dir: None,
            trust: TrustStore::amd(),
            allow_debug: false,
            appraisal: Appraisal::default(),
            policy_file: None,
            policy: None,
            policy_signers: Vec::new(),
            admin_token: None,
            token_lifetime: Duration::from_secs(8 * 3600),
            uvm_trust: UvmTrust::default(),
            collateral: None,
            compliant_measurements: Vec::new(),
            trusted_authorities: Vec::new(),
            tls: None,
            dangerously_accept_weak_release_policies: false,
            gpu: GpuServiceConfig::default(),
        }
    }
}

struct AppState {
    issuer: String,
    identity: SigningIdentity,
    trust: TrustStore,
    allow_debug: bool,
    appraisal: Appraisal,
    policy: RwLock<Result<Arc<AttestationPolicy>, String>>,
    policy_file: Option<PathBuf>,
    /// SHA-256 of the policy file content last loaded (reload when it changes).
    policy_file_digest: Mutex<Option<[u8; 32]>>,
    policy_signers: Vec<Vec<u8>>,
    admin_token_sha256: Option<[u8; 32]>,
    token_lifetime: Duration,
    uvm_trust: UvmTrust,
    collateral: Option<Collateral>,
    compliant: Vec<String>,
    authorities: Vec<TrustedAuthority>,
    keys: KeyStore,
    accept_weak_release_policies: bool,
    gpu: GpuServiceConfig,
}

#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl std::fmt::Display) -> Self {
        Self {
            status,
            code,
            message: message.to_string(),
        }
    }
    fn bad(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: self.code.to_string(),
                    message: self.message,
                },
            }),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn load_identity(state_dir: Option<&PathBuf>) -> Result<SigningIdentity, ServiceError> {
    let Some(dir) = state_dir else {
        return Ok(SigningIdentity::generate("cinfer-attest")?);
    };
    let io = |what: &str, p: &std::path::Path| {
        let context = format!("{what} {}", p.display());
        move |source| ServiceError::Io { context, source }
    };
    crate::store::private_dir(dir).map_err(io("creating", dir))?;
    let path = dir.join("signing-key.pem");
    let cert_path = dir.join("signing-cert.der");
    match std::fs::read_to_string(&path) {
        Ok(pem) => {
            let pem = zeroize::Zeroizing::new(pem);
            match std::fs::read(&cert_path) {
                Ok(cert) => Ok(SigningIdentity::from_pkcs8_pem_and_cert(&pem, cert)?),
                Err(_) => {
                    let id = SigningIdentity::from_pkcs8_pem(&pem, "cinfer-attest")?;
                    crate::store::write_private_file(&cert_path, id.cert_der()).map_err(io("writing", &cert_path))?;
                    Ok(id)
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = SigningIdentity::generate("cinfer-attest")?;
            crate::store::write_private_file(&path, id.to_pkcs8_pem()?.as_bytes()).map_err(io("writing", &path))?;
            crate::store::write_private_file(&cert_path, id.cert_der()).map_err(io("writing", &cert_path))?;
            Ok(id)
        }
        Err(source) => Err(ServiceError::Io {
            context: format!("reading {}", path.display()),
            source,
        }),
    }
}

fn read_policy_file(path: &PathBuf, signers: &[Vec<u8>]) -> (Result<AttestationPolicy, String>, Option<[u8; 32]>) {
    match std::fs::read(path) {
        Ok(bytes) => {
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            let parsed = String::from_utf8(bytes)
                .map_err(|_| format!("policy file {}: not UTF-8", path.display()))
                .and_then(|text| AttestationPolicy::from_document(&text, signers).map_err(|e| e.to_string()));
            (parsed, Some(digest))
        }
        Err(e) => (Err(format!("policy file {}: {e}", path.display())), None),
    }
}

impl AppState {
    fn new(config: ServiceConfig, issuer: String) -> Result<Self, ServiceError> {
        if let Some(t) = &config.admin_token {
            check_admin_token(t)?;
        }
        let identity = load_identity(config.state_dir.as_ref())?;
        let keys = match &config.state_dir {
            Some(dir) => KeyStore::open(dir.join("keys"))?,
            None => KeyStore::in_memory(),
        };
        let (policy, digest) = match (&config.policy_file, &config.policy) {
            (Some(path), _) => {
                let (p, d) = read_policy_file(path, &config.policy_signers);
                (p.map_err(ServiceError::Config)?, d)
            }
            (None, Some(doc)) => (AttestationPolicy::from_document(doc, &config.policy_signers)?, None),
            (None, None) if !config.policy_signers.is_empty() => return Err(PolicyError::Unsigned.into()),
            (None, None) => (AttestationPolicy::permit_all(), None),
        };
        Ok(Self {
            issuer,
            identity,
            trust: config.trust,
            allow_debug: config.allow_debug,
            appraisal: config.appraisal,
            policy: RwLock::new(Ok(Arc::new(policy))),
            policy_file: config.policy_file,
            policy_file_digest: Mutex::new(digest),
            policy_signers: config.policy_signers,
            admin_token_sha256: config.admin_token.map(|t| Sha256::digest(t.expose()).into()),
            token_lifetime: config.token_lifetime,
            uvm_trust: config.uvm_trust,
            collateral: config.collateral,
            compliant: config
                .compliant_measurements
                .iter()
                .map(|m| m.to_ascii_lowercase())
                .collect(),
            authorities: config.trusted_authorities,
            keys,
            accept_weak_release_policies: config.dangerously_accept_weak_release_policies,
            gpu: config.gpu,
        })
    }

    fn jwks(&self) -> Jwks {
        Jwks {
            keys: vec![self.identity.jwk()],
        }
    }

    /// The current policy, reloading the file when its content changed (checked on every call: the file is
    /// small, and a content digest does not depend on timestamp granularity).
    fn current_policy(&self) -> Result<Arc<AttestationPolicy>, String> {
        if let Some(path) = &self.policy_file {
            let current = std::fs::read(path).ok().map(|b| <[u8; 32]>::from(Sha256::digest(&b)));
            let mut last = self.policy_file_digest.lock().unwrap_or_else(|e| e.into_inner());
            if current.is_none() || current != *last {
                let (loaded, digest) = read_policy_file(path, &self.policy_signers);
                *last = digest;
                match &loaded {
                    Ok(_) => tracing::info!(path = %path.display(), "attestation policy reloaded"),
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "attestation policy reload failed; denying until fixed")
                    }
                }
                *self.policy.write().unwrap_or_else(|e| e.into_inner()) = loaded.map(Arc::new);
            }
        }
        self.policy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn check_admin(&self, headers: &HeaderMap) -> ApiResult<()> {
        let Some(expected) = &self.admin_token_sha256 else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "administration is disabled (no admin token configured)",
            ));
        };
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", "missing bearer token"))?;
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        if bool::from(digest.ct_eq(expected)) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "invalid bearer token",
            ))
        }
    }
}

/// The UVM endorsement of a request, if any (at most one is accepted, as the seed sends one).
fn uvm_endorsement(envelope: &SnpReportEnvelope) -> ApiResult<Option<Vec<u8>>> {
    let Some(e) = envelope.endorsements.as_deref().filter(|e| !e.trim().is_empty()) else {
        return Ok(None);
    };
    let json = B64URL_ANY
        .decode(e.trim())
        .map_err(|e| ApiError::bad(format!("Endorsements: base64url: {e}")))?;
    let env: EndorsementsEnvelope =
        serde_json::from_slice(&json).map_err(|e| ApiError::bad(format!("Endorsements: JSON: {e}")))?;
    match env.uvm.as_slice() {
        [] => Ok(None),
        [one] => B64URL_ANY
            .decode(one.trim())
            .map(Some)
            .map_err(|e| ApiError::bad(format!("Endorsements.Uvm[0]: base64url: {e}"))),
        more => Err(ApiError::bad(format!(
            "Endorsements.Uvm holds {} documents; one is accepted",
            more.len()
        ))),
    }
}

async fn attest(
    State(state): State<Arc<AppState>>,
    Path(tee): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<AttestResponse>> {
    if !tee.eq_ignore_ascii_case("sevsnpvm") {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("unsupported TEE type {tee:?}"),
        ));
    }
    let st = state.clone();
    let result = tokio::task::spawn_blocking(move || attest_blocking(&st, &body))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e))?;
    match &result {
        Ok(_) => tracing::info!("attestation succeeded"),
        Err(e) => tracing::info!(error = %e.message, "attestation refused"),
    }
    result.map(|token| Json(AttestResponse { token }))
}

fn attest_blocking(state: &AppState, body: &[u8]) -> ApiResult<String> {
    let req: AttestRequest = serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("request body: {e}")))?;
    let envelope = B64URL_ANY
        .decode(req.report.trim())
        .map_err(|e| ApiError::bad(format!("report: base64url: {e}")))?;
    let envelope: SnpReportEnvelope =
        serde_json::from_slice(&envelope).map_err(|e| ApiError::bad(format!("report: JSON: {e}")))?;
    let report = B64URL_ANY
        .decode(envelope.snp_report.trim())
        .map_err(|e| ApiError::bad(format!("SnpReport: {e}")))?;
    let chain_pem = B64URL_ANY
        .decode(envelope.vcek_cert_chain.trim())
        .map_err(|e| ApiError::bad(format!("VcekCertChain: {e}")))?;
    let (runtime, runtime_type) = match &req.runtime_data {
        Some(d) => (
            B64URL_ANY
                .decode(d.data.trim())
                .map_err(|e| ApiError::bad(format!("runtimeData: {e}")))?,
            d.data_type.clone(),
        ),
        None => (Vec::new(), String::new()),
    };
    let runtime_claim = if runtime.is_empty() {
        None
    } else if runtime_type.eq_ignore_ascii_case("json") {
        Some(
            serde_json::from_slice::<Value>(&runtime)
                .map_err(|e| ApiError::bad(format!("runtimeData is not JSON: {e}")))?,
        )
    } else {
        return Err(ApiError::bad("runtimeData dataType must be JSON"));
    };

    let uvm = uvm_endorsement(&envelope)?;

    let chain = CertChain::from_pem(&chain_pem).map_err(ApiError::bad)?;
    let now = SystemTime::now();
    if let Some(c) = &state.collateral {
        c.check_chain(&chain, now).map_err(|e| match e {
            CollateralError::Expired { .. } | CollateralError::NotYetValid { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "CollateralExpired", e)
            }
            e => ApiError::bad(e),
        })?;
    }
    let opts = VerifyOptions {
        at: now,
        allow_debug: state.allow_debug,
        expected_report_data: Some(maa_report_data(&runtime)),
        appraisal: state.appraisal.clone(),
        ..VerifyOptions::default()
    };
    let evidence = AciEvidence {
        report: &report,
        chain: &chain,
        uvm_endorsement: uvm.as_deref(),
        security_policy: None,
    };
    let verified = verify_aci(&evidence, &state.trust, &state.uvm_trust, &opts).map_err(ApiError::bad)?;

    let mut claims = claims::aci_claims(&verified);
    if let Some(rt) = runtime_claim {
        claims.insert(claims::RUNTIME.into(), rt);
    }
    let measurement = hex::encode(verified.report.report.measurement());
    if state.compliant.contains(&measurement) {
        claims::mark_listed_compliant(&mut claims);
    }
    if !req.gpu_evidence.is_empty() {
        let gpus = verify_gpus(state, &req.gpu_evidence, &maa_report_data(&runtime), now)?;
        claims.extend(crate::gpu::claims::composite_claims(&gpus));
    }
    let policy = state.current_policy().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "PolicyError",
            format!("attestation policy: {e}"),
        )
    })?;
    policy
        .evaluate(&claims)
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "PolicyEvaluationError", e))?;
    claims.insert(claims::POLICY_HASH.into(), Value::String(policy.hash()));
    if let Some(signer) = policy.signer() {
        claims.insert(claims::POLICY_SIGNER.into(), signer.claim());
    }
    let now = now_secs();
    claims.insert("iss".into(), Value::String(state.issuer.clone()));
    claims.insert("iat".into(), json!(now));
    claims.insert("nbf".into(), json!(now));
    claims.insert("exp".into(), json!(now + state.token_lifetime.as_secs() as i64));
    claims.insert("jti".into(), Value::String(hex::encode(random_bytes::<16>())));
    state
        .identity
        .sign(&claims, Some(format!("{}/certs", state.issuer)), false)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e))
}

/// Verify every GPU's evidence for SNP evidence binding `report_data` (the nonce each must carry is derived
/// from it), at `at`. Refusals name the check and the GPU.
fn verify_gpus(
    state: &AppState,
    evidence: &[GpuEvidence],
    report_data: &[u8; 64],
    at: SystemTime,
) -> ApiResult<Vec<VerifiedGpu>> {
    if evidence.len() > MAX_GPUS {
        return Err(ApiError::bad(format!(
            "gpuEvidence: {} GPUs, at most {MAX_GPUS} are accepted",
            evidence.len()
        )));
    }
    let nonce = binding::gpu_nonce(report_data);
    evidence
        .iter()
        .enumerate()
        .map(|(i, ev)| {
            let named = |e: crate::gpu::GpuError| {
                let message = format!("{e} (GPU-{i})");
                match e {
                    crate::gpu::GpuError::Collateral { .. } => {
                        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "CollateralExpired", message)
                    }
                    _ => ApiError::bad(message),
                }
            };
            let opts = match &state.gpu.collateral {
                Some(c) => {
                    let report = crate::gpu::spdm::GpuReport::parse(&ev.report).map_err(named)?;
                    c.options_for(&report, at, Some(nonce)).map_err(named)?
                }
                None => GpuVerifyOptions {
                    nonce: Some(nonce),
                    ..GpuVerifyOptions::at(at)
                },
            };
            verify_gpu(ev, &state.gpu.trust, &opts).map_err(named)
        })
        .collect()
}

async fn certs(State(state): State<Arc<AppState>>) -> Json<Jwks> {
    Json(state.jwks())
}

async fn openid(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "issuer": state.issuer,
        "jwks_uri": format!("{}/certs", state.issuer),
        "response_types_supported": ["token", "none"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "claims_supported": [claims::ATTESTATION_TYPE, claims::HOSTDATA, claims::LAUNCH_MEASUREMENT,
                             claims::IS_DEBUGGABLE, claims::VMPL, claims::RUNTIME, claims::POLICY_SIGNER],
    }))
}

async fn get_policy(State(state): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let p = state
        .current_policy()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "PolicyError", e))?;
    Ok(Json(
        json!({"policy": p.text(), "x-ms-policy-hash": p.hash(), "signed": p.signer().is_some()}),
    ))
}

async fn put_policy(State(state): State<Arc<AppState>>, headers: HeaderMap, body: String) -> ApiResult<Json<Value>> {
    state.check_admin(&headers)?;
    let policy = AttestationPolicy::from_document(&body, &state.policy_signers).map_err(ApiError::bad)?;
    if let Some(path) = &state.policy_file {
        crate::store::write_private_file(path, body.trim().as_bytes())
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e))?;
        *state.policy_file_digest.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Sha256::digest(body.trim().as_bytes()).into());
    }
    let hash = policy.hash();
    *state.policy.write().unwrap_or_else(|e| e.into_inner()) = Ok(Arc::new(policy));
    tracing::info!(hash = %hash, "attestation policy replaced");
    Ok(Json(json!({"x-ms-policy-hash": hash})))
}

fn jwk_bytes(jwk: &Value, name: &str) -> ApiResult<Vec<u8>> {
    let s = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad(format!("key.{name} missing")))?;
    B64URL_ANY
        .decode(s)
        .map_err(|e| ApiError::bad(format!("key.{name}: {e}")))
}

async fn import_key(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    state.check_admin(&headers)?;
    if !valid_key_name(&name) {
        return Err(ApiError::bad("key name must be 1-127 characters of [A-Za-z0-9-]"));
    }
    let mut req: ImportRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("request body: {e}")))?;
    let rp = req
        .release_policy
        .ok_or_else(|| ApiError::bad("release_policy is required"))?;
    let policy_json = B64URL_ANY
        .decode(rp.data.trim())
        .map_err(|e| ApiError::bad(format!("release_policy.data: {e}")))?;
    let release_policy = ReleasePolicy::from_json(&policy_json).map_err(ApiError::bad)?;
    match require_release_pins(&release_policy) {
        Ok(()) => {}
        Err(e) if state.accept_weak_release_policies => {
            tracing::warn!(key = %name, "!!! {e}: imported because weak release policies are accepted !!!");
        }
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                format!("{e}; this service does not accept weak release policies"),
            ));
        }
    }
    let exportable = req
        .attributes
        .as_ref()
        .and_then(|a| a.get("exportable"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let kty = req.key.get("kty").and_then(Value::as_str).unwrap_or("").to_string();
    let key_ops: Vec<String> = req
        .key
        .get("key_ops")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let (material, public) = match kty.as_str() {
        "oct" | "oct-HSM" => {
            let k = SecretBytes::new(jwk_bytes(&req.key, "k")?);
            if k.is_empty() {
                return Err(ApiError::bad("key.k is empty"));
            }
            (k, None)
        }
        "RSA" | "RSA-HSM" => {
            let part = |n: &str| jwk_bytes(&req.key, n).map(|b| rsa::BoxedUint::from_be_slice_vartime(&b));
            let key =
                rsa::PrivateKey::from_components(part("n")?, part("e")?, part("d")?, vec![part("p")?, part("q")?])
                    .map_err(|e| ApiError::bad(format!("RSA key: {e}")))?;
            let der = crate::keywrap::rsa_private_pkcs8(&key).map_err(ApiError::bad)?;
            let n = req
                .key
                .get("n")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim_end_matches('=')
                .to_string();
            let e = req
                .key
                .get("e")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim_end_matches('=')
                .to_string();
            (der, Some((n, e)))
        }
        other => {
            return Err(ApiError::bad(format!(
                "unsupported kty {other:?} (oct, oct-HSM, RSA, RSA-HSM)"
            )));
        }
    };
    // Scrub the private JWK members of the parsed request (the raw body buffer is not ours to scrub).
    if let Some(obj) = req.key.as_object_mut() {
        for member in ["k", "d", "p", "q", "dp", "dq", "qi"] {
            if let Some(Value::String(secret)) = obj.get_mut(member) {
                zeroize::Zeroize::zeroize(secret);
            }
        }
    }
    let version = KeyVersion {
        version: hex::encode(random_bytes::<16>()),
        kty,
        key_ops,
        material,
        release_policy_json: policy_json,
        release_policy,
        exportable,
        created: now_secs(),
        public,
    };
    state
        .keys
        .insert(&name, version.clone())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e))?;
    tracing::info!(key = %name, version = %version.version, "key imported");
    Ok(Json(key_bundle(&state.issuer, &name, &version)))
}

async fn get_key(State(state): State<Arc<AppState>>, Path(params): Path<Vec<String>>) -> ApiResult<Json<Value>> {
    let (name, version) = (params.first().cloned().unwrap_or_default(), params.get(1).cloned());
    let v = state
        .keys
        .get(&name, version.as_deref())
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "KeyNotFound", format!("key not found: {name}")))?;
    Ok(Json(key_bundle(&state.issuer, &name, &v)))
}

fn release_status(e: &ReleaseError) -> (StatusCode, &'static str) {
    match e {
        ReleaseError::NotFound { .. } => (StatusCode::NOT_FOUND, "KeyNotFound"),
        ReleaseError::InvalidPolicy { .. } | ReleaseError::RuntimeKey { .. } => {
            (StatusCode::BAD_REQUEST, "BadParameter")
        }
        ReleaseError::Wrap(_) => (StatusCode::BAD_REQUEST, "BadParameter"),
        _ => (StatusCode::FORBIDDEN, "AccessDenied"),
    }
}

async fn release_key(
    State(state): State<Arc<AppState>>,
    Path(params): Path<Vec<String>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<ReleaseResponse>> {
    let (name, version) = (params.first().cloned().unwrap_or_default(), params.get(1).cloned());
    let req: ReleaseRequest = serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("request body: {e}")))?;
    let st = state.clone();
    let result = tokio::task::spawn_blocking(move || release_blocking(&st, &name, version.as_deref(), &req))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e))?;
    match result {
        Ok(value) => Ok(Json(ReleaseResponse { value })),
        Err(e) => {
            tracing::info!(error = %e, "key release refused");
            let (status, code) = release_status(&e);
            Err(ApiError::new(status, code, e))
        }
    }
}

/// The broker's release decision, usable without HTTP: verify the token, evaluate the key's release policy,
/// wrap the key to the runtime key. Returns the wrapped bytes and the key version.
fn release_blocking(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    req: &ReleaseRequest,
) -> Result<String, ReleaseError> {
    let key = state.keys.get(name, version).ok_or_else(|| ReleaseError::NotFound {
        name: format!("{name}{}", version.map(|v| format!("/{v}")).unwrap_or_default()),
    })?;
    let claims = verify_release_token(state, &req.target)?;
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !key.exportable {
        return Err(ReleaseError::PolicyNotSatisfied {
            reason: "key is not exportable".into(),
        });
    }
    key.release_policy.evaluate(&issuer, &claims)?;
    let runtime_key = runtime_rsa_key(&claims)?;
    let enc = req.enc.clone().unwrap_or_else(|| CKM_RSA_AES_KEY_WRAP.to_string());
    let ciphertext = rsa_aes_wrap(&runtime_key, &enc, key.material.expose())?;
    let kid = format!("{}/keys/{name}/{}", state.issuer, key.version);
    let key_hsm = json!({
        "schema_version": "1.0",
        "header": {"kid": kid, "alg": "dir", "enc": enc},
        "ciphertext": B64URL.encode(&ciphertext),
    });
    let mut bundle = key_bundle(&state.issuer, name, &key);
    bundle["key"]["key_hsm"] = Value::String(B64URL.encode(serde_json::to_vec(&key_hsm).unwrap_or_default()));
    let payload = json!({
        "request": {"api-version": "7.4", "enc": enc, "kid": kid},
        "response": {"key": bundle},
    });
    tracing::info!(key = %name, version = %key.version, "key released (wrapped)");
    state
        .identity
        .sign(&payload, None, true)
        .map_err(|e| ReleaseError::Wrap(crate::error::KeyWrapError::Key(e.to_string())))
}

fn verify_release_token(state: &AppState, token: &str) -> Result<Claims, ReleaseError> {
    // Find the issuer's keys from the (unverified) iss, then verify everything against them.
    let unverified_iss = token
        .split('.')
        .nth(1)
        .and_then(|p| B64URL_ANY.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("iss").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    let jwks = if normalize_issuer(&unverified_iss) == normalize_issuer(&state.issuer) {
        state.jwks()
    } else if let Some(a) = state
        .authorities
        .iter()
        .find(|a| normalize_issuer(&a.issuer) == normalize_issuer(&unverified_iss))
    {
        a.jwks.clone()
    } else {
        // Verify the signature against our own keys first so a malformed or forged token reports the token
        // error; a well-formed token from an unknown issuer is "untrusted issuer".
        return match verify_token(token, &state.jwks(), &TokenCheck::issuer(unverified_iss.clone())) {
            Err(e @ (crate::error::TokenError::Algorithm { .. } | crate::error::TokenError::Malformed { .. })) => {
                Err(e.into())
            }
            _ => Err(ReleaseError::UntrustedIssuer { issuer: unverified_iss }),
        };
    };
    Ok(verify_token(token, &jwks, &TokenCheck::issuer(unverified_iss))?)
}

fn runtime_rsa_key(claims: &Claims) -> Result<rsa::PublicKey, ReleaseError> {
    let keys = claims
        .get(claims::RUNTIME)
        .and_then(|r| r.get("keys"))
        .and_then(Value::as_array)
        .ok_or_else(|| ReleaseError::RuntimeKey {
            detail: "token has no x-ms-runtime.keys".into(),
        })?;
    let jwk = keys
        .iter()
        .find(|k| {
            k.get("kty").and_then(Value::as_str) == Some("RSA")
                && k.get("key_ops")
                    .and_then(Value::as_array)
                    .is_none_or(|ops| ops.iter().any(|o| o.as_str() == Some("encrypt")))
        })
        .ok_or_else(|| ReleaseError::RuntimeKey {
            detail: "no RSA encryption key in x-ms-runtime.keys".into(),
        })?;
    let key = rsa_public_from_jwk(jwk).map_err(|e| ReleaseError::RuntimeKey { detail: e.to_string() })?;
    use rsa::traits::PublicKeyParts;
    if key.size() < 256 {
        return Err(ReleaseError::RuntimeKey {
            detail: format!("RSA key of {} bits is too small", key.size() * 8),
        });
    }
    Ok(key)
}

fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/attest/{tee}", post(attest))
        .route("/certs", get(certs))
        .route("/.well-known/openid-configuration", get(openid))
        .route("/policies/{tee}", get(get_policy).put(put_policy))
        .route("/keys/{name}", get(get_key).put(import_key))
        .route("/keys/{name}/release", post(release_key))
        .route("/keys/{name}/{version}", get(get_key))
        .route("/keys/{name}/{version}/release", post(release_key))
        .with_state(state)
}

/// `http://<addr>`, or `https://<addr>` with TLS.
fn base_url(addr: SocketAddr, tls: Option<&ServerTls>) -> String {
    match tls {
        Some(_) => format!("https://{addr}"),
        None => format!("http://{addr}"),
    }
}

/// Serve `app` on `listener`, over TLS when `tls` is given, until `shutdown` completes.
async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<ServerTls>,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let served = match tls {
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
        Some(tls) => {
            let listener = TlsListener::new(listener, &tls).map_err(|source| ServiceError::Io {
                context: "local address".into(),
                source,
            })?;
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
    };
    served.map_err(|source| ServiceError::Io {
        context: "serving".into(),
        source,
    })
}

/// Serve on `listener` until `shutdown` completes. The issuer defaults to `http://<local address>`
/// (`https://` with TLS).
pub async fn run(
    listener: tokio::net::TcpListener,
    config: ServiceConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let addr = listener.local_addr().map_err(|source| ServiceError::Io {
        context: "local address".into(),
        source,
    })?;
    let tls = config.tls.clone();
    let issuer = config.issuer.clone().unwrap_or_else(|| base_url(addr, tls.as_ref()));
    let state = tokio::task::spawn_blocking(move || AppState::new(config, issuer))
        .await
        .map_err(|e| ServiceError::Config(e.to_string()))??;
    tracing::info!(%addr, issuer = %state.issuer, kid = %state.identity.kid(), tls = tls.is_some(), "attestation service listening");
    serve(listener, tls, router(Arc::new(state)), shutdown).await
}

/// A service running in this process (for tests and for `deploy local`).
#[derive(Debug)]
pub struct RunningService {
    /// Base URL, `http://127.0.0.1:<port>` (`https://` with TLS; also the issuer unless configured).
    pub url: String,
    /// Bound address.
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServiceError>>,
}

impl RunningService {
    /// Bind `127.0.0.1:0` and serve `config` in a background task. Returns once the state is ready.
    pub async fn start(config: ServiceConfig) -> Result<Self, ServiceError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| ServiceError::Io {
                context: "binding 127.0.0.1:0".into(),
                source,
            })?;
        Self::start_on(listener, config).await
    }

    /// Serve on an already bound listener.
    pub async fn start_on(listener: tokio::net::TcpListener, config: ServiceConfig) -> Result<Self, ServiceError> {
        let addr = listener.local_addr().map_err(|source| ServiceError::Io {
            context: "local address".into(),
            source,
        })?;
        let tls = config.tls.clone();
        let url = base_url(addr, tls.as_ref());
        let issuer = config.issuer.clone().unwrap_or_else(|| url.clone());
        let state = tokio::task::spawn_blocking(move || AppState::new(config, issuer))
            .await
            .map_err(|e| ServiceError::Config(e.to_string()))??;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(Arc::new(state));
        let task = tokio::spawn(serve(listener, tls, app, async move {
            let _ = rx.await;
        }));
        Ok(Self {
            url,
            addr,
            shutdown: Some(tx),
            task,
        })
    }

    /// Stop and wait for the server task.
    pub async fn stop(mut self) -> Result<(), ServiceError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task)
            .await
            .map_err(|e| ServiceError::Config(e.to_string()))?
    }
}
