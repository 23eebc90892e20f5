//! Tenants: subtrees of a volume whose files live in a volume of their own (own KEK, own
//! root), nested at `CIPHERDIR/tenants/<volume id>/` and listed, sealed, by the outer volume
//! (`fs::tenants`). This module opens every tenant when the volume is mounted, and one for a
//! command, and finds the tenant of a path; `admin` adds and shreds them. Routing requests
//! into a tenant is `fs::InodeFs`'s; re-checking its root, the daemon's.

mod admin;
mod check;
mod convert;
mod place;
mod secrets;

use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::Flock;

pub use admin::{add, change_passphrase, rotate_root, shred, Added, TenantShred};
pub use check::{check, Finding};
pub use convert::{abort as abort_conversion, removing_name, source_name, Aborted, Converted};
pub use place::Place;
pub use secrets::{OneTenant, TenantPassfile, TenantSecrets};

use crate::format::hex;
use crate::fs::{EntryKind, TenantEntry, Volume};
use crate::kms::{self, Audited, KmsUri};
use crate::{Error, Result};

/// A tenant of a mounted volume.
pub struct Tenant {
    pub entry: TenantEntry,
    pub state: TenantState,
}

pub enum TenantState {
    /// Unwrapped at mount: its volume, its root, its lock and its pinned directory (held for
    /// the mount's life).
    Open { vol: Arc<Volume>, kms: Arc<Audited>, held: Held },
    /// Could not be opened at mount (root unreachable or refusing, volume damaged): its
    /// subtree answers with EKEYREVOKED, and this says why.
    Closed(String),
}

/// What an open tenant volume keeps while it is in use: its lock, then its directory (the
/// volume reaches its files through the directory's descriptor).
pub struct Held {
    _lock: Flock<File>,
    _place: Place,
}

/// A path inside the volume, as the operator gives it (`team-a`, `/projects/team-a`):
/// plain names only.
pub fn volume_path(dir: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in dir.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{}: give a path inside the volume, without '..'",
                    dir.display()
                )))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(Error::InvalidArgument("the volume's root cannot be a tenant: name a directory inside it".into()));
    }
    Ok(out)
}

/// A tenant's root: an HSM key, a KMS key, or an embedded keystore of its own (`local:NAME`,
/// inside the tenant's volume, with a passphrase of its own). A keystore elsewhere is
/// refused: shredding the tenant could not destroy it, and other volumes may share it.
fn check_tenant_root(uri: &str) -> Result<()> {
    match KmsUri::parse(uri)? {
        KmsUri::Pkcs11 { .. } | KmsUri::AwsKms(_) => Ok(()),
        KmsUri::Local(p) if kms::is_own_keystore(&p) => Ok(()),
        KmsUri::Local(_) => Err(Error::InvalidArgument(format!(
            "{uri}: a tenant's embedded keystore lives in the tenant's own volume: use local:keystore (or an HSM \
             key, pkcs11:..., or a KMS key, aws-kms:...)"
        ))),
    }
}

/// Whether tenant `entry`'s root is an embedded keystore (nothing to re-check; a passphrase
/// of its own).
pub fn is_keystore(entry: &TenantEntry) -> bool {
    matches!(KmsUri::parse(&entry.kms_uri), Ok(KmsUri::Local(_)))
}

/// Opens every tenant of `outer` for a mount: a tenant that cannot be opened is `Closed`
/// (its subtree dark; a keystore tenant without its passphrase is "locked"), the rest of
/// the volume is served.
pub fn open_all(outer: &Volume, secrets: &TenantSecrets, read_only: bool) -> Result<Vec<Tenant>> {
    let mut out = Vec::new();
    let list = outer.tenants()?;
    for p in secrets.unused(&list) {
        tracing::warn!("--tenant-passfile /{}: no tenant of this volume has that root or id", p.dir.display());
    }
    // A tenant whose files are still being copied in (or that an abort is shredding) is not
    // served: its old directory, still the truth, is (`convert`).
    // A record that does not authenticate closes every tenant (any may be the one), and
    // serves the rest.
    let converting = match outer.tenant_conversion() {
        Ok(c) => Ok(c.filter(|c| c.phase != crate::fs::ConversionPhase::Removing)),
        Err(e) => {
            tracing::error!("{e}: every tenant stays closed");
            Err(e.to_string())
        }
    };
    for entry in list {
        if let Err(why) = &converting {
            out.push(Tenant { entry, state: TenantState::Closed(why.clone()) });
            continue;
        }
        let converting = converting.as_ref().ok().and_then(Option::as_ref);
        if let Some(c) = converting.filter(|c| c.entry.id == entry.id) {
            let why = match c.phase {
                crate::fs::ConversionPhase::Aborting => format!(
                    "being made a tenant, and the undoing of that was cut short: its files are still beside it, \
                     in {}, until `envelopefs tenant add CIPHERDIR {} --abort` finishes",
                    source_name(&c.entry.id).to_string_lossy(),
                    entry.label
                ),
                _ => format!(
                    "being made a tenant (cut short): its files are still beside it, in {} (or {}), until \
                     `envelopefs tenant add CIPHERDIR {}` finishes",
                    source_name(&c.entry.id).to_string_lossy(),
                    removing_name(&c.entry.id).to_string_lossy(),
                    entry.label
                ),
            };
            tracing::warn!(tenant = %hex(&entry.id), label = %entry.label, "{why}");
            out.push(Tenant { entry, state: TenantState::Closed(why) });
            continue;
        }
        let state = match open(outer, &entry, secrets).and_then(|t| ready(&entry, t, read_only)) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(tenant = %hex(&entry.id), label = %entry.label, root = %entry.kms_uri,
                    "the tenant cannot be opened; its subtree is dark: {e}");
                TenantState::Closed(e.to_string())
            }
        };
        out.push(Tenant { entry, state });
    }
    Ok(out)
}

/// An opened tenant volume made ready to serve: checked for files removed behind its back,
/// recovered after an unclean shutdown (read-write).
fn ready(entry: &TenantEntry, t: Opened, read_only: bool) -> Result<TenantState> {
    t.vol.files_removed()?;
    if !read_only {
        t.vol.begin_writing(&format!("tenant {}", hex(&entry.id)))?;
    }
    tracing::info!(tenant = %hex(&entry.id), label = %entry.label, root = %entry.kms_uri, "tenant opened");
    Ok(TenantState::Open { vol: Arc::new(t.vol), kms: Arc::new(t.kms), held: t._held })
}

/// A tenant's volume opened for a command on the unmounted volume `outer` (`fsck`,
/// `rotate`), with its root, lock and pinned directory.
pub struct Opened {
    pub entry: TenantEntry,
    pub vol: Volume,
    pub kms: Audited,
    _held: Held,
}

/// Opens tenant `entry` of `outer`, checked against the list first: its directory must be
/// a real one at the listed place, its header must carry the listed volume id and root,
/// and that root must be a tenant's ([`check_tenant_root`]).
pub fn open(outer: &Volume, entry: &TenantEntry, secrets: &TenantSecrets) -> Result<Opened> {
    let place = Place::open(outer, entry)?
        .ok_or_else(|| Error::integrity(outer.tenant_dir(&entry.id), "the tenant's volume is missing"))?;
    let dir = place.path().to_path_buf();
    let shown = outer.tenant_dir(&entry.id);
    let lock = crate::daemon::lock_volume(&dir).map_err(|e| e.renamed(&shown))?;
    let header = checked_header(outer, entry, &dir)?;
    // Trusted, and no module from inside the volume's CIPHERDIR (the tenant's own is inside it).
    kms::check_root(&header.kms_uri, outer.cipherdir())?;
    // Its keystore (if it has one) named as the operator knows it, not by descriptor.
    let kms = kms::open(&header.kms_uri, &dir, &secrets.of_entry(entry))
        .map_err(|e| match kms::own_keystore(&header.kms_uri, &shown) {
            Some(ks) => e.renamed(&ks),
            None => e,
        })?
        .for_tenant(&entry.label);
    let vol = Volume::open_with_kms(&dir, header, &kms)?;
    Ok(Opened { entry: entry.clone(), vol, kms, _held: Held { _lock: lock, _place: place } })
}

/// The header of tenant `entry`'s volume in `dir`, if it is the listed volume on the listed
/// root.
fn checked_header(outer: &Volume, entry: &TenantEntry, dir: &Path) -> Result<crate::format::VolumeHeader> {
    let shown = outer.tenant_dir(&entry.id);
    let header = Volume::read_live_header(dir).map_err(|e| e.renamed(&shown))?;
    if header.volume_id != entry.id {
        return Err(Error::integrity(&shown, format!("holds volume {}, not the tenant's", hex(&header.volume_id))));
    }
    // The listed root, or the one a `rotate --root --tenant` cut short was moving it to.
    if header.kms_uri != entry.kms_uri && (entry.pending_uri.is_empty() || header.kms_uri != entry.pending_uri) {
        return Err(Error::integrity(
            &shown,
            format!("names the root {}, but the tenant list names {}", header.kms_uri, entry.kms_uri),
        ));
    }
    check_tenant_root(&header.kms_uri)?;
    Ok(header)
}

/// The tenant whose subtree holds `path` (a path inside the volume), and the path inside
/// the tenant; `None` for a path of the volume's own. Fails closed: a directory on the way
/// that cannot be told apart from a tenant's root is an error.
pub fn route(outer: &Volume, path: &Path) -> Result<Option<(TenantEntry, PathBuf)>> {
    let list = outer.tenants()?;
    let path = volume_path(path)?;
    let mut prefix = PathBuf::new();
    for (i, c) in path.components().enumerate() {
        prefix.push(c);
        match outer.stat(&prefix) {
            Ok(s) if s.kind == EntryKind::Directory => {}
            Ok(_) | Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        }
        if let Some(t) = outer.tenant_root_at(&prefix, &list, None)? {
            let rest: PathBuf = path.components().skip(i + 1).collect();
            return Ok(Some((t.clone(), rest)));
        }
    }
    Ok(None)
}

/// The tenant whose root is `dir` exactly (for commands that name a tenant), also when its
/// root directory is missing from its place (a `tenant add` cut short, or the directory
/// removed behind the volume's back).
pub fn named(outer: &Volume, dir: &Path) -> Result<TenantEntry> {
    match route(outer, dir)? {
        Some((t, rest)) if rest.as_os_str().is_empty() => Ok(t),
        None if matches!(outer.stat(&volume_path(dir)?), Err(Error::NotFound(_))) => {
            let list = outer.tenants()?;
            match outer.tenant_place_at(&volume_path(dir)?, &list) {
                Ok(Some(t)) => Ok(t.clone()),
                _ => Err(Error::InvalidArgument(format!(
                    "{}: not a tenant's root (`envelopefs status` lists them)",
                    dir.display()
                ))),
            }
        }
        _ => Err(Error::InvalidArgument(format!(
            "{}: not a tenant's root (`envelopefs status` lists them)",
            dir.display()
        ))),
    }
}

/// Refuses scratch directories (`--scratch`; `--ephemeral` is the root) that are a
/// tenant's root, lie inside a tenant or hold one: the scratch is emptied at unmount, which
/// would take the tenant's root with it, and its key is not the tenant's. Fails closed.
pub fn check_scratch(outer: &Volume, dirs: &[PathBuf]) -> Result<()> {
    let list = outer.tenants()?;
    if list.is_empty() {
        return Ok(());
    }
    let clash = |d: &Path, why: String| {
        Err(Error::InvalidArgument(format!("--scratch {}: {why}; tenants and scratch do not mix", d.display())))
    };
    for d in dirs {
        let rel: PathBuf = d.components().filter(|c| matches!(c, Component::Normal(_))).collect();
        if rel.as_os_str().is_empty() {
            return clash(d, format!("the volume has {} tenant(s)", list.len()));
        }
        if let Some((t, _)) = route(outer, &rel)? {
            return clash(d, format!("inside tenant {}", t.label));
        }
        match outer.stat(&rel) {
            Ok(s) if s.kind == EntryKind::Directory => {}
            Ok(_) | Err(Error::NotFound(_) | Error::NotDir(_)) => continue, // made at mount: holds nothing
            Err(e) => return Err(e),
        }
        let mut stack = vec![rel];
        while let Some(p) = stack.pop() {
            for e in outer.readdir(&p)?.into_iter().filter(|e| e.kind == EntryKind::Directory) {
                let child = p.join(&e.name);
                if let Some(t) = outer.tenant_root_at(&child, &list, None)? {
                    return clash(d, format!("holds tenant {}", t.label));
                }
                stack.push(child);
            }
        }
    }
    Ok(())
}
