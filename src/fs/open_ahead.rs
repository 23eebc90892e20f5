//! Reading data files ahead, where a cold tree would otherwise be read one random page per
//! file, one file after the other. Two cases:
//!
//! * A readdirplus whose files' ids are not cached (after a fresh mount): each entry's
//!   attributes need its id, from its header, so the headers of all its files are asked for
//!   at once ([`Volume::prefetch_headers`]; a cold `find` of a Linux tree took about 10 s).
//! * Open-ahead: when a file is opened whose first data page is not in the page cache, the
//!   first pages of the next files of its backing directory are asked for too, all at once.
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
//! directory is listed again after [`FRESH`].
//!
//! The cold open lists the directory (the first time) and takes the next batch; the batch's
//! files are opened and asked for by the read-ahead threads of `fs::walk_ahead`, not by the
//! open (64 opens and requests on the open's own time), or by the open itself if
//! no such thread could be started. Nothing is read ahead on a file system in memory. Files
//! are opened as every data file is (no symlink followed, no device or FIFO opened), and one
//! that does not open is skipped, left to whatever reads it to report.

use std::ffi::{OsStr, OsString};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

use super::volume::Volume;
use crate::format::PAGE;

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
    /// Asks for the header of every data file of backing directory `dir` (just listed) named
    /// by `files` (backing inode, backing name) whose id is not cached: a readdirplus's reply
    /// carries each entry's attributes, and a file's size needs its id.
    pub fn prefetch_headers<'a>(&self, dir: &super::ListedDir, files: impl Iterator<Item = (u64, &'a OsStr)>) {
        if self.core.in_memory {
            return;
        }
        let mut cold = files.filter(|(ino, _)| !self.file_id_known(*ino)).map(|(_, name)| name).peekable();
        if cold.peek().is_none() {
            return;
        }
        will_need(dir.at(), cold, crate::format::OBJECT_HEADER_LEN as i64);
    }

    /// Called with data file `file` (`len` bytes), just opened at `backing`, before it is
    /// read: if its first data page is not cached, reads ahead the next files of its
    /// directory.
    pub(super) fn open_ahead(&self, file: &std::fs::File, backing: &Path, len: u64) {
        // The page after the header's, or the header's own for a file of one page (a small
        // format-1 file).
        let probe = if len > PAGE { PAGE } else { 0 };
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
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()) && super::names::is_name(&e.file_name()))
                .map(|e| e.file_name())
                .collect()
        });
        // Asked by the read-ahead threads: 64 opens and requests were this open's own time,
        // once per directory of a tree read through (`md5sum`).
        if let Err(batch) = self.core.walk_ahead.queue_files(listed.shared_dir(), batch, AHEAD) {
            will_need(&listed, batch.iter().map(OsString::as_os_str), AHEAD);
        }
    }
}

/// Asks the kernel for the first `len` bytes of each of the data files `names` of directory
/// `listed` (`POSIX_FADV_WILLNEED`, which does not wait).
fn will_need<'a>(listed: &super::tree::At, names: impl Iterator<Item = &'a OsStr>, len: i64) {
    names.for_each(|name| will_need_at(listed.dir(), name, len));
}

/// Asks the kernel for the first `len` bytes of file `name` of the directory open as `dir`
/// (`POSIX_FADV_WILLNEED`), opened as every backing file is (`confine::open_file_at`: no
/// symlink followed, no FIFO or device opened). One that does not open is skipped, left to
/// whatever reads it to report.
pub(super) fn will_need_at(dir: std::os::fd::BorrowedFd<'_>, name: &OsStr, len: i64) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    if let Ok((f, _)) = crate::confine::open_file_at(dir, name, false, Path::new(name)) {
        let _ = posix_fadvise(&f, 0, len, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
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
