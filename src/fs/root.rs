//! `rotate --root` for the embedded keystore: a new root key, the KEK re-wrapped under it.
//! O(1) in data; DEKs and the name key are untouched.
//!
//! Order, so a crash at any point can be finished by running it again: the new keystore is
//! written beside the old one (`keystore.next`), then the header with the KEK wrapped under
//! it, then `keystore.next` is renamed over `keystore`.

use std::path::{Path, PathBuf};

use super::rotate::PENDING_WRAPPED;
use super::volume::{Volume, HEADER_FILE, STORE_FILE};
use crate::format::{KeystoreFile, VolumeHeader};
use crate::keys::{rewrap_kek, rewrap_scratch, root_matches};
use crate::kms::{self, LocalKeystore};
use crate::secret::Secrets;
use crate::store::Store;
use crate::{durable, Error, Result};

/// The keystore a root rotation is writing, beside the live one.
pub fn next_keystore(keystore: &Path) -> PathBuf {
    keystore.with_file_name(format!(
        "{}.next",
        keystore.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ))
}

impl Volume {
    /// Rotates the root key of a volume whose embedded keystore is its own (inside
    /// CIPHERDIR). The passphrase and the Argon2 parameters stay the same.
    /// Works beside a mount too: the mount keeps its KEK in memory, and its runtime scratch
    /// key (`scratch_file`, if any) is re-wrapped under the new root.
    pub fn rotate_root(cipherdir: &Path, secrets: &dyn Secrets, scratch_file: &Path) -> Result<VolumeHeader> {
        let _header_lock = durable::lock_header(cipherdir)?;
        let mut header = Self::read_live_header(cipherdir)?;
        let ks = kms::local_keystore_path(&header.kms_uri, cipherdir).map_err(|_| {
            Error::InvalidArgument(format!("rotate --root: {} is not an embedded keystore", header.kms_uri))
        })?;
        if !ks.starts_with(cipherdir) {
            return Err(Error::InvalidArgument(format!(
                "rotate --root: {} is shared with other volumes (outside CIPHERDIR); rotating it here would lock them out",
                ks.display()
            )));
        }
        if Store::open(&cipherdir.join(STORE_FILE))?.meta(PENDING_WRAPPED)?.is_some() {
            return Err(Error::InvalidArgument("a KEK rotation is unfinished: run `rotate --kek` first".into()));
        }
        let kdf = KeystoreFile::decode(&durable_read(&ks)?).map_err(|e| e.at(&ks))?.kdf;
        let pass = secrets.passphrase(&ks, false)?;
        let next = next_keystore(&ks);
        let current = LocalKeystore::open(&header.kms_uri, &ks, &pass)?;
        if !root_matches(&current, &header)? {
            // Interrupted after the header was written: finish by putting the new root in place.
            let new = LocalKeystore::open(&header.kms_uri, &next, &pass)?;
            if !root_matches(&new, &header)? {
                return Err(Error::integrity(cipherdir.join(HEADER_FILE), "the KEK matches neither keystore"));
            }
        } else {
            let _ = std::fs::remove_file(&next); // a run interrupted before the header: start over
            let new = LocalKeystore::create(&header.kms_uri, &next, &pass, kdf)?;
            header.wrapped_kek = rewrap_kek(&current, &new, &header)?
                .ok_or_else(|| Error::integrity(cipherdir.join(HEADER_FILE), "wrapped KEK refused by the keystore"))?;
            if let Some(rec) = rewrap_scratch(&current, &new, &header, scratch_file)? {
                durable::replace_file(scratch_file, &rec.encode(), 0o600)?;
            }
            durable::replace_file(&cipherdir.join(HEADER_FILE), &header.encode(), 0o600)?;
        }
        std::fs::rename(&next, &ks).map_err(|e| Error::io(&ks, "rename new keystore into place", e))?;
        durable::sync_dir(ks.parent().unwrap_or(cipherdir))?;
        Ok(header)
    }
}

fn durable_read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, "read", e))
}
