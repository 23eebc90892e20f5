//! Adding a tenant (`tenant add`) and shredding one (`shred --tenant`).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::{check_tenant_root, named, volume_path, Place};
use crate::format::{hex, FEATURE_PAGES};
use crate::fs::{EntryKind, InitOptions, TenantEntry, Volume, TENANTS_DIR};
use crate::secret::Secrets;
use crate::{Error, Result};

/// Makes the new directory `dir` (a path inside the volume; its parent must exist, and it
/// must not) the root of a new tenant whose root is `uri` (`create_key`: made there). The
/// volume is not mounted (the caller holds its lock). In this order, so that a crash at any
/// point leaves a volume that opens, and nothing unlisted can hold a tenant's files:
/// 1. the tenant's volume is made beside (`tenants/.new-*`, never opened) and moved to its
///    id's name;
/// 2. the list names it, with the id its root directory will have (a listed directory that
///    does not exist is routed nowhere; `fsck` names it);
/// 3. the directory is made, flagged in its header as a tenant's root.
pub fn add(outer: &Volume, dir: &Path, uri: &str, create_key: bool, secrets: &dyn Secrets) -> Result<TenantEntry> {
    check_tenant_root(uri)?;
    let dir = volume_path(dir)?;
    let parent = dir.parent().unwrap_or(Path::new("")).to_path_buf();
    if let Some((t, _)) = super::route(outer, &dir)? {
        return Err(Error::InvalidArgument(format!(
            "/{}: inside tenant {} ({}): tenants do not nest",
            dir.display(),
            hex(&t.id),
            t.label
        )));
    }
    for scratch in outer.recorded_scratch()?.dirs {
        if dir.starts_with(&scratch) {
            return Err(Error::InvalidArgument(format!(
                "/{}: inside the scratch directory /{} (destroyed at unmount): a tenant cannot live there",
                dir.display(),
                scratch.display()
            )));
        }
    }
    match outer.stat(&parent) {
        Ok(s) if s.kind == EntryKind::Directory => {}
        Ok(_) => return Err(Error::InvalidArgument(format!("/{}: not a directory", parent.display()))),
        Err(e) => return Err(e),
    }
    if outer.stat(&dir).is_ok() {
        return Err(Error::InvalidArgument(format!(
            "/{}: already exists; a tenant starts as a new, empty directory",
            dir.display()
        )));
    }
    let header = outer.header();
    let tenants = outer.cipherdir().join(TENANTS_DIR);
    match std::fs::DirBuilder::new().mode(0o700).create(&tenants) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(&tenants, "create directory", e)),
    }
    crate::confine::open_dir(&tenants)?; // a real directory, not a planted symlink
    let new = tenants.join(format!(".new-{}", hex(&crate::crypto::random_array::<8>())));
    let opts = InitOptions {
        cipher: header.cipher,
        extent_shift: header.extent_shift,
        kms_uri: Some(uri.to_string()),
        create_key,
        format: Some(if header.features & FEATURE_PAGES != 0 { 2 } else { 1 }),
        ..InitOptions::default()
    };
    let made = Volume::init(&new, &opts, secrets)?;
    let place = tenants.join(hex(&made.volume_id));
    let entry = TenantEntry {
        id: made.volume_id,
        dir_id: crate::crypto::random_array(),
        kms_uri: made.kms_uri.clone(),
        label: format!("/{}", dir.display()),
    };
    let mut listed = false;
    let done = (|| {
        std::fs::rename(&new, &place).map_err(|e| Error::io(&place, "move the tenant's volume into place", e))?;
        crate::durable::sync_dir(&tenants)?;
        let mut list = outer.tenants()?;
        list.push(entry.clone());
        outer.put_tenants(&list)?;
        listed = true;
        outer.mkdir_tenant_root(&dir, entry.dir_id)
    })();
    if let Err(e) = done {
        if listed {
            // Listed, with no directory: routed nowhere, and `fsck` names it.
            return Err(e);
        }
        let _ = std::fs::remove_dir_all(&new);
        let _ = std::fs::remove_dir_all(&place);
        if create_key {
            tracing::warn!(root = %made.kms_uri, "the root key made for the tenant was not destroyed");
        }
        return Err(e);
    }
    Ok(entry)
}

/// What `shred --tenant` did.
#[derive(Debug)]
pub struct TenantShred {
    pub id: [u8; 16],
    pub label: String,
    pub root: String,
    /// The tenant's volume was already gone (nothing held its keys any more).
    pub was_missing: bool,
}

/// Shreds the tenant whose root is directory `dir` of the volume `outer`: its volume's
/// wrapped KEK and name key are destroyed (O(1): its header; the point after which its data
/// is noise), the list stops naming it, its directory goes from the listing, and its
/// volume's files are removed. Only the volume the list names is shredded: another volume
/// put in its place is refused, untouched. A crash after the first step leaves a tenant that
/// opens dark ("shredded"), and running the shred again finishes it.
///
/// `locked`: the caller holds the tenant volume's lock (the mount's daemon, which took the
/// tenant dark first).
pub fn shred(outer: &Volume, dir: &Path, locked: bool) -> Result<TenantShred> {
    let entry = named(outer, dir)?;
    let dir = volume_path(dir)?;
    let place = Place::open(outer, &entry)?;
    if let Some(place) = &place {
        let at: PathBuf = place.path().to_path_buf();
        let _lock = if locked { None } else { Some(crate::daemon::lock_volume(&at)?) };
        let shown = outer.tenant_dir(&entry.id);
        let header = Volume::read_live_header(&at).map_err(|e| e.renamed(&shown));
        match header {
            Ok(h) if h.volume_id != entry.id => {
                return Err(Error::integrity(
                    &shown,
                    format!("holds volume {}, not the tenant's: nothing was shredded", hex(&h.volume_id)),
                ))
            }
            // Its id is what matters here: a shredded header, or one naming another root,
            // is still this tenant's volume.
            Ok(_) => {
                let scratch = crate::control::scratch_path(&entry.id);
                Volume::shred_volume(&at, &scratch, None, None)?;
            }
            Err(e) => return Err(e),
        }
    }
    let list: Vec<TenantEntry> = outer.tenants()?.into_iter().filter(|t| t.id != entry.id).collect();
    outer.put_tenants(&list)?;
    match outer.rmdir(&dir) {
        Ok(()) | Err(Error::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let was_missing = place.is_none();
    if let Some(place) = place {
        place.remove()?;
    }
    Ok(TenantShred { id: entry.id, label: entry.label, root: entry.kms_uri, was_missing })
}

/// `rotate --root --tenant DIR [--to URI]` on the unmounted volume `outer`: the tenant's KEK
/// is re-wrapped under a new root (as `rotate --root` does for a volume: `--to`, or a new
/// key object of the same token, or the KMS key's current material), then the list names
/// the new root. Cut short between the two, the tenant opens dark ("names the root X, but
/// the tenant list names Y"), and running it again with `--to X` finishes it: the tenant's
/// volume must then open under X (only the holder of its KEK made a header bound to X).
pub fn rotate_root(
    outer: &Volume,
    dir: &Path,
    secrets: &dyn Secrets,
    to: Option<&str>,
    create_key: bool,
) -> Result<crate::format::VolumeHeader> {
    let entry = named(outer, dir)?;
    if let Some(to) = to {
        check_tenant_root(to)?;
    }
    let shown = outer.tenant_dir(&entry.id);
    let place =
        Place::open(outer, &entry)?.ok_or_else(|| Error::integrity(&shown, "the tenant's volume is missing"))?;
    let at = place.path().to_path_buf();
    let _lock = crate::daemon::lock_volume(&at)?;
    let header = Volume::read_live_header(&at).map_err(|e| e.renamed(&shown))?;
    if header.volume_id != entry.id {
        return Err(Error::integrity(&shown, format!("holds volume {}, not the tenant's", hex(&header.volume_id))));
    }
    let new = if header.kms_uri == entry.kms_uri {
        let new = Volume::rotate_root_kms(&at, secrets, to, create_key, &crate::control::scratch_path(&entry.id))?;
        check_tenant_root(&new.kms_uri)?;
        new
    } else if to == Some(header.kms_uri.as_str()) {
        let kms = crate::kms::open(&header.kms_uri, &at, secrets)?;
        Volume::open_with_kms(&at, header.clone(), &kms)?;
        header
    } else {
        return Err(Error::integrity(
            &shown,
            format!(
                "names the root {}, but the tenant list names {}: if a `rotate --root --tenant` was cut short, \
                 run it again with --to '{}'",
                header.kms_uri, entry.kms_uri, header.kms_uri
            ),
        ));
    };
    let list: Vec<TenantEntry> = outer
        .tenants()?
        .into_iter()
        .map(|t| if t.id == entry.id { TenantEntry { kms_uri: new.kms_uri.clone(), ..t } } else { t })
        .collect();
    outer.put_tenants(&list)?;
    Ok(new)
}
