//! Open-ahead: when a file is opened whose first data page is not in the page cache, the
//! first pages of the next files of its backing directory are asked for too, all at once.
//!
//! A file's open reads its header, and after the page cache dropped the tree that read went
//! to the disk, one file after the other: `md5sum`, `grep -r`, `tar c` or `git add` of a
//! cold tree spent most of each open waiting on one random read (OPEN 186 µs on average
//! over the Linux tree, of 26.5 s for `md5sum` of every file, fuse tracepoints). Asked for
//! together (`POSIX_FADV_WILLNEED`, which does not wait), those reads overlap in the
//! device's queue, and the files' later opens and first reads find their pages cached.
//!
//! A cold open is told by a one-byte read that may not wait for the disk (`RWF_NOWAIT`) of
//! its first data page (which a readdirplus's read-ahead of headers does not bring): a warm
//! tree costs one more read per open and nothing else (a page still being read in counts as
//! cold too: at worst a batch early). Each directory of at most [`MAX_ENTRIES`] entries is
//! read ahead in [`BATCH`]es of files, in backing order, the next batch at the next cold
//! open there (one whose file the last batch did not reach, or has not read yet); a
//! directory is listed again after [`FRESH`]. Nothing is read ahead on a file system in
//! memory. Files are opened as every data file is (no symlink followed, no device or FIFO
//! opened), and one that does not open is skipped.

use std::ffi::OsString;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

use super::volume::Volume;

/// Files read ahead at one cold open.
const BATCH: usize = 64;
/// Bytes asked for from the start of each: its header and first data pages.
const AHEAD: i64 = 64 << 10;
/// A directory with more entries than this is not read ahead (a cold open there may be one
/// of few: a photo library, a mail folder, `.git/objects` read at random).
const MAX_ENTRIES: usize = 1024;
/// How long a directory's list of files is used.
const FRESH: Duration = Duration::from_secs(30);
/// Directories whose progress is kept.
const DIRS: usize = 32;

struct Cursor {
    names: Vec<OsString>,
    next: usize,
    listed: Instant,
}

/// The directories being read ahead, by backing path.
pub(super) struct OpenAhead(Mutex<LruCache<PathBuf, Cursor>>);

impl Default for OpenAhead {
    fn default() -> Self {
        OpenAhead(Mutex::new(LruCache::new(NonZeroUsize::new(DIRS).expect("non-zero"))))
    }
}

impl OpenAhead {
    /// The next batch of directory `dir`'s files, listing it with `list` if its list is
    /// missing or stale; empty once all were read ahead.
    fn next_batch(&self, dir: &Path, list: impl FnOnce() -> Vec<OsString>) -> Vec<OsString> {
        let lock = || self.0.lock().unwrap_or_else(|p| p.into_inner());
        if lock().get(dir).is_none_or(|c| c.listed.elapsed() >= FRESH) {
            // Listed without the lock held (two threads may both list: the later list stays).
            let cursor = Cursor { names: list(), next: 0, listed: Instant::now() };
            lock().put(dir.to_path_buf(), cursor);
        }
        let mut kept = lock();
        let Some(c) = kept.get_mut(dir) else { return Vec::new() };
        let from = c.next;
        c.next = (from + BATCH).min(c.names.len());
        c.names[from..c.next].to_vec()
    }
}

impl Volume {
    /// Called with data file `file`, just opened at `backing`, before it is read: if its
    /// page at `probe` (the header's, or the first data page's when the caller is about to
    /// read data) is not cached, reads ahead the next files of its directory.
    pub(super) fn open_ahead(&self, file: &std::fs::File, backing: &Path, probe: u64) {
        if self.core.in_memory || super::backend::cached_at(file, probe) {
            return;
        }
        let Some(dir) = backing.parent() else { return };
        let Ok(listed) = self.core.tree.dir(dir) else { return };
        let batch = self.core.open_ahead.next_batch(dir, || {
            let Ok(entries) = std::fs::read_dir(listed.path()) else { return Vec::new() };
            // Bounded before anything else: a planted directory of millions of entries is
            // read no further than this.
            let entries: Vec<_> = entries.take(MAX_ENTRIES + 1).flatten().collect();
            if entries.len() > MAX_ENTRIES {
                return Vec::new();
            }
            entries
                .into_iter()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name())
                .filter(|n| !std::os::unix::ffi::OsStrExt::as_bytes(n.as_os_str()).starts_with(b"."))
                .collect()
        });
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        for name in batch {
            if let Ok(f) = crate::confine::open_file(&listed.path().join(&name), false) {
                let _ = posix_fadvise(&f, 0, AHEAD, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_read_ahead_in_batches_and_listed_once_while_fresh() {
        let ahead = OpenAhead::default();
        let names: Vec<OsString> = (0..150).map(|i| OsString::from(format!("f{i}"))).collect();
        let listed = std::cell::Cell::new(0);
        let batch = |a: &OpenAhead| {
            a.next_batch(Path::new("/d"), || {
                listed.set(listed.get() + 1);
                names.clone()
            })
        };
        assert_eq!(batch(&ahead), names[..BATCH].to_vec());
        assert_eq!(batch(&ahead), names[BATCH..2 * BATCH].to_vec());
        assert_eq!(batch(&ahead), names[2 * BATCH..].to_vec());
        assert!(batch(&ahead).is_empty(), "all read ahead");
        assert_eq!(listed.get(), 1);
        ahead.0.lock().unwrap().get_mut(Path::new("/d")).unwrap().listed -= FRESH;
        assert_eq!(batch(&ahead), names[..BATCH].to_vec(), "a stale list is made again");
        assert_eq!(listed.get(), 2);
    }
}
