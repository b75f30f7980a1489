//! Where each file's chunks are. Nothing of this is stored: it follows from the file sizes in index order, so
//! the index and the layout can never disagree.

use super::{FormatError, HEADER_LEN, Header, Index, TAG_LEN};
use crate::format::EntryKind;

/// Placement of one file's chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLayout {
    /// Plaintext size.
    pub size: u64,
    /// Global index of the file's first chunk.
    pub first_chunk: u64,
    /// Number of chunks (0 for an empty file).
    pub chunk_count: u64,
    /// Byte offset of the first sealed chunk in the image.
    pub data_offset: u64,
}

/// One chunk of a file, located.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLoc {
    /// Global chunk index (nonce and associated data).
    pub index: u64,
    /// Byte offset of the sealed chunk in the image.
    pub offset: u64,
    /// Sealed length (plaintext + tag).
    pub sealed_len: u64,
    /// Offset of the chunk's first plaintext byte within the file.
    pub file_offset: u64,
    /// Plaintext length.
    pub plain_len: u64,
}

impl FileLayout {
    /// Locates chunk `n` of this file (`n < chunk_count`).
    pub fn chunk(&self, n: u64, chunk_size: u32) -> ChunkLoc {
        let cs = u64::from(chunk_size);
        let file_offset = n * cs;
        let plain_len = (self.size - file_offset).min(cs);
        ChunkLoc {
            index: self.first_chunk + n,
            offset: self.data_offset + n * (cs + TAG_LEN as u64),
            sealed_len: plain_len + TAG_LEN as u64,
            file_offset,
            plain_len,
        }
    }

    /// The chunks (numbers within the file) covering plaintext bytes `[offset, offset + len)`, clipped to the file.
    pub fn chunks_covering(&self, offset: u64, len: u64, chunk_size: u32) -> std::ops::Range<u64> {
        let cs = u64::from(chunk_size);
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return 0..0;
        }
        (offset / cs)..end.div_ceil(cs)
    }
}

/// The layout of every file of an image, by entry number.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    files: Vec<Option<FileLayout>>,
}

impl Layout {
    /// Computes the layout from the index and checks it against the header's chunk count and index offset.
    pub fn compute(header: &Header, index: &Index) -> Result<Self, FormatError> {
        let cs = u64::from(header.chunk_size);
        let overflow = || FormatError::corrupt("index", "file sizes overflow the image");
        let mut offset = HEADER_LEN as u64;
        let mut chunk = 0u64;
        let mut files = Vec::with_capacity(index.entries.len());
        for e in &index.entries {
            if let EntryKind::File { size, .. } = e.kind {
                let n = size.div_ceil(cs);
                let sealed = n
                    .checked_mul(TAG_LEN as u64)
                    .and_then(|t| t.checked_add(size))
                    .ok_or_else(overflow)?;
                files.push(Some(FileLayout {
                    size,
                    first_chunk: chunk,
                    chunk_count: n,
                    data_offset: offset,
                }));
                offset = offset.checked_add(sealed).ok_or_else(overflow)?;
                chunk = chunk.checked_add(n).ok_or_else(overflow)?;
            } else {
                files.push(None);
            }
        }
        if chunk != header.chunk_count {
            return Err(FormatError::corrupt(
                "index",
                format!("index implies {chunk} chunks, header declares {}", header.chunk_count),
            ));
        }
        if offset != header.index_offset {
            return Err(FormatError::corrupt(
                "index",
                format!(
                    "index implies data ends at {offset}, header puts the index at {}",
                    header.index_offset
                ),
            ));
        }
        Ok(Self { files })
    }

    /// The layout of entry `entry` if it is a regular file.
    pub fn file(&self, entry: usize) -> Option<&FileLayout> {
        self.files.get(entry).and_then(Option::as_ref)
    }
}
