//! An entry the daemon has just made under a hidden name (`names::temp_sibling`), pinned
//! before it is given its owner, mode or times and moved into place.
//!
//! Whoever can write CIPHERDIR may see that name and put something else there between the
//! `mkdir`/`mknod`/`symlink` and the changes (a hard link to another file, say): changed by
//! name, that would get the caller's owner. So the entry is opened `O_PATH|O_NOFOLLOW` and
//! checked through the descriptor (the kind made; for all but a directory, no other name),
//! and every change goes to exactly that inode; anything else found there is refused and
//! left unchanged. (Its owner is not checked: on NFS with root squashed, or vfat, the
//! daemon's new entries are not its own.)

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
    /// Pins the entry `at` if it is of `kind` (`S_IFDIR`, `S_IFLNK`, ...) and, unless a
    /// directory (whose link count counts its subdirectories, or is 1 on some file systems),
    /// has no name but this one. Anything else there is `InvalidData`.
    pub(super) fn pin(at: &At, kind: SFlag) -> io::Result<Made> {
        let fd = nix::fcntl::openat(
            at.dir(),
            at.name(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let st = nix::sys::stat::fstat(&fd)?;
        if st.st_mode & SFlag::S_IFMT.bits() != kind.bits() || (kind != SFlag::S_IFDIR && st.st_nlink != 1) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not the entry this daemon just made (another kind, or another name links it; refused, nothing changed)", at.path().display()),
            ));
        }
        let itself = proc_path(&fd, OsStr::new(""));
        Ok(Made { fd, itself, is_symlink: kind == SFlag::S_IFLNK })
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
        let old = std::fs::metadata(tmp.path()).unwrap();
        let link = Made::pin(&at("link"), SFlag::S_IFLNK).unwrap();
        link.chmod(0o777).unwrap(); // nothing to set, and the target is not touched
        link.keep_owner_and_times(&old).unwrap();
        let now = std::fs::symlink_metadata(tmp.path().join("link")).unwrap();
        assert_eq!((now.mtime(), now.mtime_nsec()), (old.mtime(), old.mtime_nsec()), "the link's own times");
        assert_eq!(std::fs::read_link(tmp.path().join("link")).unwrap(), std::path::Path::new("target"));
    }
}
