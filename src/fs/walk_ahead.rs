//! Reading a tree walk's next directories ahead.
//!
//! A cold `find`, `ls -lR`, `du` or `tar c` lists one directory after the other, and each
//! listing waits on the disk in turn: the backing directory's blocks (`getdents`), then the
//! inode of every entry (the `lstat` behind a readdirplus's attributes). Those reads went to
//! the disk one at a time while the device could serve many at once.
//!
//! When a directory is listed while a walk is going on (its parent was listed within
//! [`FRESH`]), its subdirectories are what the walk lists next: [`WORKERS`] threads read
//! each of them ahead — its entries and their inodes, and its `.dirid` unless the
//! directory's id is cached — so that their listings find them in memory. Work is taken
//! newest first (a walk goes depth first: the subdirectories of the directory listed last
//! come next), at most [`QUEUE`] waiting (the oldest are dropped), at most [`MAX_ENTRIES`]
//! entries of one directory.
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
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lru::LruCache;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};

use super::names::DIRID_FILE;

/// Threads reading ahead (most of their time is spent waiting on the disk).
const WORKERS: usize = 4;
/// Subdirectories waiting to be read ahead.
const QUEUE: usize = 1024;
/// Entries of one directory `lstat`ed ahead.
const MAX_ENTRIES: usize = 4096;
/// A directory listed this recently makes a listing of one of its subdirectories a walk.
const FRESH: Duration = Duration::from_secs(10);
/// Directories whose listing time is kept.
const RECENT: usize = 256;

/// A subdirectory to read ahead: `name` in the directory open as `parent`.
struct Job {
    parent: Arc<OwnedFd>,
    name: OsString,
    /// Its `.dirid` too (its id is not cached).
    dir_id: bool,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// The directories listed lately and the threads that read ahead (started at first use).
pub(super) struct WalkAhead {
    recent: Mutex<LruCache<PathBuf, Instant>>,
    shared: Arc<Shared>,
    started: OnceLock<()>,
}

impl Default for WalkAhead {
    fn default() -> Self {
        WalkAhead {
            recent: Mutex::new(LruCache::new(NonZeroUsize::new(RECENT).expect("non-zero"))),
            shared: Arc::default(),
            started: OnceLock::new(),
        }
    }
}

impl Drop for WalkAhead {
    fn drop(&mut self) {
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.closed = true;
        q.jobs.clear();
        self.shared.ready.notify_all();
    }
}

impl WalkAhead {
    /// Backing directory `dir` (open as `parent`) was just listed, with subdirectories
    /// `subdirs` (backing name, and whether its id must be read) in listing order: if a walk
    /// is going on, they are read ahead.
    pub(super) fn listed(&self, dir: &Path, parent: &Arc<OwnedFd>, subdirs: impl Iterator<Item = (OsString, bool)>) {
        let walking = {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            let walking = dir.parent().and_then(|p| recent.get(p)).is_some_and(|t| t.elapsed() < FRESH);
            recent.put(dir.to_path_buf(), Instant::now());
            walking
        };
        if !walking {
            return;
        }
        let jobs: Vec<Job> =
            subdirs.map(|(name, dir_id)| Job { parent: parent.clone(), name, dir_id }).take(QUEUE).collect();
        if jobs.is_empty() {
            return;
        }
        self.start();
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        // Taken from the back: the first subdirectory goes last, to be read first.
        for job in jobs.into_iter().rev() {
            if q.jobs.len() == QUEUE {
                q.jobs.pop_front();
            }
            q.jobs.push_back(job);
        }
        self.shared.ready.notify_all();
    }

    fn start(&self) {
        self.started.get_or_init(|| {
            for _ in 0..WORKERS {
                let shared = self.shared.clone();
                let spawned =
                    std::thread::Builder::new().name("walk-ahead".into()).stack_size(256 << 10).spawn(move || {
                        // Started by a request thread of a ring, it would share that thread's CPU.
                        crate::sys::unpin_thread();
                        while let Some(job) = next(&shared) {
                            read_ahead(&job);
                        }
                    });
                if let Err(e) = spawned {
                    tracing::debug!("walk-ahead: {e}");
                }
            }
        });
    }
}

/// The newest job, waiting for one; `None` once closed.
fn next(shared: &Shared) -> Option<Job> {
    let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if q.closed {
            return None;
        }
        if let Some(job) = q.jobs.pop_back() {
            return Some(job);
        }
        q = shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
    }
}

/// Reads subdirectory `job` ahead: its entries, their inodes, and its `.dirid` if asked.
/// Errors end it quietly (the listing that follows reports what it meets).
fn read_ahead(job: &Job) {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let Ok(fd) = openat(job.parent.as_fd(), job.name.as_os_str(), flags, Mode::empty()) else { return };
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
    if job.dir_id {
        will_need_dir_id(&dir);
    }
}

/// Asks for directory `dir`'s `.dirid` to be read, opened as every backing file is
/// (`confine::open_file`: no symlink followed, no FIFO or device opened).
fn will_need_dir_id(dir: &nix::dir::Dir) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    use std::os::fd::AsRawFd;
    let path = PathBuf::from(format!("/proc/self/fd/{}/{DIRID_FILE}", dir.as_raw_fd()));
    if let Ok(f) = crate::confine::open_file(&path, false) {
        let _ = posix_fadvise(&f, 0, crate::format::OBJECT_HEADER_LEN as i64, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
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
        let ids = &self.dir_ids;
        let subdirs = subdirs.map(|name| {
            let cached = ids.lock().unwrap_or_else(|p| p.into_inner()).get(&dir.join(name)).is_ok();
            (name.to_os_string(), !cached)
        });
        self.core.walk_ahead.listed(dir, listed.at().shared_dir(), subdirs);
    }
}
