//! Which files exist: from header feature `files-recorded` on, every regular file has a
//! record in the store from its creation (an empty file too, committed with its first
//! commit), so a data file whose rows were deleted reads as an integrity error, never as an
//! empty file (`FileState::load`, `Volume::file_size`, `fsck`).
//!
//! Owns the in-place upgrade of a volume made before that: one walk of the backing tree
//! gives every record-less file (all of them empty, or the store would already refuse them)
//! an empty record, trusted this once, then the feature bit is set.

use super::volume::Volume;
use crate::format::ObjectKind;
use crate::keys::FileId;
use crate::store::Change;
use crate::Result;

/// Records written per store transaction during the upgrade.
const BATCH: usize = 4096;

impl Volume {
    /// The ids of record-less, empty regular files in the backing tree (for the upgrade).
    fn unrecorded_empty_files(&self) -> Result<Vec<FileId>> {
        let empty_len = self.layout().physical_len(0);
        let mut out = std::collections::HashSet::new();
        self.walk_tree(
            &mut |obj| {
                // A file holding data without a record is refused already (and fsck's to report).
                let empty_file = obj.header.kind == ObjectKind::File && obj.len <= empty_len;
                if empty_file && self.store().file_size(&obj.header.id)?.is_none() {
                    out.insert(obj.header.id);
                }
                Ok(())
            },
            &mut |_, _| Ok(()),
        )?;
        Ok(out.into_iter().collect())
    }

    /// A volume made before every file had a record: gives each record-less (empty) file its
    /// empty record, then sets the feature bit (a crash in between only repeats the walk).
    /// Read-only storage defers it.
    pub(super) fn record_files_upgrade(&self) -> Result<()> {
        let done = self.upgrade(crate::format::FEATURE_FILES_RECORDED, "recording every file", || {
            let ids = self.unrecorded_empty_files()?;
            let records: Vec<(u8, [u8; 16])> = ids.iter().map(|id| super::file::empty_record(&self.core, id)).collect();
            for (ids, records) in ids.chunks(BATCH).zip(records.chunks(BATCH)) {
                let changes: Vec<Change<'_>> = ids
                    .iter()
                    .zip(records)
                    .map(|(id, (cipher, mac))| Change::PutFile { id, size: 0, cipher: *cipher, mac })
                    .collect();
                self.store().apply(&changes)?;
            }
            Ok(())
        })?;
        self.core.files_recorded.store(done, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}
