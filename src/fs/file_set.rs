//! The set of files that exist (header feature bit 7, `file-set`).
//!
//! Every regular file has a store record (feature `files-recorded`), so a file removed whole,
//! its data file and its rows together, leaves no entry to give EIO on. So the store keeps
//! `files.set` = `tag(digest)`, where the digest is the XOR, over every file record, of the
//! id's keyed mark (`keys::FileSetKey`). Only the tag is stored: the digest (and so any mark)
//! never reaches the disk, so nobody without the key can choose rows whose marks cancel. The
//! store rewrites the tag in the same transaction as every record added or deleted
//! (`store::FileSetHook`), from a digest it keeps in memory. At open the digest is recomputed
//! from the rows; if its tag is not the stored one, records were deleted or added behind the
//! volume's back. The mount refuses such a volume (ro and rw), naming the way out: `fsck`
//! reports it, and `fsck --repair` accepts the store as it is (the operator's decision).
//! The key comes from the name key, so a KEK rotation leaves the record alone.

use super::volume::Volume;
use crate::store::{Change, FileSetHook, SetFns};
use crate::{Error, Result};

/// `meta` key of the tag.
pub(super) const FILE_SET: &str = "files.set";

impl Volume {
    /// A format-2 volume keeps a versioned set: each mark covers the record's MAC, and the tag
    /// the number of changes (so a record put back from an older copy, or a whole store put
    /// back, is seen).
    pub(super) fn versioned_file_set(&self) -> bool {
        self.header().features & crate::format::FEATURE_PAGES != 0
    }

    fn set_fns(&self) -> SetFns {
        self.keys().file_set().fns(self.versioned_file_set())
    }

    /// The digest of the file records in the store now.
    fn file_set_now(&self) -> Result<[u8; 16]> {
        self.file_set_under(&self.set_fns())
    }

    /// The set, as it is, recorded anew (in the encoding of the header) and kept.
    pub(super) fn rerecord_file_set(&self) -> Result<()> {
        let (now, changes) = self.record_file_set()?;
        self.keep_file_set(now, changes);
        Ok(())
    }

    /// `upgrade`, once the header has feature `pages`: the versioned set it recorded, kept.
    pub(super) fn keep_versioned_file_set(&self) -> Result<()> {
        self.watch_file_set()?;
        self.files_removed()
    }

    fn file_set_under(&self, fns: &SetFns) -> Result<[u8; 16]> {
        let mut set = [0u8; 16];
        for (id, mac) in self.store().file_macs()? {
            set.iter_mut().zip((fns.mark)(&id, &mac)).for_each(|(s, m)| *s ^= m);
        }
        Ok(set)
    }

    /// At open: compares the stored tag with the rows; on a match the store keeps the set
    /// from now on, on a mismatch it is remembered (see [`Volume::files_removed`]) and
    /// nothing updates the tag until `fsck --repair` accepts the rows. A versioned set older
    /// than this host's anchor refuses the open (`anchor::check_changes`).
    pub(super) fn watch_file_set(&self) -> Result<()> {
        self.watch_file_set_if(false)
    }

    /// Before an open finishes a rotation cut while names were moving: keeps the set while
    /// the rotation re-seals record MACs if it holds under the keys of the header (the
    /// rotation had not re-keyed it yet); otherwise leaves it to the rotation, which re-keys
    /// it or finds it re-keyed already, and to the check after it.
    pub(super) fn watch_file_set_before_rotation(&self) -> Result<()> {
        self.watch_file_set_if(true)
    }

    fn watch_file_set_if(&self, only_if_holds: bool) -> Result<()> {
        let now = self.file_set_now()?;
        let fns = self.set_fns();
        let stored = self.store().meta(FILE_SET)?;
        // A versioned set in a format-1 header: an `upgrade` cut between recording the set
        // versioned and setting feature `pages`; recorded anew (unversioned) below, and the
        // next `upgrade` starts again. Never the other way: a format-2 volume refuses an
        // unversioned set, which would carry no record's version.
        let other = self.keys().file_set().fns(!fns.versioned);
        let mut rerecord = false;
        let problem = match stored.as_deref() {
            Some(v) if fns.holds(v, &now) => None,
            Some(v) if !fns.versioned && other.holds(v, &self.file_set_under(&other)?) => {
                rerecord = true;
                None
            }
            Some(_) => Some(
                "the file records in the metadata store are not the set last committed: files were removed \
                 whole (data and rows), rows added, or a file's record put back from an older copy, behind the \
                 volume's back",
            ),
            None => Some("the record of the set of files is missing from the metadata store"),
        };
        match (problem, stored) {
            (Some(_), _) if only_if_holds => {}
            (Some(p), _) => *self.file_set_problem.lock().unwrap_or_else(|p| p.into_inner()) = Some(p.to_string()),
            (None, Some(_)) if rerecord => {
                if let Err(e) = self.rerecord_file_set() {
                    tracing::warn!("re-recording the set of files must wait for a writable open: {e}");
                }
            }
            (None, Some(v)) => {
                let changes = fns.changes_of(&v).unwrap_or(0);
                if fns.versioned {
                    crate::anchor::check_changes(self.keys().volume_id(), changes, self.store().path())?;
                    self.root_anchor.check_changes(changes, self.store().path())?;
                }
                self.keep_file_set(now, changes);
            }
            (None, None) => unreachable!("no stored set is a problem"),
        }
        Ok(())
    }

    /// Has the store keep the set, starting from `digest` after `changes` changes; a
    /// versioned set's changes are anchored on this host as they commit.
    fn keep_file_set(&self, digest: [u8; 16], changes: u64) {
        let fns = self.set_fns();
        // Every commit that moves the set moves the anchor (not durably: a rename, no fsync;
        // the close writes it durably).
        let committed: Option<Box<dyn Fn(u64) + Send + Sync>> = fns.versioned.then(|| {
            let id = *self.keys().volume_id();
            Box::new(move |n: u64| {
                if let Err(e) = crate::anchor::record_changes(&id, n, false) {
                    tracing::warn!("the file set of this volume is not anchored on this host: {e}");
                }
            }) as Box<dyn Fn(u64) + Send + Sync>
        });
        self.store().set_file_set(FileSetHook {
            key: FILE_SET,
            fns,
            state: std::sync::Mutex::new((digest, changes)),
            committed,
        });
        if self.versioned_file_set() {
            self.anchor_file_set();
        }
    }

    /// Anchors the set's number of changes now, durably (at open and close; between, every
    /// commit that moves the set anchors it without an fsync).
    pub(super) fn anchor_file_set(&self) {
        let Some(changes) = self.store().file_set_changes() else { return };
        if let Err(e) = crate::anchor::record_changes(self.keys().volume_id(), changes, true) {
            tracing::warn!("the file set of this volume is not anchored on this host: {e}");
        }
    }

    /// Why this volume's set of files is not the one last committed, if it is not: a mount
    /// refuses it until `fsck --repair` accepts the store as it is.
    pub fn files_removed(&self) -> Result<()> {
        match self.file_set_problem.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            None => Ok(()),
            Some(p) => Err(Error::integrity(
                self.store().path(),
                format!("{p}; `envelopefs fsck` shows what is there, `fsck --repair` accepts it"),
            )),
        }
    }

    /// Writes the tag of the rows as they are now; returns their digest and number of
    /// changes. A versioned set counts on from the higher of this host's anchor and the
    /// root's (never from the stored value, which need not authenticate here), so the next
    /// open passes both: the operator accepts the store as it is.
    fn record_file_set(&self) -> Result<([u8; 16], u64)> {
        let now = self.file_set_now()?;
        let fns = self.set_fns();
        let changes = match fns.versioned {
            true => crate::anchor::seen_changes(self.keys().volume_id())?
                .max(self.root_anchor.seen_changes())
                .unwrap_or(0)
                .checked_add(1)
                .ok_or_else(|| Error::corrupt(self.store().path(), "the set of files has no changes left to count"))?,
            false => 0,
        };
        self.store().apply(&[Change::PutMeta { key: FILE_SET, value: &fns.value(&now, changes) }])?;
        Ok((now, changes))
    }

    /// `upgrade`, before it sets feature `pages`: the set as it is, recorded versioned (a
    /// crash before the header has the bit leaves a set the format-1 open takes back).
    pub(super) fn record_versioned_file_set(&self) -> Result<()> {
        let fns = self.keys().file_set().fns(true);
        let now = self.file_set_under(&fns)?;
        self.store().apply(&[Change::PutMeta { key: FILE_SET, value: &fns.value(&now, 0) }])
    }

    /// `fsck --repair`: the store's records become the set of files (the operator accepts
    /// what is there).
    pub(super) fn accept_file_set(&self) -> Result<()> {
        let (now, changes) = self.record_file_set()?;
        *self.file_set_problem.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.keep_file_set(now, changes);
        Ok(())
    }

    /// A volume made before the set was kept: records it as it is (trusted this once), then
    /// sets the feature bit. Read-only storage defers it.
    pub(super) fn file_set_upgrade(&self) -> Result<()> {
        self.upgrade(crate::format::FEATURE_FILE_SET, "keeping the set of files", || self.record_file_set().map(|_| ()))
            .map(|_| ())
    }
}
