//! `rotate --rekey PATH`: re-encrypt a file's data under fresh DEKs (for a leaked DEK).
//!
//! Crash-safe by construction: the data is copied into a new data file with a new file id
//! (and so new DEKs) beside the old one, made durable, then renamed over it in one atomic
//! step; only then are the old file's wrapped DEKs deleted. A crash leaves either the old
//! file or the new one, never a mix.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::meta::time;
use super::volume::Volume;
use crate::store::Change;
use crate::{durable, Error, Result};

const COPY_CHUNK: usize = 1 << 20;

impl Volume {
    /// Re-encrypts the file at `path` under fresh DEKs; returns the number of bytes copied.
    pub fn rekey(&self, path: &Path) -> Result<u64> {
        let backing = self.backing_path(path)?;
        let at = self.at(&backing, path)?;
        let meta = fs::symlink_metadata(at.path()).map_err(|_| Error::NotFound(path.into()))?;
        if !meta.is_file() {
            return Err(Error::InvalidArgument(format!("{}: only regular files can be rekeyed", path.display())));
        }
        if meta.nlink() > 1 {
            return Err(Error::InvalidArgument(format!(
                "{}: has {} hard links; rekeying would split them",
                path.display(),
                meta.nlink()
            )));
        }
        let busy =
            || Error::Busy { path: path.into(), reason: "the file is open or changed; close it and retry".into() };
        if self.open_table().get(&self.file_id_of(&backing, path)?).is_some_and(|(_, n)| *n > 0) {
            return Err(busy());
        }
        self.flush_pending()?; // a recently closed file's metadata, so the copy sees it all
        let old = self.open_file(path, false)?;
        let dir = backing.parent().expect("a backing path has a parent");
        let tmp = dir.join(format!(".rekey-{:016x}", u64::from_le_bytes(crate::crypto::random_array())));
        let tmp_at = self.at(&tmp, path)?;
        // Bound to the entry it will be renamed to.
        let entry = self.entry_of(&backing)?;
        let (new, _) = self.create_backing(&tmp, &entry, path.to_path_buf(), meta.mode() & 0o7777, None)?;
        let result = (|| {
            let size = old.len();
            let mut buf = vec![0u8; COPY_CHUNK];
            // Copy only the data regions: holes stay holes.
            let mut pos = 0;
            while pos < size {
                let Ok(start) = old.seek_data(pos) else { break };
                let end = old.seek_hole(start)?;
                let mut at = start;
                while at < end {
                    let n = ((end - at) as usize).min(COPY_CHUNK);
                    old.read_at(at, &mut buf[..n])?;
                    new.write_at(at, &buf[..n])?;
                    at += n as u64;
                }
                pos = end;
            }
            new.set_len(size)?;
            new.sync()?;
            self.copy_xattrs(path, &new.file_id(), tmp_at.path(), &entry)?;
            tmp_at.chown(Some(meta.uid()), Some(meta.gid())).map_err(|e| Error::io(path, "chown", e.into()))?;
            tmp_at.chmod(meta.mode()).map_err(|e| Error::io(path, "chmod", e.into()))?;
            let times = fs::FileTimes::new()
                .set_accessed(time(meta.atime(), meta.atime_nsec()))
                .set_modified(time(meta.mtime(), meta.mtime_nsec()));
            crate::confine::open_file_io(tmp_at.path(), true)
                .and_then(|f| f.set_times(times))
                .map_err(|e| Error::io(path, "utimens", e))?;
            Ok(size)
        })();
        let (old_id, new_id) = (old.file_id(), new.file_id());
        new.close()?;
        // Swap only if nobody opened or changed the file meanwhile (a mounted volume): the
        // open table stays locked from the check to the rename, so no open slips in between.
        let swapped = result.and_then(|size| {
            let table = self.open_table();
            let after = fs::symlink_metadata(at.path()).map_err(|_| Error::NotFound(path.into()))?;
            let unchanged = (after.ino(), after.size(), after.mtime(), after.mtime_nsec(), after.ctime_nsec())
                == (meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec(), meta.ctime_nsec());
            if table.get(&old_id).map(|(_, n)| *n) != Some(1) || !unchanged {
                return Err(busy());
            }
            let new_ino = fs::symlink_metadata(tmp_at.path()).map(|m| m.ino()).ok();
            fs::rename(tmp_at.path(), at.path()).map_err(|e| Error::io(path, "rename rekeyed file into place", e))?;
            if let Some(new_ino) = new_ino {
                self.alias_inode(meta.ino(), new_ino);
            }
            Ok(size)
        });
        let closed = old.close();
        let size = match swapped {
            Ok(size) => size,
            Err(e) => {
                // The copy goes with the state its close kept (`fs::linger`).
                self.core.forget_closed(&new_id);
                let _ = fs::remove_file(tmp_at.path());
                let _ = self.store().apply(&[Change::DeleteFile { id: &new_id }]);
                return closed.and(Err(e));
            }
        };
        // The old state, kept by its close above, goes before its record does.
        self.core.forget_closed(&old_id);
        closed?;
        durable::sync_dir(at.path().parent().unwrap_or(dir))?;
        self.store().apply(&[Change::DeleteFile { id: &old_id }])?;
        self.keys().forget(&old_id, 0);
        Ok(size)
    }
}
