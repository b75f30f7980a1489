//! Splitting an image into blocks, and the deterministic block ids that make an upload resumable.

use super::UploadError;

/// Most blocks a block blob may have (Azure limit).
pub const MAX_BLOCKS: u64 = 50_000;
/// Largest block the service accepts (4000 MiB).
pub const MAX_BLOCK_SIZE: u64 = 4000 << 20;

/// How a file of `size` bytes is cut into blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockPlan {
    /// Total bytes.
    pub size: u64,
    /// Bytes per block (the last one may be shorter).
    pub block_size: u64,
}

impl BlockPlan {
    /// A plan with blocks of `block_size`, grown (doubled) when the file would need more than [`MAX_BLOCKS`].
    pub fn new(size: u64, block_size: u64) -> Result<Self, UploadError> {
        if block_size == 0 || block_size > MAX_BLOCK_SIZE {
            return Err(UploadError::Invalid(format!(
                "block size {block_size} must be between 1 byte and {MAX_BLOCK_SIZE} bytes"
            )));
        }
        let mut block_size = block_size;
        while size.div_ceil(block_size) > MAX_BLOCKS {
            block_size *= 2;
            if block_size > MAX_BLOCK_SIZE {
                return Err(UploadError::Invalid(format!(
                    "{size} bytes do not fit in {MAX_BLOCKS} blocks of at most {MAX_BLOCK_SIZE} bytes"
                )));
            }
        }
        Ok(Self { size, block_size })
    }

    /// Number of blocks (0 for an empty file).
    pub fn count(&self) -> u64 {
        self.size.div_ceil(self.block_size)
    }

    /// Offset and length of block `index`.
    pub fn block(&self, index: u64) -> (u64, u64) {
        let offset = index * self.block_size;
        (offset, self.block_size.min(self.size - offset))
    }
}

/// The id of block `index` with content MD5 `md5`: `cinfer-v1-<10-digit index>-<32 hex>` (53 bytes, the same
/// length for every block as the service requires, under its 64-byte limit).
pub fn block_id(index: u64, md5: &[u8; 16]) -> Vec<u8> {
    format!("cinfer-v1-{index:010}-{}", hex::encode(md5)).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_file_exactly() {
        let p = BlockPlan::new(10 * 1024 + 1, 1024).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.count(), 11);
        assert_eq!(p.block(0), (0, 1024));
        assert_eq!(p.block(10), (10 * 1024, 1));
        let total: u64 = (0..p.count()).map(|i| p.block(i).1).sum();
        assert_eq!(total, p.size);
        assert_eq!(BlockPlan::new(0, 1024).map(|p| p.count()).ok(), Some(0));
    }

    #[test]
    fn block_size_grows_past_the_block_limit() {
        let p = BlockPlan::new(MAX_BLOCKS * 4 + 1, 4).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.block_size, 8);
        assert!(p.count() <= MAX_BLOCKS);
        assert!(BlockPlan::new(1, 0).is_err());
        assert!(BlockPlan::new(u64::MAX, MAX_BLOCK_SIZE).is_err());
    }

    #[test]
    fn ids_have_one_length_and_name_index_and_content() {
        let a = block_id(0, &[0; 16]);
        let b = block_id(49_999, &[0xff; 16]);
        assert_eq!(a.len(), b.len());
        assert!(a.len() <= 64);
        assert_ne!(block_id(1, &[0; 16]), a);
        assert_ne!(block_id(0, &[1; 16]), a);
    }
}
