//! Directory entries bound to the objects they name (header feature bit 5, `entries-bound`).
//!
//! An encrypted name is bound to its directory (the directory id is its context), but not to
//! what the entry holds: a writer of CIPHERDIR could swap two data files, two directories or
//! two symlinks of one directory, and `cat a` would return b's contents. So:
//!
//! * every data file's and directory id file's object header carries
//!   `MAC(entry key, kind || id || 1 || parent dir id || u16 len || backing name)` (8 bytes),
//!   written at create, mkdir and after every rename, checked wherever an object is reached
//!   by its name (open, stat, xattrs, the directory walk of `resolve`, fsck); a file with
//!   more than one hard link cannot name one entry and carries `MAC(kind || id || 2)` instead
//!   (bound to the volume only);
//! * every symlink target is sealed with the context `SHA-256("EVFSLNK1" || parent dir id ||
//!   backing name)[..16]` instead of zero, and re-sealed when the link is renamed.
//!
//! A rename checks the source's binding before it moves it, so a swapped object is never
//! laundered into a fresh binding. The entry key is derived from the name key (HKDF, its own
//! purpose). Volumes made before bit 5 are bound in place at their first writable open (one
//! walk of the tree, trusted that once).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::names;
use super::volume::Volume;
use crate::crypto::NamePurpose;
use crate::format::{Binding, ObjectHeader, ObjectKind, OBJECT_HEADER_LEN};
use crate::keys::{KeyRing, NameKeys};
use crate::{Error, Result};

/// Where an object is named: its parent directory's id and its backing name (the root
/// directory: zero id, empty name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub dir_id: [u8; 16],
    pub name: OsString,
}

impl Entry {
    pub(super) fn new(dir_id: [u8; 16], name: &OsStr) -> Self {
        Entry { dir_id, name: name.to_os_string() }
    }

    pub(super) fn root() -> Self {
        Entry { dir_id: [0; 16], name: OsString::new() }
    }
}

fn kind_code(kind: ObjectKind) -> u8 {
    match kind {
        ObjectKind::File => b'F',
        ObjectKind::Directory => b'D',
    }
}

/// The message a binding MAC covers (`entry`: `None` for a file shared by hard links;
/// `xattrs`: the header says the object has extended attributes; `tenant`: that the
/// directory is a tenant's root).
fn binding_msg(kind: ObjectKind, id: &[u8; 16], entry: Option<&Entry>, xattrs: bool, tenant: bool) -> Vec<u8> {
    let mut msg = Vec::with_capacity(64);
    msg.push(kind_code(kind));
    msg.extend_from_slice(id);
    match entry {
        Some(e) => {
            msg.push(1);
            msg.extend_from_slice(&e.dir_id);
            msg.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            msg.extend_from_slice(e.name.as_bytes());
        }
        None => msg.push(2),
    }
    if xattrs {
        msg.push(b'X');
    }
    if tenant {
        msg.push(b'T');
    }
    msg
}

/// The context a symlink target at `entry` is sealed with.
pub(super) fn link_context(entry: &Entry) -> [u8; 16] {
    let h = Sha256::new()
        .chain_update(b"EVFSLNK1")
        .chain_update(entry.dir_id)
        .chain_update(entry.name.as_bytes())
        .finalize();
    h[..16].try_into().expect("SHA-256 is 32 bytes")
}

/// The header of object (`kind`, `id`) named by `entry`, under `keys` (also at `init`).
pub(super) fn bound_header_with(keys: &KeyRing, kind: ObjectKind, id: [u8; 16], entry: &Entry) -> ObjectHeader {
    bind_with(&keys.names(), kind, id, Some(entry), false, false)
}

/// The header of object (`kind`, `id`) bound to `entry` (`None`: to the volume), with the
/// extended-attributes flag `xattrs` and the tenant's-root flag `tenant`.
pub(super) fn bind_with(
    keys: &NameKeys,
    kind: ObjectKind,
    id: [u8; 16],
    entry: Option<&Entry>,
    xattrs: bool,
    tenant: bool,
) -> ObjectHeader {
    let mac = keys.entry_mac(&binding_msg(kind, &id, entry, xattrs, tenant));
    let binding = if entry.is_some() { Binding::Entry(mac) } else { Binding::Shared(mac) };
    ObjectHeader { kind, id, binding, xattrs, tenant }
}

/// Gives the symlink just made at `link` (a hidden name: pinned and checked first,
/// `made::Made`) the owner and times of `old` (the link it replaces or copies).
pub(super) fn keep_owner_and_times(link: &super::tree::At, old: &std::fs::Metadata) -> std::io::Result<()> {
    super::made::Made::pin(link, nix::sys::stat::SFlag::S_IFLNK)?.keep_owner_and_times(old)
}

/// Whether `header` (bound, under `keys`) belongs at `entry` (or to the volume, if shared).
pub(super) fn authentic_with(keys: &NameKeys, header: &ObjectHeader, entry: &Entry) -> bool {
    let eq = |mac: &[u8; 8], want: [u8; 8]| aws_lc_rs::constant_time::verify_slices_are_equal(mac, &want).is_ok();
    match &header.binding {
        Binding::None => false,
        Binding::Entry(mac) => {
            eq(mac, keys.entry_mac(&binding_msg(header.kind, &header.id, Some(entry), header.xattrs, header.tenant)))
        }
        Binding::Shared(mac) => {
            header.kind == ObjectKind::File
                && eq(mac, keys.entry_mac(&binding_msg(header.kind, &header.id, None, header.xattrs, header.tenant)))
        }
    }
}

/// A symlink's target sealed for `entry` under `keys` (as the backing link stores it).
pub(super) fn seal_target_with(keys: &NameKeys, entry: &Entry, target: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(keys.seal_random(NamePurpose::SymlinkTarget, &link_context(entry), target))
}

/// The target of the backing link whose target is `stored`, at `entry`, if it was sealed
/// there under `keys`.
pub(super) fn open_target_with(keys: &NameKeys, entry: &Entry, stored: &OsStr) -> Option<Vec<u8>> {
    let sealed = URL_SAFE_NO_PAD.decode(stored.as_bytes()).ok()?;
    keys.open_random(NamePurpose::SymlinkTarget, &link_context(entry), &sealed).ok()
}

fn mismatch(path: &Path) -> Error {
    Error::integrity(path, "is not the object its directory entry names (entries swapped or moved in the backing tree)")
}

impl Volume {
    pub(super) fn entries_bound(&self) -> bool {
        self.core.entries_bound.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The header of object (`kind`, `id`) named by `entry`.
    pub(super) fn bound_header(&self, kind: ObjectKind, id: [u8; 16], entry: &Entry) -> ObjectHeader {
        bound_header_with(self.keys(), kind, id, entry)
    }

    /// Whether `header`, read through `entry`, belongs there (an unbound header only on a
    /// volume not upgraded yet); an integrity error naming `path` if not.
    pub(super) fn check_binding(&self, header: &ObjectHeader, entry: &Entry, path: &Path) -> Result<()> {
        // A rename of this object by this daemon is under way to `entry`: it is still bound to
        // where it came from, and bound here in a moment (readers racing the rename see no
        // spurious error; nothing read from disk puts an object on this list).
        let moving_here = || -> Result<bool> {
            let from = {
                let renames = self.core.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                match renames.get(&header.id) {
                    Some((from, to)) if to == entry => from.clone(),
                    _ => return Ok(false),
                }
            };
            self.authentic_at(header, &from)
        };
        if self.authentic_at(header, entry)? || moving_here()? {
            Ok(())
        } else {
            Err(mismatch(path))
        }
    }

    /// `header` (read from the object at `entry`) if it is bound there, else
    /// [`Volume::check_binding`]'s error. A rename by this daemon binds what it moved to its
    /// new entry just after the move, so a header read before that and checked after is the
    /// old binding of an object rightly here now: while `again` (a fresh read of the same
    /// object) gives another header, that one is checked instead — a few times at most; every
    /// check authenticates, and a header that keeps changing is refused.
    pub(super) fn checked_header(
        &self,
        mut header: ObjectHeader,
        entry: &Entry,
        path: &Path,
        again: impl Fn() -> Result<ObjectHeader>,
    ) -> Result<ObjectHeader> {
        for _ in 0..3 {
            match self.check_binding(&header, entry, path) {
                Err(e @ Error::Integrity { .. }) => match again()? {
                    fresh if fresh == header => return Err(e),
                    fresh => header = fresh,
                },
                other => return other.map(|()| header),
            }
        }
        self.check_binding(&header, entry, path).map(|()| header)
    }

    /// Whether `header`'s binding holds for `entry` (an error only if the store cannot say).
    fn authentic_at(&self, header: &ObjectHeader, entry: &Entry) -> Result<bool> {
        Ok(match &header.binding {
            Binding::None => !self.entries_bound(),
            // A shared file's entries are bound in the store (`fs::links`).
            Binding::Shared(_) => {
                authentic_with(&self.keys().names(), header, entry) && self.link_authentic(&header.id, entry)?
            }
            // Or a file a link made shared whose rows are in but whose header rewrite a crash
            // lost, its new name given a row by recovery (`fs::fsck`): bound by that row.
            Binding::Entry(_) => {
                authentic_with(&self.keys().names(), header, entry)
                    || (header.kind == ObjectKind::File && self.bound_by_row(&header.id, entry)?)
            }
        })
    }

    /// Registers that `moving` (checked at `from`) is being renamed to `to` until the guard
    /// is dropped (after its binding there is written).
    pub(super) fn in_flight(&self, moving: &Moving, from: &Path, to: &Path) -> Result<InFlight<'_>> {
        let id = match moving {
            Moving::File { id, .. } | Moving::Directory { id } => *id,
            _ => return Ok(InFlight { vol: self, id: None }),
        };
        let entries = (self.entry_of(from)?, self.entry_of(to)?);
        self.core.in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(id, entries);
        Ok(InFlight { vol: self, id: Some(id) })
    }

    /// The entry that backing path `backing` is: its parent's id (checked on the way) and
    /// its name.
    pub(super) fn entry_of(&self, backing: &Path) -> Result<Entry> {
        if backing == self.data_dir() {
            return Ok(Entry::root());
        }
        let (Some(parent), Some(name)) = (backing.parent(), backing.file_name()) else {
            return Err(Error::InvalidArgument(format!("{} is not in the backing tree", backing.display())));
        };
        Ok(Entry::new(self.dir_id(parent)?, name))
    }

    /// A symlink's target sealed for `entry`.
    pub(super) fn seal_target(&self, entry: &Entry, target: &[u8]) -> String {
        seal_target_with(&self.keys().names(), entry, target)
    }

    /// The plaintext target of a symlink stored as `stored` at `entry`. Before the volume is
    /// bound, a target sealed with the old zero context is accepted too.
    pub(super) fn open_target(&self, entry: &Entry, stored: &OsStr, path: &Path) -> Result<Vec<u8>> {
        let bad =
            || Error::integrity(path, "symlink target does not authenticate (tampered, or pasted from another link)");
        let sealed = URL_SAFE_NO_PAD.decode(stored.as_bytes()).map_err(|_| bad())?;
        let names = self.keys().names();
        match names.open_random(NamePurpose::SymlinkTarget, &link_context(entry), &sealed) {
            Ok(t) => Ok(t),
            Err(_) if !self.entries_bound() => {
                names.open_random(NamePurpose::SymlinkTarget, &[0; 16], &sealed).map_err(|_| bad())
            }
            Err(_) => Err(bad()),
        }
    }

    /// Rewrites the header of the data file or directory id file at `header_path` (an
    /// `At::path`), which must hold object `id`, for its place `entry`; `shared`: bound to the
    /// volume only. Its extended-attributes flag stays.
    pub(super) fn write_binding(
        &self,
        header_path: &Path,
        id: &[u8; 16],
        entry: &Entry,
        shared: bool,
        path: &Path,
    ) -> Result<()> {
        self.rewrite_header(header_path, id, false, path, |old| {
            Some(bind_with(&self.keys().names(), old.kind, old.id, (!shared).then_some(entry), old.xattrs, old.tenant))
        })
    }

    /// Sets or clears the extended-attributes flag of object `id`'s header at `header_path`
    /// (bound as it was: the caller checked it), durably. An unbound header (a volume not
    /// bound yet) is left as it is.
    pub(super) fn write_xattrs_flag(
        &self,
        header_path: &Path,
        id: &[u8; 16],
        entry: &Entry,
        on: bool,
        path: &Path,
    ) -> Result<()> {
        self.rewrite_header(header_path, id, true, path, |old| {
            let shared = match old.binding {
                Binding::None => return None,
                Binding::Shared(_) => true,
                Binding::Entry(_) => false,
            };
            Some(bind_with(&self.keys().names(), old.kind, old.id, (!shared).then_some(entry), on, old.tenant))
        })
    }

    /// Reads the header at `header_path` and writes `new(old)` in its place (read and written
    /// through one descriptor, and only if it still holds object `id`: a swap after the
    /// caller's check is refused, never bound anew); `sync`: durably.
    pub(super) fn rewrite_header(
        &self,
        header_path: &Path,
        id: &[u8; 16],
        sync: bool,
        path: &Path,
        new: impl FnOnce(&ObjectHeader) -> Option<ObjectHeader>,
    ) -> Result<()> {
        // A read-only file (git's objects, 0444) is the daemon's own: made writable for this
        // one write when a non-root daemon may not open it so, then given its mode back.
        let f = match crate::confine::open_file(header_path, true) {
            Ok(rw) => rw,
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(13) => {
                let ro = crate::confine::open_file(header_path, false).map_err(|e| e.renamed(path))?;
                let mode = ro.metadata().map_err(|e| Error::io(path, "stat", e))?.mode() & 0o7777;
                let chmod = |m: u32| ro.set_permissions(std::fs::Permissions::from_mode(m));
                chmod(mode | 0o200).map_err(|e| Error::io(path, "chmod", e))?;
                let rw = crate::confine::open_file(header_path, true).map_err(|e| e.renamed(path));
                chmod(mode).map_err(|e| Error::io(path, "chmod", e))?;
                rw?
            }
            Err(e) => return Err(e.renamed(path)),
        };
        let mut buf = [0u8; OBJECT_HEADER_LEN];
        let got = f.read_at(&mut buf, 0).map_err(|e| Error::io(path, "read header", e))?;
        let old = ObjectHeader::decode(&buf[..got]).map_err(|e| e.at(path))?;
        if old.id != *id {
            return Err(mismatch(path));
        }
        let Some(new) = new(&old).filter(|n| *n != old) else { return Ok(()) };
        // One 32-byte write inside the first sector: it lands whole or not at all.
        f.write_all_at(&new.encode(), 0).map_err(|e| Error::io(path, "write header", e))?;
        if sync {
            f.sync_data().map_err(|e| Error::io(path, "fsync", e))?;
        }
        Ok(())
    }

    /// What a rename or link moves, checked at its old place `from` (an integrity error if
    /// it does not belong there: a swapped object is never bound anew).
    pub(super) fn moving(&self, from: &Path, path: &Path) -> Result<Moving> {
        self.moving_as(from, path, true)
    }

    /// [`Volume::moving`]; unchecked (`check` false) only for `fsck --repair`'s moves into
    /// lost+found, which bind what they move anew, by the operator's decision.
    pub(super) fn moving_as(&self, from: &Path, path: &Path, check: bool) -> Result<Moving> {
        let at = self.at(from, path)?;
        let meta = std::fs::symlink_metadata(at.path()).map_err(|_| Error::NotFound(path.into()))?;
        let t = meta.file_type();
        if t.is_dir() {
            let id = match check {
                true => self.dir_id(from)?, // checks the directory's binding (and caches its id)
                false => names::read_dir_header(&self.core.tree, from)?.id,
            };
            Ok(Moving::Directory { id })
        } else if t.is_symlink() {
            match self.readlink_at(from, path) {
                Ok(target) => Ok(Moving::Symlink(target)),
                Err(Error::Integrity { .. }) if !check => Ok(Moving::Other),
                Err(e) => Err(e),
            }
        } else if t.is_file() {
            let f = super::volume::open_data(&at, false).map_err(|e| Error::io(path, "open", e))?;
            match super::volume::read_header(&f, at.path(), path) {
                Ok(h) => {
                    if check {
                        self.check_binding(&h, &self.entry_of(from)?, path)?;
                    }
                    // Shared as the header says (a link count an attacker can raise with a
                    // backing hard link is not asked), or as it is on a volume not bound yet.
                    let shared = match h.binding {
                        Binding::Shared(_) => true,
                        Binding::Entry(_) => false,
                        Binding::None => meta.nlink() > 1,
                    };
                    Ok(Moving::File { id: h.id, shared })
                }
                Err(_) if !check => Ok(Moving::Other),
                // A create cut short (no header yet): nothing to bind, nothing to launder.
                Err(Error::Corrupt { .. }) if meta.len() < OBJECT_HEADER_LEN as u64 => Ok(Moving::Other),
                Err(e) => Err(e),
            }
        } else {
            Ok(Moving::Other)
        }
    }

    /// Renames entry `from` (what `moving` says it is) to `to` (backing path `to_backing`)
    /// with `renameat2` `flags`. A symlink is not renamed but copied, its target sealed for
    /// its new entry, into place (made under a hidden name, renamed there), and then the old
    /// one removed: a crash leaves both names, never neither, and never a link sealed for
    /// another entry.
    pub(super) fn move_entry(
        &self,
        moving: &Moving,
        from: &super::tree::At,
        to: &super::tree::At,
        to_backing: &Path,
        flags: nix::fcntl::RenameFlags,
    ) -> std::io::Result<()> {
        use nix::fcntl::{renameat2, RenameFlags};
        let Moving::Symlink(target) = moving else {
            return renameat2(from.dir(), from.name(), to.dir(), to.name(), flags).map_err(Into::into);
        };
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return renameat2(from.dir(), from.name(), to.dir(), to.name(), flags).map_err(Into::into);
        }
        let entry = self.entry_of(to_backing).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let old = std::fs::symlink_metadata(from.path())?;
        let tmp = names::temp_sibling(to_backing);
        let tmp_at = self.core.tree.at(&tmp)?;
        std::os::unix::fs::symlink(self.seal_target(&entry, target), tmp_at.path())?;
        if let Err(e) = keep_owner_and_times(&tmp_at, &old) {
            let _ = std::fs::remove_file(tmp_at.path());
            return Err(e);
        }
        let (old_ino, new_ino) = (old.ino(), std::fs::symlink_metadata(tmp_at.path())?.ino());
        if let Err(e) = renameat2(tmp_at.dir(), tmp_at.name(), to.dir(), to.name(), flags) {
            let _ = std::fs::remove_file(tmp_at.path());
            return Err(e.into());
        }
        // The kernel knows the link by its old inode: that inode is this one now.
        self.alias_inode(old_ino, new_ino);
        nix::unistd::unlinkat(from.dir(), from.name(), nix::unistd::UnlinkatFlags::NoRemoveDir).map_err(Into::into)
    }

    /// Binds what `moving` was to its new place `to` (after the rename; a symlink only after
    /// an exchange, [`Volume::move_entry`] copies it otherwise).
    /// `ino`: the backing inode moved (a file's id stays cached for it, at its new entry).
    pub(super) fn moved(&self, moving: &Moving, to: &Path, path: &Path, ino: u64) -> Result<()> {
        let entry = self.entry_of(to)?;
        match moving {
            Moving::File { id, shared } => {
                let at = self.at(to, path)?;
                self.write_binding(at.path(), id, &entry, *shared, path)?;
                if ino != 0 {
                    self.remember_file_id(ino, *id, to.to_path_buf());
                }
                Ok(())
            }
            Moving::Directory { id } => {
                let at = self.at(&to.join(names::DIRID_FILE), path)?;
                self.write_binding(at.path(), id, &entry, false, path)
            }
            Moving::Symlink(target) => self.replace_symlink(to, &entry, target, path),
            Moving::Other => Ok(()),
        }
    }

    /// Replaces the symlink at `backing` with one whose target is sealed for `entry` (made
    /// under a hidden name beside it, then renamed over it in one step).
    pub(super) fn replace_symlink(&self, backing: &Path, entry: &Entry, target: &[u8], path: &Path) -> Result<()> {
        let tmp = names::temp_sibling(backing);
        let tmp_at = self.at(&tmp, path)?;
        std::os::unix::fs::symlink(self.seal_target(entry, target), tmp_at.path())
            .map_err(|e| Error::io(path, "symlink", e))?;
        let at = self.at(backing, path)?;
        if let Ok(old) = std::fs::symlink_metadata(at.path()) {
            keep_owner_and_times(&tmp_at, &old).map_err(|e| {
                let _ = std::fs::remove_file(tmp_at.path());
                Error::io(path, "chown", e)
            })?;
        }
        let inos = (std::fs::symlink_metadata(at.path()), std::fs::symlink_metadata(tmp_at.path()));
        nix::fcntl::renameat(tmp_at.dir(), tmp_at.name(), at.dir(), at.name()).map_err(|e| {
            let _ = std::fs::remove_file(tmp_at.path());
            Error::io(path, "rename", e.into())
        })?;
        if let (Ok(old), Ok(new)) = inos {
            self.alias_inode(old.ino(), new.ino());
        }
        Ok(())
    }

    /// A volume made before entries were bound: binds every data file, directory and symlink
    /// where it is (trusted this once), then sets the feature bit (a crash in between only
    /// repeats the walk, which skips what is bound already). Read-only storage defers it.
    pub(super) fn bind_entries_upgrade(&self) -> Result<()> {
        let done = self.upgrade(crate::format::FEATURE_ENTRIES_BOUND, "binding every entry to its object", || {
            let bound = self.bind_tree()?;
            tracing::info!(entries = bound, "entries bound");
            Ok(())
        })?;
        self.core.entries_bound.store(done, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Binds every unbound entry of the tree; returns how many it bound.
    fn bind_tree(&self) -> Result<u64> {
        let bound = std::cell::Cell::new(0); // both visitors count (shared, not borrowed twice)
        self.walk_tree(
            &mut |obj| {
                if obj.header.binding == Binding::None {
                    let id = obj.header.id;
                    self.write_binding(obj.header_file, &id, obj.entry, obj.nlink > 1, obj.backing)?;
                    bound.set(bound.get() + 1);
                }
                Ok(())
            },
            &mut |backing, entry| {
                let at = self.core.tree.at(backing).map_err(|e| Error::io(backing, "open", e))?;
                let stored = std::fs::read_link(at.path()).map_err(|e| Error::io(backing, "readlink", e))?;
                let Ok(sealed) = URL_SAFE_NO_PAD.decode(stored.as_os_str().as_bytes()) else { return Ok(()) };
                let names = self.keys().names();
                if names.open_random(NamePurpose::SymlinkTarget, &link_context(entry), &sealed).is_ok() {
                    return Ok(());
                }
                if let Ok(target) = names.open_random(NamePurpose::SymlinkTarget, &[0; 16], &sealed) {
                    self.replace_symlink(backing, entry, &target, backing)?;
                    bound.set(bound.get() + 1);
                }
                Ok(())
            },
        )?;
        Ok(bound.get())
    }

    /// Visits every directory and data file of the backing tree with a readable header
    /// (others are fsck's to report), top-down, and hands every symlink to `link`.
    pub(super) fn walk_tree(
        &self,
        visit: &mut dyn FnMut(Object<'_>) -> Result<()>,
        link: &mut dyn FnMut(&Path, &Entry) -> Result<()>,
    ) -> Result<()> {
        let root = self.data_dir().to_path_buf();
        let mut stack: Vec<(PathBuf, Entry)> = vec![(root, Entry::root())];
        while let Some((dir, entry)) = stack.pop() {
            let id_file = dir.join(names::DIRID_FILE);
            let id_at = self.core.tree.at(&id_file).map_err(|e| Error::io(&dir, "open", e))?;
            let Ok(header) = names::read_dir_header(&self.core.tree, &dir) else { continue };
            visit(Object {
                backing: &dir,
                header_file: id_at.path(),
                entry: &entry,
                header: &header,
                nlink: 1,
                len: 0,
            })?;
            let listed = self.core.tree.dir(&dir).map_err(|e| Error::io(&dir, "open directory", e))?;
            for e in std::fs::read_dir(listed.path()).map_err(|e| Error::io(&dir, "read directory", e))? {
                let e = e.map_err(|e| Error::io(&dir, "read directory", e))?;
                let name = e.file_name();
                if !names::is_name(&name) {
                    continue;
                }
                let backing = dir.join(&name);
                let child = Entry::new(header.id, &name);
                let t = e.file_type().map_err(|err| Error::io(&backing, "stat", err))?;
                if t.is_dir() {
                    stack.push((backing, child));
                } else if t.is_file() {
                    let at = self.core.tree.at(&backing).map_err(|e| Error::io(&backing, "open", e))?;
                    let f = crate::confine::open_file(at.path(), false).map_err(|e| e.renamed(&backing))?;
                    let (nlink, len) = f.metadata().map(|m| (m.nlink(), m.size())).unwrap_or((1, 0));
                    if let Ok(h) = super::volume::read_header(&f, at.path(), &backing) {
                        drop(f);
                        let (header_file, entry) = (at.path(), &child);
                        visit(Object { backing: &backing, header_file, entry, header: &h, nlink, len })?;
                    }
                } else if t.is_symlink() {
                    link(&backing, &child)?;
                }
            }
        }
        Ok(())
    }
}

/// A data file or directory met by [`Volume::walk_tree`].
pub(super) struct Object<'a> {
    /// The data file or the directory.
    pub backing: &'a Path,
    /// Where its header is (an `At::path`: the data file, or the directory's `.dirid`).
    pub header_file: &'a Path,
    pub entry: &'a Entry,
    pub header: &'a ObjectHeader,
    pub nlink: u64,
    /// A data file's length (0 for a directory).
    pub len: u64,
}

/// A rename under way (see [`Volume::in_flight`]); forgotten when dropped.
pub(super) struct InFlight<'a> {
    vol: &'a Volume,
    id: Option<[u8; 16]>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.vol.core.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
    }
}

/// What a rename moves (see [`Volume::moving`]).
pub(super) enum Moving {
    File {
        id: [u8; 16],
        shared: bool,
    },
    Directory {
        id: [u8; 16],
    },
    /// A symlink, with its plaintext target.
    Symlink(Vec<u8>),
    /// A special file, or a file whose create was cut short: nothing bound.
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message layout of FORMAT.md §4 (the vector there is `keys::tests`).
    #[test]
    fn binding_messages_are_as_documented() {
        let entry = Entry::new([0x44; 16], OsStr::new("abc"));
        let mut want = vec![b'F'];
        want.extend_from_slice(&[0x33; 16]);
        want.push(1);
        want.extend_from_slice(&[0x44; 16]);
        want.extend_from_slice(&[3, 0]);
        want.extend_from_slice(b"abc");
        assert_eq!(binding_msg(ObjectKind::File, &[0x33; 16], Some(&entry), false, false), want);
        want.push(b'X');
        assert_eq!(binding_msg(ObjectKind::File, &[0x33; 16], Some(&entry), true, false), want);
        want[0] = b'D';
        want.push(b'T');
        assert_eq!(binding_msg(ObjectKind::Directory, &[0x33; 16], Some(&entry), true, true), want);
        let mut shared = vec![b'F'];
        shared.extend_from_slice(&[0x33; 16]);
        shared.push(2);
        assert_eq!(binding_msg(ObjectKind::File, &[0x33; 16], None, false, false), shared);
        assert_ne!(link_context(&entry), link_context(&Entry::new([0x44; 16], OsStr::new("abd"))));
        assert_ne!(link_context(&entry), link_context(&Entry::new([0x45; 16], OsStr::new("abc"))));
    }
}
