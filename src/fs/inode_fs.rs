//! The inode-addressed view of a volume that a kernel adapter (FUSE) needs: inode numbers
//! to paths, open-file handles by number, and every operation in those terms.
//!
//! Inode numbers are the backing inode numbers (stable across mounts, shared by hardlinks);
//! the root is always 1. Errors are the crate's; the adapter maps them with `Error::errno`.
//!
//! A mount serves its volume and the volume's tenants (`crate::tenant`), each a volume of its
//! own: every inode belongs to one of them (its *part*: 0 is the volume, then the tenants).
//! A tenant's root is a directory of the outer volume whose id the tenant list names; its
//! attributes are that directory's, its entries the tenant volume's. A request in a tenant
//! holds that volume's request guard (the outer one's is the FUSE layer's), so a tenant going
//! dark waits for them and refuses the next; renames and links across parts are EXDEV, and
//! a tenant's root cannot be removed or renamed over (EBUSY).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::listing::{Listed, Listing, Listings};
use super::meta::{Attr, AttrChanges, RenameMode, StatFs};
use super::volume::{EntryKind, Volume};
use super::{FileHandle, XattrMode};
use crate::{Error, Result};

pub const ROOT_INO: u64 = 1;

/// Who is asking: new entries are given this owner when the daemon runs as root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Attribute changes of one `setattr` call.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub size: Option<u64>,
    /// Owner, mode and times; its `drop_privs`: clear setuid/setgid (see
    /// [`InodeFs::drop_privs`]) as the size changes, the caller may not keep them (it lacks
    /// CAP_FSETID). A chown clears them anyway.
    pub changes: AttrChanges,
    /// The open file the change came through, if any.
    pub fh: Option<u64>,
}

struct Node {
    /// The volume the inode is in, and its path there.
    part: usize,
    path: PathBuf,
    /// For a tenant's root: the part its entries are in.
    contents: Option<usize>,
    /// Whether `contents` was worked out (at the first use of the directory's entries,
    /// which reads its id anyway).
    checked: bool,
    /// Other names the kernel knows this file by (hard links; the most recent
    /// [`MAX_LINKS`]), tried when `path` no longer names it: removed, or another file renamed
    /// over it, while a dentry of another link still leads the kernel here.
    links: Vec<PathBuf>,
    lookups: u64,
}

/// Other names kept per inode (hard links).
const MAX_LINKS: usize = 8;

/// A tenant the mount serves: its volume, or why it is not open.
pub type TenantPart = std::result::Result<Arc<Volume>, String>;

pub struct InodeFs {
    vol: Arc<Volume>,
    /// Parts 1.. (the tenants), in the order of `tenant_roots`' values.
    tenants: Vec<TenantPart>,
    /// Outer directory id of each tenant's root → its part.
    tenant_roots: HashMap<[u8; 16], usize>,
    /// The volume's tenant list (every tenant, open or not).
    tenant_list: Vec<super::TenantEntry>,
    root_backing_ino: u64,
    nodes: RwLock<HashMap<u64, Node>>,
    handles: Mutex<HashMap<u64, (Arc<FileHandle>, usize)>>,
    /// Directory listings being read.
    listings: Listings,
    next_fh: AtomicU64,
    read_only: bool,
    chown_new: bool,
    /// When the last request came, in milliseconds since `started` (only kept for
    /// `mount --idle`: no clock read per request otherwise).
    idle_tracked: bool,
    last_request: AtomicU64,
    started: std::time::Instant,
}

impl std::fmt::Debug for InodeFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InodeFs").field("volume", &self.vol).finish_non_exhaustive()
    }
}

impl InodeFs {
    /// Held by every request while it runs (see [`Volume::op`]).
    pub fn op(&self) -> Result<std::sync::RwLockReadGuard<'_, ()>> {
        if self.idle_tracked {
            let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last_request.store(now, Ordering::Relaxed);
        }
        self.vol.op()
    }

    /// Keeps the time of the last request, for [`Self::idle_for`] (before the file system
    /// is shared).
    pub fn track_idle(&mut self) {
        self.idle_tracked = true;
    }

    /// How long no request has come, if no file is open (`mount --idle`): an open file
    /// keeps the mount busy however long it sits.
    pub fn idle_for(&self) -> Option<std::time::Duration> {
        if !self.handles.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            return None;
        }
        let last = std::time::Duration::from_millis(self.last_request.load(Ordering::Relaxed));
        Some(self.started.elapsed().saturating_sub(last))
    }

    /// `chown_new`: give new entries the caller's uid/gid (when the daemon runs as root).
    pub fn new(vol: Arc<Volume>, read_only: bool, chown_new: bool) -> Result<Self> {
        let root = vol.getattr(Path::new(""))?;
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node { part: 0, path: PathBuf::new(), contents: None, checked: true, links: Vec::new(), lookups: 1 },
        );
        Ok(InodeFs {
            vol,
            tenants: Vec::new(),
            tenant_roots: HashMap::new(),
            tenant_list: Vec::new(),
            root_backing_ino: root.ino,
            nodes: RwLock::new(nodes),
            handles: Mutex::new(HashMap::new()),
            listings: Listings::default(),
            next_fh: AtomicU64::new(1),
            read_only,
            chown_new,
            idle_tracked: false,
            last_request: AtomicU64::new(0),
            started: std::time::Instant::now(),
        })
    }

    /// Serves tenant `part` (its root: the outer directory `dir_id`) too; its part number
    /// is returned (before the file system is shared).
    pub fn add_tenant(&mut self, entry: super::TenantEntry, part: TenantPart) -> usize {
        self.tenants.push(part);
        self.tenant_roots.insert(entry.dir_id, self.tenants.len());
        self.tenant_list.push(entry);
        self.tenants.len()
    }

    pub fn volume(&self) -> &Volume {
        &self.vol
    }

    /// The volume of part `k`, with its request guard for a tenant (the outer volume's is
    /// held by the caller); a tenant not opened or gone dark refuses with EKEYREVOKED.
    fn part(&self, k: usize) -> Result<(&Volume, Option<std::sync::RwLockReadGuard<'_, ()>>)> {
        if k == 0 {
            return Ok((&self.vol, None));
        }
        // Named by the tenant's label (its volume's own path is a descriptor's).
        let revoked = |reason: String| Error::Revoked {
            path: PathBuf::from(format!("tenant {}", self.tenant_list.get(k - 1).map_or("?", |t| t.label.as_str()))),
            reason,
        };
        match &self.tenants[k - 1] {
            Ok(v) => match v.op() {
                Ok(guard) => Ok((v, Some(guard))),
                Err(Error::Revoked { reason, .. }) => Err(revoked(reason)),
                Err(e) => Err(e),
            },
            Err(why) => Err(revoked(why.clone())),
        }
    }

    /// The volume of part `k` without a guard (inside a request that holds it); `None` for
    /// a tenant not opened.
    fn vol_of(&self, k: usize) -> Option<&Volume> {
        match k {
            0 => Some(&self.vol),
            _ => self.tenants.get(k - 1)?.as_ref().ok().map(|v| &**v),
        }
    }

    /// The inode the kernel knows the volume's own directory `path` by, if it knows it.
    pub fn dir_inode(&self, path: &Path) -> Option<u64> {
        if path.as_os_str().is_empty() {
            return Some(ROOT_INO);
        }
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes.iter().find(|(_, n)| n.part == 0 && n.path == path).map(|(i, _)| *i)
    }

    /// Tenant `k`'s volume, if it was opened.
    pub fn tenant_volume(&self, k: usize) -> Option<Arc<Volume>> {
        self.tenants.get(k.checked_sub(1)?)?.as_ref().ok().cloned()
    }

    /// Every tenant volume that was opened.
    pub fn tenant_volumes(&self) -> Vec<Arc<Volume>> {
        self.tenants.iter().flatten().cloned().collect()
    }

    /// The inodes of tenant `k` the kernel may cache (its root's among them), for dropping
    /// them when it goes dark.
    pub fn inodes_of(&self, k: usize) -> Vec<u64> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes.iter().filter(|(_, n)| n.part == k || n.contents == Some(k)).map(|(i, _)| *i).collect()
    }

    /// The volume, to keep beyond this file system (a thread of the daemon).
    pub fn volume_arc(&self) -> Arc<Volume> {
        self.vol.clone()
    }

    /// Every inode the kernel has looked up and not forgotten (the ones it may cache).
    pub fn inodes(&self) -> Vec<u64> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).keys().copied().collect()
    }

    /// Drops the directory listings kept for readdir (decrypted names), as a volume going
    /// dark does.
    pub fn forget_listings(&self) {
        self.listings.clear();
    }

    /// The path of inode `ino` — checked to still name that inode: the one path kept per
    /// inode goes stale when another name is renamed over it, and acting on it then would
    /// reach another file (a truncate!) or report another file's type (which the kernel
    /// answers with EIO and a bad inode).
    fn path(&self, ino: u64) -> Result<(usize, PathBuf)> {
        let (k, path) = self.path_unchecked(ino)?;
        // A dark tenant's inode: the tenant's errno, not a stale path's ENOENT.
        drop(self.part(k)?);
        if ino == ROOT_INO || self.names(k, &path, ino) {
            return Ok((k, path));
        }
        self.relink(ino).map(|p| (k, p)).ok_or(Error::NotFound(path))
    }

    /// Runs `op` on the path of `ino`; `op` checks that the path names `ino` and fails with
    /// `NotFound` if not. Then once more on another of its names, if one still names it.
    fn at_inode<T>(&self, ino: u64, op: impl Fn(&Volume, &Path) -> Result<T>) -> Result<T> {
        let (k, path) = self.path_unchecked(ino)?;
        let (vol, _guard) = self.part(k)?;
        match op(vol, &path) {
            Err(Error::NotFound(p)) if ino != ROOT_INO => match self.relink(ino) {
                Some(other) => op(vol, &other),
                None => Err(Error::NotFound(p)),
            },
            r => r,
        }
    }

    /// Whether `path` names inode `ino` now.
    fn names(&self, k: usize, path: &Path, ino: u64) -> bool {
        let Some(vol) = self.vol_of(k) else { return false };
        let now = vol.backing_path(path).ok().and_then(|b| vol.lstat(&b).ok());
        now.is_some_and(|m| vol.is_inode(m.ino(), ino))
    }

    /// When the path kept for `ino` no longer names it: the first other name that does,
    /// which becomes its path (a hard link outlives the name the kernel last looked up).
    fn relink(&self, ino: u64) -> Option<PathBuf> {
        let (k, links) = {
            let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
            let n = nodes.get(&ino)?;
            (n.part, n.links.clone())
        };
        let found = links.into_iter().find(|l| self.names(k, l, ino))?;
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        let node = nodes.get_mut(&ino)?;
        node.links.retain(|l| *l != found);
        node.path = found.clone();
        Some(found)
    }

    fn path_unchecked(&self, ino: u64) -> Result<(usize, PathBuf)> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
            .map(|n| (n.part, n.path.clone()))
            .ok_or_else(|| Error::NotFound(PathBuf::from(format!("<inode {ino}>"))))
    }

    /// Where the entries of directory `ino` are: its own place, or a tenant's root.
    /// The first use of a directory of the volume's own works out whether it is a tenant's
    /// root (its id, read here, is what reaching its entries needs anyway); failing closed.
    fn contents(&self, ino: u64) -> Result<(usize, PathBuf)> {
        let (part, path, contents, checked) = self
            .nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
            .map(|n| (n.part, n.path.clone(), n.contents, n.checked))
            .ok_or_else(|| Error::NotFound(PathBuf::from(format!("<inode {ino}>"))))?;
        if let Some(t) = contents {
            return Ok((t, PathBuf::new()));
        }
        if part != 0 || checked {
            return Ok((part, path));
        }
        // Only if `path` is still this inode (a rename meanwhile: worked out next time).
        let t = self.tenant_root(&path, (ino != ROOT_INO).then_some(ino))?;
        self.root_in_its_place(&path, t)?;
        if let Some(n) = self.nodes.write().unwrap_or_else(|p| p.into_inner()).get_mut(&ino) {
            if n.path == path {
                (n.contents, n.checked) = (t, true);
            }
        }
        Ok(match t {
            Some(t) => (t, PathBuf::new()),
            None => (part, path),
        })
    }

    /// The part and path of `name` in directory `parent`. The parent's path is not
    /// re-checked: a directory cannot be renamed over while it has entries, and one that was
    /// is gone, so a stale parent path fails on its own.
    fn child(&self, parent: u64, name: &OsStr) -> Result<(usize, PathBuf)> {
        let (k, dir) = self.contents(parent)?;
        Ok((k, dir.join(name)))
    }

    /// The tenant whose root is the volume's directory at `path`, if it is one. Fails
    /// closed: a directory whose id cannot be read, or whose own flag and the tenant list
    /// disagree, is an error, never taken for a plain directory (files made in it would be
    /// under the volume's KEK).
    fn tenant_root(&self, path: &Path, ino: Option<u64>) -> Result<Option<usize>> {
        let t = self.vol.tenant_root_at(path, &self.tenant_list, ino)?;
        Ok(t.and_then(|t| self.tenant_roots.get(&t.dir_id).copied()))
    }

    /// An integrity error if `path` (of the volume) is where a tenant's root belongs but the
    /// directory there is not it (`is`: the tenant whose root it is, if any): the root was
    /// removed, or replaced by a plain directory, behind the volume's back; files made in
    /// it would go under the volume's KEK.
    fn root_in_its_place(&self, path: &Path, is: Option<usize>) -> Result<()> {
        let Some(t) = self.vol.tenant_place_at(path, &self.tenant_list)? else { return Ok(()) };
        if is.is_some_and(|k| self.tenant_list.get(k - 1).is_some_and(|e| e.id == t.id)) {
            return Ok(());
        }
        Err(Error::integrity(
            path,
            format!(
                "is where tenant {}'s root belongs, but is not it (removed or replaced behind the volume's back)",
                t.label
            ),
        ))
    }

    /// Refuses making anything (a directory, file, link, node) at `path` of the volume where
    /// a missing tenant's root belongs (an existing root makes it EEXIST on its own).
    fn free_place(&self, k: usize, vol: &Volume, path: &Path) -> Result<()> {
        // The list first (a name compare, mostly): a stat only for a listed place.
        if k == 0 && self.vol.tenant_place_at(path, &self.tenant_list)?.is_some() && vol.stat(path).is_err() {
            self.root_in_its_place(path, None)?;
        }
        Ok(())
    }

    /// EBUSY for a tenant's root (part 0 path), which only `shred --tenant` removes.
    fn not_a_tenant_root(&self, k: usize, path: &Path) -> Result<()> {
        if k != 0 {
            return Ok(());
        }
        match self.vol.stat(path) {
            Ok(s) if s.kind == EntryKind::Directory => {}
            // Not a directory, or not there: the operation says so itself.
            Ok(_) | Err(Error::NotFound(_) | Error::NotDir(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
        if self.tenant_root(path, None)?.is_some() {
            return Err(Error::io(
                path,
                "a tenant's root (shred --tenant removes it)",
                std::io::Error::from_raw_os_error(16),
            ));
        }
        Ok(())
    }

    /// Attributes with the FUSE inode number, remembering `path` for it (one lookup).
    fn remember(&self, k: usize, path: PathBuf, mut attr: Attr) -> Attr {
        if k == 0 && attr.ino == self.root_backing_ino {
            attr.ino = ROOT_INO;
            return attr;
        }
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        let node = nodes.entry(attr.ino).or_insert_with(|| Node {
            part: k,
            path: PathBuf::new(),
            contents: None,
            checked: false,
            links: Vec::new(),
            lookups: 0,
        });
        node.lookups += 1;
        if node.part != k || node.path != path {
            // Maybe another directory by the same inode number: worked out again.
            (node.part, node.contents, node.checked) = (k, None, false);
        }
        if node.path != path {
            let Node { path: kept, links, .. } = node;
            let old = std::mem::replace(kept, path);
            links.retain(|l| l != kept);
            if attr.nlink > 1 && !old.as_os_str().is_empty() {
                if links.len() == MAX_LINKS {
                    links.remove(0);
                }
                links.push(old);
            }
        }
        attr
    }

    fn fuse_ino(&self, attr: &mut Attr) {
        if attr.ino == self.root_backing_ino {
            attr.ino = ROOT_INO;
        }
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(Error::io("", "write", std::io::Error::from_raw_os_error(30)))
        } else {
            Ok(())
        }
    }

    /// The owner new entries of `caller` are given, if the daemon sets one.
    fn owner(&self, caller: Caller) -> Option<(u32, u32)> {
        self.chown_new.then_some((caller.uid, caller.gid))
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        let (k, path) = self.child(parent, name)?;
        let (vol, _guard) = self.part(k)?;
        let attr = vol.getattr(&path)?;
        Ok(self.remember(k, path, attr))
    }

    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(node) = nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 {
                nodes.remove(&ino);
            }
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        if ino == ROOT_INO {
            let mut attr = self.vol.getattr(Path::new(""))?;
            self.fuse_ino(&mut attr);
            return Ok(attr);
        }
        let mut attr = match self.at_inode(ino, |vol, p| vol.getattr_inode(p, ino)) {
            Ok(a) => a,
            // Open, then unlinked (or renamed over): fstat still works, as on a local file
            // system, from the open data file.
            Err(Error::NotFound(p)) => self.open_attr(ino).ok_or(Error::NotFound(p))?,
            Err(e) => return Err(e),
        }; // see `path`
        attr.ino = ino; // re-keyed in place: the kernel's inode number stays
        Ok(attr)
    }

    /// The attributes of inode `ino` from one of its open handles, if it has one.
    fn open_attr(&self, ino: u64) -> Option<Attr> {
        self.open_handle(ino).map(|(_, a)| a)
    }

    /// One open handle of inode `ino`, with its attributes, if it has one.
    fn open_handle(&self, ino: u64) -> Option<(Arc<FileHandle>, Attr)> {
        let handles: Vec<(Arc<FileHandle>, usize)> =
            self.handles.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        handles.into_iter().find_map(|(h, k)| {
            let a = h.attr().ok()?;
            self.vol_of(k).is_some_and(|v| v.is_inode(a.ino, ino)).then_some((h, a))
        })
    }

    pub fn setattr(&self, ino: u64, set: &SetAttr) -> Result<Attr> {
        self.writable()?;
        if let Some(size) = set.size {
            match set.fh.and_then(|fh| self.handle(fh).ok()) {
                // Through the open file: it may have no name left (ftruncate after unlink).
                Some((h, k)) => {
                    let (_vol, _guard) = self.part(k)?;
                    h.set_len(size)?
                }
                None => {
                    let (k, path) = self.path(ino)?;
                    let (vol, _guard) = self.part(k)?;
                    vol.truncate_inode(&path, Some(ino), size)?
                }
            }
        }
        // Times, owner and mode (and setuid dropped, for a chown or a truncation by a user
        // without CAP_FSETID), and the attributes after: one lookup of the entry, pinned.
        let expect = (ino != ROOT_INO).then_some(ino);
        let mut attr = match self.at_inode(ino, |vol, p| vol.change_attrs(p, expect, &set.changes)) {
            // Open with no name left, and nothing but the size changed.
            Err(Error::NotFound(p)) if !set.changes.changes_entry() => {
                self.nameless_attr(ino, set.fh, set.changes.drop_privs).ok_or(Error::NotFound(p))??
            }
            r => r?, // see `path`
        };
        match expect {
            Some(ino) => attr.ino = ino, // re-keyed in place: the kernel's inode number stays
            None => self.fuse_ino(&mut attr),
        }
        Ok(attr)
    }

    /// Clears setuid, and setgid where the group may execute, of regular file `ino`: what the
    /// VFS does when a file is written or truncated by a caller without CAP_FSETID, or chowned.
    /// The kernel leaves it to us (`FUSE_HANDLE_KILLPRIV_V2`), so that it need not ask for
    /// the mode and the `security.capability` attribute before every write (those bits are
    /// rare; checking them here costs an `O_PATH` open and a stat, not two kernel round
    /// trips).
    /// `fh`: the open file the write or truncation comes through, if the kernel said.
    pub fn drop_privs(&self, ino: u64, fh: Option<u64>) -> Result<()> {
        self.writable()?;
        if ino == ROOT_INO {
            return Ok(()); // a directory, which keeps its bits
        }
        let changes = AttrChanges { drop_privs: true, ..Default::default() };
        match self.at_inode(ino, |vol, p| vol.apply_attr_changes(p, Some(ino), &changes).map(drop)) {
            Err(Error::NotFound(p)) => self.nameless_attr(ino, fh, true).ok_or(Error::NotFound(p))?.map(drop),
            r => r, // see `path`
        }
    }

    /// The attributes of `ino`, open with no name left (written or truncated through a
    /// handle after its last name went, as a local file system allows), if it is open — with,
    /// when `drop_privs`, setuid and setgid cleared through the handle (no name reaches it):
    /// `fh` if given, else one found by its inode number.
    fn nameless_attr(&self, ino: u64, fh: Option<u64>, drop_privs: bool) -> Option<Result<Attr>> {
        let h = match fh.and_then(|fh| self.handle(fh).ok()) {
            Some((h, _)) => h,
            None => self.open_handle(ino)?.0,
        };
        Some(if drop_privs { h.drop_privs() } else { h.attr() })
    }

    pub fn readlink(&self, ino: u64) -> Result<OsString> {
        let (k, path) = self.path(ino)?;
        let (vol, _guard) = self.part(k)?;
        vol.readlink(&path)
    }

    pub fn mknod(&self, parent: u64, name: &OsStr, mode: u32, rdev: u64, caller: Caller) -> Result<Attr> {
        self.writable()?;
        let (k, path) = self.child(parent, name)?;
        let (vol, guard) = self.part(k)?;
        self.free_place(k, vol, &path)?;
        // Each made whole (owner too) before it takes its name: no chown by a name.
        if mode & 0o170000 == 0o100000 {
            vol.create_owned(&path, mode & 0o7777, self.owner(caller))?.0.close()?;
        } else {
            vol.mknod_owned(&path, mode, rdev, self.owner(caller))?;
        }
        drop(guard);
        self.lookup(parent, name)
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, caller: Caller) -> Result<Attr> {
        self.writable()?;
        let (k, path) = self.child(parent, name)?;
        let (vol, _guard) = self.part(k)?;
        self.free_place(k, vol, &path)?;
        let attr = vol.mkdir_owned(&path, mode, self.owner(caller))?;
        Ok(self.remember(k, path, attr))
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.writable()?;
        let (k, path) = self.child(parent, name)?;
        let (vol, _guard) = self.part(k)?;
        vol.unlink(&path)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.writable()?;
        let (k, path) = self.child(parent, name)?;
        let (vol, _guard) = self.part(k)?;
        self.not_a_tenant_root(k, &path)?;
        if k == 0 && !self.tenant_list.is_empty() {
            // The parent of a tenant's root (missing, or it would not be empty) stays, so that
            // `fsck --repair` can put the root back.
            let id = vol.dir_id_of(&path)?;
            if let Some(t) = self.tenant_list.iter().find(|t| t.parent_id == id) {
                tracing::warn!(tenant = %t.label, "rmdir refused: the directory holds a tenant's root's place");
                return Err(Error::io(
                    &path,
                    "rmdir the parent of a tenant's root",
                    std::io::Error::from_raw_os_error(16),
                ));
            }
        }
        vol.rmdir(&path)
    }

    pub fn symlink(&self, parent: u64, name: &OsStr, target: &Path, caller: Caller) -> Result<Attr> {
        self.writable()?;
        let (k, path) = self.child(parent, name)?;
        let (vol, guard) = self.part(k)?;
        self.free_place(k, vol, &path)?;
        vol.symlink_owned(&path, target.as_os_str(), self.owner(caller))?;
        drop(guard);
        self.lookup(parent, name)
    }

    pub fn rename(&self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr, mode: RenameMode) -> Result<()> {
        self.writable()?;
        let ((k, from), (to_k, to)) = (self.child(parent, name)?, self.child(new_parent, new_name)?);
        if k != to_k {
            return Err(Error::io(&from, "rename across a tenant's boundary", std::io::Error::from_raw_os_error(18)));
        }
        let (vol, _guard) = self.part(k)?;
        // A tenant's root stays where it is (like a mount point; the list says where), and
        // nothing takes its place.
        self.not_a_tenant_root(k, &from)?;
        self.not_a_tenant_root(k, &to)?;
        for p in [&from, &to] {
            // (`from` too: an exchange moves what is at `to` there.)
            if k == 0 && self.vol.tenant_place_at(p, &self.tenant_list)?.is_some() {
                return Err(Error::io(p, "a tenant's root's place", std::io::Error::from_raw_os_error(16)));
            }
        }
        vol.rename_with(&from, &to, mode)?;
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        let swap = |p: &Path, a: &Path, b: &Path| p.strip_prefix(a).ok().map(|rest| b.join(rest));
        for node in nodes.values_mut().filter(|n| n.part == k) {
            for path in std::iter::once(&mut node.path).chain(node.links.iter_mut()) {
                let moved = match mode {
                    RenameMode::Exchange => swap(path, &from, &to).or_else(|| swap(path, &to, &from)),
                    _ => swap(path, &from, &to),
                };
                if let Some(p) = moved {
                    *path = p;
                    // Worked out again at its new place (see `contents`).
                    node.checked = node.contents.is_some();
                }
            }
        }
        Ok(())
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &OsStr) -> Result<Attr> {
        self.writable()?;
        let ((k, from), (to_k, to)) = (self.path(ino)?, self.child(new_parent, new_name)?);
        if k != to_k {
            return Err(Error::io(&from, "link across a tenant's boundary", std::io::Error::from_raw_os_error(18)));
        }
        let (vol, guard) = self.part(k)?;
        self.free_place(k, vol, &to)?;
        vol.link(&from, &to)?;
        drop(guard);
        self.lookup(new_parent, new_name)
    }

    pub fn open(&self, ino: u64, write: bool) -> Result<u64> {
        if write {
            self.writable()?;
        }
        let (k, _) = self.path_unchecked(ino)?;
        let h = self.at_inode(ino, |vol, p| vol.open_inode(p, write, Some(ino)))?;
        Ok(self.add_handle(h, k))
    }

    pub fn create(&self, parent: u64, name: &OsStr, mode: u32, caller: Caller) -> Result<(Attr, u64)> {
        self.writable()?;
        let (k, path) = self.child(parent, name)?;
        let (vol, _guard) = self.part(k)?;
        self.free_place(k, vol, &path)?;
        let (h, attr) = vol.create_owned(&path, mode & 0o7777, self.owner(caller))?;
        let handle = self.add_handle(h, k);
        Ok((self.remember(k, path, attr), handle))
    }

    fn add_handle(&self, h: FileHandle, k: usize) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).insert(fh, (Arc::new(h), k));
        fh
    }

    /// Open file `fh` and the request guard of its volume.
    fn handle_op(&self, fh: u64) -> Result<(Arc<FileHandle>, Option<std::sync::RwLockReadGuard<'_, ()>>)> {
        let (h, k) = self.handle(fh)?;
        let (_, guard) = self.part(k)?;
        Ok((h, guard))
    }

    fn handle(&self, fh: u64) -> Result<(Arc<FileHandle>, usize)> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or_else(|| Error::io("", "file handle", std::io::Error::from_raw_os_error(9)))
    }

    /// Reads up to `size` bytes at `offset` and hands them to `reply` (from a per-thread
    /// buffer: no allocation or zeroing per request).
    pub fn read_with<T>(&self, fh: u64, offset: u64, size: u32, reply: impl FnOnce(Result<&[u8]>) -> T) -> T {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let (h, _guard) = match self.handle_op(fh) {
            Ok(h) => h,
            Err(e) => return reply(Err(e)),
        };
        let mut buf = BUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
        if buf.len() < size as usize {
            buf.resize(size as usize, 0);
        }
        // Only the `n` bytes just read are handed out; the rest of the buffer is never shown.
        let out = match h.read_at(offset, &mut buf[..size as usize]) {
            Ok(n) => reply(Ok(&buf[..n])),
            Err(e) => reply(Err(e)),
        };
        BUF.with(|b| *b.borrow_mut() = buf);
        out
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.read_with(fh, offset, size, |r| r.map(<[u8]>::to_vec))
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let (h, _guard) = self.handle_op(fh)?;
        Ok(h.write_at(offset, data)? as u32)
    }

    pub fn fsync(&self, fh: u64) -> Result<()> {
        let (h, _guard) = self.handle_op(fh)?;
        h.sync()
    }

    /// Closes `fh`; the last handle of a file commits its metadata.
    pub fn release(&self, fh: u64) -> Result<()> {
        let Some((h, k)) = self.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&fh) else {
            return Ok(());
        };
        // On a dark tenant the handle goes without a commit (its store takes none).
        let (_, _guard) = self.part(k)?;
        match Arc::try_unwrap(h) {
            Ok(h) => h.close_deferred(),
            // A read or write on this handle is still in flight; it closes when that ends.
            Err(_) => Ok(()),
        }
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        const KEEP_SIZE: i32 = 1;
        let (h, _guard) = self.handle_op(fh)?;
        if mode & !KEEP_SIZE != 0 {
            return Err(Error::io("", "fallocate", std::io::Error::from_raw_os_error(95)));
        }
        let end = offset.checked_add(len).ok_or_else(|| Error::InvalidArgument("fallocate range overflows".into()))?;
        if mode & KEEP_SIZE == 0 && end > h.len() {
            h.set_len(end)?;
        }
        Ok(())
    }

    /// SEEK_DATA (3) / SEEK_HOLE (4) over written blocks; other whence values as usual.
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let (h, _guard) = self.handle_op(fh)?;
        let off = u64::try_from(offset).map_err(|_| Error::InvalidArgument("negative offset".into()))?;
        match whence {
            3 => h.seek_data(off).map(|o| o as i64),
            4 => h.seek_hole(off).map(|o| o as i64),
            _ => Err(Error::InvalidArgument("unsupported whence".into())),
        }
    }

    /// [`Self::readdir_from`] for a readdirplus: a listing made afresh also asks for the
    /// headers of its files whose ids are not cached (`Volume::prefetch_headers`), whose
    /// attributes the reply carries.
    pub fn readdirplus_from(&self, ino: u64, offset: u64) -> Result<(Arc<Listing>, Option<super::ListedDir>)> {
        let (l, listed) = self.readdir_from(ino, offset)?;
        if let Some(dir) = &listed {
            if let Ok((vol, _guard)) = self.part(l.part) {
                let files = l.entries.iter().filter(|e| e.kind == EntryKind::File);
                vol.prefetch_headers(dir, files.map(|e| (e.ino, e.backing.as_os_str())));
            }
        }
        Ok((l, listed))
    }

    /// The listing of directory `ino` for a read at `offset`: made afresh at offset 0 (with
    /// its backing directory, opened for the entries' attributes of this first reply), the
    /// one made then for the reads after it (see [`super::listing`]).
    pub fn readdir_from(&self, ino: u64, offset: u64) -> Result<(Arc<Listing>, Option<super::ListedDir>)> {
        let (k, path) = self.contents(ino)?;
        let (vol, _guard) = self.part(k)?;
        if let Some(l) = self.listings.continued(ino, offset) {
            // Unless the directory was renamed meanwhile, or a KEK rotation renamed every
            // backing entry: its entries are then listed again where they are now.
            if l.generation == vol.names_generation() && l.part == k && l.path == path {
                return Ok((l, None));
            }
        }
        let generation = vol.names_generation();
        // The inode is checked where the directory is opened (see `path`); a tenant's root
        // is its volume's root, not the inode the kernel knows it by.
        let tenant_root =
            self.nodes.read().unwrap_or_else(|p| p.into_inner()).get(&ino).is_some_and(|n| n.contents.is_some());
        let (dir, listed) = vol.list(&path, (ino != ROOT_INO && !tenant_root).then_some(ino))?;
        let dot = |name: &str| Listed { name: name.into(), kind: EntryKind::Directory, ino, backing: OsString::new() };
        let mut entries = vec![dot("."), dot("..")];
        entries.extend(listed.into_iter().map(|(e, backing)| Listed {
            ino: if k == 0 && e.ino == self.root_backing_ino { ROOT_INO } else { e.ino },
            name: e.name,
            kind: e.kind,
            backing,
        }));
        let subdirs = entries.iter().filter(|e| e.kind == EntryKind::Directory && !e.backing.is_empty());
        vol.walk_ahead(&dir, subdirs.map(|e| e.backing.as_os_str()));
        let l = Arc::new(Listing { part: k, path, backing: dir.backing().to_path_buf(), entries, generation });
        self.listings.keep(ino, l.clone());
        Ok((l, Some(dir)))
    }

    /// The backing directory of listing `l`, opened once for the attributes of the entries
    /// one READDIRPLUS sends ([`Self::listed_attr`]).
    pub fn listed_dir(&self, l: &Listing) -> Result<super::ListedDir> {
        let (vol, _guard) = self.part(l.part)?;
        vol.listed_dir(&l.backing, &l.path)
    }

    /// The attributes of entry `i` of listing `l` (readdirplus; `listed` its directory),
    /// worked out now; `None` if it is gone. The kernel counts a lookup for every entry it
    /// receives with attributes: call [`Self::note_lookup`] for each one sent.
    pub fn listed_attr(&self, l: &Listing, listed: &super::ListedDir, i: usize) -> Result<Option<Attr>> {
        let e = &l.entries[i];
        if e.backing.is_empty() {
            // "." and "..": the directory's own attributes (a tenant's root's are its outer
            // directory's).
            return self.getattr(e.ino).map(Some);
        }
        let (vol, _guard) = self.part(l.part)?;
        match vol.listed_attr(listed, &l.path, &e.name, &e.backing) {
            Ok(mut a) => {
                if l.part == 0 {
                    self.fuse_ino(&mut a);
                }
                Ok(Some(a))
            }
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn set_xattr(&self, ino: u64, name: &OsStr, value: &[u8], mode: XattrMode) -> Result<()> {
        self.writable()?;
        let (k, path) = self.path(ino)?;
        let (vol, _guard) = self.part(k)?;
        vol.set_xattr(&path, name, value, mode)
    }

    pub fn get_xattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        if !super::xattr::kept_namespace(name) {
            return Err(Error::NoAttribute(self.path_unchecked(ino)?.1));
        }
        let (k, path) = self.path(ino)?;
        let (vol, _guard) = self.part(k)?;
        vol.get_xattr(&path, name)
    }

    /// The names, each followed by a NUL byte (the listxattr(2) layout).
    pub fn list_xattrs(&self, ino: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let (k, path) = self.path(ino)?;
        let (vol, _guard) = self.part(k)?;
        for n in vol.list_xattrs(&path)? {
            out.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(n.as_os_str()));
            out.push(0);
        }
        Ok(out)
    }

    pub fn remove_xattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        self.writable()?;
        let (k, path) = self.path(ino)?;
        let (vol, _guard) = self.part(k)?;
        vol.remove_xattr(&path, name)
    }

    /// Records that the kernel now holds a reference to entry `name` of `parent`.
    pub fn note_lookup(&self, parent: u64, name: &OsStr, attr: &Attr) {
        if attr.ino == ROOT_INO {
            return;
        }
        if let Ok((k, path)) = self.child(parent, name) {
            self.remember(k, path, attr.clone());
        }
    }

    pub fn statfs(&self) -> Result<StatFs> {
        self.vol.statfs()
    }

    /// Commits everything pending (unmount).
    pub fn sync_all(&self) -> Result<()> {
        let handles: Vec<_> = self.handles.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for (_, (h, k)) in handles {
            if self.part(k).is_err() {
                continue; // a dark tenant: nothing to commit with
            }
            if let Ok(h) = Arc::try_unwrap(h) {
                h.close()?;
            }
        }
        for t in self.tenants.iter().flatten() {
            if t.dark().is_none() {
                t.sync_all()?;
            }
        }
        self.vol.sync_all()
    }
}
