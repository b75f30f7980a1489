//! Entra ID tokens for the vault: Azure Workload Identity (AKS) and an IMDS managed identity, against local
//! endpoints in the test. The Entra-shaped token endpoint checks the grant type, client id, scope, assertion type
//! and that the assertion is the federated token file's current content, and mints tokens; a front to the local
//! key broker (`cinfer-attest serve`'s service, AKV-compatible) releases keys only with a bearer token it minted for
//! the vault's scope. End to end: `cinfer-attest release-key --workload-identity` gets its key that way.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attest::client::{AttestationClient, KeyRef, KeyReleaseClient, ResponseVerification, VaultAuth};
use attest::credential::{Credential, CredentialError, JWT_BEARER, TokenProvider, WorkloadIdentity};
use attest::evidence::{MockAttester, MockConfig, MockRoot};
use attest::keywrap::KeyDerivation;
use attest::policy::ReleasePolicy;
use attest::secret::SecretBytes;
use attest::service::{RunningService, ServiceConfig};
use attest::verify::TrustStore;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};

const BIN: &str = env!("CARGO_BIN_EXE_cinfer-attest");
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const VAULT_SCOPE: &str = "https://vault.azure.net/.default";
const ADMIN: &[u8] = b"test-admin-token";
const HOST_DATA: [u8; 32] = [0x5c; 32];
const MODEL_KEY: [u8; 32] = [0x42; 32];

/// Minted tokens and the scope each was minted for.
type Minted = Arc<Mutex<HashMap<String, String>>>;

/// The Entra-shaped token endpoint: `POST /{TENANT}/oauth2/v2.0/token`.
struct Entra {
    authority: String,
    hits: Arc<AtomicUsize>,
    minted: Minted,
    /// The assertion each request carried.
    seen: Arc<Mutex<Vec<String>>>,
}

fn form(body: &str) -> HashMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{body}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> (StatusCode, String) {
    (
        status,
        serde_json::json!({"error": code, "error_description": description}).to_string(),
    )
}

impl Entra {
    /// Accepts requests whose assertion is the content of `token_file` now; tokens live `lifetime_s`.
    async fn start(token_file: PathBuf, lifetime_s: u64) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let minted: Minted = Arc::default();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let (h, m, s) = (hits.clone(), minted.clone(), seen.clone());
        let app = axum::Router::new().route(
            &format!("/{TENANT}/oauth2/v2.0/token"),
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let n = h.fetch_add(1, Ordering::SeqCst);
                let (minted, seen, token_file) = (m.clone(), s.clone(), token_file.clone());
                async move {
                    let ct = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    if ct != "application/x-www-form-urlencoded" {
                        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "not a form");
                    }
                    let f = form(&body);
                    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
                    seen.lock().unwrap().push(get("client_assertion"));
                    if get("grant_type") != "client_credentials" {
                        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "grant_type");
                    }
                    if get("client_assertion_type") != JWT_BEARER {
                        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "client_assertion_type");
                    }
                    if get("client_id") != CLIENT_ID {
                        return oauth_error(
                            StatusCode::BAD_REQUEST,
                            "unauthorized_client",
                            "AADSTS700016: Application not found in the directory",
                        );
                    }
                    let current = std::fs::read_to_string(&token_file).unwrap_or_default();
                    if get("client_assertion") != current.trim() {
                        return oauth_error(
                            StatusCode::UNAUTHORIZED,
                            "invalid_client",
                            "AADSTS700213: No matching federated identity record found for presented assertion",
                        );
                    }
                    if !get("scope").ends_with("/.default") {
                        return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", "scope");
                    }
                    let token = format!("entra-access-token-{n}");
                    minted.lock().unwrap().insert(token.clone(), get("scope"));
                    let body = serde_json::json!({"token_type": "Bearer", "expires_in": lifetime_s,
                                                  "ext_expires_in": lifetime_s, "access_token": token});
                    (StatusCode::OK, body.to_string())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            authority,
            hits,
            minted,
            seen,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn vars(&self, token_file: &Path) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_CLIENT_ID", CLIENT_ID.to_owned()),
            ("AZURE_TENANT_ID", TENANT.to_owned()),
            ("AZURE_FEDERATED_TOKEN_FILE", token_file.display().to_string()),
            ("AZURE_AUTHORITY_HOST", self.authority.clone()),
        ]
    }

    fn identity(&self, token_file: &Path) -> WorkloadIdentity {
        let vars: HashMap<&str, String> = self.vars(token_file).into_iter().collect();
        WorkloadIdentity::from_vars(|k| vars.get(k).cloned()).unwrap()
    }
}

/// The local broker behind a front that wants, for a key release, a bearer token the Entra endpoint minted for
/// the vault's scope (as AKV does); everything else is passed through.
struct Vault {
    svc: RunningService,
    url: String,
    releases: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
    mock_root_dir: PathBuf,
    root: MockRoot,
}

impl Vault {
    async fn start(minted: Minted) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = MockRoot::generate(attest::report::Generation::Milan).unwrap();
        let mock_root_dir = dir.path().join("mock-root");
        root.save(&mock_root_dir).unwrap();
        let mut trust = TrustStore::amd();
        trust.add_mock_root(root.ark_pem().as_bytes()).unwrap();
        let svc = RunningService::start(ServiceConfig {
            trust,
            admin_token: Some(SecretBytes::from_slice(ADMIN)),
            ..Default::default()
        })
        .await
        .unwrap();
        let policy = ReleasePolicy::from_json(
            format!(
                r#"{{"version":"1.0.0","anyOf":[{{"authority":"{}","allOf":[
                    {{"claim":"x-ms-sevsnpvm-hostdata","equals":"{}"}},
                    {{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"}}]}}]}}"#,
                svc.url,
                hex::encode(HOST_DATA)
            )
            .as_bytes(),
        )
        .unwrap();
        let jwks = AttestationClient::new(&svc.url).unwrap().jwks().await.unwrap();
        KeyReleaseClient::new(
            &svc.url,
            VaultAuth::Bearer(SecretBytes::from_slice(ADMIN)),
            ResponseVerification::Pinned(jwks),
        )
        .unwrap()
        .import_oct("model-key", &MODEL_KEY, &policy)
        .await
        .unwrap();

        let releases = Arc::new(AtomicUsize::new(0));
        let (upstream, counter) = (svc.url.clone(), releases.clone());
        let http = reqwest::Client::new();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (upstream, minted, counter, http) = (upstream.clone(), minted.clone(), counter.clone(), http.clone());
                async move {
                    if uri.path().ends_with("/release") {
                        let bearer = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("Bearer "))
                            .unwrap_or_default();
                        if minted.lock().unwrap().get(bearer).map(String::as_str) != Some(VAULT_SCOPE) {
                            let e = serde_json::json!({"error": {"code": "Unauthorized",
                                                                 "message": "AKV10000: missing or foreign bearer token"}});
                            return (StatusCode::UNAUTHORIZED, e.to_string().into_bytes());
                        }
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    let mut rb = http.request(method, format!("{upstream}{uri}")).body(body);
                    if let Some(ct) = headers.get("content-type") {
                        rb = rb.header("content-type", ct);
                    }
                    let resp = rb.send().await.unwrap();
                    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
                    (status, resp.bytes().await.unwrap().to_vec())
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            svc,
            url,
            releases,
            _dir: dir,
            mock_root_dir,
            root,
        }
    }

    async fn release(&self, auth: VaultAuth) -> Result<attest::secret::ModelKey, attest::error::ClientError> {
        let maa = AttestationClient::new(&self.url).unwrap();
        let jwks = maa.jwks().await.unwrap();
        let vault = KeyReleaseClient::new(&self.url, auth, ResponseVerification::Pinned(jwks)).unwrap();
        let attester = MockAttester::new(
            &self.root,
            MockConfig {
                host_data: HOST_DATA,
                ..Default::default()
            },
        )
        .unwrap();
        attest::client::secure_key_release(
            &attester,
            &maa,
            &vault,
            &KeyRef::parse("model-key"),
            &KeyDerivation::default(),
            None,
        )
        .await
    }
}

fn write_token_file(dir: &Path, content: &str) -> PathBuf {
    let p = dir.join("azure-identity-token");
    std::fs::write(&p, content).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_token_releases_the_key_and_is_cached_and_the_assertion_reread() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_token_file(dir.path(), "federated-sa-token-1\n");
    let entra = Entra::start(file.clone(), 2).await;
    let vault = Vault::start(entra.minted.clone()).await;

    // Without a token the front refuses the release: it really checks.
    let e = vault.release(VaultAuth::None).await.unwrap_err().to_string();
    assert!(e.contains("HTTP 401") && e.contains("AKV10000"), "{e}");
    assert_eq!(vault.releases.load(Ordering::SeqCst), 0);

    let provider = Arc::new(TokenProvider::new(Credential::WorkloadIdentity(entra.identity(&file))).unwrap());
    let key = vault.release(VaultAuth::Entra(provider.clone())).await.unwrap();
    assert_eq!(key.expose(), &MODEL_KEY);
    assert_eq!((entra.hits(), vault.releases.load(Ordering::SeqCst)), (1, 1));
    // A second release within the token's life reuses it.
    vault.release(VaultAuth::Entra(provider.clone())).await.unwrap();
    assert_eq!((entra.hits(), vault.releases.load(Ordering::SeqCst)), (1, 2));

    // Kubelet rotates the file; once the token is due for renewal (half of its 2 s life), the new assertion is sent.
    write_token_file(dir.path(), "federated-sa-token-2");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    vault.release(VaultAuth::Entra(provider)).await.unwrap();
    assert_eq!(entra.hits(), 2);
    assert_eq!(
        *entra.seen.lock().unwrap(),
        ["federated-sa-token-1", "federated-sa-token-2"]
    );
    vault.svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_endpoint_and_entras_error_but_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_token_file(dir.path(), "federated-sa-token-1");
    let entra = Entra::start(dir.path().join("expected-assertion"), 3600).await;
    std::fs::write(dir.path().join("expected-assertion"), "another-token").unwrap();
    let wi = entra.identity(&file);
    let provider = TokenProvider::new(Credential::WorkloadIdentity(wi.clone())).unwrap();
    let e = provider.token("https://vault.azure.net").await.unwrap_err();
    let text = e.to_string();
    assert!(!e.is_transient());
    assert!(
        text.starts_with(&format!(
            "workload identity: token request to {}{TENANT}/oauth2/v2.0/token: HTTP 401: invalid_client: AADSTS700213",
            entra.authority
        )),
        "{text}"
    );
    assert!(!text.contains("federated-sa-token"), "the assertion leaked: {text}");
    assert_eq!(entra.hits(), 1, "a 401 is final");

    // Another client id.
    let other = WorkloadIdentity::new(
        "99999999-2222-3333-4444-555555555555".into(),
        TENANT.into(),
        file.clone(),
        entra.authority.clone(),
    )
    .unwrap();
    let e = TokenProvider::new(Credential::WorkloadIdentity(other))
        .unwrap()
        .token("https://vault.azure.net")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("HTTP 400: unauthorized_client: AADSTS700016"), "{e}");

    // The federated token file is gone, or empty.
    let gone = WorkloadIdentity {
        token_file: dir.path().join("missing"),
        ..wi.clone()
    };
    let e = TokenProvider::new(Credential::WorkloadIdentity(gone))
        .unwrap()
        .token("https://vault.azure.net")
        .await
        .unwrap_err();
    assert!(matches!(e, CredentialError::TokenFile { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&dir.path().join("missing").display().to_string()),
        "{e}"
    );
    std::fs::write(&file, "\n").unwrap();
    let e = provider.token("https://vault.azure.net").await.unwrap_err().to_string();
    assert!(e.ends_with("azure-identity-token: empty"), "{e}");
    assert_eq!(entra.hits(), 2, "no request without an assertion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_asks_imds_with_the_metadata_header_and_caches_per_resource() {
    use axum::extract::Query;
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/metadata/identity/oauth2/token",
        axum::routing::get(move |headers: HeaderMap, Query(q): Query<HashMap<String, String>>| {
            h.fetch_add(1, Ordering::SeqCst);
            async move {
                if headers.get("Metadata").and_then(|v| v.to_str().ok()) != Some("true") {
                    return (StatusCode::BAD_REQUEST, "no Metadata header".to_string());
                }
                if q.get("api-version").map(String::as_str) != Some("2018-02-01") {
                    return (StatusCode::BAD_REQUEST, "api-version".to_string());
                }
                let body = serde_json::json!({"access_token": format!("tok:{}:{}", q["resource"],
                                                  q.get("client_id").cloned().unwrap_or_default()),
                                              "expires_in": "3600", "token_type": "Bearer"});
                (StatusCode::OK, body.to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/metadata/identity/oauth2/token",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let provider = TokenProvider::new(Credential::ManagedIdentity {
        client_id: Some("abc".into()),
    })
    .unwrap()
    .with_imds_url(&url)
    .unwrap();
    let t = provider.token("https://vault.azure.net").await.unwrap();
    assert_eq!(t.expose(), b"tok:https://vault.azure.net:abc");
    provider.token("https://vault.azure.net").await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1, "cached");
    let s = provider.token("https://storage.azure.com/").await.unwrap();
    assert_eq!(s.expose(), b"tok:https://storage.azure.com/:abc");
    assert_eq!(hits.load(Ordering::SeqCst), 2, "one token per resource");
    // IMDS elsewhere than the metadata address or loopback is refused.
    let e = TokenProvider::new(Credential::ManagedIdentity { client_id: None })
        .unwrap()
        .with_imds_url("http://10.0.0.9/metadata/identity/oauth2/token")
        .unwrap_err();
    assert!(matches!(e, CredentialError::Transport(_)), "{e}");
}

#[test]
fn release_key_cli_gets_its_key_through_workload_identity() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_token_file(dir.path(), "federated-sa-token-cli");
    let entra = rt.block_on(Entra::start(file.clone(), 3600));
    let vault = rt.block_on(Vault::start(entra.minted.clone()));
    let out = dir.path().join("model.key");
    let release = |extra: &[&str], env: &[(&'static str, String)]| {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "release-key",
            "--maa",
            &vault.url,
            "--vault",
            &vault.url,
            "--key",
            "model-key",
        ])
        .arg("--out")
        .arg(&out)
        .args(["--attester", "mock", "--mock-root"])
        .arg(&vault.mock_root_dir)
        .args(["--host-data", &hex::encode(HOST_DATA)])
        .args(extra)
        .env("CINFER_LOG", "warn");
        for k in [
            "AZURE_CLIENT_ID",
            "AZURE_TENANT_ID",
            "AZURE_FEDERATED_TOKEN_FILE",
            "AZURE_AUTHORITY_HOST",
        ] {
            cmd.env_remove(k);
        }
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        cmd.output().unwrap()
    };
    let vars = entra.vars(&file);

    let o = release(&["--workload-identity"], &vars);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), MODEL_KEY);
    assert_eq!((entra.hits(), vault.releases.load(Ordering::SeqCst)), (1, 1));
    assert_eq!(*entra.seen.lock().unwrap(), ["federated-sa-token-cli"]);

    // Without the flag no token is sent and the vault refuses; with it but a variable missing, nothing is sent.
    std::fs::remove_file(&out).unwrap();
    let o = release(&[], &vars);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("HTTP 401"));
    let o = release(&["--workload-identity"], &vars[..3]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("--workload-identity: workload identity: AZURE_AUTHORITY_HOST is not set"),
        "{stderr}"
    );
    assert!(!out.exists());
    assert_eq!(entra.hits(), 1);
    // Plain http to an authority that is not loopback is refused before anything is sent.
    let mut remote = vars.clone();
    remote[3].1 = "http://login.example.net/".into();
    let o = release(&["--workload-identity"], &remote);
    assert!(String::from_utf8_lossy(&o.stderr).contains("AZURE_AUTHORITY_HOST: plain http:// to login.example.net"));
    rt.block_on(vault.svc.stop()).unwrap();
}
