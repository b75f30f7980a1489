//! The acceptance test of the whole product: an unmodified Triton client, through the attested proxy pair, gets
//! the classifier's answer from a real Triton server whose model was never in plaintext outside the "TEE" (the
//! FUSE mount after attested key release) — and the negative paths refuse what they must.
//!
//! One test function runs the scenarios in sequence, since each needs a whole stack (Triton takes seconds to
//! start) and the machine has two cores.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use cinfer_tests::pipeline::{Options, Pipeline};

fn show(p: &Pipeline) {
    for (name, d) in &p.stages {
        eprintln!("   {name}: {:.2}s", d.as_secs_f64());
    }
}

#[test]
fn e2e_tritonclient_through_attested_proxies_to_triton_on_the_fuse_mount() {
    let large_mb: u32 = std::env::var("CINFER_E2E_LARGE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let load_secs: u32 = std::env::var("CINFER_E2E_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);

    // Happy path, with the large model streamed through the mount too.
    let p = Pipeline::start(&Options {
        large_mb,
        verbose: true,
        ..Default::default()
    })
    .unwrap();
    show(&p);
    assert!(
        p.mounted,
        "the key must be released for the expected hostdata; see {}",
        p.logs().display()
    );
    for model in ["classifier", "classifier_large"] {
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
    eprintln!("memory (peak KiB, current KiB) before load: {before:?}\nafter load: {after:?}");
    assert!(ok, "errors under load: {out}");
    let stats: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(stats["errors"], 0);
    assert!(stats["requests"].as_u64().unwrap() > 0);
    for (name, mem) in &after {
        let (peak, _) = mem.unwrap_or((0, 0));
        assert!(peak < 4 << 20, "{name} peaked at {peak} KiB: memory not bounded");
    }
    drop(p);

    // A client policy pinning another hostdata: the client proxy refuses, Triton sees no request.
    let other = "00".repeat(32);
    let p = Pipeline::start(&Options {
        client_host_data: Some(other.clone()),
        ..Default::default()
    })
    .unwrap();
    assert!(p.mounted);
    let before = p.triton.inference_count("classifier").unwrap();
    let (ok, out) = p.client("refused", "classifier", &[]).unwrap();
    eprintln!("wrong client policy: {out}");
    assert!(
        ok,
        "the request went through a client policy for another hostdata:\n{out}"
    );
    assert!(out.contains("policy"), "the refusal must name the failed check: {out}");
    assert_eq!(
        p.triton.inference_count("classifier").unwrap(),
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
    assert!(
        std::fs::read_dir(&p.mount).unwrap().next().is_none(),
        "something is visible at the mount point"
    );
    assert!(
        !p.triton.model_ready("classifier"),
        "Triton reports a model that cannot have been loaded"
    );
}
