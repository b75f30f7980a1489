//! The init step of a cinfer deployment: force inbound traffic through the attested server proxy.
//!
//! A confidential container group shares one network namespace. Whatever listens in it (Triton on 8000/8001/8002,
//! the encfs sidecar, a debug port someone forgot) is reachable from outside unless the packet filter says
//! otherwise. `cinfer-init` runs once, privileged, before the other containers, and installs:
//!
//! - **inbound**: in the `nat` table, every inbound TCP connection is `REDIRECT`ed to the server proxy's port,
//!   except the ports listed as excluded (the proxy's health port, so the platform's probes do not need aTLS).
//!   Loopback traffic is left alone: the proxy reaches Triton on `127.0.0.1`.
//! - **outbound** (optional): in the `filter` table, new outbound connections are rejected unless they come from
//!   one of the allowed UIDs (the proxy, the encfs sidecar), so a compromised model server cannot phone home.
//!
//! The rules are data first ([`RulePlan`]), rendered to an `iptables-restore` script and applied in one atomic
//! transaction with `--noflush`, for IPv4 and IPv6 alike (an IPv6 path around the proxy would defeat the point).
//! Everything lives in our own chains ([`INBOUND_CHAIN`], [`OUTBOUND_CHAIN`]) plus one jump rule from the
//! built-in chain, so `clean` removes exactly what `apply` added, and `apply` converges: applying twice leaves
//! the same rules as applying once.

pub mod backend;
pub mod chains;
pub mod nft;
pub mod plan;
pub mod state;

pub use backend::{Backend, BackendError, Flavor, IptablesRestore, Recording};
pub use chains::{Family, INBOUND_CHAIN, OUTBOUND_CHAIN};
pub use nft::{Nft, NftFamily, NftRunner};
pub use plan::{InboundRedirect, OutboundRestriction, PlanError, RulePlan};
pub use state::{OurRules, parse_save};

use thiserror::Error;
use tracing::info;

/// Errors of [`apply`] and [`clean`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum InitError {
    /// The plan is not valid (e.g. the proxy port is excluded).
    #[error("invalid rule plan")]
    Plan(#[from] PlanError),
    /// Reading or writing the packet filter failed.
    #[error("packet filter backend ({target})")]
    Backend {
        /// What was being changed (`ipv4`, `ipv6`, `nftables inet`).
        target: String,
        /// What went wrong.
        #[source]
        source: BackendError,
    },
}

/// What [`apply`] or [`clean`] did (or, with `dry_run`, would do) for one rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The rule set: `ipv4`, `ipv6` (iptables) or `nftables inet`/`nftables ip`.
    pub target: String,
    /// The script (`iptables-restore --noflush` or `nft -f` format); `None` when nothing had to change (only
    /// when cleaning).
    pub script: Option<String>,
}

/// Makes the packet filter of every family in `families` match `plan`, atomically per family.
///
/// Reads the current rules first so that an existing jump rule is not added twice, and so that our chains that
/// the plan no longer wants (e.g. outbound rules from an earlier apply) are removed. With `dry_run`, nothing is
/// written; the scripts are returned.
pub fn apply(
    backend: &dyn Backend,
    plan: &RulePlan,
    families: &[Family],
    dry_run: bool,
) -> Result<Vec<Change>, InitError> {
    plan.validate()?;
    let mut changes = Vec::new();
    for &family in families {
        let saved = backend.save(family).map_err(|source| InitError::Backend {
            target: family.to_string(),
            source,
        })?;
        let ours = parse_save(&saved);
        let script = plan.apply_script(family, &ours);
        if !dry_run {
            backend.restore(family, &script).map_err(|source| InitError::Backend {
                target: family.to_string(),
                source,
            })?;
            info!(%family, proxy_port = plan.inbound.as_ref().map(|i| i.proxy_port), "rules applied");
        }
        changes.push(Change {
            target: family.to_string(),
            script: Some(script),
        });
    }
    Ok(changes)
}

/// Removes our chains and the jump rules into them, and nothing else; does nothing where there are none.
pub fn clean(backend: &dyn Backend, families: &[Family], dry_run: bool) -> Result<Vec<Change>, InitError> {
    let mut changes = Vec::new();
    for &family in families {
        let saved = backend.save(family).map_err(|source| InitError::Backend {
            target: family.to_string(),
            source,
        })?;
        let script = plan::clean_script(&parse_save(&saved));
        if let Some(script) = &script
            && !dry_run
        {
            backend.restore(family, script).map_err(|source| InitError::Backend {
                target: family.to_string(),
                source,
            })?;
            info!(%family, "rules removed");
        }
        changes.push(Change {
            target: family.to_string(),
            script,
        });
    }
    Ok(changes)
}

/// Like [`apply`], with nftables: replaces our own table (see [`nft`]) in one transaction.
pub fn apply_nft(
    runner: &dyn NftRunner,
    plan: &RulePlan,
    family: NftFamily,
    dry_run: bool,
) -> Result<Change, InitError> {
    plan.validate()?;
    let target = format!("nftables {}", family.keyword());
    let script = nft::apply_script(plan, family);
    if !dry_run {
        runner.run_script(&script).map_err(|source| InitError::Backend {
            target: target.clone(),
            source,
        })?;
        info!(%target, proxy_port = plan.inbound.as_ref().map(|i| i.proxy_port), "rules applied");
    }
    Ok(Change {
        target,
        script: Some(script),
    })
}

/// Like [`clean`], with nftables: deletes our table if it exists.
pub fn clean_nft(runner: &dyn NftRunner, family: NftFamily, dry_run: bool) -> Result<Change, InitError> {
    let target = format!("nftables {}", family.keyword());
    let tables = runner.list_tables().map_err(|source| InitError::Backend {
        target: target.clone(),
        source,
    })?;
    if !nft::has_table(&tables, family) {
        return Ok(Change { target, script: None });
    }
    let script = nft::clean_script(family);
    if !dry_run {
        runner.run_script(&script).map_err(|source| InitError::Backend {
            target: target.clone(),
            source,
        })?;
        info!(%target, "rules removed");
    }
    Ok(Change {
        target,
        script: Some(script),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed_plan() -> RulePlan {
        RulePlan {
            inbound: Some(InboundRedirect {
                proxy_port: 15006,
                exclude_ports: vec![15021],
            }),
            outbound: None,
        }
    }

    fn restored(backend: &Recording) -> Vec<(Family, String)> {
        backend.restored.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    #[test]
    fn apply_restores_one_script_per_family_and_dry_run_restores_nothing() {
        let backend = Recording::default();
        let changes = apply(&backend, &seed_plan(), &[Family::Ipv4, Family::Ipv6], true).unwrap();
        assert_eq!(changes.len(), 2);
        assert!(restored(&backend).is_empty());
        apply(&backend, &seed_plan(), &[Family::Ipv4, Family::Ipv6], false).unwrap();
        let calls = restored(&backend);
        assert_eq!(
            calls.iter().map(|c| c.0).collect::<Vec<_>>(),
            [Family::Ipv4, Family::Ipv6]
        );
        assert_eq!(calls[0].1, changes[0].script.clone().unwrap_or_default());
    }

    #[test]
    fn apply_reads_the_current_rules_before_writing() {
        let backend = Recording {
            saved: "*nat\n:CINFER_INBOUND - [0:0]\n-A PREROUTING -p tcp -j CINFER_INBOUND\nCOMMIT\n".to_owned(),
            ..Recording::default()
        };
        apply(&backend, &seed_plan(), &[Family::Ipv4], false).unwrap();
        let script = &restored(&backend)[0].1;
        assert!(!script.contains("-I PREROUTING"), "the jump exists already: {script}");
    }

    #[test]
    fn clean_writes_nothing_when_nothing_is_ours_and_invalid_plans_write_nothing() {
        let backend = Recording {
            saved: "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n".to_owned(),
            ..Recording::default()
        };
        let changes = clean(&backend, &[Family::Ipv4], false).unwrap();
        assert_eq!(changes[0].script, None);
        let bad = RulePlan {
            inbound: Some(InboundRedirect {
                proxy_port: 0,
                exclude_ports: vec![],
            }),
            outbound: None,
        };
        assert!(matches!(
            apply(&backend, &bad, &[Family::Ipv4], false),
            Err(InitError::Plan(PlanError::ZeroProxyPort))
        ));
        assert!(matches!(
            apply_nft(&backend, &bad, NftFamily::Inet, false),
            Err(InitError::Plan(_))
        ));
        assert!(restored(&backend).is_empty());
    }
}

#[cfg(test)]
mod nft_tests {
    use super::*;

    #[test]
    fn clean_nft_deletes_only_an_existing_table() {
        let absent = Recording {
            saved: "table ip nat\n".to_owned(),
            ..Recording::default()
        };
        assert_eq!(clean_nft(&absent, NftFamily::Inet, false).unwrap().script, None);
        assert!(absent.restored.lock().unwrap_or_else(|e| e.into_inner()).is_empty());
        let present = Recording {
            saved: "table inet cinfer\n".to_owned(),
            ..Recording::default()
        };
        let change = clean_nft(&present, NftFamily::Inet, false).unwrap();
        assert_eq!(change.script.as_deref(), Some("delete table inet cinfer\n"));
        assert_eq!(present.restored.lock().unwrap_or_else(|e| e.into_inner()).len(), 1);
    }
}
