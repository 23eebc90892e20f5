//! Encrypted names in the backing tree.
//!
//! A backing entry's name is `base64url(E_name(dir_id, name))` (no padding). If that is
//! longer than 255 bytes, the backing name is `~` + `base64url(SHA-256(ciphertext))` and the
//! full ciphertext is kept in the store's `long_names` table. Every backing directory holds a
//! `.dirid` object header with the random id its children's names are bound to, so renaming
//! a directory never rewrites its children.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::crypto::{NameCipher, NamePurpose};
use crate::format::{ObjectHeader, ObjectKind};
use crate::keys::NameKeys;
use crate::store::Store;
use crate::{Error, Result};

/// The directory id file in every backing directory. Encrypted names never start with '.'.
pub(super) const DIRID_FILE: &str = ".dirid";
/// Longest plaintext name (POSIX NAME_MAX).
pub(super) const NAME_MAX: usize = 255;
/// Longest backing name we create.
const BACKING_NAME_MAX: usize = 255;
const LONG_PREFIX: u8 = b'~';

/// A plaintext name's form in the backing directory.
#[derive(Clone)]
pub(super) struct Encoded {
    pub backing: OsString,
    /// For hashed names: (hash, full ciphertext) to keep in the store.
    pub long: Option<(Vec<u8>, Vec<u8>)>,
}

pub(super) fn encode(names: &NameCipher, dir_id: &[u8; 16], name: &OsStr) -> Result<Encoded> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') || bytes.contains(&0) {
        return Err(Error::InvalidArgument(format!("invalid file name {name:?}")));
    }
    if bytes.len() > NAME_MAX {
        return Err(Error::NameTooLong(name.into()));
    }
    let sealed = names.encrypt(NamePurpose::Entry, dir_id, bytes);
    let text = URL_SAFE_NO_PAD.encode(&sealed);
    if text.len() <= BACKING_NAME_MAX {
        return Ok(Encoded { backing: text.into(), long: None });
    }
    let hash = Sha256::digest(&sealed).to_vec();
    let mut backing = vec![LONG_PREFIX];
    backing.extend_from_slice(URL_SAFE_NO_PAD.encode(&hash).as_bytes());
    Ok(Encoded { backing: OsString::from_vec(backing), long: Some((hash, sealed)) })
}

/// Names already encoded, under one name key: resolving a path encrypts every component of
/// it, and the same directories are walked request after request. A new name key (a KEK
/// rotation's switch) empties it; it holds the key only weakly (the key is dropped, and
/// zeroized, when the volume lets it go; a weak reference keeps its address from being
/// reused by the next key meanwhile).
pub(super) struct EncodedNames(Mutex<(Weak<NameKeys>, NameLru)>);

/// (Directory id, plaintext name) → its backing name.
type NameLru = lru::LruCache<([u8; 16], Vec<u8>), Encoded>;

/// Names kept by [`EncodedNames`].
const ENCODED_NAMES: usize = 4096;

impl Default for EncodedNames {
    fn default() -> Self {
        let cap = std::num::NonZeroUsize::new(ENCODED_NAMES).expect("nonzero");
        EncodedNames(Mutex::new((Weak::new(), lru::LruCache::new(cap))))
    }
}

impl EncodedNames {
    /// Forgets every name (a volume going dark keeps no decrypted name).
    pub(super) fn clear(&self) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.1.clear();
        g.0 = Weak::new();
    }

    /// [`encode`] under `keys`, from the cache when it is there.
    pub(super) fn encode(&self, keys: &Arc<NameKeys>, dir_id: &[u8; 16], name: &OsStr) -> Result<Encoded> {
        let key = (*dir_id, name.as_bytes().to_vec());
        let lock = || {
            let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if !std::ptr::eq(g.0.as_ptr(), Arc::as_ptr(keys)) {
                g.1.clear();
                g.0 = Arc::downgrade(keys);
            }
            g
        };
        if let Some(e) = lock().1.get(&key) {
            return Ok(e.clone());
        }
        let e = encode(keys, dir_id, name)?;
        lock().1.put(key, e.clone());
        Ok(e)
    }
}

/// Whether backing entry `backing` stands for a name (a '.' entry is the volume's own: the
/// `.dirid` file, temporary files).
pub(super) fn is_name(backing: &OsStr) -> bool {
    backing.as_bytes().first() != Some(&b'.')
}

/// The plaintext name of backing entry `backing` in directory `dir_id`; `None` for entries
/// that are not names ([`is_name`]).
pub(super) fn decode(
    names: &NameCipher,
    store: &Store,
    dir_id: &[u8; 16],
    backing: &OsStr,
    dir: &Path,
) -> Result<Option<OsString>> {
    if !is_name(backing) {
        return Ok(None);
    }
    let sealed = sealed_name(store, dir_id, backing, dir)?;
    let plain = names.decrypt(NamePurpose::Entry, dir_id, &sealed).map_err(|_| bad_name(dir, backing))?;
    Ok(Some(OsString::from_vec(plain)))
}

/// The ciphertext backing name `backing` (not a '.' name) in directory `dir_id` stands for:
/// its base64 decoding, or a long name's record (its hash, SHA-256 of it, is the rest).
pub(super) fn sealed_name(store: &Store, dir_id: &[u8; 16], backing: &OsStr, dir: &Path) -> Result<Vec<u8>> {
    let b = backing.as_bytes();
    if b.first() == Some(&LONG_PREFIX) {
        let hash = URL_SAFE_NO_PAD.decode(&b[1..]).map_err(|_| bad_name(dir, backing))?;
        store
            .long_name(dir_id, &hash)?
            .ok_or_else(|| Error::integrity(dir.join(backing), "long name has no record in the metadata store"))
    } else {
        URL_SAFE_NO_PAD.decode(b).map_err(|_| bad_name(dir, backing))
    }
}

fn bad_name(dir: &Path, backing: &OsStr) -> Error {
    Error::integrity(dir.join(backing), "encrypted name does not authenticate (renamed or tampered)")
}

/// Reads the id of backing directory `dir` (its binding unchecked: `Volume::dir_id` checks).
pub(super) fn read_dir_id(tree: &super::tree::Tree, dir: &Path) -> Result<[u8; 16]> {
    read_dir_header(tree, dir).map(|h| h.id)
}

/// Reads the object header of backing directory `dir`.
pub(super) fn read_dir_header(tree: &super::tree::Tree, dir: &Path) -> Result<ObjectHeader> {
    let path = dir.join(DIRID_FILE);
    let at = tree.at(&path).map_err(|e| super::volume::tree_error(&path, e))?;
    // Never through a planted symlink or FIFO; a .dirid is one object header.
    let bytes = crate::confine::read_file(at.path(), 4096).map_err(|e| match e.renamed(&path) {
        Error::Io { source, .. } if source.raw_os_error() == Some(2) => {
            Error::integrity(&path, "directory id file is missing")
        }
        Error::Io { source, .. } if source.raw_os_error() == Some(20) => Error::NotDir(dir.to_path_buf()),
        other => other,
    })?;
    match ObjectHeader::decode(&bytes).map_err(|e| e.at(&path))? {
        h @ ObjectHeader { kind: ObjectKind::Directory, .. } => Ok(h),
        _ => Err(Error::corrupt(&path, "not a directory id")),
    }
}

/// Prefix of the hidden names new backing entries are made under (see [`place`]).
pub(super) const TEMP_PREFIX: &str = ".evfs-new-";

/// A hidden, unique name beside `backing` to build a new entry under.
pub(super) fn temp_sibling(backing: &Path) -> std::path::PathBuf {
    let r: [u8; 8] = crate::crypto::random_array();
    backing.with_file_name(format!("{TEMP_PREFIX}{}", crate::format::hex(&r)))
}

/// Moves the finished entry `tmp` to `backing`, failing (Exists, naming `plain`) rather
/// than replacing anything there.
pub(super) fn place(tmp: &super::tree::At, backing: &super::tree::At, plain: &Path) -> Result<()> {
    use nix::fcntl::{renameat2, RenameFlags};
    match renameat2(tmp.dir(), tmp.name(), backing.dir(), backing.name(), RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(nix::Error::EEXIST) => Err(Error::Exists(plain.to_path_buf())),
        Err(e) => Err(Error::io(plain, "create", e.into())),
    }
}

/// Writes a fresh `.dirid` holding `header` into the (new, empty) backing directory `dir` (a
/// path the caller made safe: `Tree::dir`'s, or the data directory at `init`).
pub(super) fn write_dir_id(dir: &Path, header: &ObjectHeader) -> Result<()> {
    let path = dir.join(DIRID_FILE);
    let header = header.encode();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&path)
        .map_err(|e| Error::io(&path, "create", e))?;
    std::io::Write::write_all(&mut f, &header).map_err(|e| Error::io(&path, "write", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Key256;

    #[test]
    fn encoded_names_are_the_current_keys_names() {
        let cache = EncodedNames::default();
        let (a, b) = (
            Arc::new(NameKeys::new(Key256::generate(), &[1; 16])),
            Arc::new(NameKeys::new(Key256::generate(), &[1; 16])),
        );
        let (id, name) = ([5u8; 16], OsStr::new("kept.txt"));
        let under = |k: &Arc<NameKeys>| encode(k, &id, name).unwrap().backing;
        assert_eq!(cache.encode(&a, &id, name).unwrap().backing, under(&a));
        assert_eq!(cache.encode(&a, &id, name).unwrap().backing, under(&a), "from the cache");
        // A new name key (a rotation's switch): never a name under the old one.
        assert_eq!(cache.encode(&b, &id, name).unwrap().backing, under(&b));
        assert_ne!(under(&a), under(&b));
        // The other directory, and bad names, as `encode` has them.
        assert_eq!(cache.encode(&b, &[6; 16], name).unwrap().backing, encode(&b, &[6; 16], name).unwrap().backing);
        assert!(cache.encode(&b, &id, OsStr::new("a/b")).is_err());
    }

    #[test]
    fn short_and_long_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("m.db")).unwrap();
        let names = NameCipher::new(&Key256::generate());
        let id = [5u8; 16];
        let e = encode(&names, &id, OsStr::new("hello.txt")).unwrap();
        assert!(e.long.is_none());
        assert_eq!(decode(&names, &store, &id, &e.backing, dir.path()).unwrap().unwrap(), "hello.txt");
        let long = "x".repeat(255);
        let e = encode(&names, &id, OsStr::new(&long)).unwrap();
        let (hash, sealed) = e.long.clone().unwrap();
        assert!(e.backing.len() <= 255);
        store.apply(&[crate::store::Change::PutLongName { dir: &id, hash: &hash, name: &sealed }]).unwrap();
        assert_eq!(decode(&names, &store, &id, &e.backing, dir.path()).unwrap().unwrap(), OsString::from(long));
        assert!(matches!(encode(&names, &id, OsStr::new(&"y".repeat(256))), Err(Error::NameTooLong(_))));
        assert!(encode(&names, &id, OsStr::new("a/b")).is_err());
        assert!(decode(&names, &store, &[6; 16], &encode(&names, &id, OsStr::new("a")).unwrap().backing, dir.path())
            .is_err());
    }
}
