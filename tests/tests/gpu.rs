//! The composite flow end to end (issue 22 items 3, 4): `cinfer-deploy local --gpu 2` — the confidential
//! container has two mock GPUs, the model key's release policy and the client policy require them, the sidecar
//! and the server proxy send SEV-SNP + GPU evidence bound to one runtime data; the tritonclient answer comes
//! through, and the same guest without GPU evidence is refused the key naming the GPU condition.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use cinfer_tests::show_stages;
use deploy::local::{ImageStore, Options, Pipeline};

#[test]
fn a_key_requiring_gpus_reaches_the_guest_with_gpus_and_not_the_guest_without() {
    let p = Pipeline::start(&Options {
        store: ImageStore::Http,
        gpus: 2,
        ..Default::default()
    })
    .unwrap();
    show_stages(&p.stages);
    assert!(
        p.mounted,
        "the key must be released to the guest with GPUs ({:?}); see {}",
        p.mount_failure,
        p.logs().display()
    );
    let gpu = p.gpu.clone().unwrap();
    let claim = |name: &str| gpu.claims.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(claim("x-cinfer-gpu-count").as_deref(), Some("2"));
    assert_eq!(claim("x-cinfer-gpu-cc-mode").as_deref(), Some("\"on\""));
    assert_eq!(claim("x-cinfer-gpu-measurements-matched").as_deref(), Some("true"));
    assert_eq!(gpu.per_gpu.len(), 2);
    assert!(gpu.per_gpu[0].contains("measres \"success\""), "{}", gpu.per_gpu[0]);
    assert!(
        gpu.conditions
            .iter()
            .any(|c| c == r#"x-cinfer-gpu-count {"greaterOrEquals":2}"#),
        "{:?}",
        gpu.conditions
    );
    assert!(
        gpu.refused_without_gpus
            .contains("HTTP 403: release policy: not satisfied: x-cinfer-gpu-count is absent not greaterOrEquals 2"),
        "{}",
        gpu.refused_without_gpus
    );
    for process in ["encfs-sidecar", "server-proxy"] {
        let l = p.launched.iter().find(|l| l.process == process).unwrap();
        assert!(
            l.added.iter().any(|a| a.starts_with("--mock-gpu-dir=")),
            "{process}: {:?}",
            l.added
        );
    }
    // Through the client proxy, whose policy requires the server's GPUs too.
    let policy = std::fs::read_to_string(p.work.join("client-policy-gpu.json")).unwrap();
    assert!(policy.contains("\"x-cinfer-gpu-count\""), "{policy}");
    let (ok, out) = p.client("infer", "classifier", &[]).unwrap();
    eprintln!("with GPUs: {out}");
    assert!(ok && out.contains("= COFFEE MUG"), "{out}");
}
