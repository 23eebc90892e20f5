//! `envelopefs upgrade`: one format-1 file converted to format 2 in place.
//!
//! The format-2 pages are written after the format-1 slots in the same data file (extent `e`
//! from page `P0 + Placement::Groups.offset(e)`, `P0` the first page past the old data), made
//! durable, and then one store transaction switches the file's record to them (cipher code
//! 4, the tables of FORMAT.md §5a). A crash before that commit leaves the format-1 record naming the format-1
//! slots, untouched; after it, the format-2 record naming pages that are durable. Only then is
//! the space of the old slots given back (a hole punched over them): a crash before that
//! leaves them allocated, and never read again.

use super::{record_mac_with, Blocks, FileState};
use crate::crypto::{fill_random, BlockAad, BLOCK_SIZE, GCM_SIV_NONCE};
use crate::format::{Placement, MAX_FIRST_PAGE, MAX_PAGES_SIZE, PAGE, SEAL_LEN};
use crate::store::Change;
use crate::{Error, Result};

impl FileState {
    /// Converts this (format-1, GCM-SIV, closed everywhere else) file to format 2; false if
    /// there was nothing to do.
    pub(in crate::fs) fn convert_to_pages(&self) -> Result<bool> {
        if self.pages.is_some() || self.scratch {
            return Ok(false);
        }
        let mut inner = self.write_inner();
        self.commit(&mut inner, &[])?;
        let layout = self.core.layout;
        let bpe = layout.blocks_per_extent();
        let old_end = self.data.size().map_err(|e| Error::io(self.name(), "stat data file", e))?;
        let base0 = old_end.div_ceil(PAGE).max(1);
        if base0 > MAX_FIRST_PAGE || inner.size > MAX_PAGES_SIZE {
            return Err(Error::InvalidArgument(format!(
                "{}: too large for format 2 (at most {MAX_PAGES_SIZE} bytes)",
                self.name().display()
            )));
        }
        let mut tables = Vec::new();
        let mut plain = vec![0u8; bpe as usize * BLOCK_SIZE];
        let mut page = vec![0u8; BLOCK_SIZE];
        for (&e, ext) in &inner.extents {
            let Blocks::Slots(written) = &ext.blocks else { continue };
            let cipher = self.unwrap_dek(e, ext)?;
            let first = layout.first_block(e);
            self.load_blocks(&inner, first, &mut plain)?;
            let mut table = Placement::Groups.new_table(base0, e, bpe);
            for i in (0..bpe as usize).filter(|&i| written.get(i)) {
                let mut seal = [0u8; SEAL_LEN];
                fill_random(&mut seal[..GCM_SIV_NONCE]);
                let nonce: &[u8; GCM_SIV_NONCE] = seal[..GCM_SIV_NONCE].try_into().expect("12");
                let aad = BlockAad { block_index: first + i as u64, ..self.aad() };
                let tag = cipher.seal_page(&aad, nonce, &plain[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE], &mut page);
                seal[GCM_SIV_NONCE..].copy_from_slice(&tag);
                self.data
                    .write_all_at(&page, table.page_for_write(i) * PAGE)
                    .map_err(|e| Error::io(self.name(), "write", e))?;
                table.record(i, &seal);
            }
            tables.push((e, ext, table.to_bytes()));
        }
        self.data.sync_data().map_err(|e| Error::io(self.name(), "fsync", e))?;
        let names = self.core.keys.names();
        let code = Placement::Groups.code();
        let mac = record_mac_with(&names, code, &self.id, inner.size, tables.iter().map(|(e, _, t)| (*e, &t[..])));
        let mut changes = vec![Change::PutFile { id: &self.id, size: inner.size, cipher: code, mac: &mac }];
        for (index, ext, written) in &tables {
            changes.push(Change::PutExtent {
                file: &self.id,
                index: *index,
                kek_id: &ext.kek_id,
                wrapped: &ext.wrapped,
                written,
            });
        }
        self.core.store.apply(&changes)?;
        drop(changes);
        drop(tables);
        // The old slots are never read again: give their space back (the header page stays).
        if base0 > 1 {
            if let Err(e) = self.data.punch_hole(PAGE, (base0 - 1) * PAGE) {
                tracing::debug!(file = %self.name().display(), "freeing the format-1 slots: {e}");
            }
        }
        Ok(true)
    }
}
