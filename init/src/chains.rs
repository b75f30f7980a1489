//! The names every other module agrees on: our chains, and the address families whose rule sets hold them.
//!
//! The bottom layer of the crate: it imports nothing from it. [`state`](crate::state) finds these chains in
//! saved rules, [`plan`](crate::plan) fills them, [`backend`](crate::backend) reads and writes the rule set of a
//! [`Family`].

use std::fmt;

/// Our chain in the `nat` table; `PREROUTING` jumps to it.
pub const INBOUND_CHAIN: &str = "CINFER_INBOUND";
/// Our chain in the `filter` table; `OUTPUT` jumps to it.
pub const OUTBOUND_CHAIN: &str = "CINFER_OUTBOUND";
/// Our chain in the `filter` table for inbound UDP; `INPUT` jumps to it for UDP.
pub const UDP_CHAIN: &str = "CINFER_INBOUND_UDP";

/// An IP address family; each has its own rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 (`iptables`).
    Ipv4,
    /// IPv6 (`ip6tables`).
    Ipv6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        })
    }
}
