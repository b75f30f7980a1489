//! Appraisal of a report whose signature and chain verified: a minimum TCB per processor product, a floor on
//! the report format version, and refusal of guests whose policy allows a migration agent.
//!
//! **Why a minimum TCB.** The VCEK is derived from the chip and the TCB it was reported at, so a verified report
//! proves that the platform ran firmware *at least* as new as its REPORTED_TCB — and nothing newer. Without a
//! floor, any TCB whose VCEK AMD ever issued is accepted, including firmware with published SEV-SNP breaks. The
//! floor is compared with REPORTED_TCB (the TCB the VCEK certifies, already checked equal to the certificate's
//! extensions), component by component: bootloader, TEE, SNP firmware, microcode (and FMC on Turin).
//!
//! **Per product.** SVN numbering is per processor product: the microcode SVN is the low byte of the patch level,
//! and AMD-SB-3019's fix is patch `0x0A0011DB` (SVN 219) on Milan but `0x0A101154` (SVN 84) on Genoa. One floor
//! for both is either useless for Milan or refuses every Genoa host, so floors are kept per [`Generation`].
//!
//! **Defaults** ([`MinimumTcb::amd_default`]) are AMD-SB-3019's (CVE-2024-56161, "EntrySign": malicious
//! microcode could be loaded below these levels, voiding every SEV-SNP guarantee):
//!
//! | product | bootloader | TEE | SNP | microcode |
//! |---|---|---|---|---|
//! | Milan | 0 | 0 | 22 | 219 (0xDB, patch 0x0A0011DB) |
//! | Genoa | 0 | 0 | 23 (0x17) | 84 (0x54, patch 0x0A101154) |
//! | Turin | 0 | 0 | 0 | 0 (no floor: no figure found) |
//!
//! `attest/README.md` ("Minimum TCB") names the source of each figure, what could not be verified (Milan's
//! SNP figure is not an AMD one; the floors of later bulletins are listed there but not enforced by
//! default), and why the microcode floor is per *stepping* in reality (Milan-X and Genoa-X have their own,
//! lower patch lines: they need an explicit lower microcode floor).
//!
//! **Migration agent.** A guest whose policy allows a migration agent (policy bit 18, `MIGRATE_MA`) can have
//! its memory exported by that agent, which the report does not measure; a report naming an agent
//! (REPORT_ID_MA not all 0xFF) is bound to one. Both are refused unless [`Appraisal::allow_migration_agent`].

use crate::error::VerifyError;
use crate::report::{AttestationReport, Generation, TcbVersion};

/// The lowest report format version the parser accepts; the default floor.
pub const MIN_REPORT_VERSION: u32 = 2;

/// Minimum SVN of each TCB component for one product. Components at 0 are not constrained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcbMinimum {
    /// Boot loader SVN.
    pub bootloader: u8,
    /// TEE (PSP OS) SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Microcode SVN (low byte of the patch level).
    pub microcode: u8,
    /// FMC SVN (Turin only).
    pub fmc: u8,
}

impl TcbMinimum {
    /// No constraint.
    pub const NONE: Self = Self {
        bootloader: 0,
        tee: 0,
        snp: 0,
        microcode: 0,
        fmc: 0,
    };

    /// The components, by the names used in errors and specs, with the minimum of each.
    pub fn components(&self) -> [(&'static str, u8); 5] {
        [
            ("bootloader", self.bootloader),
            ("tee", self.tee),
            ("snp", self.snp),
            ("microcode", self.microcode),
            ("fmc", self.fmc),
        ]
    }

    /// The first component of `tcb` below this minimum, as `(component, reported, minimum)`.
    pub fn first_shortfall(&self, tcb: &TcbVersion) -> Option<(&'static str, u8, u8)> {
        let reported = [tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode, tcb.fmc];
        self.components()
            .into_iter()
            .zip(reported)
            .find(|((_, minimum), reported)| reported < minimum)
            .map(|((name, minimum), reported)| (name, reported, minimum))
    }

    fn set(&mut self, component: &str, value: u8) -> bool {
        let field = match component {
            "bootloader" => &mut self.bootloader,
            "tee" => &mut self.tee,
            "snp" => &mut self.snp,
            "microcode" => &mut self.microcode,
            "fmc" => &mut self.fmc,
            _ => return false,
        };
        *field = value;
        true
    }
}

/// Minimum TCB per processor product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinimumTcb {
    /// Zen 3 EPYC 7003.
    pub milan: TcbMinimum,
    /// Zen 4 EPYC 9004.
    pub genoa: TcbMinimum,
    /// Zen 5 EPYC 9005.
    pub turin: TcbMinimum,
}

impl Default for MinimumTcb {
    fn default() -> Self {
        Self::amd_default()
    }
}

impl MinimumTcb {
    /// The defaults: AMD-SB-3019's levels (see the module docs and `attest/README.md` for the sources).
    pub const fn amd_default() -> Self {
        Self {
            milan: TcbMinimum {
                snp: 22,
                microcode: 0xdb,
                ..TcbMinimum::NONE
            },
            genoa: TcbMinimum {
                snp: 0x17,
                microcode: 0x54,
                ..TcbMinimum::NONE
            },
            turin: TcbMinimum::NONE,
        }
    }

    /// No floor for any product (tests of other checks, and reports that predate every bulletin).
    pub const fn none() -> Self {
        Self {
            milan: TcbMinimum::NONE,
            genoa: TcbMinimum::NONE,
            turin: TcbMinimum::NONE,
        }
    }

    /// The minimum for a product.
    pub fn for_generation(&self, generation: Generation) -> &TcbMinimum {
        match generation {
            Generation::Milan => &self.milan,
            Generation::Genoa => &self.genoa,
            Generation::Turin => &self.turin,
        }
    }

    fn for_generation_mut(&mut self, generation: Generation) -> &mut TcbMinimum {
        match generation {
            Generation::Milan => &mut self.milan,
            Generation::Genoa => &mut self.genoa,
            Generation::Turin => &mut self.turin,
        }
    }

    /// Apply a spec `PRODUCT:COMPONENT=N[,COMPONENT=N…]` (e.g. `milan:snp=24,microcode=219`): the named
    /// components of that product's floor are set, the others keep their value.
    pub fn apply_spec(&mut self, spec: &str) -> Result<(), AppraisalSpecError> {
        let bad = |detail: String| AppraisalSpecError {
            spec: spec.to_string(),
            detail,
        };
        let (product, components) = spec
            .split_once(':')
            .ok_or_else(|| bad("expected PRODUCT:COMPONENT=N[,COMPONENT=N…]".into()))?;
        let generation = match product.trim().to_ascii_lowercase().as_str() {
            "milan" => Generation::Milan,
            "genoa" => Generation::Genoa,
            "turin" => Generation::Turin,
            other => return Err(bad(format!("unknown product {other:?} (milan, genoa, turin)"))),
        };
        let mut floor = *self.for_generation(generation);
        for pair in components.split(',') {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("expected COMPONENT=N, got {pair:?}")))?;
            let value: u8 = value
                .trim()
                .parse()
                .map_err(|_| bad(format!("{value:?} is not an SVN in 0..=255")))?;
            if !floor.set(name.trim(), value) {
                return Err(bad(format!(
                    "unknown component {:?} (bootloader, tee, snp, microcode, fmc)",
                    name.trim()
                )));
            }
        }
        *self.for_generation_mut(generation) = floor;
        Ok(())
    }
}

/// A `--min-tcb` spec that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("minimum TCB {spec:?}: {detail}")]
pub struct AppraisalSpecError {
    /// The spec as given.
    pub spec: String,
    /// What is wrong.
    pub detail: String,
}

/// What a verified report must satisfy beyond chain, signature, VMPL, debug and binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appraisal {
    /// Minimum REPORTED_TCB per product (default: [`MinimumTcb::amd_default`]).
    pub min_tcb: MinimumTcb,
    /// Lowest accepted report format version (default [`MIN_REPORT_VERSION`], the parser's own minimum).
    pub min_report_version: u32,
    /// Accept guests whose policy allows a migration agent, or that are bound to one (never by default).
    pub allow_migration_agent: bool,
}

impl Default for Appraisal {
    fn default() -> Self {
        Self {
            min_tcb: MinimumTcb::amd_default(),
            min_report_version: MIN_REPORT_VERSION,
            allow_migration_agent: false,
        }
    }
}

impl Appraisal {
    /// Check a report of `generation` whose REPORTED_TCB decodes to `reported`: version floor, TCB floor,
    /// migration agent, in this order.
    pub fn check(
        &self,
        report: &AttestationReport,
        generation: Generation,
        reported: &TcbVersion,
    ) -> Result<(), VerifyError> {
        if report.version() < self.min_report_version {
            return Err(VerifyError::ReportVersion {
                version: report.version(),
                minimum: self.min_report_version,
            });
        }
        if let Some((component, reported, minimum)) = self.min_tcb.for_generation(generation).first_shortfall(reported)
        {
            return Err(VerifyError::TcbMinimum {
                product: generation.name(),
                component,
                reported,
                minimum,
            });
        }
        let agent_bound = report.report_id_ma().iter().any(|&b| b != 0xff);
        if !self.allow_migration_agent && (report.migration_allowed() || agent_bound) {
            return Err(VerifyError::MigrationAgent {
                policy: report.policy(),
                report_id_ma: hex::encode(report.report_id_ma()),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{POLICY_MIGRATE_MA_BIT, ReportBuilder};

    fn tcb(bootloader: u8, tee: u8, snp: u8, microcode: u8) -> TcbVersion {
        TcbVersion {
            bootloader,
            tee,
            snp,
            microcode,
            fmc: 0,
        }
    }

    fn report(b: ReportBuilder) -> AttestationReport {
        AttestationReport::from_bytes(&b.into_bytes()).unwrap()
    }

    #[test]
    fn shortfall_names_the_first_component_below_its_minimum() {
        let floor = MinimumTcb::amd_default().milan;
        assert_eq!(floor.first_shortfall(&tcb(4, 0, 22, 219)), None);
        assert_eq!(floor.first_shortfall(&tcb(0, 0, 21, 219)), Some(("snp", 21, 22)));
        assert_eq!(
            floor.first_shortfall(&tcb(9, 9, 99, 211)),
            Some(("microcode", 211, 219))
        );
        let all = TcbMinimum {
            bootloader: 4,
            tee: 1,
            fmc: 2,
            ..TcbMinimum::NONE
        };
        assert_eq!(all.first_shortfall(&tcb(3, 1, 0, 0)), Some(("bootloader", 3, 4)));
        assert_eq!(all.first_shortfall(&tcb(4, 0, 0, 0)), Some(("tee", 0, 1)));
        assert_eq!(all.first_shortfall(&tcb(4, 1, 0, 0)), Some(("fmc", 0, 2)));
    }

    #[test]
    fn specs_set_named_components_and_keep_the_others() {
        let mut m = MinimumTcb::amd_default();
        m.apply_spec("Genoa:snp=27, microcode=86").unwrap();
        assert_eq!((m.genoa.snp, m.genoa.microcode, m.genoa.bootloader), (27, 86, 0));
        assert_eq!(m.milan, MinimumTcb::amd_default().milan);
        m.apply_spec("milan:bootloader=3,tee=0,snp=8,microcode=115").unwrap();
        assert_eq!(
            m.milan,
            TcbMinimum {
                bootloader: 3,
                snp: 8,
                microcode: 115,
                ..TcbMinimum::NONE
            }
        );
        for bad in [
            "milan",
            "rome:snp=1",
            "milan:snp",
            "milan:snp=256",
            "milan:ucode=1",
            "milan:snp=-1",
        ] {
            let e = m.apply_spec(bad).unwrap_err();
            assert!(e.to_string().starts_with("minimum TCB"), "{bad}: {e}");
        }
    }

    #[test]
    fn migration_agent_policy_bit_or_bound_agent_is_refused_unless_allowed() {
        let a = Appraisal::default();
        let ok = tcb(0, 0, 22, 219);
        let plain = report(ReportBuilder::default());
        a.check(&plain, Generation::Milan, &ok).unwrap();
        let bit = report(ReportBuilder::default().policy(0x3_001f | POLICY_MIGRATE_MA_BIT));
        let e = a.check(&bit, Generation::Milan, &ok).unwrap_err().to_string();
        assert!(e.starts_with("migration agent:") && e.contains("0x7001f"), "{e}");
        let bound = report(ReportBuilder::default().byte(0x160, 0x01));
        let e = a.check(&bound, Generation::Milan, &ok).unwrap_err().to_string();
        assert!(e.starts_with("migration agent:") && e.contains("01ffff"), "{e}");
        let allow = Appraisal {
            allow_migration_agent: true,
            ..Appraisal::default()
        };
        allow.check(&bit, Generation::Milan, &ok).unwrap();
        allow.check(&bound, Generation::Milan, &ok).unwrap();
    }

    #[test]
    fn report_version_below_the_floor_is_refused() {
        let a = Appraisal {
            min_report_version: 3,
            ..Appraisal::default()
        };
        let ok = tcb(0, 0, 22, 219);
        a.check(&report(ReportBuilder::default()), Generation::Milan, &ok)
            .unwrap();
        let e = a
            .check(&report(ReportBuilder::default().version(2)), Generation::Milan, &ok)
            .unwrap_err();
        assert_eq!(e.to_string(), "report version: 2 is below the minimum 3");
    }
}
