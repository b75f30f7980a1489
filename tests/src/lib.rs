//! End-to-end harness for cinfer: starts the real binaries (`cinfer-attest`, `cinfer-mkimage`, `cinfer-encfs`,
//! `cinfer-proxy`), a real Triton server (the `tritonserver` bundled in PyPI's `nvidia-pytriton`) reading its
//! model repository from the FUSE mount, and drives it with the real Triton client (`tritonclient`) through
//! `http_proxy`. The acceptance test (`tests/e2e.rs`) and the README's main command (`cinfer-demo`) both run
//! [`pipeline::Pipeline`].
//!
//! Processes are owned by [`proc::Proc`] guards that stop them when dropped, so a failed test leaves nothing
//! running and nothing mounted.

pub mod env;
pub mod pipeline;
pub mod proc;
pub mod triton;
