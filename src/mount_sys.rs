//! Mounting as root: the `mount(2)` call that `fusermount3` makes for everyone else, made by
//! the daemon itself, with the type `fuse.envelopefs`. (fuser's own direct mount always says
//! `fuse`, so `findmnt -t fuse.envelopefs`, `umount -t fuse.envelopefs` and monitoring that
//! filters by type would not find a mount made as root; through `fusermount3` the subtype
//! option gives the same type.) Owns the `/dev/fuse` descriptor until the session takes it,
//! the unmount of what it mounted, and the one call of `fusermount3 -u` for mounts made
//! through it.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// The file system type a mount shows in `/proc/mounts`.
pub const FS_TYPE: &str = "fuse.envelopefs";

/// `fusermount3 -u` (`-z`: `lazy`, detached now) of `mountpoint`: `Ok(Err(why))` with its
/// message if it refused (busy, not a mount of this user's), `Err` if it cannot be run.
pub fn fusermount_unmount(mountpoint: &Path, lazy: bool) -> std::io::Result<Result<(), String>> {
    let mut c = std::process::Command::new("fusermount3");
    c.arg(if lazy { "-uz" } else { "-u" }).arg(mountpoint).stdin(std::process::Stdio::null());
    let out = c.output()?;
    Ok(match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    })
}

/// Mounts a FUSE file system on `mountpoint` named `fsname`; returns the `/dev/fuse`
/// descriptor to serve it through.
pub fn mount(mountpoint: &Path, fsname: &str, read_only: bool, allow_other: bool) -> std::io::Result<OwnedFd> {
    let dev = OpenOptions::new().read(true).write(true).custom_flags(nix::libc::O_CLOEXEC).open("/dev/fuse")?;
    let root_type = std::fs::metadata(mountpoint)?.permissions().mode() & nix::libc::S_IFMT;
    let mut data = format!(
        "fd={},rootmode={root_type:o},user_id={},group_id={},default_permissions",
        dev.as_raw_fd(),
        nix::unistd::getuid(),
        nix::unistd::getgid()
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    nix::mount::mount(Some(fsname), mountpoint, Some(FS_TYPE), flags, Some(data.as_str()))
        .map_err(std::io::Error::from)?;
    Ok(dev.into())
}

/// What [`mount`] mounted (the mount's device number, from mountinfo, tells it from a later
/// mount at the same place).
#[derive(Debug)]
pub struct Mounted {
    path: PathBuf,
    dev: Option<String>,
}

impl Mounted {
    /// The mount just made at `mountpoint`.
    pub fn new(mountpoint: &Path) -> Self {
        Mounted { path: mountpoint.to_path_buf(), dev: device_at(mountpoint) }
    }

    /// Unmounts it if it is still there (as `umount` does: refused while busy).
    pub fn unmount(&self) -> std::io::Result<()> {
        match &self.dev {
            Some(dev) if device_at(&self.path).as_ref() != Some(dev) => Ok(()), // gone already
            _ => nix::mount::umount2(&self.path, MntFlags::empty()).map_err(std::io::Error::from),
        }
    }
}

impl Mounted {
    /// Detaches it if it is still there (serving ended without an unmount): a daemon that
    /// stops for any reason leaves no dead mount behind.
    pub fn detach_if_still_there(&self) {
        if self.dev.is_some() && device_at(&self.path) == self.dev {
            let _ = nix::mount::umount2(&self.path, MntFlags::MNT_DETACH);
        }
    }
}

/// The device number (`MAJOR:MINOR`) of the envelopefs mount on top at `mountpoint`: a
/// mount stacked on ours hides it, and is never ours to unmount.
fn device_at(mountpoint: &Path) -> Option<String> {
    crate::mountinfo::fuse_at(mountpoint).filter(|m| m.fstype == FS_TYPE).map(|m| m.dev)
}
