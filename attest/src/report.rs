//! The SEV-SNP attestation report: the 1184-byte little-endian structure of the SNP ABI.
//!
//! Parsing keeps the received bytes: the signature is checked over `raw[0..0x2a0]` exactly as received
//! (never over a re-encoding, which is how `sev` 8.0 became malleable). [`ReportBuilder`] writes the same
//! layout; the mock attester uses it, so mock reports go through the same parser and verifier as real ones.

use crate::error::ReportError;

/// Size of an attestation report in bytes.
pub const REPORT_LEN: usize = 1184;
/// Length of the signed part of the report (`[0, 0x2a0)`).
pub const SIGNED_LEN: usize = 0x2a0;
/// Offset of report_data.
pub const OFF_REPORT_DATA: usize = 0x50;
/// Offset of the launch measurement.
pub const OFF_MEASUREMENT: usize = 0x90;
/// Offset of host_data.
pub const OFF_HOST_DATA: usize = 0xc0;
/// Offset of the signature's `r` component (72 bytes, little-endian, zero-padded).
pub const OFF_SIG_R: usize = 0x2a0;
/// Offset of the signature's `s` component (72 bytes, little-endian, zero-padded).
pub const OFF_SIG_S: usize = 0x2e8;
/// Signature algorithm code for ECDSA P-384 with SHA-384.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;
/// Guest policy bit: debugging allowed.
pub const POLICY_DEBUG_BIT: u64 = 1 << 19;
/// Guest policy bit: migration agent allowed.
pub const POLICY_MIGRATE_MA_BIT: u64 = 1 << 18;
/// Guest policy bit: SMT allowed.
pub const POLICY_SMT_BIT: u64 = 1 << 16;

/// Processor generation, which fixes the TCB layout and the AMD root to check against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Generation {
    /// Zen 4 EPYC (9004).
    Genoa,
    /// Zen 3 EPYC (7003).
    Milan,
    /// Zen 5 EPYC (9005).
    Turin,
}

impl Generation {
    /// Name as used by AMD KDS and in VCEK product names ("Milan", "Genoa", "Turin").
    pub fn name(self) -> &'static str {
        match self {
            Self::Genoa => "Genoa",
            Self::Milan => "Milan",
            Self::Turin => "Turin",
        }
    }

    /// Generation from a VCEK product name such as `Milan-B0`.
    pub fn from_product_name(name: &str) -> Option<Self> {
        let family = name.split('-').next().unwrap_or(name);
        match family {
            "Milan" => Some(Self::Milan),
            "Genoa" => Some(Self::Genoa),
            "Turin" => Some(Self::Turin),
            _ => None,
        }
    }
}

/// A decoded TCB version (security patch levels of the firmware components).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TcbVersion {
    /// Boot loader SPL.
    pub bootloader: u8,
    /// TEE (PSP OS) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
    /// FMC SPL (Turin only; 0 elsewhere).
    pub fmc: u8,
}

impl TcbVersion {
    /// Decode the raw 64-bit TCB for a generation (Milan/Genoa: BL, TEE, 4 reserved, SNP, uCode;
    /// Turin: FMC, BL, TEE, SNP, 3 reserved, uCode).
    pub fn decode(raw: u64, generation: Generation) -> Self {
        let b = raw.to_le_bytes();
        match generation {
            Generation::Turin => Self {
                fmc: b[0],
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            },
            Generation::Milan | Generation::Genoa => Self {
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
                fmc: 0,
            },
        }
    }

    /// Encode as the raw 64-bit value for a generation (inverse of [`TcbVersion::decode`]).
    pub fn encode(&self, generation: Generation) -> u64 {
        let mut b = [0u8; 8];
        match generation {
            Generation::Turin => {
                b[0] = self.fmc;
                b[1] = self.bootloader;
                b[2] = self.tee;
                b[3] = self.snp;
                b[7] = self.microcode;
            }
            Generation::Milan | Generation::Genoa => {
                b[0] = self.bootloader;
                b[1] = self.tee;
                b[6] = self.snp;
                b[7] = self.microcode;
            }
        }
        u64::from_le_bytes(b)
    }
}

/// A parsed attestation report. Holds the exact received bytes; accessors read fields from them.
#[derive(Clone, PartialEq, Eq)]
pub struct AttestationReport {
    raw: Box<[u8; REPORT_LEN]>,
}

impl std::fmt::Debug for AttestationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestationReport")
            .field("version", &self.version())
            .field("vmpl", &self.vmpl())
            .field("policy", &format_args!("{:#x}", self.policy()))
            .field("measurement", &hex::encode(self.measurement()))
            .field("host_data", &hex::encode(self.host_data()))
            .field("reported_tcb", &format_args!("{:#018x}", self.reported_tcb_raw()))
            .finish_non_exhaustive()
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

impl AttestationReport {
    /// Parse a report. Requires exactly [`REPORT_LEN`] bytes, version ≥ 2 and the ECDSA P-384 signature
    /// algorithm; does not check the signature (see [`crate::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReportError> {
        let raw: [u8; REPORT_LEN] = bytes.try_into().map_err(|_| ReportError::Length {
            expected: REPORT_LEN,
            actual: bytes.len(),
        })?;
        let report = Self { raw: Box::new(raw) };
        let version = report.version();
        if !(2..=5).contains(&version) {
            return Err(ReportError::UnsupportedVersion { version });
        }
        let algo = report.signature_algo();
        if algo != SIG_ALGO_ECDSA_P384_SHA384 {
            return Err(ReportError::UnsupportedSignatureAlgorithm { algo });
        }
        Ok(report)
    }

    /// The exact bytes as received.
    pub fn as_bytes(&self) -> &[u8; REPORT_LEN] {
        &self.raw
    }

    /// The signed part, `[0, 0x2a0)`, exactly as received.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..SIGNED_LEN]
    }

    /// Report format version.
    pub fn version(&self) -> u32 {
        u32_at(&self.raw[..], 0)
    }
    /// Guest SVN.
    pub fn guest_svn(&self) -> u32 {
        u32_at(&self.raw[..], 4)
    }
    /// Guest policy bits.
    pub fn policy(&self) -> u64 {
        u64_at(&self.raw[..], 8)
    }
    /// Whether the guest policy allows debugging (a debuggable guest's memory is readable by the host).
    pub fn is_debuggable(&self) -> bool {
        self.policy() & POLICY_DEBUG_BIT != 0
    }
    /// Whether the guest policy allows a migration agent.
    pub fn migration_allowed(&self) -> bool {
        self.policy() & POLICY_MIGRATE_MA_BIT != 0
    }
    /// Whether the guest policy allows SMT.
    pub fn smt_allowed(&self) -> bool {
        self.policy() & POLICY_SMT_BIT != 0
    }
    /// Family ID (16 bytes).
    pub fn family_id(&self) -> &[u8] {
        &self.raw[0x10..0x20]
    }
    /// Image ID (16 bytes).
    pub fn image_id(&self) -> &[u8] {
        &self.raw[0x20..0x30]
    }
    /// VMPL the report was requested from.
    pub fn vmpl(&self) -> u32 {
        u32_at(&self.raw[..], 0x30)
    }
    /// Signature algorithm code.
    pub fn signature_algo(&self) -> u32 {
        u32_at(&self.raw[..], 0x34)
    }
    /// Current TCB, raw.
    pub fn current_tcb_raw(&self) -> u64 {
        u64_at(&self.raw[..], 0x38)
    }
    /// Platform info bits.
    pub fn platform_info(&self) -> u64 {
        u64_at(&self.raw[..], 0x40)
    }
    /// Key/flags word at 0x48 (author_key_en, mask_chip_key, signing_key).
    pub fn key_flags(&self) -> u32 {
        u32_at(&self.raw[..], 0x48)
    }
    /// report_data (64 bytes) supplied by the guest.
    pub fn report_data(&self) -> &[u8; 64] {
        self.raw[OFF_REPORT_DATA..OFF_REPORT_DATA + 64]
            .try_into()
            .unwrap_or(&[0; 64])
    }
    /// Launch measurement (48 bytes).
    pub fn measurement(&self) -> &[u8] {
        &self.raw[OFF_MEASUREMENT..OFF_MEASUREMENT + 48]
    }
    /// host_data (32 bytes), set by the host at launch (on ACI: SHA-256 of the CCE policy).
    pub fn host_data(&self) -> &[u8] {
        &self.raw[OFF_HOST_DATA..OFF_HOST_DATA + 32]
    }
    /// ID key digest (48 bytes).
    pub fn id_key_digest(&self) -> &[u8] {
        &self.raw[0xe0..0x110]
    }
    /// Author key digest (48 bytes).
    pub fn author_key_digest(&self) -> &[u8] {
        &self.raw[0x110..0x140]
    }
    /// Report ID (32 bytes).
    pub fn report_id(&self) -> &[u8] {
        &self.raw[0x140..0x160]
    }
    /// Report ID of the migration agent (32 bytes).
    pub fn report_id_ma(&self) -> &[u8] {
        &self.raw[0x160..0x180]
    }
    /// Reported TCB, raw: the TCB the VCEK was derived for.
    pub fn reported_tcb_raw(&self) -> u64 {
        u64_at(&self.raw[..], 0x180)
    }
    /// Chip ID (64 bytes; all zero when MASK_CHIP_ID is set).
    pub fn chip_id(&self) -> &[u8] {
        &self.raw[0x1a0..0x1e0]
    }
    /// Committed TCB, raw.
    pub fn committed_tcb_raw(&self) -> u64 {
        u64_at(&self.raw[..], 0x1e0)
    }
    /// Current firmware version (build, minor, major).
    pub fn current_firmware(&self) -> (u8, u8, u8) {
        (self.raw[0x1e8], self.raw[0x1e9], self.raw[0x1ea])
    }
    /// Launch TCB, raw.
    pub fn launch_tcb_raw(&self) -> u64 {
        u64_at(&self.raw[..], 0x1f0)
    }
    /// CPUID family/model/stepping (report version ≥ 3; `None` before).
    pub fn cpuid(&self) -> Option<(u8, u8, u8)> {
        (self.version() >= 3).then(|| (self.raw[0x188], self.raw[0x189], self.raw[0x18a]))
    }

    /// Signature `(r, s)` as 48-byte big-endian scalars, or an error when the zero padding above 48 bytes
    /// is not zero.
    pub fn signature_rs(&self) -> Result<([u8; 48], [u8; 48]), ReportError> {
        let comp = |off: usize| -> Result<[u8; 48], ReportError> {
            let field = &self.raw[off..off + 72];
            if field[48..].iter().any(|&b| b != 0) {
                return Err(ReportError::SignaturePadding);
            }
            let mut be = [0u8; 48];
            for (i, b) in field[..48].iter().enumerate() {
                be[47 - i] = *b;
            }
            Ok(be)
        };
        Ok((comp(OFF_SIG_R)?, comp(OFF_SIG_S)?))
    }

    /// Best guess of the processor generation from the report alone (CPUID for v3+, else `None`).
    pub fn generation_hint(&self) -> Option<Generation> {
        let (family, model, _) = self.cpuid()?;
        match (family, model) {
            (0x19, 0x00..=0x0f) => Some(Generation::Milan),
            (0x19, 0x10..=0x1f) | (0x19, 0xa0..=0xaf) => Some(Generation::Genoa),
            (0x1a, 0x00..=0x11) => Some(Generation::Turin),
            _ => None,
        }
    }
}

/// Writes reports in the SNP layout (used by the mock attester and by tests that need tampered reports).
#[derive(Clone, Debug)]
pub struct ReportBuilder {
    raw: Box<[u8; REPORT_LEN]>,
}

impl Default for ReportBuilder {
    fn default() -> Self {
        let mut b = Self {
            raw: Box::new([0u8; REPORT_LEN]),
        };
        b.put_u32(0, 3);
        b.put_u64(8, Self::DEFAULT_POLICY);
        b.put_u32(0x34, SIG_ALGO_ECDSA_P384_SHA384);
        b.raw[0x160..0x180].fill(0xff);
        b
    }
}

impl ReportBuilder {
    /// The guest policy a new builder writes: ABI 0.31, SMT allowed, reserved bit 17 set; no debug, no
    /// migration agent.
    pub const DEFAULT_POLICY: u64 = 0x3_001f;

    fn put_u32(&mut self, off: usize, v: u32) {
        self.raw[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, off: usize, v: u64) {
        self.raw[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// Start from existing report bytes (e.g. to tamper with one field in a test).
    pub fn from_report(report: &AttestationReport) -> Self {
        Self {
            raw: Box::new(*report.as_bytes()),
        }
    }
    /// Set the version.
    pub fn version(mut self, v: u32) -> Self {
        self.put_u32(0, v);
        self
    }
    /// Set the guest SVN.
    pub fn guest_svn(mut self, v: u32) -> Self {
        self.put_u32(4, v);
        self
    }
    /// Set the guest policy.
    pub fn policy(mut self, v: u64) -> Self {
        self.put_u64(8, v);
        self
    }
    /// Set or clear the debug bit of the guest policy.
    pub fn debuggable(self, debug: bool) -> Self {
        let p = u64::from_le_bytes(self.raw[8..16].try_into().unwrap_or_default());
        self.policy(if debug {
            p | POLICY_DEBUG_BIT
        } else {
            p & !POLICY_DEBUG_BIT
        })
    }
    /// Set the VMPL.
    pub fn vmpl(mut self, v: u32) -> Self {
        self.put_u32(0x30, v);
        self
    }
    /// Set report_data.
    pub fn report_data(mut self, d: &[u8; 64]) -> Self {
        self.raw[OFF_REPORT_DATA..OFF_REPORT_DATA + 64].copy_from_slice(d);
        self
    }
    /// Set the launch measurement.
    pub fn measurement(mut self, m: &[u8; 48]) -> Self {
        self.raw[OFF_MEASUREMENT..OFF_MEASUREMENT + 48].copy_from_slice(m);
        self
    }
    /// Set host_data.
    pub fn host_data(mut self, h: &[u8; 32]) -> Self {
        self.raw[OFF_HOST_DATA..OFF_HOST_DATA + 32].copy_from_slice(h);
        self
    }
    /// Set the chip ID.
    pub fn chip_id(mut self, c: &[u8; 64]) -> Self {
        self.raw[0x1a0..0x1e0].copy_from_slice(c);
        self
    }
    /// Set current, reported, committed and launch TCB to the same value, and the CPUID for the generation.
    pub fn tcb(mut self, tcb: TcbVersion, generation: Generation) -> Self {
        let raw = tcb.encode(generation);
        for off in [0x38, 0x180, 0x1e0, 0x1f0] {
            self.put_u64(off, raw);
        }
        let (fam, model) = match generation {
            Generation::Milan => (0x19, 0x01),
            Generation::Genoa => (0x19, 0x11),
            Generation::Turin => (0x1a, 0x02),
        };
        self.raw[0x188] = fam;
        self.raw[0x189] = model;
        self.raw[0x18a] = 1;
        self
    }
    /// Set the reported TCB only (raw), e.g. to make it disagree with the VCEK.
    pub fn reported_tcb_raw(mut self, raw: u64) -> Self {
        self.put_u64(0x180, raw);
        self
    }
    /// Overwrite one byte (tests).
    pub fn byte(mut self, off: usize, v: u8) -> Self {
        if off < REPORT_LEN {
            self.raw[off] = v;
        }
        self
    }
    /// The signed part, for a signer.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..SIGNED_LEN]
    }
    /// Set the signature from 48-byte big-endian `r` and `s`.
    pub fn signature(mut self, r: &[u8; 48], s: &[u8; 48]) -> Self {
        self.raw[SIGNED_LEN..].fill(0);
        for i in 0..48 {
            self.raw[OFF_SIG_R + i] = r[47 - i];
            self.raw[OFF_SIG_S + i] = s[47 - i];
        }
        self
    }
    /// The finished bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.raw.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcb_round_trips_for_each_generation() {
        let t = TcbVersion {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 0x73,
            fmc: 0,
        };
        assert_eq!(t.encode(Generation::Milan), 0x7308_0000_0000_0003);
        assert_eq!(TcbVersion::decode(0x7308_0000_0000_0003, Generation::Milan), t);
        let turin = TcbVersion {
            bootloader: 1,
            tee: 2,
            snp: 3,
            microcode: 0xd5,
            fmc: 4,
        };
        assert_eq!(
            TcbVersion::decode(turin.encode(Generation::Turin), Generation::Turin),
            turin
        );
    }

    #[test]
    fn parser_rejects_wrong_length_and_version() {
        assert!(matches!(
            AttestationReport::from_bytes(&[0u8; 100]),
            Err(ReportError::Length { .. })
        ));
        let bytes = ReportBuilder::default().version(1).into_bytes();
        assert!(matches!(
            AttestationReport::from_bytes(&bytes),
            Err(ReportError::UnsupportedVersion { version: 1 })
        ));
        let bytes = ReportBuilder::default().byte(0x34, 2).into_bytes();
        assert!(matches!(
            AttestationReport::from_bytes(&bytes),
            Err(ReportError::UnsupportedSignatureAlgorithm { algo: 2 })
        ));
    }

    #[test]
    fn builder_fields_read_back() {
        let r = [7u8; 48];
        let s = [9u8; 48];
        let bytes = ReportBuilder::default()
            .vmpl(2)
            .debuggable(true)
            .host_data(&[1; 32])
            .measurement(&[2; 48])
            .report_data(&[3; 64])
            .signature(&r, &s)
            .into_bytes();
        let rep = AttestationReport::from_bytes(&bytes).unwrap();
        assert_eq!(rep.vmpl(), 2);
        assert!(rep.is_debuggable());
        assert_eq!(rep.host_data(), &[1; 32]);
        assert_eq!(rep.measurement(), &[2; 48]);
        assert_eq!(rep.report_data(), &[3; 64]);
        assert_eq!(rep.signature_rs().unwrap(), (r, s));
    }
}
