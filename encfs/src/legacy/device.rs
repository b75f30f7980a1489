//! Positional reads ([`ReadAt`]) and the decrypted view of a dm-crypt data segment ([`DecryptedDevice`]).
//!
//! [`ReadAt`] is the only I/O this module needs, so the image can come from a file, memory, or (through a small
//! blocking adapter) one of the daemon's blob sources. [`DecryptedDevice`] is what dm-crypt would have exposed as
//! `/dev/mapper/…`: it accepts reads of any offset and length, rounds them out to whole encryption sectors,
//! decrypts and copies the requested bytes.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::LegacyError;
use super::xts::{AesXts, IvMode, plain64_iv};

/// Largest ciphertext read at once (whole sectors); bigger requests are split.
const MAX_READ: usize = 1 << 20;

/// A byte-addressed, read-only image: the whole of `buf` is filled from `offset`, or an error is returned.
pub trait ReadAt: Send + Sync {
    /// Fills `buf` with the bytes at `offset..offset + buf.len()`; reading past the end is an error
    /// (`UnexpectedEof`).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Length of the image in bytes.
    fn size(&self) -> io::Result<u64>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Arc<T> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Box<T> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
}

/// Where and how a data segment is encrypted (the parameters of a dm-crypt table line).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct SegmentParams {
    /// Byte offset of the segment in the image.
    pub offset: u64,
    /// Segment length in bytes (a multiple of `sector_size`).
    pub size: u64,
    /// Encryption sector size: 512, 1024, 2048 or 4096.
    pub sector_size: u32,
    /// How sectors are numbered for the IV.
    pub iv_mode: IvMode,
    /// dm-crypt's IV offset, in 512-byte units (0 for LUKS2).
    pub iv_offset: u64,
}

/// The plaintext of an AES-XTS-plain64 data segment, readable at any offset (like `/dev/mapper/NAME`).
///
/// There is **no integrity**: XTS decrypts whatever ciphertext storage returns.
pub struct DecryptedDevice<R> {
    inner: R,
    xts: AesXts,
    params: SegmentParams,
}

impl<R> std::fmt::Debug for DecryptedDevice<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptedDevice")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl<R: ReadAt> DecryptedDevice<R> {
    /// A decrypted view of the segment described by `params` in `inner`, with the volume key `key` (32 or 64
    /// bytes). Refuses sector sizes dm-crypt refuses, and a segment size that is not whole sectors.
    pub fn new(inner: R, key: &[u8], params: SegmentParams) -> Result<Self, LegacyError> {
        let ss = params.sector_size;
        if !(512..=4096).contains(&ss) || !ss.is_power_of_two() {
            return Err(LegacyError::unsupported("sector size", ss.to_string()));
        }
        if !params.size.is_multiple_of(u64::from(ss)) || !params.offset.is_multiple_of(512) {
            return Err(LegacyError::header(format!(
                "segment offset {} / size {} not aligned to its {ss}-byte sectors",
                params.offset, params.size
            )));
        }
        Ok(Self {
            inner,
            xts: AesXts::new(key)?,
            params,
        })
    }

    /// The segment parameters.
    pub fn params(&self) -> SegmentParams {
        self.params
    }

    /// Decrypts whole sectors `buf` that start at segment-relative `offset` (a multiple of the sector size).
    fn decrypt_aligned(&self, buf: &mut [u8], offset: u64) {
        let ss = self.params.sector_size;
        let mut at = offset;
        for sector in buf.chunks_mut(ss as usize) {
            let iv = plain64_iv(at, ss, self.params.iv_mode, self.params.iv_offset);
            self.xts.decrypt_sector(sector, iv);
            at += u64::from(ss);
        }
    }
}

impl<R: ReadAt> ReadAt for DecryptedDevice<R> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.params.size)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let ss = u64::from(self.params.sector_size);
        // Fast path: whole sectors, decrypted in place in the caller's buffer.
        if offset.is_multiple_of(ss) && end.is_multiple_of(ss) {
            for (i, piece) in buf.chunks_mut(MAX_READ).enumerate() {
                let at = offset + (i * MAX_READ) as u64;
                self.inner.read_exact_at(piece, self.params.offset + at)?;
                self.decrypt_aligned(piece, at);
            }
            return Ok(());
        }
        let mut scratch = Vec::new();
        let mut pos = offset;
        let mut out = buf;
        while !out.is_empty() {
            let first = pos / ss * ss;
            let last = (pos + out.len() as u64).min(first + MAX_READ as u64).div_ceil(ss) * ss;
            let last = last.min(self.params.size);
            scratch.resize((last - first) as usize, 0);
            self.inner.read_exact_at(&mut scratch, self.params.offset + first)?;
            self.decrypt_aligned(&mut scratch, first);
            let skip = (pos - first) as usize;
            let n = (scratch.len() - skip).min(out.len());
            let (head, tail) = out.split_at_mut(n);
            head.copy_from_slice(&scratch[skip..skip + n]);
            out = tail;
            pos += n as u64;
        }
        zeroize::Zeroize::zeroize(&mut scratch);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.params.size)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn make(sector_size: u32, iv_mode: IvMode, iv_offset: u64) -> (Vec<u8>, DecryptedDevice<Vec<u8>>) {
        let key: Vec<u8> = (0..64u8).collect();
        let plain: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        let xts = AesXts::new(&key).unwrap();
        let mut image = vec![0xeeu8; 4096];
        let mut ct = plain.clone();
        for (i, s) in ct.chunks_mut(sector_size as usize).enumerate() {
            let iv = plain64_iv(i as u64 * u64::from(sector_size), sector_size, iv_mode, iv_offset);
            xts.encrypt_sector(s, iv);
        }
        image.extend_from_slice(&ct);
        let params = SegmentParams {
            offset: 4096,
            size: plain.len() as u64,
            sector_size,
            iv_mode,
            iv_offset,
        };
        (plain, DecryptedDevice::new(image, &key, params).unwrap())
    }

    #[test]
    fn reads_any_range_in_every_iv_mode() {
        for (ss, mode, ivo) in [
            (512, IvMode::Sectors512, 0),
            (4096, IvMode::Sectors512, 0),
            (4096, IvMode::LargeSectors, 0),
            (4096, IvMode::LargeSectors, 8),
            (1024, IvMode::Sectors512, 3),
        ] {
            let (plain, dev) = make(ss, mode, ivo);
            for (off, len) in [
                (0usize, 4096usize),
                (1, 1),
                (511, 2),
                (4095, 4098),
                (1000, 30000),
                (0, 65536),
            ] {
                let mut buf = vec![0u8; len];
                dev.read_exact_at(&mut buf, off as u64).unwrap();
                assert_eq!(buf, plain[off..off + len], "ss {ss} {mode:?} ivo {ivo} at {off}+{len}");
            }
            let mut buf = [0u8; 2];
            assert!(dev.read_exact_at(&mut buf, 65535).is_err());
        }
    }

    #[test]
    fn wrong_iv_mode_gives_garbage() {
        let (plain, dev) = make(4096, IvMode::LargeSectors, 0);
        let wrong = DecryptedDevice::new(
            dev.inner.clone(),
            &(0..64u8).collect::<Vec<_>>(),
            SegmentParams {
                iv_mode: IvMode::Sectors512,
                ..dev.params
            },
        )
        .unwrap();
        let mut buf = vec![0u8; 8192];
        wrong.read_exact_at(&mut buf, 0).unwrap();
        // Sector 0 has IV 0 either way; sector 1 differs (IV 1 vs 8).
        assert_eq!(buf[..4096], plain[..4096]);
        assert_ne!(buf[4096..], plain[4096..8192]);
    }
}
