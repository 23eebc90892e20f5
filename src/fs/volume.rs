//! A volume: creating and opening `CIPHERDIR`, path resolution, and the file operations on
//! it (directories are in `dirs.rs`).
//!
//! `CIPHERDIR/envelopefs.conf` (volume header), `CIPHERDIR/meta.db` (sidecar store),
//! `CIPHERDIR/data/` (the encrypted tree), and, for the default embedded KMS,
//! `CIPHERDIR/keystore`. The header is written last at `init`, so its presence marks a
//! complete volume.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::commit::Committer;
use super::file::{FileHandle, FileState};
use super::names::Encoded;
use crate::crypto::random_array;
use crate::format::{CipherKind, KdfParams, Layout, ObjectHeader, ObjectKind, VolumeHeader, OBJECT_HEADER_LEN};
use crate::keys::{FileId, KeyRing};
use crate::store::{Change, Store};
use crate::{Error, Result};

pub const HEADER_FILE: &str = "envelopefs.conf";
pub const STORE_FILE: &str = "meta.db";
pub const DATA_DIR: &str = "data";
/// Directory ids cached before the cache starts over.
pub(super) const DIR_ID_CACHE: usize = 65_536;
/// File ids cached before the cache starts over.
const FILE_ID_CACHE: usize = 262_144;

/// Options for `init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub cipher: CipherKind,
    /// log2 of the extent size (20 = 1 MiB).
    pub extent_shift: u8,
    /// `None`: the embedded keystore inside CIPHERDIR.
    pub kms_uri: Option<String>,
    pub kdf: KdfParams,
    /// Generate the root key in the HSM or KMS (else it must exist there).
    pub create_key: bool,
    /// The data format of its files: 2 (page-aligned blocks, crash-atomic and rollback-evident;
    /// GCM-SIV only) or 1; `None` is 2 for GCM-SIV, 1 for XTS.
    pub format: Option<u8>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            cipher: CipherKind::Aes256GcmSiv,
            extent_shift: 20,
            format: None,
            kms_uri: None,
            kdf: KdfParams::DEFAULT,
            create_key: false,
        }
    }
}

/// What `status` shows about an unmounted volume (no secret needed).
#[derive(Debug, Clone)]
pub struct VolumeInfo {
    pub header: VolumeHeader,
    pub files: u64,
    pub extents: u64,
    /// When the current KEK was made (Unix seconds), if recorded.
    pub kek_since: Option<u64>,
    /// Scratch that may exist (recorded in the store).
    pub scratch: super::ScratchState,
}

/// Counters of an open volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveStats {
    pub kek_since: Option<u64>,
    pub files: u64,
    pub wrapped_deks: u64,
    pub open_files: usize,
    /// Closed files whose state is kept for a reopen (`fs::linger`).
    pub closed_kept: usize,
    pub cache: crate::keys::CacheStats,
}

/// `meta` key: when the current KEK was made (u64 LE Unix seconds).
pub(super) const KEK_SINCE: &str = "kek.since";
/// `meta` key: the URI of an HSM/KMS root key made for this volume (so `shred --volume` may
/// destroy it, and `rotate --root` retires it).
pub(super) const ROOT_OWNED: &str = "root.owned";

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(super) fn kek_since(store: &Store) -> Result<Option<u64>> {
    Ok(store.meta(KEK_SINCE)?.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok()).map(u64::from_le_bytes))
}

/// The locked table of open files (by id, with their handle counts).
pub(super) type OpenTable<'a> = std::sync::MutexGuard<'a, super::linger::Table>;

/// Parts shared by the volume and its open files.
pub(super) struct Core {
    /// Directories whose files are being read ahead (`fs::open_ahead`).
    pub(super) open_ahead: super::open_ahead::OpenAhead,
    /// Directories a walk lists next, read ahead (`fs::walk_ahead`).
    pub(super) walk_ahead: super::walk_ahead::WalkAhead,
    /// The backing tree is on a file system in memory (tmpfs): nothing to read ahead.
    pub(super) in_memory: bool,
    pub(super) keys: KeyRing,
    pub(super) store: Store,
    pub(super) layout: Layout,
    pub(super) cipher_code: u8,
    pub(super) data_dir: PathBuf,
    pub(super) root_id: [u8; 16],
    /// Open files by id, with their handle count. A count of 0 is a file closed with its
    /// commit queued (parked) or one closed lately whose state is kept for a reopen
    /// (`lingering`).
    pub(super) open: Mutex<super::linger::Table>,
    /// Which of the files with no handle are closed ones kept loaded (`fs::linger`).
    pub(super) lingering: super::linger::Lingering,
    /// Scratch directories of this mount (relative paths; `""` is the whole volume).
    pub(super) scratch_dirs: std::sync::RwLock<Vec<PathBuf>>,
    pub(super) committer: Committer,
    /// Data files and sync points (the storage seam).
    pub(super) storage: Arc<dyn super::Storage>,
    /// Unlinked data files waiting for removal in the background.
    pub(super) trash: super::trash::Trash,
    /// The backing tree, reached by descriptors (every backing entry goes through it).
    pub(super) tree: super::tree::Tree,
    /// Header feature `files-recorded`: a regular file without a store record is an
    /// integrity error (set at open, or once an upgrade has recorded every file).
    pub(super) files_recorded: std::sync::atomic::AtomicBool,
    /// New files are format 2 (header feature `pages`, a GCM-SIV volume).
    pub(super) pages: std::sync::atomic::AtomicBool,
    /// Header feature `entries-bound`: an object not bound to its entry is an integrity error.
    pub(super) entries_bound: std::sync::atomic::AtomicBool,
    /// Header feature `links-bound`: each entry of a file with hard links has a store row.
    pub(super) links_bound: std::sync::atomic::AtomicBool,
    /// Objects this daemon is renaming, by id, with the entry they are moving to (see
    /// `Volume::in_flight`).
    pub(super) in_flight: Mutex<HashMap<FileId, (super::binding::Entry, super::binding::Entry)>>,
    /// Serializes extended-attribute operations (a set read while another changes it would
    /// look tampered with).
    pub(super) xattr_lock: Mutex<()>,
}

impl Core {
    /// Everything written to the backing file system of the data directory reaches the disk
    /// (syncfs, through the storage seam's sync point): one call for many files written and
    /// closed without an fsync each.
    pub(super) fn sync_data_fs(&self) -> std::io::Result<()> {
        self.storage.sync_point(super::SyncPoint::SyncFs)?;
        let dir = crate::confine::open_dir(self.data_dir()).map_err(std::io::Error::other)?;
        nix::unistd::syncfs(std::os::fd::AsFd::as_fd(&dir)).map_err(std::io::Error::from)
    }

    pub(super) fn files_recorded(&self) -> bool {
        self.files_recorded.load(std::sync::atomic::Ordering::Acquire)
    }

    fn open_table(&self) -> OpenTable<'_> {
        // Entries are inserted and removed whole, so a poisoned table is still consistent.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One handle of `state` is gone; the last one commits (or deletes) and leaves the table
    /// — or, `deferred`, parks the file for the next group commit.
    pub(super) fn release(&self, state: &Arc<FileState>, deferred: bool) -> Result<()> {
        let mut table = self.open_table();
        match table.get_mut(&state.id) {
            Some((_, count)) if *count > 1 => {
                *count -= 1;
                return Ok(());
            }
            Some(_) if deferred && state.is_unlinked() => {
                // No name and no handle left: it goes now; its keys in the next group commit.
                table.remove(&state.id);
                drop(table);
                self.forget_unlinked(state);
                return Ok(());
            }
            Some((_, count)) if deferred && state.needs_commit() => {
                *count = 0;
                drop(table);
                self.committer.park(state.clone());
                return Ok(());
            }
            Some(_) => {}
            None => return Ok(()),
        }
        // The table stays locked until the commit is done, so a reopen finds the new state.
        let released = state.release();
        match table.get_mut(&state.id) {
            Some((_, count)) if released.is_ok() => {
                *count = 0;
                self.lingering.keep(&mut table, state);
            }
            _ => {
                table.remove(&state.id);
            }
        }
        released
    }

    /// Forgets the state of file `id` if it is kept closed (its record was changed or
    /// removed behind it: `rekey`, `upgrade`).
    pub(super) fn forget_closed(&self, id: &FileId) {
        let mut table = self.open_table();
        self.lingering.forget(&mut table, id);
    }

    /// A file with no name and no handle: its space goes back now, its keys (by id, which
    /// nothing can lose) in the next group commit.
    fn forget_unlinked(&self, state: &Arc<FileState>) {
        state.discard_data();
        self.keys.forget(&state.id, 0);
        self.committer.delete(state.id);
    }

    /// After a group commit: parked files that are clean and still unopened are kept closed
    /// (`fs::linger`) or leave the table.
    pub(super) fn unpark(&self, files: &[Arc<FileState>]) {
        let mut table = self.open_table();
        for s in files {
            if matches!(table.get(&s.id), Some((st, 0)) if Arc::ptr_eq(st, s)) && !s.needs_commit() {
                self.lingering.keep(&mut table, s);
            }
        }
    }

    pub(super) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The backing entry at `backing`, reached through its parent's descriptor (see
    /// `tree.rs`); the error names `path`.
    pub(super) fn at(&self, backing: &Path, path: &Path) -> Result<super::tree::At> {
        self.tree.at(backing).map_err(|e| tree_error(path, e))
    }
}

/// lstat of the entry `at` reaches, with errors about `path` (absent is NotFound).
pub(super) fn lstat_at(at: &super::tree::At, path: &Path) -> Result<super::meta::Stat> {
    // Through the parent's descriptor: no walk of `/proc/self/fd/N` per entry.
    match nix::sys::stat::fstatat(at.dir(), at.name(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok((&st).into()),
        Err(nix::errno::Errno::ENOENT) => Err(Error::NotFound(path.into())),
        Err(e) => Err(Error::io(path, "stat", e.into())),
    }
}

/// An error of the tree seam about `path`: a symlink planted in the backing tree is an
/// integrity error, anything else keeps its errno.
pub(super) fn tree_error(path: &Path, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::InvalidData => Error::integrity(path, e.to_string()),
        std::io::ErrorKind::NotFound => Error::NotFound(path.to_path_buf()),
        _ if e.raw_os_error() == Some(20) => Error::NotDir(path.to_path_buf()),
        _ => Error::io(path, "open directory", e),
    }
}

/// An open, unlocked volume.
pub struct Volume {
    pub(super) core: Arc<Core>,
    /// Backing directory path → directory id (see [`Volume::dir_id`]).
    pub(super) dir_ids: Mutex<super::dirs::DirIds>,
    /// Plaintext names to backing names, under the current name key.
    pub(super) encoded_names: super::names::EncodedNames,
    /// Ids of the directories read so far whose (authenticated) header says they are a
    /// tenant's root (ids never change, so nothing here goes stale).
    pub(super) tenant_dirs: Mutex<std::collections::HashSet<[u8; 16]>>,
    /// Backing inode → file id (see [`Volume::remember_file_id`]).
    pub(super) file_ids: Mutex<HashMap<u64, (FileId, PathBuf)>>,
    /// Why the set of files is not the one last committed, if it is not (`fs::file_set`).
    pub(super) file_set_problem: Mutex<Option<String>>,
    pub(super) cipherdir: PathBuf,
    /// Changes only when a KEK rotation finishes.
    pub(super) header: std::sync::RwLock<VolumeHeader>,
    /// Backing inodes replaced in place by `rotate --rekey` (old → new): the kernel still
    /// addresses the file by its old inode number.
    pub(super) inode_aliases: Mutex<HashMap<u64, u64>>,
    /// This is a read-write mount's volume: the unclean-shutdown marker is removed at drop.
    pub(super) mount_marker: std::sync::atomic::AtomicBool,
    /// Files `fsck` has checked (its progress).
    pub(super) files_checked: std::sync::atomic::AtomicU64,
    /// Held shared by every request through a mount, exclusively while a KEK rotation moves
    /// names (see [`Volume::op`]).
    pub(super) quiet: std::sync::RwLock<()>,
    /// Why the volume serves no more requests: a rotation failed half way through its names.
    pub(super) halted: std::sync::RwLock<Option<String>>,
    /// Why the volume went dark (its root was revoked: [`Volume::go_dark`]), once it has.
    pub(super) dark: Arc<std::sync::OnceLock<String>>,
    /// This open finished a rotation a crash had cut short while names were moving.
    pub(super) finished_rotation: std::sync::atomic::AtomicBool,
    /// What the last rotation left as it found it (see [`Volume::rotation_left`]).
    pub(super) rotation_left: Mutex<Vec<String>>,
    /// The anchor beside the root, as read at open (`anchor::RootAnchor`).
    pub(super) root_anchor: crate::anchor::RootAnchor,
    /// Name-key switches so far (see [`Volume::names_generation`]).
    pub(super) names_generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume").field("cipherdir", &self.cipherdir).finish_non_exhaustive()
    }
}

/// The kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: OsString,
    pub kind: EntryKind,
    /// The backing inode number.
    pub ino: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
    pub nlink: u64,
}

/// A plaintext path resolved to its place in the backing tree.
pub(super) struct Resolved {
    pub(super) parent: PathBuf,
    pub(super) parent_id: [u8; 16],
    pub(super) encoded: Encoded,
    pub(super) plain: PathBuf,
}

impl Resolved {
    pub(super) fn backing(&self) -> PathBuf {
        self.parent.join(&self.encoded.backing)
    }
}

impl Volume {
    /// Counters for `status` (safe to call while the volume is in use).
    pub fn live_stats(&self) -> Result<LiveStats> {
        let (files, wrapped_deks) = self.core.store.counts()?;
        let (in_table, closed_kept) = {
            let table = self.core.open_table();
            (table.len(), self.core.lingering.len())
        };
        Ok(LiveStats {
            kek_since: kek_since(&self.core.store)?,
            files,
            wrapped_deks,
            open_files: in_table.saturating_sub(closed_kept),
            closed_kept,
            cache: self.core.keys.cache_stats(),
        })
    }

    pub fn header(&self) -> VolumeHeader {
        self.header.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn set_header(&self, h: VolumeHeader) {
        *self.header.write().unwrap_or_else(|p| p.into_inner()) = h;
    }

    /// Moves the in-memory DEKs of every open file to the target KEK (rotation). Holds the
    /// open-file table, so no file is opened meanwhile; returns that guard so the caller can
    /// finish the switch before any new open.
    pub(super) fn rewrap_open_files(&self) -> Result<OpenTable<'_>> {
        let table = self.core.open_table();
        for (state, _) in table.values() {
            state.rewrap_all()?;
        }
        Ok(table)
    }

    /// The table of open files, locked (no file opens or closes meanwhile).
    pub(super) fn open_table(&self) -> OpenTable<'_> {
        self.core.open_table()
    }

    pub(super) fn scratch_dirs(&self) -> Vec<PathBuf> {
        self.core.scratch_dirs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn set_scratch_dirs(&self, dirs: Vec<PathBuf>) {
        *self.core.scratch_dirs.write().unwrap_or_else(|p| p.into_inner()) = dirs;
    }

    pub fn cipherdir(&self) -> &Path {
        &self.cipherdir
    }

    pub fn store(&self) -> &Store {
        &self.core.store
    }

    pub fn keys(&self) -> &KeyRing {
        &self.core.keys
    }

    /// Walks `path`'s parent directories (decrypting nothing: names are encrypted forward).
    pub(super) fn resolve(&self, path: &Path) -> Result<Resolved> {
        let mut parts: Vec<&OsStr> = Vec::new();
        for c in path.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => parts.push(n),
                _ => return Err(Error::InvalidArgument(format!("{}: path must not contain '..'", path.display()))),
            }
        }
        let (last, dirs) = parts.split_last().ok_or_else(|| Error::InvalidArgument("the root has no name".into()))?;
        let mut dir = self.core.data_dir.clone();
        let mut dir_id = self.core.root_id;
        let keys = self.core.keys.names();
        for (i, d) in dirs.iter().enumerate() {
            let enc = self.encoded_names.encode(&keys, &dir_id, d)?;
            dir.push(&enc.backing);
            let so_far = || -> PathBuf { dirs[..=i].iter().collect() };
            let cached = self.dir_ids.lock().unwrap_or_else(|p| p.into_inner()).get(&dir).ok();
            dir_id = match cached {
                Some(id) => id,
                None => match self.lstat(&dir) {
                    Ok(m) if m.is_dir() => self.dir_id(&dir).map_err(|e| match e {
                        Error::Integrity { reason, .. } => Error::Integrity { path: so_far(), reason },
                        e => e,
                    })?,
                    Ok(_) => return Err(Error::NotDir(so_far())),
                    Err(_) => return Err(Error::NotFound(so_far())),
                },
            };
        }
        let encoded = self.encoded_names.encode(&keys, &dir_id, last).map_err(|e| match e {
            Error::NameTooLong(_) => Error::NameTooLong(path.to_path_buf()),
            other => other,
        })?;
        Ok(Resolved { parent: dir, parent_id: dir_id, encoded, plain: path.to_path_buf() })
    }

    /// The backing entry at `backing`, through the tree seam (errors name `path`).
    pub(super) fn at(&self, backing: &Path, path: &Path) -> Result<super::tree::At> {
        self.core.at(backing, path)
    }

    /// [`Volume::lstat`] with errors about `path`: absent is NotFound, a symlink planted on
    /// the way an integrity error, anything else keeps its errno.
    pub(super) fn lstat_of(&self, backing: &Path, path: &Path) -> Result<super::meta::Stat> {
        lstat_at(&self.at(backing, path)?, path)
    }

    /// The metadata of the backing entry `backing` itself (through the tree seam).
    pub(super) fn lstat(&self, backing: &Path) -> std::io::Result<fs::Metadata> {
        fs::symlink_metadata(self.core.tree.at(backing)?.path())
    }

    pub(super) fn is_root(path: &Path) -> bool {
        path.components().all(|c| matches!(c, Component::RootDir | Component::CurDir))
    }

    pub(super) fn data_dir(&self) -> &Path {
        &self.core.data_dir
    }

    pub(super) fn layout(&self) -> Layout {
        self.core.layout
    }

    pub(super) fn storage(&self) -> &dyn super::Storage {
        self.core.storage.as_ref()
    }

    pub(super) fn alias_inode(&self, old: u64, new: u64) {
        let mut a = self.inode_aliases.lock().unwrap_or_else(|p| p.into_inner());
        if a.len() >= DIR_ID_CACHE {
            a.clear();
        }
        a.insert(old, new);
    }

    /// The backing inode that now holds what inode `ino` held (itself, unless a rekey
    /// replaced it).
    pub fn current_inode(&self, ino: u64) -> u64 {
        let a = self.inode_aliases.lock().unwrap_or_else(|p| p.into_inner());
        let mut now = ino;
        for _ in 0..8 {
            match a.get(&now) {
                Some(&next) => now = next,
                None => break,
            }
        }
        now
    }

    pub(super) fn set_mount_marker(&self, on: bool) {
        self.mount_marker.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// The backing path for a new entry at `path`, its long name (if any) recorded.
    pub(super) fn resolve_new(&self, path: &Path) -> Result<PathBuf> {
        let r = self.resolve(path)?;
        self.remember_name(&r)?;
        Ok(r.backing())
    }

    /// The plaintext size of the data file at `backing`.
    pub(super) fn size_of_backing(&self, backing: &Path, ino: u64, path: &Path) -> Result<u64> {
        // Cached with the backing entry it was checked at: the same inode met at another name
        // (moved there in the backing tree) is checked again. (A path, not the parent's id and
        // the name: no directory lookup on the stat path for a hit.)
        let id = match self.cached_file_id(ino, backing) {
            Some(id) => id,
            None => {
                // The id and the inode number from one open file: `backing` may name another
                // inode by now (a rename racing this stat), and a wrong pair in the cache
                // would send a later unlink's key deletion to the wrong file.
                // A name that meanwhile holds another file (one being created, say, with no
                // header yet) is not the entry that was stat'ed: that one is gone.
                let at = self.at(backing, path)?;
                let (file, st) = open_data_stat(&at, false).map_err(|_| Error::NotFound(path.into()))?;
                if st.st_ino != ino {
                    return Err(Error::NotFound(path.into()));
                }
                let id = self.checked_file_id(&file, backing, at.path(), path)?;
                self.remember_file_id(ino, id, backing.to_path_buf());
                id
            }
        };
        match self.file_size(&id, path) {
            // Its rows go only after its name: replaced or removed by a racing rename or
            // unlink, the entry that was stat'ed is gone.
            Err(e @ Error::Integrity { .. }) => match self.at(backing, path)?.path().symlink_metadata() {
                Ok(m) if m.ino() == ino => Err(e),
                _ => Err(Error::NotFound(path.into())),
            },
            other => other,
        }
    }

    /// Caches the file id of backing inode `ino`. Every regular file's inode is created by
    /// [`Volume::create_backing`], which records it, so an inode number reused after a
    /// delete never returns a stale id.
    pub(super) fn remember_file_id(&self, ino: u64, id: FileId, backing: PathBuf) {
        let mut cache = self.file_ids.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= FILE_ID_CACHE {
            cache.clear();
        }
        cache.insert(ino, (id, backing));
    }

    /// Whether an id is cached for backing inode `ino` (at any entry).
    pub(super) fn file_id_known(&self, ino: u64) -> bool {
        self.file_ids.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&ino)
    }

    /// The cached id of backing inode `ino`, if it was checked at `backing`.
    fn cached_file_id(&self, ino: u64, backing: &Path) -> Option<FileId> {
        let cache = self.file_ids.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(&ino).filter(|(_, b)| b == backing).map(|(id, _)| *id)
    }

    /// The file id in the object header of the data file at `backing`, checked to belong
    /// to that entry.
    pub(super) fn file_id_of(&self, backing: &Path, path: &Path) -> Result<FileId> {
        let at = self.at(backing, path)?;
        let file = open_data(&at, false).map_err(|e| Error::io(path, "open", e))?;
        self.checked_file_id(&file, backing, at.path(), path)
    }

    /// The id of data file `file`, opened at `backing` (`at_path`), if its header is bound
    /// to that entry.
    fn checked_file_id(&self, file: &fs::File, backing: &Path, at_path: &Path, path: &Path) -> Result<FileId> {
        self.bound_file_id(file, &self.entry_of(backing)?, at_path, path)
    }

    /// The id of data file `file`, opened at `at_path`, if its header is bound to `entry`.
    /// A file a racing rename moved away from there (and bound anew) is not found: to the
    /// caller, the open came after the rename.
    pub(super) fn bound_file_id(
        &self,
        file: &fs::File,
        entry: &super::binding::Entry,
        at_path: &Path,
        path: &Path,
    ) -> Result<FileId> {
        Ok(self.bound_file_header(file, entry, at_path, path)?.id)
    }

    /// The header of data file `file`, opened at `at_path`, if it is bound to `entry` (see
    /// [`Volume::bound_file_id`]).
    pub(super) fn bound_file_header(
        &self,
        file: &fs::File,
        entry: &super::binding::Entry,
        at_path: &Path,
        path: &Path,
    ) -> Result<ObjectHeader> {
        let again = || match still_named(file, at_path) {
            true => read_header(file, at_path, path),
            false => Err(Error::NotFound(path.into())),
        };
        self.checked_header(read_header(file, at_path, path)?, entry, path, again)
    }

    /// Runs a rename `f` of `from` to `to`, keeping long-name records right: the target's
    /// name is recorded before, the source's dropped after (kept when the two are exchanged).
    pub(super) fn with_long_names(
        &self,
        from: &Path,
        to: &Path,
        exchange: bool,
        f: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let (rf, rt) = (self.resolve(from)?, self.resolve(to)?);
        self.remember_name(&rt)?;
        f()?;
        if !exchange {
            self.forget_name(&rf)?;
        }
        Ok(())
    }

    /// Where `path` lives in the backing tree (its parent directories must exist).
    pub fn backing_path(&self, path: &Path) -> Result<PathBuf> {
        Ok(self.resolve(path)?.backing())
    }

    /// Records a hashed long name in the store (before the backing entry exists).
    pub(super) fn remember_name(&self, r: &Resolved) -> Result<()> {
        match &r.encoded.long {
            Some((hash, sealed)) => {
                self.core.store.apply(&[Change::PutLongName { dir: &r.parent_id, hash, name: sealed }])
            }
            None => Ok(()),
        }
    }

    pub(super) fn forget_name(&self, r: &Resolved) -> Result<()> {
        match &r.encoded.long {
            Some((hash, _)) => self.core.store.apply(&[Change::DeleteLongName { dir: &r.parent_id, hash }]),
            None => Ok(()),
        }
    }

    /// Creates a new, empty file (fails if `path` exists) and opens it for writing.
    pub fn create(&self, path: &Path, mode: u32) -> Result<FileHandle> {
        Ok(self.create_owned(path, mode, None)?.0)
    }

    /// [`Volume::create`], owned by `owner` (uid, gid) if given, with the new file's
    /// attributes (taken from the open file: no second walk of the path).
    pub fn create_owned(&self, path: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(FileHandle, super::Attr)> {
        let r = self.resolve(path)?;
        self.remember_name(&r)?;
        let entry = super::binding::Entry::new(r.parent_id, &r.encoded.backing);
        self.create_backing(&r.backing(), &entry, r.plain, mode, owner)
    }

    /// Creates the data file `backing` with a fresh file id, bound to `entry` (where it is, or
    /// where it will be renamed to), and opens it (`plain` names it in errors). The kernel holds the parent directory locked while it creates, so nobody looks
    /// the new name up before its header is written; a crash in between leaves a header-less
    /// data file, which recovery gives a fresh header (an empty file).
    pub(super) fn create_backing(
        &self,
        backing: &Path,
        entry: &super::binding::Entry,
        plain: PathBuf,
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<(FileHandle, super::Attr)> {
        let at = self.at(backing, &plain)?;
        let file = OpenOptions::new().read(true).write(true).create_new(true).mode(mode).open(at.path()).map_err(
            |e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Error::Exists(plain.clone()),
                _ => Error::io(&plain, "create", e),
            },
        )?;
        // A full disk or a refused owner, say: leave no header-less file behind.
        let undo = |what: &'static str, e: std::io::Error| {
            let _ = fs::remove_file(at.path());
            Error::io(&plain, what, e)
        };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|e| undo("chown", e))?;
        }
        let mut meta = file.metadata().map_err(|e| undo("stat", e))?;
        if meta.mode() & 0o7777 != mode & 0o7777 {
            // The daemon's umask cleared bits the caller's did not.
            file.set_permissions(fs::Permissions::from_mode(mode & 0o7777)).map_err(|e| undo("chmod", e))?;
            meta = file.metadata().map_err(|e| undo("stat", e))?;
        }
        let id = random_array();
        self.remember_file_id(meta.ino(), id, backing.to_path_buf());
        let file = self.core.storage.data_file(file, backing);
        let header = self.bound_header(ObjectKind::File, id, entry).encode();
        file.write_all_at(&header, 0).map_err(|e| undo("write header", e))?;
        let handle = self.attach(id, file, plain, true, None)?;
        Ok((handle, super::meta::attr_from(&meta, EntryKind::File, 0)))
    }

    /// Opens an existing file.
    pub fn open_file(&self, path: &Path, writable: bool) -> Result<FileHandle> {
        self.open_inode(path, writable, None)
    }

    /// Whether backing inode `now` holds what inode `ino` held (itself, or what a rekey put
    /// in its place).
    pub fn is_inode(&self, now: u64, ino: u64) -> bool {
        now == ino || now == self.current_inode(ino)
    }

    /// Opens the file at `path` — only if it is (still) backing inode `ino`, when given: a
    /// kernel opens inodes, and the name it knew may by now be another file, even one whose
    /// creation has not yet written its header.
    pub fn open_inode(&self, path: &Path, writable: bool, ino: Option<u64>) -> Result<FileHandle> {
        let r = self.resolve(path)?;
        let backing = r.backing();
        let at = self.at(&backing, path)?;
        // Read-write even for a reader when we may: the open file's state (and its data
        // file) is shared by every handle, and a writer may come while a reader holds it.
        let rw = open_data_stat(&at, true);
        let opened = match rw {
            Err(e) if !writable && matches!(e.raw_os_error(), Some(1 | 13 | 30)) => open_data_stat(&at, false),
            other => other,
        };
        // (A directory is EISDIR: `open_data` checked the type of what it opened.)
        let (file, meta) = opened.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(path.into()),
            _ if e.raw_os_error() == Some(21) => Error::IsDir(path.into()),
            std::io::ErrorKind::InvalidData => Error::integrity(path, e.to_string()),
            _ => Error::io(path, "open", e),
        })?;
        if ino.is_some_and(|ino| !self.is_inode(meta.st_ino, ino)) {
            return Err(Error::NotFound(path.into()));
        }
        let entry = super::binding::Entry::new(r.parent_id, &r.encoded.backing);
        self.open_ahead(&file, &backing, meta.st_size as u64);
        let id = self.bound_file_id(&file, &entry, at.path(), path)?;
        let named = || names_inode_at(&at, meta.st_dev, meta.st_ino);
        let file = self.core.storage.data_file(file, &backing);
        self.attach(id, file, r.plain, writable, Some(&named))
    }

    /// The handle of file `id`, sharing the state of its other handles. An opened file
    /// comes with a check that its name still names it; a fresh one (just created, `None`)
    /// has no store record to load.
    fn attach(
        &self,
        id: FileId,
        file: Box<dyn super::DataFile>,
        plain: PathBuf,
        writable: bool,
        opened: Option<&dyn Fn() -> bool>,
    ) -> Result<FileHandle> {
        let fresh = opened.is_none();
        if !fresh {
            self.core.store.warm(); // its rows may be read now (not under the table's lock)
        }
        let mut table = self.core.open_table();
        // A kept state serves only the data file it was loaded from (`fs::linger`).
        if super::linger::kept(&table, &id).is_some_and(|s| !s.may_serve(&*file, writable)) {
            self.core.lingering.forget(&mut table, &id);
        }
        let state = match table.get_mut(&id) {
            Some((state, count)) => {
                if *count == 0 {
                    self.core.lingering.reopened(&id);
                }
                *count += 1;
                state.clone()
            }
            // A state leaves this table before its data is cut, so one found here is live.
            // Not here, and its last name went after we opened it: its data may be cut
            // already (an unlinked file's space is given back at once). To the caller this
            // open came after the unlink.
            None if opened.is_some_and(|named| !named()) => return Err(Error::NotFound(plain)),
            None => {
                let scratch = self.is_scratch(&plain);
                let state = Arc::new(match fresh {
                    true => FileState::new_empty(self.core.clone(), id, file, plain, scratch),
                    false => FileState::load(self.core.clone(), id, file, plain, scratch)?,
                });
                table.insert(id, (state.clone(), 1));
                state
            }
        };
        Ok(FileHandle { state, core: self.core.clone(), writable, released: false })
    }

    /// Removes a file's name; its keys go with its last link and last open handle.
    pub fn unlink(&self, path: &Path) -> Result<()> {
        let r = self.resolve(path)?;
        let backing = r.backing();
        let at = self.at(&backing, path)?;
        let meta = fs::symlink_metadata(at.path()).map_err(|_| Error::NotFound(path.into()))?;
        if meta.is_dir() {
            return Err(Error::IsDir(path.into()));
        }
        let id = if meta.is_file() {
            Some(match self.cached_file_id(meta.ino(), &backing) {
                Some(id) => id,
                None => {
                    let f = open_data(&at, false).map_err(|e| Error::io(path, "open", e))?;
                    match self.checked_file_id(&f, &backing, at.path(), path) {
                        Ok(id) => id,
                        // Not the object this name is bound to (swapped in the backing tree):
                        // the name goes, no keys with it (fsck reports what is left).
                        Err(Error::Integrity { reason, .. }) => {
                            tracing::error!("{}: {reason}; removing the name only", path.display());
                            fs::remove_file(at.path()).map_err(|e| Error::io(path, "unlink", e))?;
                            return self.forget_name(&r);
                        }
                        // No complete header (a create cut short): no keys can exist for it.
                        Err(Error::Corrupt { .. }) if meta.len() < OBJECT_HEADER_LEN as u64 => {
                            fs::remove_file(at.path()).map_err(|e| Error::io(path, "unlink", e))?;
                            return self.forget_name(&r);
                        }
                        Err(e) => return Err(e),
                    }
                }
            })
        } else {
            None
        };
        // One name of several: its row goes after it (the last one's go with the file).
        let entry = match (id, meta.nlink()) {
            (Some(_), n) if n > 1 && self.links_bound() => Some(self.entry_of(&backing)?),
            _ => None,
        };
        let removed = match (id, meta.nlink()) {
            (Some(_), 1) => self.core.trash.discard(&at), // its blocks are freed later
            _ => fs::remove_file(at.path()),
        };
        removed.map_err(|e| Error::io(path, "unlink", e))?;
        if let (Some(id), Some(entry)) = (&id, &entry) {
            self.drop_link(id, entry)?;
        }
        // Forgotten for every name that goes (another name of it is checked afresh).
        self.file_ids.lock().unwrap_or_else(|p| p.into_inner()).remove(&meta.ino());
        self.forget_name(&r)?;
        if let (Some(id), 1) = (id, meta.nlink()) {
            self.drop_file(&id)?;
        }
        Ok(())
    }

    /// The last link of file `id` is gone: its keys go in the next group commit, or at its
    /// last close.
    fn drop_file(&self, id: &FileId) -> Result<()> {
        let mut table = self.core.open_table();
        match table.get(id) {
            Some((state, count)) => {
                let (state, parked) = (state.clone(), *count == 0);
                state.mark_unlinked();
                if parked {
                    table.remove(id);
                    self.core.lingering.reopened(id);
                    drop(table);
                    self.core.forget_unlinked(&state);
                }
                Ok(())
            }
            None => {
                drop(table);
                self.core.keys.forget(id, 0);
                self.core.committer.delete(*id);
                Ok(())
            }
        }
    }

    /// Commits every queued close and deletion now.
    pub fn flush_pending(&self) -> Result<()> {
        self.core.committer.flush(&self.core)
    }

    /// Renames `from` to `to`, replacing a file at `to`. No data or key is rewritten.
    pub fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.rename_checked(from, to, true)
    }

    /// [`Volume::rename`]; with `check` false the source's binding is not checked and it is
    /// bound anew at `to` (only `fsck --repair`'s moves into lost+found).
    pub(super) fn rename_checked(&self, from: &Path, to: &Path, check: bool) -> Result<()> {
        self.check_scratch_move(from, to)?;
        let rf = self.resolve(from)?;
        let rt = self.resolve(to)?;
        let (bf, bt) = (rf.backing(), rt.backing());
        let (af, at) = (self.at(&bf, from)?, self.at(&bt, to)?);
        let from_meta = fs::symlink_metadata(af.path()).map_err(|_| Error::NotFound(from.into()))?;
        if bf == bt || fs::symlink_metadata(at.path()).is_ok_and(|m| m.ino() == from_meta.ino()) {
            return Ok(()); // one name, or two names of one file: nothing changes (POSIX)
        }
        if from_meta.is_dir() {
            self.forget_dir_ids(&[&bf, &bt]);
        }
        // Checked where it is (read afresh, not from a cache) before anything moves.
        let moving = self.moving_as(&bf, from, check)?;
        let _in_flight = self.in_flight(&moving, &bf, &bt)?;
        // A file with other names loses the row of the name it replaces.
        let replaced_link = match fs::symlink_metadata(at.path()) {
            Ok(m) if m.is_file() && m.nlink() > 1 && self.links_bound() => open_data(&at, false)
                .inspect(|_| {
                    self.file_ids.lock().unwrap_or_else(|p| p.into_inner()).remove(&m.ino());
                })
                .ok()
                .and_then(|f| read_file_id(&f, at.path(), to).ok())
                .map(|id| self.entry_of(&bt).map(|e| (id, e)))
                .transpose()?,
            _ => None,
        };
        let link_move = self.moving_links(&moving, &bf, &bt)?;
        // The keys of a replaced file go with it, if it is the object its name is bound to.
        let replaced = match fs::symlink_metadata(at.path()) {
            Ok(m) if m.is_file() && m.nlink() == 1 => {
                let f = open_data(&at, false).map_err(|e| Error::io(to, "open", e))?;
                match self.checked_file_id(&f, &bt, at.path(), to) {
                    Ok(id) => Some((m.ino(), id)),
                    Err(Error::Integrity { reason, .. }) => {
                        tracing::error!("{}: {reason}; replacing the name only", to.display());
                        None
                    }
                    Err(e) => return Err(e),
                }
            }
            _ => None,
        };
        self.remember_name(&rt)?;
        let flags = nix::fcntl::RenameFlags::empty();
        if let Err(e) = self.move_entry(&moving, &af, &at, &bt, flags) {
            self.move_failed_links(link_move)?;
            return Err(match e.raw_os_error() {
                Some(39) => Error::DirNotEmpty(to.into()),
                Some(20) => Error::NotDir(to.into()),
                Some(21) => Error::IsDir(to.into()),
                _ => Error::io(from, "rename", e),
            });
        }
        // Moved: the rows of the place left, and of a linked file's name replaced, go
        // whatever follows.
        self.moved_links(link_move)?;
        if let Some((id, entry)) = &replaced_link {
            self.drop_link(id, entry)?;
        }
        if from_meta.is_dir() {
            // Again: a lookup may have read either place before the move.
            self.forget_dir_ids(&[&bf, &bt]);
        }
        let bound = match moving {
            super::binding::Moving::Symlink(_) => Ok(()), // copied into place sealed for it
            _ => self.moved(&moving, &bt, to, from_meta.ino()),
        };
        self.forget_name(&rf)?;
        if let Some((ino, id)) = replaced {
            // Its inode number may be reused by a new file: forget it with the file.
            self.file_ids.lock().unwrap_or_else(|p| p.into_inner()).remove(&ino);
            self.drop_file(&id)?;
        }
        bound?;
        // Only a regular file has a name to update (opening a FIFO here would block).
        if let Ok(f) = open_data(&at, false) {
            if let Ok(id) = read_file_id(&f, at.path(), to) {
                if let Some((state, _)) = self.core.open_table().get(&id) {
                    state.set_name(to.to_path_buf());
                }
            }
        }
        Ok(())
    }

    /// The short form of [`Volume::getattr`]: kind, plaintext size of files (0 otherwise),
    /// permission bits and link count.
    pub fn stat(&self, path: &Path) -> Result<Stat> {
        let a = self.getattr(path)?;
        let size = if a.kind == EntryKind::File { a.size } else { 0 };
        Ok(Stat { kind: a.kind, size, mode: u32::from(a.perm), nlink: u64::from(a.nlink) })
    }

    fn file_size(&self, id: &FileId, path: &Path) -> Result<u64> {
        if let Some((state, _)) = self.core.open_table().get(id) {
            return Ok(state.size());
        }
        match self.core.store.file_size(id)? {
            Some(size) => Ok(size),
            None if self.core.files_recorded() => Err(super::file::record_missing(path)),
            None => Ok(0), // a volume made before every file had a record: an empty file
        }
    }

    /// Commits every open file's pending metadata (data synced first) and everything queued.
    pub fn sync_all(&self) -> Result<()> {
        self.flush_pending()?;
        let states: Vec<Arc<FileState>> = self.core.open_table().values().map(|(s, _)| s.clone()).collect();
        for s in states {
            if !s.is_unlinked() {
                s.sync()?;
            }
        }
        Ok(())
    }
}

impl Volume {
    /// See `Core::sync_data_fs`.
    pub fn sync_data_fs(&self) -> std::io::Result<()> {
        self.core.sync_data_fs()
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        self.close_out();
        // Kept states hold the core, and with it the keys: they go with the volume.
        self.core.lingering.close(&mut self.core.open_table());
    }
}

impl Volume {
    /// What dropping the volume commits and marks.
    fn close_out(&self) {
        self.core.committer.stop();
        self.core.trash.stop();
        if self.dark.get().is_some() {
            // Everything was committed when it went dark, and nothing may be written now
            // (its keys are gone); the mount marker stays, so the next mount checks.
            return;
        }
        let flushed = self.flush_pending();
        if self.versioned_file_set() {
            self.anchor_file_set();
        }
        match flushed {
            Err(e) => tracing::error!("committing at close failed: {e}"),
            // Everything is committed: the next mount needs no recovery.
            Ok(()) if self.mount_marker.load(std::sync::atomic::Ordering::SeqCst) => {
                // Headers rewritten by renames are not synced one by one: all of them reach the
                // disk before the marker that would make recovery look at them goes.
                if let Err(e) = self.sync_data_fs() {
                    tracing::error!("syncing at close failed (the next mount recovers): {e}");
                    return;
                }
                if let Err(e) = self.core.store.apply(&[Change::DeleteMeta { key: super::fsck::MOUNT_ACTIVE }]) {
                    tracing::error!("clearing the mount marker failed: {e}");
                }
            }
            Ok(()) => {}
        }
    }
}

/// Opens the data file `at` reaches (read-write with `write`) through its directory's
/// descriptor (`confine::open_file_at`), without following a symlink or blocking: a FIFO,
/// socket, device or symlink there is `InvalidData` (an integrity error to callers), a
/// directory `EISDIR`.
pub(super) fn open_data(at: &super::tree::At, write: bool) -> std::io::Result<fs::File> {
    open_data_stat(at, write).map(|(f, _)| f)
}

/// [`open_data`], and the `fstat` of what it opened.
pub(super) fn open_data_stat(
    at: &super::tree::At,
    write: bool,
) -> std::io::Result<(fs::File, nix::sys::stat::FileStat)> {
    crate::confine::open_file_at_io(at.dir(), at.name(), write, at.path())
}

/// The file id in a data file's object header (its binding unchecked).
pub(super) fn read_file_id(file: &fs::File, backing: &Path, path: &Path) -> Result<FileId> {
    read_header(file, backing, path).map(|h| h.id)
}

/// A data file's object header.
pub(super) fn read_header(file: &fs::File, backing: &Path, path: &Path) -> Result<ObjectHeader> {
    let mut buf = [0u8; OBJECT_HEADER_LEN];
    let got = super::DataFile::read_at(file, &mut buf, 0).map_err(|e| Error::io(path, "read header", e))?;
    let decoded = ObjectHeader::decode(&buf[..got]).map_err(|e| e.at(path));
    // Opened just before its last name went (and its space was given back): to the caller
    // that open came after the unlink.
    if decoded.is_err() && !still_named(file, backing) {
        return Err(Error::NotFound(path.to_path_buf()));
    }
    match decoded? {
        h @ ObjectHeader { kind: ObjectKind::File, .. } => Ok(h),
        _ => Err(Error::corrupt(path, "data file has a directory header")),
    }
}

/// Whether `backing` (an `At::path`) still names the open `file` (an unlinked file is in the
/// trash, or nowhere).
pub(super) fn still_named(file: &fs::File, backing: &Path) -> bool {
    file.metadata().is_ok_and(|m| names_inode(backing, m.dev(), m.ino()))
}

/// Whether `backing` names inode `ino` of device `dev`.
fn names_inode(backing: &Path, dev: u64, ino: u64) -> bool {
    fs::symlink_metadata(backing).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// [`names_inode`] of the entry `at` reaches, looked at through its directory's descriptor.
fn names_inode_at(at: &super::tree::At, dev: u64, ino: u64) -> bool {
    nix::sys::stat::fstatat(at.dir(), at.name(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}
