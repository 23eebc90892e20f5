//! Deferred removal of unlinked data files and removed directories. `unlink` moves a data
//! file whose last name it removes, and `rmdir` an (empty) backing directory with its
//! `.dirid`, into the volume's `trash/` directory (beside `data/`, on the same file system: a
//! rename, so the name is gone before the call returns) and a background thread removes it
//! there. The directory is made when first needed and removed at unmount when empty.
//!
//! Freeing blocks is the slow part of an unlink on ext4 — truncation, journal, and with the
//! `discard` mount option a synchronous TRIM per file — and it kept `rm -rf` through the
//! mount at gocryptfs's pace (docs/BENCHMARKS.md); a directory's `.dirid` is such a file. The
//! keys go with the next group commit as before, so the data waiting here is already
//! unreadable noise.
//!
//! Whatever is in the trash is garbage: a crash's leftovers are removed by the next
//! read-write mount.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use nix::dir::Dir;
use std::os::fd::AsFd;

use nix::fcntl::{renameat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::confine;

/// The trash directory, in the volume directory.
pub(super) const TRASH_DIR: &str = "trash";
/// How deep a leftover directory tree in the trash is removed (a planted deeper one is
/// left, with a warning, rather than exhausting descriptors or stack).
const MAX_DEPTH: usize = 64;

#[derive(Default)]
struct Queue {
    /// Names inside the trash directory.
    names: Vec<OsString>,
    stop: bool,
}

/// The trash, reached only through a descriptor of the real directory `CIPHERDIR/trash`:
/// a symlink planted there is refused (an integrity error, logged), never followed, so
/// nothing outside the volume is moved into it or removed from it.
pub(super) struct Trash {
    path: PathBuf,
    /// The opened trash directory, once made or found.
    dir: Mutex<Option<Arc<File>>>,
    queue: Arc<(Mutex<Queue>, Condvar)>,
    /// Started by the first use (a volume only read never makes the directory).
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Trash {
    /// The trash of the volume in `cipherdir`.
    pub(super) fn new(cipherdir: &Path) -> Trash {
        Trash {
            path: cipherdir.join(TRASH_DIR),
            dir: Mutex::new(None),
            queue: Default::default(),
            thread: Mutex::new(None),
        }
    }

    /// The trash directory's descriptor, making the directory when `create`; `None` if it
    /// is absent (and not to be made) or is not a real directory.
    fn dir(&self, create: bool) -> Option<Arc<File>> {
        let mut dir = self.dir.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = &*dir {
            return Some(d.clone());
        }
        let opened = match confine::open_dir(&self.path) {
            Err(crate::Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound && create => {
                // mkdir never follows a planted symlink (it fails with EEXIST instead).
                fs::create_dir(&self.path).ok()?;
                confine::open_dir(&self.path)
            }
            other => other,
        };
        match opened {
            Ok(f) => {
                let f = Arc::new(f);
                *dir = Some(f.clone());
                Some(f)
            }
            Err(e @ crate::Error::Integrity { .. }) => {
                tracing::error!("{e}; removed files are deleted at once instead");
                None
            }
            Err(_) => None,
        }
    }

    /// Queues `names` (in the trash) for removal, starting the thread if need be; false if
    /// no thread runs (stopped, or it could not start).
    fn queue(&self, dir: Arc<File>, names: Vec<OsString>) -> bool {
        let mut thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        let (lock, cv) = &*self.queue;
        let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
        if q.stop {
            return false;
        }
        if thread.is_none() {
            let shared = self.queue.clone();
            match std::thread::Builder::new().name("trash".into()).spawn(move || {
                crate::sys::unpin_thread();
                empty_loop(&shared, &dir)
            }) {
                Ok(t) => *thread = Some(t),
                Err(_) => return false,
            }
        }
        q.names.extend(names);
        cv.notify_one();
        true
    }

    /// Removes (in the background) what an earlier run left in the trash: a read-write mount
    /// calls this first.
    pub(super) fn empty_leftovers(&self) {
        let Some(dir) = self.dir(false) else { return };
        let names = match list(&dir) {
            Ok(n) => n,
            Err(e) => return tracing::warn!("{}: listing the trash: {e}", self.path.display()),
        };
        if !names.is_empty() {
            self.queue(dir, names);
        }
    }

    /// Removes data file `backing` (its last link) or empty backing directory `backing`:
    /// moved into the trash for the thread, or removed at once where it cannot be moved.
    pub(super) fn discard(&self, backing: &super::tree::At) -> std::io::Result<()> {
        let r: [u8; 8] = crate::crypto::random_array();
        let name = OsString::from(crate::format::hex(&r));
        let Some(dir) = self.dir(true) else { return remove_at(backing.dir(), backing.name(), 0) };
        match renameat(backing.dir(), backing.name(), &*dir, name.as_os_str()) {
            Ok(()) => {
                if !self.queue(dir.clone(), vec![name.clone()]) {
                    remove_at(&dir, &name, 0)?;
                }
                Ok(())
            }
            Err(_) => remove_at(backing.dir(), backing.name(), 0),
        }
    }

    /// Removes everything queued, then stops the thread (later discards remove at once).
    pub(super) fn stop(&self) {
        let mut thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        {
            let (lock, cv) = &*self.queue;
            lock.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
            cv.notify_all();
        }
        if let Some(t) = thread.take() {
            let _ = t.join();
            // If empty (another process may still use it); rmdir never follows a symlink.
            let _ = fs::remove_dir(&self.path);
        }
    }
}

fn empty_loop(queue: &(Mutex<Queue>, Condvar), dir: &File) {
    let (lock, cv) = queue;
    loop {
        let (names, stop) = {
            let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
            while q.names.is_empty() && !q.stop {
                q = cv.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            (std::mem::take(&mut q.names), q.stop)
        };
        for n in names {
            if let Err(e) = remove_at(dir, &n, 0) {
                if e.kind() != ErrorKind::NotFound {
                    tracing::warn!("trash/{}: removing: {e}", n.to_string_lossy());
                }
            }
        }
        if stop {
            return;
        }
    }
}

/// The names in directory `dir` (but `.` and `..`).
fn list(dir: &File) -> std::io::Result<Vec<OsString>> {
    let mut d = Dir::openat(dir, ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    let mut out = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." {
            out.push(name.to_os_string());
        }
    }
    Ok(out)
}

/// Removes `name` in `dir`: a file (a symlink is removed itself, never followed), or a
/// directory with what is in it, each reached through its parent's descriptor.
fn remove_at(dir: impl AsFd, name: &OsStr, depth: usize) -> std::io::Result<()> {
    let dir = dir.as_fd();
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Err(nix::errno::Errno::EISDIR) if depth < MAX_DEPTH => {}
        other => return other.map_err(Into::into),
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let sub = File::from(nix::fcntl::openat(dir, name, flags, Mode::empty())?);
    for child in list(&sub)? {
        remove_at(&sub, &child, depth + 1)?;
    }
    unlinkat(dir, name, UnlinkatFlags::RemoveDir).map_err(Into::into)
}
