//! The format-2 data path of an open file: blocks read from and written to whole pages, each
//! sealed by a nonce and tag kept in its extent's [`BlockTable`] (FORMAT.md §5a).
//!
//! A write seals each block with a fresh nonce, writes it to the page
//! [`BlockTable::page_for_write`] names (never the page the store names for it), one `pwrite`
//! per run of consecutive pages, and only then records the new seals in memory; the store
//! learns them at the next commit, after the data is durable. Until then a crash leaves the
//! store naming the old page and seal, untouched: every block reads back whole, old or new.

use std::sync::atomic::Ordering;

use rayon::prelude::*;

use super::{Blocks, FileState, Inner, SLOTS};
use crate::crypto::{fill_random, BlockAad, DataCipher, BLOCK_SIZE, GCM_SIV_NONCE};
use crate::format::{BlockTable, Placement, Seal, PAGE};
use crate::{Error, Result};

/// Runs shorter than this are sealed and opened on the calling thread, longer ones in tasks
/// of `TASK_BLOCKS` (as `blocks.rs`).
const PARALLEL_MIN_BLOCKS: usize = 64;
const TASK_BLOCKS: usize = 8;
/// A code-4 group's run (the extents of it the file has) longer than this starts a stream of
/// its own; a shorter one is asked for whole before its turn (`group_ahead`). The kernel's
/// readahead window on the disk measured (8 MiB), which also caps what one
/// `POSIX_FADV_WILLNEED` reads there (on a disk of 128 KiB windows the rest of a short run is
/// read when it is reached, as without the hint).
const GROUP_AHEAD: u64 = 8 << 20;
/// How much of a long group's run is read ahead of a sequential reader (in the background,
/// `DataFile::prefetch`), starting this far before the end of the group before it: the
/// stream there restarts from nothing, and without this the reader waited at each group's
/// start and again while the readahead window grew.
const PREFETCH: u64 = 16 << 20;
/// A read that starts at most this many blocks from where the file's last read ended is a
/// sequential reader's (the kernel sends a reader's requests to several threads at once, so
/// they may come a little out of order).
const SEQUENTIAL_SLACK: u64 = 256;

/// What a read in which extents `lo..hi` start, of a code-4 file of `extents` extents,
/// hints the kernel. A read holds several extents' starts when extents are smaller than it,
/// and then may cross several groups' ends: the last hint of each kind is the one the reader
/// goes on with.
#[derive(Debug, Default, PartialEq, Eq)]
struct GroupHints {
    /// A group whose run is longer than [`GROUP_AHEAD`] starts in the read: a stream starts
    /// at its first extent.
    stream: Option<u64>,
    /// A group ends in the read, and the next one's run is short: its first extent and the
    /// extents of it the file has, to be read whole.
    whole: Option<(u64, u64)>,
    /// The read is [`PREFETCH`] before the end of a group (or starts the group, if shorter),
    /// and the next one's run is long: its first extent and the extents of it to read ahead.
    prefetch: Option<(u64, u64)>,
}

fn group_hints(lo: u64, hi: u64, extents: u64, extent_bytes: u64) -> GroupHints {
    let groups = Placement::Groups;
    // The extents of the group from `first` (of `size`) that the file has.
    let run = |first: u64, size: u64| extents.saturating_sub(first).min(size);
    let long = |n: u64| n.saturating_mul(extent_bytes) > GROUP_AHEAD;
    let lead = PREFETCH.div_ceil(extent_bytes.max(1));
    let starts = |e: u64| lo <= e && e < hi;
    let mut hints = GroupHints::default();
    // Every group the read's extents fall in: one pass per group, so at most one per extent
    // that starts in the read.
    let mut first = groups.group(lo).0;
    while first < hi {
        let size = groups.group(first).1;
        if first > 0 && starts(first) && long(run(first, size)) {
            hints.stream = Some(first);
        }
        let Some(next) = first.checked_add(size) else { break };
        let have = run(next, groups.group(next).1);
        if starts(next - 1) && have > 0 && !long(have) {
            hints.whole = Some((next, have));
        }
        if starts(first.max(next.saturating_sub(lead))) && long(have) {
            hints.prefetch = Some((next, have.min(lead)));
        }
        first = next;
    }
    hints
}

/// What a read asks of the kernel once it is done (byte offset and length in the data file):
/// asked before, those pages went to the disk ahead of the ones the reader waits for (a cold
/// first read of a format-2 file took 1.8-2.0 ms against format 1's 0.1-0.2).
#[derive(Default)]
struct Ahead {
    /// Read whole (`DataFile::will_need`).
    whole: Option<(u64, u64)>,
    /// Read as a stream in the background (`DataFile::prefetch`).
    prefetch: Option<(u64, u64)>,
}

/// Consecutive runs of `pages` (`None`: skip), as (first index, first page, length).
fn runs(pages: &[Option<u64>]) -> Vec<(usize, u64, usize)> {
    let mut out: Vec<(usize, u64, usize)> = Vec::new();
    for (i, p) in pages.iter().enumerate() {
        let Some(p) = *p else { continue };
        match out.last_mut() {
            Some((start, first, len)) if *start + *len == i && *first + *len as u64 == p => *len += 1,
            _ => out.push((i, p, 1)),
        }
    }
    out
}

impl FileState {
    fn table<'a>(&self, inner: &'a Inner, extent: u64) -> Option<&'a BlockTable> {
        match inner.extents.get(&extent).map(|x| &x.blocks) {
            Some(Blocks::Pages(t)) => Some(t),
            _ => None,
        }
    }

    /// Decrypts blocks `first..first + plain.len()/4096` into `plain` (holes read as zeros).
    pub(super) fn load_pages(&self, inner: &Inner, first: u64, plain: &mut [u8]) -> Result<()> {
        let layout = self.core.layout;
        let n = plain.len() / BLOCK_SIZE;
        let ahead = match self.pages {
            Some(Placement::Pairs) => {
                self.read_ahead(inner, first, n as u64);
                Ahead::default()
            }
            Some(Placement::Groups) => self.group_ahead(inner, first, n as u64),
            None => Ahead::default(),
        };
        let ciphers = self.ciphers_for_read(inner, first, n)?;
        let mut where_: Vec<Option<(u64, Seal)>> = Vec::with_capacity(n);
        for (i, c) in ciphers.iter().enumerate() {
            let (e, bit) = layout.extent_of(first + i as u64);
            where_.push(c.as_ref().and_then(|_| self.table(inner, e)).map(|t| (t.page(bit), *t.seal(bit))));
        }
        let pages: Vec<Option<u64>> = where_.iter().map(|w| w.map(|(p, _)| p)).collect();
        let mut buf = SLOTS.with(|b| std::mem::take(&mut *b.borrow_mut()));
        // Reused without zeroing: every byte that is decrypted is read from disk first.
        if buf.len() < n * BLOCK_SIZE {
            buf.resize(n * BLOCK_SIZE, 0);
        }
        let result = self.read_and_open(&ciphers, &where_, &pages, first, &mut buf[..n * BLOCK_SIZE], plain);
        SLOTS.with(|b| *b.borrow_mut() = buf);
        if let Some(Err(e)) = ahead.whole.map(|(offset, len)| self.data.will_need(offset, len)) {
            tracing::debug!(file = %self.name().display(), "read-ahead of a group: {e}");
        }
        if let Some(Err(e)) = ahead.prefetch.map(|(offset, len)| self.data.prefetch(offset, len)) {
            tracing::debug!(file = %self.name().display(), "prefetch of a group: {e}");
        }
        result
    }

    fn read_and_open(
        &self,
        ciphers: &[Option<std::sync::Arc<DataCipher>>],
        where_: &[Option<(u64, Seal)>],
        pages: &[Option<u64>],
        first: u64,
        buf: &mut [u8],
        plain: &mut [u8],
    ) -> Result<()> {
        for (i, page, len) in runs(pages) {
            let dst = &mut buf[i * BLOCK_SIZE..(i + len) * BLOCK_SIZE];
            let got = self.data.read_at(dst, page * PAGE).map_err(|e| Error::io(self.name(), "read", e))?;
            if got < dst.len() {
                let missing = first + (i + got / BLOCK_SIZE) as u64;
                return Err(Error::integrity(
                    self.name(),
                    format!("block {missing} is missing from the data file (truncated?)"),
                ));
            }
        }
        let aad = self.aad();
        let work = |(i, out): (usize, &mut [u8])| -> std::result::Result<(), u64> {
            let block = first + i as u64;
            match (&ciphers[i], &where_[i]) {
                (Some(c), Some((_, seal))) => c
                    .open_page(
                        &BlockAad { block_index: block, ..aad },
                        &seal[..GCM_SIV_NONCE],
                        &seal[GCM_SIV_NONCE..],
                        &buf[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE],
                        out,
                    )
                    .map_err(|_| block),
                _ => {
                    out.fill(0);
                    Ok(())
                }
            }
        };
        let result = if pages.len() >= PARALLEL_MIN_BLOCKS {
            plain.par_chunks_mut(BLOCK_SIZE * TASK_BLOCKS).enumerate().try_for_each(|(t, task)| {
                task.chunks_mut(BLOCK_SIZE).enumerate().try_for_each(|(j, out)| work((t * TASK_BLOCKS + j, out)))
            })
        } else {
            plain.chunks_mut(BLOCK_SIZE).enumerate().try_for_each(work)
        };
        result.map_err(|block| {
            tracing::error!(file = %self.name().display(), block, "block failed authentication");
            Error::integrity(
                self.name(),
                format!("block {block} failed authentication (tampered, corrupt or an older copy)"),
            )
        })
    }

    /// The backing file's own readahead is off for a code-3 data file (`FileState` sets it
    /// so): it would read into each extent's slot 1, a hole in a file written once, and fill
    /// the page cache with zeros. Instead a read that starts an extent asks for the rest of
    /// its slot-0 pages and the next extent's. (A code-4 file keeps the kernel's readahead:
    /// its slot-0 pages are one run per group of extents.)
    fn read_ahead(&self, inner: &Inner, first: u64, n: u64) {
        let bpe = self.core.layout.blocks_per_extent();
        let starts = first.div_ceil(bpe) * bpe;
        if starts >= first + n {
            return;
        }
        let e = starts / bpe;
        let wanted = [(e, n - (starts - first)), (e + 1, 0)];
        for (extent, skip) in wanted {
            let Some(t) = self.table(inner, extent) else { continue };
            if skip >= bpe {
                continue; // a zero length would mean "to the end of the file"
            }
            if let Err(err) = self.data.will_need((t.base() + skip) * PAGE, (bpe - skip) * PAGE) {
                tracing::debug!(file = %self.name().display(), "read-ahead: {err}");
            }
        }
    }

    /// A code-4 file keeps the kernel's readahead, which follows a group's slot-0 run and
    /// restarts at the next group's, after the slot-1 holes: from a miss, so from 4 KiB folios
    /// again, and a request of order-0 folios carries at most a disk's segment limit of them
    /// (254 here: 1016 KiB against 4 MiB). So a read in which extents start hints the kernel
    /// as [`group_hints`] says: the start of a run longer than [`GROUP_AHEAD`] as the start of
    /// a stream (`DataFile::stream_from`, which sets the readahead going in 2 MiB folios);
    /// a short run ahead of its turn, whole (`POSIX_FADV_WILLNEED`); and, for a sequential
    /// reader, the first [`PREFETCH`] of a long run, as a stream, on a thread of its own
    /// before the reader gets there (`DataFile::prefetch`), so that the stream's start and
    /// its readahead window's growth are not waited for. The stream starts here; the other
    /// two are returned, for the caller to ask for once its own read is done.
    fn group_ahead(&self, inner: &Inner, first: u64, n: u64) -> Ahead {
        // Not where there is no readahead to help (tmpfs: a fault there on a hole would even
        // allocate a page).
        let bpe = self.core.layout.blocks_per_extent();
        let (lo, hi) = (first.div_ceil(bpe), (first + n).div_ceil(bpe));
        // Every read moves the end, not only one in which an extent starts: with extents
        // larger than a read, the last end would be an extent behind, and no read sequential.
        let sequential = self.read_end.swap(first + n, Ordering::Relaxed).abs_diff(first) <= SEQUENTIAL_SLACK;
        if self.core.in_memory || lo >= hi {
            return Ahead::default();
        }
        let hints = group_hints(lo, hi, inner.size.div_ceil(bpe * PAGE), bpe * PAGE);
        // Streams start at data written once (in slot 0), not at a hole or a page of the
        // slot not read.
        let written = |e: u64| self.table(inner, e).filter(|t| t.written().get(0) && t.page(0) == t.base());
        if let Some(Err(e)) = hints.stream.and_then(written).map(|t| self.data.stream_from(t.base() * PAGE)) {
            tracing::debug!(file = %self.name().display(), "read-ahead of a group: {e}");
        }
        let bytes = |t: &BlockTable, count: u64| (t.base() * PAGE, count * bpe * PAGE);
        Ahead {
            whole: hints.whole.and_then(|(e, count)| self.table(inner, e).map(|t| bytes(t, count))),
            prefetch: hints.prefetch.filter(|_| sequential).and_then(|(e, count)| written(e).map(|t| bytes(t, count))),
        }
    }

    /// Seals `plain` (whole blocks from `first`, every one with its cipher in `keys`) into
    /// the pages their tables give, then records the new seals.
    pub(super) fn write_pages(&self, inner: &mut Inner, keys: &[&DataCipher], first: u64, plain: &[u8]) -> Result<()> {
        let layout = self.core.layout;
        let n = plain.len() / BLOCK_SIZE;
        let mut targets = Vec::with_capacity(n);
        for i in 0..n {
            let (e, bit) = layout.extent_of(first + i as u64);
            let t = self.table(inner, e).expect("ciphers_for_write made every extent, format 2");
            targets.push(Some(t.page_for_write(bit)));
        }
        let mut nonces = vec![0u8; n * GCM_SIV_NONCE];
        fill_random(&mut nonces);
        let mut out = vec![0u8; n * BLOCK_SIZE];
        let mut tags = vec![[0u8; 16]; n];
        let aad = self.aad();
        let work = |(i, (page, tag)): (usize, (&mut [u8], &mut [u8; 16]))| {
            let nonce: &[u8; GCM_SIV_NONCE] =
                nonces[i * GCM_SIV_NONCE..(i + 1) * GCM_SIV_NONCE].try_into().expect("12");
            *tag = keys[i].seal_page(
                &BlockAad { block_index: first + i as u64, ..aad },
                nonce,
                &plain[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE],
                page,
            );
        };
        if n >= PARALLEL_MIN_BLOCKS {
            out.par_chunks_mut(BLOCK_SIZE * TASK_BLOCKS).zip(tags.par_chunks_mut(TASK_BLOCKS)).enumerate().for_each(
                |(t, (pages, tags))| {
                    pages
                        .chunks_mut(BLOCK_SIZE)
                        .zip(tags.iter_mut())
                        .enumerate()
                        .for_each(|(j, pt)| work((t * TASK_BLOCKS + j, pt)))
                },
            );
        } else {
            out.chunks_mut(BLOCK_SIZE).zip(tags.iter_mut()).enumerate().for_each(work);
        }
        // Each run's blocks are recorded once it is written; a run that fails goes no further,
        // and its blocks written where they were (never committed there) go back to their
        // committed state rather than read (or be committed) torn.
        for (start, page, len) in runs(&targets) {
            let written = self.data.write_all_at(&out[start * BLOCK_SIZE..(start + len) * BLOCK_SIZE], page * PAGE);
            for (i, tag) in tags.iter().enumerate().skip(start).take(len) {
                let (e, bit) = layout.extent_of(first + i as u64);
                let ext = inner.extents.get_mut(&e).expect("present above");
                let Blocks::Pages(t) = &mut ext.blocks else { unreachable!("format 2 extent") };
                if written.is_err() {
                    if t.page(bit) == page + (i - start) as u64 {
                        t.revert(bit);
                    }
                    continue;
                }
                let mut seal = [0u8; crate::format::SEAL_LEN];
                seal[..GCM_SIV_NONCE].copy_from_slice(&nonces[i * GCM_SIV_NONCE..(i + 1) * GCM_SIV_NONCE]);
                seal[GCM_SIV_NONCE..].copy_from_slice(tag);
                t.record(bit, &seal);
                ext.dirty = true;
            }
            inner.meta_dirty = true;
            self.data_dirty.store(true, Ordering::Release);
            written.map_err(|e| Error::io(self.name(), "write", e))?;
        }
        Ok(())
    }

    /// Gives back the pages of `dropped` extents (committed away) that lie below `len`: in
    /// code 4 a group's later extents have their slot-0 pages below an earlier one's slot 1,
    /// so cutting the data file at the highest page still used does not free them. Best
    /// effort: the keys are gone already, what stays is noise that takes space.
    pub(super) fn free_pages_below<'a>(&self, dropped: impl Iterator<Item = &'a Blocks>, len: u64) {
        let bpe = self.core.layout.blocks_per_extent();
        for t in dropped.filter_map(|b| match b {
            Blocks::Pages(t) => Some(t),
            Blocks::Slots(_) => None,
        }) {
            for first in [t.base(), t.base() + t.stride()] {
                let (start, end) = (first * PAGE, ((first + bpe) * PAGE).min(len));
                if start < end {
                    if let Err(e) = self.data.punch_hole(start, end - start) {
                        tracing::debug!(file = %self.name().display(), "freeing a truncated extent's pages: {e}");
                    }
                }
            }
        }
    }

    /// The data file's length once only what the tables hold is kept (after a truncation).
    pub(super) fn pages_len(&self, inner: &Inner) -> Result<u64> {
        let used = inner
            .extents
            .values()
            .filter_map(|x| match &x.blocks {
                Blocks::Pages(t) => t.end_page(),
                Blocks::Slots(_) => None,
            })
            .max()
            .map_or(crate::format::OBJECT_HEADER_LEN as u64, |p| p * PAGE);
        let now = self.data.size().map_err(|e| Error::io(self.name(), "stat data file", e))?;
        Ok(used.min(now).max(crate::format::OBJECT_HEADER_LEN as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::{group_hints, GroupHints};

    #[test]
    fn a_long_groups_start_streams_and_a_short_group_is_read_whole_before_its_turn() {
        const MIB: u64 = 1 << 20;
        // A read in which extent `e` starts.
        let at = |e: u64, extents: u64, bytes: u64| group_hints(e, e + 1, extents, bytes);
        let hint = |stream, whole, prefetch| GroupHints { stream, whole, prefetch };
        let none = GroupHints::default();
        // 1 MiB extents: groups 0 | 1 2 | 3..=6 | 7..=14 (8 MiB) | 15..=30 (16 MiB) | 31..=62
        assert_eq!(at(0, 40, MIB), hint(None, Some((1, 2)), None));
        assert_eq!(at(1, 40, MIB), none, "not the group's last extent");
        assert_eq!(at(6, 40, MIB), hint(None, Some((7, 8)), None));
        // 16 MiB before the end of a group, or at its start if it is shorter, the next long
        // run's first 16 MiB are read ahead.
        assert_eq!(at(7, 40, MIB), hint(None, None, Some((15, 16))), "group 15..=30 is long");
        assert_eq!(at(14, 40, MIB), none, "the next group's run is long: it streams");
        assert_eq!(at(15, 40, MIB), hint(Some(15), None, Some((31, 9))), "9 extents of 31..=62: long");
        assert_eq!(at(30, 40, MIB), none);
        assert_eq!(at(31, 40, MIB), hint(Some(31), None, None), "nothing after the file's end");
        assert_eq!(at(47, 100, MIB), hint(None, None, Some((63, 16))), "16 before 63");
        assert_eq!(at(31, 100, MIB), hint(Some(31), None, None), "63 is read ahead from 47");
        // What the file has decides, not what the group could hold: 5 extents of 15..=30 are
        // read whole before their turn, and do not start a stream of their own.
        assert_eq!(at(14, 20, MIB), hint(None, Some((15, 5)), None));
        assert_eq!(at(7, 20, MIB), none);
        assert_eq!(at(15, 20, MIB), none);
        assert_eq!(at(2, 5, MIB), hint(None, Some((3, 2)), None));
        assert_eq!(at(2, 3, MIB), none, "nothing past the end of the file");
        // 16 MiB extents: every group but the first streams, even the one of extent 1, and
        // each is read ahead from the last extent of the one before.
        assert_eq!(at(1, 4, 16 * MIB), hint(Some(1), None, None));
        assert_eq!(at(2, 4, 16 * MIB), hint(None, None, Some((3, 1))));
        assert_eq!(at(0, 4, 16 * MIB), hint(None, None, Some((1, 1))), "the file's start is the kernel's own stream");
        // 64 KiB extents, a 1 MiB read holding 16 of their starts: the end of group 127..=254
        // (8 MiB) and the start of 255..=510 (16 MiB, long) fall in the read of 240..256.
        let k64 = 64 << 10;
        assert_eq!(group_hints(240, 256, 2000, k64), hint(Some(255), None, Some((511, 256))));
        assert_eq!(
            group_hints(112, 128, 2000, k64),
            hint(None, Some((127, 128)), Some((255, 256))),
            "63..=126 ends, 127..=254 (8 MiB) starts"
        );
        assert_eq!(group_hints(96, 112, 2000, k64), none);
        // Indices and sizes at the limits do not overflow.
        let _ = at(u64::MAX - 1, u64::MAX, u64::MAX);
        let _ = group_hints(u64::MAX - 1, u64::MAX, 0, 0);
        let _ = group_hints(u64::MAX - 4096, u64::MAX, u64::MAX, 1 << 24);
    }

    #[test]
    fn runs_join_consecutive_pages_only() {
        let r = super::runs(&[Some(1), Some(2), None, Some(4), Some(9), Some(10)]);
        assert_eq!(r, vec![(0, 1, 2), (3, 4, 1), (4, 9, 2)]);
    }
}
