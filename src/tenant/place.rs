//! Where a tenant's volume lives, pinned: `CIPHERDIR/tenants/<id>/` opened once, never
//! through a symlink, and used from then on through its descriptor (`/proc/self/fd/N`), so a
//! directory swapped for a symlink (or moved) after the check cannot redirect a later open,
//! write or removal (DESIGN.md §7).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::Mode;

use crate::fs::{TenantEntry, Volume, TENANTS_DIR};
use crate::{Error, Result};

fn dir_flags() -> OFlag {
    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// A tenant's volume directory, held open.
pub struct Place {
    tenants: OwnedFd,
    dir: OwnedFd,
    name: String,
    path: PathBuf,
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tenants/{}", self.name)
    }
}

impl Place {
    /// Opens tenant `entry`'s directory in `outer`'s CIPHERDIR; `None` if it (or `tenants/`)
    /// is not there; an integrity error if either is something other than a directory.
    pub fn open(outer: &Volume, entry: &TenantEntry) -> Result<Option<Place>> {
        Self::open_name(outer, &crate::format::hex(&entry.id))
    }

    /// [`Self::open`] of `tenants/NAME`.
    pub fn open_name(outer: &Volume, name: &str) -> Result<Option<Place>> {
        let tenants_path = outer.cipherdir().join(TENANTS_DIR);
        let name = name.to_string();
        let planted = |p: &Path| Error::integrity(p, "expected a directory, found something else (planted?)");
        let tenants = match open(&tenants_path, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => return Err(planted(&tenants_path)),
            Err(e) => return Err(Error::io(&tenants_path, "open", e.into())),
        };
        let shown = tenants_path.join(&name);
        let dir = match openat(&tenants, name.as_str(), dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => return Err(planted(&shown)),
            Err(e) => return Err(Error::io(&shown, "open", e.into())),
        };
        let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        Ok(Some(Place { tenants, dir, name, path }))
    }

    /// The path every use goes through (valid while `self` lives).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory and everything in it (its entries through the pinned
    /// descriptor, symlinks among them removed, not followed; then the directory itself by
    /// name from the pinned `tenants/`).
    pub fn remove(self) -> Result<()> {
        let shown = PathBuf::from(TENANTS_DIR).join(&self.name);
        let entries = std::fs::read_dir(&self.path).map_err(|e| Error::io(&shown, "read directory", e))?;
        for e in entries {
            let e = e.map_err(|e| Error::io(&shown, "read directory", e))?;
            let p = e.path();
            let is_dir = std::fs::symlink_metadata(&p).map(|m| m.is_dir()).unwrap_or(false);
            let removed = if is_dir { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            removed.map_err(|err| Error::io(shown.join(e.file_name()), "remove", err))?;
        }
        let _keep = self.dir;
        nix::unistd::unlinkat(&self.tenants, self.name.as_str(), nix::unistd::UnlinkatFlags::RemoveDir)
            .map_err(|e| Error::io(&shown, "remove directory", e.into()))
    }
}
