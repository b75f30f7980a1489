//! Errors of GPU evidence verification. Each message starts with the name of the failed check, which
//! [`GpuError::check`] also returns (the CLI prints it; tests match on it).

/// Which RIM a RIM error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RimKind {
    /// The driver RIM.
    Driver,
    /// The VBIOS RIM.
    Vbios,
}

impl std::fmt::Display for RimKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Driver => "driver",
            Self::Vbios => "vbios",
        })
    }
}

/// GPU evidence verification failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum GpuError {
    /// The report does not parse (missing, trailing or inconsistent bytes).
    #[error("gpu report parse: {detail}")]
    Parse {
        /// What is wrong, with the offset.
        detail: String,
    },
    /// The request nonce is not the expected one.
    #[error("gpu nonce: the report's request nonce {actual} is not the expected {expected}")]
    Nonce {
        /// Expected nonce, hex.
        expected: String,
        /// Nonce in the report, hex.
        actual: String,
    },
    /// The certificate chain does not parse or does not validate (signatures, names, CA constraints).
    #[error("gpu chain: {detail}")]
    Chain {
        /// Detail.
        detail: String,
    },
    /// A certificate of the chain is not valid at the verification time.
    #[error("gpu chain expiry: {detail}")]
    ChainExpiry {
        /// Detail.
        detail: String,
    },
    /// The chain does not end in the configured device root.
    #[error("gpu root: {detail}")]
    Root {
        /// Detail.
        detail: String,
    },
    /// A certificate of the chain is listed as revoked in the offline collateral.
    #[error("gpu revoked: certificate {subject:?} (serial {serial}) is revoked")]
    Revoked {
        /// Subject of the revoked certificate.
        subject: String,
        /// Its serial, hex.
        serial: String,
    },
    /// The report's FWID differs from the leaf certificate's TCG DICE FWID.
    #[error("gpu fwid: the report's FWID is not the leaf certificate's ({detail})")]
    Fwid {
        /// Detail.
        detail: String,
    },
    /// The report signature does not verify with the leaf certificate's key.
    #[error("gpu signature: {detail}")]
    Signature {
        /// Detail.
        detail: String,
    },
    /// A RIM does not parse or is not the XML-DSig profile NVIDIA signs.
    #[error("rim parse: {which} RIM: {detail}")]
    RimParse {
        /// Which RIM.
        which: RimKind,
        /// Detail.
        detail: String,
    },
    /// The RIM's signing chain does not validate to the RIM root.
    #[error("rim chain: {which} RIM: {detail}")]
    RimChain {
        /// Which RIM.
        which: RimKind,
        /// Detail.
        detail: String,
    },
    /// A certificate of the RIM's chain is not valid at the verification time.
    #[error("rim expiry: {which} RIM: {detail}")]
    RimExpiry {
        /// Which RIM.
        which: RimKind,
        /// Detail.
        detail: String,
    },
    /// The configured RIM root cannot be a root (not a self-signed CA certificate).
    #[error("rim root: {detail}")]
    RimRoot {
        /// Detail.
        detail: String,
    },
    /// The RIM's XML-DSig digest or signature does not verify.
    #[error("rim signature: {which} RIM: {detail}")]
    RimSignature {
        /// Which RIM.
        which: RimKind,
        /// Detail.
        detail: String,
    },
    /// The RIM names another version than the report.
    #[error("rim version: {which} RIM is for {rim}, the report's {which} is {report}")]
    RimVersion {
        /// Which RIM.
        which: RimKind,
        /// The RIM's colloquialVersion.
        rim: String,
        /// The report's version.
        report: String,
    },
    /// Driver and VBIOS RIMs both have an active measurement at an index.
    #[error("measurements: driver and vbios RIMs both define index {index}")]
    IndexConflict {
        /// The RIM index.
        index: u32,
    },
    /// Active golden measurements differ from the report's.
    #[error("measurements: {detail}")]
    Mismatch {
        /// Which indices differ.
        detail: String,
    },
    /// The offline collateral bundle is malformed or not valid at the verification time.
    #[error("gpu collateral: {detail}")]
    Collateral {
        /// Detail.
        detail: String,
    },
}

impl GpuError {
    /// The name of the failed check (the message's prefix), e.g. `gpu signature`, `rim expiry`.
    pub fn check(&self) -> &'static str {
        match self {
            Self::Parse { .. } => "gpu report parse",
            Self::Nonce { .. } => "gpu nonce",
            Self::Chain { .. } => "gpu chain",
            Self::ChainExpiry { .. } => "gpu chain expiry",
            Self::Root { .. } => "gpu root",
            Self::Revoked { .. } => "gpu revoked",
            Self::Fwid { .. } => "gpu fwid",
            Self::Signature { .. } => "gpu signature",
            Self::RimParse { .. } => "rim parse",
            Self::RimChain { .. } => "rim chain",
            Self::RimExpiry { .. } => "rim expiry",
            Self::RimRoot { .. } => "rim root",
            Self::RimSignature { .. } => "rim signature",
            Self::RimVersion { .. } => "rim version",
            Self::IndexConflict { .. } | Self::Mismatch { .. } => "measurements",
            Self::Collateral { .. } => "gpu collateral",
        }
    }
}
