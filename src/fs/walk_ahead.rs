//! Reading a tree walk's next directories ahead.
//!
//! A cold `find`, `ls -lR`, `du` or `tar c` lists one directory after the other, and each
//! listing waits on the disk in turn: the backing directory's blocks (`getdents`), then the
//! inode of every entry (the `lstat` behind a readdirplus's attributes). Those reads went to
//! the disk one at a time while the device could serve many at once.
//!
//! When a directory is listed while a walk is going on (its parent was listed within
//! [`FRESH`]), its subdirectories are what the walk lists next: [`WORKERS`] threads (one
//! pool for every volume of the daemon) read each of them ahead — its entries and their
//! inodes, and its `.dirid` unless the directory's id is cached — so that their listings
//! find them in memory. Work is taken from the newest listing first (a walk goes depth
//! first: the subdirectories of the directory listed last come next), in listing order.
//! At most [`BATCHES`] batches wait (each keeps its directory open; the oldest listing is
//! dropped, a batch of files only for another), none longer than [`FRESH`] nor past its
//! volume, at most [`MAX_SUBDIRS`] subdirectories of one listing and [`MAX_ENTRIES`]
//! entries of one subdirectory. A subdirectory is opened `O_NOATIME`: its access time is
//! not changed by a read nobody asked for.
//!
//! The same threads take the batches of files an open reads ahead (`fs::open_ahead`): each
//! file is opened as every data file is (`confine::open_file_at`) and its first pages asked
//! for; a batch is the newest work when it comes, so it goes first.
//!
//! Nothing read here is trusted or kept: a subdirectory is opened `O_DIRECTORY |
//! O_NOFOLLOW` beneath the listed directory's descriptor (a symlink or anything else planted
//! there is not opened), entries are only `lstat`ed, and `.dirid` is opened only if it is a
//! regular file (never a FIFO or device), to ask the kernel to read it
//! (`POSIX_FADV_WILLNEED`); whatever the listing later reads is checked as before. Nothing
//! is read ahead on a file system in memory.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use lru::LruCache;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};

use super::names::DIRID_FILE;
use super::open_ahead::will_need_at;

/// Threads reading ahead, for every volume of the daemon (most of their time is spent
/// waiting on the disk).
const WORKERS: usize = 4;
/// Batches waiting to be read ahead (each keeps its directory open): the oldest listing goes
/// when one more comes (a batch of files, only for another: the open that asked for it has
/// moved its directory's cursor on, so a batch dropped would never be asked for again).
const BATCHES: usize = 16;
/// Subdirectories of one listing read ahead.
const MAX_SUBDIRS: usize = 1024;
/// Entries of one directory `lstat`ed ahead.
const MAX_ENTRIES: usize = 4096;
/// A directory listed this recently makes a listing of one of its subdirectories a walk;
/// subdirectories waiting longer than this are dropped.
const FRESH: Duration = Duration::from_secs(10);
/// Directories whose listing time is kept (per volume).
const RECENT: usize = 256;

/// What is read ahead of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ahead {
    /// A subdirectory: its entries and their inodes, and its `.dirid` if `dir_id` (its id
    /// is not cached).
    Dir { dir_id: bool },
    /// A data file (an open-ahead batch, `fs::open_ahead`): its first `len` bytes.
    File { len: i64 },
}

/// The entries of one directory still to read ahead (a listing's subdirectories, or a
/// batch of files of an open's directory): `names` in the directory open as `parent`, the
/// next one last.
struct Batch {
    parent: Arc<OwnedFd>,
    names: Vec<(OsString, Ahead)>,
    listed: Instant,
    /// Gone with the volume: its directories are not read ahead after it is dropped.
    volume: Weak<()>,
}

/// An entry to read ahead.
struct Job {
    parent: Arc<OwnedFd>,
    name: OsString,
    ahead: Ahead,
}

#[derive(Default)]
struct Shared {
    batches: Mutex<VecDeque<Batch>>,
    ready: Condvar,
}

/// The threads reading ahead and their work, shared by every volume; `None` if no thread
/// could be started.
fn pool() -> Option<&'static Shared> {
    static POOL: OnceLock<Option<&'static Shared>> = OnceLock::new();
    *POOL.get_or_init(|| {
        let shared: &'static Shared = Box::leak(Box::default());
        let started = (0..WORKERS)
            .filter(|_| {
                let spawned =
                    std::thread::Builder::new().name("walk-ahead".into()).stack_size(256 << 10).spawn(move || {
                        // Started by a request thread of a ring, it would share that thread's CPU.
                        crate::sys::unpin_thread();
                        loop {
                            let job = next(shared);
                            match job.ahead {
                                Ahead::Dir { dir_id } => read_ahead(&job, dir_id),
                                Ahead::File { len } => will_need_at(job.parent.as_fd(), &job.name, len),
                            }
                        }
                    });
                spawned.map_err(|e| tracing::debug!("walk-ahead: {e}")).is_ok()
            })
            .count();
        (started > 0).then_some(shared)
    })
}

/// The directories of one volume listed lately.
pub(super) struct WalkAhead {
    recent: Mutex<LruCache<PathBuf, Instant>>,
    /// Lives as long as the volume (its batches hold a weak reference).
    alive: Arc<()>,
}

impl Default for WalkAhead {
    fn default() -> Self {
        WalkAhead {
            recent: Mutex::new(LruCache::new(NonZeroUsize::new(RECENT).expect("non-zero"))),
            alive: Arc::new(()),
        }
    }
}

impl WalkAhead {
    /// Queues data files `names` of this volume's directory open as `parent` (in the order
    /// they are expected to be opened) to have their first `len` bytes read ahead; gives
    /// them back if no thread reads ahead (the caller then asks itself).
    pub(super) fn queue_files(
        &self,
        parent: &Arc<OwnedFd>,
        names: Vec<OsString>,
        len: i64,
    ) -> std::result::Result<(), Vec<OsString>> {
        if pool().is_none() {
            return Err(names);
        }
        queue(parent, names.into_iter().map(|n| (n, Ahead::File { len })).collect(), &self.alive);
        Ok(())
    }

    /// Backing directory `dir` was just listed: whether a walk is going on (its parent was
    /// listed within [`FRESH`]).
    fn listed(&self, dir: &Path) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let walking = dir.parent().and_then(|p| recent.get(p)).is_some_and(|t| t.elapsed() < FRESH);
        recent.put(dir.to_path_buf(), Instant::now());
        walking
    }
}

/// Queues entries `names` (backing name, and what to read of it; in the order to read
/// them) of the directory open as `parent`, of the volume whose token is `volume`, to be
/// read ahead.
fn queue(parent: &Arc<OwnedFd>, mut names: Vec<(OsString, Ahead)>, volume: &Arc<()>) {
    if names.is_empty() {
        return;
    }
    let Some(shared) = pool() else { return };
    names.reverse(); // taken from the back: the first subdirectory is read first
    let mut batches = shared.batches.lock().unwrap_or_else(|p| p.into_inner());
    if batches.len() == BATCHES {
        let drop = to_drop(batches.iter().map(|b| files_batch(&b.names)), files_batch(&names));
        batches.remove(drop);
    }
    batches.push_back(Batch { parent: parent.clone(), names, listed: Instant::now(), volume: Arc::downgrade(volume) });
    shared.ready.notify_all();
}

/// Which of the waiting batches (oldest first; whether each is a batch of files) goes to
/// make room for one more (`files`: a batch of files): the oldest listing, or, when only
/// batches of files wait or a batch of files comes, the oldest batch.
fn to_drop(mut waiting: impl Iterator<Item = bool>, files: bool) -> usize {
    waiting.position(|is_files| files || !is_files).unwrap_or(0)
}

/// Whether `names` is a batch of files (open-ahead), not a listing's subdirectories.
fn files_batch(names: &[(OsString, Ahead)]) -> bool {
    names.first().is_some_and(|(_, a)| matches!(a, Ahead::File { .. }))
}

/// The next entry of the newest batch (a walk goes depth first: the subdirectories of the
/// directory listed last come next; a batch of files is the open's that just asked),
/// waiting for one. Batches older than [`FRESH`] are dropped (the walk went by).
fn next(shared: &Shared) -> Job {
    let mut batches = shared.batches.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        while batches.front().is_some_and(|b| b.listed.elapsed() >= FRESH) {
            batches.pop_front();
        }
        batches.retain(|b| b.volume.strong_count() > 0);
        if let Some(batch) = batches.back_mut() {
            let (name, ahead) = batch.names.pop().expect("batches are never kept empty");
            let parent = batch.parent.clone();
            if batch.names.is_empty() {
                batches.pop_back();
            }
            return Job { parent, name, ahead };
        }
        batches = shared.ready.wait(batches).unwrap_or_else(|p| p.into_inner());
    }
}

/// Reads subdirectory `job` ahead: its entries, their inodes, and its `.dirid` if `dir_id`.
/// Errors end it quietly (the listing that follows reports what it meets).
fn read_ahead(job: &Job, dir_id: bool) {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    // Not its access time: nobody listed it yet (O_NOATIME needs its owner or CAP_FOWNER).
    let opened = match openat(job.parent.as_fd(), job.name.as_os_str(), flags | OFlag::O_NOATIME, Mode::empty()) {
        Err(nix::errno::Errno::EPERM) => openat(job.parent.as_fd(), job.name.as_os_str(), flags, Mode::empty()),
        other => other,
    };
    let Ok(fd) = opened else { return };
    let Ok(mut dir) = nix::dir::Dir::from_fd(fd) else { return };
    let names: Vec<CString> = dir
        .iter()
        .map_while(Result::ok)
        .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
        .take(MAX_ENTRIES)
        .map(|e| e.file_name().to_owned())
        .collect();
    for name in &names {
        let _ = fstatat(&dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW);
    }
    if dir_id {
        will_need_at(dir.as_fd(), OsStr::new(DIRID_FILE), crate::format::OBJECT_HEADER_LEN as i64);
    }
}

impl super::volume::Volume {
    /// Backing directory `listed` was just listed, with subdirectories `subdirs` (backing
    /// names, in listing order): read them ahead if a walk is going on.
    pub(super) fn walk_ahead<'a>(&self, listed: &super::ListedDir, subdirs: impl Iterator<Item = &'a OsStr>) {
        if self.core.in_memory {
            return;
        }
        let dir = listed.backing();
        if !self.core.walk_ahead.listed(dir) {
            return;
        }
        let ids = self.dir_ids.lock().unwrap_or_else(|p| p.into_inner());
        let subdirs: Vec<(OsString, Ahead)> = subdirs
            .take(MAX_SUBDIRS)
            .map(|name| (name.to_os_string(), Ahead::Dir { dir_id: ids.get(&dir.join(name)).is_err() }))
            .collect();
        drop(ids);
        queue(listed.at().shared_dir(), subdirs, &self.core.walk_ahead.alive);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_files_gives_way_only_to_another() {
        // Oldest first: files, listing, files, listing.
        let waiting = [true, false, true, false];
        assert_eq!(to_drop(waiting.into_iter(), false), 1, "a listing comes: the oldest listing goes");
        assert_eq!(to_drop(waiting.into_iter(), true), 0, "files come: the oldest batch goes");
        assert_eq!(to_drop([true, true].into_iter(), false), 0, "only files wait: the oldest goes");
        assert_eq!(to_drop([false, true].into_iter(), false), 0);
    }
}
