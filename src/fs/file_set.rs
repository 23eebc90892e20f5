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
use crate::store::{Change, FileSetHook};
use crate::{Error, Result};

/// `meta` key of the tag.
pub(super) const FILE_SET: &str = "files.set";

impl Volume {
    /// The digest of the file records in the store now.
    fn file_set_now(&self) -> Result<[u8; 16]> {
        let key = self.keys().file_set();
        let mut set = [0u8; 16];
        for id in self.store().file_ids()? {
            set.iter_mut().zip(key.mark(&id)).for_each(|(s, m)| *s ^= m);
        }
        Ok(set)
    }

    /// At open: compares the stored tag with the rows; on a match the store keeps the set
    /// from now on, on a mismatch it is remembered (see [`Volume::files_removed`]) and
    /// nothing updates the tag until `fsck --repair` accepts the rows.
    pub(super) fn watch_file_set(&self) -> Result<()> {
        let now = self.file_set_now()?;
        let want = self.keys().file_set().tag(&now);
        let problem = match self.store().meta(FILE_SET)? {
            Some(tag) if aws_lc_rs::constant_time::verify_slices_are_equal(&tag, &want).is_ok() => None,
            Some(_) => Some(
                "the file records in the metadata store are not the set last committed: files were removed \
                 whole (data and rows) or rows added behind the volume's back",
            ),
            None => Some("the record of the set of files is missing from the metadata store"),
        };
        match problem {
            Some(p) => *self.file_set_problem.lock().unwrap_or_else(|p| p.into_inner()) = Some(p.to_string()),
            None => self.keep_file_set(now),
        }
        Ok(())
    }

    /// Has the store keep the set, starting from `digest`.
    fn keep_file_set(&self, digest: [u8; 16]) {
        let (mark, tag) = (self.keys().file_set(), self.keys().file_set());
        self.store().set_file_set(FileSetHook {
            key: FILE_SET,
            mark: Box::new(move |id| mark.mark(id)),
            tag: Box::new(move |d| tag.tag(d)),
            digest: std::sync::Mutex::new(digest),
        });
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

    /// Writes the tag of the rows as they are now; returns their digest.
    fn record_file_set(&self) -> Result<[u8; 16]> {
        let now = self.file_set_now()?;
        let tag = self.keys().file_set().tag(&now);
        self.store().apply(&[Change::PutMeta { key: FILE_SET, value: &tag }])?;
        Ok(now)
    }

    /// `fsck --repair`: the store's records become the set of files (the operator accepts
    /// what is there).
    pub(super) fn accept_file_set(&self) -> Result<()> {
        let now = self.record_file_set()?;
        *self.file_set_problem.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.keep_file_set(now);
        Ok(())
    }

    /// A volume made before the set was kept: records it as it is (trusted this once), then
    /// sets the feature bit. Read-only storage defers it.
    pub(super) fn file_set_upgrade(&self) -> Result<()> {
        self.upgrade(crate::format::FEATURE_FILE_SET, "keeping the set of files", || self.record_file_set().map(|_| ()))
            .map(|_| ())
    }
}
