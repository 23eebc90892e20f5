//! Opening files in places we do not trust (CIPHERDIR and everything in it) without being
//! steered by them: no symlink is followed at the last component, nothing is opened that
//! could block (a FIFO) or act (a device), and what was opened is checked for its type.
//!
//! Owns: the open flags and type checks for fixed files (header, keystore, markers, the
//! runtime directory's files) and the creation of temporary files under unpredictable names
//! with `O_EXCL|O_NOFOLLOW`. The data tree under `CIPHERDIR/data` is reached through
//! `fs/tree.rs`, which uses the same checks. Knows no key, format or FUSE.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, AtFlags, FcntlArg, OFlag};
use nix::sys::stat::FileStat;

use crate::{Error, Result};

/// What kind of object a name was expected to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    File,
    Dir,
}

/// Flags for every open of an untrusted name: never follow a symlink at the last
/// component, never wait (a FIFO with no writer opens at once instead of hanging).
pub(crate) fn untrusted_flags() -> i32 {
    (OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits()
}

/// The name of a file type, for errors.
pub fn kind_name(meta: &Metadata) -> &'static str {
    kind_name_of_mode(meta.mode())
}

/// [`kind_name`] of an `st_mode`.
fn kind_name_of_mode(mode: u32) -> &'static str {
    use nix::sys::stat::SFlag;
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFBLK | SFlag::S_IFCHR => "a device node",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFREG => "a regular file",
        _ => "a file of unknown type",
    }
}

/// Checks that `meta` (of `path`) is what was expected; anything else is an integrity
/// error naming what was found.
pub fn check_kind(meta: &Metadata, expect: Expect, path: &Path) -> Result<()> {
    let ok = match expect {
        Expect::File => meta.file_type().is_file(),
        Expect::Dir => meta.file_type().is_dir(),
    };
    if ok {
        return Ok(());
    }
    let wanted = match expect {
        Expect::File => "a regular file",
        Expect::Dir => "a directory",
    };
    Err(Error::integrity(path, format!("expected {wanted}, found {}", kind_name(meta))))
}

/// Maps an open error of an untrusted name: `ELOOP` (a symlink where `O_NOFOLLOW` was
/// asked) and `ENXIO` (a socket) are integrity errors, not I/O errors.
fn open_error(path: &Path, op: &'static str, e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(40) => Error::integrity(path, "expected a regular file or directory, found a symbolic link"),
        Some(6) => Error::integrity(path, "expected a regular file, found a socket or device without a driver"),
        _ => Error::io(path, op, e),
    }
}

/// Opens the regular file `path` (read-only, or read-write with `write`), refusing a
/// symlink, FIFO, socket, device or directory with an integrity error. The returned file
/// blocks as usual.
pub fn open_file(path: &Path, write: bool) -> Result<File> {
    open_file_at(nix::fcntl::AT_FDCWD, path.as_os_str(), write, path).map(|(f, _)| f)
}

/// [`open_file`] of entry `name` of the directory open as `dir` (the data tree's
/// descriptors, `fs/tree.rs`; `AT_FDCWD` for a path): looked at with `fstatat` and opened
/// with `openat` on the descriptor, not through a path by `/proc/self/fd`, which costs the
/// kernel a walk of /proc for the look and another for the open. Returns the file and its
/// `fstat`. `shown` names it in errors.
pub fn open_file_at(dir: BorrowedFd<'_>, name: &OsStr, write: bool, shown: &Path) -> Result<(File, FileStat)> {
    use nix::sys::stat::{fstat, fstatat};
    let stat_err = |e: nix::Error| Error::io(shown, "stat", e.into());
    // Look first: a device node is never opened (opening one can act), nor a FIFO or socket.
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => expect_file_mode(st.st_mode, shown)?,
        Err(nix::Error::ENOENT) => {} // the open says so
        Err(e) => return Err(stat_err(e)),
    }
    let access = if write { OFlag::O_RDWR } else { OFlag::O_RDONLY };
    let flags = access | OFlag::from_bits_truncate(untrusted_flags());
    let fd = nix::fcntl::openat(dir, name, flags, nix::sys::stat::Mode::empty())
        .map_err(|e| open_error(shown, "open", e.into()))?;
    let file = File::from(fd);
    let st = fstat(&file).map_err(stat_err)?;
    expect_file_mode(st.st_mode, shown)?;
    // Of the status flags F_SETFL sets, only O_NONBLOCK was asked for: all cleared at once.
    fcntl(&file, FcntlArg::F_SETFL(OFlag::empty())).map_err(|e| Error::io(shown, "fcntl", e.into()))?;
    Ok((file, st))
}

/// [`open_file_at`] that keeps `std::io::Error`, as [`open_file_io`] does.
pub fn open_file_at_io(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    write: bool,
    shown: &Path,
) -> std::io::Result<(File, FileStat)> {
    open_file_at(dir, name, write, shown).map_err(io_of)
}

/// A regular file, by its `st_mode`: a directory is `IsDir`, anything else an integrity
/// error.
fn expect_file_mode(mode: u32, path: &Path) -> Result<()> {
    use nix::sys::stat::SFlag;
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => Ok(()),
        SFlag::S_IFDIR => Err(Error::IsDir(path.to_path_buf())),
        _ => Err(Error::integrity(path, format!("expected a regular file, found {}", kind_name_of_mode(mode)))),
    }
}

/// [`open_file`] that keeps `std::io::Error` (for callers that map `NotFound` themselves);
/// a directory is `EISDIR`, another wrong type `InvalidData`.
pub fn open_file_io(path: &Path, write: bool) -> std::io::Result<File> {
    open_file(path, write).map_err(io_of)
}

fn io_of(e: Error) -> std::io::Error {
    match e {
        Error::Io { source, .. } => source,
        Error::IsDir(_) => std::io::Error::from_raw_os_error(21),
        other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
    }
}

/// Opens the directory `path` itself (not through a symlink).
pub fn open_dir(path: &Path) -> Result<File> {
    let flags = untrusted_flags() | OFlag::O_DIRECTORY.bits();
    let dir = OpenOptions::new().read(true).custom_flags(flags).open(path).map_err(|e| match e.raw_os_error() {
        Some(20) => Error::integrity(path, "expected a directory, found something else"),
        _ => open_error(path, "open directory", e),
    })?;
    Ok(dir)
}

/// Reads the whole regular file `path`, at most `max` bytes (a larger file is corrupt).
pub fn read_file(path: &Path, max: u64) -> Result<Vec<u8>> {
    let file = open_file(path, false)?;
    let len = file.metadata().map_err(|e| Error::io(path, "stat", e))?.len();
    if len > max {
        return Err(Error::corrupt(path, format!("{len} bytes, more than the {max} such a file may hold")));
    }
    let mut out = Vec::with_capacity(len as usize);
    file.take(max + 1).read_to_end(&mut out).map_err(|e| Error::io(path, "read", e))?;
    if out.len() as u64 > max {
        return Err(Error::corrupt(path, format!("more than the {max} bytes such a file may hold")));
    }
    Ok(out)
}

/// The metadata of `path` itself (a symlink is reported as one), `None` if absent.
pub fn lstat(path: &Path) -> Result<Option<Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, "stat", e)),
    }
}

/// Creates a new temporary file beside `target` under an unpredictable name
/// (`.NAME.tmp-RANDOM`), `O_CREAT|O_EXCL|O_NOFOLLOW`: nothing planted there is opened or
/// followed. Returns the file and its path.
pub fn create_temp(target: &Path, mode: u32) -> Result<(File, PathBuf)> {
    let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name =
        target.file_name().ok_or_else(|| Error::InvalidArgument(format!("{}: not a file path", target.display())))?;
    let suffix: [u8; 12] = crate::crypto::random_array();
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp-");
    tmp_name.push(crate::format::hex(&suffix));
    let tmp = dir.join(tmp_name);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, "create", e))?;
    Ok((file, tmp))
}

/// Whether `dir` is on a tmpfs or ramfs (memory only, gone at reboot).
pub fn in_memory(dir: &Path) -> bool {
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    nix::sys::statfs::statfs(dir).is_ok_and(|s| {
        s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC || s.filesystem_type().0 as u64 == RAMFS_MAGIC
    })
}

/// Whether `path` (made absolute without following anything) lies inside `dir`.
pub fn is_inside(path: &Path, dir: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).or_else(|_| std::path::absolute(p));
    match (canon(path), canon(dir)) {
        (Ok(p), Ok(d)) => p.starts_with(d),
        _ => true,
    }
}

/// Checks that `path` and every directory above it are owned by root and writable by no
/// group or other user (the rule sudo applies to what it runs): only then is what it holds
/// the operator's, not whoever can write somewhere on the way.
pub fn check_root_owned(path: &Path) -> std::result::Result<(), String> {
    let mut here = Some(path);
    while let Some(p) = here {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.uid() != 0 {
            return Err(format!("{} is owned by uid {}, not root", p.display(), meta.uid()));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(format!("{} is writable by group or others (mode {:o})", p.display(), meta.mode() & 0o7777));
        }
        here = p.parent().filter(|q| !q.as_os_str().is_empty());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_fifos_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"secret").unwrap();
        symlink(&target, dir.path().join("link")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for name in ["link", "fifo"] {
            let err = open_file(&dir.path().join(name), false).unwrap_err();
            assert!(matches!(err, Error::Integrity { .. }), "{name}: {err}");
        }
        assert!(matches!(open_file(dir.path(), false).unwrap_err(), Error::IsDir(_)));
        assert!(matches!(open_dir(&dir.path().join("link")).unwrap_err(), Error::Integrity { .. }));
        assert_eq!(read_file(&target, 100).unwrap(), b"secret");
        assert!(matches!(read_file(&target, 3).unwrap_err(), Error::Corrupt { .. }));
    }

    #[test]
    fn open_file_at_refuses_what_open_file_refuses_and_opens_blocking() {
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("target"), b"secret").unwrap();
        symlink(dir.path().join("target"), dir.path().join("link")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let d = File::open(dir.path()).unwrap();
        let at = |name: &str, write| open_file_at(d.as_fd(), OsStr::new(name), write, Path::new(name));
        for name in ["link", "fifo"] {
            let err = at(name, false).unwrap_err();
            assert!(
                matches!(&err, Error::Integrity { reason, .. } if reason.contains("expected a regular file")),
                "{name}: {err}"
            );
        }
        assert!(matches!(at("sub", false).unwrap_err(), Error::IsDir(_)));
        assert!(matches!(at("gone", false).unwrap_err(), Error::Io { .. }));
        assert_eq!(at("gone", false).map_err(io_of).unwrap_err().kind(), std::io::ErrorKind::NotFound);
        let (mut f, st) = at("target", true).unwrap();
        assert_eq!(st.st_size, 6);
        let flags = OFlag::from_bits_truncate(fcntl(&f, FcntlArg::F_GETFL).unwrap());
        assert!(!flags.contains(OFlag::O_NONBLOCK) && flags.contains(OFlag::O_RDWR), "{flags:?}");
        let mut got = String::new();
        f.read_to_string(&mut got).unwrap();
        assert_eq!(got, "secret");
    }

    #[test]
    fn temporary_files_never_reuse_a_planted_name() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("conf");
        let (_f1, t1) = create_temp(&target, 0o600).unwrap();
        let (_f2, t2) = create_temp(&target, 0o600).unwrap();
        assert_ne!(t1, t2);
        assert!(t1.file_name().unwrap().to_str().unwrap().starts_with(".conf.tmp-"));
    }
}
