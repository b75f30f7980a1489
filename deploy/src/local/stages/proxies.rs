//! The client's way in: the rendered `proxy` container (the attested TLS server proxy in front of the model
//! server; mock attester, evidence carrying the container's host_data) and the client proxy with the rendered
//! client policy, which pins the expected hostdata.

use std::process::Command;
use std::time::Duration;

use super::Ctx;
use crate::local::env::port_or_free;
use crate::local::error::Result;
use crate::local::http;
use crate::local::proc::{Proc, run, wait_for};
use crate::local::rendered::LocalCommand;

/// Both proxies and their addresses.
#[derive(Debug)]
pub(crate) struct Proxies {
    pub(crate) server: Proc,
    pub(crate) client: Proc,
    pub(crate) server_port: u16,
    pub(crate) client_port: u16,
}

/// What the proxies are given.
#[derive(Debug)]
pub(crate) struct ProxyInput<'a> {
    /// The rendered server proxy, localized.
    pub(crate) server: &'a LocalCommand,
    /// Its attested TLS and health ports (as localized).
    pub(crate) server_port: u16,
    pub(crate) health_port: u16,
    /// The client proxy's port (0: a free one).
    pub(crate) client_port: u16,
    pub(crate) authority: &'a str,
    /// The client policy: the rendered one, or one generated for another hostdata.
    pub(crate) client_policy: ClientPolicy<'a>,
}

/// Which client policy the client proxy uses.
#[derive(Debug)]
pub(crate) enum ClientPolicy<'a> {
    /// A file (the rendered `client-policy-hostdata.json`).
    File(&'a std::path::Path),
    /// `cinfer-proxy generate-policy --hostdata` for this hostdata (negative tests).
    HostData(&'a str),
}

/// Starts the server proxy, writes the client policy, starts the client proxy; returns when both answer.
pub(crate) fn start(ctx: &Ctx, input: &ProxyInput<'_>) -> Result<Proxies> {
    let (sp, health) = (input.server_port, input.health_port);
    let cp = port_or_free(input.client_port, "client proxy")?;
    let mut server = Proc::spawn("server-proxy", input.server.command(), &ctx.logs)?;
    wait_for("the server proxy", Duration::from_secs(30), &ctx.cancel, || {
        server.check_running()?;
        Ok(http::status(health, "/") == Some(200))
    })?;
    let policy = match input.client_policy {
        ClientPolicy::File(path) => path.to_path_buf(),
        ClientPolicy::HostData(hostdata) => {
            let policy = ctx.work.join("client-policy.json");
            run(
                "cinfer-proxy generate-policy",
                Command::new(&ctx.proxy)
                    .args(["generate-policy", "--hostdata", hostdata, "-o"])
                    .arg(&policy),
            )?;
            policy
        }
    };
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
