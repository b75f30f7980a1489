//! `cinfer-mkimage upload` against Azurite (started on a free port by `deploy::local::azurite`): a fresh upload is
//! byte-exact with the printed MD5 and ETag; a repeat sends nothing; other content is refused without `--force`
//! and replaces the blob with it; an interrupted upload resumes without re-sending staged blocks; a read-only
//! SAS and a missing container are refused with messages that say so.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use azure_core::http::RequestContent;
use base64::Engine as _;
use deploy::local::azurite::{Azurite, SasOptions, account_sas};
use md5::{Digest as _, Md5};
use mkimage::upload::{BlockPlan, UploadOptions, block_id, parse_blob_url, upload};

fn mkimage(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cinfer-mkimage"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn random_file(dir: &Path, name: &str, len: usize, seed: u8) -> (std::path::PathBuf, Vec<u8>) {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed);
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let p = dir.join(name);
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// GETs a blob: (status, body, etag header).
fn get(url: &str) -> (u16, Vec<u8>, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    rt().block_on(async {
        let r = reqwest::Client::new()
            .get(url)
            .header("x-ms-version", "2021-08-06")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let etag = r
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, r.bytes().await.unwrap().to_vec(), etag)
    })
}

fn line<'a>(out: &'a Output, key: &str) -> &'a str {
    std::str::from_utf8(&out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} line in {}", text(out)))
        .trim()
}

#[test]
fn upload_is_exact_idempotent_and_refuses_to_clobber() {
    let az = Azurite::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sas = account_sas(&SasOptions::full());
    let url = format!("{}?{sas}", az.blob_url("models", "model.img"));
    // 1 MiB + 1 byte in 64 KiB blocks: 17 blocks, the last one 1 byte.
    let (img, data) = random_file(dir.path(), "model.img", (1 << 20) + 1, 1);

    let out = mkimage(&[
        "upload",
        img.to_str().unwrap(),
        &url,
        "--create-container",
        "--block-size",
        "64k",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let (status, body, etag) = get(&url);
    assert_eq!(status, 200);
    assert!(body == data, "downloaded blob differs from the image");
    assert_eq!(line(&out, "size:"), data.len().to_string());
    assert_eq!(
        line(&out, "md5:"),
        base64::engine::general_purpose::STANDARD.encode(Md5::digest(&data))
    );
    assert_eq!(line(&out, "etag:"), etag);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("17 blocks (17 sent, 0 resumed)"),
        "{}",
        text(&out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("sig="),
        "the SAS leaked: {}",
        text(&out)
    );

    // The same image again: nothing sent, same blob.
    let again = mkimage(&["upload", img.to_str().unwrap(), &url, "--block-size", "64k"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("nothing sent"),
        "{}",
        text(&again)
    );
    assert_eq!(line(&again, "etag:"), etag);

    // Other content: refused without --force, the blob untouched; replaced with it.
    let (img2, data2) = random_file(dir.path(), "model2.img", 300_000, 2);
    let refused = mkimage(&["upload", img2.to_str().unwrap(), &url]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--force"),
        "{}",
        text(&refused)
    );
    assert!(get(&url).1 == data, "a refused upload changed the blob");
    let forced = mkimage(&["upload", img2.to_str().unwrap(), &url, "--force"]);
    assert!(forced.status.success(), "{}", text(&forced));
    let (_, body, etag2) = get(&url);
    assert!(body == data2, "the forced upload is not the new image");
    assert_ne!(etag2, etag);

    // An empty image is a valid (empty) blob.
    let (empty, _) = random_file(dir.path(), "empty.img", 0, 3);
    let eurl = format!("{}?{sas}", az.blob_url("models", "empty.img"));
    let out = mkimage(&["upload", empty.to_str().unwrap(), &eurl]);
    assert!(out.status.success(), "{}", text(&out));
    let (status, body, _) = get(&eurl);
    assert_eq!((status, body.len()), (200, 0));
}

#[test]
fn interrupted_upload_resumes_without_resending_staged_blocks() {
    // The SDK client below uses the workspace's reqwest, which needs the process's rustls provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let az = Azurite::start().unwrap();
    az.create_container("models", false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (img, data) = random_file(dir.path(), "big.img", 10 * 65536 + 123, 4);
    let url = parse_blob_url(&format!(
        "{}?{}",
        az.blob_url("models", "big.img"),
        account_sas(&SasOptions::full())
    ))
    .unwrap();
    let opts = UploadOptions {
        block_size: 65536,
        parallel: 3,
        ..Default::default()
    };
    let plan = BlockPlan::new(data.len() as u64, opts.block_size).unwrap();

    // An earlier run staged blocks 0..4 (same ids: index + content MD5) and then died before committing; it also
    // staged a block of an older build of the image, which must not end up in the blob.
    let rt = rt();
    let bb = azure_storage_blob::BlobClient::new(url.blob.clone(), None, None)
        .unwrap()
        .block_blob_client();
    rt.block_on(async {
        for index in 0..4u64 {
            let (off, len) = plan.block(index);
            let chunk = data[off as usize..(off + len) as usize].to_vec();
            let md5: [u8; 16] = Md5::digest(&chunk).into();
            bb.stage_block(&block_id(index, &md5), len, RequestContent::from(chunk), None)
                .await
                .unwrap();
        }
        let stale = vec![0xAAu8; 65536];
        let md5: [u8; 16] = Md5::digest(&stale).into();
        bb.stage_block(&block_id(4, &md5), 65536, RequestContent::from(stale), None)
            .await
            .unwrap();
    });
    assert_eq!(get(url.blob.as_str()).0, 404, "nothing is committed yet");

    let done = std::sync::atomic::AtomicU64::new(0);
    let progress = |n: u64| {
        done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    };
    let report = rt.block_on(upload(&img, &url, &opts, &progress)).unwrap();
    assert_eq!((report.blocks, report.resumed_blocks, report.sent_blocks), (11, 4, 7));
    assert_eq!(done.into_inner(), data.len() as u64);
    assert!(
        get(url.blob.as_str()).1 == data,
        "the resumed blob differs from the image"
    );
}

#[test]
fn bad_credentials_and_missing_container_are_named() {
    let az = Azurite::start().unwrap();
    az.create_container("models", false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = random_file(dir.path(), "m.img", 1000, 5);

    let ro = format!(
        "{}?{}",
        az.blob_url("models", "m.img"),
        account_sas(&SasOptions::read_only())
    );
    let out = mkimage(&["upload", img.to_str().unwrap(), &ro]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("403") && err.contains("SAS"), "{}", text(&out));

    let full = account_sas(&SasOptions::full());
    let forged = format!("{}?{}", az.blob_url("models", "m.img"), full.replace("sig=", "sig=A"));
    let out = mkimage(&["upload", img.to_str().unwrap(), &forged]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"), "{}", text(&out));

    let missing = format!("{}?{full}", az.blob_url("nope", "m.img"));
    let out = mkimage(&["upload", img.to_str().unwrap(), &missing]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ContainerNotFound") && err.contains("--create-container"),
        "{}",
        text(&out)
    );
    assert_eq!(get(&format!("{}?{full}", az.blob_url("nope", "m.img"))).0, 404);

    let out = mkimage(&["upload", dir.path().join("absent.img").to_str().unwrap(), &missing]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("absent.img"),
        "{}",
        text(&out)
    );
}
