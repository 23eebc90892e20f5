//! Hard links bound to their names (header feature bit 9, `links-bound`).
//!
//! A file with more than one hard link cannot name one entry in its header, so its header
//! binds it to the volume only (`Binding::Shared`, see `fs::binding`): two such files swapped
//! in the backing tree would each read as the other. So each entry of such a file is bound in
//! the store: a `links` row (file id, tag), where
//! `tag = HMAC(entry key, "EVFSLNK2" || id || parent dir id || u16 len || backing name)[..16]`.
//! A row is written before its entry is made (link, rename, exchange) and deleted after the
//! entry is gone (unlink, renamed away, replaced; in the next group commit, `fs::commit`).
//! A shared file reached by an entry without its row is an integrity error.
//!
//! The rows of a new entry are committed lazily (`Store::apply_lazy`: no WAL fsync; the next
//! durable commit, at the latest the one at unmount, takes them with it): `git add` links
//! every object it writes, and a WAL fsync per link was most of a link's time. So a crash
//! can keep a new entry (the backing file system made it durable) and lose its row; recovery
//! after an authenticated unclean shutdown binds such an entry where it is found, as it
//! binds a renamed one (`Volume::misbound` in `fs::fsck`). A crash leaves otherwise at worst
//! a row for an entry that is not there (which authorizes nothing anybody could use but this
//! file at that name).
//! Volumes made before bit 9 record a row for every entry of every shared file at their first
//! writable open (trusted that once).

use std::path::Path;
use std::sync::atomic::Ordering;

use super::binding::{Entry, Moving};
use super::volume::Volume;
use crate::format::Binding;
use crate::keys::NameKeys;
use crate::store::Change;
use crate::Result;

/// The tag of file `id`'s entry `entry` under `keys`.
pub(super) fn tag_with(keys: &NameKeys, id: &[u8; 16], entry: &Entry) -> [u8; 16] {
    use std::os::unix::ffi::OsStrExt;
    let mut msg = Vec::with_capacity(64);
    msg.extend_from_slice(id);
    msg.extend_from_slice(&entry.dir_id);
    msg.extend_from_slice(&(entry.name.len() as u16).to_le_bytes());
    msg.extend_from_slice(entry.name.as_bytes());
    keys.link_tag(&msg)
}

/// A row (the file and the tag of one of its entries), to delete once a move is done or if it
/// failed.
pub(super) struct LeftRow {
    id: [u8; 16],
    tag: [u8; 16],
}

/// The rows of a move of a shared file: the one it leaves (deleted once moved) and the one it
/// added (deleted if the move fails).
pub(super) struct LinkMove {
    left: LeftRow,
    added: Vec<LeftRow>,
}

impl Volume {
    pub(super) fn links_bound(&self) -> bool {
        self.core.links_bound.load(Ordering::Acquire)
    }

    fn link_tag(&self, id: &[u8; 16], entry: &Entry) -> [u8; 16] {
        tag_with(&self.keys().names(), id, entry)
    }

    /// Whether shared file `id` may be reached by `entry` (always, on a volume not upgraded).
    pub(super) fn link_authentic(&self, id: &[u8; 16], entry: &Entry) -> Result<bool> {
        Ok(!self.links_bound() || self.bound_by_row(id, entry)?)
    }

    /// Whether a `links` row binds file `id` to `entry` (never on a volume not upgraded).
    pub(super) fn bound_by_row(&self, id: &[u8; 16], entry: &Entry) -> Result<bool> {
        Ok(self.links_bound() && self.store().has_link(id, &self.link_tag(id, entry))?)
    }

    /// Binds entries `entries` of file `id` (a link is about to be made, or a shared file is
    /// about to be named there). Returns the rows it added (not there before), for
    /// [`Volume::undo_links`] if the operation fails.
    pub(super) fn add_links(&self, id: &[u8; 16], entries: &[&Entry]) -> Result<Vec<LeftRow>> {
        if !self.links_bound() {
            return Ok(Vec::new());
        }
        let (mut added, mut kept) = (Vec::new(), Vec::new());
        let result = (|| {
            for e in entries {
                let tag = self.link_tag(id, e);
                // A row whose name went a moment ago (its deletion queued, now taken back)
                // counts as added: if the operation fails, it goes with the rest.
                if self.core.committer.keep_link(&(*id, tag)) {
                    kept.push((*id, tag));
                    added.push(LeftRow { id: *id, tag });
                } else if !self.store().has_link(id, &tag)? {
                    added.push(LeftRow { id: *id, tag });
                }
            }
            let changes: Vec<Change<'_>> =
                added.iter().map(|r| Change::PutLink { object: &r.id, tag: &r.tag }).collect();
            self.store().apply_lazy(&changes)
        })();
        if let Err(e) = result {
            // Their names are still gone: their deletions are queued again.
            kept.into_iter().for_each(|row| self.core.committer.drop_link(row));
            return Err(e);
        }
        Ok(added)
    }

    /// [`Volume::add_links`] of the entry a file has and the one it is getting, in one
    /// transaction (`git add` links every object it writes); only
    /// the new entry's row is returned, to undo if the link fails (the existing entry's row
    /// stays either way).
    pub(super) fn add_links_for_new(&self, id: &[u8; 16], existing: &Entry, new: &Entry) -> Result<Vec<LeftRow>> {
        let new_tag = self.link_tag(id, new);
        let mut added = self.add_links(id, &[existing, new])?;
        added.retain(|r| r.tag == new_tag);
        Ok(added)
    }

    /// An operation that [`Volume::add_links`] prepared failed: its new rows go (a row for a
    /// name the file never got would let it be linked there).
    pub(super) fn undo_links(&self, added: Vec<LeftRow>) -> Result<()> {
        let changes: Vec<Change<'_>> =
            added.iter().map(|r| Change::DeleteLink { object: &r.id, tag: &r.tag }).collect();
        let undone = self.store().apply(&changes);
        if undone.is_err() {
            // Tried again with the next group commit (and at unmount).
            added.iter().for_each(|r| self.core.committer.drop_link((r.id, r.tag)));
        }
        undone
    }

    /// Unbinds entry `entry` of file `id` (it is gone), in the next group commit (`git`
    /// unlinks a temporary name of every object it links into place: a commit each was a
    /// WAL fsync each).
    pub(super) fn drop_link(&self, id: &[u8; 16], entry: &Entry) -> Result<()> {
        if self.links_bound() {
            self.core.committer.drop_link((*id, self.link_tag(id, entry)));
        }
        Ok(())
    }

    /// Before `moving` is renamed from backing `from` to `to`: a shared file is bound at `to`.
    /// Hand the result to [`Volume::moved_links`] once the rename happened (whatever came
    /// after it), or to [`Volume::move_failed_links`] if it did not.
    pub(super) fn moving_links(&self, moving: &Moving, from: &Path, to: &Path) -> Result<Option<LinkMove>> {
        let Moving::File { id, shared: true } = moving else { return Ok(None) };
        if !self.links_bound() {
            return Ok(None);
        }
        let (from, to) = (self.entry_of(from)?, self.entry_of(to)?);
        let added = self.add_links(id, &[&to])?;
        Ok(Some(LinkMove { left: LeftRow { id: *id, tag: self.link_tag(id, &from) }, added }))
    }

    /// After a move: the row of the entry left (see [`Volume::moving_links`]).
    pub(super) fn moved_links(&self, m: Option<LinkMove>) -> Result<()> {
        match m {
            Some(m) => self.store().apply(&[Change::DeleteLink { object: &m.left.id, tag: &m.left.tag }]),
            None => Ok(()),
        }
    }

    /// A move that did not happen: the row it added goes.
    pub(super) fn move_failed_links(&self, m: Option<LinkMove>) -> Result<()> {
        match m {
            Some(m) => self.undo_links(m.added),
            None => Ok(()),
        }
    }

    /// A volume made before entries of shared files were bound: records a row for every
    /// entry of every shared file where it is (trusted this once), then sets the feature bit
    /// (a crash in between only repeats it). Read-only storage defers it.
    pub(super) fn links_upgrade(&self) -> Result<()> {
        let bind = || {
            let mut rows: Vec<([u8; 16], [u8; 16])> = Vec::new();
            self.walk_tree(
                &mut |obj| {
                    if let Binding::Shared(_) = obj.header.binding {
                        rows.push((obj.header.id, self.link_tag(&obj.header.id, obj.entry)));
                    }
                    Ok(())
                },
                &mut |_, _| Ok(()),
            )?;
            let changes: Vec<Change<'_>> = rows.iter().map(|(id, tag)| Change::PutLink { object: id, tag }).collect();
            self.store().apply(&changes)
        };
        let done =
            self.upgrade(crate::format::FEATURE_LINKS_BOUND, "binding every entry of hard-linked files", bind)?;
        self.core.links_bound.store(done, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message layout of FORMAT.md §4 "Linked names" (its vector is `keys::tests`).
    #[test]
    fn link_tags_cover_the_file_and_its_entry() {
        let keys = NameKeys::new(crate::crypto::Key256::from_bytes(&[0x11; 32]), &[0x22; 16]);
        let entry = Entry::new([0x44; 16], std::ffi::OsStr::new("abc"));
        let mut msg = vec![0x33; 16];
        msg.extend_from_slice(&[0x44; 16]);
        msg.extend_from_slice(&3u16.to_le_bytes());
        msg.extend_from_slice(b"abc");
        assert_eq!(tag_with(&keys, &[0x33; 16], &entry), keys.link_tag(&msg));
        assert_ne!(tag_with(&keys, &[0x34; 16], &entry), keys.link_tag(&msg), "another file");
        let other = Entry::new([0x44; 16], std::ffi::OsStr::new("abd"));
        assert_ne!(tag_with(&keys, &[0x33; 16], &other), keys.link_tag(&msg), "another name");
    }
}
