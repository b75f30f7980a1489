//! Deployments of cinfer, computed from one config file.
//!
//! The seed deployed with bash, jq and envsubst, copying the security policy's hash by hand into the key
//! release policy and the client policy: the place where a mistake becomes a security hole. Here one
//! [`DeployConfig`] feeds every output:
//!
//! - [`aci`]: the confidential container group (ARM template + parameters) for Azure Container Instances;
//! - [`k8s`]: a Deployment and a Service for confidential pods (AKS confidential containers, `kata-cc-isolation`),
//!   checked against that platform's rules by [`platform`];
//! - [`sidecar`]: the encfs sidecar's `EncfsSideCarArgs` in the seed's schema;
//! - [`policy`]: hostdata = SHA-256 of the decoded security policy (as the platform measures it), and from it
//!   the AKV release policy, the attestation policy an auditor signs, and the client attestation policies
//!   (hostdata form and policy-signer form).
//!
//! The security policy itself comes from Microsoft's `az confcom acipolicygen`/`katapolicygen`, run on the
//! rendered template: rendering never depends on the policy, so the policy measures exactly what is deployed.
//! Every output is checked by [`validate`] before it is written; golden files pin the exact bytes.
//!
//! [`local`] runs the whole pipeline on one machine as processes (`cinfer-deploy local`).

pub mod aci;
pub mod canonical;
pub mod config;
pub mod k8s;
pub mod local;
pub mod platform;
pub mod policy;
pub mod render;
pub mod sidecar;
pub mod validate;

pub use config::{ConfigError, DeployConfig};
pub use policy::{HostData, PolicyError, SecurityPolicy, SignerJwk};
pub use render::{Bundle, OutputFile, render_aci, render_k8s};
