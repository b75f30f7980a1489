//! One negative test per check; each asserts that the error names the check that failed.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::SystemTime;

use attest::appraisal::{Appraisal, MinimumTcb};
use attest::evidence::{Attester, MockAttester, MockConfig, MockRoot};
use attest::policy::{AttestationPolicy, ReleasePolicy, sign_policy};
use attest::report::TcbVersion;
use attest::token::{Jwks, SigningIdentity, TokenCheck, verify_token};
use attest::verify::{CertChain, TrustStore, VerifyOptions, maa_report_data, verify_report};
use serde_json::json;

fn root() -> MockRoot {
    MockRoot::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/mock-root"
    )))
    .unwrap()
}

fn trusted(root: &MockRoot) -> TrustStore {
    let mut t = TrustStore::amd();
    t.add_mock_root(root.ark_pem().as_bytes()).unwrap();
    t
}

const RUNTIME: &[u8] = br#"{"keys":[]}"#;

/// Evidence from `cfg`, verified with the mock root trusted and the MAA binding for RUNTIME expected.
fn check(cfg: MockConfig, opts: VerifyOptions) -> String {
    let root = root();
    let ev = MockAttester::new(&root, cfg)
        .unwrap()
        .evidence(&maa_report_data(RUNTIME))
        .unwrap();
    let chain = CertChain::from_pem(ev.cert_chain_pem.as_bytes()).unwrap();
    match verify_report(&ev.report, &chain, &trusted(&root), &opts) {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

fn bound() -> VerifyOptions {
    VerifyOptions {
        expected_report_data: Some(maa_report_data(RUNTIME)),
        ..VerifyOptions::default()
    }
}

#[test]
fn good_mock_evidence_passes_every_check() {
    assert_eq!(check(MockConfig::default(), bound()), "ok");
}

#[test]
fn bad_report_signature_is_refused() {
    let root = root();
    let ev = MockAttester::new(&root, MockConfig::default())
        .unwrap()
        .evidence(&maa_report_data(RUNTIME))
        .unwrap();
    let mut report = ev.report.clone();
    report[0x90] ^= 0xff; // measurement
    let chain = CertChain::from_pem(ev.cert_chain_pem.as_bytes()).unwrap();
    let err = verify_report(&report, &chain, &trusted(&root), &bound())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("report signature:"), "{err}");
}

#[test]
fn wrong_chain_is_refused() {
    // VCEK issued under another (also trusted) root, presented with this root's ASK and ARK.
    let a = root();
    let b = MockRoot::generate(attest::report::Generation::Milan).unwrap();
    let ev_b = MockAttester::new(&b, MockConfig::default())
        .unwrap()
        .evidence(&maa_report_data(RUNTIME))
        .unwrap();
    let vcek_b = ev_b
        .cert_chain_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap()
        .to_string();
    let chain = CertChain::from_pem(format!("{vcek_b}{}", a.ca_chain_pem()).as_bytes()).unwrap();
    let mut trust = trusted(&a);
    trust.add_mock_root(b.ark_pem().as_bytes()).unwrap();
    let err = verify_report(&ev_b.report, &chain, &trust, &bound())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("chain: ASK→VCEK"), "{err}");
}

#[test]
fn unknown_root_is_refused() {
    let root = root();
    let ev = MockAttester::new(&root, MockConfig::default())
        .unwrap()
        .evidence(&maa_report_data(RUNTIME))
        .unwrap();
    let chain = CertChain::from_pem(ev.cert_chain_pem.as_bytes()).unwrap();
    let err = verify_report(&ev.report, &chain, &TrustStore::amd(), &bound())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("root:"), "{err}");
}

#[test]
fn tcb_below_the_vceks_is_refused() {
    let vcek_tcb = TcbVersion {
        bootloader: 3,
        tee: 0,
        snp: 8,
        microcode: 115,
        fmc: 0,
    };
    let reported = TcbVersion { snp: 7, ..vcek_tcb };
    let err = check(
        MockConfig {
            tcb: reported,
            vcek_tcb: Some(vcek_tcb),
            ..MockConfig::default()
        },
        bound(),
    );
    assert!(err.starts_with("tcb: reported snp SPL 7"), "{err}");
    // Values ≥ 0x80 are decoded correctly (DER `02 02 00 xx`).
    let high = TcbVersion {
        microcode: 0xdb,
        bootloader: 0x80,
        ..MockConfig::default().tcb
    };
    assert_eq!(
        check(
            MockConfig {
                tcb: high,
                ..MockConfig::default()
            },
            bound()
        ),
        "ok"
    );
}

/// `bound()` with the Milan floor (the mock root is Milan) changed by `spec`.
fn with_floor(spec: &str) -> VerifyOptions {
    let mut min_tcb = MinimumTcb::amd_default();
    min_tcb.apply_spec(spec).unwrap();
    VerifyOptions {
        appraisal: Appraisal {
            min_tcb,
            ..Appraisal::default()
        },
        ..bound()
    }
}

#[test]
fn each_tcb_component_below_its_minimum_is_refused_naming_it_and_both_values() {
    // The mock's default TCB: bootloader 4, TEE 0, SNP 23, microcode 219 (meets the default floors).
    let tcb = MockConfig::default().tcb;
    assert_eq!((tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode), (4, 0, 23, 219));
    for (spec, message) in [
        (
            "milan:bootloader=5",
            "tcb minimum: Milan bootloader SVN 4 is below the minimum 5",
        ),
        ("milan:tee=1", "tcb minimum: Milan tee SVN 0 is below the minimum 1"),
        ("milan:snp=24", "tcb minimum: Milan snp SVN 23 is below the minimum 24"),
        (
            "milan:microcode=220",
            "tcb minimum: Milan microcode SVN 219 is below the minimum 220",
        ),
    ] {
        assert_eq!(check(MockConfig::default(), with_floor(spec)), message, "{spec}");
    }
    // At the minimum passes; another product's floor does not apply.
    assert_eq!(
        check(
            MockConfig::default(),
            with_floor("milan:bootloader=4,tee=0,snp=23,microcode=219")
        ),
        "ok"
    );
    assert_eq!(check(MockConfig::default(), with_floor("genoa:microcode=255")), "ok");
    // The default floors: AMD-SB-3019's Milan microcode 219 refuses the last patch level below it.
    let old = TcbVersion { microcode: 0xd5, ..tcb };
    assert_eq!(
        check(
            MockConfig {
                tcb: old,
                ..MockConfig::default()
            },
            bound()
        ),
        "tcb minimum: Milan microcode SVN 213 is below the minimum 219"
    );
}

#[test]
fn a_guest_allowing_a_migration_agent_is_refused_unless_allowed() {
    let ma = || MockConfig {
        migration_agent: true,
        ..MockConfig::default()
    };
    let err = check(ma(), bound());
    assert!(
        err.starts_with("migration agent: the guest allows or is bound to a migration agent (policy 0x7001f"),
        "{err}"
    );
    let allowed = VerifyOptions {
        appraisal: Appraisal {
            allow_migration_agent: true,
            ..Appraisal::default()
        },
        ..bound()
    };
    assert_eq!(check(ma(), allowed), "ok");
}

#[test]
fn a_report_version_below_the_floor_is_refused() {
    let v2 = || MockConfig {
        version: 2,
        ..MockConfig::default()
    };
    // The default floor is the parser's own minimum.
    assert_eq!(check(v2(), bound()), "ok");
    let floor3 = || VerifyOptions {
        appraisal: Appraisal {
            min_report_version: 3,
            ..Appraisal::default()
        },
        ..bound()
    };
    assert_eq!(check(v2(), floor3()), "report version: 2 is below the minimum 3");
    assert_eq!(check(MockConfig::default(), floor3()), "ok");
}

#[test]
fn host_data_mismatch_is_refused() {
    let opts = VerifyOptions {
        expected_host_data: Some([9; 32]),
        ..bound()
    };
    let err = check(
        MockConfig {
            host_data: [8; 32],
            ..MockConfig::default()
        },
        opts,
    );
    assert!(err.starts_with("host_data:"), "{err}");
}

#[test]
fn debuggable_guest_is_refused() {
    let err = check(
        MockConfig {
            debuggable: true,
            ..MockConfig::default()
        },
        bound(),
    );
    assert!(err.starts_with("debug:"), "{err}");
}

#[test]
fn vmpl_other_than_zero_is_refused() {
    let err = check(
        MockConfig {
            vmpl: 1,
            ..MockConfig::default()
        },
        bound(),
    );
    assert!(err.starts_with("vmpl:"), "{err}");
}

#[test]
fn report_data_mismatch_is_refused() {
    let mut expected = maa_report_data(RUNTIME);
    expected[63] = 1; // the zero half must match exactly too
    let err = check(
        MockConfig::default(),
        VerifyOptions {
            expected_report_data: Some(expected),
            ..bound()
        },
    );
    assert!(err.starts_with("report_data:"), "{err}");
}

fn identity() -> SigningIdentity {
    SigningIdentity::generate("test").unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn jwks(id: &SigningIdentity) -> Jwks {
    Jwks { keys: vec![id.jwk()] }
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused() {
    let id = identity();
    let expired = id
        .sign(
            &json!({"iss": "https://a", "exp": now() - 3600, "nbf": now() - 7200}),
            None,
            false,
        )
        .unwrap();
    let err = verify_token(&expired, &jwks(&id), &TokenCheck::issuer("https://a"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("token expiry:"), "{err}");
    let future = id
        .sign(
            &json!({"iss": "https://a", "exp": now() + 7200, "nbf": now() + 3600}),
            None,
            false,
        )
        .unwrap();
    let err = verify_token(&future, &jwks(&id), &TokenCheck::issuer("https://a"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("token not-before:"), "{err}");
    let no_exp = id.sign(&json!({"iss": "https://a"}), None, false).unwrap();
    let err = verify_token(&no_exp, &jwks(&id), &TokenCheck::issuer("https://a"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("token claims: exp"), "{err}");
    // Same token checked at a time inside its window passes.
    let ok = id
        .sign(
            &json!({"iss": "https://a", "exp": now() + 60, "nbf": now()}),
            None,
            false,
        )
        .unwrap();
    verify_token(&ok, &jwks(&id), &TokenCheck::issuer("https://a")).unwrap();
}

#[test]
fn untrusted_issuer_and_unknown_key_are_refused() {
    let id = identity();
    let t = id
        .sign(&json!({"iss": "https://evil", "exp": now() + 60}), None, false)
        .unwrap();
    let err = verify_token(&t, &jwks(&id), &TokenCheck::issuer("https://a"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("token issuer:"), "{err}");
    let other = identity();
    let err = verify_token(&t, &jwks(&other), &TokenCheck::issuer("https://evil"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("token signing key:"), "{err}");
}

#[test]
fn alg_none_and_hs256_with_the_public_key_are_refused() {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let id = identity();
    let claims = json!({"iss": "https://a", "exp": now() + 60});
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": id.kid()})),
        b64(claims.clone())
    );
    let err = verify_token(&none, &jwks(&id), &TokenCheck::issuer("https://a"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("token algorithm: none"), "{err}");
    // HS256 keyed with the RSA public key (the classic confusion attack).
    let pub_der = id.cert_der().to_vec();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(id.kid().to_string());
    let hs = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&pub_der).unwrap(),
    )
    .unwrap();
    let err = verify_token(&hs, &jwks(&id), &TokenCheck::issuer("https://a"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("token algorithm: HS256"), "{err}");
}

fn claims(v: serde_json::Value) -> attest::token::Claims {
    v.as_object().unwrap().clone()
}

#[test]
fn release_policy_not_satisfied_and_wrong_authority_are_refused() {
    let p = ReleasePolicy::from_json(
        br#"{"version":"1.0.0","anyOf":[{"authority":"https://maa","allOf":[{"claim":"x-ms-sevsnpvm-hostdata","equals":"aa"}]}]}"#,
    )
    .unwrap();
    let err = p
        .evaluate("https://maa", &claims(json!({"x-ms-sevsnpvm-hostdata": "ab"})))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("release policy: not satisfied"), "{err}");
    let err = p
        .evaluate("https://other", &claims(json!({"x-ms-sevsnpvm-hostdata": "aa"})))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("release policy authority:"), "{err}");
    p.evaluate("https://maa/", &claims(json!({"x-ms-sevsnpvm-hostdata": "aa"})))
        .unwrap();
}

#[test]
fn policy_signed_by_another_key_is_refused() {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let auditor = identity();
    let mallory_key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
    let mallory = SigningIdentity::from_pkcs8_pem(&mallory_key.to_pkcs8_pem(LineEnding::LF).unwrap(), "m").unwrap();
    let text = "version=1.0; authorizationrules { => permit(); };";
    let signed = sign_policy(
        text,
        &mallory_key.to_pkcs8_pem(LineEnding::LF).unwrap(),
        mallory.cert_der(),
    )
    .unwrap();
    let err = AttestationPolicy::from_document(&signed, &[auditor.cert_der().to_vec()])
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("policy signer: signed by an untrusted key"), "{err}");
    let err = AttestationPolicy::from_document(text, &[auditor.cert_der().to_vec()])
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("policy signer: policy must be signed"), "{err}");
    // Signed by the trusted key: accepted, and the signer is reported.
    let ok = AttestationPolicy::from_document(&signed, &[mallory.cert_der().to_vec()]).unwrap();
    assert_eq!(ok.signer().unwrap().cert_der, mallory.cert_der());
}
