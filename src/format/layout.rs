//! Offset arithmetic of a data file: pure functions of the slot size and extent size.
//!
//! A data file is `object header (32) || slot[0] || slot[1] || …`; slot `b` holds plaintext
//! bytes `b*4096 .. (b+1)*4096`. Extent `e` covers blocks `e*B .. (e+1)*B` with
//! `B = extent_size / 4096`. A slot that was never written is a hole (reads as zeros when the
//! store says the block was never written).

use super::OBJECT_HEADER_LEN;
const BLOCK: u64 = crate::crypto::BLOCK_SIZE as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    slot_size: u64,
    blocks_per_extent: u64,
}

impl Layout {
    /// `slot_size` bytes per stored block; extents of `1 << extent_shift` bytes.
    pub fn new(slot_size: usize, extent_shift: u8) -> Self {
        debug_assert!(extent_shift >= 12);
        Layout { slot_size: slot_size as u64, blocks_per_extent: (1u64 << extent_shift) / BLOCK }
    }

    pub fn slot_size(&self) -> u64 {
        self.slot_size
    }

    pub fn blocks_per_extent(&self) -> u64 {
        self.blocks_per_extent
    }

    /// File offset of slot `block`.
    pub fn slot_offset(&self, block: u64) -> u64 {
        OBJECT_HEADER_LEN as u64 + block * self.slot_size
    }

    /// The extent holding `block`, and the block's index inside it.
    pub fn extent_of(&self, block: u64) -> (u64, usize) {
        (block / self.blocks_per_extent, (block % self.blocks_per_extent) as usize)
    }

    /// First block of extent `extent`.
    pub fn first_block(&self, extent: u64) -> u64 {
        extent * self.blocks_per_extent
    }

    /// Blocks needed to hold `size` plaintext bytes.
    pub fn blocks_for(size: u64) -> u64 {
        size.div_ceil(BLOCK)
    }

    /// Extents needed to hold `size` plaintext bytes.
    pub fn extents_for(&self, size: u64) -> u64 {
        Self::blocks_for(size).div_ceil(self.blocks_per_extent)
    }

    /// Data file length when slots `0..blocks` are present.
    pub fn physical_len(&self, blocks: u64) -> u64 {
        self.slot_offset(blocks)
    }

    /// The blocks a byte range `offset .. offset+len` touches (`len > 0`).
    pub fn block_range(offset: u64, len: u64) -> std::ops::Range<u64> {
        offset / BLOCK..(offset + len).div_ceil(BLOCK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_sizes() {
        let l = Layout::new(4124, 16); // 16 blocks per extent
        for size in 0u64..10_000 {
            let blocks = Layout::blocks_for(size);
            assert!(blocks * BLOCK >= size && (blocks == 0 || (blocks - 1) * BLOCK < size));
            assert_eq!(l.extents_for(size), blocks.div_ceil(16));
            if size > 0 {
                let r = Layout::block_range(size - 1, 1);
                assert_eq!(r.end - r.start, 1);
                assert_eq!(r.start, (size - 1) / BLOCK);
            }
        }
        assert_eq!(l.slot_offset(0), 32);
        assert_eq!(l.slot_offset(2), 32 + 2 * 4124);
        assert_eq!(l.extent_of(17), (1, 1));
        assert_eq!(l.first_block(3), 48);
        assert_eq!(Layout::block_range(4095, 2), 0..2);
        assert_eq!(Layout::block_range(4096, 4096), 1..2);
    }
}
