//! The mount daemon's side of tenants: the PINs their roots get, a re-check of each
//! tenant's root (a revoked one darkens that subtree only), and their lines in `status`.

use std::path::Path;
use std::sync::Arc;

use crate::format::hex;
use crate::fs::{InodeFs, Volume};
use crate::fuse::Invalidator;
use crate::kms::{self, Audited, Kms, KmsUri};
use crate::revocation::{Policy, Watcher};
use crate::secret::{PassSource, Passphrase, Secrets};
use crate::tenant::{Tenant, TenantState};
use crate::{Error, Result};

/// The PINs a tenant's root gets: the mount's PIN only for a token the volume's own root is
/// on (a keystore passphrase never goes to a token); else `ENVELOPEFS_PIN_FILE`. (A keystore
/// tenant's passphrase comes from its `--tenant-passfile`: `crate::tenant::TenantSecrets`.)
pub(super) struct TenantPins<'a> {
    pub outer_uri: String,
    pub mount: &'a dyn Secrets,
}

impl Secrets for TenantPins<'_> {
    fn passphrase(&self, keystore: &Path, _new: bool) -> Result<Passphrase> {
        Err(Error::Passphrase(format!("{}: not a PIN", keystore.display())))
    }

    fn pin(&self, token: &str) -> Result<Passphrase> {
        match KmsUri::parse(&self.outer_uri) {
            Ok(KmsUri::Pkcs11 { token: own, .. }) if own == token => self.mount.pin(token),
            _ => PassSource::default().pin(token),
        }
    }
}

/// A tenant being served: its part in the file system and its root's re-checks.
pub(super) struct Served {
    pub part: usize,
    pub tenant: Tenant,
    pub watcher: Option<Watcher>,
}

/// Adds every tenant to `fs` (before it is shared); returns their parts.
pub(super) fn add_to(fs: &mut InodeFs, tenants: Vec<Tenant>) -> Vec<(usize, Tenant)> {
    tenants
        .into_iter()
        .map(|t| {
            let part = match &t.state {
                TenantState::Open { vol, .. } => Ok(vol.clone()),
                TenantState::Closed(why) => Err(why.clone()),
            };
            (fs.add_tenant(t.entry.clone(), part), t)
        })
        .collect()
}

/// Starts re-checking each open tenant's root, as the volume's own (`super::watch_root`):
/// going dark drops the kernel's caches of the tenant's inodes, commits and drops the
/// tenant's keys, and leaves the rest of the mount serving.
pub(super) fn watch(
    policy: Policy,
    read_only: bool,
    tenants: Vec<(usize, Tenant)>,
    fs: &Arc<InodeFs>,
    cached: &Invalidator,
) -> Vec<Served> {
    tenants
        .into_iter()
        .map(|(part, tenant)| {
            let watcher = match (&tenant.state, policy.interval) {
                // An embedded keystore has nothing to re-check.
                (TenantState::Open { .. }, _) if crate::tenant::is_keystore(&tenant.entry) => None,
                (TenantState::Open { vol, kms, .. }, Some(_)) => {
                    let (v, k) = (Arc::downgrade(vol), kms.clone());
                    let check = move || {
                        let Some(vol) = v.upgrade() else { return Ok(()) };
                        let h = vol.header();
                        drop(vol);
                        k.recheck(&h.wrapped_kek, &kms::KmsContext::kek(h.volume_id, h.kek_generation))
                    };
                    let (fs, cached, id) = (fs.clone(), cached.clone(), tenant.entry.id);
                    let dark = move |why: &str| {
                        cached.drop_cached(&fs.inodes_of(part));
                        if let Some(vol) = fs.tenant_volume(part) {
                            darken(&vol, why, read_only);
                        }
                        fs.forget_listings();
                        let dropped = cached.drop_cached(&fs.inodes_of(part));
                        tracing::warn!(target: "envelopefs::audit", event = "tenant-dark", tenant = %hex(&id),
                            inodes_dropped = dropped, "tenant keys zeroized; its subtree now fails with EKEYREVOKED");
                    };
                    match Watcher::start_for_tenant(hex(&tenant.entry.id), policy, check, dark) {
                        Ok(w) => Some(w),
                        Err(e) => {
                            tracing::error!(tenant = %hex(&tenant.entry.id), "no re-checks of the tenant's root: {e}");
                            None
                        }
                    }
                }
                _ => None,
            };
            Served { part, tenant, watcher }
        })
        .collect()
}

/// Takes a tenant's volume dark (it has no scratch of its own).
pub(super) fn darken(vol: &Volume, why: &str, read_only: bool) {
    let none = crate::control::scratch_path(&vol.header().volume_id);
    if let Some(report) = vol.go_dark(why, &none, read_only) {
        for e in &report.not_committed {
            tracing::error!(tenant = %hex(&vol.header().volume_id), "not committed before going dark: {e}");
        }
    }
}

/// The tenants' part of `status`.
pub(super) fn status_json(served: &[Served]) -> serde_json::Value {
    let one = |s: &Served| {
        let e = &s.tenant.entry;
        let mut v = serde_json::json!({ "id": hex(&e.id), "label": e.label, "root": e.kms_uri });
        match &s.tenant.state {
            TenantState::Closed(why) => {
                v["state"] = "closed".into();
                v["reason"] = why.clone().into();
            }
            TenantState::Open { vol, kms, .. } => {
                v["state"] = if vol.dark().is_some() { "dark" } else { "open" }.into();
                if let Some(why) = vol.dark() {
                    v["reason"] = why.into();
                }
                if let Ok(stats) = vol.live_stats() {
                    v["files"] = stats.files.into();
                    v["wrapped_deks"] = stats.wrapped_deks.into();
                }
                let (wraps, unwraps) = kms.calls();
                v["kms_calls"] = serde_json::json!({ "wrap": wraps, "unwrap": unwraps, "recheck": kms.rechecks() });
            }
        }
        v["root_check"] = match &s.watcher {
            Some(w) => w.monitor().status_json(),
            None => serde_json::json!({ "state": "off" }),
        };
        v
    };
    served.iter().map(one).collect::<Vec<_>>().into()
}

/// The open tenant whose root is `dir` (a path inside the volume), with its root.
pub(super) fn named<'a>(outer: &Volume, served: &'a [Served], dir: &Path) -> Result<(&'a Volume, &'a Audited)> {
    let entry = crate::tenant::named(outer, dir)?;
    open_one(served, &entry.id)
}

fn open_one<'a>(served: &'a [Served], id: &[u8; 16]) -> Result<(&'a Volume, &'a Audited)> {
    match served.iter().find(|s| s.tenant.entry.id == *id).map(|s| &s.tenant.state) {
        Some(TenantState::Open { vol, kms, .. }) => match vol.dark_error() {
            Some(e) => Err(e),
            None => Ok((vol, kms)),
        },
        Some(TenantState::Closed(why)) => {
            Err(Error::Revoked { path: Path::new(&format!("tenant {}", hex(id))).into(), reason: why.clone() })
        }
        None => Err(Error::NotFound(Path::new(&format!("tenant {}", hex(id))).into())),
    }
}

/// `shred --tenant DIR` on the mounted volume: the tenant goes dark first (the kernel's
/// caches of it dropped, what it accepted committed, its keys dropped; its requests fail
/// with EKEYREVOKED), then is shredded as offline (`crate::tenant::shred`), and its
/// directory leaves the kernel's cache.
pub(super) fn shred(
    outer: &Volume,
    served: &[Served],
    fs: &InodeFs,
    cached: &Invalidator,
    dir: &Path,
) -> Result<crate::tenant::TenantShred> {
    let entry = crate::tenant::named(outer, dir)?;
    let served = served.iter().find(|s| s.tenant.entry.id == entry.id);
    // This daemon holds an open tenant's lock; a closed one's it must take (and fail if
    // someone else holds it).
    let mut locked = false;
    if let Some(s) = served {
        cached.drop_cached(&fs.inodes_of(s.part));
        if let TenantState::Open { vol, .. } = &s.tenant.state {
            darken(vol, "the tenant was shredded", false);
            locked = true;
        }
        fs.forget_listings();
    }
    let done = crate::tenant::shred(outer, dir, locked)?;
    let path = crate::tenant::volume_path(dir)?;
    let parent = path.parent().unwrap_or(Path::new(""));
    if let (Some(ino), Some(name)) = (fs.dir_inode(parent), path.file_name()) {
        cached.forget_entry(ino, name);
    }
    if let Some(s) = served {
        cached.drop_cached(&fs.inodes_of(s.part));
    }
    tracing::warn!(target: "envelopefs::audit", event = "tenant-shredded", tenant = %hex(&done.id), label = %done.label,
        "tenant shredded: its wrapped keys destroyed, its files removed");
    Ok(done)
}

/// `rotate --rekey` of `path` (inside the volume or one of its tenants), as a request
/// through the mount would run it: going dark waits for it, and it starts on no dark volume.
pub(super) fn rekey(outer: &Volume, served: &[Served], path: &Path) -> Result<u64> {
    match crate::tenant::route(outer, path)? {
        None => outer.rekey(path),
        Some((entry, rest)) => {
            let (vol, _) = open_one(served, &entry.id)?;
            let _op = vol.op()?;
            vol.rekey(&rest)
        }
    }
}
