//! `fsck`'s look at a volume's tenants as a whole (each tenant's own volume is checked by
//! its own fsck): every tenant's root directory is where the list says, every flagged root
//! is listed, and nothing under `tenants/` is a volume no tenant owns.

use std::path::PathBuf;

use super::Place;
use crate::format::hex;
use crate::fs::{EntryKind, TenantEntry, Volume, TENANTS_DIR};
use crate::Result;

/// One thing `fsck` found about the tenants, and what `--repair` did about it.
#[derive(Debug)]
pub struct Finding {
    pub what: String,
    pub repaired: Option<String>,
}

/// Checks `outer`'s tenants; with `repair`, a listed tenant whose root directory is gone
/// (`tenant add` cut short, or the directory removed behind the volume's back) is unlisted
/// and its volume shredded and removed, and so is a volume under `tenants/` that no tenant
/// owns (a leftover of `tenant add` or `shred --tenant`). A directory that says it is a
/// tenant's root but is not listed is reported, never changed.
pub fn check(outer: &Volume, repair: bool) -> Result<Vec<Finding>> {
    let list = outer.tenants()?;
    let mut out = Vec::new();
    // Every directory of the volume, for the roots.
    let mut found: Vec<[u8; 16]> = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        for e in outer.readdir(&dir)?.into_iter().filter(|e| e.kind == EntryKind::Directory) {
            let child = dir.join(&e.name);
            match outer.tenant_root_at(&child, &list) {
                Ok(Some(t)) => found.push(t.id), // a tenant's root: its entries are the tenant's
                Ok(None) => stack.push(child),
                Err(e) => out.push(Finding { what: format!("/{}: {e}", child.display()), repaired: None }),
            }
        }
    }
    let mut keep: Vec<TenantEntry> = Vec::new();
    for t in &list {
        if found.contains(&t.id) {
            keep.push(t.clone());
            continue;
        }
        let what = format!("tenant {} ({}): listed, but its root directory is gone", t.label, hex(&t.id));
        let repaired = match repair {
            true => Some(drop_volume(outer, t).map_or_else(
                |e| format!("not repaired: {e}"),
                |()| "unlisted; its volume shredded and removed".into(),
            )),
            false => None,
        };
        out.push(Finding { what, repaired });
    }
    if repair && keep.len() != list.len() {
        outer.put_tenants(&keep)?;
    }
    // Volumes under tenants/ that no tenant owns.
    let dir = outer.cipherdir().join(TENANTS_DIR);
    let names: Vec<String> = match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => std::fs::read_dir(&dir)
            .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    for name in names {
        if list.iter().any(|t| hex(&t.id) == name) {
            continue;
        }
        out.push(unowned(outer, &list, &name, repair));
    }
    Ok(out)
}

/// `tenants/NAME`, which no tenant owns: a leftover of `tenant add` (`.new-*`, or made and
/// not listed) or of `shred --tenant`, removed by `repair` (shredded first) — unless it
/// holds a listed tenant's volume (moved there behind the volume's back: left alone).
fn unowned(outer: &Volume, list: &[TenantEntry], name: &str, repair: bool) -> Finding {
    let what =
        format!("{TENANTS_DIR}/{name}: a volume no tenant owns (a leftover of `tenant add` or `shred --tenant`)");
    let place = match Place::open_name(outer, name) {
        Ok(Some(p)) => p,
        Ok(None) => return Finding { what, repaired: None },
        Err(e) => return Finding { what: format!("{TENANTS_DIR}/{name}: {e}"), repaired: None },
    };
    let header = Volume::read_live_header(place.path());
    if let Ok(h) = &header {
        if let Some(t) = list.iter().find(|t| t.id == h.volume_id) {
            let what = format!("{TENANTS_DIR}/{name}: holds tenant {}'s volume (moved there?)", t.label);
            return Finding { what, repaired: Some("not repaired: left alone".into()) };
        }
    }
    if !repair {
        return Finding { what, repaired: None };
    }
    let removed = (|| {
        if let Ok(h) = &header {
            let _lock = crate::daemon::lock_volume(place.path())?;
            Volume::shred_volume(place.path(), &crate::control::scratch_path(&h.volume_id), None, None)?;
        }
        place.remove()
    })();
    let repaired = removed.map_or_else(|e| format!("not repaired: {e}"), |()| "shredded and removed".into());
    Finding { what, repaired: Some(repaired) }
}

/// Shreds and removes tenant `t`'s volume (if it is there and is that tenant's).
fn drop_volume(outer: &Volume, t: &TenantEntry) -> Result<()> {
    let Some(place) = Place::open(outer, t)? else { return Ok(()) };
    {
        let _lock = crate::daemon::lock_volume(place.path())?;
        let h = Volume::read_live_header(place.path())?;
        if h.volume_id != t.id {
            return Err(crate::Error::integrity(outer.tenant_dir(&t.id), "holds another volume: left alone"));
        }
        Volume::shred_volume(place.path(), &crate::control::scratch_path(&t.id), None, None)?;
    }
    place.remove()
}
