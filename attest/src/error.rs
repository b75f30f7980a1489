//! Error types, one per boundary. Every message names the check that failed.

/// A report could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReportError {
    /// Wrong length.
    #[error("report parse: expected {expected} bytes, got {actual}")]
    Length {
        /// Expected length.
        expected: usize,
        /// Actual length.
        actual: usize,
    },
    /// Version outside 2..=5.
    #[error("report parse: unsupported report version {version}")]
    UnsupportedVersion {
        /// The version field.
        version: u32,
    },
    /// Not ECDSA P-384/SHA-384.
    #[error("report parse: unsupported signature algorithm {algo}")]
    UnsupportedSignatureAlgorithm {
        /// The signature_algo field.
        algo: u32,
    },
    /// The signature's zero padding is not zero.
    #[error("report signature: r/s padding bytes are not zero")]
    SignaturePadding,
}

/// Verification of SNP evidence failed. The `Display` text starts with the name of the failed check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The report does not parse.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// A certificate does not parse.
    #[error("certificate chain: cannot parse {which}: {detail}")]
    CertParse {
        /// Which certificate.
        which: &'static str,
        /// Parser detail.
        detail: String,
    },
    /// The chain does not have VCEK, ASK and ARK.
    #[error("certificate chain: expected VCEK, ASK and ARK, got {count} certificate(s)")]
    ChainLength {
        /// Number of certificates found.
        count: usize,
    },
    /// The ARK is neither a pinned AMD root nor a configured mock root.
    #[error("root: ARK {subject:?} (sha256 {fingerprint}) is not a trusted AMD root or configured mock root")]
    UnknownRoot {
        /// ARK subject.
        subject: String,
        /// SHA-256 of the ARK's SubjectPublicKeyInfo, hex.
        fingerprint: String,
    },
    /// A certificate signature in the chain is invalid.
    #[error("chain: {link} signature is invalid")]
    ChainSignature {
        /// Which link (`ARK self-signature`, `ARK→ASK`, `ASK→VCEK`).
        link: &'static str,
    },
    /// A certificate is outside its validity period.
    #[error("certificate validity: {which} is not valid at {at} (valid {not_before} .. {not_after})")]
    CertValidity {
        /// Which certificate.
        which: &'static str,
        /// The time checked.
        at: String,
        /// notBefore.
        not_before: String,
        /// notAfter.
        not_after: String,
    },
    /// The VCEK's signature over the report is invalid.
    #[error("report signature: {detail}")]
    ReportSignature {
        /// Detail.
        detail: String,
    },
    /// The reported TCB disagrees with the TCB the VCEK was issued for.
    #[error("tcb: reported {component} SPL {reported} does not match the VCEK's {certified}")]
    Tcb {
        /// Component name.
        component: &'static str,
        /// Value in the report.
        reported: u8,
        /// Value in the VCEK extension.
        certified: u8,
    },
    /// A component of the reported TCB is below the configured minimum for its product.
    #[error("tcb minimum: {product} {component} SVN {reported} is below the minimum {minimum}")]
    TcbMinimum {
        /// Processor product (`Milan`, `Genoa`, `Turin`).
        product: &'static str,
        /// Component name (`bootloader`, `tee`, `snp`, `microcode`, `fmc`).
        component: &'static str,
        /// Value in the report's REPORTED_TCB.
        reported: u8,
        /// Configured minimum.
        minimum: u8,
    },
    /// The report format version is below the configured floor.
    #[error("report version: {version} is below the minimum {minimum}")]
    ReportVersion {
        /// The report's version field.
        version: u32,
        /// Configured minimum.
        minimum: u32,
    },
    /// The guest policy allows a migration agent, or the report names one, and that is not allowed.
    #[error(
        "migration agent: the guest allows or is bound to a migration agent (policy {policy:#x}, MIGRATE_MA is bit \
         18; REPORT_ID_MA {report_id_ma}); refused unless migration agents are allowed"
    )]
    MigrationAgent {
        /// Guest policy.
        policy: u64,
        /// REPORT_ID_MA, hex (all `ff` when no agent is bound).
        report_id_ma: String,
    },
    /// A VCEK extension is missing or malformed.
    #[error("tcb: VCEK extension {oid} {detail}")]
    VcekExtension {
        /// OID.
        oid: String,
        /// Problem.
        detail: String,
    },
    /// chip_id disagrees with the VCEK's hwID.
    #[error("chip id: report chip_id does not match the VCEK hwID")]
    ChipId,
    /// Report requested from a VMPL other than 0.
    #[error("vmpl: report comes from VMPL {vmpl}, only VMPL 0 is accepted")]
    Vmpl {
        /// The VMPL in the report.
        vmpl: u32,
    },
    /// The guest policy allows debugging.
    #[error("debug: guest policy allows debugging (policy {policy:#x})")]
    Debuggable {
        /// Guest policy.
        policy: u64,
    },
    /// report_data does not equal the expected binding.
    #[error("report_data: does not match the expected binding (got {actual}, expected {expected})")]
    ReportData {
        /// report_data, hex.
        actual: String,
        /// Expected, hex.
        expected: String,
    },
    /// host_data does not equal the expected value.
    #[error("host_data: {actual} does not match expected {expected}")]
    HostData {
        /// host_data, hex.
        actual: String,
        /// Expected, hex.
        expected: String,
    },
    /// Launch measurement does not equal the expected value.
    #[error("measurement: {actual} does not match expected {expected}")]
    Measurement {
        /// Measurement, hex.
        actual: String,
        /// Expected, hex.
        expected: String,
    },
}

/// A UVM endorsement failed verification. The `Display` text starts with the name of the failed check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndorsementError {
    /// The COSE_Sign1, a header or the payload is malformed.
    #[error("endorsement parse: {detail}")]
    Parse {
        /// Detail.
        detail: String,
    },
    /// The protected signing time is after the verification time.
    #[error("endorsement time: signed at {signed}, after the verification time {at}")]
    Time {
        /// Signing time.
        signed: String,
        /// Verification time.
        at: String,
    },
    /// The x5chain is not a valid certificate path.
    #[error("endorsement chain: {detail}")]
    Chain {
        /// Detail.
        detail: String,
    },
    /// The `iss` did:x509 identifier is malformed or does not match the x5chain.
    #[error("endorsement issuer: {detail}")]
    Issuer {
        /// Detail.
        detail: String,
    },
    /// The signature is invalid.
    #[error("endorsement signature: {detail}")]
    Signature {
        /// Detail.
        detail: String,
    },
    /// The issuer and feed are not a configured trusted source (or the trust configuration is invalid).
    #[error("endorsement trust: {detail}")]
    Trust {
        /// Detail.
        detail: String,
    },
    /// The endorsed guest SVN is below the configured minimum for its feed.
    #[error("endorsement svn: guest SVN {svn} of feed {feed:?} is below the minimum {minimum}")]
    Svn {
        /// Endorsed SVN.
        svn: u64,
        /// Configured minimum.
        minimum: u64,
        /// Feed.
        feed: String,
    },
    /// The endorsed launch measurement is not the report's.
    #[error("endorsement measurement: endorsed {endorsed} differs from the report's {report}")]
    Measurement {
        /// Endorsed measurement, hex.
        endorsed: String,
        /// Report measurement, hex.
        report: String,
    },
}

/// An offline collateral bundle is malformed, expired, or refuses the evidence's chain. The `Display` text
/// starts with the name of the failed check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollateralError {
    /// The bundle (or a file given to build one) does not parse.
    #[error("collateral parse: {detail}")]
    Parse {
        /// Detail.
        detail: String,
    },
    /// The verification time is after the bundle's validity window.
    #[error("collateral expired: the bundle was valid until {not_after} ({limited_by}); verification time {at}")]
    Expired {
        /// End of the window.
        not_after: String,
        /// The item that ends it.
        limited_by: String,
        /// Verification time.
        at: String,
    },
    /// The verification time is before the bundle's validity window.
    #[error("collateral not yet valid: the bundle is valid from {not_before} ({starts_with}); verification time {at}")]
    NotYetValid {
        /// Start of the window.
        not_before: String,
        /// The item that starts it.
        starts_with: String,
        /// Verification time.
        at: String,
    },
    /// A CRL is not signed by its ARK.
    #[error("collateral crl: {detail}")]
    Crl {
        /// Detail.
        detail: String,
    },
    /// A certificate does not chain inside the bundle, or the evidence's chain is not the bundle's.
    #[error("collateral chain: {detail}")]
    Chain {
        /// Detail.
        detail: String,
    },
    /// The ASK or VCEK is on the generation's CRL.
    #[error("collateral revoked: the {which} (serial {serial}) was revoked on {date}")]
    Revoked {
        /// `ASK` or `VCEK`.
        which: &'static str,
        /// Serial number, hex.
        serial: String,
        /// Revocation date.
        date: String,
    },
    /// No VCEK in the bundle fits the report.
    #[error("collateral vcek: {detail}")]
    Vcek {
        /// Detail.
        detail: String,
    },
}

/// Verification of a JWT failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a compact JWS / bad JSON.
    #[error("token format: {detail}")]
    Malformed {
        /// Detail.
        detail: String,
    },
    /// Algorithm other than RS256.
    #[error("token algorithm: {alg} is not accepted (RS256 only)")]
    Algorithm {
        /// The header's alg.
        alg: String,
    },
    /// No pinned key matches the header's kid.
    #[error("token signing key: no trusted key for kid {kid:?}")]
    UnknownKey {
        /// The header's kid.
        kid: Option<String>,
    },
    /// Signature invalid.
    #[error("token signature: invalid")]
    Signature,
    /// Issuer not the expected one.
    #[error("token issuer: {actual:?} is not the trusted issuer {expected:?}")]
    Issuer {
        /// Expected issuer(s).
        expected: String,
        /// The token's iss.
        actual: String,
    },
    /// exp in the past.
    #[error("token expiry: expired at {exp} (now {now})")]
    Expired {
        /// exp.
        exp: i64,
        /// now.
        now: i64,
    },
    /// nbf in the future.
    #[error("token not-before: not valid before {nbf} (now {now})")]
    NotYetValid {
        /// nbf.
        nbf: i64,
        /// now.
        now: i64,
    },
    /// A required claim is missing or has the wrong type.
    #[error("token claims: {claim} missing or not {expected}")]
    Claim {
        /// Claim name.
        claim: String,
        /// Expected type.
        expected: &'static str,
    },
}

/// An attestation or release policy is invalid, or denies.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy text does not parse.
    #[error("policy parse: {detail} at byte {offset}")]
    Parse {
        /// Detail.
        detail: String,
        /// Byte offset.
        offset: usize,
    },
    /// The signed policy (JWS) is malformed.
    #[error("policy signature: {detail}")]
    Signature {
        /// Detail.
        detail: String,
    },
    /// The policy is signed by a certificate that is not a trusted policy signer.
    #[error("policy signer: signed by an untrusted key (cert sha256 {fingerprint})")]
    UntrustedSigner {
        /// SHA-256 of the signer certificate DER, hex.
        fingerprint: String,
    },
    /// Policy signers are configured but the policy is not signed.
    #[error("policy signer: policy must be signed by a trusted policy signer")]
    Unsigned,
    /// The attestation policy denies these claims.
    #[error("attestation policy: denied: {reason}")]
    Denied {
        /// Why no rule permitted.
        reason: String,
    },
}

/// Key release failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The token failed verification.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token's issuer is not trusted by the broker at all.
    #[error("untrusted issuer: {issuer:?} is not a trusted attestation authority")]
    UntrustedIssuer {
        /// The token's iss.
        issuer: String,
    },
    /// The token's issuer is trusted but is not the authority of any release-policy clause.
    #[error("release policy authority: token issuer {issuer:?} is not an authority of the key's release policy")]
    WrongAuthority {
        /// The token's iss.
        issuer: String,
    },
    /// No clause of the release policy is satisfied.
    #[error("release policy: not satisfied: {reason}")]
    PolicyNotSatisfied {
        /// First failing condition of each clause.
        reason: String,
    },
    /// The release policy is invalid.
    #[error("release policy: invalid: {detail}")]
    InvalidPolicy {
        /// Detail.
        detail: String,
    },
    /// The token carries no usable runtime RSA key.
    #[error("runtime key: {detail}")]
    RuntimeKey {
        /// Detail.
        detail: String,
    },
    /// The key does not exist.
    #[error("key not found: {name}")]
    NotFound {
        /// Key name (and version).
        name: String,
    },
    /// Wrapping failed.
    #[error(transparent)]
    Wrap(#[from] KeyWrapError),
}

/// CKM_RSA_AES_KEY_WRAP, key encoding or derivation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyWrapError {
    /// RSA-OAEP failed.
    #[error("key wrap: RSA-OAEP {0}")]
    Rsa(String),
    /// AES key wrap with padding failed (integrity check).
    #[error("key wrap: AES-KWP unwrap failed (integrity check)")]
    Kwp,
    /// Ciphertext too short.
    #[error("key wrap: ciphertext of {len} bytes is too short for a {modulus}-byte RSA block")]
    Short {
        /// Ciphertext length.
        len: usize,
        /// RSA modulus length.
        modulus: usize,
    },
    /// Unsupported `enc`.
    #[error("key wrap: unsupported algorithm {0:?}")]
    Algorithm(String),
    /// Bad key material.
    #[error("key material: {0}")]
    Key(String),
}

/// Evidence could not be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// No SEV-SNP guest device exists.
    #[error(
        "evidence: no SEV-SNP guest device (/dev/sev-guest or /dev/sev); use --attester mock only for local testing"
    )]
    NoDevice,
    /// The device failed.
    #[error("evidence: {device}: {detail}")]
    Device {
        /// Device path.
        device: String,
        /// Detail.
        detail: String,
    },
    /// The platform certificates (THIM JSON) or UVM information are missing or invalid.
    #[error("evidence: platform certificates: {0}")]
    Certificates(String),
    /// I/O.
    #[error("evidence: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Mock attester failure.
    #[error("evidence: mock attester: {0}")]
    Mock(String),
}

/// An error and its causes, `: `-separated (reqwest's own text is only "error sending request").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cur = c.source();
    }
    text
}

/// A client call to an attestation service or key vault failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Transport.
    #[error("http: {context}: {source}")]
    Http {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// Non-success status.
    #[error("{context}: HTTP {status}: {body}")]
    Status {
        /// What was being done.
        context: String,
        /// Status code.
        status: u16,
        /// Body (truncated).
        body: String,
    },
    /// The response is malformed.
    #[error("{context}: malformed response: {detail}")]
    Response {
        /// What was being done.
        context: String,
        /// Detail.
        detail: String,
    },
    /// Evidence.
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    /// Token verification of the release response.
    #[error("release response signature: {0}")]
    ResponseSignature(String),
    /// Unwrap or key conversion.
    #[error(transparent)]
    KeyWrap(#[from] KeyWrapError),
    /// The TLS trust configuration could not be built.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// No Entra ID token for the vault.
    #[error(transparent)]
    Credential(#[from] CredentialError),
}

/// The service could not start or persist state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// I/O.
    #[error("service: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Configuration.
    #[error("service config: {0}")]
    Config(String),
    /// Policy.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Key material.
    #[error(transparent)]
    Key(#[from] KeyWrapError),
}

/// A token could not be had; the text names the credential, the endpoint and what failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// A Workload Identity variable is missing or empty.
    #[error(
        "workload identity: {var} is not set (the AKS workload-identity webhook injects it into pods labelled \
         azure.workload.identity/use: \"true\" whose service account names a federated client id)"
    )]
    MissingEnv {
        /// The variable.
        var: &'static str,
    },
    /// A setting is unusable.
    #[error("workload identity: {0}")]
    Invalid(String),
    /// The authority is not https (or loopback).
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// The federated token file could not be read, or is empty.
    #[error("workload identity: the federated token file {path}: {detail}")]
    TokenFile {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// No answer.
    #[error("{credential}: token request to {endpoint}: {detail}")]
    Unreachable {
        /// `managed identity (IMDS)` or `workload identity`.
        credential: &'static str,
        /// Where.
        endpoint: String,
        /// The transport error.
        detail: String,
    },
    /// A non-success answer.
    #[error("{credential}: token request to {endpoint}: HTTP {status}{detail}")]
    Status {
        /// `managed identity (IMDS)` or `workload identity`.
        credential: &'static str,
        /// Where.
        endpoint: String,
        /// The status.
        status: u16,
        /// `: error: description` from the body when it has them.
        detail: String,
    },
    /// A success without a usable token.
    #[error("{credential}: token response from {endpoint}: {detail}")]
    Response {
        /// `managed identity (IMDS)` or `workload identity`.
        credential: &'static str,
        /// Where.
        endpoint: String,
        /// What is wrong.
        detail: String,
    },
}
