//! `cinfer-deploy local` as a user runs it: as a process, printing the answer, and stopping everything on
//! Ctrl-C. Small models (no large variant) keep these runs short; the acceptance test covers streaming.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cinfer_tests::{alive, descendants};
use deploy::local::env::bin;
use deploy::local::pipeline::mounts_under;

/// Every port free (0), so the test never collides with a user's running stack.
const ANY_PORTS: [&str; 12] = [
    "--proxy-port",
    "0",
    "--health-port",
    "0",
    "--model-server-port",
    "0",
    "--client-proxy-port",
    "0",
    "--attest-port",
    "0",
    "--store-port",
    "0",
];

fn deploy_local() -> Command {
    let mut cmd = Command::new(bin("cinfer-deploy").unwrap());
    cmd.arg("local").args(ANY_PORTS).env("CINFER_LOG", "warn");
    cmd
}

/// `--once` from the HTTP range server: prints the seed-style answer and the timings, exits 0, leaves nothing.
#[test]
fn local_once_prints_the_answer_and_exits() {
    let out = deploy_local()
        .args(["--once", "--image-store", "http"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}\n{stdout}");
    assert!(out.status.success(), "exit {}", out.status);
    assert!(stdout.contains("classifier: 1.000000 (1) = COFFEE MUG"), "{stdout}");
    assert!(
        stdout.contains("stage timings:") && stdout.contains("total"),
        "{stdout}"
    );
    assert!(
        stderr.contains("[8/8] attested TLS server proxy + client proxy ..."),
        "{stderr}"
    );
    // What ran is the rendered deployment: each process names the rendered container it came from, and the
    // rendered sidecar arguments carry the pin of the image built here.
    for (process, container) in [
        ("encfs-sidecar", "containers[1] \"encfs\""),
        ("triton", "containers[0] \"model-server\""),
        ("server-proxy", "containers[2] \"proxy\""),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(process)
                    && l.ends_with(&format!("rendered/template.json {container}"))),
            "{process} from {container}: {stdout}"
        );
    }
    let root = stdout
        .lines()
        .find_map(|l| l.split("root ").nth(1))
        .map(|r| r.trim_end_matches(')').to_owned())
        .unwrap();
    assert!(
        stdout.contains(&format!("[model] expect_root = {root} (the image built here")),
        "{stdout}"
    );
    let work = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("work dir"))
        .map(|s| s.trim().trim_end_matches(" (logs in logs/)").to_owned())
        .unwrap();
    assert!(
        !std::path::Path::new(&work).exists(),
        "the temporary work dir {work} is left"
    );
}

/// Writes a seed-style repository (`platform: "onnxruntime_onnx"`, no `model.py`) into `dir` with
/// `make_models.py`, plus the `extra` arguments (e.g. `--broken NAME`).
fn seed_repo(dir: &std::path::Path, extra: &[&str]) {
    let script = dir.parent().unwrap().join("make_models.py");
    std::fs::write(&script, deploy::local::scripts::MAKE_MODELS).unwrap();
    let st = Command::new(deploy::local::env::python().unwrap())
        .arg(&script)
        .arg(dir)
        .args(["--layout", "seed"])
        .args(extra)
        .status()
        .unwrap();
    assert!(st.success());
}

/// `--models DIR` with a standard Triton repository: served instead of the example, and the example request
/// (model metadata through the attested proxies) answers with the repository's platform.
#[test]
fn local_once_serves_a_given_model_repository() {
    let dir = tempfile_dir().join("repo");
    seed_repo(&dir, &[]);
    assert!(!dir.join("classifier/1/model.py").exists());
    let out = deploy_local()
        .args(["--once", "--image-store", "http", "--models"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "exit {}", out.status);
    assert!(
        stdout.contains("classifier: HTTP 200 {\"name\":\"classifier\"") && stdout.contains("onnxruntime_onnx"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("COFFEE MUG"),
        "the example ran instead of the given repository"
    );
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

/// A model Triton cannot load is reported by name with Triton's reason within seconds: serving mode keeps
/// serving the models that loaded and shows the failed one; `--once` exits non-zero and stops everything.
#[test]
fn local_reports_a_model_that_fails_to_load() {
    let base = tempfile_dir();
    let dir = base.join("repo");
    seed_repo(&dir, &["--broken", "broken_model"]);
    let work = base.join("work");

    let mut child = deploy_local()
        .args(["--image-store", "http", "--models"])
        .arg(&dir)
        .arg("--work")
        .arg(&work)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                eprintln!("| {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut lines: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !lines.iter().any(|l| l.starts_with("serving;")) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => lines.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("cinfer-deploy local did not start serving: {lines:#?}");
            }
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("model broken_model failed to load:") && l.contains("INVALID_PROTOBUF")),
        "the failure is reported while loading, with Triton's reason: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start().starts_with("FAILED") && l.contains("broken_model: ")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.trim() == "models       classifier"),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("classifier: HTTP 200")),
        "the model that loaded is served: {lines:#?}"
    );
    let st = Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    assert!(st.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(mounts_under(&work).is_empty());

    let children_before: Vec<u32> = descendants(std::process::id());
    let t = Instant::now();
    let out = deploy_local()
        .args(["--once", "--image-store", "http", "--models"])
        .arg(&dir)
        .arg("--work")
        .arg(&work)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}\n{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(1), "--once with a failed model: {stderr}");
    assert!(
        stderr.contains("Triton could not load 1 of 2 models")
            && stderr.contains("broken_model: ")
            && stderr.contains("INVALID_PROTOBUF"),
        "{stderr}"
    );
    assert!(t.elapsed() < Duration::from_secs(300), "took {:?}", t.elapsed());
    assert!(
        mounts_under(&work).is_empty(),
        "left mounted: {:?}",
        mounts_under(&work)
    );
    let left: Vec<u32> = descendants(std::process::id())
        .into_iter()
        .filter(|p| !children_before.contains(p) && alive(*p))
        .collect();
    assert!(left.is_empty(), "processes left running: {left:?}");
    let _ = std::fs::remove_dir_all(&base);
}

/// Serving from Azurite until SIGINT: the printed curl command works, then Ctrl-C stops every child, unmounts
/// and exits 0.
#[test]
fn local_stops_everything_on_sigint() {
    let work = tempfile_dir();
    let mut child = deploy_local()
        .arg("--work")
        .arg(&work)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("| {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !lines.iter().any(|l: &String| l.starts_with("serving;")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("cinfer-deploy local did not start serving: {lines:#?}");
            }
        }
    }
    assert!(
        lines.iter().any(|l| l == "classifier: 1.000000 (1) = COFFEE MUG"),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("/devstoreaccount1/models/model.img")),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("sig=")),
        "a SAS was printed: {lines:#?}"
    );

    // The curl command it prints is a working KServe V2 inference through the attested proxies.
    let curl = lines
        .iter()
        .skip_while(|l| !l.starts_with("or with curl"))
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    let out = Command::new("sh").arg("-c").arg(&curl).output().unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("\"probs\""), "{curl}\n=> {body}");

    let children = descendants(pid);
    assert!(children.len() >= 6, "expected every stage's process, got {children:?}");
    assert!(
        !mounts_under(&work).is_empty(),
        "the image is not mounted under {}",
        work.display()
    );

    let t = Instant::now();
    let st = Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    assert!(st.success());
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("cinfer-deploy local did not stop within 120 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("stopped in {:.2}s", t.elapsed().as_secs_f64());
    // The reader thread ends at EOF, which disconnects the channel.
    let mut rest = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
        rest.push(l);
    }
    assert_eq!(status.code(), Some(0), "exit status after SIGINT: {status}; {rest:?}");
    assert!(rest.iter().any(|l| l.starts_with("stopped;")), "{rest:?}");
    assert!(
        mounts_under(&work).is_empty(),
        "left mounted: {:?}",
        mounts_under(&work)
    );
    let left: Vec<u32> = children.into_iter().filter(|&c| alive(c)).collect();
    assert!(left.is_empty(), "children left running: {left:?}");

    // The same --work directory again: the second run starts over from what the first left (image, key, store
    // data, ready files), without clobbering errors.
    let out = deploy_local()
        .args(["--once", "--image-store", "http", "--work"])
        .arg(&work)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "second run in {}: {}\n{stdout}",
        work.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("classifier: 1.000000 (1) = COFFEE MUG"), "{stdout}");
    assert!(mounts_under(&work).is_empty());
    let _ = std::fs::remove_dir_all(&work);
}

/// A fresh directory for `--work` (kept by `cinfer-deploy`, removed by the test).
fn tempfile_dir() -> std::path::PathBuf {
    let parent = std::env::var_os("CINFER_E2E_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = parent.join(format!("cinfer-local-cli.{}.{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::canonicalize(dir).unwrap()
}
