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

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// The trash directory, in the volume directory.
pub(super) const TRASH_DIR: &str = "trash";

#[derive(Default)]
struct Queue {
    paths: Vec<PathBuf>,
    stop: bool,
}

pub(super) struct Trash {
    dir: PathBuf,
    queue: Arc<(Mutex<Queue>, Condvar)>,
    /// Started by the first use (a volume only read never makes the directory).
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Trash {
    /// The trash of the volume in `cipherdir`.
    pub(super) fn new(cipherdir: &Path) -> Trash {
        Trash { dir: cipherdir.join(TRASH_DIR), queue: Default::default(), thread: Mutex::new(None) }
    }

    /// Queues `path` (in the trash) for removal, starting the thread if need be; false if no
    /// thread runs (stopped, or it could not start).
    fn queue(&self, paths: Vec<PathBuf>) -> bool {
        let mut thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        let (lock, cv) = &*self.queue;
        let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
        if q.stop {
            return false;
        }
        if thread.is_none() {
            let shared = self.queue.clone();
            match std::thread::Builder::new().name("trash".into()).spawn(move || empty_loop(&shared)) {
                Ok(t) => *thread = Some(t),
                Err(_) => return false,
            }
        }
        q.paths.extend(paths);
        cv.notify_one();
        true
    }

    /// Removes (in the background) what an earlier run left in the trash: a read-write mount
    /// calls this first.
    pub(super) fn empty_leftovers(&self) {
        if let Ok(entries) = fs::read_dir(&self.dir) {
            let paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            if !paths.is_empty() {
                self.queue(paths);
            }
        }
    }

    /// Removes data file `backing` (its last link) or empty backing directory `backing`:
    /// moved into the trash for the thread, or removed at once where it cannot be moved.
    pub(super) fn discard(&self, backing: &Path) -> std::io::Result<()> {
        let r: [u8; 8] = crate::crypto::random_array();
        let to = self.dir.join(crate::format::hex(&r));
        // The directory is made when first needed (and again after a stop removed it).
        let moved = fs::rename(backing, &to).or_else(|e| match e.kind() {
            ErrorKind::NotFound if fs::create_dir(&self.dir).is_ok() => fs::rename(backing, &to),
            _ => Err(e),
        });
        match moved {
            Ok(()) => {
                if !self.queue(vec![to.clone()]) {
                    remove_now(&to)?;
                }
                Ok(())
            }
            Err(_) => remove_now(backing),
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
            let _ = fs::remove_dir(&self.dir); // if empty (another process may still use it)
        }
    }
}

fn empty_loop(queue: &(Mutex<Queue>, Condvar)) {
    let (lock, cv) = queue;
    loop {
        let (paths, stop) = {
            let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
            while q.paths.is_empty() && !q.stop {
                q = cv.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            (std::mem::take(&mut q.paths), q.stop)
        };
        for p in paths {
            if let Err(e) = remove_now(&p) {
                if e.kind() != ErrorKind::NotFound {
                    tracing::warn!("{}: removing from the trash: {e}", p.display());
                }
            }
        }
        if stop {
            return;
        }
    }
}

/// Removes file `p`, or directory `p` with what is in it.
fn remove_now(p: &Path) -> std::io::Result<()> {
    fs::remove_file(p).or_else(|e| match e.raw_os_error() {
        Some(21) => fs::remove_dir_all(p), // EISDIR
        _ => Err(e),
    })
}
