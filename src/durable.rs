//! Durable whole-file writes: the one way small metadata files (volume header, keystore)
//! are written, so a crash leaves either the old file or the new one, never a mix; and the
//! lock that serializes writers of a volume's header across processes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to a temporary file beside `path` (mode `mode`), syncs it, renames it over
/// `path` and syncs the directory.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name =
        path.file_name().ok_or_else(|| Error::InvalidArgument(format!("{}: not a file path", path.display())))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, "create", e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, "write", e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, "fsync", e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| Error::io(path, "rename into place", e))?;
    sync_dir(dir)
}

/// Makes a directory's entries (creations, renames, unlinks) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, "fsync directory", e))
}

/// Held while a process rewrites a volume's header (KEK rotation, root rotation, shred): an
/// exclusive `flock` on the CIPHERDIR directory itself, so a mount's daemon and a command
/// run beside it never interleave. Waits for the current holder.
pub fn lock_header(cipherdir: &Path) -> Result<nix::fcntl::Flock<File>> {
    let dir = File::open(cipherdir).map_err(|e| Error::io(cipherdir, "open", e))?;
    nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::io(cipherdir, "lock volume header", e.into()))
}
