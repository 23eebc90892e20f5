//! Directory listings, made at a directory's first read (offset 0) and served from here to
//! the reads that continue it.
//!
//! The kernel reads a directory in several requests (a readdirplus reply holds a page, some
//! 25 entries, and one more read always finds the end). Listing the directory again for
//! each would decrypt every name again and, for readdirplus, work out every entry's
//! attributes again, only to skip what was already sent: quadratic in the directory's
//! size. A listing keeps names only; attributes are worked out when an entry is sent, so
//! they are as fresh as the request that carries them.
//!
//! Listings are kept per directory, not per open handle: the kernel then needs no OPENDIR
//! and RELEASEDIR round trips (we answer OPENDIR with ENOSYS, its "zero-message opendir"),
//! half of the requests of a `find`. Two readers listing one directory at once share the
//! newer listing, which differs from the older only if the directory changed in between.
//! At most [`MAX_LISTINGS`] listings and [`MAX_ENTRIES`] entries are kept (beyond that, the
//! least recently made go; a directory bigger than that is kept alone).

use std::ffi::OsString;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::volume::EntryKind;

/// One directory's entries as listed, in offset order: ".", ".." and then by name.
#[derive(Debug)]
pub struct Listing {
    /// The volume the directory's entries are in (`InodeFs`: 0, or a tenant's).
    pub part: usize,
    /// The directory's plaintext path in that volume and its backing directory.
    pub path: PathBuf,
    pub backing: PathBuf,
    pub entries: Vec<Listed>,
    /// `Volume::names_generation` when it was made (backing names change with it).
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: OsString,
    pub kind: EntryKind,
    /// The inode number the kernel knows the entry by.
    pub ino: u64,
    /// The backing name (empty for "." and "..").
    pub backing: OsString,
}

pub const MAX_LISTINGS: usize = 64;
pub const MAX_ENTRIES: usize = 1 << 18;

/// The listings kept, by the directory's inode number.
pub struct Listings {
    kept: Mutex<Kept>,
}

struct Kept {
    lru: LruCache<u64, Arc<Listing>>,
    entries: usize,
}

impl Default for Listings {
    fn default() -> Self {
        let cap = NonZeroUsize::new(MAX_LISTINGS).expect("non-zero");
        Listings { kept: Mutex::new(Kept { lru: LruCache::new(cap), entries: 0 }) }
    }
}

impl Listings {
    /// The listing of directory `ino` if the read continues one (`offset > 0`; a read at 0
    /// is a first read or a rewind, which lists again).
    pub fn continued(&self, ino: u64, offset: u64) -> Option<Arc<Listing>> {
        if offset == 0 {
            return None;
        }
        self.lock().lru.get(&ino).cloned()
    }

    /// Keeps `listing` of directory `ino` for the reads that continue it.
    pub fn keep(&self, ino: u64, listing: Arc<Listing>) {
        let mut k = self.lock();
        let n = listing.entries.len();
        if let Some(old) = k.lru.pop(&ino) {
            k.entries -= old.entries.len();
        }
        while k.entries + n > MAX_ENTRIES || k.lru.len() == MAX_LISTINGS {
            match k.lru.pop_lru() {
                Some((_, old)) => k.entries -= old.entries.len(),
                None => break,
            }
        }
        k.entries += n;
        k.lru.put(ino, listing);
    }

    /// Forgets every listing kept.
    pub fn clear(&self) {
        let mut k = self.lock();
        k.lru.clear();
        k.entries = 0;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(n: usize) -> Arc<Listing> {
        let entry = Listed { name: "a".into(), kind: EntryKind::File, ino: 5, backing: "x".into() };
        Arc::new(Listing { part: 0, path: "d".into(), backing: "/b/d".into(), entries: vec![entry; n], generation: 0 })
    }

    #[test]
    fn a_listing_serves_the_reads_that_continue_it() {
        let l = Listings::default();
        l.keep(7, listing(3));
        assert!(l.continued(7, 0).is_none(), "offset 0 lists again (rewinddir)");
        assert_eq!(l.continued(7, 1).unwrap().entries.len(), 3);
        assert!(l.continued(8, 1).is_none());
        l.keep(7, listing(4));
        assert_eq!(l.continued(7, 2).unwrap().entries.len(), 4, "the newer listing");
        assert_eq!(l.lock().entries, 4);
    }

    #[test]
    fn listings_are_bounded_by_count_and_entries() {
        let l = Listings::default();
        for ino in 0..MAX_LISTINGS as u64 + 10 {
            l.keep(ino, listing(1));
        }
        assert_eq!(l.lock().lru.len(), MAX_LISTINGS);
        assert!(l.continued(0, 1).is_none(), "the oldest went");
        l.keep(1000, listing(MAX_ENTRIES - 5));
        assert!(l.lock().entries <= MAX_ENTRIES);
        l.keep(1001, listing(MAX_ENTRIES + 1)); // bigger than the bound: kept alone
        assert_eq!(l.lock().lru.len(), 1);
        assert_eq!(l.lock().entries, MAX_ENTRIES + 1);
    }
}
