//! Every refusal, through the client proxy over loopback: the answer is 502 naming the failed check, and
//! the upstream (or the impostor server) receives no request byte.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use proxy::atls::AttestedIdentity;
use proxy::atls::cert::{generate_key, key_runtime_data, token_extension};
use proxy::policy::ClientPolicy;
use proxy::server::IdentitySource;
use rcgen::{CertificateParams, DnType, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Request through the proxy (absolute form and CONNECT) and check both are refused by `check`, the
/// body names it and contains `needle`.
async fn assert_refused(proxy: SocketAddr, target: SocketAddr, check: &str, needle: &str) {
    let r = proxy_get(proxy, target, "/v2/models/secret/infer").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("x-cinfer-atls-check").as_deref(), Some(check), "{r:?}");
    assert!(r.body.contains(&format!("check {check} failed")), "{}", r.body);
    assert!(r.body.contains(needle), "body {:?} lacks {needle:?}", r.body);

    let mut tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).await.unwrap();
            raw.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&raw).contains(needle) {
                break;
            }
        }
    })
    .await
    .unwrap();
    let r = parse_reply(&raw);
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("x-cinfer-atls-check").as_deref(), Some(check));
}

/// A server proxy with an attested identity for `guest`, and a client proxy with `policy`.
async fn refused_by_policy(svc: &Service, guest: attest::evidence::MockConfig, policy: ClientPolicy, needle: &str) {
    let up = upstream().await;
    let (_srv, addr) = server(IdentitySource::Attested(issuer(svc, guest)), &up, None).await;
    let proxy = client(verifier(svc, policy)).await;
    assert_refused(proxy, addr, "policy", needle).await;
    assert_eq!(up.connections(), 0, "the upstream saw a connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_hostdata_is_refused_by_policy() {
    let svc = service().await;
    refused_by_policy(&svc, guest([0x22; 32], false), good_policy(), "x-ms-sevsnpvm-hostdata").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debuggable_guest_is_refused_by_policy() {
    let svc = service().await;
    refused_by_policy(
        &svc,
        guest(GOOD_HOSTDATA, true),
        good_policy(),
        "x-ms-sevsnpvm-is-debuggable",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_signer_form_accepts_the_signer_and_refuses_another() {
    let (signer, signer_pem) = auditor("auditor-a");
    let (other, _) = auditor("auditor-b");
    let policy = "version=1.0; authorizationrules { => permit(); };";
    let mut config = service_config();
    config.policy = Some(attest::policy::sign_policy(policy, &signer_pem, signer.cert_der()).unwrap());
    config.policy_signers = vec![signer.cert_der().to_vec()];
    let svc = service_with("maa", config).await;

    // Pinned to the auditor who signed the service's policy: accepted (the seed's second policy form).
    let up = upstream().await;
    let (_srv, addr) = server(
        IdentitySource::Attested(issuer(&svc, guest(GOOD_HOSTDATA, false))),
        &up,
        None,
    )
    .await;
    let ok = client(verifier(&svc, ClientPolicy::policy_signer(signer.cert_der()))).await;
    let r = proxy_get(ok, addr, "/signed").await;
    assert_eq!(r.status, 200, "{r:?}");

    // Pinned to another signer: refused.
    let up = upstream().await;
    let (_srv, addr) = server(
        IdentitySource::Attested(issuer(&svc, guest(GOOD_HOSTDATA, false))),
        &up,
        None,
    )
    .await;
    let proxy = client(verifier(&svc, ClientPolicy::policy_signer(other.cert_der()))).await;
    assert_refused(proxy, addr, "policy", "x-ms-policy-signer").await;
    assert_eq!(up.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refused() {
    let mut config = service_config();
    config.token_lifetime = Duration::from_secs(1);
    let svc = service_with("maa", config).await;
    let key = generate_key().unwrap();
    let token = issuer(&svc, guest(GOOD_HOSTDATA, false))
        .token(&key_runtime_data(&key, &[]))
        .await
        .unwrap();
    let fixed = AttestedIdentity::from_parts(key, token, "cinfer").unwrap();
    let up = upstream().await;
    let (_srv, addr) = server(IdentitySource::Fixed(Arc::new(fixed)), &up, None).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut v = verifier(&svc, good_policy());
    v.leeway = Duration::ZERO;
    let proxy = client(v).await;
    assert_refused(proxy, addr, "expiry", "expired").await;
    assert_eq!(up.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_bound_to_another_key_is_refused() {
    let svc = service().await;
    let bound = generate_key().unwrap();
    let token = issuer(&svc, guest(GOOD_HOSTDATA, false))
        .token(&key_runtime_data(&bound, &[]))
        .await
        .unwrap();
    // The token is genuine, but the certificate (and TLS key) is another key's.
    let fixed = AttestedIdentity::from_parts(generate_key().unwrap(), token, "cinfer").unwrap();
    let up = upstream().await;
    let (_srv, addr) = server(IdentitySource::Fixed(Arc::new(fixed)), &up, None).await;
    let proxy = client(verifier(&svc, good_policy())).await;
    assert_refused(proxy, addr, "key-binding", "tls-spki-sha256").await;
    assert_eq!(up.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_from_an_untrusted_attestation_service_is_refused() {
    let svc = service().await;
    let rogue = service_with("rogue", service_config()).await;
    let up = upstream().await;
    let (_srv, addr) = server(
        IdentitySource::Attested(issuer(&rogue, guest(GOOD_HOSTDATA, false))),
        &up,
        None,
    )
    .await;
    // Keys pinned to the trusted service: the rogue's signature does not verify.
    let proxy = client(verifier(&svc, good_policy())).await;
    assert_refused(proxy, addr, "token-signature", "no trusted key").await;
    // The trusted service's keys but another expected issuer: the issuer check names it.
    let mut v = verifier(&svc, good_policy());
    v.issuer = "https://trusted.attest.example".into();
    let (_srv2, addr2) = server(
        IdentitySource::Attested(issuer(&svc, guest(GOOD_HOSTDATA, false))),
        &up,
        None,
    )
    .await;
    let proxy = client(v).await;
    assert_refused(proxy, addr2, "issuer", "https://trusted.attest.example").await;
    assert_eq!(up.connections(), 0);
}

/// A TLS server with a given certificate that counts application bytes it receives.
async fn impostor(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    tls12_only: bool,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    count.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, received)
}

fn key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tls_server_without_a_token_is_refused() {
    let svc = service().await;
    let key = generate_key().unwrap();
    let cert = CertificateParams::new(vec!["cinfer".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (addr, received) = impostor(cert.der().clone(), key_der(&key), false).await;
    let proxy = client(verifier(&svc, good_policy())).await;
    assert_refused(proxy, addr, "token-extension", "no attestation token").await;
    assert_eq!(received.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_only_server_is_refused() {
    let svc = service().await;
    let key = generate_key().unwrap();
    let token = issuer(&svc, guest(GOOD_HOSTDATA, false))
        .token(&key_runtime_data(&key, &[]))
        .await
        .unwrap();
    let id = AttestedIdentity::from_parts(key, token, "cinfer").unwrap();
    let (addr, received) = impostor(id.cert_der().clone(), id.private_key(), true).await;
    let proxy = client(verifier(&svc, good_policy())).await;
    assert_refused(proxy, addr, "tls-version", "TLS 1.3").await;
    assert_eq!(received.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_not_signed_by_its_own_key_is_refused() {
    let svc = service().await;
    let key = generate_key().unwrap();
    let token = issuer(&svc, guest(GOOD_HOSTDATA, false))
        .token(&key_runtime_data(&key, &[]))
        .await
        .unwrap();
    // Same key, same token, but the certificate is issued by a CA key.
    let ca_key = generate_key().unwrap();
    let mut ca_params = CertificateParams::new(vec!["ca".into()]).unwrap();
    ca_params.distinguished_name.push(DnType::CommonName, "ca");
    let ca = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec!["cinfer".into()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "cinfer");
    params.custom_extensions.push(token_extension(&token));
    let cert = params.signed_by(&key, &ca).unwrap();
    let (addr, received) = impostor(cert.der().clone(), key_der(&key), false).await;
    let proxy = client(verifier(&svc, good_policy())).await;
    assert_refused(proxy, addr, "self-signature", "self-signed").await;
    assert_eq!(received.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_run_in_the_stated_order() {
    use proxy::atls::{Check, verify_leaf};
    let svc = service().await;
    let rogue = service_with("rogue", service_config()).await;
    let now = std::time::SystemTime::now();
    let config = verifier(&svc, good_policy());
    let wrong_guest = guest([0x22; 32], true);
    // Untrusted signer + wrong key + wrong hostdata: the signature check comes first.
    let t = issuer(&rogue, wrong_guest.clone())
        .token(&key_runtime_data(&generate_key().unwrap(), &[]))
        .await
        .unwrap();
    let id = AttestedIdentity::from_parts(generate_key().unwrap(), t, "cinfer").unwrap();
    assert_eq!(
        verify_leaf(id.cert_der(), &config, now).unwrap_err().check(),
        Check::TokenSignature
    );
    // Trusted, but wrong issuer expected + wrong key + wrong hostdata: issuer.
    let t = issuer(&svc, wrong_guest.clone())
        .token(&key_runtime_data(&generate_key().unwrap(), &[]))
        .await
        .unwrap();
    let id = AttestedIdentity::from_parts(generate_key().unwrap(), t, "cinfer").unwrap();
    let mut other_issuer = config.clone();
    other_issuer.issuer = "https://elsewhere".into();
    assert_eq!(
        verify_leaf(id.cert_der(), &other_issuer, now).unwrap_err().check(),
        Check::Issuer
    );
    // Later than exp + leeway, wrong key + wrong hostdata: expiry.
    let late = now + Duration::from_secs(9 * 3600);
    assert_eq!(
        verify_leaf(id.cert_der(), &config, late).unwrap_err().check(),
        Check::Expiry
    );
    // Wrong key + wrong hostdata: the key binding before the policy.
    assert_eq!(
        verify_leaf(id.cert_der(), &config, now).unwrap_err().check(),
        Check::KeyBinding
    );
    // Right key, wrong hostdata and debuggable: the policy, naming the first differing claim.
    let key = generate_key().unwrap();
    let t = issuer(&svc, wrong_guest)
        .token(&key_runtime_data(&key, &[]))
        .await
        .unwrap();
    let id = AttestedIdentity::from_parts(key, t, "cinfer").unwrap();
    let e = verify_leaf(id.cert_der(), &config, now).unwrap_err();
    assert_eq!(e.check(), Check::Policy);
    assert!(e.to_string().contains("x-ms-sevsnpvm-hostdata"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_policy_accepts_a_composite_server_and_refuses_one_without_gpus() {
    use attest::gpu::mock::{MockGpuAttester, MockGpuConfig, MockGpuRoot};
    let gpu_root = MockGpuRoot::generate().unwrap();
    let gpus = MockGpuConfig::default();
    let mut config = service_config();
    config.gpu = attest::service::GpuServiceConfig {
        trust: gpu_root.trust().unwrap(),
        collateral: Some(gpu_root.collateral(&gpus, Duration::from_secs(3600)).unwrap()),
    };
    let svc = service_with("maa", config).await;
    let policy = good_policy()
        .require_gpus(&attest::gpu::requirement::GpuRequirement::gpus(1))
        .unwrap();

    // A server whose token carries a GPU in CC mode: the client's GPU policy holds.
    let cpu = attest::evidence::MockAttester::new(&root(), guest(GOOD_HOSTDATA, false)).unwrap();
    let composite = attest::evidence::CompositeAttester::new(
        Arc::new(cpu),
        Arc::new(MockGpuAttester::new(&gpu_root, gpus).unwrap()),
    );
    let issuer = Arc::new(proxy::atls::TokenIssuer::new(
        attest::client::AttestationClient::new(&svc.url).unwrap(),
        Arc::new(composite),
    ));
    let up = upstream().await;
    let (_srv, addr) = server(IdentitySource::Attested(issuer), &up, None).await;
    let ok = client(verifier(&svc, policy.clone())).await;
    let r = proxy_get(ok, addr, "/gpu").await;
    assert_eq!(r.status, 200, "{r:?}");

    // The same guest without GPU evidence: refused, naming the GPU condition, before any byte goes upstream.
    refused_by_policy(
        &svc,
        guest(GOOD_HOSTDATA, false),
        policy,
        "x-cinfer-gpu-cc-mode is missing",
    )
    .await;
}
