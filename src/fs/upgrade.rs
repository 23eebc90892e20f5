//! `envelopefs upgrade CIPHERDIR`: a format-1 volume (GCM-SIV) converted to format 2 in place,
//! resumably.
//!
//! First the set of files is recorded versioned (`fs::file_set`) and the header gains feature
//! `pages` (new files are format 2 from then on); then every format-1 file is converted, each
//! in one atomic step (`FileState::convert_to_pages`). A set that does not authenticate is
//! refused first: re-recording it would launder it. Killed at any point, the volume opens
//! and reads (a mix of format-1 and format-2 files is a valid volume), and running `upgrade`
//! again converts what is left.

use std::path::{Path, PathBuf};

use super::volume::Volume;
use super::EntryKind;
use crate::{Error, Result};

/// What an upgrade did.
#[derive(Debug, Default)]
pub struct UpgradeReport {
    /// Files converted by this run.
    pub converted: u64,
    /// Files already in format 2.
    pub already: u64,
    /// Files that could not be converted, with why (left as they are, still readable or not
    /// as before).
    pub left: Vec<String>,
}

impl Volume {
    /// Converts this volume to format 2 (see the module docs); `progress` is told each file
    /// converted.
    pub fn upgrade_to_pages(&self, progress: &mut dyn FnMut(&Path)) -> Result<UpgradeReport> {
        if self.header().cipher != crate::format::CipherKind::Aes256GcmSiv {
            return Err(Error::InvalidArgument(format!(
                "{}: format 2 needs aes-256-gcm-siv; this volume is {} (length-preserving, no room for a tag)",
                self.cipherdir().display(),
                self.header().cipher.name()
            )));
        }
        // A set of files that does not authenticate is fsck's to show first: re-recording it
        // here would launder it.
        self.files_removed()?;
        if self.header().features & crate::format::FEATURE_PAGES == 0 {
            let done = self
                .upgrade(crate::format::FEATURE_PAGES, "format 2 for new files", || self.record_versioned_file_set())?;
            if !done {
                return Err(Error::io(self.cipherdir(), "upgrade", std::io::Error::from_raw_os_error(30)));
            }
            self.core.pages.store(true, std::sync::atomic::Ordering::Release);
            self.keep_versioned_file_set()?;
        }
        let mut report = UpgradeReport::default();
        let scratch = self.scratch_dirs();
        let mut dirs: Vec<PathBuf> = vec![PathBuf::from("/")];
        while let Some(dir) = dirs.pop() {
            let entries = match self.readdir(&dir) {
                Ok(e) => e,
                Err(e) => {
                    report.left.push(format!("{}: {e}", dir.display()));
                    continue;
                }
            };
            for entry in entries {
                let path = dir.join(&entry.name);
                match entry.kind {
                    EntryKind::Directory if scratch.contains(&path) => {}
                    EntryKind::Directory => dirs.push(path),
                    EntryKind::File => match self.open_file(&path, true).and_then(|f| {
                        let (id, converted) = (f.file_id(), f.state.convert_to_pages());
                        let closed = f.close();
                        // Its state is format 1's, its record format 2's now: a later open
                        // (another link of it) loads the record, never the state.
                        self.core.forget_closed(&id);
                        closed.and(converted)
                    }) {
                        Ok(true) => {
                            report.converted += 1;
                            progress(&path);
                        }
                        Ok(false) => report.already += 1,
                        Err(e) => report.left.push(e.to_string()),
                    },
                    _ => {}
                }
            }
        }
        Ok(report)
    }
}
