//! NVIDIA Reference Integrity Manifests: ISO/IEC 19770-2 SWID tags with TCG RIM attributes, signed with an
//! enveloped XML-DSig signature. Golden measurements are `Payload/Resource` elements:
//! `index` (0-based; report block `index + 1`), `active`, `alternatives`, `size` and `Hash0..HashN-1`
//! (SHA-384 hex, in the `http://www.w3.org/2001/04/xmlenc#sha384` namespace).
//!
//! The XML-DSig profile accepted is exactly the one NVIDIA signs with, anything else is refused:
//! `ds:Signature` as a child of the root; one `Reference URI=""` with the transforms enveloped-signature then
//! C14N 1.1; SHA-384 digest; `ecdsa-sha384` signature (`r ‖ s`, 96 bytes); `SignedInfo` canonicalized with
//! C14N 1.1; `KeyInfo/X509Data` with the signing certificate first. Verification order follows NVIDIA's
//! local verifier: chain (to the configured RIM root, at the verification time), then digest and signature.

use std::time::SystemTime;

use base64::Engine as _;
use sha2::{Digest, Sha384};

use super::c14n;
use super::certs::{self, Cert, PathError, TrustedRoot};
use super::error::{GpuError, RimKind};

pub(super) const SWID_NS: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
pub(super) const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
pub(super) const SHA384_NS: &str = "http://www.w3.org/2001/04/xmlenc#sha384";
const TCG_RIM_NS: &str =
    "https://trustedcomputinggroup.org/resource/tcg-reference-integrity-manifest-rim-information-model/";
pub(super) const ALG_C14N11: &str = "http://www.w3.org/2006/12/xml-c14n11";
pub(super) const ALG_ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
pub(super) const ALG_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#sha384";
pub(super) const ALG_ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";

/// Largest RIM accepted (NVIDIA's are about 21 KB).
pub const MAX_RIM_BYTES: usize = 1 << 20;

/// One golden measurement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoldenMeasurement {
    /// RIM index (0-based).
    pub index: u32,
    /// Whether it is compared.
    pub active: bool,
    /// Size in bytes.
    pub size: usize,
    /// Accepted values (any one matches).
    pub alternatives: Vec<Vec<u8>>,
}

/// A RIM whose signature and chain verified.
#[derive(Clone, Debug)]
pub struct VerifiedRim {
    /// Driver or VBIOS.
    pub kind: RimKind,
    /// `Meta/@colloquialVersion` (the driver or VBIOS version it describes).
    pub version: String,
    /// `Meta/@FirmwareManufacturerId` (NVIDIA: 5703), NVIDIA's `oemid` claim.
    pub manufacturer_id: Option<String>,
    /// `tagId`.
    pub tag_id: String,
    /// Golden measurements by index.
    pub measurements: Vec<GoldenMeasurement>,
    /// Earliest notAfter of the signing chain.
    pub chain_not_after: SystemTime,
    /// Serial numbers (hex) of the signing chain's certificates, for revocation checks.
    pub chain_serials: Vec<(String, String)>,
}

fn parse_err(which: RimKind, detail: impl Into<String>) -> GpuError {
    GpuError::RimParse {
        which,
        detail: detail.into(),
    }
}

fn sig_err(which: RimKind, detail: impl Into<String>) -> GpuError {
    GpuError::RimSignature {
        which,
        detail: detail.into(),
    }
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, ns: &str, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().namespace() == Some(ns) && c.tag_name().name() == name)
}

fn only_child<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    ns: &str,
    name: &str,
    which: RimKind,
) -> Result<roxmltree::Node<'a, 'i>, GpuError> {
    let mut it = node
        .children()
        .filter(|c| c.is_element() && c.tag_name().namespace() == Some(ns) && c.tag_name().name() == name);
    let first = it
        .next()
        .ok_or_else(|| parse_err(which, format!("no {name} in {}", node.tag_name().name())))?;
    if it.next().is_some() {
        return Err(parse_err(
            which,
            format!("more than one {name} in {}", node.tag_name().name()),
        ));
    }
    Ok(first)
}

fn algorithm<'a>(node: roxmltree::Node<'a, '_>) -> &'a str {
    node.attribute("Algorithm").unwrap_or("")
}

fn b64(text: Option<&str>) -> Result<Vec<u8>, String> {
    let compact: String = text
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| format!("base64: {e}"))
}

/// Parse `bytes`, verify its chain to `root` and its XML-DSig signature at `at`.
pub fn verify_rim(bytes: &[u8], kind: RimKind, root: &TrustedRoot, at: SystemTime) -> Result<VerifiedRim, GpuError> {
    if bytes.len() > MAX_RIM_BYTES {
        return Err(parse_err(
            kind,
            format!("{} bytes, more than {MAX_RIM_BYTES}", bytes.len()),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| parse_err(kind, format!("not UTF-8: {e}")))?;
    let doc = roxmltree::Document::parse(text).map_err(|e| parse_err(kind, format!("XML: {e}")))?;
    let top = doc.root_element();
    if top.tag_name().namespace() != Some(SWID_NS) || top.tag_name().name() != "SoftwareIdentity" {
        return Err(parse_err(kind, "the root element is not a SWID SoftwareIdentity"));
    }

    // --- the signature element and its profile
    let signature = only_child(top, DSIG_NS, "Signature", kind)?;
    let signed_info = only_child(signature, DSIG_NS, "SignedInfo", kind)?;
    let c14n_method = only_child(signed_info, DSIG_NS, "CanonicalizationMethod", kind)?;
    if algorithm(c14n_method) != ALG_C14N11 {
        return Err(parse_err(
            kind,
            format!("CanonicalizationMethod {:?} is not C14N 1.1", algorithm(c14n_method)),
        ));
    }
    let sig_method = only_child(signed_info, DSIG_NS, "SignatureMethod", kind)?;
    if algorithm(sig_method) != ALG_ECDSA_SHA384 {
        return Err(parse_err(
            kind,
            format!("SignatureMethod {:?} is not ecdsa-sha384", algorithm(sig_method)),
        ));
    }
    let reference = only_child(signed_info, DSIG_NS, "Reference", kind)?;
    if reference.attribute("URI") != Some("") {
        return Err(parse_err(kind, "the Reference is not to the whole document (URI=\"\")"));
    }
    let transforms: Vec<&str> = child(reference, DSIG_NS, "Transforms")
        .map(|t| t.children().filter(|c| c.is_element()).map(algorithm).collect())
        .unwrap_or_default();
    if transforms != [ALG_ENVELOPED, ALG_C14N11] {
        return Err(parse_err(
            kind,
            format!("transforms {transforms:?}: expected enveloped-signature, C14N 1.1"),
        ));
    }
    let digest_method = only_child(reference, DSIG_NS, "DigestMethod", kind)?;
    if algorithm(digest_method) != ALG_SHA384 {
        return Err(parse_err(
            kind,
            format!("DigestMethod {:?} is not SHA-384", algorithm(digest_method)),
        ));
    }
    let digest_value = b64(only_child(reference, DSIG_NS, "DigestValue", kind)?.text())
        .map_err(|e| parse_err(kind, format!("DigestValue {e}")))?;
    let signature_value = b64(only_child(signature, DSIG_NS, "SignatureValue", kind)?.text())
        .map_err(|e| parse_err(kind, format!("SignatureValue {e}")))?;
    let key_info = only_child(signature, DSIG_NS, "KeyInfo", kind)?;
    let x509_data = only_child(key_info, DSIG_NS, "X509Data", kind)?;
    let certs = x509_data
        .children()
        .filter(|c| {
            c.is_element() && c.tag_name().namespace() == Some(DSIG_NS) && c.tag_name().name() == "X509Certificate"
        })
        .map(|c| {
            b64(c.text())
                .and_then(|der| Cert::from_der(&der))
                .map_err(|e| parse_err(kind, format!("X509Certificate: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some((leaf, rest)) = certs.split_first() else {
        return Err(parse_err(kind, "KeyInfo has no X509Certificate"));
    };

    // --- 1. chain to the configured RIM root (the root itself may or may not be in KeyInfo)
    let intermediates: Vec<Cert> = rest.iter().filter(|c| c.der != root.cert.der).cloned().collect();
    certs::validate_path(leaf, &intermediates, root, at).map_err(|e| match e {
        PathError::Expiry(detail) => GpuError::RimExpiry { which: kind, detail },
        PathError::Invalid(detail) => GpuError::RimChain { which: kind, detail },
    })?;

    // --- 2. digest of the document less the signature, canonicalized
    let canonical = c14n::canonicalize_document_without(&doc, signature.id()).map_err(|e| parse_err(kind, e))?;
    let digest = Sha384::digest(&canonical);
    if digest.as_slice() != digest_value.as_slice() {
        return Err(sig_err(
            kind,
            "the SHA-384 of the canonical document is not the signed DigestValue",
        ));
    }

    // --- 3. signature over the canonical SignedInfo
    let signed_info_c14n = c14n::canonicalize_subtree(signed_info).map_err(|e| parse_err(kind, e))?;
    leaf.verify_p384(&signed_info_c14n, &signature_value)
        .map_err(|e| sig_err(kind, format!("over the canonical SignedInfo: {e}")))?;

    // --- the signed content
    let meta = child(top, SWID_NS, "Meta").ok_or_else(|| parse_err(kind, "no Meta element"))?;
    let version = meta
        .attribute("colloquialVersion")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| parse_err(kind, "Meta has no colloquialVersion"))?
        .to_string();
    let manufacturer_id = meta
        .attribute((TCG_RIM_NS, "FirmwareManufacturerId"))
        .map(str::to_string);
    let payload = child(top, SWID_NS, "Payload").ok_or_else(|| parse_err(kind, "no Payload element"))?;
    let measurements = parse_measurements(payload, kind)?;
    let chain_not_after = std::iter::once(leaf)
        .chain(intermediates.iter())
        .chain(std::iter::once(&root.cert))
        .map(Cert::not_after)
        .min()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let chain_serials = std::iter::once(leaf)
        .chain(intermediates.iter())
        .map(|c| (hex::encode(c.serial()), c.subject()))
        .collect();
    Ok(VerifiedRim {
        kind,
        version,
        manufacturer_id,
        tag_id: top.attribute("tagId").unwrap_or("").to_string(),
        measurements,
        chain_not_after,
        chain_serials,
    })
}

/// The golden measurements of a RIM **without verifying it**: for diagnostics and tests of the comparison
/// on RIMs whose signature is known to be broken. Never base a decision on this.
pub fn golden_unverified(bytes: &[u8], kind: RimKind) -> Result<Vec<GoldenMeasurement>, GpuError> {
    let text = std::str::from_utf8(bytes).map_err(|e| parse_err(kind, format!("not UTF-8: {e}")))?;
    let doc = roxmltree::Document::parse(text).map_err(|e| parse_err(kind, format!("XML: {e}")))?;
    let payload = child(doc.root_element(), SWID_NS, "Payload").ok_or_else(|| parse_err(kind, "no Payload element"))?;
    parse_measurements(payload, kind)
}

fn parse_measurements(payload: roxmltree::Node<'_, '_>, kind: RimKind) -> Result<Vec<GoldenMeasurement>, GpuError> {
    let mut out: Vec<GoldenMeasurement> = Vec::new();
    for r in payload.children().filter(|c| c.is_element()) {
        if r.tag_name().namespace() != Some(SWID_NS) || r.tag_name().name() != "Resource" {
            continue;
        }
        let num = |name: &str| -> Result<usize, GpuError> {
            r.attribute(name)
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| parse_err(kind, format!("Resource without a numeric {name}")))
        };
        let index = u32::try_from(num("index")?).map_err(|_| parse_err(kind, "index too large"))?;
        let size = num("size")?;
        let count = num("alternatives")?;
        if count == 0 || count > 16 {
            return Err(parse_err(kind, format!("index {index}: {count} alternatives")));
        }
        let active = match r.attribute("active") {
            Some("True" | "true") => true,
            Some("False" | "false") => false,
            other => return Err(parse_err(kind, format!("index {index}: active={other:?}"))),
        };
        let alternatives = (0..count)
            .map(|i| {
                let v = r
                    .attribute((SHA384_NS, format!("Hash{i}").as_str()))
                    .ok_or_else(|| parse_err(kind, format!("index {index}: no Hash{i}")))?;
                hex::decode(v).map_err(|e| parse_err(kind, format!("index {index}: Hash{i}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if out.iter().any(|m| m.index == index) {
            return Err(parse_err(kind, format!("index {index} appears twice")));
        }
        out.push(GoldenMeasurement {
            index,
            active,
            size,
            alternatives,
        });
    }
    if out.is_empty() {
        return Err(parse_err(kind, "no golden measurements"));
    }
    Ok(out)
}
