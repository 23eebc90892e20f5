//! The set of files that exist (header feature bit 7, `file-set`).
//!
//! Every regular file has a store record (feature `files-recorded`), so a file removed whole,
//! its data file and its rows together, leaves no entry to give EIO on. The store therefore
//! keeps `files.set`: the XOR, over every file record, of `HMAC(file-set key, id)[..16]`, a
//! steering record sealed like the others and rewritten by the store itself in the same
//! transaction as every record added or deleted (`store::FileSetHook`). At open it is
//! recomputed from the rows; if they differ, records were deleted or added behind the
//! volume's back. The mount refuses such a volume (ro and rw), naming the way out: `fsck`
//! reports it, and `fsck --repair` accepts the store as it is (the operator's decision).
//! Keyed marks, not plain hashes: without the key nobody can pick rows whose marks cancel.

use super::records::{open_with, seal_with};
use super::volume::{Core, Volume};
use crate::store::{Change, FileSetHook};
use crate::{Error, Result};

/// `meta` key of the sealed digest.
pub(super) const FILE_SET: &str = "files.set";

impl Volume {
    /// The digest of the file records in the store now.
    fn file_set_now(&self) -> Result<[u8; 16]> {
        let mut set = [0u8; 16];
        for id in self.store().file_ids()? {
            set.iter_mut().zip(self.keys().file_mark(&id)).for_each(|(s, m)| *s ^= m);
        }
        Ok(set)
    }

    /// At open: compares the sealed digest with the rows, remembers a mismatch (see
    /// [`Volume::files_removed`]) and has the store keep the digest from now on.
    pub(super) fn watch_file_set(&self) -> Result<()> {
        let sealed = match self.record(FILE_SET) {
            Ok(s) => s,
            Err(Error::Integrity { reason, .. }) => {
                *self.file_set_problem.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let now = self.file_set_now()?;
        let problem = match &sealed {
            Some(v) if v.as_slice() == now.as_slice() => None,
            Some(_) => Some(
                "the file records in the metadata store are not the set last committed: files were \
                             removed whole (data and rows) or rows added behind the volume's back",
            ),
            None => Some("the record of the set of files is missing from the metadata store"),
        };
        if let Some(p) = problem {
            *self.file_set_problem.lock().unwrap_or_else(|p| p.into_inner()) = Some(p.to_string());
            if sealed.is_none() {
                return Ok(()); // nothing to keep up to date until fsck --repair writes one
            }
        }
        self.install_file_set_hook();
        Ok(())
    }

    fn install_file_set_hook(&self) {
        let (mark, open, seal) = (self.weak_core(), self.weak_core(), self.weak_core());
        self.store().set_file_set(FileSetHook {
            key: FILE_SET,
            mark: Box::new(move |id| mark.upgrade().map(|c| c.keys.file_mark(id)).unwrap_or([0; 16])),
            open: Box::new(move |raw| {
                let core = open.upgrade()?;
                open_with(&core.keys, FILE_SET, raw).and_then(|v| v.try_into().ok())
            }),
            // Both MACs while a KEK rotation has its new KEK loaded: the record stays readable
            // on either side of the header switch.
            seal: Box::new(move |v| seal.upgrade().map(|c| seal_with(&c.keys, FILE_SET, v, true)).unwrap_or_default()),
        });
    }

    /// Why this volume's set of files is not the one last committed, if it is not: a mount
    /// refuses it until `fsck --repair` accepts the store as it is.
    pub fn files_removed(&self) -> Result<()> {
        match self.file_set_problem.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            None => Ok(()),
            Some(p) => Err(Error::integrity(
                self.store().path(),
                format!("{p}; `envelopefs fsck` shows what is there, `fsck --repair` accepts it"),
            )),
        }
    }

    /// `fsck --repair`: the store's records become the set of files (the operator accepts
    /// what is there).
    pub(super) fn accept_file_set(&self) -> Result<()> {
        let now = self.file_set_now()?;
        let value = self.sealed(FILE_SET, &now);
        self.store().apply(&[Change::PutMeta { key: FILE_SET, value: &value }])?;
        *self.file_set_problem.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.install_file_set_hook();
        Ok(())
    }

    /// A volume made before the set was kept: records it as it is (trusted this once), then
    /// sets the feature bit. Read-only storage defers it.
    pub(super) fn file_set_upgrade(&self) -> Result<()> {
        let cipherdir = self.cipherdir().to_path_buf();
        let done = (|| {
            let _lock = crate::durable::lock_header(&cipherdir)?;
            let now = self.file_set_now()?;
            let value = self.sealed(FILE_SET, &now);
            self.store().apply(&[Change::PutMeta { key: FILE_SET, value: &value }])?;
            let header =
                super::open::with_feature(&cipherdir, self.header(), self.keys(), crate::format::FEATURE_FILE_SET)?;
            self.set_header(header);
            tracing::info!("the set of files is now kept (volume feature file-set)");
            Ok(())
        })();
        match done {
            Err(e @ Error::Io { .. }) | Err(e @ Error::Store { .. }) => {
                tracing::warn!("keeping the set of files must wait for a writable open: {e}");
                Ok(())
            }
            other => other,
        }
    }

    fn weak_core(&self) -> std::sync::Weak<Core> {
        std::sync::Arc::downgrade(&self.core)
    }
}
