//! An entry the daemon has just made under a hidden name (`names::temp_sibling`), pinned
//! before it is given its owner, mode or times and moved into place.
//!
//! Whoever can write CIPHERDIR may see that name and put something else there between the
//! `mkdir`/`mknod`/`symlink` and the changes (a hard link to another file, say): changed by
//! name, that would get the caller's owner. So the entry is opened `O_PATH|O_NOFOLLOW` and
//! checked through the descriptor (the kind made; no other name; a directory: empty), and
//! every change goes to exactly that inode, a directory's `.dirid` is written beneath it,
//! and one that fails is removed only while it is still the entry at its hidden name, never
//! recursively: anything else found there is refused and left as it is. (Its owner is not checked: on NFS with root
//! squashed, or vfat, the daemon's new entries are not its own.)

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};

use super::tree::{proc_path, At};

/// A new entry, pinned and checked to be the one this daemon made.
pub(super) struct Made {
    fd: OwnedFd,
    /// `/proc/self/fd/N`: followed, exactly the pinned inode (a symlink's own, never its
    /// target's).
    itself: PathBuf,
    is_symlink: bool,
}

impl Made {
    /// Pins the entry `at` if it is of `kind` (`S_IFDIR`, `S_IFLNK`, ...) and has no name
    /// but this one, or is an empty directory (whose link count is 2, or 1 on some file
    /// systems). Anything else there is `InvalidData`.
    pub(super) fn pin(at: &At, kind: SFlag) -> io::Result<Made> {
        let fd = nix::fcntl::openat(
            at.dir(),
            at.name(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let st = nix::sys::stat::fstat(&fd)?;
        let one = match kind {
            SFlag::S_IFDIR => st.st_nlink <= 2 && holds_only(&fd, &[])?,
            _ => st.st_nlink == 1,
        };
        if st.st_mode & SFlag::S_IFMT.bits() != kind.bits() || !one {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: not the entry this daemon just made (another kind, or not new; refused, nothing changed)",
                    at.name().to_string_lossy()
                ),
            ));
        }
        let itself = proc_path(&fd, OsStr::new(""));
        Ok(Made { fd, itself, is_symlink: kind == SFlag::S_IFLNK })
    }

    /// Creates the file `name` in the pinned directory (`O_EXCL|O_NOFOLLOW`) holding `data`.
    pub(super) fn write_file(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let f = std::fs::File::from(nix::fcntl::openat(&self.fd, name, flags, Mode::from_bits_truncate(0o600))?);
        std::io::Write::write_all(&mut &f, data)
    }

    /// The pinned inode's metadata (the magic link followed: the inode itself, as `fstat`).
    pub(super) fn metadata(&self) -> io::Result<std::fs::Metadata> {
        std::fs::metadata(&self.itself)
    }

    /// Removes the pinned entry, which failed to be made, from `at` (its hidden name): see
    /// [`remove_pinned`].
    pub(super) fn remove(&self, at: &At, ours: &[&str]) -> io::Result<()> {
        remove_pinned(&self.fd, at, ours)
    }

    /// chown of the pinned inode; `None` leaves that id as it is.
    pub(super) fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        let (uid, gid) = (uid.map(nix::unistd::Uid::from_raw), gid.map(nix::unistd::Gid::from_raw));
        Ok(nix::unistd::fchownat(&self.fd, "", uid, gid, AtFlags::AT_EMPTY_PATH)?)
    }

    /// Sets the permission bits of the pinned inode (a symlink has none to set).
    pub(super) fn chmod(&self, mode: u32) -> io::Result<()> {
        if self.is_symlink {
            return Ok(());
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.itself, std::fs::Permissions::from_mode(mode & 0o7777))
    }

    /// Gives the pinned inode the owner and times of `old` (the entry it copies or replaces).
    pub(super) fn keep_owner_and_times(&self, old: &std::fs::Metadata) -> io::Result<()> {
        use nix::sys::stat::{utimensat, UtimensatFlags};
        use nix::sys::time::TimeSpec;
        use std::os::unix::fs::MetadataExt;
        self.chown(Some(old.uid()), Some(old.gid()))?;
        let at = TimeSpec::new(old.atime(), old.atime_nsec());
        let mt = TimeSpec::new(old.mtime(), old.mtime_nsec());
        Ok(utimensat(&self.fd, &self.itself, &at, &mt, UtimensatFlags::FollowSymlink)?)
    }
}

/// Whether the directory `dir` (an `O_PATH` descriptor) holds nothing but `.`, `..` and
/// the names in `allowed`.
fn holds_only(dir: &OwnedFd, allowed: &[&str]) -> io::Result<bool> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut d = nix::dir::Dir::openat(dir, ".", flags, Mode::empty())?;
    for e in d.iter() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if !matches!(name, b"." | b"..") && !allowed.iter().any(|a| a.as_bytes() == name) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes `at`, a directory left half-made at a hidden name (recovery, `fsck --repair`),
/// if it holds at most its `.dirid` (`dirid`), as a `mkdir` of the daemon leaves it. Anything
/// else in it was not put there by the daemon: it is left as it is, never removed
/// recursively, and the error says so.
pub(super) fn remove_half_made_dir(at: &At, dirid: &str) -> io::Result<()> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(at.dir(), at.name(), flags, Mode::empty())?;
    if !holds_only(&fd, &[dirid])? {
        return Err(not_ours());
    }
    remove_pinned(&fd, at, &[dirid])
}

/// Removes the entry pinned as `pinned` from `at`: the files named in `ours` beneath it
/// first (a directory's), then the entry itself if it is still the one at `at` (a
/// directory only if that left it empty). Never recursive: what someone else put there
/// stays, and a directory left holding it is the error.
fn remove_pinned(pinned: &OwnedFd, at: &At, ours: &[&str]) -> io::Result<()> {
    use nix::unistd::{unlinkat, UnlinkatFlags};
    let me = nix::sys::stat::fstat(pinned)?;
    let is_dir = me.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits();
    for name in ours.iter().filter(|_| is_dir) {
        match unlinkat(pinned, *name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let there = nix::sys::stat::fstatat(at.dir(), at.name(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if (there.st_dev, there.st_ino) != (me.st_dev, me.st_ino) {
        return Ok(()); // another entry is there now: not ours to remove
    }
    let how = if is_dir { UnlinkatFlags::RemoveDir } else { UnlinkatFlags::NoRemoveDir };
    unlinkat(at.dir(), at.name(), how).map_err(|e| match e {
        nix::errno::Errno::ENOTEMPTY | nix::errno::Errno::EEXIST => not_ours(),
        e => e.into(),
    })
}

/// A directory at a hidden name holding what the daemon did not put there.
fn not_ours() -> io::Error {
    io::Error::new(
        io::ErrorKind::DirectoryNotEmpty,
        "it holds entries no mkdir of the daemon put there (left as it is)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn only_an_entry_of_the_kind_made_with_one_name_is_pinned_and_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = super::super::tree::Tree::open(tmp.path()).unwrap();
        let at = |name: &str| tree.at(&tmp.path().join(name)).unwrap();
        std::os::unix::fs::symlink("target", tmp.path().join("link")).unwrap();
        std::fs::write(tmp.path().join("file"), b"x").unwrap();
        std::fs::hard_link(tmp.path().join("file"), tmp.path().join("second-name")).unwrap();
        nix::unistd::mkfifo(&tmp.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let refused = |name: &str, kind: SFlag| {
            let e = Made::pin(&at(name), kind).err().unwrap_or_else(|| panic!("{name} pinned as {kind:?}"));
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{name}: {e}");
        };
        refused("link", SFlag::S_IFIFO); // another kind: a symlink, never followed
        refused("fifo", SFlag::S_IFLNK);
        refused("file", SFlag::S_IFREG); // a second name: someone else's file linked in
        std::fs::remove_file(tmp.path().join("second-name")).unwrap();
        let made = Made::pin(&at("fifo"), SFlag::S_IFIFO).unwrap();
        made.chmod(0o4640).unwrap();
        assert_eq!(std::fs::symlink_metadata(tmp.path().join("fifo")).unwrap().mode() & 0o7777, 0o4640);
        // Times to copy that no file here has: a day in 2001.
        let t = nix::sys::time::TimeSpec::new(1_000_000_000, 123);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &tmp.path().join("file"),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        )
        .unwrap();
        let old = std::fs::metadata(tmp.path().join("file")).unwrap();
        let link = Made::pin(&at("link"), SFlag::S_IFLNK).unwrap();
        link.chmod(0o777).unwrap(); // nothing to set: the link points nowhere, a follow would fail
        link.keep_owner_and_times(&old).unwrap();
        let now = std::fs::symlink_metadata(tmp.path().join("link")).unwrap();
        assert_eq!((now.mtime(), now.mtime_nsec()), (old.mtime(), old.mtime_nsec()), "the link's own times");
        assert_eq!((now.mtime(), now.mtime_nsec()), (1_000_000_000, 123));
        assert_eq!(std::fs::read_link(tmp.path().join("link")).unwrap(), std::path::Path::new("target"));
    }

    #[test]
    fn a_directory_is_pinned_only_empty_and_removed_only_as_mkdir_leaves_it() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = super::super::tree::Tree::open(tmp.path()).unwrap();
        let at = |name: &str| tree.at(&tmp.path().join(name)).unwrap();
        for d in ["new", "full", "half", "planted/sub"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        std::fs::write(tmp.path().join("full/x"), b"").unwrap();
        let e = Made::pin(&at("full"), SFlag::S_IFDIR).err().expect("a directory with entries is not new");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let made = Made::pin(&at("new"), SFlag::S_IFDIR).unwrap();
        made.write_file(".dirid", b"id").unwrap();
        assert_eq!(made.write_file(".dirid", b"again").unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(made.metadata().unwrap().ino(), std::fs::metadata(tmp.path().join("new")).unwrap().ino());
        // Someone else's file put in it meanwhile: the directory stays, with that file.
        std::fs::write(tmp.path().join("new/theirs"), b"").unwrap();
        assert_eq!(made.remove(&at("new"), &[".dirid"]).unwrap_err().kind(), io::ErrorKind::DirectoryNotEmpty);
        let left: Vec<_> = std::fs::read_dir(tmp.path().join("new")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["theirs"]);
        std::fs::write(tmp.path().join("half/.dirid"), b"id").unwrap();
        remove_half_made_dir(&at("half"), ".dirid").unwrap();
        assert!(!tmp.path().join("half").exists());
        let e = remove_half_made_dir(&at("planted"), ".dirid").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::DirectoryNotEmpty);
        assert!(tmp.path().join("planted/sub").is_dir(), "never removed recursively");
    }
}
