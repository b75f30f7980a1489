//! The stages of the local pipeline, one module each. Every stage takes what the previous ones produced and the
//! shared [`Ctx`]; none of them knows about timing or progress, which [`super::pipeline`] adds.

pub(crate) mod image;
pub(crate) mod keys;
pub(crate) mod proxies;
pub(crate) mod render;
pub(crate) mod sidecar;
pub(crate) mod store;

use std::path::PathBuf;

use super::shutdown::Cancel;

/// The launch measurement of the (mock) confidential container; the attestation service lists it as a
/// compliant UVM, as MAA does for Azure's endorsed utility VM.
pub(crate) const MEASUREMENT: &str =
    "c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0c1f0";

/// What every stage needs: where things go and which tools run.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) work: PathBuf,
    pub(crate) logs: PathBuf,
    pub(crate) python: PathBuf,
    pub(crate) mkimage: PathBuf,
    pub(crate) attest: PathBuf,
    pub(crate) encfs: PathBuf,
    pub(crate) proxy: PathBuf,
    pub(crate) cancel: Cancel,
}

/// `s` if it is 64 hex digits.
pub(crate) fn hex64(what: &str, s: &str) -> super::error::Result<String> {
    let t = s.trim();
    if t.len() == 64 && hex::decode(t).is_ok() {
        Ok(t.to_owned())
    } else {
        Err(super::error::LocalError::Unexpected {
            what: what.into(),
            got: s.into(),
        })
    }
}
