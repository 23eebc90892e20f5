//! `fsck`'s look at a volume's tenants as a whole (each tenant's own volume is checked by
//! its own fsck): every tenant's root directory is where the list says, every flagged root
//! is listed, and nothing under `tenants/` is a volume no tenant owns.
//!
//! What it finds in CIPHERDIR is not authenticated as a whole (a directory can be deleted or
//! renamed there), so it never shreds or removes anything: the one repair is unlisting a
//! tenant whose root directory is gone *and* whose volume is gone or shredded already (what
//! a `shred --tenant` cut short leaves), which loses nothing, and making a missing root again
//! at its listed place with its listed id (the sealed list vouches for both).

use std::os::unix::ffi::OsStrExt;
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

/// Checks `outer`'s tenants (see the module doc for what `repair` may do).
pub fn check(outer: &Volume, repair: bool) -> Result<Vec<Finding>> {
    let list = outer.tenants()?;
    let mut out = Vec::new();
    let conversion = outer.tenant_conversion().unwrap_or_else(|e| {
        out.push(Finding { what: e.to_string(), repaired: None });
        None
    });
    // (A tenant's own volume marks itself with the record while it is being filled: not a
    // conversion of its own.)
    let conversion_id = conversion.as_ref().map(|c| c.entry.id);
    if let Some(c) = conversion.filter(|c| c.entry.id != outer.header().volume_id) {
        let (still, how) = match c.phase {
            crate::fs::ConversionPhase::Copying => (
                format!(
                    " (its files are still beside it, in {} or {})",
                    super::source_name(&c.entry.id).to_string_lossy(),
                    super::removing_name(&c.entry.id).to_string_lossy()
                ),
                "",
            ),
            crate::fs::ConversionPhase::Removing => (String::new(), ""),
            crate::fs::ConversionPhase::Aborting => (" (an abort of it was cut short)".to_string(), " --abort"),
        };
        out.push(Finding {
            what: format!(
                "{}: being made a tenant, cut short{still}: run `envelopefs tenant add CIPHERDIR {}{how}` to finish it",
                c.entry.label, c.entry.label
            ),
            repaired: None,
        });
    }
    // Every directory of the volume, for the roots (a tenant's root holds nothing of the
    // volume's own). A walk that met errors proves no root missing.
    let mut found: Vec<[u8; 16]> = Vec::new();
    let mut dirs: std::collections::HashMap<[u8; 16], PathBuf> = std::collections::HashMap::new();
    let mut walk_clean = true;
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        if let Ok(id) = outer.dir_id_of(&dir) {
            dirs.insert(id, dir.clone());
        }
        let entries = match outer.readdir(&dir) {
            Ok(e) => e,
            Err(e) => {
                walk_clean = false;
                out.push(Finding { what: format!("/{}: {e}", dir.display()), repaired: None });
                continue;
            }
        };
        for e in entries.into_iter().filter(|e| e.kind == EntryKind::Directory) {
            let child = dir.join(&e.name);
            let place = match outer.tenant_place_at(&child, &list) {
                Ok(p) => p,
                Err(e) => {
                    walk_clean = false;
                    out.push(Finding { what: format!("/{}: {e}", child.display()), repaired: None });
                    continue;
                }
            };
            match outer.tenant_root_at(&child, &list, None) {
                Ok(Some(t)) => found.push(t.id),
                Ok(None) if place.is_some() => {
                    let t = place.expect("checked");
                    let what = format!(
                        "/{}: is where tenant {}'s root belongs, but is a plain directory (its root removed or replaced behind the volume's back)",
                        child.display(),
                        t.label
                    );
                    out.push(Finding { what, repaired: None });
                }
                Ok(None) => stack.push(child),
                Err(e) => {
                    walk_clean = false;
                    out.push(Finding { what: format!("/{}: {e}", child.display()), repaired: None });
                }
            }
        }
    }
    let mut unlist: Vec<[u8; 16]> = Vec::new();
    for t in list.iter().filter(|t| !found.contains(&t.id)) {
        let what = format!("tenant {} ({}): listed, but its root directory was not found", t.label, hex(&t.id));
        let gone = walk_clean && volume_gone(outer, t);
        // Its place: its parent (found by id on the walk) and its name, with nothing there.
        let place = dirs.get(&t.parent_id).map(|p| p.join(std::ffi::OsStr::from_bytes(&t.name)));
        let free = place.as_ref().is_some_and(|p| matches!(outer.stat(p), Err(crate::Error::NotFound(_))));
        let repaired = match (repair, gone, free) {
            (true, true, _) => {
                unlist.push(t.id);
                Some("unlisted (its volume was gone or shredded already)".to_string())
            }
            // The sealed list vouches for its id and place: the root is made again there.
            (true, false, true) => {
                let p = place.expect("checked");
                Some(match outer.mkdir_tenant_root(&p, t.dir_id) {
                    Ok(()) => format!("its root made again at /{}", p.display()),
                    Err(e) => format!("not repaired: {e}"),
                })
            }
            (true, false, false) => {
                Some("not repaired: its volume still holds keys and its place is taken or gone".to_string())
            }
            (false, ..) => None,
        };
        out.push(Finding { what, repaired });
    }
    if !unlist.is_empty() {
        let keep: Vec<TenantEntry> = list.iter().filter(|t| !unlist.contains(&t.id)).cloned().collect();
        outer.put_tenants(&keep)?;
    }
    // Volumes under tenants/ that no tenant owns: reported, for the operator to remove.
    let dir = outer.cipherdir().join(TENANTS_DIR);
    let names: Vec<String> = match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => std::fs::read_dir(&dir)
            .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    // (The tenant a conversion is making is not listed yet early on: its record owns it.)
    let making = conversion_id.map(|id| hex(&id));
    for name in names.into_iter().filter(|n| !list.iter().any(|t| hex(&t.id) == *n) && making.as_ref() != Some(n)) {
        let what = format!(
            "{TENANTS_DIR}/{name}: a volume no tenant owns (a leftover of `tenant add`, or put there); \
             remove it by hand once you know what it is"
        );
        out.push(Finding { what, repaired: repair.then(|| "not repaired: left as it is".to_string()) });
    }
    Ok(out)
}

/// Whether tenant `t`'s volume is gone or shredded, or holds no file (as a `tenant add`
/// cut short leaves it): nothing a shred of it could lose.
pub(super) fn holds_nothing(outer: &Volume, t: &TenantEntry) -> bool {
    volume_gone(outer, t)
        || Place::open(outer, t).ok().flatten().is_some_and(|place| {
            crate::store::Store::open(&place.path().join(crate::fs::STORE_FILE))
                .and_then(|s| s.counts())
                .is_ok_and(|(files, _)| files == 0)
        })
}

/// Whether tenant `t`'s volume is missing, or its header says it was shredded.
fn volume_gone(outer: &Volume, t: &TenantEntry) -> bool {
    match Place::open(outer, t) {
        Ok(None) => true,
        Ok(Some(place)) => match Volume::read_live_header(place.path()) {
            Ok(h) => h.is_shredded(),
            Err(crate::Error::Shredded(_)) => true,
            Err(_) => false,
        },
        Err(_) => false,
    }
}
