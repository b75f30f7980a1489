//! The `cinfer-init` binary without privileges: dry runs, usage errors, help.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn init(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cinfer-init"))
        .args(args)
        .env("CINFER_LOG", "error")
        .output()
        .unwrap()
}

#[test]
fn dry_run_prints_both_families_and_applies_nothing() {
    let out = init(&[
        "apply",
        "--dry-run",
        "--proxy-port",
        "7443",
        "--exclude-port",
        "9000,9001",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("# ipv4 (iptables-restore --noflush)\n*nat\n:CINFER_INBOUND - [0:0]\n"),
        "{stdout}"
    );
    assert!(stdout.contains("# ipv6 (iptables-restore --noflush)\n"), "{stdout}");
    assert!(
        stdout.contains("-A CINFER_INBOUND -p tcp -m tcp --dport 9000 -j RETURN\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("-A CINFER_INBOUND -p tcp -m tcp --dport 9001 -j RETURN\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("-A CINFER_INBOUND -p tcp -j REDIRECT --to-ports 7443\n"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("CINFER_OUTBOUND -"),
        "no outbound rules unless asked: {stdout}"
    );
}

#[test]
fn excluding_the_proxy_port_is_an_error() {
    let out = init(&["apply", "--dry-run", "--proxy-port", "15006", "--exclude-port", "15006"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("proxy port 15006 is also excluded"), "{stderr}");
}

#[test]
fn bad_port_is_a_usage_error() {
    let out = init(&["apply", "--proxy-port", "70000"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn init_command_rendered_by_cinfer_deploy_is_accepted() {
    // The ARM template golden file of the deploy crate: its init container's command must parse here.
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/tests/golden/aci/template.json");
    let template: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(golden).unwrap()).unwrap();
    let command = template["resources"][0]["properties"]["initContainers"][0]["properties"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(command[0], "/usr/local/bin/cinfer-init");
    let mut args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
    args.push("--dry-run");
    let out = init(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("-A CINFER_INBOUND -p tcp -j REDIRECT --to-ports 15006\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("-A CINFER_INBOUND -p tcp -m tcp --dport 15021 -j RETURN\n"),
        "{stdout}"
    );
}

#[test]
fn nftables_dry_run_replaces_our_table_only() {
    let out = init(&["apply", "--dry-run", "--backend", "nftables", "--families", "ipv4"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("# nftables ip (nft -f)\ntable ip cinfer\ndelete table ip cinfer\ntable ip cinfer {\n"),
        "{stdout}"
    );
    assert!(stdout.contains("\t\tmeta l4proto tcp redirect to :15006\n"), "{stdout}");
    assert!(stdout.contains("\t\ttcp dport { 15021 } return\n"), "{stdout}");
}
