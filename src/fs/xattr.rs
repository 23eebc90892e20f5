//! Extended attributes (`user.*` only), kept encrypted in the store: the name
//! deterministically (so it can be looked up) under the file's or directory's id, the value
//! with a random nonce bound to the object and the encrypted name.
//!
//! Each object's set of attributes is sealed (header feature bit 6, `xattrs-sealed`): a row
//! named [`SEAL_ROW`] holds `HMAC(xattr key, object id || every (name, value) row)`, written
//! in the same transaction as every change, and the object's header carries a flag (covered
//! by its entry binding) exactly while it has a seal. A dropped, added or rolled-back row, a
//! whole set deleted, or a set the header does not know of is an integrity error, never an
//! absent or older attribute. The flag is written (durably) before the first attribute and
//! cleared after the last is gone, so a crash leaves at worst a flag without a set, which
//! recovery after an authenticated unclean shutdown clears (`check_xattr_set`).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::binding::Entry;
use super::volume::{EntryKind, Volume};
use crate::crypto::NamePurpose;
use crate::keys::NameKeys;
use crate::store::Change;
use crate::{Error, Result};

const XATTR_NAME_MAX: usize = 255;
const XATTR_VALUE_MAX: usize = 64 * 1024;
/// The name of the row holding an object's seal (an encrypted name is at least 17 bytes).
pub(super) const SEAL_ROW: &[u8] = &[0];

/// setxattr(2) flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrMode {
    /// Create or replace.
    Set,
    /// XATTR_CREATE: fail if it exists.
    Create,
    /// XATTR_REPLACE: fail if it does not exist.
    Replace,
}

/// Whether `name` is in the one namespace kept (`user.*`): no other name has a value, which
/// answers the kernel's `security.capability` query before every write without a lookup.
pub fn kept_namespace(name: &OsStr) -> bool {
    name.as_bytes().starts_with(b"user.")
}

fn user_name(name: &OsStr) -> Result<&[u8]> {
    let b = name.as_bytes();
    if !b.starts_with(b"user.") {
        return Err(Error::NotSupported(format!("extended attribute namespace of {name:?} (only user.*)")));
    }
    if b.len() > XATTR_NAME_MAX || b.len() == 5 {
        return Err(Error::InvalidArgument(format!("bad extended attribute name {name:?}")));
    }
    Ok(b)
}

/// (encrypted name, encrypted value) rows of one object, in name order.
pub(super) type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// The object whose attributes are asked for: its id, where its header is, its entry and
/// whether its header says it has attributes.
struct Target {
    id: [u8; 16],
    header_file: PathBuf,
    entry: Entry,
    flagged: bool,
}

/// What an object's seal covers: its id and every row, lengths first.
pub(super) fn seal_msg(object: &[u8; 16], rows: &Rows) -> Vec<u8> {
    let mut msg = object.to_vec();
    for (name, value) in rows {
        msg.extend_from_slice(&(name.len() as u16).to_le_bytes());
        msg.extend_from_slice(name);
        msg.extend_from_slice(&(value.len() as u32).to_le_bytes());
        msg.extend_from_slice(value);
    }
    msg
}

/// The context an attribute value is sealed with: its object and its sealed name.
pub(super) fn value_context(object: &[u8; 16], sealed_name: &[u8]) -> [u8; 16] {
    let h = Sha256::new().chain_update(object).chain_update(sealed_name).finalize();
    h[..16].try_into().expect("SHA-256 is 32 bytes")
}

/// Rows of object `from` (under `from_keys`) opened and sealed anew for object `to` under
/// `to_keys`, in name order (a copy, a KEK rotation); `None` if a row does not open.
pub(super) fn reseal_rows(
    from_keys: &NameKeys,
    from: &[u8; 16],
    to_keys: &NameKeys,
    to: &[u8; 16],
    rows: &Rows,
) -> Option<Rows> {
    let mut out = Rows::new();
    for (sealed, value) in rows {
        let name = from_keys.decrypt(NamePurpose::XattrName, from, sealed).ok()?;
        let value = from_keys.open_random(NamePurpose::XattrValue, &value_context(from, sealed), value).ok()?;
        let new_name = to_keys.encrypt(NamePurpose::XattrName, to, &name);
        let new_value = to_keys.seal_random(NamePurpose::XattrValue, &value_context(to, &new_name), &value);
        out.push((new_name, new_value));
    }
    out.sort();
    Some(out)
}

impl Volume {
    pub(super) fn xattrs_sealed(&self) -> bool {
        self.header().features & crate::format::FEATURE_XATTRS_SEALED != 0
    }

    /// The object extended attributes of `path` are stored under (file id or directory
    /// id), checked to be bound to its entry.
    fn xattr_target(&self, path: &Path) -> Result<Target> {
        let backing = self.backing_or_root(path)?;
        // The kind from one lstat (not getattr, which would read the header and the size too).
        let entry = self.entry_of(&backing)?;
        let (header, header_file) = match self.lstat_of(&backing, path)?.kind() {
            EntryKind::File => {
                let at = self.at(&backing, path)?;
                let f = super::volume::open_data(&at, false).map_err(|e| Error::io(path, "open", e))?;
                (self.bound_file_header(&f, &entry, at.path(), path)?, backing.clone())
            }
            EntryKind::Directory => {
                let read = || super::names::read_dir_header(&self.core.tree, &backing);
                (self.checked_header(read()?, &entry, path, read)?, backing.join(super::names::DIRID_FILE))
            }
            _ => return Err(Error::NotSupported("extended attributes on special files and symlinks".into())),
        };
        Ok(Target { id: header.id, header_file, entry, flagged: header.xattrs })
    }

    /// The attribute rows of `t`, checked against its seal.
    fn sealed_rows(&self, t: &Target, path: &Path) -> Result<Rows> {
        let mut rows = self.store().xattrs_of(&t.id)?;
        let seal = rows.iter().position(|(n, _)| n == SEAL_ROW).map(|i| rows.remove(i).1);
        let bad = |why: &str| Err(Error::integrity(path, format!("extended attributes {why}")));
        match seal {
            // A sealed set the header does not know of: restored from an older copy of the
            // store after its last attribute was removed, or planted.
            Some(_) if !t.flagged && self.entries_bound() => {
                return bad("are in the metadata store, but the object's header says it has none (an older store?)")
            }
            Some(mac) => {
                let want = self.keys().xattr_mac(&seal_msg(&t.id, &rows));
                if aws_lc_rs::constant_time::verify_slices_are_equal(&mac, &want).is_err() {
                    return bad("do not authenticate (a row dropped, added or rolled back in the metadata store)");
                }
            }
            None if t.flagged => return bad("were removed from the metadata store"),
            None if !rows.is_empty() && self.xattrs_sealed() => {
                return bad("are in the metadata store without their seal")
            }
            None => {}
        }
        Ok(rows)
    }

    /// Stores `rows` as the whole set of `t` (`changed`: the row changes that make it so),
    /// with its new seal. The header's flag is set (durably) before the first row and
    /// cleared after the last is gone: a crash in between leaves a flag without a set.
    fn store_rows(&self, t: &Target, rows: &Rows, changed: Change<'_>, path: &Path) -> Result<()> {
        let at = self.at(&t.header_file, path)?;
        if rows.is_empty() {
            self.store().apply(&[changed, Change::DeleteXattr { object: &t.id, name: SEAL_ROW }])?;
            if t.flagged {
                self.write_xattrs_flag(at.path(), &t.id, &t.entry, false, path)?;
            }
            return Ok(());
        }
        if !t.flagged {
            self.write_xattrs_flag(at.path(), &t.id, &t.entry, true, path)?;
        }
        let seal = self.keys().xattr_mac(&seal_msg(&t.id, rows));
        self.store().apply(&[changed, Change::PutXattr { object: &t.id, name: SEAL_ROW, value: &seal }])
    }

    /// fsck: whether the attribute set of the object with `header` (at `header_file`, a
    /// backing path, named by `entry`) reads; the problem if not, and with `repair` (after
    /// an authenticated unclean shutdown) a flag left without any set is cleared.
    pub(super) fn check_xattr_set(
        &self,
        header: &crate::format::ObjectHeader,
        header_file: &Path,
        entry: &Entry,
        path: &Path,
        repair: bool,
    ) -> Result<Option<(String, Option<String>)>> {
        let t = Target {
            id: header.id,
            header_file: header_file.to_path_buf(),
            entry: entry.clone(),
            flagged: header.xattrs,
        };
        let reason = match self.sealed_rows(&t, path) {
            Ok(_) => return Ok(None),
            Err(Error::Integrity { reason, .. }) => reason,
            Err(e) => return Err(e),
        };
        if repair && header.xattrs && self.store().xattrs_of(&header.id)?.is_empty() {
            let at = self.at(header_file, path)?;
            self.write_xattrs_flag(at.path(), &header.id, entry, false, path)?;
            return Ok(Some((reason, Some("the flag of a set the crash left unwritten cleared".into()))));
        }
        Ok(Some((reason, None)))
    }

    pub fn set_xattr(&self, path: &Path, name: &OsStr, value: &[u8], mode: XattrMode) -> Result<()> {
        let plain = user_name(name)?;
        if value.len() > XATTR_VALUE_MAX {
            return Err(Error::InvalidArgument(format!("{}: extended attribute value too large", path.display())));
        }
        let _one = self.core.xattr_lock.lock().unwrap_or_else(|p| p.into_inner());
        let t = self.xattr_target(path)?;
        let mut rows = self.sealed_rows(&t, path)?;
        let sealed_name = self.keys().names().encrypt(NamePurpose::XattrName, &t.id, plain);
        let at = rows.binary_search_by(|(n, _)| n.cmp(&sealed_name));
        match mode {
            XattrMode::Create if at.is_ok() => return Err(Error::Exists(path.into())),
            XattrMode::Replace if at.is_err() => return Err(Error::NoAttribute(path.into())),
            _ => {}
        }
        let ctx = value_context(&t.id, &sealed_name);
        let sealed_value = self.keys().names().seal_random(NamePurpose::XattrValue, &ctx, value);
        match at {
            Ok(i) => rows[i].1 = sealed_value.clone(),
            Err(i) => rows.insert(i, (sealed_name.clone(), sealed_value.clone())),
        }
        let put = Change::PutXattr { object: &t.id, name: &sealed_name, value: &sealed_value };
        self.store_rows(&t, &rows, put, path)
    }

    pub fn get_xattr(&self, path: &Path, name: &OsStr) -> Result<Vec<u8>> {
        let Ok(plain) = user_name(name) else {
            return Err(Error::NoAttribute(path.into()));
        };
        let _one = self.core.xattr_lock.lock().unwrap_or_else(|p| p.into_inner());
        let t = self.xattr_target(path)?;
        let rows = self.sealed_rows(&t, path)?;
        let sealed_name = self.keys().names().encrypt(NamePurpose::XattrName, &t.id, plain);
        let (_, sealed) =
            rows.iter().find(|(n, _)| *n == sealed_name).ok_or_else(|| Error::NoAttribute(path.into()))?;
        let ctx = value_context(&t.id, &sealed_name);
        self.keys()
            .names()
            .open_random(NamePurpose::XattrValue, &ctx, sealed)
            .map_err(|_| Error::integrity(path, "extended attribute value does not authenticate"))
    }

    pub fn list_xattrs(&self, path: &Path) -> Result<Vec<OsString>> {
        let _one = self.core.xattr_lock.lock().unwrap_or_else(|p| p.into_inner());
        let t = match self.xattr_target(path) {
            Ok(t) => t,
            Err(Error::NotSupported(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for (sealed, _) in self.sealed_rows(&t, path)? {
            let name = self
                .keys()
                .names()
                .decrypt(NamePurpose::XattrName, &t.id, &sealed)
                .map_err(|_| Error::integrity(path, "extended attribute name does not authenticate"))?;
            out.push(OsString::from_vec(name));
        }
        Ok(out)
    }

    /// Re-encrypts every extended attribute of the file at `path` for the new file `to`, whose
    /// header is at `to_header` (an `At::path`) and which will be named by `to_entry` (rekey).
    pub(super) fn copy_xattrs(&self, path: &Path, to: &[u8; 16], to_header: &Path, to_entry: &Entry) -> Result<()> {
        let _one = self.core.xattr_lock.lock().unwrap_or_else(|p| p.into_inner());
        let from = self.xattr_target(path)?;
        let names = self.keys().names();
        let rows = reseal_rows(&names, &from.id, &names, to, &self.sealed_rows(&from, path)?)
            .ok_or_else(|| Error::integrity(path, "extended attribute does not authenticate"))?;
        if rows.is_empty() {
            return Ok(());
        }
        self.write_xattrs_flag(to_header, to, to_entry, true, path)?;
        let seal = self.keys().xattr_mac(&seal_msg(to, &rows));
        let mut changes: Vec<Change<'_>> =
            rows.iter().map(|(n, v)| Change::PutXattr { object: to, name: n, value: v }).collect();
        changes.push(Change::PutXattr { object: to, name: SEAL_ROW, value: &seal });
        self.store().apply(&changes)
    }

    pub fn remove_xattr(&self, path: &Path, name: &OsStr) -> Result<()> {
        let plain = user_name(name)?;
        let _one = self.core.xattr_lock.lock().unwrap_or_else(|p| p.into_inner());
        let t = self.xattr_target(path)?;
        let mut rows = self.sealed_rows(&t, path)?;
        let sealed_name = self.keys().names().encrypt(NamePurpose::XattrName, &t.id, plain);
        let i = rows.binary_search_by(|(n, _)| n.cmp(&sealed_name)).map_err(|_| Error::NoAttribute(path.into()))?;
        rows.remove(i);
        self.store_rows(&t, &rows, Change::DeleteXattr { object: &t.id, name: &sealed_name }, path)
    }

    /// A volume made before attribute sets were sealed: seals every object's set where it is
    /// (trusted this once) and flags its header, then sets the feature bit (a crash in
    /// between only repeats it). Read-only storage defers it.
    pub(super) fn seal_xattrs_upgrade(&self) -> Result<()> {
        let seal_sets = || {
            let mut objects: std::collections::HashSet<[u8; 16]> = self.store().xattr_objects()?.into_iter().collect();
            if objects.is_empty() {
                return Ok(());
            }
            self.walk_tree(
                &mut |obj| {
                    if !objects.remove(&obj.header.id) {
                        return Ok(());
                    }
                    let mut rows = self.store().xattrs_of(&obj.header.id)?;
                    rows.retain(|(n, _)| n != SEAL_ROW);
                    let seal = self.keys().xattr_mac(&seal_msg(&obj.header.id, &rows));
                    let id = obj.header.id;
                    self.write_xattrs_flag(obj.header_file, &id, obj.entry, true, obj.backing)?;
                    self.store().apply(&[Change::PutXattr { object: &id, name: SEAL_ROW, value: &seal }])
                },
                &mut |_, _| Ok(()),
            )
        };
        self.upgrade(crate::format::FEATURE_XATTRS_SEALED, "sealing extended attribute sets", seal_sets).map(|_| ())
    }
}
