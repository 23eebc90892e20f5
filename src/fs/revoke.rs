//! Going dark: what a mounted volume does when its root no longer vouches for it (revoked,
//! or unreachable past the grace; `crate::revocation` decides when). It owns the order of
//! the steps, so that nothing the mount accepted is lost and nothing is written after the
//! keys are gone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::file::FileState;
use super::Volume;
use crate::{Error, Result};

/// What going dark did besides dropping the keys.
#[derive(Debug)]
pub struct DarkReport {
    /// What could not be committed before the keys went (each with its file): the queue,
    /// or an open file's data and metadata. Empty when everything accepted is stored.
    pub not_committed: Vec<Error>,
    /// Destroying this mount's scratch: entries removed (`None`: a read-only mount, which
    /// writes nothing and keeps it as at its unmount).
    pub scratch: Option<Result<u64>>,
}

impl Volume {
    /// Takes the volume dark, once: waits for the requests under way (none starts from now
    /// on: each gets `Error::Revoked`), commits what they wrote while the keys are still
    /// here (each open file on its own, so one failure loses no other), destroys the
    /// scratch (its runtime key file and entries, as at unmount; not on a read-only mount),
    /// refuses every later store write, and drops every key (`KeyRing::revoke`). `None` if
    /// it was dark already.
    pub fn go_dark(&self, why: &str, scratch_file: &Path, read_only: bool) -> Option<DarkReport> {
        let _quiet = self.quiet();
        if self.dark.get().is_some() {
            return None;
        }
        let mut not_committed = Vec::new();
        let mut scratch = None;
        if !read_only {
            not_committed.extend(self.flush_pending().err());
            let open: Vec<Arc<FileState>> = self.open_table().values().map(|(s, _)| s.clone()).collect();
            not_committed.extend(open.iter().filter(|s| !s.is_unlinked()).filter_map(|s| s.sync().err()));
            scratch = Some(self.destroy_scratch(scratch_file));
            // The commit thread stops (what the scratch's removal queued is committed
            // first): after this, nothing commits but this thread, and it commits no more.
            self.core.committer.stop();
            not_committed.extend(self.flush_pending().err());
        } else {
            self.core.committer.stop();
        }
        self.core.store.refuse_writes(why);
        let _ = self.dark.set(why.to_string());
        self.core.keys.revoke();
        // Decrypted names go with the keys (as listings do).
        self.encoded_names.clear();
        Some(DarkReport { not_committed, scratch })
    }

    /// Why the volume went dark, if it has.
    pub fn dark(&self) -> Option<&str> {
        self.dark.get().map(String::as_str)
    }

    /// Why the volume went dark, once it has, for a thread that must not keep the volume
    /// itself alive (the last holder of a volume commits it when it lets go).
    pub fn dark_reason(&self) -> Arc<std::sync::OnceLock<String>> {
        self.dark.clone()
    }

    /// The error of a request or command on a dark volume.
    pub fn dark_error(&self) -> Option<Error> {
        self.dark().map(|why| Error::Revoked { path: PathBuf::from(self.cipherdir()), reason: why.to_string() })
    }
}
