//! Tenants: subtrees of a volume whose files live in a volume of their own (own KEK, own
//! root), nested at `CIPHERDIR/tenants/<volume id>/` and listed, sealed, by the outer volume
//! (`fs::tenants`). This module opens every tenant when the volume is mounted, and one for a
//! command, and finds the tenant of a path; `admin` adds and shreds them. Routing requests
//! into a tenant is `fs::InodeFs`'s; re-checking its root, the daemon's.

mod admin;
mod check;
mod place;

use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::Flock;

pub use admin::{add, rotate_root, shred, TenantShred};
pub use check::{check, Finding};
pub use place::Place;

use crate::format::hex;
use crate::fs::{EntryKind, TenantEntry, Volume};
use crate::kms::{self, Audited, KmsUri};
use crate::secret::Secrets;
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

/// Only roots that need no passphrase of their own at mount: an HSM key or a KMS key.
fn check_tenant_root(uri: &str) -> Result<()> {
    match KmsUri::parse(uri)? {
        KmsUri::Pkcs11 { .. } | KmsUri::AwsKms(_) => Ok(()),
        KmsUri::Local(_) => Err(Error::InvalidArgument(format!(
            "{uri}: a tenant's root is an HSM key (pkcs11:...) or a KMS key (aws-kms:...); an embedded keystore \
             would need a passphrase of its own at every mount"
        ))),
    }
}

/// Opens every tenant of `outer` for a mount: a tenant that cannot be opened is `Closed`
/// (its subtree dark), the rest of the volume is served. `secrets` gives PKCS#11 PINs.
pub fn open_all(outer: &Volume, secrets: &dyn Secrets, read_only: bool) -> Result<Vec<Tenant>> {
    let mut out = Vec::new();
    for entry in outer.tenants()? {
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
        if let Some(report) = t.vol.begin_mount()? {
            tracing::info!(tenant = %hex(&entry.id), problems = report.problems.len(), "tenant recovered after an unclean shutdown");
        }
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
/// and that root must be an HSM or KMS key.
pub fn open(outer: &Volume, entry: &TenantEntry, secrets: &dyn Secrets) -> Result<Opened> {
    let place = Place::open(outer, entry)?
        .ok_or_else(|| Error::integrity(outer.tenant_dir(&entry.id), "the tenant's volume is missing"))?;
    let dir = place.path().to_path_buf();
    let shown = outer.tenant_dir(&entry.id);
    let lock = crate::daemon::lock_volume(&dir).map_err(|e| e.renamed(&shown))?;
    let header = checked_header(outer, entry, &dir)?;
    // Trusted, and no module from inside the volume's CIPHERDIR (the tenant's own is inside it).
    kms::check_root(&header.kms_uri, outer.cipherdir())?;
    let kms = kms::open(&header.kms_uri, &dir, secrets)?.for_tenant(&entry.label);
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
