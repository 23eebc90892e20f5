//! Keeps the store's database file in the page cache while the volume is in use: a rate-
//! limited `POSIX_FADV_WILLNEED` of the whole file (asked when a file's state is loaded, or
//! a size or long name is not cached and its row is about to be read, at most once a
//! second; not for a listing whose sizes are all cached).
//!
//! Each file's rows sit on a page of their own somewhere in the database (file ids are
//! random), so once the page cache has dropped the store (memory pressure, `drop_caches`),
//! every open and every size missing from [`super::sizes`] was a random read of the disk of
//! its own: opening each file of a tree took a quarter longer than with the store cached
//! (measured with the fuse tracepoints, `md5sum` of 5,695 files). Asking for the whole file
//! reads it back in one sequential sweep. A store larger than [`LIMIT`] is left to SQLite's
//! own reads (and memory pressure, which would evict it again, is not fought beyond one
//! sweep a second); a cached one costs some 30 µs a call.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The largest store read back whole.
const LIMIT: u64 = 128 << 20;
/// The part of the file asked for at a time.
const STEP: i64 = 1 << 20;
/// At most one request per this.
const EVERY: Duration = Duration::from_secs(1);

pub(super) struct Warmer {
    /// The database file, opened as any untrusted file (no symlink, no device) with the
    /// store; `None` if that failed (nothing is then asked for).
    file: Option<File>,
    /// Milliseconds from [`epoch`] of the last request, plus one (0: never).
    last: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Warmer {
    pub(super) fn new(path: &Path) -> Self {
        Warmer { file: crate::confine::open_file(path, false).ok(), last: AtomicU64::new(0) }
    }

    /// Asks the kernel to read the database file into the page cache, unless that was asked
    /// less than [`EVERY`] ago. Returns whether it asked.
    pub(super) fn warm(&self) -> bool {
        let Some(f) = &self.file else { return false };
        let now = epoch().elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now < last + EVERY.as_millis() as u64 {
            return false;
        }
        if self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return false; // another thread asks
        }
        let len = match f.metadata() {
            Ok(m) if m.len() <= LIMIT => m.len() as i64,
            _ => return false,
        };
        // In steps: the kernel reads at most its readahead window (`read_ahead_kb`, or the
        // device's largest request) of one request.
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        (0..len)
            .step_by(STEP as usize)
            .all(|at| posix_fadvise(f, at, STEP.min(len - at), PosixFadviseAdvice::POSIX_FADV_WILLNEED).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_at_most_once_a_second_and_only_for_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let w = Warmer::new(&path);
        assert!(w.warm(), "the first call asks");
        assert!(!w.warm(), "a second within the second does not");
        w.last.store(0, Ordering::Relaxed); // as if never asked
        assert!(w.warm());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(!Warmer::new(&link).warm(), "a symlink is not followed");
    }
}
