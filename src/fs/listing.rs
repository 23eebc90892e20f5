//! Open directories: each one's listing, made at its first read (offset 0) and served from
//! here until it is closed or rewound.
//!
//! The kernel reads a directory in several requests (a readdirplus reply holds a page, some
//! 25 entries, and one more read always finds the end). Listing the directory again for
//! each would decrypt every name again and, for readdirplus, work out every entry's
//! attributes again, only to skip what was already sent: quadratic in the directory's
//! size. A listing keeps names only; attributes are worked out when an entry is sent, so
//! they are as fresh as the request that carries them.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::volume::EntryKind;

/// One directory's entries as listed, in offset order: ".", ".." and then by name.
#[derive(Debug)]
pub struct Listing {
    /// The directory's plaintext path and its backing directory.
    pub path: PathBuf,
    pub backing: PathBuf,
    pub entries: Vec<Listed>,
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

/// The listings of open directory handles.
#[derive(Default)]
pub struct Listings {
    open: Mutex<HashMap<u64, Option<Arc<Listing>>>>,
}

impl Listings {
    /// Registers open directory handle `fh` (no listing yet).
    pub fn open(&self, fh: u64) {
        self.lock().insert(fh, None);
    }

    /// The listing of `fh` if it has one and the read continues it (`offset > 0`; a read at
    /// 0 is a first read or a rewind, which lists again).
    pub fn continued(&self, fh: u64, offset: u64) -> Option<Arc<Listing>> {
        if offset == 0 {
            return None;
        }
        self.lock().get(&fh).cloned().flatten()
    }

    /// Keeps `listing` for the later reads of `fh` (if `fh` is open).
    pub fn keep(&self, fh: u64, listing: Arc<Listing>) {
        if let Some(slot) = self.lock().get_mut(&fh) {
            *slot = Some(listing);
        }
    }

    pub fn close(&self, fh: u64) {
        self.lock().remove(&fh);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Option<Arc<Listing>>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_serves_continued_reads_of_its_handle_only() {
        let l = Listings::default();
        let entry = Listed { name: "a".into(), kind: EntryKind::File, ino: 5, backing: "x".into() };
        let listing = Arc::new(Listing { path: "d".into(), backing: "/b/d".into(), entries: vec![entry.clone()] });
        l.keep(1, listing.clone()); // not open: not kept
        assert!(l.continued(1, 1).is_none());
        l.open(1);
        l.keep(1, listing);
        assert!(l.continued(1, 0).is_none(), "offset 0 lists again (rewinddir)");
        assert_eq!(l.continued(1, 1).unwrap().entries, vec![entry]);
        assert!(l.continued(2, 1).is_none());
        l.close(1);
        assert!(l.continued(1, 1).is_none());
    }
}
