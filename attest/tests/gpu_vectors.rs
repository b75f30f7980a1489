//! NVIDIA GPU evidence against NVIDIA's own data (`tests/data/nvidia/`, README there): real Hopper
//! reports and chains, NVIDIA's roots, signed RIMs, NRAS claims, the SDK's parse of a report, and the
//! negative corpus. Which report/RIM pairs belong together is worked out in `tests/data/nvidia/README.md`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use attest::gpu::spdm::GpuReport;
use attest::gpu::{GpuError, GpuEvidence, GpuTrust, GpuVerifyOptions, RimKind, claims, rim, verify_gpu};

fn data(rel: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/nvidia")
        .join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn at(rfc3339: &str) -> SystemTime {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(t.unix_timestamp() as u64)
}

fn evidence(report: &str, chain: &str) -> GpuEvidence {
    GpuEvidence::from_files(&data(report), &data(chain)).unwrap()
}

fn nonce_of(ev: &GpuEvidence) -> [u8; 32] {
    GpuReport::parse(&ev.report).unwrap().request.nonce
}

/// The report/chain pairs of the set (each chain's leaf signed its report).
const PAIRS: [(&str, &str); 5] = [
    ("hopper/hopperAttestationReport.txt", "hopper/hopperCertChain.txt"),
    (
        "hopper/nvtrust-hopperAttestationReport.txt",
        "hopper/nvtrust-hopperCertChain.txt",
    ),
    (
        "hopper/unit-hopperAttestationReport.txt",
        "hopper/unit-hopperCertChain.txt",
    ),
    (
        "negative/hopperAttestationReportExpired.txt",
        "negative/hopperCertChainExpired.txt",
    ),
    // the FWID / PPCIe-era report whose signature was deliberately broken is checked in the negative test
    ("hopper/hopperAttestationReport.txt", "hopper/hopperCertChain.txt"),
];

const AT_2024: &str = "2024-06-01T00:00:00Z";
const AT_2026: &str = "2026-01-01T00:00:00Z";

fn check(e: &GpuError) -> &'static str {
    e.check()
}

#[test]
fn every_real_report_verifies_with_its_own_chain_and_nonce() {
    let trust = GpuTrust::nvidia();
    for (r, c) in PAIRS {
        let ev = evidence(r, c);
        let mut opts = GpuVerifyOptions::at(at(AT_2026));
        opts.nonce = Some(nonce_of(&ev));
        let v = verify_gpu(&ev, &trust, &opts).unwrap_or_else(|e| panic!("{r}: {e}"));
        assert_eq!(v.hwmodel, "GH100 A01 GSP BROM", "{r}");
        assert!(v.nonce_checked);
        assert_eq!(v.root_label, "nvidia");
    }
}

#[test]
fn reports_with_a_fwid_match_their_leaf_and_older_ones_have_none() {
    let trust = GpuTrust::nvidia();
    let opts = GpuVerifyOptions::at(at(AT_2026));
    let old = verify_gpu(&evidence(PAIRS[0].0, PAIRS[0].1), &trust, &opts).unwrap();
    assert_eq!(old.fwid_matched, None);
    for (r, c) in &PAIRS[1..4] {
        let v = verify_gpu(&evidence(r, c), &trust, &opts).unwrap();
        assert_eq!(v.fwid_matched, Some(true), "{r}");
    }
}

/// Oracle: the attestation SDK's own parse of `unit-hopperAttestationReport.txt`.
#[test]
fn parse_agrees_with_nvidia_sdk_parse_of_the_unit_report() {
    let sdk: serde_json::Value = serde_json::from_slice(&data("hopper/unit-spdm_parsed_output.json")).unwrap();
    let r = GpuReport::parse(&evidence(PAIRS[2].0, PAIRS[2].1).report).unwrap();
    let hex0x = |v: &serde_json::Value| v.as_str().unwrap().trim_start_matches("0x").to_string();
    assert_eq!(
        format!("0x{:02x}", r.response_version),
        sdk["SPDMVersion"].as_str().unwrap()
    );
    assert_eq!(r.blocks.len() as u64, sdk["NumberOfBlocks"].as_u64().unwrap());
    assert_eq!(hex::encode(r.response_nonce), hex0x(&sdk["Nonce"]));
    assert_eq!(hex::encode(r.signature), hex0x(&sdk["Signature"]));
    let opaque_len: usize = r.opaque.iter().map(|f| 4 + f.data.len()).sum();
    assert_eq!(opaque_len as u64, sdk["OpaqueLength"].as_u64().unwrap());
    let record_len: usize = r.blocks.iter().map(|b| 7 + b.value.len()).sum();
    assert_eq!(record_len as u64, sdk["MeasurementRecordLength"].as_u64().unwrap());
    let blocks = sdk["MeasurementRecord"]["MeasurementBlocks"].as_object().unwrap();
    assert_eq!(blocks.len(), r.blocks.len());
    for (idx, b) in blocks {
        let ours = r.block(idx.parse().unwrap()).unwrap();
        assert_eq!(
            hex::encode(&ours.value),
            hex0x(&b["DMTFSpecMeasurementValue"]),
            "block {idx}"
        );
        assert_eq!(
            u64::from(ours.value_type),
            b["DMTFSpecMeasurementValueType"].as_u64().unwrap()
        );
    }
    let fields = sdk["OpaqueData"]["OpaqueDataField"].as_object().unwrap();
    let mut compared = 0;
    for f in &r.opaque {
        let Some(name) = attest::gpu::spdm::field::name(f.kind) else {
            continue;
        };
        let Some(v) = fields.get(&format!("OPAQUE_FIELD_ID_{name}")) else {
            continue;
        };
        if let Some(s) = v.as_str() {
            assert_eq!(hex::encode(&f.data), s.trim_start_matches("0x"), "{name}");
            compared += 1;
        }
    }
    assert_eq!(
        compared,
        fields.len() - 1,
        "every hex field compared (MSRSCNT is a list)"
    );
    assert_eq!(r.driver_version().as_deref(), Some("580.159.03"));
    assert_eq!(r.vbios_version().as_deref(), Some("96.00.74.00.20"));
}

/// NRAS issued `hopperClaimsv3_decoded.json` for the nvtrust sample report (nonce 931d8dd0…, leaf serial =
/// its `ueid`); the claims a report and chain alone determine must be equal.
#[test]
fn claims_match_nras_for_the_nvtrust_report() {
    let nras: serde_json::Value = serde_json::from_slice(&data("hopper/hopperClaimsv3_decoded.json")).unwrap();
    let nras = &nras["GPU-0"];
    let ev = evidence(PAIRS[1].0, PAIRS[1].1);
    let mut opts = GpuVerifyOptions::at(at(AT_2026));
    opts.nonce = Some(nonce_of(&ev));
    let v = verify_gpu(&ev, &GpuTrust::nvidia(), &opts).unwrap();
    let ours = claims::gpu_claims(&v);
    for name in [
        "eat_nonce",
        "hwmodel",
        "ueid",
        "x-nvidia-gpu-driver-version",
        "x-nvidia-gpu-vbios-version",
        "x-nvidia-gpu-arch-check",
        "x-nvidia-gpu-attestation-report-parsed",
        "x-nvidia-gpu-attestation-report-nonce-match",
        "x-nvidia-gpu-attestation-report-signature-verified",
        "x-nvidia-gpu-attestation-report-cert-chain-fwid-match",
        "x-nvidia-attestation-warning",
    ] {
        assert_eq!(ours.get(name), Some(&nras[name]), "{name}");
    }
    let (o, n) = (
        &ours["x-nvidia-gpu-attestation-report-cert-chain"],
        &nras["x-nvidia-gpu-attestation-report-cert-chain"],
    );
    for name in [
        "x-nvidia-cert-status",
        "x-nvidia-cert-expiration-date",
        "x-nvidia-cert-revocation-reason",
    ] {
        assert_eq!(o[name], n[name], "{name}");
    }
    // Claims that need the RIMs of 550.90.07 / 96.00.9F.00.01 (not in the set) are not claimed as NRAS does.
    assert_eq!(ours["measres"], "not-run");
    assert!(ours.get("secboot").is_none() && nras["secboot"] == true);
}

#[test]
fn vbios_rim_pair_matches_every_active_measurement() {
    let ev = evidence(PAIRS[0].0, PAIRS[0].1);
    let mut opts = GpuVerifyOptions::at(at(AT_2024));
    opts.nonce = Some(nonce_of(&ev));
    opts.vbios_rim = Some(data("rims/1010_0200_882_96005E0001_PROD.swidtag"));
    let v = verify_gpu(&ev, &GpuTrust::nvidia(), &opts).unwrap();
    let m = v.measurements.as_ref().unwrap();
    assert_eq!(m.compared, vec![0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12]);
    assert!(m.vbios && !m.driver);
    assert!(!v.measurements_matched(), "no driver RIM: not NVIDIA's measres success");
    let c = claims::gpu_claims(&v);
    assert_eq!(c["x-nvidia-gpu-vbios-rim-signature-verified"], true);
    assert_eq!(c["x-nvidia-gpu-driver-rim-signature-verified"], false);
    assert_eq!(c["measres"], "partial");
}

/// Every signed RIM of the set verifies (chain and XML-DSig) inside its signer's validity: NVIDIA's
/// signatures are the oracle for the canonicalizer.
#[test]
fn every_rim_in_the_set_verifies_its_signature() {
    let root = GpuTrust::nvidia().rim_root;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/nvidia/rims");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !(name.ends_with(".xml") || name.ends_with(".swidtag")) {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        let kind = if name.contains("DRIVER") || name.starts_with("Driver") {
            RimKind::Driver
        } else {
            RimKind::Vbios
        };
        // inside every signer's window of this set: the first half of 2024 or 2025
        let ok = ["2024-06-01T00:00:00Z", "2025-03-01T00:00:00Z", "2026-01-01T00:00:00Z"]
            .iter()
            .find_map(|t| rim::verify_rim(&bytes, kind, &root, at(t)).ok());
        let r = ok.unwrap_or_else(|| {
            panic!(
                "{name}: {}",
                rim::verify_rim(&bytes, kind, &root, at(AT_2024)).unwrap_err()
            )
        });
        assert!(!r.measurements.is_empty());
        n += 1;
    }
    assert_eq!(n, 27);
}

fn verify_with(
    report: &str,
    chain: &str,
    when: &str,
    driver: Option<&str>,
    vbios: Option<&str>,
) -> Result<attest::gpu::VerifiedGpu, GpuError> {
    let ev = evidence(report, chain);
    let mut opts = GpuVerifyOptions::at(at(when));
    opts.nonce = Some(nonce_of(&ev));
    opts.driver_rim = driver.map(data);
    opts.vbios_rim = vbios.map(data);
    verify_gpu(&ev, &GpuTrust::nvidia(), &opts)
}

/// Each file of `negative/` fails with a named check.
#[test]
fn negative_corpus_fails_with_named_checks() {
    let cases: Vec<(&str, Result<attest::gpu::VerifiedGpu, GpuError>, &str)> = vec![
        (
            "hopperAttestationReportInvalidSignature + its chain",
            verify_with(
                "negative/hopperAttestationReportInvalidSignature.txt",
                "negative/hopperCertChainExpired.txt",
                AT_2026,
                None,
                None,
            ),
            "gpu signature",
        ),
        (
            "hopperCertChainExpired before its certificates' notBefore",
            verify_with(
                "negative/hopperAttestationReportExpired.txt",
                "negative/hopperCertChainExpired.txt",
                "2019-01-01T00:00:00Z",
                None,
                None,
            ),
            "gpu chain expiry",
        ),
        (
            "hopperAttestationReportExpired with the expired 570.124.03 driver RIM",
            verify_with(
                "negative/hopperAttestationReportExpired.txt",
                "negative/hopperCertChainExpired.txt",
                AT_2026,
                Some("negative/NV_GPU_DRIVER_GH100_570.124.03_expired.xml"),
                None,
            ),
            "rim expiry",
        ),
        (
            "incorrect_signature_driver_rim.xml",
            verify_with(
                PAIRS[1].0,
                PAIRS[1].1,
                AT_2026,
                Some("negative/incorrect_signature_driver_rim.xml"),
                None,
            ),
            "rim signature",
        ),
        (
            "incorrect_cert_chain_driver_rim.xml",
            verify_with(
                PAIRS[1].0,
                PAIRS[1].1,
                AT_2026,
                Some("negative/incorrect_cert_chain_driver_rim.xml"),
                None,
            ),
            "rim chain",
        ),
        (
            "NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml with the 535.86.09 report",
            verify_with(
                PAIRS[0].0,
                PAIRS[0].1,
                AT_2026,
                Some("negative/NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml"),
                None,
            ),
            // edited after signing: its content no longer has the signed digest
            "rim signature",
        ),
        (
            "NV_GPU_VBIOS_..._96005E0001_measurement_mismatch.xml with the 96.00.5E.00.01 report",
            verify_with(
                PAIRS[0].0,
                PAIRS[0].1,
                AT_2024,
                None,
                Some("negative/NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml"),
            ),
            "measurements",
        ),
        (
            "a report with another GPU's chain",
            verify_with(PAIRS[0].0, PAIRS[1].1, AT_2026, None, None),
            "gpu signature",
        ),
        (
            "a RIM for another version",
            verify_with(
                PAIRS[1].0,
                PAIRS[1].1,
                AT_2024,
                None,
                Some("rims/1010_0200_882_96005E0001_PROD.swidtag"),
            ),
            "rim version",
        ),
    ];
    for (what, result, expected) in cases {
        let e = result.err().unwrap_or_else(|| panic!("{what}: verified"));
        assert_eq!(check(&e), expected, "{what}: {e}");
        assert!(e.to_string().starts_with(expected), "{what}: {e}");
    }

    let e = GpuTrust::with_roots(None, Some(&data("negative/incorrect_rim_root.crt"))).unwrap_err();
    assert_eq!(check(&e), "rim root", "{e}");

    // the RIM root as device root: the chain ends elsewhere
    let wrong = GpuTrust::with_roots(Some(&data("verifier_RIM_root.pem")), None).unwrap();
    let e = verify_gpu(
        &evidence(PAIRS[0].0, PAIRS[0].1),
        &wrong,
        &GpuVerifyOptions::at(at(AT_2026)),
    )
    .unwrap_err();
    assert_eq!(check(&e), "gpu root", "{e}");
}

/// The 535.86.09 "measurement mismatch" driver RIM was edited after signing, so it stops at `rim signature`
/// above; its golden values, read unverified, do differ from the 535.86.09 report's measurements.
#[test]
fn mismatching_driver_rim_values_differ_from_the_535_report() {
    use attest::gpu::measure::compare_golden;
    let report = GpuReport::parse(&evidence(PAIRS[0].0, PAIRS[0].1).report).unwrap();
    assert_eq!(report.driver_version().as_deref(), Some("535.86.09"));
    let golden = rim::golden_unverified(
        &data("negative/NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml"),
        RimKind::Driver,
    )
    .unwrap();
    let e = compare_golden(&report, &golden, &[]).unwrap_err();
    assert_eq!(check(&e), "measurements", "{e}");
}

/// Single-byte changes of a valid report: signature, measurement values, request and response nonce.
#[test]
fn single_byte_mutations_fail_with_named_checks() {
    let ev = evidence(PAIRS[0].0, PAIRS[0].1);
    let good = GpuReport::parse(&ev.report).unwrap();
    let trust = GpuTrust::nvidia();
    let nonce = good.request.nonce;
    let len = ev.report.len();
    let run = |offset: usize, with_nonce: bool| {
        let mut m = ev.clone();
        m.report[offset] ^= 0x01;
        let mut opts = GpuVerifyOptions::at(at(AT_2026));
        opts.nonce = with_nonce.then_some(nonce);
        verify_gpu(&m, &trust, &opts).unwrap_err()
    };
    // signature: every byte
    for off in len - 96..len {
        assert_eq!(check(&run(off, true)), "gpu signature", "signature byte {off}");
    }
    // request nonce: every byte (named by the nonce check, or by the signature without an expected nonce)
    for off in 4..36 {
        assert_eq!(check(&run(off, true)), "gpu nonce", "nonce byte {off}");
        assert_eq!(check(&run(off, false)), "gpu signature", "nonce byte {off}");
    }
    // measurement values: the first and last byte of every block's value
    let mut off = 37 + 8;
    for b in &good.blocks {
        let value_start = off + 7;
        for o in [value_start, value_start + b.value.len() - 1] {
            assert_eq!(check(&run(o, true)), "gpu signature", "block {} byte {o}", b.index);
        }
        off = value_start + b.value.len();
    }
    // response nonce
    for o in off..off + 32 {
        assert_eq!(check(&run(o, true)), "gpu signature", "response nonce byte {o}");
    }
}

#[test]
fn collateral_bundle_supplies_rims_and_revocations_offline() {
    use attest::gpu::collateral::GpuCollateral;
    let ev = evidence(PAIRS[0].0, PAIRS[0].1);
    let report = GpuReport::parse(&ev.report).unwrap();
    let mut bundle = GpuCollateral {
        version: 1,
        not_before: "2024-01-01T00:00:00Z".into(),
        not_after: "2024-12-31T00:00:00Z".into(),
        vbios_rims: vec![
            String::from_utf8(data("rims/1010_0205_862_9600740020_PROD.swidtag")).unwrap(),
            String::from_utf8(data("rims/1010_0200_882_96005E0001_PROD.swidtag")).unwrap(),
        ],
        driver_rims: vec![String::from_utf8(data("rims/NV_GPU_DRIVER_GH100_550.144.03.xml")).unwrap()],
        revoked_serials: vec![],
    };
    let bundle2 = GpuCollateral::from_json(bundle.to_json().as_bytes()).unwrap();
    let opts = bundle2
        .options_for(&report, at(AT_2024), Some(report.request.nonce))
        .unwrap();
    assert!(opts.driver_rim.is_none(), "no 535.86.09 driver RIM in the bundle");
    let v = verify_gpu(&ev, &GpuTrust::nvidia(), &opts).unwrap();
    assert_eq!(v.measurements.unwrap().compared.len(), 12);

    let e = bundle2.options_for(&report, at(AT_2026), None).unwrap_err();
    assert_eq!(check(&e), "gpu collateral", "{e}");

    // revoke the BROM certificate of this GPU's chain
    let chain = attest::gpu::certs::parse_pem_chain(&ev.cert_chain_pem).unwrap();
    bundle.revoked_serials = vec![hex::encode(chain[1].serial())];
    let opts = bundle.options_for(&report, at(AT_2024), None).unwrap();
    let e = verify_gpu(&ev, &GpuTrust::nvidia(), &opts).unwrap_err();
    assert_eq!(check(&e), "gpu revoked", "{e}");
}
