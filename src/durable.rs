//! Durable whole-file writes: the one way small metadata files (volume header, keystore)
//! are written, so a crash leaves either the old file or the new one, never a mix; and the
//! lock that serializes writers of a volume's header across processes.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to a temporary file beside `path` (mode `mode`), syncs it, renames it over
/// `path` and syncs the directory.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    replace_file_then(path, bytes, mode, true)
}

/// [`replace_file`], with no fsync when `durable` is false (the rename is still atomic: the
/// file is the old or the new one, but a power cut may leave the old one).
pub fn replace_file_then(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // A new name of our own (O_EXCL|O_NOFOLLOW): a planted `NAME.tmp` symlink or file is
    // never opened, so nothing outside the directory can be overwritten through it.
    let (mut f, tmp) = crate::confine::create_temp(path, mode)?;
    let written = f.write_all(bytes).map_err(|e| Error::io(&tmp, "write", e)).and_then(|()| {
        if durable {
            f.sync_all().map_err(|e| Error::io(&tmp, "fsync", e))
        } else {
            Ok(())
        }
    });
    drop(f);
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path).map_err(|e| Error::io(path, "rename into place", e))) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        sync_dir(dir)
    } else {
        Ok(())
    }
}

/// Makes a directory's entries (creations, renames, unlinks) durable.
/// (Opened `O_DIRECTORY|O_NONBLOCK`: whatever is planted there, this never blocks.)
pub fn sync_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, "fsync directory", e))
}

/// Held while a process rewrites a volume's header (KEK rotation, root rotation, shred): an
/// exclusive `flock` on the CIPHERDIR directory itself, so a mount's daemon and a command
/// run beside it never interleave. Waits for the current holder.
pub fn lock_header(cipherdir: &Path) -> Result<nix::fcntl::Flock<File>> {
    let dir = File::open(cipherdir).map_err(|e| Error::io(cipherdir, "open", e))?;
    nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::io(cipherdir, "lock volume header", e.into()))
}
