//! Which files exist: from header feature `files-recorded` on, every regular file has a
//! record in the store from its creation (an empty file too, committed with its first
//! commit), so a data file whose rows were deleted reads as an integrity error, never as an
//! empty file (`FileState::load`, `Volume::file_size`, `fsck`).
//!
//! Owns the in-place upgrade of a volume made before that: one walk of the backing tree
//! gives every record-less file (all of them empty, or the store would already refuse them)
//! an empty record, trusted this once, then the feature bit is set.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::volume::Volume;
use crate::format::OBJECT_HEADER_LEN;
use crate::keys::FileId;
use crate::store::Change;
use crate::{Error, Result};

/// Records written per store transaction during the upgrade.
const BATCH: usize = 4096;

impl Volume {
    /// The ids of record-less, empty regular files in the backing tree (for the upgrade).
    fn unrecorded_empty_files(&self) -> Result<Vec<FileId>> {
        let empty_len = self.layout().physical_len(0);
        let mut out = Vec::new();
        let mut stack: Vec<PathBuf> = vec![self.data_dir().to_path_buf()];
        while let Some(dir) = stack.pop() {
            let listed = self.core.tree.dir(&dir).map_err(|e| Error::io(&dir, "open directory", e))?;
            for e in fs::read_dir(listed.path()).map_err(|e| Error::io(&dir, "read directory", e))? {
                let e = e.map_err(|e| Error::io(&dir, "read directory", e))?;
                let name = e.file_name();
                if name.as_encoded_bytes().first() == Some(&b'.') {
                    continue; // the directory id file, entries being made
                }
                let backing = dir.join(&name);
                let t = e.file_type().map_err(|err| Error::io(&backing, "stat", err))?;
                if t.is_dir() {
                    stack.push(backing);
                    continue;
                }
                if !t.is_file() {
                    continue;
                }
                let at = self.core.tree.at(&backing).map_err(|e| Error::io(&backing, "open", e))?;
                let file = crate::confine::open_file(at.path(), false).map_err(|e| e.renamed(&backing))?;
                let len = file.metadata().map_err(|e| Error::io(&backing, "stat", e))?.size();
                if len < OBJECT_HEADER_LEN as u64 || len > empty_len {
                    continue; // header-less (fsck's) or holding data (refused without a record already)
                }
                let Ok(id) = super::volume::read_file_id(&file, at.path(), &backing) else { continue };
                if self.store().file_size(&id)?.is_none() && !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// A volume made before every file had a record: gives each record-less (empty) file its
    /// empty record, then sets the feature bit (a crash in between only repeats the walk).
    /// Read-only storage defers it.
    pub(super) fn record_files_upgrade(&self) -> Result<()> {
        let done = self.upgrade(crate::format::FEATURE_FILES_RECORDED, "recording every file", || {
            let ids = self.unrecorded_empty_files()?;
            let mac = |id: &FileId| super::file::record_mac(&self.core, id, 0, std::iter::empty());
            let macs: Vec<[u8; 16]> = ids.iter().map(mac).collect();
            let cipher = self.core.cipher_code;
            for (ids, macs) in ids.chunks(BATCH).zip(macs.chunks(BATCH)) {
                let changes: Vec<Change<'_>> =
                    ids.iter().zip(macs).map(|(id, mac)| Change::PutFile { id, size: 0, cipher, mac }).collect();
                self.store().apply(&changes)?;
            }
            Ok(())
        })?;
        self.core.files_recorded.store(done, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}
