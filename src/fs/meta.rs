//! Attributes, ownership, times, special files, links and renames with flags: the
//! namespace operations beyond plain files and directories.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::RenameFlags;
use nix::sys::stat::{mknodat, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::made::Made;
use super::volume::{EntryKind, Volume};
use crate::{Error, Result};

/// What `stat` shows for an entry (the size is the plaintext size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// The backing inode number (stable across mounts; shared by hardlinks).
    pub ino: u64,
    pub kind: EntryKind,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Permission bits (including setuid/setgid/sticky).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
}

/// A time to set: a given time, or now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    At(SystemTime),
    Now,
}

/// How `rename` treats an existing target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace it (POSIX rename).
    Replace,
    /// Fail with `Exists` (RENAME_NOREPLACE).
    NoReplace,
    /// Swap the two entries atomically (RENAME_EXCHANGE).
    Exchange,
}

/// File-system capacity, from the backing file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Maximum plaintext symlink target (its encoding must fit in PATH_MAX).
const SYMLINK_MAX: usize = 3000;

/// The kind of an entry from its `st_mode`.
pub(super) fn kind_of_mode(mode: u32) -> EntryKind {
    match mode & libc_s_ifmt() {
        m if m == SFlag::S_IFREG.bits() => EntryKind::File,
        m if m == SFlag::S_IFDIR.bits() => EntryKind::Directory,
        m if m == SFlag::S_IFLNK.bits() => EntryKind::Symlink,
        m if m == SFlag::S_IFIFO.bits() => EntryKind::Fifo,
        m if m == SFlag::S_IFSOCK.bits() => EntryKind::Socket,
        m if m == SFlag::S_IFCHR.bits() => EntryKind::CharDevice,
        _ => EntryKind::BlockDevice,
    }
}

/// An entry's kind from its directory entry's type.
pub(super) fn kind_of_type(t: nix::dir::Type) -> EntryKind {
    use nix::dir::Type;
    match t {
        Type::File => EntryKind::File,
        Type::Directory => EntryKind::Directory,
        Type::Symlink => EntryKind::Symlink,
        Type::Fifo => EntryKind::Fifo,
        Type::Socket => EntryKind::Socket,
        Type::CharacterDevice => EntryKind::CharDevice,
        Type::BlockDevice => EntryKind::BlockDevice,
    }
}

/// What a backing entry's attributes are made of: its `lstat`, taken through its parent's
/// descriptor (`fstatat`, [`super::volume::lstat_at`]) or from a `std::fs::Metadata`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Stat {
    pub ino: u64,
    pub mode: u32,
    nlink: u64,
    uid: u32,
    gid: u32,
    rdev: u64,
    blocks: u64,
    atime: (i64, i64),
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stat {
    pub(super) fn kind(&self) -> EntryKind {
        kind_of_mode(self.mode)
    }
}

impl From<&fs::Metadata> for Stat {
    fn from(m: &fs::Metadata) -> Stat {
        Stat {
            ino: m.ino(),
            mode: m.mode(),
            nlink: m.nlink(),
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev(),
            blocks: m.blocks(),
            atime: (m.atime(), m.atime_nsec()),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

impl From<&nix::sys::stat::FileStat> for Stat {
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    fn from(s: &nix::sys::stat::FileStat) -> Stat {
        Stat {
            ino: s.st_ino as u64,
            mode: s.st_mode as u32,
            nlink: s.st_nlink as u64,
            uid: s.st_uid,
            gid: s.st_gid,
            rdev: s.st_rdev as u64,
            blocks: s.st_blocks as u64,
            atime: (s.st_atime as i64, s.st_atime_nsec as i64),
            mtime: (s.st_mtime as i64, s.st_mtime_nsec as i64),
            ctime: (s.st_ctime as i64, s.st_ctime_nsec as i64),
        }
    }
}

/// The time `secs` seconds and `nsecs` nanoseconds after the epoch (`secs` negative: before
/// it), as `stat` and the FUSE protocol give times.
pub fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

fn errno(path: &Path, op: &'static str, e: nix::Error) -> Error {
    Error::io(path, op, std::io::Error::from_raw_os_error(e as i32))
}

fn time_spec(t: Option<SetTime>) -> TimeSpec {
    match t {
        None => TimeSpec::UTIME_OMIT,
        Some(SetTime::Now) => TimeSpec::UTIME_NOW,
        Some(SetTime::At(t)) => {
            let (secs, nsecs) = epoch_parts(t);
            TimeSpec::new(secs, i64::from(nsecs))
        }
    }
}

/// [`time`]'s inverse: whole seconds since the epoch (rounded down, negative before it) and
/// the nanoseconds after them. (A time before the epoch used to be set as the epoch itself.)
pub fn epoch_parts(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
        Err(before) => {
            let d = before.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (-secs, 0),
                n => (-secs - 1, 1_000_000_000 - n),
            }
        }
    }
}

/// The mode `st_mode` becomes when a regular file loses setuid, and setgid where its group
/// may execute (what the VFS does when a caller without CAP_FSETID writes or truncates it, or
/// anyone chowns it), if that changes it.
pub(super) fn without_privs(st_mode: u32) -> Option<u32> {
    let perm = st_mode & 0o7777;
    let kill = if perm & 0o010 != 0 { 0o6000 } else { 0o4000 };
    (st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG && perm & kill != 0).then_some(perm & !kill)
}

/// The changes of one `setattr` other than a new size, for [`Volume::change_attrs`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttrChanges {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// Clear setuid, and setgid where the group may execute, of a regular file (what the VFS
    /// does when a caller without CAP_FSETID writes or truncates it; a chown does it anyway).
    pub drop_privs: bool,
}

impl AttrChanges {
    /// Whether it changes anything but the setuid and setgid bits.
    pub fn changes_entry(&self) -> bool {
        *self != AttrChanges { drop_privs: self.drop_privs, ..Default::default() }
    }
}

/// What is done to a new entry, pinned, before it takes its name (owner, mode, times).
type Finish<'a> = dyn Fn(&Made) -> std::io::Result<()> + 'a;

impl Volume {
    /// Attributes of `path` (`""` is the root).
    pub fn getattr(&self, path: &Path) -> Result<Attr> {
        let backing = self.backing_or_root(path)?;
        self.attr_of_backing(&backing, path, None)
    }

    /// Attributes of `path` if it is (still) backing inode `ino` (see
    /// [`Volume::open_inode`]), else NotFound — checked before anything is read from it.
    pub fn getattr_inode(&self, path: &Path, ino: u64) -> Result<Attr> {
        let backing = self.backing_or_root(path)?;
        self.attr_of_backing(&backing, path, Some(ino))
    }

    /// Attributes of the entry at `backing` (`path` names it in errors), if it is inode
    /// `expect` when given.
    pub(super) fn attr_of_backing(&self, backing: &Path, path: &Path, expect: Option<u64>) -> Result<Attr> {
        self.attr_at(&self.at(backing, path)?, backing, path, expect)
    }

    /// [`Volume::attr_of_backing`] of the entry `at` reaches.
    pub(super) fn attr_at(
        &self,
        at: &super::tree::At,
        backing: &Path,
        path: &Path,
        expect: Option<u64>,
    ) -> Result<Attr> {
        let meta = super::volume::lstat_at(at, path)?;
        if expect.is_some_and(|ino| !self.is_inode(meta.ino, ino)) {
            return Err(Error::NotFound(path.into()));
        }
        let kind = meta.kind();
        let size = match kind {
            EntryKind::File => self.size_of_backing(backing, meta.ino, path)?,
            EntryKind::Symlink => self.readlink_at(backing, path)?.len() as u64,
            EntryKind::Directory => 4096,
            _ => 0,
        };
        Ok(attr_from(meta, kind, size))
    }

    pub(super) fn backing_or_root(&self, path: &Path) -> Result<PathBuf> {
        if Self::is_root(path) {
            Ok(self.data_dir().to_path_buf())
        } else {
            self.backing_path(path)
        }
    }

    pub fn chmod(&self, path: &Path, mode: u32) -> Result<()> {
        // Never through a symlink planted in the backing tree.
        self.at(&self.backing_or_root(path)?, path)?.chmod(mode).map_err(|e| match e {
            nix::Error::ELOOP => Error::integrity(path, "expected a file or directory, found a symbolic link"),
            e => errno(path, "chmod", e),
        })
    }

    /// Applies `ch` to the entry at `path`, if it is (still) backing inode `expect` when given
    /// (else NotFound, before anything changes), through one lookup of its backing entry
    /// (not one per change and one more for the attributes: `tar` sets times, owner and mode
    /// of every file it unpacks, each a request), and returns its attributes after.
    ///
    /// The entry is pinned by an `O_PATH` descriptor, checked and changed through it: a
    /// file swapped in under its name in the backing tree after the check (by whoever can
    /// write CIPHERDIR) gets none of the changes — not the owner and setuid bits a root
    /// `tar` sets.
    pub fn change_attrs(&self, path: &Path, expect: Option<u64>, ch: &AttrChanges) -> Result<Attr> {
        let (at, backing) = self.apply_attr_changes(path, expect, ch)?;
        self.attr_at(&at, &backing, path, expect)
    }

    /// [`Volume::change_attrs`] without the attributes after: the entry (its parent and
    /// name) and its backing path, for them.
    pub(super) fn apply_attr_changes(
        &self,
        path: &Path,
        expect: Option<u64>,
        ch: &AttrChanges,
    ) -> Result<(super::tree::At, PathBuf)> {
        use nix::fcntl::{AtFlags, OFlag};
        let backing = self.backing_or_root(path)?;
        let at = self.at(&backing, path)?;
        let pinned = nix::fcntl::openat(
            at.dir(),
            at.name(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| match e {
            nix::Error::ENOENT => Error::NotFound(path.into()),
            e => errno(path, "open", e),
        })?;
        // The inode itself (a magic link: followed to exactly this inode, never further).
        let itself = super::tree::proc_path(&pinned, OsStr::new(""));
        let stat = || nix::sys::stat::fstat(&pinned).map_err(|e| errno(path, "stat", e));
        let mut st = stat()?;
        if expect.is_some_and(|ino| !self.is_inode(st.st_ino, ino)) {
            return Err(Error::NotFound(path.into()));
        }
        let is_symlink = st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK;
        let chmod = |mode: u32| {
            if is_symlink {
                // The kernel never asks to chmod a symlink of ours (chmod follows links).
                return Err(Error::integrity(path, "expected a file or directory, found a symbolic link"));
            }
            fs::set_permissions(&itself, std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777))
                .map_err(|e| Error::io(path, "chmod", e))
        };
        let chown = ch.uid.is_some() || ch.gid.is_some();
        if chown {
            nix::unistd::fchownat(
                &pinned,
                "",
                ch.uid.map(nix::unistd::Uid::from_raw),
                ch.gid.map(nix::unistd::Gid::from_raw),
                AtFlags::AT_EMPTY_PATH,
            )
            .map_err(|e| errno(path, "chown", e))?;
            st = stat()?;
        }
        // Before an explicit mode, which wins (as when the kernel turned these into a mode).
        if chown || ch.drop_privs {
            if let Some(mode) = without_privs(st.st_mode) {
                chmod(mode)?;
            }
        }
        if let Some(mode) = ch.mode {
            chmod(mode)?;
        }
        if ch.atime.is_some() || ch.mtime.is_some() {
            // Followed, the magic link is the pinned inode itself (a symlink's own times).
            let (a, m) = (time_spec(ch.atime), time_spec(ch.mtime));
            utimensat(at.dir(), &itself, &a, &m, UtimensatFlags::FollowSymlink)
                .map_err(|e| errno(path, "utimensat", e))?;
        }
        Ok((at, backing))
    }

    /// Truncates or extends the file at `path`.
    pub fn truncate(&self, path: &Path, size: u64) -> Result<()> {
        self.truncate_inode(path, None, size)
    }

    /// [`Volume::truncate`] of the file at `path` only if it is (still) backing inode `ino`,
    /// when given (see [`Volume::open_inode`]).
    pub fn truncate_inode(&self, path: &Path, ino: Option<u64>, size: u64) -> Result<()> {
        let f = self.open_inode(path, true, ino)?;
        f.set_len(size)?;
        f.close()
    }

    /// Creates a symlink whose target is stored encrypted (random nonce: equal targets do not
    /// look equal).
    pub fn symlink(&self, path: &Path, target: &OsStr) -> Result<()> {
        self.symlink_with(path, target, None)
    }

    /// [`Volume::symlink`], owned by `owner` (uid, gid) if given.
    pub fn symlink_owned(&self, path: &Path, target: &OsStr, owner: Option<(u32, u32)>) -> Result<()> {
        match owner {
            Some((uid, gid)) => self.symlink_with(path, target, Some(&|made: &Made| made.chown(Some(uid), Some(gid)))),
            None => self.symlink_with(path, target, None),
        }
    }

    /// [`Volume::symlink`], `finish`ed (owner, times) before it takes its name, if there is
    /// anything to finish; else made at its name at once (a symlink is made whole).
    pub(super) fn symlink_with(&self, path: &Path, target: &OsStr, finish: Option<&Finish>) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        if target.len() > SYMLINK_MAX {
            return Err(Error::NameTooLong(path.into()));
        }
        let r = self.resolve(path)?;
        self.remember_name(&r)?;
        let entry = super::binding::Entry::new(r.parent_id, &r.encoded.backing);
        let sealed = self.seal_target(&entry, target.as_bytes());
        let make = |at: &super::tree::At| std::os::unix::fs::symlink(&sealed, at.path());
        match finish {
            Some(finish) => self.make_entry(&r.backing(), path, "symlink", (make, SFlag::S_IFLNK), finish),
            None => make(&self.at(&r.backing(), path)?).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Error::Exists(path.into()),
                _ => Error::io(path, "symlink", e),
            }),
        }
    }

    /// Makes an entry of `kind` with `make` at a hidden name beside `backing`, `finish`es it
    /// there (pinned and checked to be the one made, `made::Made`) and moves it to `backing`
    /// (Exists, naming `path`, if something is there), as a directory is made (`make_dir`):
    /// no name ever shows it half-made, and no change goes by a name that someone else could
    /// have put another entry at meanwhile. If a step after the pin fails, the entry made
    /// is removed (only it).
    fn make_entry(
        &self,
        backing: &Path,
        path: &Path,
        what: &'static str,
        (make, kind): (impl FnOnce(&super::tree::At) -> std::io::Result<()>, SFlag),
        finish: impl FnOnce(&Made) -> std::io::Result<()>,
    ) -> Result<()> {
        let tmp = self.at(&super::names::temp_sibling(backing), path)?;
        make(&tmp).map_err(|e| Error::io(path, what, e))?;
        // Something else at the hidden name is not the daemon's to remove: left, reported.
        let made = Made::pin(&tmp, kind).map_err(|e| Error::io(path, what, e))?;
        let placed = finish(&made)
            .map_err(|e| Error::io(path, what, e))
            .and_then(|()| super::names::place(&tmp, &self.at(backing, path)?, path));
        if placed.is_err() {
            let _ = made.remove(&tmp, &[]);
        }
        placed
    }

    pub fn readlink(&self, path: &Path) -> Result<std::ffi::OsString> {
        use std::os::unix::ffi::OsStringExt;
        Ok(std::ffi::OsString::from_vec(self.readlink_at(&self.backing_path(path)?, path)?))
    }

    /// The target of the symlink at `backing`, checked to be sealed for that entry.
    pub(super) fn readlink_at(&self, backing: &Path, path: &Path) -> Result<Vec<u8>> {
        let stored = fs::read_link(self.at(backing, path)?.path()).map_err(|e| match e.raw_os_error() {
            Some(22) => Error::InvalidArgument(format!("{}: not a symlink", path.display())),
            _ => Error::NotFound(path.into()),
        })?;
        self.open_target(&self.entry_of(backing)?, stored.as_os_str(), path)
    }

    /// Creates a FIFO, socket or device node.
    pub fn mknod(&self, path: &Path, mode: u32, rdev: u64) -> Result<()> {
        self.mknod_owned(path, mode, rdev, None)
    }

    /// [`Volume::mknod`], owned by `owner` (uid, gid) if given.
    pub fn mknod_owned(&self, path: &Path, mode: u32, rdev: u64, owner: Option<(u32, u32)>) -> Result<()> {
        let kind = SFlag::from_bits_truncate(mode & libc_s_ifmt());
        let make = |tmp: &super::tree::At| {
            mknodat(tmp.dir(), tmp.name(), kind, Mode::from_bits_truncate(mode & 0o7777), rdev).map_err(Into::into)
        };
        let finish = |made: &Made| {
            if let Some((uid, gid)) = owner {
                made.chown(Some(uid), Some(gid))?;
            }
            // Exactly `mode` (after the chown, which clears setuid): the daemon's umask may
            // have cleared bits the caller's did not.
            made.chmod(mode)
        };
        self.make_entry(&self.resolve_new(path)?, path, "mknod", (make, kind), finish)
    }

    /// A new hard link `new` to the file at `existing` (they share the file id and keys).
    pub fn link(&self, existing: &Path, new: &Path) -> Result<()> {
        self.check_scratch_move(existing, new)?;
        let from_backing = self.backing_path(existing)?;
        let from = self.at(&from_backing, existing)?;
        if fs::symlink_metadata(from.path()).map_err(|_| Error::NotFound(existing.into()))?.is_dir() {
            return Err(Error::IsDir(existing.into()));
        }
        let mut added = Vec::new();
        match self.moving(&from_backing, existing)? {
            // A symlink's target is sealed for its one entry: the new link is a copy.
            // (With the owner and times of the link it copies, as a second name of it would.)
            super::binding::Moving::Symlink(target) => {
                use std::os::unix::ffi::OsStrExt;
                let old = fs::symlink_metadata(from.path()).map_err(|e| Error::io(existing, "stat", e))?;
                let keep = |made: &Made| made.keep_owner_and_times(&old);
                return self.symlink_with(new, std::ffi::OsStr::from_bytes(&target), Some(&keep));
            }
            // A file with two names cannot be bound to one of them: bound to the volume.
            super::binding::Moving::File { id, .. } => {
                let entry = self.entry_of(&from_backing)?;
                let new_entry = self.entry_of(&self.resolve_new(new)?)?;
                // Both names bound in the store (one transaction) before the header stops
                // naming one of them.
                added = self.add_links_for_new(&id, &entry, &new_entry)?;
                if let Err(e) = self.write_binding(from.path(), &id, &entry, true, existing) {
                    self.undo_links(added)?;
                    return Err(e);
                }
            }
            _ => {}
        }
        let linked = self.resolve_new(new).and_then(|b| self.at(&b, new)).and_then(|to| {
            fs::hard_link(from.path(), to.path()).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Error::Exists(new.into()),
                _ => Error::io(new, "link", e),
            })
        });
        if linked.is_err() {
            // No row for a name the file did not get (the existing name's row stays: the
            // header says the file is shared now).
            self.undo_links(added)?;
        }
        linked
    }

    /// Renames with RENAME_NOREPLACE / RENAME_EXCHANGE semantics.
    pub fn rename_with(&self, from: &Path, to: &Path, mode: RenameMode) -> Result<()> {
        match mode {
            RenameMode::Replace => self.rename(from, to),
            RenameMode::NoReplace | RenameMode::Exchange => {
                self.check_scratch_move(from, to)?;
                let (bf, bt) = (self.backing_path(from)?, self.backing_path(to)?);
                // Either side may be a directory that moves (exchange): forget both places.
                self.forget_dir_ids(&[&bf, &bt]);
                let flags = if mode == RenameMode::Exchange {
                    RenameFlags::RENAME_EXCHANGE
                } else {
                    RenameFlags::RENAME_NOREPLACE
                };
                let (af, at) = (self.at(&bf, from)?, self.at(&bt, to)?);
                // Both sides checked where they are before anything moves (an exchange binds
                // each anew where the other was).
                let moving = self.moving(&bf, from)?;
                let other = match mode {
                    RenameMode::Exchange => Some(self.moving(&bt, to)?),
                    _ => None,
                };
                let ino = |a: &super::tree::At| fs::symlink_metadata(a.path()).map(|m| m.ino()).unwrap_or(0);
                let (ino_from, ino_to) = (ino(&af), ino(&at));
                if mode == RenameMode::Exchange && ino_from != 0 && ino_from == ino_to {
                    return Ok(()); // two names of one file: nothing changes
                }
                let _in_flight = (
                    self.in_flight(&moving, &bf, &bt)?,
                    match &other {
                        Some(o) => Some(self.in_flight(o, &bt, &bf)?),
                        None => None,
                    },
                );
                let left_links = (
                    self.moving_links(&moving, &bf, &bt)?,
                    match &other {
                        Some(o) => self.moving_links(o, &bt, &bf)?,
                        None => None,
                    },
                );
                let result = self.with_long_names(from, to, mode == RenameMode::Exchange, || {
                    self.move_entry(&moving, &af, &at, &bt, flags).map_err(|e| {
                        match nix::Error::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)) {
                            nix::Error::EEXIST => Error::Exists(to.into()),
                            nix::Error::ENOENT => Error::NotFound(if fs::symlink_metadata(af.path()).is_err() {
                                from.into()
                            } else {
                                to.into()
                            }),
                            e => errno(from, "rename", e),
                        }
                    })
                });
                self.forget_dir_ids(&[&bf, &bt]);
                if let Err(e) = result {
                    self.move_failed_links(left_links.0)?;
                    self.move_failed_links(left_links.1)?;
                    return Err(e);
                }
                // Moved: the rows of the places left go whatever follows.
                self.moved_links(left_links.0)?;
                self.moved_links(left_links.1)?;
                if mode == RenameMode::Exchange || !matches!(moving, super::binding::Moving::Symlink(_)) {
                    self.moved(&moving, &bt, to, ino_from)?;
                }
                if let Some(other) = other {
                    self.moved(&other, &bf, from, ino_to)?;
                }
                Ok(())
            }
        }
    }

    pub fn statfs(&self) -> Result<StatFs> {
        let s = nix::sys::statvfs::fstatvfs(
            self.core.tree.at(self.data_dir()).map_err(|e| Error::io(self.data_dir(), "open", e))?.dir(),
        )
        .map_err(|e| errno(self.data_dir(), "statvfs", e))?;
        Ok(StatFs {
            blocks: s.blocks(),
            bfree: s.blocks_free(),
            bavail: s.blocks_available(),
            files: s.files(),
            ffree: s.files_free(),
            bsize: s.block_size() as u32,
            // Encrypted names are longer than plaintext ones; long ones are hashed, so the full
            // NAME_MAX is available.
            namelen: 255,
            frsize: s.fragment_size() as u32,
        })
    }
}

fn libc_s_ifmt() -> u32 {
    SFlag::S_IFMT.bits()
}

/// Attributes from the backing entry's metadata (a [`Stat`] or `std::fs::Metadata`), with
/// the plaintext `size`.
pub(super) fn attr_from(meta: impl Into<Stat>, kind: EntryKind, size: u64) -> Attr {
    let st: Stat = meta.into();
    Attr {
        ino: st.ino,
        kind,
        size,
        blocks: st.blocks,
        atime: time(st.atime.0, st.atime.1),
        mtime: time(st.mtime.0, st.mtime.1),
        ctime: time(st.ctime.0, st.ctime.1),
        perm: (st.mode & 0o7777) as u16,
        nlink: st.nlink as u32,
        uid: st.uid,
        gid: st.gid,
        rdev: st.rdev as u32,
    }
}
