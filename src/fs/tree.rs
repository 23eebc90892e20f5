//! The backing tree under `CIPHERDIR/data`, reached by descriptors: the seam through which
//! fs/ touches every backing entry.
//!
//! The rest of fs/ computes where an entry lives as a path (the data directory joined with
//! encrypted names), but never hands that path to the kernel: [`Tree::at`] opens the entry's
//! parent directory beneath the data directory's descriptor with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` — so a directory inside `data/` replaced by
//! a symlink is refused, not followed — and returns a short path through that descriptor
//! (`/proc/self/fd/N/NAME`) for the one call that follows, or the descriptor and name for the
//! `*at()` calls. A path longer than PATH_MAX (encrypted names are longer than plain ones) is
//! walked one directory at a time with `openat(O_NOFOLLOW)`, so the mount has no PATH_MAX
//! limit of its own. The last component is the caller's to treat without following
//! (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `confine`). Knows no key, name encryption or FUSE.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// The data directory, opened once.
pub(super) struct Tree {
    root: PathBuf,
    fd: OwnedFd,
}

/// One backing entry, reached through its (checked) parent directory.
pub(super) struct At {
    dir: Arc<OwnedFd>,
    name: OsString,
    path: PathBuf,
}

impl At {
    /// A path that reaches the entry through the parent's descriptor (valid while `self`
    /// lives); the parent is not looked up again by the kernel.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    pub(super) fn name(&self) -> &OsStr {
        &self.name
    }

    /// The parent's descriptor, shared (to be kept past this `At`).
    pub(super) fn shared_dir(&self) -> &Arc<OwnedFd> {
        &self.dir
    }

    /// Entry `name` of this directory (an `At` of [`Tree::parent_of_entries`]), through the
    /// same descriptor: no lookup, no system call (entries of one listing, one request).
    pub(super) fn entry(&self, name: &OsStr) -> At {
        debug_assert_eq!(self.name, ".", "entries of a directory's own `At` only");
        debug_assert!(
            matches!(Path::new(name).components().collect::<Vec<_>>()[..], [Component::Normal(n)] if n == name)
        );
        At { dir: self.dir.clone(), name: name.to_os_string(), path: proc_path(&self.dir, name) }
    }

    /// chown of the entry itself, never through a symlink; `None` leaves that id unchanged.
    pub(super) fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> nix::Result<()> {
        nix::unistd::fchownat(
            self.dir(),
            self.name(),
            uid.map(nix::unistd::Uid::from_raw),
            gid.map(nix::unistd::Gid::from_raw),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
    }

    /// chmod of the entry itself, never through a symlink. Where the C library cannot do
    /// that without following (glibc before 2.32, or no /proc), it looks first and refuses
    /// a symlink (the kernel never asks to chmod one of ours).
    pub(super) fn chmod(&self, mode: u32) -> nix::Result<()> {
        use nix::sys::stat::{fchmodat, FchmodatFlags};
        let mode = Mode::from_bits_truncate(mode & 0o7777);
        match fchmodat(self.dir(), self.name(), mode, FchmodatFlags::NoFollowSymlink) {
            Err(Errno::ENOTSUP) => {
                let st = nix::sys::stat::fstatat(self.dir(), self.name(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
                if st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK {
                    return Err(Errno::ELOOP);
                }
                fchmodat(self.dir(), self.name(), mode, FchmodatFlags::FollowSymlink)
            }
            other => other,
        }
    }
}

/// Set once `openat2` turned out to be missing or refused: walk instead.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

fn dir_flags() -> OFlag {
    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
}

/// A symlink where a directory of the backing tree belongs.
fn planted(rel: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("data/{}: a symbolic link inside the backing tree (refused, not followed)", rel.display()),
    )
}

impl Tree {
    /// Opens the data directory `root` (a real directory, not a symlink).
    pub(super) fn open(root: &Path) -> crate::Result<Tree> {
        let fd = nix::fcntl::open(root, dir_flags() | OFlag::O_NOFOLLOW, Mode::empty()).map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => {
                crate::Error::integrity(root, "expected a directory, found something else")
            }
            e => crate::Error::io(root, "open data directory", e.into()),
        })?;
        // Every call goes through /proc/self/fd: make sure it is there and is ours.
        let via_proc = std::fs::metadata(proc_path(&fd, OsStr::new("")));
        let direct = nix::sys::stat::fstat(&fd);
        match (via_proc, direct) {
            (Ok(p), Ok(d)) if p.ino() == d.st_ino && p.dev() == d.st_dev => {}
            _ => {
                return Err(crate::Error::NotSupported(
                    "envelopefs needs /proc mounted (it reaches the backing tree through /proc/self/fd)".into(),
                ))
            }
        }
        Ok(Tree { root: root.to_path_buf(), fd })
    }

    /// The entry at `backing` (the data directory, or a path beneath it).
    pub(super) fn at(&self, backing: &Path) -> io::Result<At> {
        let rel = self.relative(backing)?;
        let (dir, name) = match (rel.parent(), rel.file_name()) {
            (Some(parent), Some(name)) => (self.open_dir_rel(parent, dir_flags())?, name.to_os_string()),
            _ => (self.dup_root()?, OsString::from(".")),
        };
        let path = proc_path(&dir, &name);
        Ok(At { dir: Arc::new(dir), name, path })
    }

    /// The directory at `backing` itself, opened for listing (its descriptor's path is
    /// `At::path`, its name `.`).
    pub(super) fn dir(&self, backing: &Path) -> io::Result<At> {
        let rel = self.relative(backing)?;
        // Opened for reading in one call (a directory may be readable and not searchable).
        let dir = self.open_dir_rel(&rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)?;
        let name = OsString::from(".");
        let path = proc_path(&dir, OsStr::new(""));
        Ok(At { dir: Arc::new(dir), name, path })
    }

    /// The directory at `backing` itself, as a parent for [`At::entry`] (not for listing).
    pub(super) fn parent_of_entries(&self, backing: &Path) -> io::Result<At> {
        let rel = self.relative(backing)?;
        let dir = self.open_dir_rel(&rel, dir_flags())?;
        let path = proc_path(&dir, OsStr::new(""));
        Ok(At { dir: Arc::new(dir), name: OsString::from("."), path })
    }

    fn relative(&self, backing: &Path) -> io::Result<PathBuf> {
        let rel = backing.strip_prefix(&self.root).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not in the backing tree", backing.display()))
        })?;
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a backing path must not contain '..'"));
        }
        Ok(rel.to_path_buf())
    }

    fn dup_root(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// Directory `rel` beneath the data directory (opened with `flags`), no symlink followed
    /// anywhere on the way.
    fn open_dir_rel(&self, rel: &Path, flags: OFlag) -> io::Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return Ok(openat(&self.fd, ".", flags, Mode::empty())?);
        }
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let how = OpenHow::new().flags(flags).resolve(
                ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
            match openat2(&self.fd, rel, how) {
                Ok(fd) => return Ok(fd),
                Err(Errno::ELOOP) => return Err(planted(rel)),
                // A kernel before 5.6, or a seccomp filter that refuses it: walk from now on.
                Err(Errno::ENOSYS | Errno::EPERM | Errno::E2BIG) => NO_OPENAT2.store(true, Ordering::Relaxed),
                // Longer than PATH_MAX, or a rename raced the lookup: walk.
                Err(Errno::ENAMETOOLONG | Errno::EAGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.walk(rel, flags)
    }

    /// [`Tree::open_dir_rel`] one component at a time, each opened `O_NOFOLLOW`.
    fn walk(&self, rel: &Path, flags: OFlag) -> io::Result<OwnedFd> {
        let mut fd = self.dup_root()?;
        let parts: Vec<_> = rel.components().collect();
        for (i, c) in parts.iter().enumerate() {
            let Component::Normal(name) = c else { return Err(io::ErrorKind::InvalidInput.into()) };
            let last = i + 1 == parts.len();
            let f = if last { flags } else { dir_flags() };
            fd = match openat(&fd, *name, f | OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY, Mode::empty()) {
                Ok(next) => next,
                // O_DIRECTORY|O_NOFOLLOW on a symlink says ENOTDIR (or ELOOP): look.
                Err(Errno::ELOOP) => return Err(planted(rel)),
                Err(Errno::ENOTDIR)
                    if nix::sys::stat::fstatat(&fd, *name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                        .is_ok_and(|s| s.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK) =>
                {
                    return Err(planted(rel))
                }
                Err(e) => return Err(e.into()),
            };
        }
        Ok(fd)
    }
}

/// `/proc/self/fd/N` (followed, exactly the file `dir` holds open), or `NAME` beneath it.
pub(super) fn proc_path(dir: &OwnedFd, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if !name.is_empty() {
        p.push(name);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_symlinked_directory_is_refused_at_any_depth() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("a/b")).unwrap();
        std::fs::write(data.join("a/b/f"), b"x").unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("f"), b"secret").unwrap();
        symlink(&outside, data.join("a/link")).unwrap();
        let tree = Tree::open(&data).unwrap();
        assert_eq!(std::fs::read(tree.at(&data.join("a/b/f")).unwrap().path()).unwrap(), b"x");
        let err = tree.at(&data.join("a/link/f")).err().expect("a symlinked directory is not followed");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(tree.at(&tmp.path().join("outside/f")).is_err(), "only paths in the tree");
        assert!(tree.at(&data.join("a/../../outside/f")).is_err());
        let names: Vec<_> = std::fs::read_dir(tree.dir(&data.join("a")).unwrap().path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn paths_longer_than_path_max_are_walked() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut deep = data.clone();
        for i in 0..40 {
            deep.push(format!("{i:03}{}", "d".repeat(200)));
        }
        assert!(deep.as_os_str().len() > 4096);
        // Made through the tree itself: the plain path is too long for the kernel.
        std::fs::create_dir(&data).unwrap();
        let tree = Tree::open(&data).unwrap();
        let mut p = data.clone();
        for c in deep.strip_prefix(&data).unwrap().components() {
            p.push(c);
            std::fs::create_dir(tree.at(&p).unwrap().path()).unwrap();
        }
        std::fs::write(tree.at(&deep.join("f")).unwrap().path(), b"deep").unwrap();
        assert_eq!(std::fs::read(tree.at(&deep.join("f")).unwrap().path()).unwrap(), b"deep");
        // A symlink deep in such a path is refused by the walk too.
        symlink(tmp.path(), tree.at(&deep.join("link")).unwrap().path()).unwrap();
        let err = tree.at(&deep.join("link/f")).err().expect("not followed");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
}
