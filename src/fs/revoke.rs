//! Going dark: what a mounted volume does when its root no longer vouches for it (revoked,
//! or unreachable past the grace; `crate::revocation` decides when). It owns the order of
//! the steps, so that nothing the mount accepted is lost and nothing is written after the
//! keys are gone.

use std::path::Path;

use super::Volume;
use crate::Result;

/// What going dark did besides dropping the keys.
#[derive(Debug)]
pub struct DarkReport {
    /// Committing what the mount had accepted (every open file's data synced and its
    /// metadata committed, and everything queued).
    pub committed: Result<()>,
    /// Destroying this mount's scratch: entries removed.
    pub scratch: Result<u64>,
}

impl Volume {
    /// Takes the volume dark, once: waits for the requests under way (none starts from now
    /// on: each gets `Error::Revoked`), commits what they wrote while the keys are still
    /// here, destroys the scratch (its runtime key file and entries, as at unmount), refuses
    /// every later store write, and drops every key (`KeyRing::revoke`). `None` if it was
    /// dark already.
    pub fn go_dark(&self, why: &str, scratch_file: &Path) -> Option<DarkReport> {
        let _quiet = self.quiet();
        if self.dark.get().is_some() {
            return None;
        }
        let mut committed = self.sync_all();
        let scratch = self.destroy_scratch(scratch_file);
        // The commit thread stops (what the scratch's removal queued is committed first):
        // after this, nothing commits but this thread, and it commits nothing more.
        self.core.committer.stop();
        committed = committed.and(self.flush_pending());
        self.core.store.refuse_writes(why);
        let _ = self.dark.set(why.to_string());
        self.core.keys.revoke();
        Some(DarkReport { committed, scratch })
    }

    /// Why the volume went dark, if it has.
    pub fn dark(&self) -> Option<&str> {
        self.dark.get().map(String::as_str)
    }
}
