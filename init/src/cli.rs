//! Command-line interface of `cinfer-init`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use init::{Family, Flavor, InboundRedirect, NftFamily, OutboundRestriction, RulePlan};

/// Forces inbound TCP through the cinfer server proxy (iptables or nftables, applied atomically, IPv4 and IPv6).
///
/// Run once, with CAP_NET_ADMIN, in the network namespace shared by the proxy and the model server, before they
/// start. All rules live in the chains CINFER_INBOUND (nat) and CINFER_OUTBOUND (filter), or in the nftables
/// table `inet cinfer`, so `clean` removes exactly what `apply` added; `apply` is idempotent.
///
/// Exit status: 0 on success, 1 on any error (nothing is half-applied: each family is one transaction), 2 on
/// usage errors.
#[derive(Debug, Parser)]
#[command(name = "cinfer-init", version)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Installs (or updates) the redirect and the optional outbound restriction.
    Apply {
        #[command(flatten)]
        plan: PlanArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Removes our chains and the jumps into them; nothing else.
    Clean {
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// What to install.
#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    /// The server proxy's port: every inbound TCP connection not excluded lands there.
    #[arg(long, default_value_t = 15006, help_heading = "Inbound")]
    pub(crate) proxy_port: u16,
    /// A destination port reached directly (repeat or comma-separate), e.g. the proxy's health port.
    #[arg(
        long = "exclude-port",
        value_delimiter = ',',
        default_value = "15021",
        help_heading = "Inbound"
    )]
    pub(crate) exclude_ports: Vec<u16>,
    /// Restrict outbound connections: only these UIDs may open them (repeat or comma-separate); loopback and
    /// replies stay allowed. Without it, outbound traffic is not restricted.
    #[arg(long = "outbound-allow-uid", value_delimiter = ',', help_heading = "Outbound")]
    pub(crate) outbound_allow_uids: Vec<u32>,
}

/// Options of every subcommand.
#[derive(Debug, Args)]
pub(crate) struct CommonArgs {
    /// Print the iptables-restore script(s) instead of applying them (reads the current rules if it can).
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Address families to change.
    #[arg(long, value_enum, default_value_t = Families::Both)]
    pub(crate) families: Families,
    /// The packet filter interface: iptables (chains CINFER_INBOUND/CINFER_OUTBOUND) or nftables (table
    /// `inet cinfer`, or `ip cinfer` with --families ipv4).
    #[arg(long, value_enum, default_value_t = BackendKind::Iptables)]
    pub(crate) backend: BackendKind,
    /// The iptables implementation: the system's `iptables-restore`, or explicitly nf_tables or legacy x_tables
    /// (for kernels without nf_tables). Use the one the rest of the system uses.
    #[arg(long, value_enum, default_value_t = Iptables::System)]
    pub(crate) iptables: Iptables,
}

/// `--backend` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendKind {
    /// `iptables-restore` (nf_tables or legacy, see --iptables).
    Iptables,
    /// `nft -f`.
    Nftables,
}

/// `--iptables` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Iptables {
    /// `iptables-restore` as installed.
    System,
    /// `iptables-nft-restore`.
    Nft,
    /// `iptables-legacy-restore`.
    Legacy,
}

impl Iptables {
    pub(crate) fn flavor(self) -> Flavor {
        match self {
            Self::System => Flavor::System,
            Self::Nft => Flavor::Nft,
            Self::Legacy => Flavor::Legacy,
        }
    }
}

/// `--families` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Families {
    /// IPv4 and IPv6 (an IPv6 path around the proxy would defeat it).
    Both,
    /// IPv4 only (for hosts without IPv6 netfilter).
    Ipv4,
}

impl Families {
    pub(crate) fn nft(self) -> NftFamily {
        match self {
            Self::Both => NftFamily::Inet,
            Self::Ipv4 => NftFamily::Ip,
        }
    }

    pub(crate) fn list(self) -> &'static [Family] {
        match self {
            Self::Both => &[Family::Ipv4, Family::Ipv6],
            Self::Ipv4 => &[Family::Ipv4],
        }
    }
}

impl PlanArgs {
    /// The rule plan these arguments describe.
    pub(crate) fn plan(&self) -> RulePlan {
        RulePlan {
            inbound: Some(InboundRedirect {
                proxy_port: self.proxy_port,
                exclude_ports: self.exclude_ports.clone(),
            }),
            outbound: (!self.outbound_allow_uids.is_empty()).then(|| OutboundRestriction {
                allow_uids: self.outbound_allow_uids.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    fn envs(cmd: &clap::Command, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            if let Some(e) = a.get_env() {
                out.push(format!("{} --{}: {}", cmd.get_name(), a.get_id(), e.to_string_lossy()));
            }
        }
        for sub in cmd.get_subcommands() {
            envs(sub, out);
        }
    }

    /// Every option of `cinfer-init` is security-relevant (which port everything lands on, what is excluded, the
    /// address families, who may connect out), so none comes from the environment: a host able to add an
    /// environment variable must not drop the IPv6 redirect or widen the exclusions.
    #[test]
    fn no_option_falls_back_to_the_environment() {
        let mut found = Vec::new();
        envs(&Cli::command(), &mut found);
        assert!(found.is_empty(), "flags that read the environment: {found:?}");
    }
}
