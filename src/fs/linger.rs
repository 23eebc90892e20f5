//! Closed files kept loaded for a reopen. A file's state is built from its store record, and
//! a format-2 file's record is large: every block's seal, 3.6 MiB for 512 MiB, read and
//! authenticated in some 8 ms cold and 2.5 warm at every open (docs/BENCHMARKS.md). So the
//! last [`FILES`] files closed clean stay in the open-file table with no handle, as the
//! kernel keeps a closed file's inode, and a reopen takes the state as it is.
//!
//! A kept state is treated as an open file's: a rotation re-wraps it, an unlink or a rename
//! over it removes it, and what changes a record without it forgets it (`rekey`,
//! `upgrade`). It serves a reopen only through the data file it was loaded from, and a
//! writer only if it holds that file writable ([`FileState::may_serve`]): a data file put at
//! its name in the backing tree is loaded afresh, its record checked. (A parked file, its
//! commit still queued, is an open file's state, served as before.) Rows changed behind
//! the volume's back are found at the state's next load, as an open file's are. States go
//! oldest first past [`FILES`] files or [`BYTES`] of tables, and all of them when the
//! volume is dropped; nothing is kept after that (they hold the volume's core, and through
//! it its keys). A state holds wrapped DEKs only; unwrapped ones stay in the key ring's
//! bounded cache, as before.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::file::FileState;
use crate::keys::FileId;

/// Closed files kept, at most (each keeps its data file open).
const FILES: usize = 64;
/// Bytes their states hold together, at most (a file holding more is not kept).
const BYTES: usize = 64 << 20;

/// The open-file table: states by id, with their handle counts.
pub(super) type Table = HashMap<FileId, (Arc<FileState>, usize)>;

#[derive(Default)]
pub(super) struct Lingering {
    /// The kept files, the longest closed first, with the bytes each state held at its close.
    /// Locked only with the table locked first.
    order: Mutex<VecDeque<(FileId, usize)>>,
    /// The volume is being dropped: nothing is kept from now on.
    closed: AtomicBool,
}

/// File `id`'s state if it is kept in `table` (no handle, nothing to commit).
pub(super) fn kept<'a>(table: &'a Table, id: &FileId) -> Option<&'a Arc<FileState>> {
    table.get(id).filter(|(s, handles)| *handles == 0 && s.may_linger()).map(|(s, _)| s)
}

/// How many of `order`'s oldest must go so that at most `files` files of at most `bytes`
/// bytes together stay.
fn excess(order: &VecDeque<(FileId, usize)>, files: usize, bytes: usize) -> usize {
    let mut total: usize = order.iter().map(|(_, b)| b).sum();
    let mut n = 0;
    while order.len() - n > files || total > bytes {
        total -= order[n].1;
        n += 1;
    }
    n
}

impl Lingering {
    fn order(&self) -> MutexGuard<'_, VecDeque<(FileId, usize)>> {
        self.order.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many files are kept (ask with the table locked, for a count that matches it).
    pub(super) fn len(&self) -> usize {
        self.order().len()
    }

    /// `state`, in `table` with no handle, is kept if it may be (else it leaves the table);
    /// the longest closed go past the bounds.
    pub(super) fn keep(&self, table: &mut Table, state: &Arc<FileState>) {
        let mut order = self.order();
        order.retain(|(id, _)| id != &state.id);
        if !state.may_linger() || self.closed.load(Ordering::Acquire) {
            table.remove(&state.id);
            return;
        }
        let bytes = state.kept_bytes();
        if bytes > BYTES {
            table.remove(&state.id);
            return;
        }
        order.push_back((state.id, bytes));
        let over = excess(&order, FILES, BYTES);
        for (oldest, _) in order.drain(..over) {
            if kept(table, &oldest).is_some() {
                table.remove(&oldest);
            }
        }
    }

    /// File `id` is open again (or gone from the table another way): no longer kept.
    pub(super) fn reopened(&self, id: &FileId) {
        self.order().retain(|(x, _)| x != id);
    }

    /// Forgets file `id`'s state if it is kept (an open file's stays: its handles hold it).
    pub(super) fn forget(&self, table: &mut Table, id: &FileId) {
        if kept(table, id).is_some() {
            table.remove(id);
        }
        self.reopened(id);
    }

    /// The volume is being dropped: every kept state goes, and none is kept after.
    pub(super) fn close(&self, table: &mut Table) {
        self.closed.store(true, Ordering::Release);
        for (id, _) in std::mem::take(&mut *self.order()) {
            if kept(table, &id).is_some() {
                table.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(bytes: &[usize]) -> VecDeque<(FileId, usize)> {
        bytes.iter().enumerate().map(|(i, &b)| ([i as u8; 16], b)).collect()
    }

    #[test]
    fn the_longest_closed_go_first_until_both_bounds_hold() {
        assert_eq!(excess(&order(&[10, 10, 10]), 3, 30), 0, "at the bounds: all stay");
        assert_eq!(excess(&order(&[10, 10, 10, 10]), 3, 100), 1, "one file too many");
        assert_eq!(excess(&order(&[10, 10, 50]), 64, 60), 1, "10 bytes too many: the oldest goes");
        assert_eq!(excess(&order(&[50, 10, 10]), 64, 25), 1, "the oldest is the large one");
        assert_eq!(excess(&order(&[5, 5, 5, 60]), 64, 60), 3, "the newest alone fills the bound");
        assert_eq!(excess(&order(&[]), 0, 0), 0);
    }
}
