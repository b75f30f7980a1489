//! The init step of a cinfer deployment.
//!
//! Will hold: the rule plan that redirects all inbound TCP (except the proxy's health port) to the server proxy,
//! applied atomically with iptables-restore or nftables, and removed exactly by `clean`.
