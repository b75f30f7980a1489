//! The NVIDIA GPU attestation report: an SPDM 1.1 `GET_MEASUREMENTS` request (37 bytes, carrying the
//! verifier's nonce) followed by the GPU's signed `MEASUREMENTS` response. A pure codec: no I/O, no crypto.
//!
//! Layout (DMTF DSP0274 1.1, as NVIDIA's verifiers read it; all integers little-endian):
//!
//! ```text
//! request   0 SPDMVersion 1 | 1 code 0xE0 1 | 2 Param1 1 (bit 0: signature requested) | 3 Param2 1
//!           4 Nonce 32 | 36 SlotIDParam 1
//! response  0 SPDMVersion 1 | 1 code 0x60 1 | 2 Param1 1 | 3 Param2 1 | 4 NumberOfBlocks 1
//!           5 MeasurementRecordLength 3 | 8 MeasurementRecord L1 | 8+L1 Nonce 32
//!           40+L1 OpaqueLength 2 | 42+L1 OpaqueData L2 | 42+L1+L2 Signature 96 (ECDSA P-384 r ‖ s)
//! block     0 Index 1 | 1 MeasurementSpecification 1 (1 = DMTF) | 2 MeasurementSize 2 | 4 Measurement
//! DMTF      0 ValueType 1 | 1 ValueSize 2 | 3 Value
//! opaque    repeated: DataType 2 | DataSize 2 | Data
//! ```
//!
//! Every length is checked against what is left; the response must end exactly after the signature, the
//! measurement record after its last block and the opaque data after its last field. The signed bytes are
//! the whole report (request ‖ response) less the 96 signature bytes.

use super::error::GpuError;

/// Length of the SPDM `GET_MEASUREMENTS` request that precedes the response.
pub const REQUEST_LEN: usize = 37;
/// Length of the response signature: ECDSA P-384 `r ‖ s`.
pub const SIGNATURE_LEN: usize = 96;
/// Length of the nonce in request and response.
pub const NONCE_LEN: usize = 32;

const GET_MEASUREMENTS: u8 = 0xE0;
const MEASUREMENTS: u8 = 0x60;
const DMTF_SPEC: u8 = 1;

/// NVDEC0 status value meaning "disabled" (measurement index 35 is then not compared).
pub const NVDEC0_DISABLED: u8 = 0x55;

/// Known opaque data field types (NVIDIA's `OPAQUE_FIELD_ID_*`).
pub mod field {
    /// Driver version, NUL-terminated ASCII.
    pub const DRIVER_VERSION: u16 = 3;
    /// GPU information.
    pub const GPU_INFO: u16 = 4;
    /// VBIOS version, 8 bytes.
    pub const VBIOS_VERSION: u16 = 6;
    /// NVDEC0 status (0x55 disabled, 0xAA enabled).
    pub const NVDEC0_STATUS: u16 = 11;
    /// Measurement counts, 4 bytes each.
    pub const MSRSCNT: u16 = 12;
    /// Board id.
    pub const BOARD_ID: u16 = 14;
    /// Chip SKU, ASCII.
    pub const CHIP_SKU: u16 = 15;
    /// Chip SKU modifier, ASCII.
    pub const CHIP_SKU_MOD: u16 = 16;
    /// Project, ASCII.
    pub const PROJECT: u16 = 17;
    /// Project SKU, ASCII.
    pub const PROJECT_SKU: u16 = 18;
    /// Project SKU modifier, ASCII.
    pub const PROJECT_SKU_MOD: u16 = 19;
    /// Firmware id: 48 bytes, equal to the last 48 bytes of the leaf certificate's TCG DICE FWID extension.
    pub const FWID: u16 = 20;
    /// Protected PCIe status.
    pub const PROTECTED_PCIE_STATUS: u16 = 21;
    /// Opaque data version.
    pub const OPAQUE_DATA_VERSION: u16 = 34;
    /// Feature flag, little-endian: 0 MPT (multi-GPU passthrough), 1 SPT (single-GPU passthrough), 2 PPCIe
    /// (protected PCIe), as NVIDIA's attestation SDK reads it (`OpaqueDataFeatureFlag`).
    pub const FEATURE_FLAG: u16 = 36;

    /// NVIDIA's name for a field type, when known.
    pub fn name(kind: u16) -> Option<&'static str> {
        Some(match kind {
            1 => "CERT_ISSUER_NAME",
            2 => "CERT_AUTHORITY_KEY_IDENTIFIER",
            3 => "DRIVER_VERSION",
            4 => "GPU_INFO",
            5 => "SKU",
            6 => "VBIOS_VERSION",
            7 => "MANUFACTURER_ID",
            8 => "TAMPER_DETECTION",
            9 => "SMC",
            10 => "VPR",
            11 => "NVDEC0_STATUS",
            12 => "MSRSCNT",
            13 => "CPRINFO",
            14 => "BOARD_ID",
            15 => "CHIP_SKU",
            16 => "CHIP_SKU_MOD",
            17 => "PROJECT",
            18 => "PROJECT_SKU",
            19 => "PROJECT_SKU_MOD",
            20 => "FWID",
            21 => "PROTECTED_PCIE_STATUS",
            22 => "SWITCH_PDI",
            23 => "FLOORSWEPT_PORTS",
            24 => "POSITION_ID",
            25 => "LOCK_SWITCH_STATUS",
            32 => "GPU_LINK_CONN",
            33 => "SYS_ENABLE_STATUS",
            34 => "OPAQUE_DATA_VERSION",
            35 => "CHIP_INFO",
            36 => "FEATURE_FLAG",
            _ => return None,
        })
    }
}

/// The SPDM `GET_MEASUREMENTS` request as the GPU received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpdmRequest {
    /// SPDM version (0x11 = 1.1).
    pub version: u8,
    /// Param1 (bit 0: signature requested).
    pub param1: u8,
    /// Param2 (0xFF: all measurements).
    pub param2: u8,
    /// The verifier's nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Slot of the certificate chain the GPU signs with.
    pub slot_id: u8,
}

/// One DMTF measurement block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasurementBlock {
    /// Block index (1-based; RIM index + 1).
    pub index: u8,
    /// DMTFSpecMeasurementValueType.
    pub value_type: u8,
    /// The measurement (48 bytes, SHA-384, on Hopper).
    pub value: Vec<u8>,
}

/// One opaque data field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpaqueField {
    /// Field type (see [`field`]).
    pub kind: u16,
    /// Field data.
    pub data: Vec<u8>,
}

/// A parsed GPU attestation report. Holds the raw bytes so the signature is checked over what was received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuReport {
    /// The request.
    pub request: SpdmRequest,
    /// Response SPDM version.
    pub response_version: u8,
    /// Response Param1, Param2.
    pub response_params: (u8, u8),
    /// Measurement blocks in report order.
    pub blocks: Vec<MeasurementBlock>,
    /// The responder's own nonce.
    pub response_nonce: [u8; NONCE_LEN],
    /// Opaque data fields in report order.
    pub opaque: Vec<OpaqueField>,
    /// ECDSA P-384 `r ‖ s`.
    pub signature: [u8; SIGNATURE_LEN],
    raw: Vec<u8>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], GpuError> {
        let rest = self.buf.len() - self.pos;
        if n > rest {
            return Err(parse_err(format!(
                "{}: {field} needs {n} bytes at offset {}, {rest} left",
                self.what, self.pos
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, field: &str) -> Result<u8, GpuError> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &str) -> Result<u16, GpuError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u24(&mut self, field: &str) -> Result<usize, GpuError> {
        let b = self.take(3, field)?;
        Ok(usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16)
    }
    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], GpuError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }
    fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }
    fn end(&self) -> Result<(), GpuError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(parse_err(format!(
                "{}: {} trailing byte(s) after offset {}",
                self.what,
                self.buf.len() - self.pos,
                self.pos
            )))
        }
    }
}

fn parse_err(detail: String) -> GpuError {
    GpuError::Parse { detail }
}

impl GpuReport {
    /// Parse a report (request ‖ response), rejecting missing and trailing bytes.
    pub fn parse(raw: &[u8]) -> Result<Self, GpuError> {
        let mut r = Reader::new(raw, "request");
        let version = r.u8("SPDMVersion")?;
        let code = r.u8("RequestResponseCode")?;
        let param1 = r.u8("Param1")?;
        let param2 = r.u8("Param2")?;
        let nonce = r.array::<NONCE_LEN>("Nonce")?;
        let slot_id = r.u8("SlotIDParam")?;
        if !matches!(version, 0x11 | 0x12) {
            return Err(parse_err(format!(
                "request: SPDM version {version:#04x}, expected 0x11 or 0x12"
            )));
        }
        if code != GET_MEASUREMENTS {
            return Err(parse_err(format!(
                "request: code {code:#04x}, expected GET_MEASUREMENTS (0xe0)"
            )));
        }
        if param1 & 1 == 0 {
            return Err(parse_err("request: Param1 does not ask for a signature".into()));
        }
        let request = SpdmRequest {
            version,
            param1,
            param2,
            nonce,
            slot_id,
        };

        let mut r = Reader::new(&raw[REQUEST_LEN..], "response");
        let response_version = r.u8("SPDMVersion")?;
        let code = r.u8("RequestResponseCode")?;
        let rp1 = r.u8("Param1")?;
        let rp2 = r.u8("Param2")?;
        let count = r.u8("NumberOfBlocks")?;
        let record_len = r.u24("MeasurementRecordLength")?;
        let record = r.take(record_len, "MeasurementRecord")?;
        let response_nonce = r.array::<NONCE_LEN>("Nonce")?;
        let opaque_len = usize::from(r.u16("OpaqueLength")?);
        let opaque_bytes = r.take(opaque_len, "OpaqueData")?;
        let signature = r.array::<SIGNATURE_LEN>("Signature")?;
        r.end()?;
        if response_version != version {
            return Err(parse_err(format!(
                "response: SPDM version {response_version:#04x} differs from the request's {version:#04x}"
            )));
        }
        if code != MEASUREMENTS {
            return Err(parse_err(format!(
                "response: code {code:#04x}, expected MEASUREMENTS (0x60)"
            )));
        }
        let blocks = parse_blocks(record, count)?;
        let opaque = parse_opaque(opaque_bytes)?;
        Ok(Self {
            request,
            response_version,
            response_params: (rp1, rp2),
            blocks,
            response_nonce,
            opaque,
            signature,
            raw: raw.to_vec(),
        })
    }

    /// Parse the hex text form NVIDIA's tools write (whitespace ignored).
    pub fn parse_hex(text: &str) -> Result<Self, GpuError> {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let raw = hex::decode(&compact).map_err(|e| parse_err(format!("not hex: {e}")))?;
        Self::parse(&raw)
    }

    /// The report as received.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The bytes the signature covers: request ‖ response without the signature.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..self.raw.len() - SIGNATURE_LEN]
    }

    /// The first opaque field of a type.
    pub fn opaque_field(&self, kind: u16) -> Option<&[u8]> {
        self.opaque.iter().find(|f| f.kind == kind).map(|f| f.data.as_slice())
    }

    /// The measurement block with this (1-based) index.
    pub fn block(&self, index: u8) -> Option<&MeasurementBlock> {
        self.blocks.iter().find(|b| b.index == index)
    }

    /// Driver version (`OPAQUE_FIELD_ID_DRIVER_VERSION`, NUL stripped), e.g. `550.90.07`.
    pub fn driver_version(&self) -> Option<String> {
        self.opaque_field(field::DRIVER_VERSION).map(ascii_field)
    }

    /// VBIOS version as NVIDIA prints it, e.g. `96.00.9F.00.01` (upper-case hex).
    pub fn vbios_version(&self) -> Option<String> {
        self.opaque_field(field::VBIOS_VERSION).and_then(format_vbios_version)
    }

    /// Firmware id (48 bytes) when the report carries one.
    pub fn fwid(&self) -> Option<&[u8]> {
        self.opaque_field(field::FWID)
    }

    /// Whether NVDEC0 is reported disabled (then RIM index 35 is not compared, as NVIDIA's verifier does).
    pub fn nvdec0_disabled(&self) -> bool {
        self.opaque_field(field::NVDEC0_STATUS) == Some(&[NVDEC0_DISABLED])
    }

    /// An ASCII opaque field (project, SKUs), NULs and spaces trimmed.
    pub fn ascii(&self, kind: u16) -> Option<String> {
        self.opaque_field(kind).map(ascii_field)
    }
}

fn ascii_field(data: &[u8]) -> String {
    String::from_utf8_lossy(data)
        .trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_string()
}

/// NVIDIA's VBIOS version text from the 8-byte field: the little-endian value's upper four bytes, then
/// its byte 3, as dot-separated hex pairs (`00 9f 00 96 01 00 00 00` → `96.00.9F.00.01`).
pub fn format_vbios_version(data: &[u8]) -> Option<String> {
    if data.len() < 2 || !data.len().is_multiple_of(2) {
        return None;
    }
    let hexes: Vec<String> = data.iter().rev().map(|b| format!("{b:02X}")).collect();
    let half = hexes.len() / 2;
    let mut parts = hexes[half..].to_vec();
    parts.push(hexes[half - 1].clone());
    Some(parts.join("."))
}

fn parse_blocks(record: &[u8], count: u8) -> Result<Vec<MeasurementBlock>, GpuError> {
    let mut r = Reader::new(record, "measurement record");
    let mut blocks: Vec<MeasurementBlock> = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let index = r.u8("Index")?;
        let spec = r.u8("MeasurementSpecification")?;
        if spec != DMTF_SPEC {
            return Err(parse_err(format!(
                "measurement block {index}: specification {spec}, expected 1 (DMTF)"
            )));
        }
        let size = usize::from(r.u16("MeasurementSize")?);
        let body = r.take(size, "Measurement")?;
        let mut m = Reader::new(body, "DMTF measurement");
        let value_type = m.u8("DMTFSpecMeasurementValueType")?;
        let value_size = usize::from(m.u16("DMTFSpecMeasurementValueSize")?);
        let value = m.take(value_size, "DMTFSpecMeasurementValue")?.to_vec();
        m.end()?;
        if blocks.iter().any(|b| b.index == index) {
            return Err(parse_err(format!("measurement block {index} appears twice")));
        }
        blocks.push(MeasurementBlock {
            index,
            value_type,
            value,
        });
    }
    r.end()?;
    Ok(blocks)
}

fn parse_opaque(data: &[u8]) -> Result<Vec<OpaqueField>, GpuError> {
    let mut r = Reader::new(data, "opaque data");
    let mut fields = Vec::new();
    while !r.is_empty() {
        let kind = r.u16("DataType")?;
        let size = usize::from(r.u16("DataSize")?);
        let data = r.take(size, "Data")?.to_vec();
        fields.push(OpaqueField { kind, data });
    }
    Ok(fields)
}

/// Encode a report (request ‖ response with `signature`); the inverse of [`GpuReport::parse`]. Used by the
/// mock GPU and by tests.
pub fn encode(
    request: &SpdmRequest,
    blocks: &[MeasurementBlock],
    response_nonce: &[u8; NONCE_LEN],
    opaque: &[OpaqueField],
) -> Result<Vec<u8>, GpuError> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(&[request.version, GET_MEASUREMENTS, request.param1, request.param2]);
    out.extend_from_slice(&request.nonce);
    out.push(request.slot_id);
    let mut record = Vec::new();
    for b in blocks {
        let value_len = u16::try_from(b.value.len()).map_err(|_| parse_err("measurement too long".into()))?;
        record.push(b.index);
        record.push(DMTF_SPEC);
        record.extend_from_slice(&(value_len + 3).to_le_bytes());
        record.push(b.value_type);
        record.extend_from_slice(&value_len.to_le_bytes());
        record.extend_from_slice(&b.value);
    }
    let count = u8::try_from(blocks.len()).map_err(|_| parse_err("too many blocks".into()))?;
    if record.len() >= 1 << 24 {
        return Err(parse_err("measurement record too long".into()));
    }
    let mut opaque_bytes = Vec::new();
    for f in opaque {
        let len = u16::try_from(f.data.len()).map_err(|_| parse_err("opaque field too long".into()))?;
        opaque_bytes.extend_from_slice(&f.kind.to_le_bytes());
        opaque_bytes.extend_from_slice(&len.to_le_bytes());
        opaque_bytes.extend_from_slice(&f.data);
    }
    let opaque_len = u16::try_from(opaque_bytes.len()).map_err(|_| parse_err("opaque data too long".into()))?;
    out.extend_from_slice(&[request.version, MEASUREMENTS, 0, 0, count]);
    out.extend_from_slice(&(record.len() as u32).to_le_bytes()[..3]);
    out.extend_from_slice(&record);
    out.extend_from_slice(response_nonce);
    out.extend_from_slice(&opaque_len.to_le_bytes());
    out.extend_from_slice(&opaque_bytes);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let req = SpdmRequest {
            version: 0x11,
            param1: 1,
            param2: 0xff,
            nonce: [7; 32],
            slot_id: 0,
        };
        let blocks = vec![
            MeasurementBlock {
                index: 1,
                value_type: 1,
                value: vec![1; 48],
            },
            MeasurementBlock {
                index: 2,
                value_type: 1,
                value: vec![2; 48],
            },
        ];
        let opaque = vec![
            OpaqueField {
                kind: field::DRIVER_VERSION,
                data: b"550.90.07\0".to_vec(),
            },
            OpaqueField {
                kind: field::VBIOS_VERSION,
                data: vec![0x00, 0x9f, 0x00, 0x96, 0x01, 0, 0, 0],
            },
        ];
        let mut raw = encode(&req, &blocks, &[9; 32], &opaque).unwrap();
        raw.extend_from_slice(&[0xab; SIGNATURE_LEN]);
        raw
    }

    #[test]
    fn encode_then_parse_is_identity() {
        let raw = sample();
        let r = GpuReport::parse(&raw).unwrap();
        assert_eq!(r.request.nonce, [7; 32]);
        assert_eq!(r.blocks.len(), 2);
        assert_eq!(r.block(2).unwrap().value, vec![2; 48]);
        assert_eq!(r.driver_version().as_deref(), Some("550.90.07"));
        assert_eq!(r.vbios_version().as_deref(), Some("96.00.9F.00.01"));
        assert_eq!(r.signed_bytes().len(), raw.len() - SIGNATURE_LEN);
        assert_eq!(r.raw(), raw.as_slice());
    }

    #[test]
    fn report_rejects_trailing_and_missing_bytes() {
        let raw = sample();
        let mut long = raw.clone();
        long.push(0);
        assert!(GpuReport::parse(&long).unwrap_err().to_string().contains("trailing"));
        for cut in [0, 10, REQUEST_LEN, REQUEST_LEN + 7, raw.len() - 1] {
            let e = GpuReport::parse(&raw[..cut]).unwrap_err();
            assert_eq!(e.check(), "gpu report parse", "{cut}: {e}");
        }
    }

    #[test]
    fn block_with_wrong_inner_size_is_refused() {
        let mut raw = sample();
        // first block's DMTF ValueSize: request 37 + response header 8 + index/spec/size 4 + type 1
        raw[REQUEST_LEN + 8 + 5] = 47;
        let e = GpuReport::parse(&raw).unwrap_err().to_string();
        assert!(e.contains("trailing"), "{e}");
    }

    #[test]
    fn any_prefix_of_any_bytes_never_panics() {
        let raw = sample();
        for i in 0..raw.len() {
            let mut m = raw.clone();
            m[i] ^= 0xff;
            let _ = GpuReport::parse(&m);
            let _ = GpuReport::parse(&raw[..i]);
        }
    }
}
