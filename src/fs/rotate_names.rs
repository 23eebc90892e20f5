//! `rotate --kek`, second half: everything the name key keeps moves to the name key the
//! rotation brought, so an old header (its KEK and name key) opens nothing that is there now.
//!
//! What moves, each step repeatable (a rerun after a crash at any point finishes the job):
//! * every directory entry: the header of the object it names is re-bound to the entry's new
//!   name, then the entry is renamed in place to its name under the new key (a long name's
//!   record is written before and the old one dropped after); a symlink is copied with its
//!   target sealed anew, the copy renamed into place, then the old link removed;
//! * every object's set of extended attributes, re-encrypted and re-sealed in one
//!   transaction each;
//! * every file record's MAC;
//! * the tag of the set of files (recomputed under the new key, in one transaction).
//!
//! An entry is recognised by the key its name authenticates under; an object is re-bound
//! only if its binding authenticates under the old key at its old name (or already under the
//! new one at its new name), a symlink re-sealed only if its target authenticates. Whatever
//! authenticates under neither key is not re-bound or re-sealed and is reported (it read as
//! an integrity error before, and still does); a name under neither key stays as it is. The caller keeps the
//! volume quiet meanwhile: a mount's requests wait until the header names the new keys.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::binding::{authentic_with, bind_with, keep_owner_and_times, open_target_with, seal_target_with, Entry};
use super::names::{self, DIRID_FILE};
use super::volume::Volume;
use crate::crypto::NamePurpose;
use crate::format::{Binding, ObjectHeader, ObjectKind, OBJECT_HEADER_LEN};
use crate::keys::NameKeys;
use crate::store::Change;
use crate::{Error, Result};

/// Whether `name` (starting with '.') is one of the volume's own: the directory id file, or
/// an entry being made (`names::TEMP_PREFIX`, `rotate --rekey`'s copy).
fn ours(name: &OsStr) -> bool {
    let n = name.as_bytes();
    n == DIRID_FILE.as_bytes() || n.starts_with(names::TEMP_PREFIX.as_bytes()) || n.starts_with(b".rekey-")
}

/// Whether error `e` met at one entry is the volume's (the rotation stops, to be finished
/// later: a full disk, read-only storage, a failing store) rather than that entry's (missing,
/// of the wrong kind, unreadable: left as found and reported).
fn stops_the_rotation(e: &Error) -> bool {
    use nix::libc::{EACCES, EINVAL, EISDIR, ELOOP, ENOENT, ENOTDIR, EPERM};
    match e {
        Error::Io { source, .. } => {
            !matches!(source.raw_os_error(), Some(ENOENT | ENOTDIR | EISDIR | ELOOP | EACCES | EPERM | EINVAL))
                && source.kind() != std::io::ErrorKind::InvalidData
        }
        Error::Store { .. } => true,
        _ => false,
    }
}

/// Renames `from` to `to`, never over something there.
fn rename_noreplace(from: &super::tree::At, to: &super::tree::At) -> std::io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags};
    renameat2(from.dir(), from.name(), to.dir(), to.name(), RenameFlags::RENAME_NOREPLACE).map_err(Into::into)
}

/// File records re-sealed per transaction.
const BATCH: usize = 512;

/// The keys a rotation moves from and to.
pub(super) struct NameMove<'a> {
    pub old: &'a NameKeys,
    pub new: &'a NameKeys,
}

/// What [`Volume::rotate_names`] did.
#[derive(Debug, Default)]
pub struct NamesMoved {
    /// Directory entries renamed (or found renamed already).
    pub entries: u64,
    pub xattr_sets: u64,
    pub records: u64,
    /// Long-name records of the old key that no entry uses any more, removed.
    pub stale_long_names: u64,
    /// Backing paths (or store rows) that authenticate under neither key, left as they are.
    pub left: Vec<String>,
}

/// A plaintext name and whether its backing name is under the new key already.
struct Named {
    plain: Vec<u8>,
    moved: bool,
}

impl Volume {
    /// Moves every name, binding, symlink target, attribute set, record MAC and the file-set
    /// tag from `k.old` to `k.new`. `progress(done, total)` counts directory entries.
    pub(super) fn rotate_names(&self, k: &NameMove<'_>, progress: &mut dyn FnMut(u64, u64)) -> Result<NamesMoved> {
        let mut moved = NamesMoved::default();
        let mut long_in_use: HashSet<([u8; 16], Vec<u8>)> = HashSet::new();
        let total = self.store().counts()?.0;
        self.move_tree(k, &mut moved, &mut long_in_use, &mut |done| progress(done, total.max(done)))?;
        // Renames and header writes durable before anything says they are done.
        self.sync_data_fs().map_err(|e| Error::io(self.data_dir(), "syncfs", e))?;
        self.drop_stale_long_names(k, &long_in_use, &mut moved)?;
        self.move_xattr_sets(k, &mut moved)?;
        self.move_record_macs(k, &mut moved)?;
        if !self.move_tenant_list(k.old, k.new)? {
            moved.left.push("the tenant list (it authenticates under neither name key)".into());
        }
        let versioned = self.versioned_file_set();
        let fns = |keys: &NameKeys| keys.file_set().fns(versioned);
        if !self.store().rekey_file_set(super::file_set::FILE_SET, fns(k.old), fns(k.new))? {
            moved.left.push(
                "the set of files (its tag does not authenticate: files removed or added behind the volume's back)"
                    .into(),
            );
        }
        Ok(moved)
    }

    /// The directory walk: the root's binding, then every entry, top-down.
    fn move_tree(
        &self,
        k: &NameMove<'_>,
        moved: &mut NamesMoved,
        long_in_use: &mut HashSet<([u8; 16], Vec<u8>)>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let root = self.data_dir().to_path_buf();
        let root_entry = Entry::root();
        if !self.rebind(k, &root.join(DIRID_FILE), &root_entry, &root_entry, false)? {
            moved.left.push(root.join(DIRID_FILE).display().to_string());
        }
        let mut stack = vec![(root, self.core.root_id)];
        while let Some((dir, dir_id)) = stack.pop() {
            let listed = self.core.tree.dir(&dir).map_err(|e| Error::io(&dir, "open directory", e))?;
            let mut entries = Vec::new();
            for e in std::fs::read_dir(listed.path()).map_err(|e| Error::io(&dir, "read directory", e))? {
                let name = e.map_err(|e| Error::io(&dir, "read directory", e))?.file_name();
                if name.as_bytes().first() != Some(&b'.') {
                    entries.push(name);
                } else if !ours(&name) {
                    // Not ours (a sync tool's temporary file?): nothing of it is under our keys.
                    tracing::warn!(path = %dir.join(&name).display(), "not a name of this volume; left as it is");
                }
            }
            for name in entries {
                let backing = dir.join(&name);
                // What does not authenticate, or is not what it should be (a directory without
                // its id file, a symlink where a directory was), is left and reported; only an
                // I/O error (a full disk) stops the rotation, to be finished later.
                match self.move_entry_name(k, &dir, &dir_id, &name, long_in_use, &mut moved.left) {
                    Ok(Some((to, Some(child_id)))) => stack.push((to, child_id)),
                    Ok(Some(_)) => {}
                    Ok(None) => moved.left.push(format!("{} (its name)", backing.display())),
                    Err(e) if stops_the_rotation(&e) => return Err(e),
                    Err(e) => moved.left.push(format!("{} ({e})", backing.display())),
                }
                moved.entries += 1;
                progress(moved.entries);
            }
        }
        Ok(())
    }

    /// Moves entry `name` of directory `dir` (id `dir_id`) to its name under the new key.
    /// Returns its new backing path (and, for a directory, its id, to walk it), or `None` if
    /// its name authenticates under neither key (left as it is). An object whose binding or
    /// symlink target authenticates under neither key is renamed all the same (no name stays
    /// under the old key) but not re-bound or re-sealed: it reads as an integrity error, as it
    /// did before (recovery after an unclean shutdown rebinds a binding a crash tore); its
    /// path is added to `left`.
    fn move_entry_name(
        &self,
        k: &NameMove<'_>,
        dir: &Path,
        dir_id: &[u8; 16],
        name: &OsStr,
        long_in_use: &mut HashSet<([u8; 16], Vec<u8>)>,
        left: &mut Vec<String>,
    ) -> Result<Option<(PathBuf, Option<[u8; 16]>)>> {
        let backing = dir.join(name);
        let Some(named) = self.read_name(k, dir, dir_id, name)? else { return Ok(None) };
        let plain = OsStr::from_bytes(&named.plain);
        let old_enc = names::encode(k.old, dir_id, plain)?;
        let new_enc = names::encode(k.new, dir_id, plain)?;
        if let Some((hash, _)) = &new_enc.long {
            long_in_use.insert((*dir_id, hash.clone()));
        }
        let (old_entry, new_entry) = (Entry::new(*dir_id, &old_enc.backing), Entry::new(*dir_id, &new_enc.backing));
        let to = dir.join(&new_enc.backing);
        let at = self.at(&backing, &backing)?;
        let Ok(meta) = std::fs::symlink_metadata(at.path()) else { return Ok(None) };
        drop(at);
        let t = meta.file_type();
        let header_file = |p: &Path| if t.is_dir() { p.join(DIRID_FILE) } else { p.to_path_buf() };
        let mut rebind = |p: &Path| -> Result<()> {
            let linked = t.is_file() && meta.nlink() > 1;
            if (t.is_dir() || t.is_file()) && !self.rebind(k, &header_file(p), &old_entry, &new_entry, linked)? {
                left.push(format!("{} (its binding)", p.display()));
            }
            Ok(())
        };
        if named.moved {
            // Renamed by an earlier run; its header may still be bound to the old name (a
            // crash between the two steps).
            rebind(&backing)?;
            return Ok(Some((backing.clone(), self.child_dir_id(t.is_dir(), &backing)?)));
        }
        if let Some((hash, sealed)) = &new_enc.long {
            self.store().apply(&[Change::PutLongName { dir: dir_id, hash, name: sealed }])?;
        }
        let copied = t.is_symlink() && self.move_symlink(k, &backing, &old_entry, &to, &new_entry)?;
        if !copied {
            rebind(&backing)?;
            if t.is_symlink() {
                left.push(format!("{} (its target)", backing.display()));
            }
            self.storage().sync_point(super::SyncPoint::NameMoved).map_err(|e| Error::io(&backing, "rename", e))?;
            let (from_at, to_at) = (self.at(&backing, &backing)?, self.at(&to, &to)?);
            rename_noreplace(&from_at, &to_at)
                .map_err(|e| Error::io(&backing, "rename to its name under the new key", e))?;
        }
        if let Some((hash, _)) = &old_enc.long {
            self.store().apply(&[Change::DeleteLongName { dir: dir_id, hash }])?;
        }
        Ok(Some((to.clone(), self.child_dir_id(t.is_dir(), &to)?)))
    }

    /// The id of directory `backing` (its binding was just checked), if `is_dir`.
    fn child_dir_id(&self, is_dir: bool, backing: &Path) -> Result<Option<[u8; 16]>> {
        Ok(if is_dir { Some(names::read_dir_id(&self.core.tree, backing)?) } else { None })
    }

    /// The plaintext of backing name `name` in directory `dir_id`, and the key it is under.
    /// A long name's record must be the one its hash names.
    fn read_name(&self, k: &NameMove<'_>, dir: &Path, dir_id: &[u8; 16], name: &OsStr) -> Result<Option<Named>> {
        let sealed = match names::sealed_name(self.store(), dir_id, name, dir) {
            Ok(s) => s,
            Err(Error::Integrity { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let b = name.as_bytes();
        if b.first() == Some(&b'~')
            && URL_SAFE_NO_PAD.decode(&b[1..]).ok().as_deref() != Some(&Sha256::digest(&sealed)[..])
        {
            return Ok(None);
        }
        if let Ok(plain) = k.new.decrypt(NamePurpose::Entry, dir_id, &sealed) {
            return Ok(Some(Named { plain, moved: true }));
        }
        Ok(k.old.decrypt(NamePurpose::Entry, dir_id, &sealed).ok().map(|plain| Named { plain, moved: false }))
    }

    /// Re-binds the object whose header is at `header_file` (a data file or `.dirid`) from
    /// `old_entry` under the old keys to `new_entry` under the new ones. True if it is bound
    /// there now (or was already); false, writing nothing, if it was bound to neither.
    fn rebind(
        &self,
        k: &NameMove<'_>,
        header_file: &Path,
        old_entry: &Entry,
        new_entry: &Entry,
        linked: bool,
    ) -> Result<bool> {
        let at = self.at(header_file, header_file)?;
        let f = crate::confine::open_file(at.path(), false)?;
        let mut buf = [0u8; OBJECT_HEADER_LEN];
        let got = f.read_at(&mut buf, 0).map_err(|e| Error::io(header_file, "read header", e))?;
        drop(f);
        let Ok(header) = ObjectHeader::decode(&buf[..got]) else { return Ok(false) };
        let done = authentic_with(k.new, &header, new_entry);
        if !done && !authentic_with(k.old, &header, old_entry) {
            // A file whose header is still bound to another of its names, reached at a name
            // a row binds (a link whose header rewrite a crash lost, given its row by
            // recovery; as `binding.rs` accepts it): the row moves, and the header with the
            // name it is bound to. Only a regular file with another link: a copy of a header
            // put at a name a stale row still binds (the row of a name that went, its
            // deletion cut by a crash) is no link of anything, and its row dies with the key.
            let by_row = header.kind == ObjectKind::File && matches!(header.binding, Binding::Entry(_)) && linked;
            return Ok(by_row && self.links_bound() && self.move_link_row(k, &header.id, old_entry, new_entry)?);
        }
        let shared = matches!(header.binding, Binding::Shared(_));
        if shared && self.links_bound() && !self.move_link_row(k, &header.id, old_entry, new_entry)? {
            return Ok(false);
        }
        if done {
            return Ok(true);
        }
        self.rewrite_header(at.path(), &header.id, false, header_file, |old| {
            Some(bind_with(k.new, old.kind, old.id, (!shared).then_some(new_entry), old.xattrs, old.tenant))
        })?;
        Ok(true)
    }

    /// Moves the store row that binds entry `old_entry` of shared file `id` under the old keys
    /// to `new_entry` under the new ones (in one transaction; a shared file is authorized by
    /// either row meanwhile). False, writing nothing, if neither row is there.
    fn move_link_row(&self, k: &NameMove<'_>, id: &[u8; 16], old_entry: &Entry, new_entry: &Entry) -> Result<bool> {
        let (old, new) = (super::links::tag_with(k.old, id, old_entry), super::links::tag_with(k.new, id, new_entry));
        let (has_old, has_new) = (self.store().has_link(id, &old)?, self.store().has_link(id, &new)?);
        if !has_old && !has_new {
            return Ok(false);
        }
        let mut changes = vec![Change::DeleteLink { object: id, tag: &old }];
        if !has_new {
            changes.push(Change::PutLink { object: id, tag: &new });
        }
        self.store().apply(&changes)?;
        Ok(true)
    }

    /// Replaces the symlink at `from` (sealed for `old_entry` under the old keys) with one at
    /// `to` sealed for `new_entry` under the new ones: the copy (same owner and times) is
    /// renamed into place before the old link goes, so a crash leaves one or both, never
    /// neither. False, touching nothing, if its target does not authenticate.
    fn move_symlink(
        &self,
        k: &NameMove<'_>,
        from: &Path,
        old_entry: &Entry,
        to: &Path,
        new_entry: &Entry,
    ) -> Result<bool> {
        let from_at = self.at(from, from)?;
        let stored = std::fs::read_link(from_at.path()).map_err(|e| Error::io(from, "readlink", e))?;
        let Some(target) = open_target_with(k.old, old_entry, stored.as_os_str()) else { return Ok(false) };
        let to_at = self.at(to, to)?;
        let done = std::fs::read_link(to_at.path())
            .ok()
            .is_some_and(|s| open_target_with(k.new, new_entry, s.as_os_str()).as_deref() == Some(&target[..]));
        if !done {
            let old = std::fs::symlink_metadata(from_at.path()).map_err(|e| Error::io(from, "stat", e))?;
            let tmp = names::temp_sibling(to);
            let tmp_at = self.at(&tmp, to)?;
            std::os::unix::fs::symlink(seal_target_with(k.new, new_entry, &target), tmp_at.path())
                .map_err(|e| Error::io(to, "symlink", e))?;
            let placed = keep_owner_and_times(&tmp_at, &old)
                .and_then(|()| {
                    self.storage().sync_point(super::SyncPoint::NameMoved)?;
                    rename_noreplace(&tmp_at, &to_at)
                })
                .map_err(|e| Error::io(to, "place the re-sealed symlink", e));
            if let Err(e) = placed {
                let _ = std::fs::remove_file(tmp_at.path());
                return Err(e);
            }
            if let Ok(new) = std::fs::symlink_metadata(to_at.path()) {
                self.alias_inode(old.ino(), new.ino());
            }
        }
        nix::unistd::unlinkat(from_at.dir(), from_at.name(), nix::unistd::UnlinkatFlags::NoRemoveDir)
            .map_err(|e| Error::io(from, "unlink the old symlink", e.into()))?;
        Ok(true)
    }

    /// Long-name records under the old key that no entry names any more (the old names of
    /// entries renamed, whose removal a crash cut short) are removed: they would still
    /// decrypt under the old key. Rows under neither key are left (and reported).
    fn drop_stale_long_names(
        &self,
        k: &NameMove<'_>,
        in_use: &HashSet<([u8; 16], Vec<u8>)>,
        moved: &mut NamesMoved,
    ) -> Result<()> {
        for (dir, hash, sealed) in self.store().long_names()? {
            if in_use.contains(&(dir, hash.clone())) {
                continue;
            }
            if k.old.decrypt(NamePurpose::Entry, &dir, &sealed).is_ok() {
                self.store().apply(&[Change::DeleteLongName { dir: &dir, hash: &hash }])?;
                moved.stale_long_names += 1;
            } else if k.new.decrypt(NamePurpose::Entry, &dir, &sealed).is_err() {
                moved.left.push(format!(
                    "long name {} in directory {}",
                    crate::format::hex(&hash),
                    crate::format::hex(&dir)
                ));
            }
        }
        Ok(())
    }

    /// Every object's attribute set, re-encrypted and re-sealed (one transaction each).
    fn move_xattr_sets(&self, k: &NameMove<'_>, moved: &mut NamesMoved) -> Result<()> {
        use super::xattr::{reseal_rows, seal_msg, SEAL_ROW};
        let _one = self.core.xattr_lock.lock().unwrap_or_else(|p| p.into_inner());
        for object in self.store().xattr_objects()? {
            let mut rows = self.store().xattrs_of(&object)?;
            let Some(seal) = rows.iter().position(|(n, _)| n == SEAL_ROW).map(|i| rows.remove(i).1) else {
                moved.left.push(format!("attributes of object {} (no seal)", crate::format::hex(&object)));
                continue;
            };
            let ok = |keys: &NameKeys| {
                aws_lc_rs::constant_time::verify_slices_are_equal(&seal, &keys.xattr_mac(&seal_msg(&object, &rows)))
                    .is_ok()
            };
            if ok(k.new) {
                continue;
            }
            let resealed = ok(k.old).then(|| reseal_rows(k.old, &object, k.new, &object, &rows)).flatten();
            let Some(sealed) = resealed else {
                moved.left.push(format!("attributes of object {}", crate::format::hex(&object)));
                continue;
            };
            let seal = k.new.xattr_mac(&seal_msg(&object, &sealed));
            let mut changes = vec![Change::DeleteXattrs { object: &object }];
            changes.extend(sealed.iter().map(|(n, v)| Change::PutXattr { object: &object, name: n, value: v }));
            changes.push(Change::PutXattr { object: &object, name: SEAL_ROW, value: &seal });
            self.store().apply(&changes)?;
            moved.xattr_sets += 1;
        }
        Ok(())
    }

    /// Every file record's MAC, re-computed under the new key (if it authenticates under the
    /// old one), in batched transactions.
    fn move_record_macs(&self, k: &NameMove<'_>, moved: &mut NamesMoved) -> Result<()> {
        let ids = self.store().file_ids()?;
        for chunk in ids.chunks(BATCH) {
            let mut resealed: Vec<([u8; 16], Vec<u8>, [u8; 16])> = Vec::new();
            for id in chunk {
                let Some((rec, extents)) = self.store().load(id)? else { continue };
                let mac_with = |keys: &NameKeys| {
                    super::file::record_mac_with(
                        keys,
                        rec.cipher,
                        id,
                        rec.size,
                        extents.iter().map(|e| (e.index, &e.written[..])),
                    )
                };
                let Some(stored) = rec.mac.clone() else { continue };
                let (old, new) = (mac_with(k.old), mac_with(k.new));
                let eq = |a: &[u8], b: &[u8]| aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok();
                if eq(&stored, &new) {
                    continue;
                }
                if eq(&stored, &old) {
                    resealed.push((*id, stored, new));
                } else {
                    moved.left.push(format!("record of file {}", crate::format::hex(id)));
                }
            }
            let changes: Vec<Change<'_>> =
                resealed.iter().map(|(id, old, mac)| Change::ResealFile { id, old, mac }).collect();
            self.store().apply(&changes)?;
            moved.records += resealed.len() as u64;
        }
        Ok(())
    }
}
