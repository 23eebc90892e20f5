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
}

impl DataFile for File {
    fn size(&self) -> io::Result<u64> {
        File::metadata(self).map(|m| m.len())
    }

    fn metadata(&self) -> io::Result<std::fs::Metadata> {
        File::metadata(self)
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
        stream_from(self, offset)
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

/// Starts the kernel's readahead at `offset` as a stream of 2 MiB folios: the page is
/// faulted in through a one-page mapping marked `MADV_HUGEPAGE`, and a fault in such a
/// mapping reads ahead from the 2 MiB boundary below it in folios of that size, with the
/// readahead state (of this open file, the same as `pread`'s) set to go on in them. A `pread`
/// that misses starts from 4 KiB folios instead, and the kernel grows them only step by step.
/// Waits for the first folio, as the read that follows would. Without transparent huge
/// pages the fault reads as a `pread` would.
#[allow(unsafe_code)]
fn stream_from(file: &File, offset: u64) -> io::Result<()> {
    use nix::sys::mman::{madvise, mmap, munmap, MapFlags, MmapAdvise, ProtFlags};
    use std::num::NonZeroUsize;
    // The page holding `offset`, in this system's pages (4 KiB, or 16 or 64 KiB elsewhere).
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    let (Ok(at), Some(len)) = (i64::try_from(offset - offset % page), NonZeroUsize::new(page as usize)) else {
        return Ok(());
    };
    // SAFETY: maps one page of this open file, read-only and shared, at an address the
    // kernel picks (so nothing else of this process is replaced), and never reads through
    // it: the page is faulted in by the kernel (MADV_POPULATE_READ, Linux 5.14+; a page past
    // the end of the file, say truncated from outside, is an EFAULT from it, not a SIGBUS),
    // and the mapping is removed before returning, on every path. No reference into it
    // escapes this block.
    unsafe {
        let addr = mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, file, at)?;
        // Refused without transparent huge pages: the page is faulted in all the same.
        let _ = madvise(addr, len.get(), MmapAdvise::MADV_HUGEPAGE);
        let r = madvise(addr, len.get(), MmapAdvise::MADV_POPULATE_READ);
        let unmapped = munmap(addr, len.get());
        r.and(unmapped).map_err(io::Error::from)
    }
}
