//! LUKS2 headers: the binary header, its JSON metadata, and unlocking a keyslot.
//!
//! A LUKS2 image starts with two copies of the header (primary at 0, secondary right after it, at `hdr_size`).
//! Each copy is a 4096-byte binary header (big-endian fields, magic `LUKS\xba\xbe` or `SKUL\xba\xbe`) followed
//! by a NUL-terminated JSON area; a checksum (named in the header, SHA-256 in practice) covers both with the
//! checksum field zeroed. Like cryptsetup, [`Luks2Header::read`] checks both copies and uses the valid one with
//! the higher sequence id, so a damaged copy does not stop the mount.
//!
//! [`Luks2Header::parse`] is pure (bytes in, header out) and is the fuzzing entry point. Validation that depends
//! on what the reader implements (cipher, KDF, segment type) happens later, in [`Luks2Header::data_segment`] and
//! [`Luks2Header::unlock`], so an unsupported cipher is reported by name instead of as "no valid header".

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::LegacyError;
use super::af;
use super::device::{ReadAt, SegmentParams};
use super::kdf::{Argon2Variant, HashAlg, Kdf};
use super::xts::{AesXts, IvMode};

/// Magic of a primary LUKS header (LUKS1 and LUKS2).
pub const LUKS_MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
/// Magic of a secondary LUKS2 header.
pub(crate) const LUKS2_SECONDARY_MAGIC: [u8; 6] = *b"SKUL\xba\xbe";
/// Length of the binary part of a LUKS2 header.
pub const BINARY_HEADER_LEN: usize = 4096;
/// Largest LUKS2 header (binary + JSON) cryptsetup writes: 4 MiB.
pub(crate) const MAX_HEADER_SIZE: u64 = 4 << 20;
/// The offsets where cryptsetup looks for the secondary header when the primary is unusable.
pub(crate) const SECONDARY_OFFSETS: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x10_0000, 0x20_0000, 0x40_0000,
];
/// The only cipher implemented, for data segments and keyslot areas.
pub(crate) const SUPPORTED_CIPHER: &str = "aes-xts-plain64";

/// The LUKS version of an image, from its first bytes: `Some(1)`, `Some(2)`, … if it starts with the LUKS magic.
pub fn probe(prefix: &[u8]) -> Option<u16> {
    if prefix.len() < 8 || prefix[..6] != LUKS_MAGIC {
        return None;
    }
    Some(u16::from_be_bytes([prefix[6], prefix[7]]))
}

/// Which copy of the header was used.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum HeaderCopy {
    /// The copy at offset 0.
    Primary,
    /// The copy at `hdr_size`.
    Secondary,
}

/// A checksum-verified LUKS2 header copy with its parsed JSON metadata.
#[derive(Clone, Debug)]
pub struct Luks2Header {
    /// Which copy this is.
    pub copy: HeaderCopy,
    /// Its byte offset in the image.
    pub offset: u64,
    /// Header (binary + JSON area) size in bytes.
    pub hdr_size: u64,
    /// Sequence id: bumped on every metadata change; the higher valid copy wins.
    pub seqid: u64,
    /// The volume label.
    pub label: String,
    /// The volume UUID.
    pub uuid: String,
    /// The JSON metadata.
    pub metadata: Metadata,
}

/// The JSON metadata of a LUKS2 header (the fields this reader uses; unknown fields are ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct Metadata {
    /// Keyslots by id.
    pub keyslots: BTreeMap<u32, KeyslotJson>,
    /// Segments by id.
    pub segments: BTreeMap<u32, SegmentJson>,
    /// Digests by id.
    pub digests: BTreeMap<u32, DigestJson>,
    /// Global configuration.
    pub config: ConfigJson,
}

/// A keyslot as written in the JSON.
#[derive(Clone, Debug, Deserialize)]
pub struct KeyslotJson {
    /// Keyslot type (`luks2`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Size of the key it stores, in bytes.
    pub key_size: usize,
    /// Where the encrypted key material is.
    pub area: AreaJson,
    /// The passphrase KDF.
    pub kdf: KdfJson,
    /// The anti-forensic splitter.
    pub af: AfJson,
    /// 0 = ignore unless asked, 1 = normal, 2 = prefer.
    pub priority: Option<u8>,
}

/// A keyslot's area.
#[derive(Clone, Debug, Deserialize)]
pub struct AreaJson {
    /// Area type (`raw`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Byte offset in the image.
    #[serde(deserialize_with = "de_u64_str")]
    pub offset: u64,
    /// Byte length.
    #[serde(deserialize_with = "de_u64_str")]
    pub size: u64,
    /// Cipher of the key material.
    pub encryption: Option<String>,
    /// Key size of that cipher in bytes.
    pub key_size: Option<usize>,
}

/// A keyslot's KDF.
#[derive(Clone, Debug, Deserialize)]
pub struct KdfJson {
    /// `pbkdf2`, `argon2i` or `argon2id`.
    #[serde(rename = "type")]
    pub kind: String,
    /// PBKDF2 hash.
    pub hash: Option<String>,
    /// PBKDF2 iterations.
    pub iterations: Option<u32>,
    /// Argon2 time cost.
    pub time: Option<u32>,
    /// Argon2 memory cost in KiB.
    pub memory: Option<u32>,
    /// Argon2 parallelism.
    pub cpus: Option<u32>,
    /// Salt, base64.
    pub salt: String,
}

/// A keyslot's anti-forensic splitter.
#[derive(Clone, Debug, Deserialize)]
pub struct AfJson {
    /// Splitter type (`luks1`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Number of stripes.
    pub stripes: Option<u32>,
    /// Diffusion hash.
    pub hash: Option<String>,
}

/// A segment as written in the JSON.
#[derive(Clone, Debug, Deserialize)]
pub struct SegmentJson {
    /// Segment type (`crypt`; `linear` during reencryption).
    #[serde(rename = "type")]
    pub kind: String,
    /// Byte offset of the data in the image.
    #[serde(deserialize_with = "de_u64_str")]
    pub offset: u64,
    /// Byte length, or `dynamic` (to the end of the image).
    pub size: String,
    /// IV offset in 512-byte sectors.
    #[serde(default, deserialize_with = "de_opt_u64_str")]
    pub iv_tweak: Option<u64>,
    /// Cipher specification.
    pub encryption: Option<String>,
    /// Encryption sector size.
    pub sector_size: Option<u32>,
    /// dm-integrity parameters (authenticated encryption), if any.
    pub integrity: Option<serde_json::Value>,
    /// Segment flags (e.g. `backup-previous` during reencryption).
    #[serde(default)]
    pub flags: Vec<String>,
}

/// A volume key digest as written in the JSON.
#[derive(Clone, Debug, Deserialize)]
pub struct DigestJson {
    /// Digest type (`pbkdf2`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Keyslot ids it covers (as strings).
    pub keyslots: Vec<String>,
    /// Segment ids it covers (as strings).
    pub segments: Vec<String>,
    /// PBKDF2 hash.
    pub hash: Option<String>,
    /// PBKDF2 iterations.
    pub iterations: Option<u32>,
    /// Salt, base64.
    pub salt: String,
    /// The digest, base64.
    pub digest: String,
}

/// The `config` object.
#[derive(Clone, Debug, Deserialize)]
pub struct ConfigJson {
    /// Size of the JSON area in bytes.
    #[serde(deserialize_with = "de_u64_str")]
    pub json_size: u64,
    /// Size of the keyslots area in bytes.
    #[serde(default, deserialize_with = "de_opt_u64_str")]
    pub keyslots_size: Option<u64>,
    /// Persistent activation flags.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Requirements a reader must meet.
    pub requirements: Option<RequirementsJson>,
}

/// The `config.requirements` object.
#[derive(Clone, Debug, Deserialize)]
pub struct RequirementsJson {
    /// Requirements without which the volume must not be opened (e.g. `online-reencrypt-v2`).
    #[serde(default)]
    pub mandatory: Vec<String>,
}

fn de_u64_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    s.parse()
        .map_err(|_| serde::de::Error::custom(format!("not a decimal u64: {s:?}")))
}

fn de_opt_u64_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_u64_str(d).map(Some)
}

/// The volume key, zeroized on drop, never printed.
pub(crate) struct VolumeKey(Zeroizing<Vec<u8>>);

impl VolumeKey {
    /// The key bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VolumeKey({} bytes, redacted)", self.0.len())
    }
}

/// The data segment, validated: what [`super::DecryptedDevice`] needs, and the id digests refer to.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct DataSegment {
    /// Segment id in the JSON.
    pub id: u32,
    /// Byte offset in the image.
    pub offset: u64,
    /// Byte length, if fixed (`None`: `dynamic`, to the end of the image).
    pub size: Option<u64>,
    /// Encryption sector size.
    pub sector_size: u32,
    /// Volume key size in bytes.
    pub key_size: Option<usize>,
}

impl DataSegment {
    /// dm-crypt parameters for an image of `image_len` bytes.
    pub fn params(&self, image_len: u64) -> Result<SegmentParams, LegacyError> {
        let size = match self.size {
            Some(s) => s,
            None => {
                let avail = image_len
                    .checked_sub(self.offset)
                    .ok_or_else(|| LegacyError::header("data segment starts past the end of the image"))?;
                avail / u64::from(self.sector_size) * u64::from(self.sector_size)
            }
        };
        if self.offset.checked_add(size).is_none_or(|end| end > image_len) {
            return Err(LegacyError::header(format!(
                "data segment {}+{size} runs past the end of the image ({image_len} bytes)",
                self.offset
            )));
        }
        Ok(SegmentParams {
            offset: self.offset,
            size,
            sector_size: self.sector_size,
            // LUKS2 never sets iv_large_sectors (cryptsetup: "only for plain"), and its IV offset is 0.
            iv_mode: IvMode::Sectors512,
            iv_offset: 0,
        })
    }
}

impl Luks2Header {
    /// Parses one header copy: `area` holds at least the binary header and JSON area (`hdr_size` bytes).
    /// Checks magic, version, size, offset and checksum, and parses the JSON. Pure: no I/O.
    pub fn parse(area: &[u8]) -> Result<Self, LegacyError> {
        if area.len() < BINARY_HEADER_LEN {
            return Err(LegacyError::header("shorter than the 4096-byte binary header"));
        }
        let bin = &area[..BINARY_HEADER_LEN];
        let copy = match bin[..6].try_into() {
            Ok(LUKS_MAGIC) => HeaderCopy::Primary,
            Ok(LUKS2_SECONDARY_MAGIC) => HeaderCopy::Secondary,
            _ => return Err(LegacyError::NotLuks),
        };
        let be64 = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bin[at..at + 8]);
            u64::from_be_bytes(b)
        };
        match u16::from_be_bytes([bin[6], bin[7]]) {
            2 => {}
            1 => return Err(LegacyError::Luks1),
            version => return Err(LegacyError::UnsupportedVersion { version }),
        }
        let hdr_size = be64(8);
        if !(0x4000..=MAX_HEADER_SIZE).contains(&hdr_size) || !hdr_size.is_power_of_two() {
            return Err(LegacyError::header(format!(
                "header size {hdr_size} is not a LUKS2 header size"
            )));
        }
        let seqid = be64(16);
        let offset = be64(256);
        match copy {
            HeaderCopy::Primary if offset != 0 => {
                return Err(LegacyError::header(format!("primary header claims offset {offset}")));
            }
            HeaderCopy::Secondary if offset != hdr_size => {
                return Err(LegacyError::header(format!(
                    "secondary header at offset {offset}, expected {hdr_size}"
                )));
            }
            _ => {}
        }
        let full = area
            .get(..hdr_size as usize)
            .ok_or_else(|| LegacyError::header(format!("header truncated: {} of {hdr_size} bytes", area.len())))?;
        let csum_alg = HashAlg::parse(&c_string(&bin[72..104]))?;
        let mut copy_for_sum = full.to_vec();
        copy_for_sum[448..512].fill(0);
        let want = csum_alg.digest(&[&copy_for_sum]);
        let stored = &bin[448..512];
        if !bool::from(stored[..want.len()].ct_eq(&want)) || stored[want.len()..].iter().any(|&b| b != 0) {
            return Err(LegacyError::header("checksum mismatch"));
        }
        let json_area = &full[BINARY_HEADER_LEN..];
        let json_len = json_area.iter().position(|&b| b == 0).unwrap_or(json_area.len());
        let metadata: Metadata = serde_json::from_slice(&json_area[..json_len])
            .map_err(|e| LegacyError::header(format!("JSON metadata: {e}")))?;
        if metadata.config.json_size != hdr_size - BINARY_HEADER_LEN as u64 {
            return Err(LegacyError::header(format!(
                "config.json_size {} does not match header size {hdr_size}",
                metadata.config.json_size
            )));
        }
        Ok(Self {
            copy,
            offset,
            hdr_size,
            seqid,
            label: c_string(&bin[24..72]),
            uuid: c_string(&bin[168..208]),
            metadata,
        })
    }

    /// Reads both header copies from `image` and returns the valid one with the higher sequence id (the primary
    /// on a tie). Fails with [`LegacyError::Luks1`] / [`LegacyError::NotLuks`] early, and with
    /// [`LegacyError::NoValidHeader`] when neither copy verifies.
    pub fn read(image: &dyn ReadAt) -> Result<Self, LegacyError> {
        let image_len = image.size().map_err(|source| LegacyError::Io { offset: 0, source })?;
        let mut bin = [0u8; BINARY_HEADER_LEN];
        image
            .read_exact_at(&mut bin, 0)
            .map_err(|source| LegacyError::Io { offset: 0, source })?;
        // The primary magic decides the version; a smashed primary still leaves the secondary to try.
        match probe(&bin) {
            Some(1) => return Err(LegacyError::Luks1),
            Some(2) | None => {}
            Some(version) => return Err(LegacyError::UnsupportedVersion { version }),
        }
        let read_copy = |offset: u64| -> Result<Self, LegacyError> {
            let mut b = [0u8; BINARY_HEADER_LEN];
            image
                .read_exact_at(&mut b, offset)
                .map_err(|source| LegacyError::Io { offset, source })?;
            let size = u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
            if !(0x4000..=MAX_HEADER_SIZE).contains(&size) || offset.saturating_add(size) > image_len {
                // Let parse() produce the precise error from the binary header alone.
                return Self::parse(&b);
            }
            let mut area = vec![0u8; size as usize];
            image
                .read_exact_at(&mut area, offset)
                .map_err(|source| LegacyError::Io { offset, source })?;
            Self::parse(&area)
        };
        let primary = read_copy(0).and_then(|h| match h.copy {
            HeaderCopy::Primary => Ok(h),
            HeaderCopy::Secondary => Err(LegacyError::header("secondary magic at offset 0")),
        });
        let secondary_at: Vec<u64> = match &primary {
            Ok(p) => vec![p.hdr_size],
            Err(_) => SECONDARY_OFFSETS.to_vec(),
        };
        let mut secondary = Err(LegacyError::NotLuks);
        for off in secondary_at
            .into_iter()
            .filter(|&o| o + BINARY_HEADER_LEN as u64 <= image_len)
        {
            secondary = read_copy(off).and_then(|h| match h.copy {
                HeaderCopy::Secondary => Ok(h),
                HeaderCopy::Primary => Err(LegacyError::header(format!("primary magic at offset {off}"))),
            });
            if secondary.is_ok() {
                break;
            }
        }
        match (primary, secondary) {
            (Ok(p), Ok(s)) if s.seqid > p.seqid => Ok(s),
            (Ok(p), _) => Ok(p),
            (Err(_), Ok(s)) => Ok(s),
            // No magic at 0 and no secondary header anywhere: not LUKS at all.
            (Err(LegacyError::NotLuks), Err(LegacyError::NotLuks)) => Err(LegacyError::NotLuks),
            (Err(p), Err(s)) => Err(LegacyError::NoValidHeader {
                primary: p.to_string(),
                secondary: s.to_string(),
            }),
        }
    }

    /// The data segment, after checking everything this reader implements: one `crypt` segment (no reencryption
    /// in progress, no mandatory requirement), `aes-xts-plain64`, no dm-integrity, a valid sector size.
    pub fn data_segment(&self) -> Result<DataSegment, LegacyError> {
        let m = &self.metadata;
        if let Some(req) = &m.config.requirements
            && let Some(r) = req.mandatory.first()
        {
            return Err(LegacyError::unsupported("mandatory requirement", r.clone()));
        }
        let active: Vec<(&u32, &SegmentJson)> = m
            .segments
            .iter()
            .filter(|(_, s)| !s.flags.iter().any(|f| f.starts_with("backup-")))
            .collect();
        let (id, seg) = match active.as_slice() {
            [one] => *one,
            [] => return Err(LegacyError::header("no data segment")),
            _ => {
                return Err(LegacyError::unsupported(
                    "segments",
                    "several (reencryption in progress?)",
                ));
            }
        };
        if seg.kind != "crypt" {
            return Err(LegacyError::unsupported("segment type", seg.kind.clone()));
        }
        let cipher = seg.encryption.clone().unwrap_or_default();
        if cipher != SUPPORTED_CIPHER {
            return Err(LegacyError::UnsupportedCipher { cipher });
        }
        if let Some(integrity) = &seg.integrity {
            let kind = integrity.get("type").and_then(|t| t.as_str()).unwrap_or("?");
            return Err(LegacyError::unsupported("integrity (dm-integrity segment)", kind));
        }
        if let Some(t) = seg.iv_tweak.filter(|&t| t != 0) {
            return Err(LegacyError::unsupported("segment iv_tweak", t.to_string()));
        }
        let sector_size = seg.sector_size.unwrap_or(512);
        if !(512..=4096).contains(&sector_size) || !sector_size.is_power_of_two() {
            return Err(LegacyError::unsupported("sector size", sector_size.to_string()));
        }
        if !seg.offset.is_multiple_of(u64::from(sector_size)) {
            return Err(LegacyError::header(format!(
                "segment offset {} not sector-aligned",
                seg.offset
            )));
        }
        let size = match seg.size.as_str() {
            "dynamic" => None,
            s => Some(
                s.parse::<u64>()
                    .ok()
                    .filter(|n| n.is_multiple_of(u64::from(sector_size)))
                    .ok_or_else(|| LegacyError::header(format!("segment size {s:?}")))?,
            ),
        };
        let key_size = m
            .digests
            .values()
            .filter(|d| d.segments.iter().any(|s| s == &id.to_string()))
            .flat_map(|d| d.keyslots.iter())
            .filter_map(|k| k.parse::<u32>().ok())
            .filter_map(|k| m.keyslots.get(&k))
            .map(|k| k.key_size)
            .next();
        Ok(DataSegment {
            id: *id,
            offset: seg.offset,
            size,
            sector_size,
            key_size,
        })
    }

    /// Opens a keyslot of the data segment with `passphrase` (the whole key file, as `cryptsetup --key-file`
    /// takes it) and returns the volume key and the keyslot id. Keyslots are tried by priority (prefer, then
    /// normal; "ignore" slots never); a keyslot opens when the merged key matches the segment's digest.
    pub(crate) fn unlock(&self, image: &dyn ReadAt, passphrase: &[u8]) -> Result<(VolumeKey, u32), LegacyError> {
        let seg = self.data_segment()?;
        let m = &self.metadata;
        let seg_id = seg.id.to_string();
        let digests: Vec<&DigestJson> = m.digests.values().filter(|d| d.segments.contains(&seg_id)).collect();
        if digests.is_empty() {
            return Err(LegacyError::header("no digest for the data segment"));
        }
        let mut slots: Vec<(u32, &KeyslotJson)> = m
            .keyslots
            .iter()
            .filter(|(id, _)| digests.iter().any(|d| d.keyslots.contains(&id.to_string())))
            .filter(|(_, k)| k.priority != Some(0))
            .map(|(id, k)| (*id, k))
            .collect();
        slots.sort_by_key(|(id, k)| (std::cmp::Reverse(k.priority.unwrap_or(1)), *id));
        let mut unsupported = None;
        let mut tried = 0usize;
        for (id, slot) in slots {
            let key = match self.open_keyslot(image, slot, passphrase) {
                Ok(k) => k,
                Err(e @ (LegacyError::Unsupported { .. } | LegacyError::UnsupportedCipher { .. })) => {
                    tracing::debug!(keyslot = id, error = %e, "skipping keyslot");
                    unsupported.get_or_insert(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            tried += 1;
            for d in digests.iter().filter(|d| d.keyslots.contains(&id.to_string())) {
                if verify_digest(d, &key)? {
                    return Ok((VolumeKey(key), id));
                }
            }
        }
        match unsupported {
            Some(e) if tried == 0 => Err(e),
            _ => Err(LegacyError::WrongKey),
        }
    }

    /// Derives the area key from the passphrase, decrypts the keyslot material and merges it.
    fn open_keyslot(
        &self,
        image: &dyn ReadAt,
        slot: &KeyslotJson,
        passphrase: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, LegacyError> {
        if slot.kind != "luks2" {
            return Err(LegacyError::unsupported("keyslot type", slot.kind.clone()));
        }
        if slot.area.kind != "raw" {
            return Err(LegacyError::unsupported("keyslot area type", slot.area.kind.clone()));
        }
        let cipher = slot.area.encryption.clone().unwrap_or_default();
        if cipher != SUPPORTED_CIPHER {
            return Err(LegacyError::UnsupportedCipher { cipher });
        }
        if slot.af.kind != "luks1" {
            return Err(LegacyError::unsupported("af type", slot.af.kind.clone()));
        }
        let af_hash = HashAlg::parse(slot.af.hash.as_deref().unwrap_or("sha256"))?;
        let stripes = slot.af.stripes.unwrap_or(4000);
        if stripes == 0 || stripes > af::MAX_STRIPES || !(16..=64).contains(&slot.key_size) {
            return Err(LegacyError::header(format!(
                "keyslot key size {} / stripes {stripes}",
                slot.key_size
            )));
        }
        let kdf = kdf_of(&slot.kdf)?;
        let area_key_size = slot.area.key_size.unwrap_or(slot.key_size);
        // Check the area before spending time in the KDF.
        let len = af::material_len(slot.key_size, stripes);
        if len as u64 > slot.area.size || slot.area.offset < self.hdr_size * 2 {
            return Err(LegacyError::header(format!(
                "keyslot area {}+{} cannot hold {len} bytes of key material",
                slot.area.offset, slot.area.size
            )));
        }
        let mut area_key = Zeroizing::new(vec![0u8; area_key_size]);
        kdf.derive(passphrase, &mut area_key)?;
        let xts = AesXts::new(&area_key)?;
        let mut material = Zeroizing::new(vec![0u8; len]);
        image
            .read_exact_at(&mut material, slot.area.offset)
            .map_err(|source| LegacyError::Io {
                offset: slot.area.offset,
                source,
            })?;
        // Keyslot areas are always 512-byte sectors with IVs from 0, relative to the area.
        xts.decrypt_sectors(&mut material, 512, 0, 1);
        af::merge(&material, slot.key_size, stripes, af_hash)
    }
}

fn kdf_of(k: &KdfJson) -> Result<Kdf, LegacyError> {
    let salt = b64(&k.salt, "kdf salt")?;
    let missing = |f: &str| LegacyError::header(format!("kdf {} without {f}", k.kind));
    match k.kind.as_str() {
        "pbkdf2" => Ok(Kdf::Pbkdf2 {
            hash: HashAlg::parse(k.hash.as_deref().ok_or_else(|| missing("hash"))?)?,
            iterations: k.iterations.filter(|&i| i > 0).ok_or_else(|| missing("iterations"))?,
            salt,
        }),
        "argon2i" | "argon2id" => Ok(Kdf::Argon2 {
            variant: if k.kind == "argon2i" {
                Argon2Variant::Argon2i
            } else {
                Argon2Variant::Argon2id
            },
            time: k.time.ok_or_else(|| missing("time"))?,
            memory_kib: k.memory.ok_or_else(|| missing("memory"))?,
            cpus: k.cpus.ok_or_else(|| missing("cpus"))?,
            salt,
        }),
        other => Err(LegacyError::unsupported("kdf", other)),
    }
}

fn verify_digest(d: &DigestJson, key: &[u8]) -> Result<bool, LegacyError> {
    if d.kind != "pbkdf2" {
        return Err(LegacyError::unsupported("digest type", d.kind.clone()));
    }
    let hash = HashAlg::parse(d.hash.as_deref().unwrap_or("sha256"))?;
    let iterations = d
        .iterations
        .filter(|&i| i > 0)
        .ok_or_else(|| LegacyError::header("digest without iterations"))?;
    let salt = b64(&d.salt, "digest salt")?;
    let want = b64(&d.digest, "digest")?;
    if want.is_empty() || want.len() > 64 {
        return Err(LegacyError::header(format!("digest of {} bytes", want.len())));
    }
    let mut got = Zeroizing::new(vec![0u8; want.len()]);
    hash.pbkdf2(key, &salt, iterations, &mut got);
    Ok(bool::from(got.ct_eq(&want)))
}

fn b64(s: &str, what: &str) -> Result<Vec<u8>, LegacyError> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| LegacyError::header(format!("{what}: {e}")))
}

/// A NUL-terminated string field.
fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A minimal, checksummed header copy around `json`.
    fn header(magic: [u8; 6], version: u16, offset: u64, json: &str) -> Vec<u8> {
        let size = 0x4000usize;
        let mut h = vec![0u8; size];
        h[..6].copy_from_slice(&magic);
        h[6..8].copy_from_slice(&version.to_be_bytes());
        h[8..16].copy_from_slice(&(size as u64).to_be_bytes());
        h[16..24].copy_from_slice(&7u64.to_be_bytes());
        h[72..78].copy_from_slice(b"sha256");
        h[256..264].copy_from_slice(&offset.to_be_bytes());
        h[4096..4096 + json.len()].copy_from_slice(json.as_bytes());
        let sum = HashAlg::Sha256.digest(&[&h]);
        h[448..480].copy_from_slice(&sum);
        h
    }

    const JSON: &str = r#"{"keyslots":{},"tokens":{},"segments":{"0":{"type":"crypt","offset":"16777216",
        "size":"dynamic","iv_tweak":"0","encryption":"serpent-xts-plain64","sector_size":4096}},
        "digests":{},"config":{"json_size":"12288","keyslots_size":"16744448"}}"#;

    #[test]
    fn parses_a_checksummed_copy_and_refuses_a_flipped_bit() {
        let h = header(LUKS_MAGIC, 2, 0, JSON);
        let p = Luks2Header::parse(&h).unwrap();
        assert_eq!(p.copy, HeaderCopy::Primary);
        assert_eq!(p.seqid, 7);
        assert_eq!(p.metadata.segments[&0].offset, 16_777_216);
        let mut bad = h;
        bad[5000] ^= 1;
        assert!(Luks2Header::parse(&bad).unwrap_err().to_string().contains("checksum"));
    }

    #[test]
    fn names_the_unsupported_cipher_and_luks1() {
        let p = Luks2Header::parse(&header(LUKS_MAGIC, 2, 0, JSON)).unwrap();
        assert_eq!(
            p.data_segment().unwrap_err().to_string(),
            "unsupported cipher serpent-xts-plain64: only aes-xts-plain64 is supported"
        );
        assert!(matches!(
            Luks2Header::parse(&header(LUKS_MAGIC, 1, 0, JSON)),
            Err(LegacyError::Luks1)
        ));
        assert_eq!(probe(&header(LUKS_MAGIC, 1, 0, JSON)), Some(1));
        assert_eq!(probe(b"hello world"), None);
    }

    #[test]
    fn secondary_copy_must_sit_at_hdr_size() {
        let h = header(LUKS2_SECONDARY_MAGIC, 2, 0x4000, JSON);
        assert_eq!(Luks2Header::parse(&h).unwrap().copy, HeaderCopy::Secondary);
        let h = header(LUKS2_SECONDARY_MAGIC, 2, 0x8000, JSON);
        assert!(Luks2Header::parse(&h).is_err());
    }

    #[test]
    fn read_falls_back_to_the_secondary_copy() {
        let mut image = header(LUKS_MAGIC, 2, 0, JSON);
        image.extend(header(LUKS2_SECONDARY_MAGIC, 2, 0x4000, JSON));
        image.resize(1 << 20, 0);
        assert_eq!(Luks2Header::read(&image).unwrap().copy, HeaderCopy::Primary);
        image[4200] ^= 0xff; // JSON of the primary
        assert_eq!(Luks2Header::read(&image).unwrap().copy, HeaderCopy::Secondary);
        image[0x4000 + 4200] ^= 0xff;
        let err = Luks2Header::read(&image).unwrap_err().to_string();
        assert!(err.starts_with("no valid LUKS2 header"), "{err}");
    }
}
