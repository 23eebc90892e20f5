//! Format 2 ("pages"): where each block of an extent lives and what authenticates it.
//!
//! A format-2 data file is `object header (32), zeros to 4096 || extent areas`, every block
//! a whole 4 KiB page at a page-aligned offset. Each block has two pages, slot 0 and slot 1;
//! a rewrite of a block whose current slot the store names goes to the other slot, so the
//! page the store names is never written until a commit names the other one (FORMAT.md
//! §5a). Block `i` of extent `e` is at page `base + slot(i) * stride + i`; [`Placement`]
//! gives `base` and `stride`, by the file record's cipher code:
//!
//! - code 4, [`Placement::Groups`] (every file made now): extents in groups of 1, 2, 4, …
//!   512 extents, then 1024 each; a group's slot-0 pages first, back to back across its
//!   extents, then its slot-1 pages. A file written once is one contiguous run per group,
//!   like a plain file, and the kernel's own readahead serves a sequential reader.
//! - code 3, [`Placement::Pairs`] (files made before code 4, still read and written): each
//!   extent's slot 1 right after its slot 0.
//!
//! Either way extent `e` owns `2 * B` pages, all its predecessors' before them, so extent
//! areas never overlap. The nonce and tag of each block live here, in the store row, not in
//! the data file.
//!
//! The table's stored bytes (the `written` column of a format-2 extent row):
//! `u64le base || written bits || slot bits || n × (nonce 12 || tag 16)`, `n` one past the
//! highest written block (the seals after it are all zero and left out).

use super::WrittenBits;
use crate::crypto::{GCM_SIV_NONCE, GCM_SIV_TAG};

/// The cipher code of a format-2 file's record whose extents are placed in pairs (code 3,
/// [`Placement::Pairs`]).
pub const PAGES_CODE: u8 = 3;
/// The cipher code of a format-2 file's record whose extents are placed in groups (code 4,
/// [`Placement::Groups`]): every format-2 file made now.
pub const GROUPS_CODE: u8 = 4;
/// The largest group of extents [`Placement::Groups`] makes (1 GiB of 1 MiB extents): a
/// block's two pages stay close, and a file's offsets stay near twice its size.
const MAX_GROUP: u64 = 1024;

/// Where a format-2 file's extent areas are, relative to the file's first area page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Code 3: extent `e`'s slot 0 at `2·B·e`, its slot 1 right after.
    Pairs,
    /// Code 4: extent `e` in group `g` (groups of 1, 2, 4, … 512 extents, then [`MAX_GROUP`]
    /// each): the group's slot-0 pages back to back, then its slot-1 pages.
    Groups,
}

impl Placement {
    /// The placement of a record's cipher code (`None`: not a format-2 record).
    pub fn of_code(code: u8) -> Option<Placement> {
        match code {
            PAGES_CODE => Some(Placement::Pairs),
            GROUPS_CODE => Some(Placement::Groups),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Placement::Pairs => PAGES_CODE,
            Placement::Groups => GROUPS_CODE,
        }
    }

    /// The first extent of `e`'s group and the group's size in extents.
    pub fn group(self, e: u64) -> (u64, u64) {
        match self {
            Placement::Pairs => (e, 1),
            Placement::Groups if e < MAX_GROUP - 1 => {
                let size = 1 << (e + 1).ilog2();
                (size - 1, size)
            }
            // (No `e + 1`: fsck asks for the stride of an extent index read from a row before
            // its MAC is checked, and u64::MAX must not overflow.)
            Placement::Groups => (e - (e - (MAX_GROUP - 1)) % MAX_GROUP, MAX_GROUP),
        }
    }

    /// Pages from the file's first area page to extent `e`'s slot-0 page of block 0 (each
    /// extent before `e` owns `2·B` pages, and those of `e`'s group before it `B` more).
    pub fn offset(self, e: u64, blocks: u64) -> u64 {
        let (first, _) = self.group(e);
        blocks * (first + e)
    }

    /// Pages from a block's slot-0 page to its slot-1 page, in extent `e`.
    pub fn stride(self, e: u64, blocks: u64) -> u64 {
        self.group(e).1 * blocks
    }

    /// The table of a new extent `e` of a file whose first area page is `first_page`.
    pub fn new_table(self, first_page: u64, e: u64, blocks: u64) -> BlockTable {
        BlockTable::new(first_page + self.offset(e, blocks), blocks, self.stride(e, blocks))
    }
}
/// Bytes of one block's seal (nonce and tag) in the table.
pub const SEAL_LEN: usize = GCM_SIV_NONCE + GCM_SIV_TAG;
/// Bytes of the header page before the first extent area.
pub const PAGE: u64 = 4096;

/// The largest format-2 file (1 EiB), the highest first page `upgrade` places a converted
/// file's extents at, and the highest base page a table may name: an extent's base is at
/// most `2^48 + 2·B·e ≤ 2^48 + 2^49`, its pages below `MAX_BASE + stride + B ≤ MAX_BASE +
/// 2^23` (B at most 2^12, a stride at most 2^10·B), their offsets (times 4096) below
/// `i64::MAX`, so no page arithmetic wraps.
pub const MAX_PAGES_SIZE: u64 = 1 << 60;
pub const MAX_FIRST_PAGE: u64 = 1 << 48;
pub const MAX_BASE: u64 = 1 << 50;

/// One block's seal.
pub type Seal = [u8; SEAL_LEN];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockTable {
    base: u64,
    /// Pages from slot 0 to slot 1 ([`Placement::stride`]; not encoded).
    stride: u64,
    written: WrittenBits,
    slot: WrittenBits,
    seals: Vec<u8>,
    /// What the store holds (not encoded): the written and slot bits of the last commit,
    /// and the seals it holds for the blocks recorded since (`touched`), what
    /// [`BlockTable::revert`] puts back. Only those: a copy of every seal at each load and
    /// commit cost a 512 MiB file 3.6 MiB of copying per open.
    durable_written: WrittenBits,
    durable_slot: WrittenBits,
    touched: WrittenBits,
    durable_seals: Vec<(usize, Seal)>,
}

impl BlockTable {
    /// About the bytes this table holds in memory.
    pub fn heap_bytes(&self) -> usize {
        let bits = self.written.as_bytes().len();
        // Five bitmaps: written, slot, and the durable written, slot and touched.
        self.seals.len() + 5 * bits + self.durable_seals.len() * std::mem::size_of::<(usize, Seal)>()
    }

    /// An empty table whose area starts at page `base`, slot 1 `stride` pages after slot 0.
    pub fn new(base: u64, blocks: u64, stride: u64) -> Self {
        BlockTable {
            base,
            stride,
            written: WrittenBits::new(blocks),
            slot: WrittenBits::new(blocks),
            seals: vec![0; blocks as usize * SEAL_LEN],
            durable_written: WrittenBits::new(blocks),
            durable_slot: WrittenBits::new(blocks),
            touched: WrittenBits::new(blocks),
            durable_seals: Vec::new(),
        }
    }

    /// Bytes a table of `blocks` blocks whose highest written block is `n - 1` encodes to.
    pub fn encoded_len(blocks: u64, n: usize) -> usize {
        8 + 2 * blocks.div_ceil(8) as usize + n * SEAL_LEN
    }

    /// One past the highest written block (0: none).
    fn seals_kept(&self) -> usize {
        (0..self.blocks()).rev().find(|&i| self.written.get(i)).map_or(0, |i| i + 1)
    }

    /// Decodes the store's bytes (taken as durable) of a table whose slot 1 is `stride` pages
    /// after slot 0; `None` unless they are the one encoding of a table (seals up to the
    /// highest written block exactly).
    pub fn from_bytes(bytes: &[u8], blocks: u64, stride: u64) -> Option<Self> {
        let bits = blocks.div_ceil(8) as usize;
        let rest = bytes.len().checked_sub(8 + 2 * bits)?;
        let n = rest / SEAL_LEN;
        if rest % SEAL_LEN != 0 || n as u64 > blocks {
            return None;
        }
        let base = u64::from_le_bytes(bytes[..8].try_into().ok()?);
        if base == 0 || base > MAX_BASE {
            return None; // page 0 is the header's; beyond MAX_BASE offsets could wrap
        }
        let written = WrittenBits::from_bytes(bytes[8..8 + bits].to_vec(), blocks)?;
        let slot = WrittenBits::from_bytes(bytes[8 + bits..8 + 2 * bits].to_vec(), blocks)?;
        let mut seals = bytes[8 + 2 * bits..].to_vec();
        seals.resize(blocks as usize * SEAL_LEN, 0);
        let table_n = (0..blocks as usize).rev().find(|&i| written.get(i)).map_or(0, |i| i + 1);
        if table_n != n {
            return None;
        }
        Some(BlockTable {
            base,
            stride,
            durable_written: written.clone(),
            durable_slot: slot.clone(),
            touched: WrittenBits::new(blocks),
            durable_seals: Vec::new(),
            written,
            slot,
            seals,
        })
    }

    /// The stored bytes: the seals of blocks past the highest written one (all zero) are
    /// left out, so a small file's row is small.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.seals_kept();
        let mut out = Vec::with_capacity(8 + 2 * self.written.as_bytes().len() + n * SEAL_LEN);
        out.extend_from_slice(&self.base.to_le_bytes());
        out.extend_from_slice(self.written.as_bytes());
        out.extend_from_slice(self.slot.as_bytes());
        out.extend_from_slice(&self.seals[..n * SEAL_LEN]);
        out
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    /// Pages from slot 0 to slot 1.
    pub fn stride(&self) -> u64 {
        self.stride
    }

    pub fn written(&self) -> &WrittenBits {
        &self.written
    }

    fn blocks(&self) -> usize {
        self.seals.len() / SEAL_LEN
    }

    /// The page block `i` is read from now.
    pub fn page(&self, i: usize) -> u64 {
        self.base + u64::from(self.slot.get(i)) * self.stride + i as u64
    }

    pub fn seal(&self, i: usize) -> &Seal {
        self.seals[i * SEAL_LEN..(i + 1) * SEAL_LEN].try_into().expect("SEAL_LEN bytes")
    }

    /// The slot a new version of block `i` goes to: never the one the store names.
    fn write_slot(&self, i: usize) -> bool {
        let now = self.slot.get(i);
        if self.durable_written.get(i) && self.durable_slot.get(i) == now {
            !now
        } else {
            now
        }
    }

    /// The page a new version of block `i` goes to.
    pub fn page_for_write(&self, i: usize) -> u64 {
        self.base + u64::from(self.write_slot(i)) * self.stride + i as u64
    }

    /// Block `i` now holds the ciphertext sealed as `seal`, written at `page_for_write(i)`.
    pub fn record(&mut self, i: usize, seal: &Seal) {
        let slot = self.write_slot(i);
        if !self.touched.get(i) {
            self.touched.set(i);
            self.durable_seals.push((i, *self.seal(i)));
        }
        self.slot.set_to(i, slot);
        self.written.set(i);
        self.seals[i * SEAL_LEN..(i + 1) * SEAL_LEN].copy_from_slice(seal);
    }

    /// Blocks `from..` are no longer written (a truncation); their seals are cleared.
    pub fn clear_from(&mut self, from: usize) {
        for i in from..self.blocks() {
            if !self.touched.get(i) && self.durable_written.get(i) {
                self.touched.set(i);
                self.durable_seals.push((i, *self.seal(i)));
            }
        }
        self.written.clear_from(from);
        self.slot.clear_from(from);
        self.seals[from * SEAL_LEN..].fill(0);
    }

    /// The store now holds this table as it is.
    pub fn committed(&mut self) {
        self.durable_written = self.written.clone();
        self.durable_slot = self.slot.clone();
        // A block is touched exactly when its store seal is kept: none kept, none touched.
        if !self.durable_seals.is_empty() {
            self.touched.clear_from(0);
            self.durable_seals.clear();
        }
    }

    /// A write to block `i`'s current page failed part-way (its page may be torn): the block
    /// goes back to what the store holds for it (or to a hole if the store holds none), so
    /// it never reads as a torn page nor is committed as one.
    pub fn revert(&mut self, i: usize) {
        self.written.set_to(i, self.durable_written.get(i));
        self.slot.set_to(i, self.durable_slot.get(i));
        // A block not recorded since the commit still has the seal the store holds.
        if let Some((_, seal)) = self.durable_seals.iter().find(|(j, _)| *j == i) {
            self.seals[i * SEAL_LEN..(i + 1) * SEAL_LEN].copy_from_slice(seal);
        }
    }

    /// One past the highest page any written block occupies (the data file must reach it).
    pub fn end_page(&self) -> Option<u64> {
        (0..self.blocks()).filter(|&i| self.written.get(i)).map(|i| self.page(i) + 1).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tables_heap_bytes_grow_with_its_seals() {
        let mut t = Placement::Groups.new_table(1, 0, 256);
        let empty = t.heap_bytes();
        for i in 0..256 {
            t.record(i, &[1; SEAL_LEN]);
        }
        assert!(t.heap_bytes() >= empty + 256 * SEAL_LEN, "{} against {empty}", t.heap_bytes());
    }

    #[test]
    fn rewrites_never_touch_the_durable_page() {
        let b = 4u64;
        let mut t = Placement::Pairs.new_table(1, 1, b);
        assert_eq!(t.base(), 9);
        // Never committed: written in place, slot 0.
        assert_eq!(t.page_for_write(2), 11);
        t.record(2, &[7; SEAL_LEN]);
        assert_eq!(t.page(2), 11);
        assert_eq!(t.page_for_write(2), 11, "an uncommitted block is rewritten where it is");
        t.committed();
        let moved = t.page_for_write(2);
        assert_eq!(moved, 15, "the committed page is left alone");
        assert_eq!(t.page(2), 11, "reads stay on the committed page until the write is recorded");
        t.record(2, &[8; SEAL_LEN]);
        assert_eq!(t.page(2), 15);
        assert_eq!(t.page_for_write(2), 15, "a second rewrite before the commit stays in slot 1");
        t.committed();
        assert_eq!(t.page_for_write(2), 11, "after the commit, back to slot 0");
        let bytes = t.to_bytes();
        assert_eq!(bytes.len(), BlockTable::encoded_len(b, 3), "seals up to block 2 only");
        let back = BlockTable::from_bytes(&bytes, b, b).unwrap();
        assert_eq!(back.seal(2), &[8; SEAL_LEN]);
        assert!(BlockTable::from_bytes(&bytes[1..], b, b).is_none());
        // One encoding only: a seal too many or too few is refused.
        assert!(BlockTable::from_bytes(&[&bytes[..], &[0; SEAL_LEN]].concat(), b, b).is_none());
        assert!(BlockTable::from_bytes(&bytes[..bytes.len() - SEAL_LEN], b, b).is_none());
        // A failed rewrite goes back to what the store holds: page and seal, after a
        // truncation not yet committed too.
        t.record(2, &[9; SEAL_LEN]);
        t.record(2, &[10; SEAL_LEN]);
        t.revert(2);
        assert_eq!((t.page(2), t.seal(2)), (15, &[8; SEAL_LEN]), "the committed page and seal");
        t.clear_from(2);
        t.revert(2);
        assert_eq!((t.page(2), t.seal(2)), (15, &[8; SEAL_LEN]), "back from a truncation");
        t.clear_from(1);
        assert_eq!(t.end_page(), None);
    }

    #[test]
    fn groups_put_a_groups_slot_0_pages_back_to_back_and_never_overlap() {
        let b = 4u64;
        let g = Placement::Groups;
        // Groups of 1, 2, 4 … extents: slot 0 of extents 1 and 2 is one run, as is 3..=6.
        let offsets: Vec<u64> = (0..8).map(|e| g.offset(e, b)).collect();
        assert_eq!(offsets, [0, 8, 12, 24, 28, 32, 36, 56]);
        let strides: Vec<u64> = (0..8).map(|e| g.stride(e, b)).collect();
        assert_eq!(strides, [4, 8, 8, 16, 16, 16, 16, 32]);
        assert_eq!(
            (g.group(1022), g.group(1023), g.group(2046), g.group(2047)),
            ((511, 512), (1023, 1024), (1023, 1024), (2047, 1024))
        );
        // Every page of every extent's two slots belongs to it alone and lies in its group's
        // area `2·B·f .. 2·B·(f + S)`, for both placements and several extent sizes.
        for b in [1u64, 4, 16] {
            for placement in [Placement::Pairs, Placement::Groups] {
                let mut owner = std::collections::HashMap::new();
                for e in (0..3100).chain(100_000..100_100) {
                    let (base, stride) = (placement.offset(e, b), placement.stride(e, b));
                    let (f, size) = placement.group(e);
                    for page in (0..b).flat_map(|i| [base + i, base + stride + i]) {
                        assert_eq!(owner.insert(page, e), None, "{placement:?}, B {b}: page {page} of extent {e}");
                        assert!((2 * b * f..2 * b * (f + size)).contains(&page), "{placement:?}, B {b}: extent {e}");
                    }
                }
            }
        }
        assert_eq!(Placement::Groups.stride(u64::MAX, b), 1024 * b, "no overflow on an index from a forged row");
        assert_eq!(Placement::Pairs.offset(3, b), 24, "code 3 as it always was: 2·B·e");
    }
}
