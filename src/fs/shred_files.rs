//! `shred --file`: delete files with their wrapped DEKs, prove that no wrapped DEK of theirs
//! is left, rotate the KEK (so a stray copy of an old wrapped DEK is useless) and empty the
//! store's write-ahead log — and say only what was verified.
//!
//! Refused before anything is deleted: a path that is not a regular file, a file open on the
//! mount (its DEKs would live until its last close, after the rotation), and a hard-linked
//! file unless every one of its links is named (another link would still read the data).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::volume::Volume;
use crate::keys::FileId;
use crate::kms::Kms;
use crate::{Error, Result};

/// What `shred --file` did, each part verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShredFilesReport {
    /// Files (not names) whose keys were destroyed.
    pub files: usize,
    /// Names removed (more than `files` when hard links were named).
    pub names: usize,
    /// The KEK the store's wrapped DEKs are under now.
    pub kek_id: [u8; 16],
}

impl Volume {
    /// Checks that `paths` may be shredded; returns each file's id (one entry per file).
    pub fn shred_check(&self, paths: &[PathBuf]) -> Result<Vec<FileId>> {
        // The KEK rotation that finishes a shred must be able to run before anything goes.
        self.ready_to_rotate()?;
        if self.root_changed()? {
            return Err(Error::Busy {
                path: self.cipherdir().to_path_buf(),
                reason: "the root key was rotated since this volume was opened: remount before shredding files \
                         (the KEK rotation that follows needs the new root); nothing was deleted"
                    .into(),
            });
        }
        let mut named: HashMap<FileId, (u64, usize, PathBuf)> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for path in paths {
            let backing = self.backing_path(path)?;
            if !seen.insert(backing.clone()) {
                continue; // the same name twice counts once
            }
            let at = self.at(&backing, path)?;
            let meta = std::fs::symlink_metadata(at.path()).map_err(|_| Error::NotFound(path.clone()))?;
            if !meta.is_file() {
                return Err(Error::InvalidArgument(format!(
                    "{}: not a regular file ({}); nothing was deleted",
                    path.display(),
                    crate::confine::kind_name(&meta)
                )));
            }
            // Only the object this name is bound to: a swapped one is refused, not shredded.
            let id = self.file_id_of(&backing, path)?;
            let links = std::os::unix::fs::MetadataExt::nlink(&meta);
            let entry = named.entry(id).or_insert((links, 0, path.clone()));
            entry.1 += 1;
        }
        self.flush_pending()?;
        let table = self.open_table();
        for (id, (links, count, path)) in &named {
            if table.get(id).is_some_and(|(_, handles)| *handles > 0) {
                return Err(Error::Busy {
                    path: path.clone(),
                    reason: "the file is open on the mount: close it, then shred (its keys would live until \
                             its last close); nothing was deleted"
                        .into(),
                });
            }
            if *links > *count as u64 {
                return Err(Error::InvalidArgument(format!(
                    "{}: has {links} hard links and {count} of them named: name every link of it \
                     (the others would still read its data); nothing was deleted",
                    path.display()
                )));
            }
        }
        Ok(named.into_keys().collect())
    }

    /// After the files `ids` lost their last name: commits the deletions, checks that the
    /// store holds no wrapped DEK of any of them, rotates the KEK and truncates the WAL.
    pub fn shred_finish(&self, ids: &[FileId], names: usize, kms: &dyn Kms) -> Result<ShredFilesReport> {
        self.flush_pending()?;
        for id in ids {
            if self.store().has_rows(id)? {
                let open = self.open_table().contains_key(id);
                return Err(Error::Busy {
                    path: self.cipherdir().to_path_buf(),
                    reason: format!(
                        "file {} still has wrapped DEKs{}: the KEK was not rotated, nothing is claimed",
                        crate::format::hex(id),
                        if open { " (it was opened meanwhile; its keys go at its last close)" } else { "" }
                    ),
                });
            }
        }
        let header = self.rotate_kek(kms, &mut |_, _, _| {})?;
        self.store().checkpoint()?;
        Ok(ShredFilesReport { files: ids.len(), names, kek_id: header.kek_id })
    }

    /// `shred --file` on a volume opened by this process (not mounted).
    pub fn shred_files(&self, paths: &[PathBuf], kms: &dyn Kms) -> Result<ShredFilesReport> {
        let ids = self.shred_check(paths)?;
        let mut names = 0;
        for p in paths {
            match self.unlink(Path::new(p)) {
                Ok(()) => names += 1,
                Err(Error::NotFound(_)) if names > 0 => {} // named twice
                Err(e) => return Err(e),
            }
        }
        self.shred_finish(&ids, names, kms)
    }
}
