//! The storage seam: the operations the engine needs from a data file (five, and a
//! write-behind hint), and the [`Storage`] that hands out data files and is told of every
//! sync point (data fsync, `syncfs`, store commit, header replacement).
//!
//! Production uses [`OsStorage`] (`std::fs::File`, no hooks); tests substitute a backend that
//! cuts power at a chosen sync point and then keeps only what was made durable (redb's
//! `StorageBackend` is the model). Directory operations (create, rename, unlink) go to the
//! backing file system directly: they are atomic there, and everything the store refers to
//! is made durable by the `syncfs` before the commit that refers to it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A point where something becomes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPoint {
    /// One data file's `fdatasync` (reported by the data file itself).
    DataSync,
    /// `syncfs` of the backing file system before a group commit.
    SyncFs,
    /// A store transaction's commit.
    StoreCommit,
    /// The volume header replaced (KEK rotation).
    HeaderReplace,
    /// A directory entry renamed to its name under a rotation's new name key.
    NameMoved,
}

/// Where data files come from, and who hears of each sync point.
pub trait Storage: Send + Sync {
    /// The data file for `file`, just opened or created at `path`.
    fn data_file(&self, file: File, path: &Path) -> Box<dyn DataFile>;
    /// Called before the durable step `point`; an error cuts the power there: the step does
    /// not happen (and the caller fails with the error).
    fn sync_point(&self, point: SyncPoint) -> io::Result<()>;
}

/// The real thing: plain files, no hooks.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsStorage;

impl Storage for OsStorage {
    fn data_file(&self, file: File, _path: &Path) -> Box<dyn DataFile> {
        Box::new(file)
    }

    fn sync_point(&self, _point: SyncPoint) -> io::Result<()> {
        Ok(())
    }
}

/// Whether the page of `file` at `offset` is in the page cache: a one-byte read that may
/// not wait for the disk (`preadv2(RWF_NOWAIT)`) succeeds. An error other than "would wait"
/// (a kernel or file system without the flag) says cached: nothing is done about it.
#[allow(unsafe_code)]
pub(super) fn cached_at(file: &std::fs::File, offset: u64) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(offset) = i64::try_from(offset) else { return true };
    let mut byte = 0u8;
    let iov = nix::libc::iovec { iov_base: (&mut byte as *mut u8).cast(), iov_len: 1 };
    // SAFETY: preadv2(2) writes at most `iov_len` (1) bytes to `iov_base`, which points to
    // `byte`, alive and exclusively borrowed for the call; `iov` is one valid iovec (count
    // 1); the descriptor is `file`'s, open for the duration of the call (`file` is borrowed).
    // nix does not wrap preadv2.
    let r = unsafe { nix::libc::preadv2(file.as_raw_fd(), &iov, 1, offset, nix::libc::RWF_NOWAIT) };
    r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(nix::libc::EAGAIN)
}

pub trait DataFile: Send + Sync {
    fn size(&self) -> io::Result<u64>;
    /// Reads into `buf` from `offset` until `buf` is full or end of file; returns the bytes
    /// read.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes written data durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// The open data file's own metadata (fstat): what a file whose last name is gone is
    /// still asked for. The default (a test backend without a file) says unsupported.
    fn metadata(&self) -> io::Result<std::fs::Metadata> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Sets the open data file's permission bits (fchmod): how a file whose last name is
    /// gone loses setuid. The default (a test backend without a file) says unsupported.
    fn set_permissions(&self, _mode: u32) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Whether this data file was opened for writing (the default, a test backend: no).
    fn writable(&self) -> bool {
        false
    }
    /// Starts writing `len` bytes at `offset` back to the disk, without waiting for it or
    /// making anything durable (a hint: the default does nothing).
    fn start_writeback(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Gives back the space of `len` bytes at `offset`, which then read as zeros (a hint:
    /// the default does nothing).
    fn punch_hole(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// `len` bytes at `offset` will be read soon (a hint: the default does nothing).
    fn will_need(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// No readahead for this file: its reader asks for what it will need (`will_need`).
    fn no_readahead(&self) -> io::Result<()> {
        Ok(())
    }
    /// A sequential read starts at `offset`, after a jump over pages it will not read (a
    /// hint: the default does nothing).
    fn stream_from(&self, _offset: u64) -> io::Result<()> {
        Ok(())
    }
    /// `len` bytes from `offset` will be read as a stream soon, after the run being read
    /// now: read them into the page cache as [`DataFile::stream_from`] would, in the background (a
    /// hint: the default does nothing).
    fn prefetch(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

impl DataFile for File {
    fn size(&self) -> io::Result<u64> {
        File::metadata(self).map(|m| m.len())
    }

    fn metadata(&self) -> io::Result<std::fs::Metadata> {
        File::metadata(self)
    }

    fn set_permissions(&self, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        File::set_permissions(self, std::fs::Permissions::from_mode(mode & 0o7777))
    }

    fn writable(&self) -> bool {
        nix::fcntl::fcntl(self, nix::fcntl::FcntlArg::F_GETFL)
            .is_ok_and(|f| f & nix::libc::O_ACCMODE != nix::libc::O_RDONLY)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match FileExt::read_at(self, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    #[allow(unsafe_code)]
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Ok(());
        };
        // SAFETY: sync_file_range(2) takes a file descriptor and three integers, reads and
        // writes no memory of this process; the descriptor is this open file's, valid for
        // the duration of the call (`self` is borrowed). nix and rustix do not wrap it.
        let r = unsafe { nix::libc::sync_file_range(self.as_raw_fd(), offset, len, nix::libc::SYNC_FILE_RANGE_WRITE) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn no_readahead(&self) -> io::Result<()> {
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        posix_fadvise(self, 0, 0, PosixFadviseAdvice::POSIX_FADV_RANDOM).map_err(io::Error::from)
    }

    fn stream_from(&self, offset: u64) -> io::Result<()> {
        populate(self, offset, 1)
    }

    fn prefetch(&self, offset: u64, len: u64) -> io::Result<()> {
        prefetch(self, offset, len)
    }

    fn will_need(&self, offset: u64, len: u64) -> io::Result<()> {
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Ok(());
        };
        posix_fadvise(self, offset, len, PosixFadviseAdvice::POSIX_FADV_WILLNEED).map_err(io::Error::from)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags};
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Ok(());
        };
        let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        fallocate(self, mode, offset, len).map_err(io::Error::from)
    }
}

/// Whether this kernel's `MADV_POPULATE_READ` gives up on a read error: before Linux 6.9
/// (commit 631426ba1d45) it retried an EIO of the file for ever, so a failing disk, or a
/// file system planted in CIPHERDIR that fails its reads, would hold the thread. Without it,
/// [`populate`] does nothing (a hint left out).
fn populate_gives_up() -> bool {
    static GIVES_UP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GIVES_UP.get_or_init(|| nix::sys::utsname::uname().is_ok_and(|u| release_gives_up(&u.release().to_string_lossy())))
}

/// Whether a kernel of `release` (`uname -r`) is 6.9 or later; one that cannot be read is not.
fn release_gives_up(release: &str) -> bool {
    let mut n = release.split(|c: char| !c.is_ascii_digit()).map(|x| x.parse::<u32>().ok());
    match (n.next().flatten(), n.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (6, 9),
        _ => false,
    }
}

/// Reads `len` bytes (at least one page) from `offset` into the page cache and starts the
/// kernel's readahead there as a stream of 2 MiB folios: the pages are faulted in through a
/// mapping marked `MADV_HUGEPAGE`, and a fault in such a mapping reads ahead from the 2 MiB
/// boundary below it in folios of that size, with the readahead state (of this open file,
/// the same as `pread`'s) set to go on in them. A `pread` that misses starts from 4 KiB
/// folios instead, and the kernel grows them only step by step. Waits for the pages, as the
/// read that follows would. Without transparent huge pages the faults read as a `pread`
/// would.
#[allow(unsafe_code)]
fn populate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use nix::sys::mman::{madvise, mmap, munmap, MapFlags, MmapAdvise, ProtFlags};
    use std::num::NonZeroUsize;
    if !populate_gives_up() {
        return Ok(());
    }
    // The pages holding `offset..offset + len`, in this system's pages (4 KiB, or 16 or 64
    // KiB elsewhere).
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    let start = offset - offset % page;
    let span = offset.saturating_add(len.max(1)).div_ceil(page).saturating_mul(page) - start;
    let (Ok(at), Some(len)) = (i64::try_from(start), usize::try_from(span).ok().and_then(NonZeroUsize::new)) else {
        return Ok(());
    };
    // SAFETY: maps pages of this open file, read-only and shared, at an address the kernel
    // picks (so nothing else of this process is replaced), and never reads through it: the
    // pages are faulted in by the kernel (MADV_POPULATE_READ, Linux 5.14+; a page past the
    // end of the file, say truncated from outside, is an EFAULT from it, not a SIGBUS), and
    // the mapping is removed before returning, on every path. No reference into it escapes
    // this block.
    unsafe {
        let addr = mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, file, at)?;
        // Refused without transparent huge pages: the pages are faulted in all the same.
        let _ = madvise(addr, len.get(), MmapAdvise::MADV_HUGEPAGE);
        let r = madvise(addr, len.get(), MmapAdvise::MADV_POPULATE_READ);
        let unmapped = munmap(addr, len.get());
        r.and(unmapped).map_err(io::Error::from)
    }
}

/// Prefetches at once in flight, in the whole process: each reads up to 16 MiB ahead of a
/// sequential reader, so a few are all that helps, and readers jumping about cannot start
/// more.
const PREFETCHES: usize = 2;
static PREFETCHING: AtomicUsize = AtomicUsize::new(0);

/// One of the [`PREFETCHES`] slots, given back when dropped (a thread that panics too).
struct PrefetchSlot;

impl PrefetchSlot {
    fn take() -> Option<PrefetchSlot> {
        let taken =
            PREFETCHING.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < PREFETCHES).then_some(n + 1));
        taken.ok().map(|_| PrefetchSlot)
    }
}

impl Drop for PrefetchSlot {
    fn drop(&mut self) {
        PREFETCHING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// [`populate`] on a thread of its own, through a duplicate of the descriptor (the same
/// open file, so its readahead state goes on from there): returns at once. Left out when
/// the range's first and last pages are cached already, and while [`PREFETCHES`] are in
/// flight (dropped, not queued).
fn prefetch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 || (cached_at(file, offset) && cached_at(file, offset.saturating_add(len - 1))) {
        return Ok(());
    }
    let Some(slot) = PrefetchSlot::take() else { return Ok(()) };
    let file = file.try_clone()?;
    std::thread::Builder::new().name("prefetch".into()).spawn(move || {
        // Started by a request thread of a ring, it would share that thread's one CPU.
        crate::sys::unpin_thread();
        if let Err(e) = populate(&file, offset, len) {
            tracing::debug!("prefetch: {e}");
        }
        drop(slot);
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{cached_at, DataFile};
    use std::io::Write;
    use std::path::Path;
    use std::time::{Duration, Instant};

    const MIB: u64 = 1 << 20;

    /// Prefetches `len` bytes at `offset` and waits (up to a minute: this is not a timing
    /// test) for the page at `probe` to be cached. The prefetch is asked again while it is not:
    /// another test's reads may hold both slots at the moment of asking (a prefetch is dropped
    /// then), but a slot that never came back would fail this.
    fn prefetched(file: &std::fs::File, offset: u64, len: u64, probe: u64) -> bool {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            file.prefetch(offset, len).unwrap();
            std::thread::sleep(Duration::from_millis(10));
            if cached_at(file, probe) {
                return true;
            }
        }
        false
    }

    #[test]
    fn populate_is_used_only_on_kernels_whose_populate_gives_up_on_a_read_error() {
        use super::release_gives_up as ok;
        assert!(ok("6.9.0") && ok("6.18.44-fc-v1300") && ok("7.0.1") && ok("6.10"));
        assert!(!ok("6.8.12-generic") && !ok("5.15.0") && !ok("4.19"));
        assert!(!ok("") && !ok("linux") && !ok("6") && !ok("6.x"), "unreadable: not used");
    }

    #[test]
    fn a_prefetch_reads_its_range_in_the_background_and_one_past_the_end_harms_nothing() {
        // On a disk (a tmpfs would keep every page cached): /var/tmp where there is one.
        let base = Path::new("/var/tmp");
        let dir = if base.is_dir() { tempfile::tempdir_in(base) } else { tempfile::tempdir() }.unwrap();
        let path = dir.path().join("data");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&vec![7u8; 16 * MIB as usize]).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let file = std::fs::File::open(&path).unwrap();
        let evict =
            || nix::fcntl::posix_fadvise(&file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED).unwrap();
        evict();
        if cached_at(&file, 6 * MIB) || !super::populate_gives_up() {
            eprintln!("skipped: this file system keeps its pages cached, or the kernel is before 6.9");
            return;
        }
        // More prefetches one after the other than may be in flight at once: each slot comes
        // back when its thread is done.
        for i in 0..2 * super::PREFETCHES as u64 {
            evict();
            let at = (i % 3) * 4 * MIB;
            assert!(prefetched(&file, at, 4 * MIB, at + 4 * MIB - 1), "prefetch {i} was not read");
        }
        // Past the end of the file (a data file cut short behind the daemon's back): the
        // pages there are an error of the background thread, not a SIGBUS of the process.
        evict();
        assert!(prefetched(&file, 12 * MIB, 64 * MIB, 14 * MIB), "the prefetched range was not read");
        // The process is still here, and the file reads back whole.
        let mut back = vec![0u8; 16 * MIB as usize];
        assert_eq!(file.read_at(&mut back, 0).unwrap(), back.len());
        assert!(back.iter().all(|&b| b == 7));
    }
}
