//! Applies real iptables rules in network namespaces made by the test (needs root, iproute2 and iptables).
//!
//! Two namespaces joined by a veth pair with namespace-local addresses (10.231.7.0/30, fd00:c1f:7::/126): nothing
//! here can reach another machine. Helper processes (this test binary re-executed inside a namespace through
//! `ip netns exec`, selected by `CINFER_NETNS_HELPER`) listen or connect; each listener answers with its own port,
//! so the client learns where its connection landed.
#![cfg(feature = "netns_tests")]
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const SERVER_V4: &str = "10.231.7.2";
const CLIENT_V4: &str = "10.231.7.1";
const SERVER_V6: &str = "fd00:c1f:7::2";
const CLIENT_V6: &str = "fd00:c1f:7::1";
const PROXY_PORT: u16 = 15006;
const HEALTH_PORT: u16 = 15021;
const APP_PORT: u16 = 8000;

/// The helper "test": does nothing unless started by the tests below with `CINFER_NETNS_HELPER` set.
#[test]
#[ignore = "helper process, started by the netns tests inside a namespace"]
fn netns_helper() {
    let Ok(mode) = std::env::var("CINFER_NETNS_HELPER") else {
        return;
    };
    if let Some(ports) = mode.strip_prefix("serve:") {
        for port in ports.split(',').map(|p| p.parse::<u16>().unwrap()) {
            // `[::]` is dual-stack on Linux: one socket answers IPv4 and IPv6.
            let listener = TcpListener::bind(("::", port)).unwrap();
            std::thread::spawn(move || {
                for mut conn in listener.incoming().flatten() {
                    let _ = writeln!(conn, "{port}");
                }
            });
            // A UDP echo of the port on the same number.
            let udp = UdpSocket::bind(("::", port)).unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok((_, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(port.to_string().as_bytes(), from);
                }
            });
        }
        println!("helper-ready");
        std::io::stdout().flush().unwrap();
        loop {
            std::thread::park();
        }
    } else if let Some(addr) = mode.strip_prefix("connect:") {
        let addr: SocketAddr = addr.parse().unwrap();
        let answer = match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(mut conn) => {
                conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut text = String::new();
                match conn.read_to_string(&mut text) {
                    Ok(_) => format!("landed:{}", text.trim()),
                    Err(e) => format!("error:{:?}", e.kind()),
                }
            }
            Err(e) => format!("error:{:?}", e.kind()),
        };
        println!("helper-result {answer}");
    } else if let Some(addr) = mode.strip_prefix("udp:") {
        let addr: SocketAddr = addr.parse().unwrap();
        let local: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
        let sock = UdpSocket::bind(local).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        sock.send_to(b"ping", addr).unwrap();
        let mut buf = [0u8; 64];
        let answer = match sock.recv_from(&mut buf) {
            Ok((n, _)) => format!("landed:{}", String::from_utf8_lossy(&buf[..n])),
            Err(e) => format!("error:{:?}", e.kind()),
        };
        println!("helper-result {answer}");
    }
}

/// Two namespaces and the helper processes in them; all removed on drop, also when the test fails.
struct Lab {
    server: String,
    client: String,
    children: Vec<Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    fn new(tag: &str) -> Self {
        let pid = std::process::id();
        let lab = Self {
            server: format!("cinfer-{tag}-s-{pid}"),
            client: format!("cinfer-{tag}-c-{pid}"),
            children: vec![],
        };
        // Created before any namespace, so that Drop also cleans up a half-built lab.
        ip(&["netns", "add", &lab.server]);
        ip(&["netns", "add", &lab.client]);
        let (veth_s, veth_c) = (format!("cs{pid}"), format!("cc{pid}"));
        // The veth pair is created directly inside the namespaces: it never exists in the host namespace.
        ip(&[
            "link",
            "add",
            &veth_s,
            "netns",
            &lab.server,
            "type",
            "veth",
            "peer",
            "name",
            &veth_c,
            "netns",
            &lab.client,
        ]);
        for (ns, dev, v4, v6) in [
            (&lab.server, &veth_s, SERVER_V4, SERVER_V6),
            (&lab.client, &veth_c, CLIENT_V4, CLIENT_V6),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/30"), "dev", dev]);
            ip(&["-n", ns, "addr", "add", &format!("{v6}/126"), "dev", dev, "nodad"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    /// This test binary, re-executed in `ns` (as `uid` if given) to run `netns_helper` in `mode`.
    fn helper(&self, ns: &str, mode: &str, uid: Option<u32>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        if let Some(uid) = uid {
            cmd.args([
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ]);
        }
        cmd.arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "netns_helper",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CINFER_NETNS_HELPER", mode);
        cmd
    }

    /// Starts listeners in `ns` on `ports` and waits until they are bound.
    fn serve(&mut self, ns: &str, ports: &[u16]) {
        let ports = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        let mut child = self
            .helper(ns, &format!("serve:{ports}"), None)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        self.children.push(child);
        assert!(
            lines.any(|l| l.unwrap().contains("helper-ready")),
            "listener helper did not start"
        );
    }

    /// Connects from `ns` to `addr` as `uid` (or as root) and says where the connection landed.
    fn connect_as(&self, ns: &str, addr: &str, uid: Option<u32>) -> String {
        let out = self.helper(ns, &format!("connect:{addr}"), uid).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .find_map(|l| l.split_once("helper-result ").map(|(_, r)| r.trim().to_owned()))
            .unwrap_or_else(|| {
                panic!(
                    "no result from connect helper: {stdout} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    fn connect(&self, ns: &str, addr: &str) -> String {
        self.connect_as(ns, addr, None)
    }

    /// Sends a UDP datagram from `ns` to `addr` and says who answered, or the error (a timeout when dropped).
    fn udp(&self, ns: &str, addr: &str) -> String {
        let out = self.helper(ns, &format!("udp:{addr}"), None).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .find_map(|l| l.split_once("helper-result ").map(|(_, r)| r.trim().to_owned()))
            .unwrap_or_else(|| panic!("no result from udp helper: {stdout}"))
    }

    fn init(&self, args: &[&str]) -> Output {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.server, env!("CARGO_BIN_EXE_cinfer-init")])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cinfer-init {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The server namespace's rules (both families) without comments, counters and tables that are empty
    /// (iptables-nft creates a table when a script names it; an empty table with ACCEPT policies filters nothing).
    fn rules(&self) -> String {
        self.rules_of("")
    }

    /// The server namespace's nftables rule set.
    fn nft_ruleset(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.server, "nft", "list", "ruleset"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Like `rules`, read with the iptables flavour `flavor` (`""`, `"-legacy"`, `"-nft"`).
    fn rules_of(&self, flavor: &str) -> String {
        let mut all = String::new();
        for save in [format!("iptables{flavor}-save"), format!("ip6tables{flavor}-save")] {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.server, &save])
                .output()
                .unwrap();
            assert!(out.status.success());
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut table = Vec::new();
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                table.push(line.split(" [").next().unwrap_or(line).to_owned());
                if line == "COMMIT" {
                    let empty = table
                        .iter()
                        .all(|l| l.starts_with('*') || l.ends_with(" ACCEPT") || l == "COMMIT");
                    if !empty {
                        all.push_str(&table.join("\n"));
                        all.push('\n');
                    }
                    table.clear();
                }
            }
        }
        all
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn v4(port: u16) -> String {
    format!("{SERVER_V4}:{port}")
}

fn v6(port: u16) -> String {
    format!("[{SERVER_V6}]:{port}")
}

#[test]
fn inbound_tcp_lands_on_proxy_port_except_excluded_and_clean_restores_direct_access() {
    inbound_scenario("in", &["--iptables", "system"], "-A CINFER_INBOUND", &|lab| {
        lab.rules_of("")
    });
}

#[test]
fn legacy_iptables_redirects_and_cleans_the_same_way() {
    inbound_scenario("lg", &["--iptables", "legacy"], "-A CINFER_INBOUND", &|lab| {
        lab.rules_of("-legacy")
    });
}

#[test]
fn nftables_backend_redirects_and_cleans_the_same_way() {
    inbound_scenario("nf", &["--backend", "nftables"], "table inet cinfer", &|lab| {
        lab.nft_ruleset()
    });
}

/// Apply, check where connections land, re-apply, clean, with the backend chosen by `backend` (extra
/// `cinfer-init` arguments), reading the rules back with `rules`, in which `marker` shows that backend's rules.
fn inbound_scenario(tag: &str, backend: &[&str], marker: &str, rules: &dyn Fn(&Lab) -> String) {
    let mut lab = Lab::new(tag);
    let (server, client) = (lab.server.clone(), lab.client.clone());
    lab.serve(&server, &[PROXY_PORT, HEALTH_PORT, APP_PORT]);

    // Before: the app port answers itself, over TCP and UDP.
    assert_eq!(lab.connect(&client, &v4(APP_PORT)), format!("landed:{APP_PORT}"));
    assert_eq!(lab.udp(&client, &v4(APP_PORT)), format!("landed:{APP_PORT}"));
    let pristine = rules(&lab);

    let (port, exclude) = (PROXY_PORT.to_string(), HEALTH_PORT.to_string());
    let apply = [
        &["apply", "--proxy-port", &port, "--exclude-port", &exclude][..],
        backend,
    ]
    .concat();
    lab.init(&apply);
    let applied = rules(&lab);
    assert!(
        applied != pristine && applied.contains(marker) && applied.contains("15006"),
        "{applied}"
    );

    // Inbound TCP to any port, over IPv4 and IPv6, lands on the proxy; the excluded port goes direct.
    assert_eq!(lab.connect(&client, &v4(APP_PORT)), format!("landed:{PROXY_PORT}"));
    assert_eq!(lab.connect(&client, &v4(9999)), format!("landed:{PROXY_PORT}"));
    assert_eq!(lab.connect(&client, &v6(APP_PORT)), format!("landed:{PROXY_PORT}"));
    assert_eq!(lab.connect(&client, &v4(HEALTH_PORT)), format!("landed:{HEALTH_PORT}"));
    assert_eq!(lab.connect(&client, &v6(HEALTH_PORT)), format!("landed:{HEALTH_PORT}"));
    // Local traffic (the proxy talking to the model server) is not redirected.
    assert_eq!(
        lab.connect(&server, &format!("127.0.0.1:{APP_PORT}")),
        format!("landed:{APP_PORT}")
    );
    // Inbound UDP from another host is dropped (IPv4 and IPv6), on loopback it passes, and the group's own
    // queries get their answers (a datagram from the server to the client's echo comes back).
    for addr in [v4(APP_PORT), v6(APP_PORT), v4(HEALTH_PORT)] {
        assert_eq!(lab.udp(&client, &addr), "error:WouldBlock", "UDP to {addr}");
    }
    assert_eq!(
        lab.udp(&server, &format!("127.0.0.1:{APP_PORT}")),
        format!("landed:{APP_PORT}")
    );
    lab.serve(&client, &[HEALTH_PORT + 1]);
    assert_eq!(
        lab.udp(&server, &format!("{CLIENT_V4}:{}", HEALTH_PORT + 1)),
        format!("landed:{}", HEALTH_PORT + 1)
    );

    // A second apply changes nothing.
    lab.init(&apply);
    assert_eq!(rules(&lab), applied);

    // Clean removes exactly what apply added; a second clean is a no-op.
    lab.init(&[&["clean"], backend].concat());
    assert_eq!(rules(&lab), pristine);
    assert_eq!(lab.connect(&client, &v4(APP_PORT)), format!("landed:{APP_PORT}"));
    assert_eq!(lab.connect(&client, &v6(APP_PORT)), format!("landed:{APP_PORT}"));
    assert_eq!(lab.udp(&client, &v4(APP_PORT)), format!("landed:{APP_PORT}"));
    let again = lab.init(&[&["clean"], backend].concat());
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing of ours to remove"));
    assert_eq!(rules(&lab), pristine);
}

#[test]
fn clean_leaves_foreign_rules_and_dry_run_changes_nothing() {
    let lab = Lab::new("fr");
    let foreign = "*nat\n:OTHER - [0:0]\n-A PREROUTING -p udp -j OTHER\n-A OTHER -p udp -j RETURN\nCOMMIT\n";
    let mut restore = Command::new("ip")
        .args(["netns", "exec", &lab.server, "iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    restore.stdin.take().unwrap().write_all(foreign.as_bytes()).unwrap();
    assert!(restore.wait().unwrap().success());
    let before = lab.rules();

    let dry = lab.init(&["apply", "--dry-run"]);
    assert!(String::from_utf8_lossy(&dry.stdout).contains("-j REDIRECT --to-ports 15006"));
    assert_eq!(lab.rules(), before, "--dry-run must not change rules");

    lab.init(&["apply"]);
    assert_ne!(lab.rules(), before);
    lab.init(&["clean"]);
    assert_eq!(lab.rules(), before, "clean must leave the foreign chain and jump alone");
}

#[test]
fn outbound_restriction_lets_only_allowed_uids_connect_out() {
    outbound_scenario("out", &[]);
}

#[test]
fn nftables_outbound_restriction_lets_only_allowed_uids_connect_out() {
    outbound_scenario("onf", &["--backend", "nftables"]);
}

fn outbound_scenario(tag: &str, backend: &[&str]) {
    let mut lab = Lab::new(tag);
    let (server, client) = (lab.server.clone(), lab.client.clone());
    lab.serve(&client, &[APP_PORT]);
    let to_client = format!("{CLIENT_V4}:{APP_PORT}");
    assert_eq!(
        lab.connect_as(&server, &to_client, Some(4242)),
        format!("landed:{APP_PORT}")
    );

    lab.init(&[&["apply", "--outbound-allow-uid", "1337,4242"][..], backend].concat());
    assert_eq!(
        lab.connect_as(&server, &to_client, Some(4242)),
        format!("landed:{APP_PORT}")
    );
    assert_eq!(
        lab.connect_as(&server, &to_client, Some(4343)),
        "error:ConnectionRefused"
    );
    assert_eq!(
        lab.connect_as(&server, &format!("[{CLIENT_V6}]:{APP_PORT}"), Some(4343)),
        "error:ConnectionRefused"
    );

    // Re-applying without the restriction removes it.
    lab.init(&[&["apply"][..], backend].concat());
    assert_eq!(
        lab.connect_as(&server, &to_client, Some(4343)),
        format!("landed:{APP_PORT}")
    );
    lab.init(&[&["clean"][..], backend].concat());
}
