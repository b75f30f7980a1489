//! `deploy::local::azurite` against a real Azurite: the account SAS it signs is accepted, scoped (a read SAS
//! cannot write), and required (no SAS and a tampered one are refused); the launcher's process stops on drop.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use deploy::local::azurite::{API_VERSION, Azurite, SasOptions, account_sas};
use deploy::local::http::{self, Body, Request};

fn request(az: &Azurite, method: &str, target: &str, body: &[u8]) -> http::Response {
    let headers = [
        ("x-ms-version", API_VERSION.to_owned()),
        ("x-ms-blob-type", "BlockBlob".to_owned()),
    ];
    http::send(
        az.port(),
        &Request {
            method,
            target,
            headers: &headers,
            body: Body::Bytes(body),
        },
        Duration::from_secs(30),
    )
    .unwrap()
}

#[test]
fn azurite_accepts_the_signed_sas_and_refuses_others() {
    let az = Azurite::start().unwrap();
    az.create_container("models", false).unwrap();
    az.create_container("models", false).unwrap(); // an existing container is fine
    let etag = az.put_blob("models", "a.img", Body::Bytes(b"encrypted bytes")).unwrap();
    assert!(etag.starts_with('"'), "ETag {etag:?}");

    let path = "/devstoreaccount1/models/a.img";
    let read = account_sas(&SasOptions::read_only());
    let r = request(&az, "GET", &format!("{path}?{read}"), b"");
    assert_eq!((r.status, r.body.as_str()), (200, "encrypted bytes"));
    assert_eq!(r.header("etag"), Some(etag.as_str()));

    // A read SAS cannot overwrite the blob.
    let r = request(&az, "PUT", &format!("{path}?{read}"), b"replaced");
    assert_eq!(
        (r.status, r.header("x-ms-error-code")),
        (403, Some("AuthorizationPermissionMismatch")),
        "{}",
        r.body
    );
    // No SAS on a private container, or a SAS with a forged signature: refused by the authorization check
    // (Azurite answers 403 AuthorizationFailure to both; Azure answers an anonymous read of a private blob 404).
    let refusal = |r: http::Response| (r.status, r.header("x-ms-error-code").map(str::to_owned), r.body);
    let (status, code, body) = refusal(request(&az, "GET", path, b""));
    assert_eq!((status, code.as_deref()), (403, Some("AuthorizationFailure")), "{body}");
    let forged = read.replace("sp=r", "sp=rw");
    let (status, code, body) = refusal(request(&az, "GET", &format!("{path}?{forged}"), b""));
    assert_eq!((status, code.as_deref()), (403, Some("AuthorizationFailure")), "{body}");
    assert!(!body.contains("encrypted bytes"), "{body}");

    let pid = az.proc().pid();
    drop(az);
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z"),
        "Azurite still runs after drop"
    );
}
