//! `shred --volume`: destroy every copy of the wrapped KEK (and, where the root is the
//! volume's own, the root key). O(1) in the volume's size: no data file is touched.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::rotate::{PENDING_ID, PENDING_WRAPPED};
use super::volume::{Volume, HEADER_FILE, STORE_FILE};
use crate::crypto::fill_random;
use crate::format::FEATURE_SHREDDED;
use crate::store::{Change, Store};
use crate::{durable, kms, Error, Result};

/// What a volume shred destroyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShredReport {
    /// The root keystore erased, if it was the volume's own.
    pub root_destroyed: Option<PathBuf>,
    /// A root that is shared (or held by a KMS) and was left alone.
    pub root_kept: Option<String>,
}

/// Overwrites `path` in place with random bytes and syncs, then unlinks it. Best effort
/// against recovery: SSDs and copy-on-write file systems may keep the old blocks.
fn overwrite_and_remove(path: &Path) -> Result<()> {
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, "stat", e))?.len() as usize;
    let mut noise = vec![0u8; len];
    fill_random(&mut noise);
    let mut f = OpenOptions::new().write(true).open(path).map_err(|e| Error::io(path, "open", e))?;
    f.write_all(&noise).and_then(|_| f.sync_all()).map_err(|e| Error::io(path, "overwrite", e))?;
    std::fs::remove_file(path).map_err(|e| Error::io(path, "remove", e))
}

impl Volume {
    /// Shreds the volume in `cipherdir` (unmounted, or by its mount's daemon), and the
    /// runtime copy of its scratch key (`scratch_file`). Needs no passphrase: destroying keys
    /// does not require them.
    pub fn shred_volume(cipherdir: &Path, scratch_file: &Path) -> Result<ShredReport> {
        let _ = std::fs::remove_file(scratch_file);
        let _header_lock = durable::lock_header(cipherdir)?;
        let mut header = Self::read_live_header(cipherdir)?;
        let conf = cipherdir.join(HEADER_FILE);
        // 1. The wrapped KEK and name key in the header: overwritten in place, then replaced by
        //    a header that says "shredded" and holds only noise.
        fill_random(&mut header.wrapped_kek);
        fill_random(&mut header.wrapped_name_key);
        header.features |= FEATURE_SHREDDED;
        let bytes = header.encode();
        let mut f = OpenOptions::new().write(true).open(&conf).map_err(|e| Error::io(&conf, "open", e))?;
        f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(&conf, "overwrite", e))?;
        durable::replace_file(&conf, &bytes, 0o600)?;
        // 2. A pending KEK of an unfinished rotation lives in the store (rare: only then is the
        //    store rewritten, so a shred stays O(1)).
        let store = Store::open(&cipherdir.join(STORE_FILE))?;
        if store.meta(PENDING_WRAPPED)?.is_some() {
            store.apply(&[Change::DeleteMeta { key: PENDING_ID }, Change::DeleteMeta { key: PENDING_WRAPPED }])?;
            store.compact()?;
        }
        // 3. The root, when it is this volume's own keystore.
        let mut report = ShredReport { root_destroyed: None, root_kept: None };
        match kms::local_keystore_path(&header.kms_uri, cipherdir) {
            Ok(ks) if ks.starts_with(cipherdir) && ks.exists() => {
                overwrite_and_remove(&ks)?;
                durable::sync_dir(cipherdir)?;
                report.root_destroyed = Some(ks);
            }
            _ => report.root_kept = Some(header.kms_uri.clone()),
        }
        Ok(report)
    }
}
