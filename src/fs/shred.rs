//! `shred --volume`: destroy every copy of the wrapped KEK (and, where the root is the
//! volume's own, the root key: its keystore file, its HSM key object, or — scheduled — its
//! cloud KMS key). O(1) in the volume's size: no data file is touched.

use std::io::Write;
use std::path::Path;

use super::rotate::{PENDING_ID, PENDING_NAMES, PENDING_WRAPPED};
use super::volume::{Volume, HEADER_FILE, ROOT_OWNED, STORE_FILE};
use crate::crypto::fill_random;
use crate::format::{VolumeHeader, FEATURE_SHREDDED};
use crate::kms::Kms;
use crate::store::{Change, Store};
use crate::{durable, kms, Error, Result};

/// What a volume shred destroyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShredReport {
    /// The root key destroyed (or its deletion scheduled), if it was the volume's own.
    pub root_destroyed: Option<String>,
    /// Why the root was left alone (shared, not made for this volume, KMS unreachable).
    pub root_kept: Option<String>,
    /// Tenant volumes (`tenants/*`) shredded with it.
    pub tenants: usize,
    /// Volumes under `tenants/` that could not be shredded, and why.
    pub tenants_failed: Vec<String>,
}

/// Removes the anchors of the volume `header` names — the one `root` keeps beside it, and this
/// host's — once the root has vouched for that name: the volume id is read from CIPHERDIR, and
/// a header given another volume's id must not remove that volume's anchors (without a root,
/// as for the embedded keystore, which a shred does not unlock, nothing vouches: they stay).
/// What was removed, as words for the report.
fn forget_own_anchors(root: Option<&dyn Kms>, header: &VolumeHeader) -> &'static str {
    let Some(root) = root else { return "" };
    match crate::keys::root_matches(root, header) {
        Ok(true) => {}
        Ok(false) => return "",
        Err(e) => {
            tracing::warn!("the volume's anchors stay (its root could not vouch for its id): {e}");
            return "; the volume's anchors could not be removed (see the log)";
        }
    }
    if let Err(e) = crate::anchor::forget(&header.volume_id) {
        tracing::warn!("this host's anchor of the volume stays: {e}");
    }
    if !root.keeps_anchors() {
        return "";
    }
    match root.forget_anchor(&header.volume_id) {
        Ok(true) => "; the volume's anchor in its token removed",
        Ok(false) => "",
        Err(e) => {
            tracing::warn!("the volume's anchor beside its root stays: {e}");
            "; the volume's anchor in its token could not be removed (see the log)"
        }
    }
}

/// Overwrites `path` in place with random bytes and syncs, then unlinks it. Best effort
/// against recovery: SSDs and copy-on-write file systems may keep the old blocks.
/// Only a regular file is overwritten: a planted symlink (or FIFO) is refused, never followed.
pub(super) fn overwrite_and_remove(path: &Path) -> Result<()> {
    let mut f = crate::confine::open_file(path, true)?;
    let meta = f.metadata().map_err(|e| Error::io(path, "stat", e))?;
    if std::os::unix::fs::MetadataExt::nlink(&meta) != 1 {
        // Another name shares it (planted hard link): remove ours, overwrite nothing.
        return std::fs::remove_file(path).map_err(|e| Error::io(path, "remove", e));
    }
    let len = meta.len() as usize;
    let mut noise = vec![0u8; len];
    fill_random(&mut noise);
    f.write_all(&noise).and_then(|_| f.sync_all()).map_err(|e| Error::io(path, "overwrite", e))?;
    std::fs::remove_file(path).map_err(|e| Error::io(path, "remove", e))
}

/// Overwrites and removes the temporary copies of the header or keystore in `cipherdir`.
fn remove_temp_copies(cipherdir: &Path) {
    let Ok(entries) = std::fs::read_dir(cipherdir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let temp = (name.starts_with('.') && name.contains(".tmp-")) || name.ends_with(".tmp");
        if temp && e.file_type().is_ok_and(|t| t.is_file()) {
            if let Err(err) = overwrite_and_remove(&e.path()) {
                tracing::warn!("{err}");
            }
        }
    }
}

/// Shreds every volume in `cipherdir/tenants/` (`fs::tenants`): each real directory
/// there holding a volume header, reached through its descriptor (a symlink is never
/// followed), one level only (a tenant has no tenants); how many, and what could not be
/// (each failure named, none stopping the others or the volume's own shred).
fn shred_tenants(cipherdir: &Path) -> (usize, Vec<String>) {
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::Mode;
    use std::os::fd::AsRawFd;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let path = cipherdir.join(super::TENANTS_DIR);
    let tenants = match open(&path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return (0, Vec::new()),
        Err(e) => return (0, vec![format!("{}: {e} (not a directory of tenants: left alone)", path.display())]),
    };
    let names: Vec<std::ffi::OsString> = match std::fs::read_dir(format!("/proc/self/fd/{}", tenants.as_raw_fd())) {
        Ok(d) => d.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
        Err(e) => return (0, vec![format!("{}: {e}", path.display())]),
    };
    let (mut shredded, mut failed) = (0, Vec::new());
    for name in names {
        let Ok(dir) = openat(&tenants, name.as_os_str(), flags, Mode::empty()) else { continue };
        let at = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        if !at.join(HEADER_FILE).exists() {
            continue;
        }
        let scratch = std::env::temp_dir()
            .join(format!(".evfs-no-scratch-{}", crate::format::hex(&crate::crypto::random_array::<8>())));
        match Volume::shred_one(&at, &scratch, None, false, None, false) {
            Ok(_) => shredded += 1,
            Err(e) => failed.push(format!("{}: {}", path.join(&name).display(), e.renamed(&path.join(&name)))),
        }
    }
    (shredded, failed)
}

impl Volume {
    /// Shreds the volume in `cipherdir` (unmounted, or by its mount's daemon), and the
    /// runtime copy of its scratch key (`scratch_file`). Destroying the wrapped keys needs no
    /// secret; an HSM/KMS root made for this volume is destroyed too when `root` (the open
    /// KMS) is given — for a cloud KMS only with `delete_after_days`, as a scheduled deletion.
    ///
    /// The root is destroyed only when the operator asks (`destroy_root`, or for a cloud KMS
    /// `delete_after_days`) *and* the volume's sealed record says the root was made for it:
    /// a key outside CIPHERDIR is never destroyed on what CIPHERDIR says alone.
    pub fn shred_volume(
        cipherdir: &Path,
        scratch_file: &Path,
        root: Option<&dyn Kms>,
        destroy_root: bool,
        delete_after_days: Option<u32>,
    ) -> Result<ShredReport> {
        let asked = destroy_root || delete_after_days.is_some();
        Self::shred_one(cipherdir, scratch_file, root, asked, delete_after_days, true)
    }

    /// [`Self::shred_volume`]; `with_tenants`: its tenants' volumes too.
    fn shred_one(
        cipherdir: &Path,
        scratch_file: &Path,
        root: Option<&dyn Kms>,
        destroy_root: bool,
        delete_after_days: Option<u32>,
        with_tenants: bool,
    ) -> Result<ShredReport> {
        let _ = std::fs::remove_file(scratch_file);
        // 0. Every tenant's volume the same way (their roots are kept): each real directory
        //    under `tenants/` with a header, found without the (sealed) list. First, so that a
        //    crash before the volume's own header is shredded leaves a shred to run again.
        let (tenants, tenants_failed) = if with_tenants { shred_tenants(cipherdir) } else { (0, Vec::new()) };
        let _header_lock = durable::lock_header(cipherdir)?;
        let mut header = Self::read_live_header(cipherdir)?;
        // As read, for the root to vouch for its volume id before that volume's anchor goes.
        let sealed = header.clone();
        let conf = cipherdir.join(HEADER_FILE);
        // 1. The wrapped KEK and name key in the header: overwritten in place, then replaced by
        //    a header that says "shredded" and holds only noise.
        fill_random(&mut header.wrapped_kek);
        fill_random(&mut header.wrapped_name_key);
        header.features |= FEATURE_SHREDDED;
        let bytes = header.encode();
        let mut f = crate::confine::open_file(&conf, true)?;
        f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(&conf, "overwrite", e))?;
        durable::replace_file(&conf, &bytes, 0o600)?;
        // 1b. Copies a crash may have left: a header or keystore being replaced
        //     (`.NAME.tmp-<hex>`, and the fixed `NAME.tmp` of older versions). Regular files
        //     only; anything else planted there is left alone.
        remove_temp_copies(cipherdir);
        // 2. A pending KEK of an unfinished rotation lives in the store (rare: only then is the
        //    store rewritten, so a shred stays O(1)).
        let store = Store::open(&cipherdir.join(STORE_FILE))?;
        if store.meta(PENDING_WRAPPED)?.is_some() {
            store.apply(&[
                Change::DeleteMeta { key: PENDING_ID },
                Change::DeleteMeta { key: PENDING_WRAPPED },
                Change::DeleteMeta { key: PENDING_NAMES },
            ])?;
            store.compact()?;
        }
        // 3. The volume's anchors, beside the root and on this host (they name the volume and
        // count its changes), then the root, when it is this volume's own.
        let anchor = forget_own_anchors(root, &sealed);
        let mut report = ShredReport { root_destroyed: None, root_kept: None, tenants, tenants_failed };
        let uri = header.kms_uri.clone();
        // Made for this volume: the record says so, sealed under the KEK the root still
        // unwraps from the header as it was (a planted or copied record is not believed).
        let owned = match (store.meta(ROOT_OWNED)?, root) {
            (Some(raw), Some(k)) => crate::keys::record_vouched(k, &sealed, ROOT_OWNED, uri.as_bytes(), &raw),
            _ => false,
        };
        let own = kms::own_keystore(&uri, cipherdir).and_then(|ks| Some((std::fs::symlink_metadata(&ks).ok()?, ks)));
        match (own, uri.starts_with("local:")) {
            (Some((meta, ks)), _) if !meta.is_file() => {
                report.root_kept = Some(format!("{} is not a regular file (planted?): left alone", ks.display()));
            }
            (Some((_, ks)), _) => {
                overwrite_and_remove(&ks)?;
                durable::sync_dir(cipherdir)?;
                report.root_destroyed = Some(format!("keystore {} overwritten and removed", ks.display()));
            }
            (_, true) => report.root_kept = Some(format!("{uri} is shared with other volumes")),
            _ if root.is_none() => report.root_kept = Some(format!("{uri}: not reachable, so not destroyed")),
            _ if !owned => {
                report.root_kept = Some(format!("{uri}: the volume does not record (sealed) that it was made for it"))
            }
            _ if !destroy_root => {
                report.root_kept = Some(format!(
                    "{uri} (made for this volume): pass --destroy-root (an HSM key) or --delete-root-after DAYS (a KMS key) to destroy it too"
                ))
            }
            _ => match root.map(|k| k.destroy_root(delete_after_days)) {
                Some(Ok(Some(done))) => {
                    store.apply(&[Change::DeleteMeta { key: ROOT_OWNED }])?;
                    report.root_destroyed = Some(done);
                }
                Some(Ok(None)) => {
                    report.root_kept = Some(format!("{uri}: pass --delete-root-after DAYS to schedule its deletion"))
                }
                Some(Err(e)) => report.root_kept = Some(format!("{uri}: could not destroy it: {e}")),
                None => report.root_kept = Some(format!("{uri}: not reachable, so not destroyed")),
            },
        }
        for said in [&mut report.root_destroyed, &mut report.root_kept].into_iter().flatten() {
            said.push_str(anchor);
        }
        Ok(report)
    }
}
