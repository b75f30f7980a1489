//! The rule plan as data, and its rendering to `iptables-restore --noflush` scripts.
//!
//! A script always declares our chain (which, under `--noflush`, creates it or flushes it) and refills it, so the
//! chain's content after `apply` depends only on the plan. The jump from the built-in chain is added only when
//! the saved rules show none, so a second `apply` leaves the same rule set as the first.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use thiserror::Error;

use crate::chains::{Family, INBOUND_CHAIN, OUTBOUND_CHAIN, UDP_CHAIN};
use crate::state::{OurRules, TableRules};

/// Everything `cinfer-init apply` installs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RulePlan {
    /// Redirect inbound TCP to the proxy; `None` removes an earlier redirect.
    pub inbound: Option<InboundRedirect>,
    /// Restrict outbound connections to some UIDs; `None` removes an earlier restriction.
    pub outbound: Option<OutboundRestriction>,
}

/// Inbound TCP from other hosts goes to `proxy_port`, unless its destination port is excluded. Inbound UDP from
/// other hosts is dropped (replies to the group's own queries, such as DNS, pass): TCP is all the proxy serves,
/// and a redirect cannot hand a datagram to it, so nothing but the proxy stays reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRedirect {
    /// The server proxy's listening port (the seed's 15006).
    pub proxy_port: u16,
    /// Destination ports reached directly, e.g. the proxy's health port (the seed's 15021).
    pub exclude_ports: Vec<u16>,
}

/// New outbound connections leave the group only from these UIDs (loopback and replies are always allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRestriction {
    /// UIDs allowed to open outbound connections: the server proxy (it fetches attestation tokens) and the encfs
    /// sidecar (it fetches the image and releases the key).
    pub allow_uids: Vec<u32>,
}

/// A plan that would not do what its author meant.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlanError {
    /// Port 0 cannot be redirected to.
    #[error("the proxy port must not be 0")]
    ZeroProxyPort,
    /// Excluding the proxy port is contradictory.
    #[error("the proxy port {port} is also excluded")]
    ProxyPortExcluded {
        /// The port.
        port: u16,
    },
    /// An outbound restriction that allows nobody would cut off the proxy and the sidecar as well.
    #[error("an outbound restriction needs at least one allowed UID")]
    NoAllowedUid,
}

impl RulePlan {
    /// Checks the plan for contradictions.
    pub fn validate(&self) -> Result<(), PlanError> {
        if let Some(inbound) = &self.inbound {
            if inbound.proxy_port == 0 {
                return Err(PlanError::ZeroProxyPort);
            }
            if inbound.exclude_ports.contains(&inbound.proxy_port) {
                return Err(PlanError::ProxyPortExcluded {
                    port: inbound.proxy_port,
                });
            }
        }
        if let Some(outbound) = &self.outbound
            && outbound.allow_uids.is_empty()
        {
            return Err(PlanError::NoAllowedUid);
        }
        Ok(())
    }

    /// The rules of our `nat` chain, without the jump into it.
    pub fn inbound_rules(&self) -> Vec<String> {
        let Some(inbound) = &self.inbound else {
            return Vec::new();
        };
        let mut rules = vec![format!("-A {INBOUND_CHAIN} -i lo -j RETURN")];
        let excluded: BTreeSet<u16> = inbound.exclude_ports.iter().copied().collect();
        for port in excluded {
            rules.push(format!("-A {INBOUND_CHAIN} -p tcp -m tcp --dport {port} -j RETURN"));
        }
        rules.push(format!(
            "-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            inbound.proxy_port
        ));
        rules
    }

    /// The rules of our inbound UDP chain (`filter`), without the jump into it: loopback and replies pass, the
    /// rest is dropped.
    pub fn udp_rules(&self) -> Vec<String> {
        if self.inbound.is_none() {
            return Vec::new();
        }
        vec![
            format!("-A {UDP_CHAIN} -i lo -j RETURN"),
            format!("-A {UDP_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"),
            format!("-A {UDP_CHAIN} -j DROP"),
        ]
    }

    /// The rules of our `filter` chain, without the jump into it.
    pub fn outbound_rules(&self, family: Family) -> Vec<String> {
        let Some(outbound) = &self.outbound else {
            return Vec::new();
        };
        let mut rules = vec![
            format!("-A {OUTBOUND_CHAIN} -o lo -j RETURN"),
            format!("-A {OUTBOUND_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"),
        ];
        let uids: BTreeSet<u32> = outbound.allow_uids.iter().copied().collect();
        for uid in uids {
            rules.push(format!("-A {OUTBOUND_CHAIN} -m owner --uid-owner {uid} -j RETURN"));
        }
        let reject = match family {
            Family::Ipv4 => "icmp-port-unreachable",
            Family::Ipv6 => "icmp6-port-unreachable",
        };
        rules.push(format!("-A {OUTBOUND_CHAIN} -p tcp -j REJECT --reject-with tcp-reset"));
        rules.push(format!("-A {OUTBOUND_CHAIN} -j REJECT --reject-with {reject}"));
        rules
    }

    /// The script that makes the rules of `family` match the plan, given our rules found there now.
    pub fn apply_script(&self, family: Family, ours: &OurRules) -> String {
        let mut script = String::new();
        table_section(
            &mut script,
            "nat",
            INBOUND_CHAIN,
            "PREROUTING",
            "-p tcp",
            self.inbound.is_some().then(|| self.inbound_rules()),
            &ours.nat,
        );
        table_section(
            &mut script,
            "filter",
            OUTBOUND_CHAIN,
            "OUTPUT",
            "",
            self.outbound.is_some().then(|| self.outbound_rules(family)),
            &ours.filter,
        );
        table_section(
            &mut script,
            "filter",
            UDP_CHAIN,
            "INPUT",
            "-p udp",
            self.inbound.is_some().then(|| self.udp_rules()),
            &ours.udp,
        );
        script
    }
}

/// The script that removes our chains and the jumps into them; `None` when there is nothing of ours.
pub fn clean_script(ours: &OurRules) -> Option<String> {
    let mut script = String::new();
    table_section(
        &mut script,
        "nat",
        INBOUND_CHAIN,
        "PREROUTING",
        "-p tcp",
        None,
        &ours.nat,
    );
    table_section(&mut script, "filter", OUTBOUND_CHAIN, "OUTPUT", "", None, &ours.filter);
    table_section(&mut script, "filter", UDP_CHAIN, "INPUT", "-p udp", None, &ours.udp);
    (!script.is_empty()).then_some(script)
}

/// Appends one table's section: fill our chain with `rules` (or remove it when `None`), keeping exactly one jump.
fn table_section(
    script: &mut String,
    table: &str,
    chain: &str,
    hook: &str,
    jump_match: &str,
    rules: Option<Vec<String>>,
    found: &TableRules,
) {
    let mut lines = Vec::new();
    match rules {
        Some(rules) => {
            lines.push(format!(":{chain} - [0:0]"));
            lines.extend(rules);
            // Keep the first jump found (wherever it is), delete duplicates, insert one at the top if none.
            for dup in found.jumps.iter().skip(1) {
                lines.push(delete_rule(dup));
            }
            if found.jumps.is_empty() {
                let matcher = if jump_match.is_empty() {
                    String::new()
                } else {
                    format!("{jump_match} ")
                };
                lines.push(format!("-I {hook} 1 {matcher}-j {chain}"));
            }
        }
        None => {
            for jump in &found.jumps {
                lines.push(delete_rule(jump));
            }
            if found.chain_present {
                lines.push(format!("-F {chain}"));
                lines.push(format!("-X {chain}"));
            }
        }
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(script, "*{table}");
    for line in lines {
        let _ = writeln!(script, "{line}");
    }
    let _ = writeln!(script, "COMMIT");
}

/// Turns a saved `-A CHAIN spec` rule into the `-D CHAIN spec` that deletes it.
fn delete_rule(saved: &str) -> String {
    match saved.strip_prefix("-A ") {
        Some(rest) => format!("-D {rest}"),
        None => saved.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::parse_save;

    fn seed_plan() -> RulePlan {
        RulePlan {
            inbound: Some(InboundRedirect {
                proxy_port: 15006,
                exclude_ports: vec![15021],
            }),
            outbound: None,
        }
    }

    #[test]
    fn fresh_apply_script_redirects_all_tcp_except_excluded_ports() {
        let script = seed_plan().apply_script(Family::Ipv4, &OurRules::default());
        assert_eq!(
            script,
            "*nat\n\
             :CINFER_INBOUND - [0:0]\n\
             -A CINFER_INBOUND -i lo -j RETURN\n\
             -A CINFER_INBOUND -p tcp -m tcp --dport 15021 -j RETURN\n\
             -A CINFER_INBOUND -p tcp -j REDIRECT --to-ports 15006\n\
             -I PREROUTING 1 -p tcp -j CINFER_INBOUND\n\
             COMMIT\n\
             *filter\n\
             :CINFER_INBOUND_UDP - [0:0]\n\
             -A CINFER_INBOUND_UDP -i lo -j RETURN\n\
             -A CINFER_INBOUND_UDP -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n\
             -A CINFER_INBOUND_UDP -j DROP\n\
             -I INPUT 1 -p udp -j CINFER_INBOUND_UDP\n\
             COMMIT\n"
        );
    }

    #[test]
    fn apply_script_does_not_add_a_second_jump() {
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:CINFER_INBOUND - [0:0]\n\
                     -A PREROUTING -p tcp -j CINFER_INBOUND\n-A CINFER_INBOUND -p tcp -j REDIRECT --to-ports 1\nCOMMIT\n";
        let script = seed_plan().apply_script(Family::Ipv4, &parse_save(saved));
        assert!(!script.contains("PREROUTING"), "{script}");
        assert!(
            script.contains(":CINFER_INBOUND - [0:0]\n"),
            "the chain must be refilled: {script}"
        );
    }

    #[test]
    fn apply_script_deletes_duplicate_jumps() {
        let saved = "*nat\n:CINFER_INBOUND - [0:0]\n-A PREROUTING -p tcp -j CINFER_INBOUND\n\
                     -A PREROUTING -i eth0 -j CINFER_INBOUND\nCOMMIT\n";
        let script = seed_plan().apply_script(Family::Ipv4, &parse_save(saved));
        assert!(script.contains("-D PREROUTING -i eth0 -j CINFER_INBOUND\n"), "{script}");
        assert!(!script.contains("-D PREROUTING -p tcp -j CINFER_INBOUND"), "{script}");
    }

    #[test]
    fn apply_script_removes_outbound_rules_the_plan_no_longer_wants() {
        let saved = "*filter\n:OUTPUT ACCEPT [0:0]\n:CINFER_OUTBOUND - [0:0]\n-A OUTPUT -j CINFER_OUTBOUND\n\
                     -A CINFER_OUTBOUND -j REJECT\nCOMMIT\n";
        let script = seed_plan().apply_script(Family::Ipv4, &parse_save(saved));
        assert!(
            script.contains("*filter\n-D OUTPUT -j CINFER_OUTBOUND\n-F CINFER_OUTBOUND\n-X CINFER_OUTBOUND\nCOMMIT\n"),
            "{script}"
        );
    }

    #[test]
    fn outbound_rules_allow_listed_uids_then_reject_per_family() {
        let plan = RulePlan {
            inbound: None,
            outbound: Some(OutboundRestriction {
                allow_uids: vec![65532, 1337],
            }),
        };
        let v6 = plan.apply_script(Family::Ipv6, &OurRules::default());
        assert_eq!(
            v6,
            "*filter\n\
             :CINFER_OUTBOUND - [0:0]\n\
             -A CINFER_OUTBOUND -o lo -j RETURN\n\
             -A CINFER_OUTBOUND -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n\
             -A CINFER_OUTBOUND -m owner --uid-owner 1337 -j RETURN\n\
             -A CINFER_OUTBOUND -m owner --uid-owner 65532 -j RETURN\n\
             -A CINFER_OUTBOUND -p tcp -j REJECT --reject-with tcp-reset\n\
             -A CINFER_OUTBOUND -j REJECT --reject-with icmp6-port-unreachable\n\
             -I OUTPUT 1 -j CINFER_OUTBOUND\n\
             COMMIT\n"
        );
        let v4 = plan.apply_script(Family::Ipv4, &OurRules::default());
        assert!(v4.contains("--reject-with icmp-port-unreachable\n"), "{v4}");
    }

    #[test]
    fn udp_chain_is_found_and_cleaned() {
        let saved = "*filter\n:INPUT ACCEPT [0:0]\n:CINFER_INBOUND_UDP - [0:0]\n\
                     -A INPUT -p udp -j CINFER_INBOUND_UDP\n-A CINFER_INBOUND_UDP -j DROP\nCOMMIT\n";
        let ours = parse_save(saved);
        assert!(ours.udp.chain_present && ours.filter == TableRules::default());
        assert_eq!(
            clean_script(&ours).as_deref(),
            Some(
                "*filter\n-D INPUT -p udp -j CINFER_INBOUND_UDP\n-F CINFER_INBOUND_UDP\n-X CINFER_INBOUND_UDP\nCOMMIT\n"
            )
        );
        // Re-applying keeps the one jump and refills the chain.
        let again = seed_plan().apply_script(Family::Ipv4, &ours);
        assert!(
            again.contains(":CINFER_INBOUND_UDP - [0:0]\n") && !again.contains("-I INPUT"),
            "{again}"
        );
    }

    #[test]
    fn clean_script_is_none_without_our_rules_and_touches_only_ours() {
        assert_eq!(clean_script(&OurRules::default()), None);
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n:CINFER_INBOUND - [0:0]\n\
                     -A PREROUTING -j DOCKER\n-A PREROUTING -p tcp -j CINFER_INBOUND\nCOMMIT\n";
        let script = clean_script(&parse_save(saved));
        assert_eq!(
            script.as_deref(),
            Some("*nat\n-D PREROUTING -p tcp -j CINFER_INBOUND\n-F CINFER_INBOUND\n-X CINFER_INBOUND\nCOMMIT\n")
        );
    }

    #[test]
    fn validate_rejects_contradictions() {
        let mut plan = seed_plan();
        assert_eq!(plan.validate(), Ok(()));
        plan.inbound = Some(InboundRedirect {
            proxy_port: 15006,
            exclude_ports: vec![15006],
        });
        assert_eq!(plan.validate(), Err(PlanError::ProxyPortExcluded { port: 15006 }));
        plan.inbound = Some(InboundRedirect {
            proxy_port: 0,
            exclude_ports: vec![],
        });
        assert_eq!(plan.validate(), Err(PlanError::ZeroProxyPort));
        let plan = RulePlan {
            inbound: None,
            outbound: Some(OutboundRestriction { allow_uids: vec![] }),
        };
        assert_eq!(plan.validate(), Err(PlanError::NoAllowedUid));
    }
}
