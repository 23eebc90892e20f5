//! Adding a tenant (`tenant add`) and shredding one (`shred --tenant`).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::TenantSecrets;
use super::{check_tenant_root, named, volume_path, Place};
use crate::format::{hex, FEATURE_PAGES};
use crate::fs::{EntryKind, InitOptions, TenantEntry, Volume, TENANTS_DIR};
use crate::{Error, Result};

/// What `tenant add` did.
#[derive(Debug)]
pub struct Added {
    pub entry: TenantEntry,
    /// For an existing directory made a tenant: what was copied into it.
    pub converted: Option<super::convert::Converted>,
}

/// Makes directory `dir` (a path inside the volume) the root of a new tenant whose root is
/// `uri` (`create_key`: made there). The volume is not mounted (the caller holds its lock).
/// A new directory (its parent must exist) is made empty; an existing one is converted, its
/// files copied into the tenant (`super::convert`); a conversion cut short is finished first.
///
/// A new directory, in this order, so that a crash at any point leaves a volume that opens,
/// and nothing unlisted can hold a tenant's files:
/// 1. the tenant's volume is made beside (`tenants/.new-*`, never opened) and moved to its
///    id's name;
/// 2. the list names it, with the id its root directory will have (a listed directory that
///    does not exist is routed nowhere; `fsck` names it);
/// 3. the directory is made, flagged in its header as a tenant's root.
pub fn add(outer: &Volume, dir: &Path, uri: &str, create_key: bool, secrets: &TenantSecrets) -> Result<Added> {
    let dir = volume_path(dir)?;
    if let Some(c) = outer.tenant_conversion()? {
        return super::convert::resume(outer, &dir, c, secrets);
    }
    check_tenant_root(uri)?;
    check_place(outer, &dir)?;
    match outer.stat(&dir) {
        Ok(s) if s.kind == EntryKind::Directory => {
            return super::convert::begin(outer, &dir, (uri, create_key), secrets);
        }
        Ok(_) => return Err(Error::InvalidArgument(format!("/{}: exists and is not a directory", dir.display()))),
        Err(Error::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let made = NewVolume::make(outer, &dir, uri, create_key, secrets)?;
    let entry = made.place(outer, &dir)?;
    made.list_or_remove(outer, &entry)?;
    // Listed, with no directory if this fails: routed nowhere, and `fsck` names it.
    outer.mkdir_tenant_root(&dir, entry.dir_id)?;
    Ok(Added { entry, converted: None })
}

/// What must hold of a tenant's place `dir` before anything is made: not inside a tenant or
/// a scratch directory, its parent a directory, no tenant listed there already.
fn check_place(outer: &Volume, dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new(""));
    match super::route(outer, dir)? {
        Some((t, rest)) if rest.as_os_str().is_empty() => {
            return Err(Error::InvalidArgument(format!("/{}: already the root of tenant {}", dir.display(), t.label)));
        }
        Some((t, _)) => {
            return Err(Error::InvalidArgument(format!(
                "/{}: inside tenant {} ({}): tenants do not nest",
                dir.display(),
                hex(&t.id),
                t.label
            )));
        }
        None => {}
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
    match outer.stat(parent) {
        Ok(s) if s.kind == EntryKind::Directory => {}
        Ok(_) => return Err(Error::InvalidArgument(format!("/{}: not a directory", parent.display()))),
        Err(e) => return Err(e),
    }
    if let Some(t) = outer.tenant_place_at(dir, &outer.tenants()?)? {
        if outer.stat(dir).is_ok() {
            return Err(Error::integrity(
                format!("/{}", dir.display()),
                format!("is at the place of tenant {}'s root, but is not that root: see `envelopefs fsck`", t.label),
            ));
        }
        {
            return Err(Error::InvalidArgument(format!(
                "/{}: tenant {} is listed here, but its root directory is missing (a `tenant add` cut short, or \
                 removed behind the volume's back): `envelopefs fsck --repair` puts it back; if it holds nothing, \
                 `envelopefs shred CIPHERDIR --tenant /{}` removes it",
                dir.display(),
                t.label,
                dir.display()
            )));
        }
    }
    Ok(())
}

/// A tenant's volume being made: `tenants/.new-*`, reached through a descriptor of
/// `tenants/` (a real directory, not a planted symlink: a swap after the check redirects
/// nothing).
pub(super) struct NewVolume {
    _pinned: std::os::fd::OwnedFd,
    tenants: PathBuf,
    new: PathBuf,
    pub header: crate::format::VolumeHeader,
    create_key: bool,
}

impl NewVolume {
    /// Makes the volume of a tenant whose root is `uri`, to be rooted at `dir`.
    pub(super) fn make(
        outer: &Volume,
        dir: &Path,
        uri: &str,
        create_key: bool,
        secrets: &TenantSecrets,
    ) -> Result<NewVolume> {
        let header = outer.header();
        let tenants = outer.cipherdir().join(TENANTS_DIR);
        match std::fs::DirBuilder::new().mode(0o700).create(&tenants) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(&tenants, "create directory", e)),
        }
        let pinned = nix::fcntl::open(
            &tenants,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| match e {
            nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => {
                Error::integrity(&tenants, "expected a directory, found something else (planted?)")
            }
            e => Error::io(&tenants, "open", e.into()),
        })?;
        let tenants = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&pinned)));
        let new = tenants.join(format!(".new-{}", hex(&crate::crypto::random_array::<8>())));
        let opts = InitOptions {
            cipher: header.cipher,
            extent_shift: header.extent_shift,
            kms_uri: Some(uri.to_string()),
            create_key,
            format: Some(if header.features & FEATURE_PAGES != 0 { 2 } else { 1 }),
            ..InitOptions::default()
        };
        // The id is not known yet: a passfile names a new tenant by its root.
        let label = format!("/{}", dir.display());
        let header = Volume::init(&new, &opts, &secrets.of(&label, &[0; 16]))?;
        Ok(NewVolume { _pinned: pinned, tenants, new, header, create_key })
    }

    /// Moves the volume to its id's name; returns the list entry that will name it, rooted
    /// at `dir`.
    pub(super) fn place(&self, outer: &Volume, dir: &Path) -> Result<TenantEntry> {
        let parent = dir.parent().unwrap_or(Path::new(""));
        let entry = TenantEntry {
            id: self.header.volume_id,
            dir_id: crate::crypto::random_array(),
            kms_uri: self.header.kms_uri.clone(),
            label: format!("/{}", dir.display()),
            pending_uri: String::new(),
            parent_id: outer.dir_id_of(parent)?,
            name: std::os::unix::ffi::OsStrExt::as_bytes(dir.file_name().unwrap_or_default()).to_vec(),
        };
        let place = self.tenants.join(hex(&entry.id));
        let moved = std::fs::rename(&self.new, &place)
            .map_err(|e| Error::io(&place, "move the tenant's volume into place", e))
            .and_then(|()| crate::durable::sync_dir(&self.tenants));
        if let Err(e) = moved {
            self.remove(outer, &entry);
            return Err(e);
        }
        Ok(entry)
    }

    /// Lists `entry`; if that fails, the volume made for it goes (nothing names it).
    pub(super) fn list_or_remove(&self, outer: &Volume, entry: &TenantEntry) -> Result<()> {
        list(outer, entry).inspect_err(|_| self.remove(outer, entry))
    }

    /// Removes the volume made (before anything names it).
    pub(super) fn remove(&self, _outer: &Volume, entry: &TenantEntry) {
        let _ = std::fs::remove_dir_all(&self.new);
        let _ = std::fs::remove_dir_all(self.tenants.join(hex(&entry.id)));
        if self.create_key {
            tracing::warn!(root = %self.header.kms_uri, "the root key made for the tenant was not destroyed");
        }
    }
}

/// Adds `entry` to the volume's tenant list.
pub(super) fn list(outer: &Volume, entry: &TenantEntry) -> Result<()> {
    let mut list = outer.tenants()?;
    list.push(entry.clone());
    outer.put_tenants(&list)
}

/// Refuses to change tenant `entry` while it is being made from an existing directory.
fn refuse_while_converting(outer: &Volume, entry: &TenantEntry, what: &str) -> Result<()> {
    if outer.tenant_conversion()?.is_some_and(|c| c.entry.id == entry.id) {
        return Err(Error::InvalidArgument(format!(
            "{}: being made a tenant (cut short): finish it first with `envelopefs tenant add CIPHERDIR {}` (or undo \
             it with --abort); nothing was {what}",
            entry.label, entry.label
        )));
    }
    Ok(())
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
/// opens dark ("shredded"), and running the shred again finishes it; after its directory
/// went, `fsck --repair` unlists it.
///
/// `locked`: the caller holds the tenant volume's lock (the mount's daemon, which took the
/// tenant dark first).
pub fn shred(outer: &Volume, dir: &Path, locked: bool) -> Result<TenantShred> {
    let entry = named(outer, dir)?;
    refuse_while_converting(outer, &entry, "shredded")?;
    let dir = volume_path(dir)?;
    // Its root must be empty in the volume, or it could not go after the keys did (a root
    // missing from its place holds nothing).
    let (entries, missing) = match outer.readdir(&dir) {
        Err(Error::NotFound(_)) => (Vec::new(), true),
        other => (other?, false),
    };
    // A root missing from its place (a `tenant add` cut short, or removed behind the
    // volume's back) is no reason to destroy what the tenant holds: only an empty (or gone,
    // or shredded) tenant volume is shredded so; `fsck --repair` puts the root back.
    if missing && !super::check::holds_nothing(outer, &entry) {
        return Err(Error::InvalidArgument(format!(
            "/{}: tenant {}'s root is missing, and its volume holds files: `envelopefs fsck --repair` puts its root \
             back (shred it after that if you mean to); nothing was shredded",
            dir.display(),
            entry.label
        )));
    }
    if !entries.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "/{}: the tenant's root holds entries of the volume's own (not the tenant's): move them out first; nothing was shredded",
            dir.display()
        )));
    }
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
            // Shredded already (a shred cut short): on to the rest.
            Ok(h) if h.is_shredded() => {}
            Err(Error::Shredded(_)) => {}
            // Its id is what matters here: one naming another root is still this tenant's.
            Ok(_) => {
                let scratch = crate::control::scratch_path(&entry.id);
                Volume::shred_volume(&at, &scratch, None, false, None)?;
            }
            Err(e) => return Err(e),
        }
    }
    // The root directory goes before the list stops naming it: a crash in between leaves a
    // listed tenant with no root and a shredded volume, which routes nowhere and which
    // `fsck --repair` unlists (the other order would leave a flagged root no list names:
    // EIO until repaired by hand).
    match outer.rmdir(&dir) {
        Ok(()) | Err(Error::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let list: Vec<TenantEntry> = outer.tenants()?.into_iter().filter(|t| t.id != entry.id).collect();
    outer.put_tenants(&list)?;
    let was_missing = place.is_none();
    if let Some(place) = place {
        place.remove()?;
    }
    Ok(TenantShred { id: entry.id, label: entry.label, root: entry.kms_uri, was_missing })
}

/// `rotate --root --tenant DIR [--to URI]` on the unmounted volume `outer`: the list first
/// names the new root as pending, the tenant's KEK is re-wrapped under it (as `rotate
/// --root` does for a volume: `--to`, or a new key object of the same token, or the KMS
/// key's current material), then the list names it as the tenant's root. Cut short, the
/// tenant opens under whichever of the two its header names (both are in the sealed list),
/// and running it again finishes it.
pub fn rotate_root(
    outer: &Volume,
    dir: &Path,
    secrets: &TenantSecrets,
    to: Option<&str>,
    (create_key, destroy_old): (bool, bool),
) -> Result<crate::format::VolumeHeader> {
    let entry = named(outer, dir)?;
    refuse_while_converting(outer, &entry, "rotated")?;
    let shown = outer.tenant_dir(&entry.id);
    let place =
        Place::open(outer, &entry)?.ok_or_else(|| Error::integrity(&shown, "the tenant's volume is missing"))?;
    let at = place.path().to_path_buf();
    let _lock = crate::daemon::lock_volume(&at)?;
    let header = super::checked_header(outer, &entry, &at)?;
    let set = |f: &dyn Fn(TenantEntry) -> TenantEntry| -> Result<()> {
        let list: Vec<TenantEntry> =
            outer.tenants()?.into_iter().map(|t| if t.id == entry.id { f(t) } else { t }).collect();
        outer.put_tenants(&list)
    };
    // Trusted, and no module from inside the volume's CIPHERDIR.
    crate::kms::check_root(&header.kms_uri, outer.cipherdir())?;
    let switched = !entry.pending_uri.is_empty() && entry.pending_uri != entry.kms_uri;
    let new = if switched && header.kms_uri == entry.pending_uri {
        header // the header switched before a crash: only the list is left to finish
    } else {
        // A keystore tenant without --to: a new root key in its own keystore.
        let (new_uri, create) =
            crate::fs::next_root(&header.kms_uri, to, create_key)?.unwrap_or((header.kms_uri.clone(), false));
        check_tenant_root(&new_uri)?;
        if new_uri != header.kms_uri {
            // No module from inside the volume's CIPHERDIR, even one named on the command line.
            if let crate::kms::KmsUri::Pkcs11 { module, .. } = crate::kms::KmsUri::parse(&new_uri)? {
                crate::kms::check_module(&module, outer.cipherdir(), &new_uri)?;
            }
            set(&|t| TenantEntry { pending_uri: new_uri.clone(), ..t })?;
        }
        let scratch = crate::control::scratch_path(&entry.id);
        let on_keystore = matches!(crate::kms::KmsUri::parse(&header.kms_uri), Ok(crate::kms::KmsUri::Local(_)));
        let to = (new_uri != header.kms_uri || !on_keystore).then_some(new_uri.as_str());
        Volume::rotate_root_kms(&at, &secrets.of_entry(&entry), to, create, &scratch, destroy_old)?
    };
    set(&|t| TenantEntry { kms_uri: new.kms_uri.clone(), pending_uri: String::new(), ..t })?;
    Ok(new)
}

/// `passwd --tenant DIR`: re-seals the root key of tenant `entry`'s own keystore under the
/// passphrase `new` gives (the old one from `secrets`); its KEK and data are unchanged.
pub fn change_passphrase(
    outer: &Volume,
    entry: &TenantEntry,
    secrets: &TenantSecrets,
    new: &dyn crate::secret::Secrets,
) -> Result<()> {
    let shown = outer.tenant_dir(&entry.id);
    let place = Place::open(outer, entry)?.ok_or_else(|| Error::integrity(&shown, "the tenant's volume is missing"))?;
    let at = place.path().to_path_buf();
    let _lock = crate::daemon::lock_volume(&at)?;
    let header = super::checked_header(outer, entry, &at)?;
    let ks = crate::kms::own_keystore(&header.kms_uri, &at).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "tenant {}: its root is {}, which has no passphrase (passwd is for an embedded keystore)",
            entry.label, header.kms_uri
        ))
    })?;
    crate::kms::LocalKeystore::change_passphrase(&ks, &secrets.of_entry(entry), new, crate::format::KdfParams::DEFAULT)
        .map_err(|e| e.renamed(&shown.join(ks.file_name().unwrap_or_default())))
}
