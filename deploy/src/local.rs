//! `cinfer-deploy local`: the whole cinfer pipeline on this machine, as processes.
//!
//! What runs is what a confidential deployment runs, with the parts that need Azure replaced by local
//! equivalents that speak the same protocols: the attestation service and key broker are `cinfer-attest serve`
//! (MAA- and AKV-compatible) with the mock SEV-SNP attester, the blob store is Azurite (or a local HTTP range
//! server), and the model server is a real Triton. Everything else is the production code path: the model
//! image is signed and encrypted by `cinfer-mkimage`, uploaded, released only through attestation to the
//! `cinfer-encfs sidecar`, read by Triton from the FUSE mount, and reached by clients through the attested TLS
//! proxies.
//!
//! The module is a library so that the end-to-end tests (`cinfer-tests`) drive the very code the command runs,
//! and so that other crates' tests can start Azurite ([`azurite::Azurite`]) as a dev-dependency. It depends on
//! no other cinfer library: it runs the workspace's binaries ([`env::bin`]).
//!
//! Layout: [`proc`] supervises child processes (own process group, log file, SIGTERM then SIGKILL on drop);
//! [`shutdown`] turns SIGINT/SIGTERM into a [`Cancel`] flag; [`azurite`] and [`range_server`] are the image
//! stores; [`triton`] is the model server; `stages` holds one module per pipeline stage; [`pipeline`] runs them
//! in order, timed, and stops them in reverse order.

pub mod azurite;
pub mod env;
pub mod error;
pub mod http;
pub mod pipeline;
pub mod proc;
pub mod range_server;
pub mod rendered;
pub mod scripts;
pub mod shutdown;
mod stages;
pub mod triton;

pub use error::LocalError;
pub use pipeline::{ImageStore, Layout, Options, Pipeline, Ports, StageEvent};
pub use shutdown::Cancel;
pub use stages::image::{ExampleInput, make_signer};
pub use stages::keys::GpuCheck;
