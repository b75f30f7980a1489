//! The nftables backend: the same plan as one table of our own, replaced in one `nft -f` transaction.
//!
//! Owning a whole table makes both properties simple: `apply` is "create the table if missing, delete it,
//! create it with the plan's chains" in one atomic transaction (the result never depends on what was there),
//! and `clean` deletes the table. Nothing outside the table is touched. The `inet` family covers IPv4 and IPv6
//! with one rule set; `ip` is used for IPv4 only.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::backend::{BackendError, Recording, run};
use crate::chains::Family;
use crate::plan::RulePlan;

/// Our table's name (in family `inet` or `ip`).
pub const NFT_TABLE: &str = "cinfer";

/// The nftables address family of our table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftFamily {
    /// `inet`: IPv4 and IPv6.
    Inet,
    /// `ip`: IPv4 only.
    Ip,
}

impl NftFamily {
    /// The family keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Self::Inet => "inet",
            Self::Ip => "ip",
        }
    }
}

/// Runs `nft`.
pub trait NftRunner {
    /// `nft list tables` output.
    fn list_tables(&self) -> Result<String, BackendError>;
    /// Applies a script with `nft -f -` (one transaction).
    fn run_script(&self, script: &str) -> Result<(), BackendError>;
}

/// The real `nft` program.
#[derive(Debug, Clone, Default)]
pub struct Nft;

impl NftRunner for Nft {
    fn list_tables(&self) -> Result<String, BackendError> {
        run("nft", &["list", "tables"], None)
    }

    fn run_script(&self, script: &str) -> Result<(), BackendError> {
        run("nft", &["-f", "-"], Some(script)).map(drop)
    }
}

/// Records scripts as [`Backend::restore`](crate::Backend::restore) does (under [`Family::Ipv4`]), and lists
/// the saved text as the tables.
impl NftRunner for Recording {
    fn list_tables(&self) -> Result<String, BackendError> {
        Ok(self.saved.clone())
    }

    fn run_script(&self, script: &str) -> Result<(), BackendError> {
        self.restored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((Family::Ipv4, script.to_owned()));
        Ok(())
    }
}

/// Whether `nft list tables` output shows our table in `family`.
pub fn has_table(list: &str, family: NftFamily) -> bool {
    let want = format!("table {} {NFT_TABLE}", family.keyword());
    list.lines().any(|l| l.trim() == want)
}

/// The table with the plan's chains.
pub fn ruleset(plan: &RulePlan, family: NftFamily) -> String {
    let mut out = format!("table {} {NFT_TABLE} {{\n", family.keyword());
    if let Some(inbound) = &plan.inbound {
        out.push_str("\tchain inbound {\n\t\ttype nat hook prerouting priority -110; policy accept;\n");
        out.push_str("\t\tiifname \"lo\" return\n");
        let excluded: BTreeSet<u16> = inbound.exclude_ports.iter().copied().collect();
        if !excluded.is_empty() {
            let ports: Vec<String> = excluded.iter().map(u16::to_string).collect();
            let _ = writeln!(out, "\t\ttcp dport {{ {} }} return", ports.join(", "));
        }
        let _ = writeln!(out, "\t\tmeta l4proto tcp redirect to :{}", inbound.proxy_port);
        out.push_str("\t}\n");
        out.push_str("\tchain inbound_udp {\n\t\ttype filter hook input priority -10; policy accept;\n");
        out.push_str("\t\tiifname \"lo\" return\n\t\tct state established,related return\n");
        out.push_str("\t\tmeta l4proto udp drop\n\t}\n");
    }
    if let Some(outbound) = &plan.outbound {
        out.push_str("\tchain outbound {\n\t\ttype filter hook output priority -10; policy accept;\n");
        out.push_str("\t\toifname \"lo\" return\n\t\tct state established,related return\n");
        let uids: BTreeSet<u32> = outbound.allow_uids.iter().copied().collect();
        let uids: Vec<String> = uids.iter().map(u32::to_string).collect();
        let _ = writeln!(out, "\t\tmeta skuid {{ {} }} return", uids.join(", "));
        out.push_str("\t\tmeta l4proto tcp reject with tcp reset\n\t\treject\n\t}\n");
    }
    out.push_str("}\n");
    out
}

/// The `nft -f` script that replaces our table with the plan's (or only removes it for an empty plan).
pub fn apply_script(plan: &RulePlan, family: NftFamily) -> String {
    let fam = family.keyword();
    // `table X` creates the table when missing, so that `delete table X` cannot fail; all in one transaction.
    let mut script = format!("table {fam} {NFT_TABLE}\ndelete table {fam} {NFT_TABLE}\n");
    if plan.inbound.is_some() || plan.outbound.is_some() {
        script.push_str(&ruleset(plan, family));
    }
    script
}

/// The script that removes our table.
pub fn clean_script(family: NftFamily) -> String {
    format!("delete table {} {NFT_TABLE}\n", family.keyword())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{InboundRedirect, OutboundRestriction};

    #[test]
    fn apply_script_replaces_our_table_atomically() {
        let plan = RulePlan {
            inbound: Some(InboundRedirect {
                proxy_port: 15006,
                exclude_ports: vec![15021, 9090],
            }),
            outbound: Some(OutboundRestriction {
                allow_uids: vec![65532, 0],
            }),
        };
        assert_eq!(
            apply_script(&plan, NftFamily::Inet),
            "table inet cinfer\n\
             delete table inet cinfer\n\
             table inet cinfer {\n\
             \tchain inbound {\n\
             \t\ttype nat hook prerouting priority -110; policy accept;\n\
             \t\tiifname \"lo\" return\n\
             \t\ttcp dport { 9090, 15021 } return\n\
             \t\tmeta l4proto tcp redirect to :15006\n\
             \t}\n\
             \tchain inbound_udp {\n\
             \t\ttype filter hook input priority -10; policy accept;\n\
             \t\tiifname \"lo\" return\n\
             \t\tct state established,related return\n\
             \t\tmeta l4proto udp drop\n\
             \t}\n\
             \tchain outbound {\n\
             \t\ttype filter hook output priority -10; policy accept;\n\
             \t\toifname \"lo\" return\n\
             \t\tct state established,related return\n\
             \t\tmeta skuid { 0, 65532 } return\n\
             \t\tmeta l4proto tcp reject with tcp reset\n\
             \t\treject\n\
             \t}\n\
             }\n"
        );
    }

    #[test]
    fn has_table_matches_only_our_table_in_the_family() {
        let list = "table ip nat\ntable inet cinfer\ntable inet cinfer2\n";
        assert!(has_table(list, NftFamily::Inet));
        assert!(!has_table(list, NftFamily::Ip));
        assert!(!has_table("table inet cinfer2\n", NftFamily::Inet));
    }
}
