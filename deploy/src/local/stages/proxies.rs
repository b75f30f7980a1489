//! The client's way in: the attested TLS server proxy in front of the model server (mock attester, evidence
//! carrying the container's host_data) and the client proxy, whose client policy pins the expected hostdata.

use std::process::Command;
use std::time::Duration;

use super::{Ctx, MEASUREMENT};
use crate::local::env::port_or_free;
use crate::local::error::Result;
use crate::local::http;
use crate::local::proc::{Proc, run, wait_for};

/// Both proxies and their addresses.
#[derive(Debug)]
pub(crate) struct Proxies {
    pub(crate) server: Proc,
    pub(crate) client: Proc,
    pub(crate) server_port: u16,
    pub(crate) client_port: u16,
}

/// Ports of the proxies (0: a free one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProxyPorts {
    pub(crate) server: u16,
    pub(crate) health: u16,
    pub(crate) client: u16,
}

/// What the proxies are given.
#[derive(Debug)]
pub(crate) struct ProxyInput<'a> {
    pub(crate) upstream_port: u16,
    pub(crate) authority: &'a str,
    pub(crate) mock: &'a std::path::Path,
    pub(crate) evidence_host_data: &'a str,
    pub(crate) client_host_data: &'a str,
}

/// Starts the server proxy, writes the client policy, starts the client proxy; returns when both answer.
pub(crate) fn start(ctx: &Ctx, ports: ProxyPorts, input: &ProxyInput<'_>) -> Result<Proxies> {
    let sp = port_or_free(ports.server, "server proxy")?;
    let health = port_or_free(ports.health, "server proxy health")?;
    let cp = port_or_free(ports.client, "client proxy")?;
    let mut cmd = Command::new(&ctx.proxy);
    cmd.args([
        "server",
        "--listen",
        &format!("127.0.0.1:{sp}"),
        "--upstream",
        &format!("127.0.0.1:{}", input.upstream_port),
        "--health",
        &format!("127.0.0.1:{health}"),
        "--attestation-url",
        input.authority,
        "--attester",
        "mock",
        "--mock-root",
    ])
    .arg(input.mock)
    .args([
        "--mock-host-data",
        input.evidence_host_data,
        "--mock-measurement",
        MEASUREMENT,
    ]);
    let mut server = Proc::spawn("server-proxy", cmd, &ctx.logs)?;
    wait_for("the server proxy", Duration::from_secs(30), &ctx.cancel, || {
        server.check_running()?;
        Ok(http::status(health, "/") == Some(200))
    })?;
    let policy = ctx.work.join("client-policy.json");
    run(
        "cinfer-proxy generate-policy",
        Command::new(&ctx.proxy)
            .args(["generate-policy", "--hostdata", input.client_host_data, "-o"])
            .arg(&policy),
    )?;
    let mut cmd = Command::new(&ctx.proxy);
    cmd.args(["client", "--listen", &format!("127.0.0.1:{cp}"), "--policy"])
        .arg(&policy)
        .args(["--attestation-url", input.authority]);
    let mut client = Proc::spawn("client-proxy", cmd, &ctx.logs)?;
    wait_for("the client proxy", Duration::from_secs(30), &ctx.cancel, || {
        client.check_running()?;
        Ok(std::net::TcpStream::connect(("127.0.0.1", cp)).is_ok())
    })?;
    Ok(Proxies {
        server,
        client,
        server_port: sp,
        client_port: cp,
    })
}
