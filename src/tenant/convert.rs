//! Making an existing directory a tenant (`tenant add CIPHERDIR DIR` where DIR exists),
//! resumably. A tenant's files live in a volume of their own, bound to its id, so they are
//! copied into it (decrypted under the volume's keys, encrypted under the tenant's), not
//! re-wrapped. In this order, each step recorded before it is taken, so that a run killed at
//! any point leaves a volume that opens with every file readable, and running `tenant add`
//! again finishes the job:
//! 1. checks, before anything changes: DIR holds no tenant (listed or found) and no scratch
//!    directory, and no file in it has a hard link outside it (a file cannot be on both
//!    sides of a boundary);
//! 2. the tenant's volume is made and moved to its id's name;
//! 3. the record (`fs::Conversion`, sealed under the KEK) names the tenant's list entry and
//!    DIR's directory id, phase *copying*; the tenant's volume is opened (a wrong passphrase
//!    or a root that cannot unwrap stops here, DIR untouched, record and volume removed) and
//!    marked, in its own store, as being filled;
//! 4. DIR is renamed `.envelopefs-converting-<tenant id>` beside it: the *source*, still the
//!    truth, still served by a mount under that name;
//! 5. the tenant is listed and its root made at DIR's place; a mount does not serve it while
//!    the record says *copying* (it is "closed": being converted);
//! 6. every entry of the source is copied into the tenant: files (their holes kept),
//!    directories, symlinks, nodes, hard links (within DIR), extended attributes, owners,
//!    modes and times; a file's times are set last, after its data is synced (one syncfs per
//!    directory), so a rerun skips a file whose size, mtime and ctime say it is copied and
//!    copies again what differs, and removes from the tenant what the source no longer has;
//! 7. the source is renamed `.envelopefs-removing-<tenant id>` (nothing written to it from
//!    then on is copied), the tenant's own mark that it is being filled (sealed under its
//!    KEK, set when it was made) is cleared, and the record moves to phase *removing*: from
//!    here on the tenant is the truth, and no record put back from before makes a rerun copy
//!    into it again (nothing is copied into a tenant without its mark);
//! 8. the source is removed (its files, and their wrapped DEKs with them);
//! 9. the record is cleared.
//!
//! `tenant add --abort DIR` undoes a conversion still copying, in an order that keeps every
//! file readable too: the tenant's root goes, the list forgets it, the source gets DIR's
//! name back, the tenant's volume is shredded, the record is cleared.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::admin::{list, Added, NewVolume};
use super::{volume_path, TenantSecrets};
use super::{Opened, Place};
use crate::format::hex;
use crate::fs::{Attr, AttrChanges, Conversion, ConversionPhase, EntryKind, SetTime, Volume, XattrMode};
use crate::progress::Progress;
use crate::{Error, Result};

/// Bytes copied per read.
const CHUNK: usize = 1 << 20;

/// The name the directory being converted has, beside its place, while it is copied.
pub fn source_name(id: &[u8; 16]) -> OsString {
    format!(".envelopefs-converting-{}", hex(id)).into()
}

/// The name of what is left of it once copied, while it is removed.
pub fn removing_name(id: &[u8; 16]) -> OsString {
    format!(".envelopefs-removing-{}", hex(id)).into()
}

/// What a conversion copied.
#[derive(Debug, Default)]
pub struct Converted {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    /// Symlinks, device nodes, FIFOs and sockets.
    pub other: u64,
    /// Entries already copied by a run cut short, left as they were.
    pub skipped: u64,
    /// This run finished one cut short.
    pub resumed: bool,
    /// The volume's record said copying, but the tenant's own said its copy was done (a
    /// record put back from before): nothing was copied, and the directory being converted
    /// was left beside the tenant, for the operator.
    pub left_beside: bool,
    /// The source was gone when a rerun came to copy it (removed through a mount while the
    /// conversion was cut short): the tenant holds what was copied before.
    pub source_gone: bool,
}

/// Starts converting directory `dir` of `outer` (unmounted) into a tenant on root `uri`.
pub(super) fn begin(
    outer: &Volume,
    dir: &Path,
    (uri, create_key): (&str, bool),
    secrets: &TenantSecrets,
) -> Result<Added> {
    check_tree(outer, dir, "nothing was changed")?;
    let source_dir = outer.dir_id_of(dir)?;
    let made = NewVolume::make(outer, dir, uri, create_key, secrets)?;
    let entry = made.place(outer, dir)?;
    let c = Conversion { entry: entry.clone(), source_dir, phase: ConversionPhase::Copying };
    // Opened before anything of the volume changes (a wrong passphrase, or a root that
    // cannot unwrap what it wrapped, stops here with nothing left behind), and marked, in
    // its own store, as being filled: nothing is ever copied into a tenant without that
    // mark, and only this step sets it (a mark missing later means "done", or deleted: both
    // read safe). Killed before the record below, the volume is left unlisted beside, and
    // `fsck` names it.
    let marked = super::open(outer, &entry, secrets).and_then(|t| t.vol.put_tenant_conversion(Some(&c)).map(|()| t));
    let opened = match marked {
        Ok(t) => t,
        Err(e) => {
            made.remove(outer, &entry);
            return Err(e);
        }
    };
    if let Err(e) = outer.put_tenant_conversion(Some(&c)) {
        drop(opened);
        made.remove(outer, &entry);
        return Err(e);
    }
    finish(outer, dir, c, secrets, Some(opened), false)
}

/// Finishes the conversion `c` that a run cut short left (`tenant add` of its directory).
pub(super) fn resume(outer: &Volume, dir: &Path, c: Conversion, secrets: &TenantSecrets) -> Result<Added> {
    same_dir(outer, &c, dir)?;
    if c.phase == ConversionPhase::Aborting {
        return Err(Error::InvalidArgument(format!(
            "{}: an abort of this conversion was cut short: finish it with `envelopefs tenant add CIPHERDIR {} --abort`",
            c.entry.label, c.entry.label
        )));
    }
    tracing::info!(tenant = %hex(&c.entry.id), label = %c.entry.label, root = %c.entry.kms_uri,
        "finishing a conversion cut short (onto the root it began with)");
    finish(outer, dir, c, secrets, None, true)
}

/// `dir` is the directory conversion `c` is of: its name, in the directory the conversion
/// began in (found by its id: it may have moved since), else an error saying which it is.
fn same_dir(outer: &Volume, c: &Conversion, dir: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let parent = dir.parent().unwrap_or(Path::new(""));
    let named = dir.file_name().is_some_and(|n| n.as_bytes() == c.entry.name.as_slice());
    if !(named && dir_id_at(outer, parent)? == Some(c.entry.parent_id)) {
        return Err(Error::InvalidArgument(format!(
            "the conversion of {} into a tenant was cut short: finish it first with `envelopefs tenant add CIPHERDIR \
             DIR` (or undo it with --abort), DIR being that directory's path now ({} unless its parent moved)",
            c.entry.label, c.entry.label
        )));
    }
    Ok(())
}

/// Steps 4 to 9, each skipped if a run before did it.
fn finish(
    outer: &Volume,
    dir: &Path,
    mut c: Conversion,
    secrets: &TenantSecrets,
    opened: Option<Opened>,
    resumed: bool,
) -> Result<Added> {
    // Both volumes are written as a mount writes them: what a run killed before left is
    // recovered first, and this run's marker makes the next mount recover what it leaves.
    outer.begin_writing("the volume")?;
    let t = match opened {
        Some(t) => t,
        None => super::open(outer, &c.entry, secrets)?,
    };
    t.vol.begin_writing(&c.entry.label)?;
    let filling =
        |t: &Opened| -> Result<bool> { Ok(t.vol.tenant_conversion()?.is_some_and(|m| m.entry.id == c.entry.id)) };
    let parent = dir.parent().unwrap_or(Path::new(""));
    let (source, removing) = (parent.join(source_name(&c.entry.id)), parent.join(removing_name(&c.entry.id)));
    let shown = |p: &Path| PathBuf::from(format!("/{}", p.display()));
    let taken = |p: &Path| {
        Error::integrity(
            shown(p),
            "is not the directory being made a tenant, nor its root (made here while the conversion was cut short?): \
             move it away, then run `tenant add` again",
        )
    };
    if !outer.tenants()?.iter().any(|t| t.id == c.entry.id) {
        match dir_id_at(outer, dir)? {
            Some(id) if id == c.source_dir => outer.rename(dir, &source)?,
            Some(_) => return Err(taken(dir)),
            None if outer.stat(dir).is_ok() => return Err(taken(dir)),
            None if c.phase == ConversionPhase::Copying && dir_id_at(outer, &source)? != Some(c.source_dir) => {
                return Err(Error::integrity(
                    shown(dir),
                    "the directory being made a tenant is neither here nor beside it under its converting name: \
                     nothing was changed (`tenant add --abort` forgets the conversion)",
                ));
            }
            None => {}
        }
        list(outer, &c.entry)?;
    }
    match outer.stat(dir) {
        Err(Error::NotFound(_)) => outer.mkdir_tenant_root(dir, c.entry.dir_id)?,
        Ok(_) if dir_id_at(outer, dir)? == Some(c.entry.dir_id) => {}
        Ok(_) => return Err(taken(dir)),
        Err(e) => return Err(e),
    }
    let mut report = Converted { resumed, ..Converted::default() };
    if c.phase == ConversionPhase::Copying {
        let at = |p: &Path| -> Result<bool> { Ok(dir_id_at(outer, p)? == Some(c.source_dir)) };
        let being_filled = filling(&t)?;
        if at(&removing)? {
            // Copied, and moved aside to be removed, by a run cut short before its record.
        } else if being_filled && at(&source)? {
            // What a mount may have changed meanwhile must still fit in a tenant.
            let entries = check_tree(
                outer,
                &source,
                "change that through a mount (it is served there), then run `tenant add` again",
            )?;
            let mut links = HashMap::new();
            let mut progress = Progress::new("tenant-add");
            progress.stage("copying entries under the tenant's keys", Some(entries));
            copy_dir(outer, &source, &t.vol, Path::new(""), &mut links, (&mut report, &mut progress))?;
            progress.finish();
            copy_xattrs(outer, &source, outer, dir)?;
            set_attrs(outer, dir, &outer.getattr(&source)?)?;
            t.vol.sync_all()?;
            // Moved aside first: from here on nothing written to it is copied, and it goes.
            outer.rename(&source, &removing)?;
        } else if being_filled || !at(&source)? {
            tracing::warn!(source = %shown(&source).display(), "the directory being converted is gone; the tenant keeps what was copied");
            report.source_gone = true;
        } else {
            // The tenant is not being filled (its copy was done), yet the volume's record says
            // copying: a record put back from before. Nothing is copied over the tenant, and
            // the directory stays where it is, for the operator.
            tracing::warn!(tenant = %hex(&c.entry.id), source = %shown(&source).display(),
                "the tenant's own record says its copy was done: nothing copied, the directory left as it is");
            report.left_beside = true;
        }
        // The tenant is the truth from here.
        if being_filled {
            t.vol.put_tenant_conversion(None)?;
        }
        t.vol.sync_all()?;
        c.phase = ConversionPhase::Removing;
        outer.put_tenant_conversion(Some(&c))?;
    }
    if dir_id_at(outer, &removing)? == Some(c.source_dir) {
        remove_tree(outer, &removing)?;
    }
    // The removed files' keys go now, not with a group commit that an offline command
    // never reaches (a run killed before leaves them to the next mount's recovery).
    outer.flush_pending()?;
    outer.put_tenant_conversion(None)?;
    Ok(Added { entry: c.entry, converted: Some(report) })
}

/// `tenant add --abort DIR`: undoes the conversion of `dir` while it is still copying (see
/// the module doc for the order); returns the tenant that was being made. Only while there
/// is something to give back (the source, at DIR or beside it) and the tenant, if it opens,
/// is still being filled: a tenant whose copy was done holds the files.
pub fn abort(outer: &Volume, dir: &Path, secrets: &TenantSecrets) -> Result<Aborted> {
    let dir = volume_path(dir)?;
    let c = outer.tenant_conversion()?.ok_or_else(|| {
        Error::InvalidArgument(format!("/{}: no conversion into a tenant is under way", dir.display()))
    })?;
    same_dir(outer, &c, &dir)?;
    let label = &c.entry.label;
    let refuse = |why: &str| Err(Error::InvalidArgument(format!("{label}: {why}; nothing was changed")));
    if c.phase == ConversionPhase::Removing {
        return refuse(
            "its files were all copied, and the tenant holds them now: run `envelopefs tenant add` again to finish \
             removing the old copy",
        );
    }
    let parent = dir.parent().unwrap_or(Path::new(""));
    let source = parent.join(source_name(&c.entry.id));
    let back = dir_id_at(outer, &dir)? == Some(c.source_dir);
    let beside = dir_id_at(outer, &source)? == Some(c.source_dir);
    if !back && !beside {
        return refuse(
            "the directory being converted is neither at its place nor beside it: there is nothing to give back",
        );
    }
    let free = matches!(outer.stat(&dir), Err(Error::NotFound(_))) || dir_id_at(outer, &dir)? == Some(c.entry.dir_id);
    if !back && !free {
        return refuse("something else is at its place now: move it away first");
    }
    // The tenant's volume: shredded only if it opens and is still marked as being filled;
    // one that does not open (a forgotten passphrase, a root that refuses, or tampering)
    // is left where it is, for the operator; one already shredded goes.
    let place = Place::open(outer, &c.entry)?;
    let shredded = match place.as_ref().map(|p| Volume::read_live_header(p.path())) {
        Some(Ok(h)) if h.volume_id != c.entry.id => {
            return refuse("its volume under tenants/ holds another volume than the tenant's: see `envelopefs fsck`")
        }
        Some(Ok(h)) => h.is_shredded(),
        Some(Err(Error::Shredded(_))) => true,
        Some(Err(_)) | None => false,
    };
    // Nothing authenticates a shredded header (its keys are noise): it is believed only
    // when this conversion's record says an abort decided to shred the tenant. Otherwise
    // the flag may be planted over a tenant that holds the files.
    if shredded && c.phase != ConversionPhase::Aborting {
        return refuse(
            "its volume's header says it was shredded, but no abort of this conversion shredded it (a header \
             planted or put back?); if you know the half-made tenant holds nothing you need, remove its directory \
             under tenants/ and run the abort again",
        );
    }
    let mut shred_it = false;
    if place.is_some() && !shredded {
        match super::open(outer, &c.entry, secrets) {
            Ok(t) if t.vol.tenant_conversion()?.is_none_or(|m| m.entry.id != c.entry.id) => {
                return refuse(
                    "the tenant's own record says its copy was done, so it holds the files (the volume's record was \
                     put back from before?): run `envelopefs fsck`",
                );
            }
            Ok(_) => shred_it = true,
            Err(e) => {
                tracing::warn!(tenant = %hex(&c.entry.id), "the half-made tenant does not open ({e}): its volume is left as it is")
            }
        }
    }
    // Decided: a run cut short from here on finishes the abort, its shred included.
    if shred_it && c.phase != ConversionPhase::Aborting {
        let aborting = Conversion { phase: ConversionPhase::Aborting, ..c.clone() };
        outer.put_tenant_conversion(Some(&aborting))?;
    }
    outer.begin_writing("the volume")?;
    if dir_id_at(outer, &dir)? == Some(c.entry.dir_id) {
        outer.rmdir(&dir)?; // the root, empty in the volume
    }
    let list = outer.tenants()?;
    if list.iter().any(|t| t.id == c.entry.id) {
        outer.put_tenants(&list.into_iter().filter(|t| t.id != c.entry.id).collect::<Vec<_>>())?;
    }
    if !back {
        outer.rename(&source, &dir)?;
    }
    let mut left = None;
    if let Some(place) = place {
        if shred_it {
            let at = place.path().to_path_buf();
            let _lock = crate::daemon::lock_volume(&at)?;
            Volume::shred_volume(&at, &crate::control::scratch_path(&c.entry.id), None, false, None)?;
        }
        if shred_it || shredded {
            place.remove()?;
        } else {
            left = Some(outer.tenant_dir(&c.entry.id));
        }
    }
    outer.flush_pending()?;
    outer.put_tenant_conversion(None)?;
    Ok(Aborted { entry: c.entry, left })
}

/// What `tenant add --abort` did.
#[derive(Debug)]
pub struct Aborted {
    pub entry: crate::fs::TenantEntry,
    /// The half-made tenant's volume, left where it is because it did not open: nothing
    /// lists it any more; remove it once you know what it is.
    pub left: Option<PathBuf>,
}

/// The id of the directory at `path`, if a directory is there.
fn dir_id_at(outer: &Volume, path: &Path) -> Result<Option<[u8; 16]>> {
    match outer.stat(path) {
        Ok(s) if s.kind == EntryKind::Directory => Ok(Some(outer.dir_id_of(path)?)),
        Ok(_) | Err(Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Step 1: `dir` holds no tenant's root and no scratch directory, and none of its files has
/// a hard link outside it.
fn check_tree(outer: &Volume, dir: &Path, after: &str) -> Result<u64> {
    let refuse = |why: String| Err(Error::InvalidArgument(format!("/{}: {why}; {after}", dir.display())));
    for scratch in outer.recorded_scratch()?.dirs {
        if scratch.starts_with(dir) {
            return refuse(format!("holds the scratch directory /{} (destroyed at unmount)", scratch.display()));
        }
    }
    let list = outer.tenants()?;
    let mut inside: HashMap<u64, (PathBuf, u64, u64)> = HashMap::new(); // ino → (a path, links seen, nlink)
    let mut dirs = HashSet::from([outer.dir_id_of(dir)?]);
    let mut entries = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in outer.readdir(&d)? {
            let p = d.join(&e.name);
            entries += 1;
            match e.kind {
                EntryKind::Directory => {
                    if let Some(t) = outer.tenant_root_at(&p, &list, None)? {
                        return refuse(format!("holds tenant {}: tenants do not nest", t.label));
                    }
                    dirs.insert(outer.dir_id_of(&p)?);
                    stack.push(p);
                }
                EntryKind::Symlink => {}
                _ => {
                    let nlink = outer.stat(&p)?.nlink;
                    if nlink > 1 {
                        inside.entry(e.ino).or_insert((p, 0, nlink)).1 += 1;
                    }
                }
            }
        }
    }
    // A listed tenant whose root is missing would lose its place with its parent.
    if let Some(t) = list.iter().find(|t| dirs.contains(&t.parent_id)) {
        return refuse(format!("tenant {} is listed inside it (its root is missing: see `envelopefs fsck`)", t.label));
    }
    if let Some((p, _, _)) = inside.values().find(|(_, seen, nlink)| seen < nlink) {
        return refuse(format!(
            "/{} has hard links outside it, and a file cannot be both in a tenant and outside it (copy it, or \
             remove the other links)",
            p.display()
        ));
    }
    Ok(entries)
}

/// Copies the entries of `outer`'s directory `src` into the tenant's directory `dst`
/// (existing), and removes from `dst` what `src` does not have.
fn copy_dir(
    outer: &Volume,
    src: &Path,
    t: &Volume,
    dst: &Path,
    links: &mut HashMap<u64, PathBuf>,
    (report, progress): (&mut Converted, &mut Progress),
) -> Result<()> {
    let entries = outer.readdir(src)?;
    let names: HashSet<&OsString> = entries.iter().map(|e| &e.name).collect();
    // Files of this directory copied, whose times (the mark that a copy is whole) wait for
    // their data to reach the disk: one syncfs for them all, not an fsync each.
    let mut written: Vec<(PathBuf, Attr)> = Vec::new();
    for old in t.readdir(dst)? {
        if !names.contains(&old.name) {
            remove_any(t, &dst.join(&old.name))?;
        }
    }
    for e in entries {
        progress.inc();
        let (from, to) = (src.join(&e.name), dst.join(&e.name));
        let a = outer.getattr(&from)?;
        let have = match t.getattr(&to) {
            Ok(h) if h.kind == a.kind => Some(h),
            Ok(_) => {
                remove_any(t, &to)?;
                None
            }
            Err(Error::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        match a.kind {
            EntryKind::Directory => {
                match have {
                    None => t.mkdir(&to, 0o700)?,
                    // Writable to its owner while it fills (a copy cut short set its mode).
                    Some(_) => t.chmod(&to, 0o700)?,
                }
                copy_dir(outer, &from, t, &to, links, (&mut *report, &mut *progress))?;
                copy_xattrs(outer, &from, t, &to)?;
                set_attrs(t, &to, &a)?;
                report.dirs += 1;
            }
            EntryKind::File if a.nlink > 1 && links.contains_key(&a.ino) => {
                let first = &links[&a.ino];
                let same = have.as_ref().is_some_and(|h| t.getattr(first).is_ok_and(|f| f.ino == h.ino));
                if !same {
                    if have.is_some() {
                        t.unlink(&to)?;
                    }
                    t.link(first, &to)?;
                    set_attrs(t, &to, &a)?; // a link may touch the file's times
                }
            }
            EntryKind::File => {
                if a.nlink > 1 {
                    links.insert(a.ino, to.clone());
                }
                // Copied by a run before, and not changed since (its ctime would say so);
                // its attributes and xattrs again all the same (a chmod changes no mtime).
                if have.as_ref().is_some_and(|h| h.size == a.size && h.mtime == a.mtime && a.ctime <= h.ctime) {
                    copy_xattrs(outer, &from, t, &to)?;
                    set_attrs(t, &to, &a)?;
                    report.skipped += 1;
                    continue;
                }
                if have.is_some() {
                    t.unlink(&to)?;
                }
                report.bytes += copy_file(outer, &from, t, &to, a.size)?;
                copy_xattrs(outer, &from, t, &to)?;
                written.push((to, a));
                report.files += 1;
            }
            EntryKind::Symlink => {
                let target = outer.readlink(&from)?;
                match have {
                    Some(_) if t.readlink(&to)? == target => report.skipped += 1,
                    h => {
                        if h.is_some() {
                            t.unlink(&to)?;
                        }
                        t.symlink(&to, &target)?;
                        report.other += 1;
                    }
                }
            }
            kind => {
                if have.as_ref().is_some_and(|h| h.rdev != a.rdev) {
                    t.unlink(&to)?;
                }
                if have.is_none_or(|h| h.rdev != a.rdev) {
                    t.mknod(&to, node_type(kind) | u32::from(a.perm), u64::from(a.rdev))?;
                }
                set_attrs(t, &to, &a)?;
                report.other += 1;
            }
        }
    }
    if !written.is_empty() {
        t.flush_pending()?;
        t.sync_data_fs().map_err(|e| Error::io(dst, "sync", e))?;
        for (to, a) in &written {
            set_attrs(t, to, a)?;
        }
    }
    Ok(())
}

/// Copies the data of file `from` (`size` bytes) into the new file `to`, holes kept as holes
/// (not synced: the caller syncs many at once); returns the bytes copied.
fn copy_file(outer: &Volume, from: &Path, t: &Volume, to: &Path, size: u64) -> Result<u64> {
    let src = outer.open_file(from, false)?;
    let dst = t.create(to, 0o600)?;
    let mut buf = vec![0u8; CHUNK];
    let mut copied = 0;
    let mut at = 0;
    while at < size {
        // The next stretch of data; a file system that cannot tell holes copies it all.
        let start = match src.seek_data(at) {
            Ok(s) => s,
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(6) => break, // ENXIO: holes to the end
            Err(_) => at,
        };
        let end = src.seek_hole(start).unwrap_or(size).min(size);
        let mut off = start;
        while off < end {
            let want = usize::try_from((end - off).min(CHUNK as u64)).unwrap_or(CHUNK);
            let n = src.read_at(off, &mut buf[..want])?;
            if n == 0 {
                break;
            }
            dst.write_at(off, &buf[..n])?;
            off += n as u64;
            copied += n as u64;
        }
        at = end.max(start + 1);
    }
    dst.set_len(size)?;
    dst.close_deferred()?; // committed with the others of its directory
    Ok(copied)
}

fn copy_xattrs(outer: &Volume, from: &Path, t: &Volume, to: &Path) -> Result<()> {
    let names = outer.list_xattrs(from)?;
    for old in t.list_xattrs(to)? {
        if !names.contains(&old) {
            t.remove_xattr(to, &old)?;
        }
    }
    for name in names {
        t.set_xattr(to, &name, &outer.get_xattr(from, &name)?, XattrMode::Set)?;
    }
    Ok(())
}

/// Owner, mode and times of `a` on `path` of volume `v` (times last), in one lookup.
fn set_attrs(v: &Volume, path: &Path, a: &Attr) -> Result<()> {
    let changes = AttrChanges {
        mode: Some(u32::from(a.perm)),
        uid: Some(a.uid),
        gid: Some(a.gid),
        atime: Some(SetTime::At(a.atime)),
        mtime: Some(SetTime::At(a.mtime)),
        drop_privs: false,
    };
    v.change_attrs(path, None, &changes).map(drop)
}

fn node_type(kind: EntryKind) -> u32 {
    match kind {
        EntryKind::Fifo => 0o010000,
        EntryKind::CharDevice => 0o020000,
        EntryKind::BlockDevice => 0o060000,
        EntryKind::Socket => 0o140000,
        _ => 0,
    }
}

/// Removes `path` of volume `v`, a directory with everything in it.
fn remove_any(v: &Volume, path: &Path) -> Result<()> {
    match v.stat(path)?.kind {
        EntryKind::Directory => remove_tree(v, path),
        _ => v.unlink(path),
    }
}

/// Removes directory `dir` of volume `v` and everything in it (files with their DEKs).
fn remove_tree(v: &Volume, dir: &Path) -> Result<()> {
    v.chmod(dir, 0o700)?; // emptied by its owner, whatever its mode was
    for e in v.readdir(dir)? {
        let p = dir.join(&e.name);
        match e.kind {
            EntryKind::Directory => remove_tree(v, &p)?,
            _ => v.unlink(&p)?,
        }
    }
    v.rmdir(dir)
}
