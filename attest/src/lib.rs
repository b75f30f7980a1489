//! Attestation for cinfer: SEV-SNP evidence and verification, an MAA-compatible attestation service, an
//! AKV-compatible key broker, and the clients encfs and proxy call.
//!
//! # Design
//!
//! The model key must reach only a correctly configured container in a genuine SEV-SNP VM. The protocol
//! is Azure's (MAA attestation + AKV secure key release), so production can use MAA/AKV, while
//! `cinfer-attest serve` provides both services locally and the mock attester makes the pipeline run on
//! one machine. Mock evidence chains to a generated root that verifies only where it is explicitly
//! trusted ([`verify::TrustStore::add_mock_root`]); there is no fallback from the SNP device to the mock.
//! Every token names its root in `x-cinfer-root` (`amd-milan`, `amd-genoa`, `amd-turin`, `mock:<sha256>`),
//! so a release policy can additionally pin real hardware with
//! `{"claim":"x-cinfer-root","equals":"amd-genoa"}`.
//!
//! # Public API (what other crates use)
//!
//! * **Evidence** — [`evidence::Attester`] (`fn evidence(&self, report_data: &[u8; 64])`), implemented by
//!   [`evidence::SnpDeviceAttester::open_with`] (`/dev/sev-guest`, `/dev/sev`; the host's certificates and UVM
//!   endorsement from ACI's security context, or on AKS from THIM and the node's reference-info file:
//!   [`evidence::HostSources`])
//!   and [`evidence::MockAttester::new`]`(&`[`evidence::MockRoot`]`, `[`evidence::MockConfig`]`)`.
//! * **Verification** — [`verify::verify_report`]`(report, &`[`verify::CertChain`]`, &TrustStore,
//!   &`[`verify::VerifyOptions`]`)` → [`verify::VerifiedReport`]; errors name the failed check.
//!   [`verify::maa_report_data`] is the MAA binding (`SHA-256(runtime data) ‖ 0³²`). The options carry an
//!   [`appraisal::Appraisal`]: minimum TCB per product (AMD-SB-3019 levels by default), report-version floor,
//!   migration agents refused.
//! * **ACI evidence** — [`aci::verify_aci`]`(&`[`aci::AciEvidence`]`, &TrustStore, &`[`endorsement::UvmTrust`]`,
//!   &VerifyOptions)`: the report, HOST_DATA = SHA-256 of the policy, the UVM endorsement
//!   ([`endorsement::verify_uvm_endorsement`]: COSE_Sign1, did:x509 issuer, feed, SVN) and measurement
//!   equality; [`claims::aci_claims`] turns the result into MAA claims (`azure-compliant-uvm` only when
//!   endorsed). Offline collateral: [`collateral::Collateral`] / [`collateral::CollateralBuilder`].
//! * **GPU evidence** — [`gpu::verify_gpu`]`(&`[`gpu::GpuEvidence`]`, &`[`gpu::GpuTrust`]`, &`[`gpu::GpuVerifyOptions`]`)`:
//!   NVIDIA Hopper SPDM reports, device chain to NVIDIA's root, signed RIMs (XML-DSig), measurements,
//!   offline collateral ([`gpu::collateral::GpuCollateral`]); [`gpu::claims::gpu_claims`] names claims as NVIDIA does.
//! * **Composite evidence (SNP + GPUs)** — [`evidence::CompositeAttester`] adds the GPUs' evidence
//!   ([`gpu::GpuAttester`]) with each SPDM nonce = [`gpu::binding::gpu_nonce`]`(report_data)`; the service
//!   verifies both ([`service::GpuServiceConfig`]) into one token ([`gpu::claims::composite_claims`]);
//!   [`gpu::requirement::GpuRequirement`] turns "at least N GPUs, CC on, no DevTools, measurements matched,
//!   driver/VBIOS minimums" into release-policy conditions. Mock GPUs: [`gpu::mock`] (never trusted unless
//!   configured, like the mock SNP root).
//! * **Tokens** — [`token::verify_token`]`(jwt, &`[`token::Jwks`]`, &`[`token::TokenCheck`]`)` → claims
//!   (RS256 only, pinned keys, issuer, `exp`/`nbf`). The proxy calls this, then compares
//!   `claims["x-ms-runtime"]` and its policy claims by exact equality ([`policy::claim_equals`]).
//! * **Service** — [`service::run`]`(listener, `[`service::ServiceConfig`]`, shutdown)`, or
//!   [`service::RunningService::start`]`(config)` for an in-process server on `127.0.0.1:0`.
//! * **Clients** — [`client::AttestationClient`] (`attest`, `attest_with`, `jwks`),
//!   [`client::KeyReleaseClient`] (`import`, `import_oct`, `release`), and the one-call flow
//!   [`client::secure_key_release`] → [`secret::ModelKey`] (32 bytes, zeroized, redacted `Debug`).
//!   Release responses are JWS: verify them with the local service's pinned JWKS
//!   ([`client::ResponseVerification::Pinned`]) or, for AKV/mHSM, the `x5c` chain to the system CAs for
//!   the vault's host name ([`client::ResponseVerification::system_roots`]). Vault auth:
//!   [`client::VaultAuth`] (`None`, `Bearer`, `Entra`).
//! * **Entra ID tokens** — [`credential::TokenProvider`] for a [`credential::Credential`]: an IMDS managed
//!   identity or Azure Workload Identity ([`credential::WorkloadIdentity::from_env`], AKS), cached per resource;
//!   used for the vault and by encfs for private blobs.
//! * **Transport** — [`tls::ServerTls`] (certificate files or self-signed at start, [`tls::Fingerprints`]) in
//!   [`service::ServiceConfig::tls`]; clients trust `https://` per [`tls::TlsTrust`] (system roots by default, a
//!   CA, or a pinned certificate) via `with_tls`; [`transport::check_endpoint`] refuses plain HTTP beyond loopback.
//! * **Release policy strength** — [`pins::require_release_pins`]: every alternative pins the workload
//!   (`x-ms-sevsnpvm-hostdata` or `x-ms-policy-signer`) and `x-ms-sevsnpvm-is-debuggable = false`.
//! * **Key transport** — [`keywrap::RuntimeKey`] (RSA-2048, runtime data JSON, unwrap),
//!   CKM_RSA_AES_KEY_WRAP ([`keywrap::rsa_aes_wrap`]), HKDF derivation ([`keywrap::KeyDerivation`]).
//! * **Policies** — [`policy::AttestationPolicy`] (MAA text, optionally auditor-signed JWS) and
//!   [`policy::ReleasePolicy`] (AKV JSON).
//!
//! # Example: local pipeline
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use attest::{client::*, evidence::*, keywrap::*, policy::*, service::*, verify::TrustStore};
//! let root = MockRoot::generate(attest::report::Generation::Milan)?;
//! let mut trust = TrustStore::amd();
//! trust.add_mock_root(root.ark_pem().as_bytes())?;
//! let admin = attest::secret::SecretBytes::from_slice(b"a-long-random-admin-token");
//! let svc = RunningService::start(ServiceConfig { trust, admin_token: Some(admin.clone()), ..Default::default() }).await?;
//! let maa = AttestationClient::new(&svc.url)?;
//! let policy = ReleasePolicy::from_json(format!(
//!     r#"{{"version":"1.0.0","anyOf":[{{"authority":"{}","allOf":[{{"claim":"x-ms-sevsnpvm-hostdata","equals":"{}"}},
//!         {{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"}}]}}]}}"#,
//!     svc.url, hex::encode([0u8; 32])).as_bytes())?;
//! KeyReleaseClient::new(&svc.url, VaultAuth::Bearer(admin), ResponseVerification::Pinned(maa.jwks().await?))?
//!     .import_oct("model", &[7u8; 32], &policy).await?;
//! let vault = KeyReleaseClient::new(&svc.url, VaultAuth::None, ResponseVerification::Pinned(maa.jwks().await?))?;
//! let attester = MockAttester::new(&root, MockConfig::default())?;
//! let key = secure_key_release(&attester, &maa, &vault, &KeyRef::parse("model"), &KeyDerivation::default(), None).await?;
//! assert_eq!(key.expose(), &[7u8; 32]);
//! # Ok(()) }
//! ```

pub mod aci;
pub mod appraisal;
pub mod claims;
pub mod client;
pub mod collateral;
pub mod credential;
pub mod endorsement;
pub mod error;
pub mod evidence;
pub mod gpu;
pub mod keystore;
pub mod keywrap;
pub mod pins;
mod pki;
pub mod policy;
pub mod protocol;
pub mod report;
pub mod secret;
pub mod service;
pub mod store;
pub mod tls;
pub mod token;
pub mod transport;
pub mod verify;
