//! AKV/seed vectors (azure-protocols.md §7 C, D, E): runtime-data JWKS bytes, a real CKM_RSA_AES_KEY_WRAP
//! ciphertext, HKDF derivation of the RSA-HSM model key.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use attest::keywrap::{
    CKM_RSA_AES_KEY_WRAP, KeyDerivation, RSA_AES_KEY_WRAP_256, ReleasedKey, RuntimeKey, rsa_aes_wrap,
};
use attest::secret::SecretBytes;
use base64::Engine as _;

const KEY_PEM: &str = include_str!("data/csc-test-rsa-key.pem");

/// `skr_test.go` `RSAKeyUnwrap_Success`.
const CIPHERTEXT: &str = "deOO7jP6FnTc12fnCBKlpKS-ElBv-YdNimSbEVyTQaOlmc8caf8l2xa3tz6pSzjYoO7AMB-vFcftTjQyvw5ju_0uLeqRnTUQuzRkgEjoEumQAOeV3zS_5mDG6cupZWYlyihTLFSt5_1VR0t9T_FCBj0HxeHWsYJxJomlOMlyBv23f_6Fq15dxryb3CORXiUH9K0fOINmsL3DNzMKx4srAf9OssuV1VqrSKSoHLcyvG1SIHHfAXg3wEU5NfoxFiPc_a4Pv_bmvFLJ_fs1ETE3GmkuxkX-r17AtGSijJnl6H3YS-WGkDhnfTJDo6NEPGKkhabDwAxoTblA2pa71N-AW-CCBgbPy-9bFYpQyqEAIRbLeQLxLmVWm6ZVNW3iRRe9i1cUFnSEkAg";

#[test]
fn runtime_data_is_byte_exact_with_the_seeds_jwks() {
    let rk = RuntimeKey::from_pem(KEY_PEM).unwrap();
    let expected = r#"{"keys":[{"e":"AQAB","key_ops":["encrypt"],"kid":"Nvhfuq2cCIOAB8XR4Xi9Pr0NP_9CeMzWQGtW_HALz_w","kty":"RSA","n":"v965SRmyp8zbG5eNFuDCmmiSeaHpujG2bC_keLSuzvDMLO1WyrUJveaa5bzMoO0pA46pXkmbqHisozVzpiNDLCo6d3z4TrGMeFPf2APIMu-RSrzN56qvHVyIr5caWfHWk-FMRDwAefyNYRHkdYYkgmFK44hhUdtlCAKEv5UQpFZjvh4iI9jVBdGYMyBaKQLhjI5WIh-QG6Za5sSuOCFMnmuyuvN5DflpLFz595Ss-EoBIY-Nil6lCtvcGgR-IbjUYHAOs5ajamTzgeO8kx3VCE9HcyKmyUZsiyiF6IDRp2Bpy3NHTjIz7tmkpTHx7tHnRtlfE2FUv0B6i_QYl_ZA5Q"}]}"#;
    assert_eq!(String::from_utf8(rk.runtime_data()).unwrap(), expected);
    assert_eq!(rk.kid(), "Nvhfuq2cCIOAB8XR4Xi9Pr0NP_9CeMzWQGtW_HALz_w");
    // Its SHA-256 is the report_data of the seed's corrupted production reports.
    let rd = attest::verify::maa_report_data(expected.as_bytes());
    assert_eq!(hex::encode(&rd[..4]), "7ab000a3");
}

#[test]
fn real_ckm_rsa_aes_key_wrap_ciphertext_unwraps_to_the_expected_key() {
    let rk = RuntimeKey::from_pem(KEY_PEM).unwrap();
    let ct = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(CIPHERTEXT)
        .unwrap();
    assert_eq!(ct.len(), 296);
    let key = rk.unwrap(CKM_RSA_AES_KEY_WRAP, &ct).unwrap();
    assert_eq!(
        hex::encode(key.expose()),
        "d85ecc983a5cfe3a5fe377f79d14026e73ca7bb54ae8efc0d8128a4b88a85676"
    );
    // Wrong enc (OAEP hash) and unknown enc fail.
    assert!(
        rk.unwrap(RSA_AES_KEY_WRAP_256, &ct)
            .unwrap_err()
            .to_string()
            .starts_with("key wrap: RSA-OAEP")
    );
    assert!(
        rk.unwrap("MY_OWN_WRAP", &ct)
            .unwrap_err()
            .to_string()
            .starts_with("key wrap: unsupported")
    );
    // Tampered KWP part fails the integrity check.
    let mut bad = ct;
    *bad.last_mut().unwrap() ^= 1;
    assert!(
        rk.unwrap(CKM_RSA_AES_KEY_WRAP, &bad)
            .unwrap_err()
            .to_string()
            .contains("AES-KWP")
    );
}

#[test]
fn wrap_then_unwrap_round_trips_for_every_enc() {
    let rk = RuntimeKey::from_pem(KEY_PEM).unwrap();
    for enc in [
        CKM_RSA_AES_KEY_WRAP,
        RSA_AES_KEY_WRAP_256,
        attest::keywrap::RSA_AES_KEY_WRAP_384,
    ] {
        let ct = rsa_aes_wrap(&rk.public_key(), enc, &[9u8; 32]).unwrap();
        assert_eq!(ct.len(), 256 + 40);
        assert_eq!(rk.unwrap(enc, &ct).unwrap().expose(), &[9u8; 32]);
    }
}

#[test]
fn rsa_hsm_key_derives_the_seeds_model_key_with_hkdf() {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::PrivateKey::from_pkcs1_pem(KEY_PEM).unwrap();
    let der = SecretBytes::from_slice(key.to_pkcs8_der().unwrap().as_bytes());
    let released = ReleasedKey::from_kty("RSA-HSM", der).unwrap();
    let d = KeyDerivation {
        salt: "92a631483ca875aad7e2477da755d58cac3876b77d10bcdd7b33bfa11e7d8b8e".into(),
        label: "Model Encryption Key".into(),
    };
    assert_eq!(
        hex::encode(released.to_model_key(&d).unwrap().expose()),
        "9c3a3e7c503d025d64aaeddbb7c155862b75f54fa52859ce0e3d1721a9aa1dec"
    );
    // oct keys must be exactly 32 bytes.
    let short = ReleasedKey::from_kty("oct-HSM", SecretBytes::from_slice(&[1; 16])).unwrap();
    assert!(short.to_model_key(&KeyDerivation::default()).is_err());
}
