//! Tenants: subtrees of a volume whose files live in a volume of their own (own KEK, own
//! root), nested at `CIPHERDIR/tenants/<volume id>/` and listed, sealed, by the outer volume
//! (`fs::tenants`). This module adds one (`tenant add`), opens every tenant when the volume
//! is mounted, and shreds one (`shred --tenant`). Routing requests into a tenant is
//! `fs::InodeFs`'s; re-checking its root, the daemon's.

use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::Flock;

use crate::format::{hex, FEATURE_PAGES};
use crate::fs::{InitOptions, TenantEntry, Volume, TENANTS_DIR};
use crate::kms::{self, Audited, KmsUri};
use crate::secret::Secrets;
use crate::{Error, Result};

/// A tenant of a mounted volume.
pub struct Tenant {
    pub entry: TenantEntry,
    pub state: TenantState,
}

pub enum TenantState {
    /// Unwrapped at mount: its volume, its root, and its lock (held for the mount's life).
    Open { vol: Arc<Volume>, kms: Arc<Audited>, _lock: Flock<File> },
    /// Could not be opened at mount (root unreachable or refusing, volume damaged): its
    /// subtree answers with EKEYREVOKED, and this says why.
    Closed(String),
}

impl Tenant {
    pub fn volume(&self) -> Option<&Arc<Volume>> {
        match &self.state {
            TenantState::Open { vol, .. } => Some(vol),
            TenantState::Closed(_) => None,
        }
    }
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

/// Makes the new directory `dir` (a path inside the volume; its parent must exist, and it
/// must not) the root of a new tenant whose root is `uri` (`create_key`: made there). The
/// volume is not mounted (the caller holds its lock). Steps, each leaving a volume that
/// opens: the tenant's volume is made beside (`tenants/.new-*`) and moved into place, the
/// directory is made, and last the sealed list names it.
pub fn add(outer: &Volume, dir: &Path, uri: &str, create_key: bool, secrets: &dyn Secrets) -> Result<TenantEntry> {
    check_tenant_root(uri)?;
    let dir = volume_path(dir)?;
    let parent = dir.parent().unwrap_or(Path::new(""));
    for a in parent.ancestors() {
        if !a.as_os_str().is_empty() && outer.stat(a).is_ok() {
            if let Some(t) = outer.tenant_at(a)? {
                return Err(Error::InvalidArgument(format!(
                    "/{}: inside tenant {} ({}): tenants do not nest",
                    dir.display(),
                    hex(&t.id),
                    t.label
                )));
            }
        }
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
        Ok(s) if s.kind == crate::fs::EntryKind::Directory => {}
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
        dir_id: [0; 16],
        kms_uri: made.kms_uri.clone(),
        label: format!("/{}", dir.display()),
    };
    let listed = (|| {
        std::fs::rename(&new, &place).map_err(|e| Error::io(&place, "move the tenant's volume into place", e))?;
        crate::durable::sync_dir(&tenants)?;
        outer.mkdir(&dir, 0o755)?;
        let entry = TenantEntry { dir_id: outer.directory_id(&dir)?, ..entry.clone() };
        let mut list = outer.tenants()?;
        list.push(entry.clone());
        outer.put_tenants(&list)?;
        Ok(entry)
    })();
    if listed.is_err() {
        // Nothing names it: take it back (its root key, if made here, stays: say so).
        let _ = outer.rmdir(&dir);
        let _ = std::fs::remove_dir_all(&new);
        let _ = std::fs::remove_dir_all(&place);
        if create_key {
            tracing::warn!(root = %made.kms_uri, "the root key made for the tenant was not destroyed");
        }
    }
    listed
}

use std::os::unix::fs::DirBuilderExt;

/// Where tenant `entry`'s volume lives, checked to be a real directory below a real
/// `tenants/` (a symlink planted at either is refused, not followed).
fn place_of(outer: &Volume, entry: &TenantEntry) -> Result<Option<PathBuf>> {
    let place = outer.tenant_dir(&entry.id);
    for p in [place.parent().unwrap_or(&place), &place] {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(Error::integrity(p, "expected a directory, found something else (planted?)")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(p, "stat", e)),
        }
    }
    Ok(Some(place))
}

/// Opens every tenant of `outer` for a mount: a tenant that cannot be opened is `Closed`
/// (its subtree dark), the rest of the volume is served. `secrets` gives PKCS#11 PINs.
pub fn open_all(outer: &Volume, secrets: &dyn Secrets, read_only: bool) -> Result<Vec<Tenant>> {
    let mut out = Vec::new();
    for entry in outer.tenants()? {
        let opened = place_of(outer, &entry).and_then(|place| {
            let dir =
                place.ok_or_else(|| Error::integrity(outer.tenant_dir(&entry.id), "the tenant's volume is missing"))?;
            open_one(&entry, &dir, secrets, read_only)
        });
        let state = match opened {
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

fn open_one(entry: &TenantEntry, dir: &Path, secrets: &dyn Secrets, read_only: bool) -> Result<TenantState> {
    let (vol, kms, lock) = open_at(entry, dir, secrets)?;
    vol.files_removed()?;
    if !read_only {
        if let Some(report) = vol.begin_mount()? {
            tracing::info!(tenant = %hex(&entry.id), problems = report.problems.len(), "tenant recovered after an unclean shutdown");
        }
    }
    tracing::info!(tenant = %hex(&entry.id), label = %entry.label, root = %entry.kms_uri, "tenant opened");
    Ok(TenantState::Open { vol: Arc::new(vol), kms: Arc::new(kms), _lock: lock })
}

/// Opens the volume of tenant `entry` in `dir`, checked against the list first: its id and
/// root must be the ones the list names, and the root an HSM or KMS key.
fn open_at(entry: &TenantEntry, dir: &Path, secrets: &dyn Secrets) -> Result<(Volume, Audited, Flock<File>)> {
    let lock = crate::daemon::lock_volume(dir)?;
    let header = Volume::read_live_header(dir)?;
    if header.volume_id != entry.id {
        return Err(Error::integrity(dir, format!("holds volume {}, not the tenant's", hex(&header.volume_id))));
    }
    if header.kms_uri != entry.kms_uri {
        return Err(Error::integrity(
            dir,
            format!("names the root {}, but the tenant list names {}", header.kms_uri, entry.kms_uri),
        ));
    }
    check_tenant_root(&header.kms_uri)?;
    let kms = kms::open(&header.kms_uri, dir, secrets)?.for_tenant(&entry.label);
    let vol = Volume::open_with_kms(dir, header, &kms)?;
    Ok((vol, kms, lock))
}

/// A tenant's volume opened for a command on the unmounted volume `outer` (`fsck`,
/// `rotate`), with its root and its lock.
pub struct Opened {
    pub entry: TenantEntry,
    pub vol: Volume,
    pub kms: Audited,
    _lock: Flock<File>,
}

/// Opens tenant `entry` of the unmounted volume `outer`.
pub fn open(outer: &Volume, entry: &TenantEntry, secrets: &dyn Secrets) -> Result<Opened> {
    let dir = place_of(outer, entry)?
        .ok_or_else(|| Error::integrity(outer.tenant_dir(&entry.id), "the tenant's volume is missing"))?;
    let (vol, kms, lock) = open_at(entry, &dir, secrets)?;
    Ok(Opened { entry: entry.clone(), vol, kms, _lock: lock })
}

/// The tenant whose subtree holds `path` (a path inside the volume), and the path inside
/// the tenant; `None` for a path of the volume's own.
pub fn route(outer: &Volume, path: &Path) -> Result<Option<(TenantEntry, PathBuf)>> {
    let list = outer.tenants()?;
    if list.is_empty() {
        return Ok(None);
    }
    let path = volume_path(path)?;
    let mut prefix = PathBuf::new();
    for (i, c) in path.components().enumerate() {
        prefix.push(c);
        match outer.stat(&prefix) {
            Ok(s) if s.kind == crate::fs::EntryKind::Directory => {}
            _ => return Ok(None),
        }
        let id = outer.directory_id(&prefix)?;
        if let Some(t) = list.iter().find(|t| t.dir_id == id) {
            let rest: PathBuf = path.components().skip(i + 1).collect();
            return Ok(Some((t.clone(), rest)));
        }
    }
    Ok(None)
}

/// The tenant whose root is `dir` exactly (for commands that name a tenant).
pub fn named(outer: &Volume, dir: &Path) -> Result<TenantEntry> {
    match route(outer, dir)? {
        Some((t, rest)) if rest.as_os_str().is_empty() => Ok(t),
        _ => Err(Error::InvalidArgument(format!(
            "{}: not a tenant's root (`envelopefs status` lists them)",
            dir.display()
        ))),
    }
}

/// Refuses scratch directories (`--scratch`; `--ephemeral` is the root) that are a
/// tenant's root, lie inside a tenant or hold one: the scratch is emptied at unmount, which
/// would take the tenant's root with it, and its key is not the tenant's.
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
        let mut stack = vec![rel];
        while let Some(p) = stack.pop() {
            let Ok(entries) = outer.readdir(&p) else { continue };
            for e in entries.into_iter().filter(|e| e.kind == crate::fs::EntryKind::Directory) {
                let child = p.join(&e.name);
                let id = outer.directory_id(&child)?;
                if let Some(t) = list.iter().find(|t| t.dir_id == id) {
                    return clash(d, format!("holds tenant {}", t.label));
                }
                stack.push(child);
            }
        }
    }
    Ok(())
}

/// What `shred --tenant` did.
#[derive(Debug)]
pub struct TenantShred {
    pub id: [u8; 16],
    pub label: String,
    pub root: String,
}

/// Shreds the tenant whose root is directory `dir` of the volume `outer`: its
/// volume's wrapped KEK and name key are destroyed (O(1): its header; the point after which
/// its data is noise), the list stops naming it, its directory goes from the listing, and
/// its volume's files are removed. A crash after the first step leaves a tenant that opens
/// dark ("shredded"), and running the shred again finishes it.
///
/// `locked`: the caller holds the tenant volume's lock (the mount's daemon, which took the
/// tenant dark first).
pub fn shred(outer: &Volume, dir: &Path, locked: bool) -> Result<TenantShred> {
    let entry = named(outer, dir)?;
    let dir = volume_path(dir)?;
    let place = place_of(outer, &entry)?;
    if let Some(place) = &place {
        let _lock = if locked { None } else { Some(crate::daemon::lock_volume(place)?) };
        let scratch = crate::control::scratch_path(&entry.id);
        Volume::shred_volume(place, &scratch, None, None)?;
    }
    let list: Vec<TenantEntry> = outer.tenants()?.into_iter().filter(|t| t.id != entry.id).collect();
    outer.put_tenants(&list)?;
    outer.rmdir(&dir)?;
    if let Some(place) = place {
        std::fs::remove_dir_all(&place).map_err(|e| Error::io(&place, "remove the shredded tenant's files", e))?;
    }
    Ok(TenantShred { id: entry.id, label: entry.label, root: entry.kms_uri })
}
