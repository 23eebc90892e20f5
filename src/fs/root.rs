//! `rotate --root`: a new root key, the KEK re-wrapped under it. O(1) in data; DEKs and the
//! name key are untouched.
//!
//! Embedded keystore, in an order that a rerun can finish after a crash at any point: the new
//! keystore is written beside the old one (`keystore.next`), then the header with the KEK
//! wrapped under it, then `keystore.next` is renamed over `keystore`.
//!
//! HSM and KMS roots (and moving any volume to another root with `--to`): the new root is
//! opened (or its key generated), the KEK re-wrapped, the header written naming the new URI;
//! then an old root key that was made for this volume is retired (HSM: destroyed). A crash
//! before the header write leaves the volume on its old root (a generated key may be left
//! unused in the token); after it, on the new one.

use std::path::{Path, PathBuf};

use super::rotate::PENDING_WRAPPED;
use super::volume::{Volume, HEADER_FILE, ROOT_OWNED, STORE_FILE};
use crate::crypto::random_array;
use crate::format::{hex, KdfParams, KeystoreFile, VolumeHeader};
use crate::keys::{rewrap_kek, rewrap_scratch, root_matches};
use crate::kms::{self, Kms, KmsUri, LocalKeystore};
use crate::secret::Secrets;
use crate::store::{Change, Store};
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
        crate::anchor::check(&header, &cipherdir.join(super::HEADER_FILE))?;
        let ks = kms::local_keystore_path(&header.kms_uri, cipherdir).map_err(|e| match e {
            e @ Error::UntrustedRoot { .. } => e,
            _ => Error::InvalidArgument(format!("rotate --root: {} is not an embedded keystore", header.kms_uri)),
        })?;
        if kms::own_keystore(&header.kms_uri, cipherdir).is_none() {
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
            if rewrap_kek(&current, &new, &mut header, &cipherdir.join(HEADER_FILE))?.is_none() {
                return Err(Error::integrity(cipherdir.join(HEADER_FILE), "wrapped KEK refused by the keystore"));
            }
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

impl Volume {
    /// Rotates an HSM/KMS root, or moves the volume to the root `to` (any scheme). Without
    /// `to`: PKCS#11 generates a new key object beside the old one; AWS KMS re-wraps under
    /// the same key, so the KEK is under its current key material (after an on-demand
    /// rotation).
    ///
    /// The old root is destroyed only when the operator asks (`destroy_old`) and the volume's
    /// sealed record says it was made for this volume.
    pub fn rotate_root_kms(
        cipherdir: &Path,
        secrets: &dyn Secrets,
        to: Option<&str>,
        create_key: bool,
        scratch_file: &Path,
        destroy_old: bool,
    ) -> Result<VolumeHeader> {
        let header_lock = durable::lock_header(cipherdir)?;
        let mut header = Self::read_live_header(cipherdir)?;
        crate::anchor::check(&header, &cipherdir.join(super::HEADER_FILE))?;
        let store = Store::open(&cipherdir.join(STORE_FILE))?;
        if store.meta(PENDING_WRAPPED)?.is_some() {
            return Err(Error::InvalidArgument("a KEK rotation is unfinished: run `rotate --kek` first".into()));
        }
        let old_uri = header.kms_uri.clone();
        let Some((new_uri, create)) = next_root(&old_uri, to, create_key)? else {
            // It takes the header lock itself (a second flock from this process would wait
            // for the first forever).
            drop(header_lock);
            return Self::rotate_root(cipherdir, secrets, scratch_file);
        };
        let from = kms::open(&old_uri, cipherdir, secrets)?;
        let anchor = crate::anchor::RootAnchor::read(&from, &header.volume_id)?;
        anchor.check_generation(&header, &cipherdir.join(super::HEADER_FILE))?;
        let to = kms::create(&new_uri, cipherdir, secrets, KdfParams::DEFAULT, create)?;
        let before = header.clone();
        let Some(kek) = rewrap_kek(&from, &to, &mut header, &cipherdir.join(HEADER_FILE))? else {
            return Err(Error::integrity(cipherdir.join(HEADER_FILE), "wrapped KEK refused by the current root"));
        };
        if let Some(rec) = rewrap_scratch(&from, &to, &before, scratch_file)? {
            durable::replace_file(scratch_file, &rec.encode(), 0o600)?;
        }
        durable::replace_file(&cipherdir.join(HEADER_FILE), &header.encode(), 0o600)?;
        anchor.carry_to(&to);
        // A root in another token (or another KMS) keeps no more of this volume.
        if from.keeps_anchors() && !KmsUri::share_anchors(&old_uri, &header.kms_uri) {
            if let Err(e) = from.forget_anchor(&header.volume_id) {
                tracing::warn!("the volume's anchor stays beside its old root {old_uri}: {e}");
            }
        }
        // Retire the old root if it was this volume's own (the record sealed under its KEK
        // says so: a planted one is not believed) and is not the new one.
        let vid = header.volume_id;
        let owned_old = store.meta(ROOT_OWNED)?.is_some_and(|raw| {
            crate::keys::open_record_under(&kek, &vid, ROOT_OWNED, &raw) == Some(old_uri.as_bytes())
        });
        if create && !header.kms_uri.starts_with("local:") {
            let sealed = crate::keys::seal_record_under(&kek, &vid, ROOT_OWNED, header.kms_uri.as_bytes());
            store.apply(&[Change::PutMeta { key: ROOT_OWNED, value: &sealed }])?;
        } else if owned_old && header.kms_uri != old_uri {
            store.apply(&[Change::DeleteMeta { key: ROOT_OWNED }])?;
        }
        if header.kms_uri != old_uri {
            match (kms::own_keystore(&old_uri, cipherdir), old_uri.starts_with("local:")) {
                (Some(ks), _) if std::fs::symlink_metadata(&ks).is_ok() => super::shred::overwrite_and_remove(&ks)?,
                (_, true) => {}
                _ if owned_old && destroy_old => {
                    if let Err(e) = from.destroy_root(None) {
                        tracing::warn!("the old root {old_uri} could not be destroyed: {e}");
                    }
                }
                _ if owned_old => tracing::warn!(
                    "the old root {old_uri} (made for this volume) is kept: destroy it in the HSM, or pass --destroy-old-root"
                ),
                _ => {}
            }
        }
        Ok(header)
    }
}

/// The root `rotate --root` moves a volume on root `old_uri` to, and whether to make it:
/// `to` (made with `create_key`), or a new key object of the same token, or (AWS KMS) the
/// same key re-wrapping under its current material; `None` for an embedded keystore (a new
/// keystore, `Volume::rotate_root`).
pub fn next_root(old_uri: &str, to: Option<&str>, create_key: bool) -> Result<Option<(String, bool)>> {
    Ok(match (to, KmsUri::parse(old_uri)?) {
        (Some(to), _) => Some((to.to_string(), create_key)),
        (None, KmsUri::Pkcs11 { module, token, object }) => {
            let label = format!("{}-r{}", rotated_base(&object), hex(&random_array::<4>()));
            Some((format!("pkcs11:module={};token={token};object={label}", module.display()), true))
        }
        (None, KmsUri::AwsKms(_)) => Some((old_uri.to_string(), false)),
        (None, KmsUri::Local(_)) => None,
    })
}

/// `label` without the `-r` + 8 hex digits suffix an earlier root rotation gave it.
fn rotated_base(label: &str) -> &str {
    match label.rsplit_once("-r") {
        Some((base, suffix)) if suffix.len() == 8 && suffix.bytes().all(|b| b.is_ascii_hexdigit()) => base,
        _ => label,
    }
}

fn durable_read(path: &Path) -> Result<Vec<u8>> {
    crate::confine::read_file(path, 64 * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rotated_labels_keep_their_base() {
        assert_eq!(super::rotated_base("vol-root"), "vol-root");
        assert_eq!(super::rotated_base("vol-root-r0123abcd"), "vol-root");
        assert_eq!(super::rotated_base("x-rzz"), "x-rzz");
    }
}
