//! Directories: making and removing them (a new one is built complete, with its `.dirid`,
//! under a hidden name and moved into place), listing them with names decrypted, and the
//! cache of directory ids.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::meta::attr_from;
use super::names::{self, DIRID_FILE};
use super::volume::{DirEntry, Volume, DIR_ID_CACHE};
use crate::crypto::random_array;
use crate::store::Change;
use crate::{Error, Result};

/// A listed backing directory, opened once for its entries and their attributes within one
/// request ([`Volume::list`] for the first reply, [`Volume::listed_dir`] for the next ones);
/// dropped with the request.
pub struct ListedDir {
    at: super::tree::At,
    dir: PathBuf,
}

impl ListedDir {
    /// The backing directory's path.
    pub fn backing(&self) -> &Path {
        &self.dir
    }

    /// The backing directory itself (an `At` for [`super::tree::At::entry`]).
    pub(super) fn at(&self) -> &super::tree::At {
        &self.at
    }
}

impl Volume {
    pub fn mkdir(&self, path: &Path, mode: u32) -> Result<()> {
        self.mkdir_owned(path, mode, None).map(|_| ())
    }

    /// Makes directory `path` with permission bits `mode`, owned by `owner` (uid, gid) if
    /// given, and returns its attributes. It is built complete (id, owner, mode) under a
    /// hidden name and moved into place, which fails if `path` exists.
    pub fn mkdir_owned(&self, path: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<super::Attr> {
        self.make_dir(path, mode, owner, None)
    }

    /// Makes the (empty) root directory of a tenant at `path`: directory id `id` (chosen
    /// and listed by the caller first), its header flagged as a tenant's root.
    pub fn mkdir_tenant_root(&self, path: &Path, id: [u8; 16]) -> Result<()> {
        self.make_dir(path, 0o755, None, Some(id))?;
        self.tenant_dirs.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
        Ok(())
    }

    /// [`Self::mkdir_owned`]; `tenant`: the id of a tenant's root to make.
    fn make_dir(
        &self,
        path: &Path,
        mode: u32,
        owner: Option<(u32, u32)>,
        tenant: Option<[u8; 16]>,
    ) -> Result<super::Attr> {
        let r = self.resolve(path)?;
        let backing = r.backing();
        self.remember_name(&r)?;
        let tmp_path = names::temp_sibling(&backing);
        let tmp = self.at(&tmp_path, path)?;
        fs::DirBuilder::new().mode(mode | 0o300).create(tmp.path()).map_err(|e| Error::io(path, "mkdir", e))?;
        // Pinned and checked to be the (empty) directory just made (`made::Made`): its id is
        // written beneath it and no change goes by its hidden name.
        let made =
            super::made::Made::pin(&tmp, nix::sys::stat::SFlag::S_IFDIR).map_err(|e| Error::io(path, "mkdir", e))?;
        let built = (|| {
            let entry = super::binding::Entry::new(r.parent_id, &r.encoded.backing);
            let header = match tenant {
                None => self.bound_header(crate::format::ObjectKind::Directory, random_array(), &entry),
                Some(id) => super::binding::bind_with(
                    &self.keys().names(),
                    crate::format::ObjectKind::Directory,
                    id,
                    Some(&entry),
                    false,
                    true,
                ),
            };
            made.write_file(DIRID_FILE, &header.encode()).map_err(|e| Error::io(path, "write directory id", e))?;
            if let Some((uid, gid)) = owner {
                made.chown(Some(uid), Some(gid)).map_err(|e| Error::io(path, "chown", e))?;
            }
            // Exactly `mode`: the daemon's umask may have cleared bits, and u+wx were added
            // to write the id.
            made.chmod(mode).map_err(|e| Error::io(path, "chmod", e))?;
            let meta = made.metadata().map_err(|e| Error::io(path, "stat", e))?;
            names::place(&tmp, &self.at(&backing, path)?, path)?;
            Ok(attr_from(&meta, super::EntryKind::Directory, 4096))
        })();
        if built.is_err() {
            let _ = made.remove(&tmp, &[DIRID_FILE]);
        }
        built
    }

    pub fn rmdir(&self, path: &Path) -> Result<()> {
        self.check_scratch_rmdir(path)?;
        self.rmdir_unchecked(path)
    }

    pub(super) fn rmdir_unchecked(&self, path: &Path) -> Result<()> {
        let r = self.resolve(path)?;
        let backing = r.backing();
        let listed = self.core.tree.dir(&backing).map_err(|e| super::volume::tree_error(path, e))?;
        let entries = fs::read_dir(listed.path()).map_err(|e| match e.raw_os_error() {
            Some(2) => Error::NotFound(path.into()),
            Some(20) => Error::NotDir(path.into()),
            _ => Error::io(path, "read directory", e),
        })?;
        if entries.flatten().any(|e| e.file_name() != DIRID_FILE) {
            return Err(Error::DirNotEmpty(path.into()));
        }
        // Its id read afresh and checked, not from the cache (the rows deleted below are that
        // object's).
        let dir_id = self.read_dir_id(&backing)?;
        // Nothing is created in it between the check above and this move: the kernel holds
        // the directory locked during an rmdir through the mount, and scratch clean-up runs
        // while no request is served. Moved away first, its attribute rows deleted after: a
        // crash in between leaves rows of no object, never a flagged directory without them.
        self.core.trash.discard(&self.at(&backing, path)?).map_err(|e| Error::io(path, "rmdir", e))?;
        // Empty: nothing below it is cached, so only its own entry goes (not a scan of the
        // cache); after the move, so a lookup that read it before cannot keep it.
        self.forget_dir_id(&backing);
        // A read first: most directories have no xattrs, and a write costs a commit.
        if !self.core.store.xattr_names(&dir_id)?.is_empty() {
            self.core.store.apply(&[Change::DeleteXattrs { object: &dir_id }])?;
        }
        self.forget_name(&r)
    }

    /// The entries of directory `path` (`""` or `"/"` is the root), names decrypted.
    pub fn readdir(&self, path: &Path) -> Result<Vec<DirEntry>> {
        Ok(self.list(path, None)?.1.into_iter().map(|(e, _)| e).collect())
    }

    /// The backing directory of `path` and its id, if it is (still) backing inode `expect`
    /// when given (else NotFound, as [`Volume::getattr_inode`]).
    pub(super) fn open_dir(&self, path: &Path, expect: Option<u64>) -> Result<(PathBuf, [u8; 16])> {
        if Self::is_root(path) {
            return Ok((self.core.data_dir.clone(), self.core.root_id));
        }
        let b = self.resolve(path)?.backing();
        let id = self.checked_dir_id(&b, self.lstat_of(&b, path)?, path, expect)?;
        Ok((b, id))
    }

    /// The id of backing directory `b` (of `path`), whose `lstat` is `st`, if it is a
    /// directory and (still) backing inode `expect` when given.
    fn checked_dir_id(&self, b: &Path, st: super::meta::Stat, path: &Path, expect: Option<u64>) -> Result<[u8; 16]> {
        if expect.is_some_and(|ino| !self.is_inode(st.ino, ino)) {
            return Err(Error::NotFound(path.into()));
        }
        if st.kind() != super::EntryKind::Directory {
            return Err(Error::NotDir(path.into()));
        }
        self.dir_id(b)
    }

    /// [`Volume::open_dir`], the directory opened for reading: one descriptor for its
    /// check, its entries and their attributes (the first reply of a listing).
    fn open_listed(&self, path: &Path, expect: Option<u64>) -> Result<(ListedDir, [u8; 16])> {
        let root = Self::is_root(path);
        let b = if root { self.core.data_dir.clone() } else { self.resolve(path)?.backing() };
        let at = match (self.core.tree.dir(&b).map_err(|e| super::volume::tree_error(path, e)), expect) {
            (Ok(at), _) => at,
            // Something else there now (a file, a symlink): for a kernel asking for inode
            // `ino`, that directory is gone, as with a directory of another inode.
            (Err(e @ (Error::NotDir(_) | Error::Integrity { .. })), Some(ino)) => {
                return Err(match self.lstat_of(&b, path) {
                    Ok(st) if self.is_inode(st.ino, ino) => e,
                    Ok(_) | Err(Error::NotFound(_)) => Error::NotFound(path.into()),
                    Err(_) => e,
                });
            }
            (Err(e), _) => return Err(e),
        };
        let id = if root {
            self.core.root_id
        } else {
            let st = nix::sys::stat::fstat(at.dir()).map_err(|e| Error::io(path, "stat", e.into()))?;
            self.checked_dir_id(&b, (&st).into(), path, expect)?
        };
        Ok((ListedDir { at, dir: b }, id))
    }

    /// The entries of the backing directory `listed` (sorted by name), each with its
    /// backing name. Read through a duplicate of its descriptor: no path is looked up again.
    fn entries_in(&self, listed: &ListedDir, dir_id: &[u8; 16], path: &Path) -> Result<Vec<(DirEntry, OsString)>> {
        use std::os::unix::ffi::OsStrExt;
        let read_err = |e: nix::Error| Error::io(path, "read directory", e.into());
        let fd = listed.at.dir().try_clone_to_owned().map_err(|e| Error::io(path, "read directory", e))?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(read_err)?;
        let mut out = Vec::new();
        let keys = self.core.keys.names();
        for entry in dir.iter() {
            let entry = entry.map_err(read_err)?;
            let backing = OsStr::from_bytes(entry.file_name().to_bytes());
            if backing == "." || backing == ".." {
                continue;
            }
            let Some(name) = names::decode(&keys, &self.core.store, dir_id, backing, &listed.dir)? else {
                continue;
            };
            let kind = match entry.file_type() {
                Some(t) => super::meta::kind_of_type(t),
                // A file system that does not say (DT_UNKNOWN): looked at, never followed.
                None => match super::volume::lstat_at(&listed.at.entry(backing), &path.join(&name)) {
                    Ok(st) => st.kind(),
                    Err(Error::NotFound(_)) => continue, // removed meanwhile
                    Err(e) => return Err(e),
                },
            };
            out.push((DirEntry { name, kind, ino: entry.ino() }, backing.to_os_string()));
        }
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        Ok(out)
    }

    /// The entries of directory `path` (sorted by name), each with its backing name, and its
    /// backing directory, opened: what a listing keeps to work out attributes entry by entry
    /// (the descriptor serves the first reply's). With `expect`, only if `path` is (still)
    /// that backing inode (else NotFound).
    pub fn list(&self, path: &Path, expect: Option<u64>) -> Result<(ListedDir, Vec<(DirEntry, OsString)>)> {
        let (listed, dir_id) = self.open_listed(path, expect)?;
        let entries = self.entries_in(&listed, &dir_id, path)?;
        Ok((listed, entries))
    }

    /// Backing directory `dir` (of directory `path`, listed by [`Volume::list`]) opened
    /// beneath the data directory once, for the attributes of its entries that one request
    /// sends ([`Volume::listed_attr`]): each entry is then reached through this descriptor,
    /// not by resolving the directory's path again.
    pub fn listed_dir(&self, dir: &Path, path: &Path) -> Result<ListedDir> {
        let at = self.core.tree.parent_of_entries(dir).map_err(|e| super::volume::tree_error(path, e))?;
        Ok(ListedDir { at, dir: dir.to_path_buf() })
    }

    /// Attributes of entry `name` of directory `path`, listed as `backing` in `listed`.
    pub fn listed_attr(&self, listed: &ListedDir, path: &Path, name: &OsStr, backing: &OsStr) -> Result<super::Attr> {
        self.attr_at(&listed.at.entry(backing), &listed.dir.join(backing), &path.join(name), None)
    }

    /// The entries of directory `path` with their attributes.
    pub fn readdir_plus(&self, path: &Path) -> Result<Vec<(DirEntry, super::Attr)>> {
        let (listed, entries) = self.list(path, None)?;
        let mut out = Vec::new();
        for (e, backing) in entries {
            match self.listed_attr(&listed, path, &e.name, &backing) {
                Ok(a) => out.push((e, a)),
                Err(Error::NotFound(_)) => {} // removed meanwhile
                Err(err) => return Err(err),
            }
        }
        Ok(out)
    }

    /// The id of the backing directory `dir`, checked to be bound to its entry, cached
    /// (directories keep their id for life; the cache forgets a path when a directory there
    /// is removed or renamed).
    pub(super) fn dir_id(&self, dir: &Path) -> Result<[u8; 16]> {
        let epoch = match self.dir_ids.lock().unwrap_or_else(|p| p.into_inner()).get(dir) {
            Ok(id) => return Ok(id),
            Err(epoch) => epoch,
        };
        let id = self.read_dir_id(dir)?;
        self.dir_ids.lock().unwrap_or_else(|p| p.into_inner()).insert(dir, id, epoch);
        Ok(id)
    }

    /// [`Volume::dir_id`], read from the backing tree and checked, never from the cache.
    fn read_dir_id(&self, dir: &Path) -> Result<[u8; 16]> {
        let read = || names::read_dir_header(&self.core.tree, dir);
        // Its parent is checked first (cached after), then its own binding to its entry.
        let h = self.checked_header(read()?, &self.entry_of(dir)?, dir, read)?;
        if h.tenant {
            self.tenant_dirs.lock().unwrap_or_else(|p| p.into_inner()).insert(h.id);
        }
        Ok(h.id)
    }

    /// Forgets cached directory ids at and below backing paths `dirs` (one scan).
    pub(super) fn forget_dir_ids(&self, dirs: &[&Path]) {
        self.dir_ids.lock().unwrap_or_else(|p| p.into_inner()).forget_below(dirs);
    }

    /// Forgets the cached id of backing directory `dir` alone (an empty one).
    fn forget_dir_id(&self, dir: &Path) {
        self.dir_ids.lock().unwrap_or_else(|p| p.into_inner()).forget(dir);
    }
}

/// Backing directory path → directory id, as [`Volume::dir_id`] checked it. Every forget
/// starts a new epoch, and an id read in an older one is not kept: a lookup that read a
/// directory's header just before a rename or rmdir replaced it (and the cache forgot that
/// path) never caches the dead directory's id for the path.
#[derive(Default)]
pub(super) struct DirIds {
    ids: HashMap<PathBuf, [u8; 16]>,
    epoch: u64,
}

impl DirIds {
    /// The cached id of `dir`, or the epoch to insert one read now in.
    pub(super) fn get(&self, dir: &Path) -> std::result::Result<[u8; 16], u64> {
        self.ids.get(dir).copied().ok_or(self.epoch)
    }

    /// Caches `id` for `dir`, read in `epoch`, unless something was forgotten since.
    fn insert(&mut self, dir: &Path, id: [u8; 16], epoch: u64) {
        if epoch != self.epoch {
            return;
        }
        if self.ids.len() >= DIR_ID_CACHE {
            self.ids.clear();
        }
        self.ids.insert(dir.to_path_buf(), id);
    }

    fn forget(&mut self, dir: &Path) {
        self.ids.remove(dir);
        self.epoch += 1;
    }

    fn forget_below(&mut self, dirs: &[&Path]) {
        self.ids.retain(|p, _| !dirs.iter().any(|d| p.starts_with(d)));
        self.epoch += 1;
    }

    pub(super) fn clear(&mut self) {
        self.ids.clear();
        self.epoch += 1;
    }
}
