//! The acceptance test of the whole product: an unmodified Triton client, through the attested proxy pair, gets
//! the classifier's answer from a real Triton server whose model was never in plaintext outside the "TEE" (the
//! FUSE mount after attested key release, the image read from Azurite) — and the negative paths refuse what
//! they must. It drives `deploy::local::Pipeline`, the code `cinfer-deploy local` runs.
//!
//! One test function runs the scenarios in sequence, since each needs a whole stack (Triton takes seconds to
//! start) and the machine has two cores.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use cinfer_tests::{env_u32, show_stages};
use deploy::local::pipeline::mounts_under;
use deploy::local::{ImageStore, Layout, Options, Pipeline};

#[test]
fn e2e_tritonclient_through_attested_proxies_to_triton_on_the_fuse_mount() {
    let large_mb = env_u32("CINFER_E2E_LARGE_MB", 512);
    let load_secs = env_u32("CINFER_E2E_LOAD_SECS", 60);

    // Happy path through Azurite, with the large model streamed through the mount too.
    let p = Pipeline::start(&Options {
        large_mb,
        store: ImageStore::Azurite,
        ..Default::default()
    })
    .unwrap();
    show_stages(&p.stages);
    assert!(
        p.mounted,
        "the key must be released for the expected hostdata ({:?}); see {}",
        p.mount_failure,
        p.logs().display()
    );
    assert!(
        p.image_url.contains("/devstoreaccount1/models/"),
        "the image must be read from Azurite: {}",
        p.image_url
    );
    assert!(
        !p.image_url.contains("sig="),
        "a SAS leaked into a shown URL: {}",
        p.image_url
    );
    let mut models = vec!["classifier"];
    if large_mb > 0 {
        models.push("classifier_large");
    }
    for model in models {
        let (ok, out) = p.client("infer", model, &[]).unwrap();
        eprintln!("{model}: {out}");
        assert!(
            ok,
            "inference through the proxies failed or differed from onnxruntime on the plaintext model:\n{out}"
        );
        assert!(out.contains("= COFFEE MUG"), "{out}");
        assert!(out.contains("\"equal_to_plaintext_onnxruntime\": true"), "{out}");
    }

    // Load: 64 concurrent clients through the proxies while the model is read from the mount.
    let before = p.memory();
    let (ok, out) = p
        .client(
            "load",
            "classifier",
            &["--concurrency", "64", "--duration", &load_secs.to_string()],
        )
        .unwrap();
    eprintln!("load: {out}");
    let after = p.memory();
    eprintln!("memory before load (name, (peak KiB, current KiB)): {before:?}");
    eprintln!("memory after load: {after:?}");
    assert!(ok, "errors under load: {out}");
    let stats: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(stats["errors"], 0);
    assert!(stats["requests"].as_u64().unwrap() > 0);
    eprintln!(
        "load figures: {} req/s, p50 {} ms, p99 {} ms over {} s with {} clients",
        stats["req_per_s"], stats["p50_ms"], stats["p99_ms"], stats["seconds"], stats["concurrency"]
    );
    for (name, mem) in &after {
        let (peak, rss) = mem.unwrap_or((0, 0));
        eprintln!("  RSS {name}: peak {} MiB, now {} MiB", peak / 1024, rss / 1024);
        assert!(peak < 4 << 20, "{name} peaked at {peak} KiB: memory not bounded");
    }
    let work = p.work.clone();
    p.shutdown().unwrap();
    assert!(!work.exists(), "the temporary work directory is removed");

    // A standard Triton repository (the seed's layout: platform onnxruntime_onnx, no model.py) with >= 32 MiB of
    // weights, served by the local Triton's onnxruntime backend from the mount; answers equal onnxruntime's.
    let base = tempfile::tempdir().unwrap();
    let repo = base.path().join("repo");
    let npy = base.path().join("mug.npy");
    let script = base.path().join("make_models.py");
    std::fs::write(&script, deploy::local::scripts::MAKE_MODELS).unwrap();
    let st = std::process::Command::new(deploy::local::env::python().unwrap())
        .arg(&script)
        .arg(&repo)
        .args(["--layout", "seed", "--large-mb", "32", "--input-npy"])
        .arg(&npy)
        .status()
        .unwrap();
    assert!(st.success());
    let config = std::fs::read_to_string(repo.join("classifier_large/config.pbtxt")).unwrap();
    assert!(config.contains("platform: \"onnxruntime_onnx\""), "{config}");
    assert!(!repo.join("classifier_large/1/model.py").exists());
    let weights = std::fs::metadata(repo.join("classifier_large/1/model.onnx"))
        .unwrap()
        .len();
    assert!(weights >= 32 << 20, "{weights} bytes of weights");
    let p = Pipeline::start(&Options {
        models: Some(repo),
        ..Default::default()
    })
    .unwrap();
    assert!(p.mounted, "{:?}", p.mount_failure);
    assert!(p.failed_models.is_empty(), "{:?}", p.failed_models);
    for model in ["classifier", "classifier_large"] {
        let (ok, out) = p.client_on("infer", model, &npy, &[]).unwrap();
        eprintln!("seed layout {model}: {out}");
        assert!(ok, "{out}");
        assert!(out.contains("(1) = COFFEE MUG"), "{out}");
        assert!(out.contains("\"equal_to_plaintext_onnxruntime\": true"), "{out}");
    }
    drop(p);

    // The Kubernetes pod (`render k8s`, what AKS confidential containers allow): its init container encfs-extract
    // releases the key through attestation and writes the verified files into the model volume, no FUSE; Triton
    // serves them and the answers through the proxies equal onnxruntime's.
    let p = Pipeline::start(&Options {
        layout: Layout::K8s,
        ..Default::default()
    })
    .unwrap();
    assert!(p.mounted, "{:?}; see {}", p.mount_failure, p.logs().display());
    let extract = p.launched.iter().find(|l| l.process == "encfs-extract").unwrap();
    assert!(
        extract
            .source
            .ends_with("deployment.yaml initContainers[1] \"encfs-extract\""),
        "{}",
        extract.source
    );
    assert!(
        !p.launched.iter().any(|l| l.process == "encfs-sidecar"),
        "the pod runs no FUSE sidecar"
    );
    assert!(
        mounts_under(&p.work).is_empty(),
        "something is mounted: {:?}",
        mounts_under(&p.work)
    );
    let config = p.mount.join("classifier/config.pbtxt");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&config).unwrap().permissions());
    assert_eq!(mode & 0o222, 0, "{} is writable ({mode:o})", config.display());
    let (ok, out) = p.client("infer", "classifier", &[]).unwrap();
    eprintln!("k8s layout: {out}");
    assert!(ok && out.contains("= COFFEE MUG"), "{out}");
    assert!(out.contains("\"equal_to_plaintext_onnxruntime\": true"), "{out}");
    drop(p);
    // The pod with evidence of another hostdata: the init container is refused at key release; nothing is written.
    let p = Pipeline::start(&Options {
        layout: Layout::K8s,
        evidence_host_data: Some("11".repeat(32)),
        ..Default::default()
    })
    .unwrap();
    assert!(!p.mounted, "a key was released to the pod with the wrong hostdata");
    let failure: serde_json::Value = serde_json::from_str(p.mount_failure.as_deref().unwrap()).unwrap();
    assert_eq!(failure["step"], "release", "{failure}");
    assert!(
        std::fs::read_dir(&p.mount).unwrap().next().is_none(),
        "something was written"
    );
    drop(p);

    // A client policy pinning another hostdata: the client proxy refuses, Triton sees no request.
    let other = "00".repeat(32);
    let p = Pipeline::start(&Options {
        client_host_data: Some(other.clone()),
        ..Default::default()
    })
    .unwrap();
    assert!(p.mounted);
    let triton = p.triton().unwrap();
    let before = triton.inference_count("classifier").unwrap();
    let (ok, out) = p.client("refused", "classifier", &[]).unwrap();
    eprintln!("wrong client policy: {out}");
    assert!(
        ok,
        "not refused by the client policy (502 with x-cinfer-atls-check: policy) for another hostdata:\n{out}"
    );
    assert!(
        out.contains("refused: policy"),
        "the refusal must name the failed check: {out}"
    );
    assert_eq!(
        triton.inference_count("classifier").unwrap(),
        before,
        "Triton saw a request"
    );
    drop(p);

    // Evidence with another hostdata: no key released, nothing mounted, Triton reports the model not ready.
    let p = Pipeline::start(&Options {
        evidence_host_data: Some(other),
        ..Default::default()
    })
    .unwrap();
    assert!(!p.mounted, "a key was released to evidence with the wrong hostdata");
    eprintln!("wrong evidence: {:?}", p.mount_failure);
    let failure: serde_json::Value = serde_json::from_str(p.mount_failure.as_deref().unwrap()).unwrap();
    assert_eq!(failure["step"], "release", "refused at key release: {failure}");
    let error = failure["error"].as_str().unwrap();
    assert!(
        error.contains("HTTP 403") && error.contains("release policy") && error.contains("x-ms-sevsnpvm-hostdata"),
        "the release policy's hostdata claim is what refused: {error}"
    );
    assert!(
        std::fs::read_dir(&p.mount).unwrap().next().is_none(),
        "something is visible at the mount point"
    );
    assert!(
        !p.triton().unwrap().model_ready("classifier"),
        "Triton reports a model that cannot have been loaded"
    );
}
