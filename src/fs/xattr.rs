//! Extended attributes (`user.*` only), kept encrypted in the store: the name
//! deterministically (so it can be looked up) under the file's or directory's id, the value
//! with a random nonce bound to the object and the encrypted name.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::volume::{EntryKind, Volume};
use crate::crypto::NamePurpose;
use crate::store::Change;
use crate::{Error, Result};

const XATTR_NAME_MAX: usize = 255;
const XATTR_VALUE_MAX: usize = 64 * 1024;

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

impl Volume {
    /// The id extended attributes of `path` are stored under (file id or directory id).
    fn xattr_object(&self, path: &Path) -> Result<[u8; 16]> {
        let backing = self.backing_or_root(path)?;
        match self.getattr(path)?.kind {
            EntryKind::File => self.file_id_of(&backing, path),
            EntryKind::Directory => super::names::read_dir_id(&self.core.tree, &backing),
            _ => Err(Error::NotSupported("extended attributes on special files and symlinks".into())),
        }
    }

    fn value_context(object: &[u8; 16], sealed_name: &[u8]) -> [u8; 16] {
        let h = Sha256::new().chain_update(object).chain_update(sealed_name).finalize();
        h[..16].try_into().expect("SHA-256 is 32 bytes")
    }

    pub fn set_xattr(&self, path: &Path, name: &OsStr, value: &[u8], mode: XattrMode) -> Result<()> {
        let plain = user_name(name)?;
        if value.len() > XATTR_VALUE_MAX {
            return Err(Error::InvalidArgument(format!("{}: extended attribute value too large", path.display())));
        }
        let object = self.xattr_object(path)?;
        let sealed_name = self.keys().names().encrypt(NamePurpose::XattrName, &object, plain);
        let exists = self.store().xattr(&object, &sealed_name)?.is_some();
        match mode {
            XattrMode::Create if exists => return Err(Error::Exists(path.into())),
            XattrMode::Replace if !exists => return Err(Error::NoAttribute(path.into())),
            _ => {}
        }
        let ctx = Self::value_context(&object, &sealed_name);
        let sealed_value = self.keys().names().seal_random(NamePurpose::XattrValue, &ctx, value);
        self.store().apply(&[Change::PutXattr { object: &object, name: &sealed_name, value: &sealed_value }])
    }

    pub fn get_xattr(&self, path: &Path, name: &OsStr) -> Result<Vec<u8>> {
        let Ok(plain) = user_name(name) else {
            return Err(Error::NoAttribute(path.into()));
        };
        let object = self.xattr_object(path)?;
        let sealed_name = self.keys().names().encrypt(NamePurpose::XattrName, &object, plain);
        let sealed = self.store().xattr(&object, &sealed_name)?.ok_or_else(|| Error::NoAttribute(path.into()))?;
        let ctx = Self::value_context(&object, &sealed_name);
        self.keys()
            .names()
            .open_random(NamePurpose::XattrValue, &ctx, &sealed)
            .map_err(|_| Error::integrity(path, "extended attribute value does not authenticate"))
    }

    pub fn list_xattrs(&self, path: &Path) -> Result<Vec<OsString>> {
        let object = match self.xattr_object(path) {
            Ok(o) => o,
            Err(Error::NotSupported(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for sealed in self.store().xattr_names(&object)? {
            let name = self
                .keys()
                .names()
                .decrypt(NamePurpose::XattrName, &object, &sealed)
                .map_err(|_| Error::integrity(path, "extended attribute name does not authenticate"))?;
            out.push(OsString::from_vec(name));
        }
        Ok(out)
    }

    /// Re-encrypts every extended attribute of object `from` for object `to` (rekey).
    pub(super) fn copy_xattrs(&self, from: &[u8; 16], to: &[u8; 16], path: &Path) -> Result<()> {
        let names = self.keys().names();
        let bad = || Error::integrity(path, "extended attribute does not authenticate");
        let mut rows = Vec::new();
        for sealed in self.store().xattr_names(from)? {
            let name = names.decrypt(NamePurpose::XattrName, from, &sealed).map_err(|_| bad())?;
            let value = self.store().xattr(from, &sealed)?.ok_or_else(bad)?;
            let value = names
                .open_random(NamePurpose::XattrValue, &Self::value_context(from, &sealed), &value)
                .map_err(|_| bad())?;
            let new_name = names.encrypt(NamePurpose::XattrName, to, &name);
            let new_value = names.seal_random(NamePurpose::XattrValue, &Self::value_context(to, &new_name), &value);
            rows.push((new_name, new_value));
        }
        let changes: Vec<Change<'_>> =
            rows.iter().map(|(n, v)| Change::PutXattr { object: to, name: n, value: v }).collect();
        self.store().apply(&changes)
    }

    pub fn remove_xattr(&self, path: &Path, name: &OsStr) -> Result<()> {
        let plain = user_name(name)?;
        let object = self.xattr_object(path)?;
        let sealed_name = self.keys().names().encrypt(NamePurpose::XattrName, &object, plain);
        if self.store().xattr(&object, &sealed_name)?.is_none() {
            return Err(Error::NoAttribute(path.into()));
        }
        self.store().apply(&[Change::DeleteXattr { object: &object, name: &sealed_name }])
    }
}
