//! The volume's list of tenants (header feature bit 11, `tenants`).
//!
//! A tenant is a subtree whose files live in a volume of their own, with its own KEK under
//! its own root, nested at `CIPHERDIR/tenants/<volume id>/`. The outer volume keeps one
//! directory for it, the tenant's root (empty in the outer volume: its entries are the
//! nested volume's), and one store row, `tenants`, listing every tenant: its nested volume's
//! id, the id of that outer directory and its root's URI, sealed under the outer name key
//! (purpose `Tenants`, context = the outer volume id). So nothing planted in CIPHERDIR makes
//! a directory a tenant's, moves a tenant, or names its root; and the feature bit makes the
//! row required, so a deleted row is an integrity error, not tenant directories that open
//! as empty plain ones (whose new files would then be under the outer KEK). The tenant's
//! root directory says so itself, in its authenticated header (object header flag bit 3,
//! made with the directory): a flagged directory the list does not name (a list, or a
//! header without bit 11, put back from an older copy) is an integrity error
//! ([`Volume::tenant_root_at`]).
//!
//! Owns the list's encoding and its row; the nested volumes are `crate::tenant`'s.

use std::path::{Path, PathBuf};

use super::volume::Volume;
use crate::crypto::NamePurpose;
use crate::format::codec::{put_var_bytes, Reader};
use crate::format::{hex, DecodeError, FEATURE_TENANTS};
use crate::store::Change;
use crate::{Error, Result};

/// The directory in CIPHERDIR that holds the tenants' volumes.
pub const TENANTS_DIR: &str = "tenants";
/// `meta` key of the sealed list.
const TENANTS_ROW: &str = "tenants";
/// More than any deployment of one volume needs; bounds the decoder.
pub const MAX_TENANTS: usize = 4096;
const MAX_URI: usize = 4096;
const MAX_LABEL: usize = 4096;
const VERSION: u8 = 1;

/// One tenant, as the outer volume lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantEntry {
    /// The nested volume's id (its directory under `tenants/` is named by it).
    pub id: [u8; 16],
    /// The id of the outer directory that is the tenant's root.
    pub dir_id: [u8; 16],
    /// The tenant's root (the nested volume's header must name the same).
    pub kms_uri: String,
    /// The path the tenant was added at (the directory may have moved since): for people.
    pub label: String,
    /// The root a `rotate --root --tenant` under way moves the tenant to (empty: none): its
    /// header may name this one too, until the rotation is finished.
    pub pending_uri: String,
    /// Where the root directory is: its parent's directory id and its (plaintext) name. A
    /// tenant's root is never renamed, so this stays; a directory there that is not the
    /// root (it was removed, or replaced, behind the volume's back) is an integrity error.
    pub parent_id: [u8; 16],
    pub name: Vec<u8>,
}

/// `version || u16 count || (id || dir_id || var uri || var label || var pending uri ||
/// parent_id || var name)*`.
pub fn encode(list: &[TenantEntry]) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend_from_slice(&u16::try_from(list.len()).expect("bounded by MAX_TENANTS").to_le_bytes());
    for t in list {
        out.extend_from_slice(&t.id);
        out.extend_from_slice(&t.dir_id);
        put_var_bytes(&mut out, t.kms_uri.as_bytes());
        put_var_bytes(&mut out, t.label.as_bytes());
        put_var_bytes(&mut out, t.pending_uri.as_bytes());
        out.extend_from_slice(&t.parent_id);
        put_var_bytes(&mut out, &t.name);
    }
    out
}

pub fn decode(buf: &[u8]) -> std::result::Result<Vec<TenantEntry>, DecodeError> {
    let mut r = Reader::new(buf, "tenant list");
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(DecodeError::Unsupported(format!("tenant list version {version}")));
    }
    let count = usize::from(r.u16("count")?);
    if count > MAX_TENANTS {
        return Err(r.corrupt(format!("{count} tenants, more than {MAX_TENANTS}")));
    }
    let text = |b: &[u8], what: &str| {
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Corrupt(format!("tenant list: {what} is not UTF-8")))
    };
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let id = r.array("id")?;
        let dir_id = r.array("dir id")?;
        let kms_uri = text(r.var_bytes("root", 1, MAX_URI)?, "root")?;
        let label = text(r.var_bytes("label", 0, MAX_LABEL)?, "label")?;
        let pending_uri = text(r.var_bytes("pending root", 0, MAX_URI)?, "pending root")?;
        let parent_id = r.array("parent id")?;
        let name = r.var_bytes("name", 1, 255)?.to_vec();
        out.push(TenantEntry { id, dir_id, kms_uri, label, pending_uri, parent_id, name });
    }
    r.finish()?;
    Ok(out)
}

impl Volume {
    /// Where tenant `id`'s volume lives.
    pub fn tenant_dir(&self, id: &[u8; 16]) -> PathBuf {
        self.cipherdir().join(TENANTS_DIR).join(hex(id))
    }

    /// The tenants, from the sealed row (none unless the header has feature `tenants`).
    pub fn tenants(&self) -> Result<Vec<TenantEntry>> {
        let store = self.store().path().to_path_buf();
        if self.header().features & FEATURE_TENANTS == 0 {
            // An empty list may be there without the bit: the first `tenant add` writes it
            // before setting the bit. A list naming tenants may not.
            let listed = match self.store().meta(TENANTS_ROW)? {
                Some(row) => self.open_list(&row).map(|l| !l.is_empty()).unwrap_or(true),
                None => false,
            };
            if listed {
                return Err(Error::integrity(
                    &store,
                    "has a tenant list, but the volume header says the volume has no tenants (a header put back from before its first tenant?)",
                ));
            }
            return Ok(Vec::new());
        }
        let row = self.store().meta(TENANTS_ROW)?.ok_or_else(|| {
            Error::integrity(&store, "the volume has tenants (header feature), but its tenant list is missing")
        })?;
        self.open_list(&row)
    }

    /// The list sealed in `row`, under the name key (or the pending one while a rotation
    /// moves it there).
    fn open_list(&self, row: &[u8]) -> Result<Vec<TenantEntry>> {
        let store = self.store().path().to_path_buf();
        let vid = self.header().volume_id;
        let open = |k: &crate::keys::NameKeys| k.open_random(NamePurpose::Tenants, &vid, row).ok();
        let plain = open(&self.keys().names())
            .or_else(|| self.keys().pending_names().and_then(|k| open(&k)))
            .ok_or_else(|| Error::integrity(&store, "the tenant list does not authenticate (edited or planted)"))?;
        decode(&plain).map_err(|e| Error::integrity(&store, e.to_string()))
    }

    /// Replaces the list (the first one sets the header feature, after the row is stored).
    pub fn put_tenants(&self, list: &[TenantEntry]) -> Result<()> {
        if list.len() > MAX_TENANTS {
            return Err(Error::InvalidArgument(format!("a volume holds at most {MAX_TENANTS} tenants")));
        }
        let vid = self.header().volume_id;
        let seal = |l: &[TenantEntry]| self.keys().names().seal_random(NamePurpose::Tenants, &vid, &encode(l));
        let put = |sealed: &[u8]| self.store().apply(&[Change::PutMeta { key: TENANTS_ROW, value: sealed }]);
        if self.header().features & FEATURE_TENANTS == 0 {
            // An empty list, then the bit, then the list: a crash in between leaves a volume
            // that opens (an empty list without the bit is no tenant).
            let empty = seal(&[]);
            if !self.upgrade(FEATURE_TENANTS, "recording that the volume has tenants", || put(&empty))? {
                return Err(Error::io(
                    self.cipherdir(),
                    "record the tenant list",
                    std::io::Error::from_raw_os_error(30),
                ));
            }
        }
        put(&seal(list))
    }

    /// The tenant (of `list`) whose root is the directory at `path`, if it is one: the
    /// directory's own flag and the list must agree, else an integrity error naming `path`.
    /// The id of directory `path` (a plaintext path of this volume).
    pub fn dir_id_of(&self, path: &Path) -> Result<[u8; 16]> {
        Ok(self.open_dir(path, None)?.1)
    }

    /// The tenant (of `list`) whose root's place is `path` (its parent's id and its name),
    /// whatever is there now.
    pub fn tenant_place_at<'a>(&self, path: &Path, list: &'a [TenantEntry]) -> Result<Option<&'a TenantEntry>> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else { return Ok(None) };
        let name = std::os::unix::ffi::OsStrExt::as_bytes(name);
        if list.is_empty() || !list.iter().any(|t| t.name == name) {
            return Ok(None);
        }
        let pid = self.dir_id_of(parent)?;
        Ok(list.iter().find(|t| t.parent_id == pid && t.name == name))
    }

    /// With `expect`, only if `path` is (still) that backing inode (else NotFound).
    pub fn tenant_root_at<'a>(
        &self,
        path: &Path,
        list: &'a [TenantEntry],
        expect: Option<u64>,
    ) -> Result<Option<&'a TenantEntry>> {
        let id = self.open_dir(path, expect)?.1;
        let flagged = self.tenant_dirs.lock().unwrap_or_else(|p| p.into_inner()).contains(&id);
        match (flagged, list.iter().find(|t| t.dir_id == id)) {
            (true, Some(t)) => Ok(Some(t)),
            (false, None) => Ok(None),
            (true, None) => Err(Error::integrity(
                path,
                "is a tenant's root (its directory says so), but the volume's tenant list does not name it: \
                 the list or the volume header was put back from an older copy",
            )),
            (false, Some(t)) => Err(Error::integrity(
                path,
                format!("is listed as tenant {}'s root, but its directory does not say so", t.label),
            )),
        }
    }

    /// A KEK rotation's step for the list: re-sealed under the new name key (if it
    /// authenticates under the old one). False if it authenticates under neither.
    pub(super) fn move_tenant_list(&self, old: &crate::keys::NameKeys, new: &crate::keys::NameKeys) -> Result<bool> {
        let Some(row) = self.store().meta(TENANTS_ROW)? else { return Ok(true) };
        let vid = self.header().volume_id;
        if new.open_random(NamePurpose::Tenants, &vid, &row).is_ok() {
            return Ok(true);
        }
        let Ok(plain) = old.open_random(NamePurpose::Tenants, &vid, &row) else { return Ok(false) };
        let sealed = new.seal_random(NamePurpose::Tenants, &vid, &plain);
        self.store().apply(&[Change::PutMeta { key: TENANTS_ROW, value: &sealed }])?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8) -> TenantEntry {
        TenantEntry {
            id: [n; 16],
            dir_id: [n + 1; 16],
            kms_uri: format!("aws-kms:key-{n}"),
            label: format!("t{n}"),
            pending_uri: if n == 7 { "aws-kms:next".into() } else { String::new() },
            parent_id: [n + 2; 16],
            name: format!("t{n}").into_bytes(),
        }
    }

    /// The vector in docs/FORMAT.md §6.
    #[test]
    fn tenant_list_vector() {
        let t = TenantEntry {
            id: [1; 16],
            dir_id: [2; 16],
            kms_uri: "aws-kms:k".into(),
            label: "/t".into(),
            pending_uri: String::new(),
            parent_id: [3; 16],
            name: b"t".to_vec(),
        };
        assert_eq!(
            crate::format::hex(&encode(&[t])),
            "010100010101010101010101010101010101010202020202020202020202020202020209006177732d6b6d733a6b02002f74\
             000003030303030303030303030303030303010074"
        );
    }

    #[test]
    fn a_tenant_list_round_trips_and_rejects_trailing_or_short_bytes() {
        let list = vec![entry(1), entry(7)];
        let bytes = encode(&list);
        assert_eq!(decode(&bytes).unwrap(), list);
        assert_eq!(decode(&encode(&[])).unwrap(), Vec::new());
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode(&long).is_err());
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(decode(&other).is_err());
    }
}
