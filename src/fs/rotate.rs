//! `rotate --kek`: a new KEK and a new name key; every wrapped DEK is re-wrapped under the new
//! KEK (in batched transactions, no data byte rewritten), then everything the name key keeps
//! moves to the new one (`rotate_names`), then the header names both.
//!
//! Resumable at any point: the new KEK (wrapped by the KMS root) and name key (wrapped by the
//! new KEK) are recorded in the store before the first DEK moves; readers accept DEKs under
//! either KEK until the header names the new one, and a rerun picks up where the last run
//! stopped. Once names start to move (a sealed marker says so) the volume is quiet: a mount's
//! requests wait until the header switch, and an open of a volume left so by a crash finishes
//! the rotation before anything else.

use rayon::prelude::*;

use super::volume::{unix_now, Volume, HEADER_FILE, KEK_SINCE};
use crate::durable;
use crate::format::VolumeHeader;
use crate::kms::Kms;
use crate::store::Change;
use crate::{Error, Result};

pub(super) const PENDING_ID: &str = "rotation.kek_id";
pub(super) const PENDING_WRAPPED: &str = "rotation.wrapped_kek";
/// The rotation's new name key, wrapped by its new KEK.
pub(super) const PENDING_NAMES: &str = "rotation.wrapped_name_key";
/// The records that belong to a rotation under way (sealed under the KEK it replaces).
const ROTATION_RECORDS: [&str; 3] = [PENDING_ID, PENDING_WRAPPED, PENDING_NAMES];
/// Flags after the KEK id in `rotation.kek_id` (a rotation an older build recorded has none,
/// and keeps the name key): the rotation brings a new name key, whose row must be there...
const BRINGS_NAMES: u8 = 1;
/// ...and names are moving to it (the tree is half under each name key).
const NAMES_MOVING: u8 = 2;
/// DEKs re-wrapped per transaction.
const BATCH: usize = 4096;

/// What a rotation's progress counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStep {
    /// Wrapped DEKs re-wrapped under the new KEK.
    Deks,
    /// Directory entries moved to the new name key (the volume is quiet meanwhile).
    Names,
}

/// A rotation under way, as the store records it.
struct Pending {
    id: [u8; 16],
    wrapped: Vec<u8>,
    flags: u8,
}

impl Pending {
    /// The value of `rotation.kek_id`.
    fn id_record(&self) -> Vec<u8> {
        let mut v = self.id.to_vec();
        v.push(self.flags);
        v
    }
}

impl Volume {
    /// The authentic steering records other than the rotation's own.
    fn records_but_rotation(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        Ok(self.authentic_records()?.into_iter().filter(|(n, _)| !ROTATION_RECORDS.contains(n)).collect())
    }

    /// Loads the KEK of an unfinished rotation, so DEKs already moved to it stay readable,
    /// and the name key it brings.
    pub(super) fn resume_pending_rotation(&self, kms: &dyn Kms) -> Result<()> {
        if let Some(p) = self.pending_rotation()? {
            let brings = p.flags & BRINGS_NAMES != 0;
            self.keys().resume_rotation(kms, p.id, &p.wrapped, brings, self.store().path())?;
            if brings {
                // Its row deleted, the rotation would keep the old name key unseen.
                let names = self.record(PENDING_NAMES)?.ok_or_else(|| {
                    Error::integrity(self.store().path(), "the rotation under way lost the row of its new name key")
                })?;
                self.keys()
                    .resume_names(&names)
                    .map_err(|_| Error::integrity(self.store().path(), "the pending name key does not authenticate"))?;
            }
        }
        Ok(())
    }

    /// Whether a rotation was cut short while its names were moving (the tree is half under
    /// each name key): such a volume is usable only once the rotation is finished.
    pub(super) fn names_moving(&self) -> Result<bool> {
        Ok(self.pending_rotation()?.is_some_and(|p| p.flags & NAMES_MOVING != 0))
    }

    /// The recorded rotation (id, root-wrapped KEK, flags), authenticated under the current
    /// KEK (a planted record, such as an old wrapped KEK that has leaked, is refused). Rows
    /// that name the current KEK itself are what a finished rotation left before its
    /// clean-up: they are no rotation (nothing in them is used; the next rotation overwrites
    /// them).
    fn pending_rotation(&self) -> Result<Option<Pending>> {
        let store = self.store();
        let sealed = self.header().features & crate::format::FEATURE_RECORDS_SEALED != 0;
        let raw_id = super::records::unverified(store, PENDING_ID, sealed)?;
        if raw_id.as_deref().is_some_and(|id| id.starts_with(&self.header().kek_id)) {
            return Ok(None);
        }
        match (self.record(PENDING_ID)?, self.record(PENDING_WRAPPED)?) {
            (Some(v), Some(wrapped)) => {
                let bad = || Error::corrupt(store.path(), "malformed pending KEK id");
                let (id, flags) = match v.len() {
                    16 => (&v[..], 0),
                    17 => (&v[..16], v[16]),
                    _ => return Err(bad()),
                };
                Ok(Some(Pending { id: id.try_into().map_err(|_| bad())?, wrapped, flags }))
            }
            _ => Ok(None),
        }
    }

    /// Held by a request through the mount while it runs (`InodeFs::op`): waits while a
    /// rotation moves names (no request sees the tree half moved), and fails once one failed
    /// half way (the volume must be opened again, which finishes it).
    pub fn op(&self) -> Result<std::sync::RwLockReadGuard<'_, ()>> {
        let guard = self.quiet.read().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = self.dark.get() {
            return Err(Error::Revoked { path: self.cipherdir().to_path_buf(), reason: why.clone() });
        }
        match self.halted.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(why) => Err(Error::integrity(self.cipherdir(), why.clone())),
            None => Ok(guard),
        }
    }

    /// Holds requests through the mount off (waiting for those under way).
    pub(super) fn quiet(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.quiet.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A rotation failed with `e` while names were moving: this volume serves no more
    /// requests (its tree is half under each name key); reopening it finishes the rotation.
    fn halt(&self, e: Error) -> Error {
        *self.halted.write().unwrap_or_else(|p| p.into_inner()) = Some(format!(
            "a `rotate --kek` failed while names were moving ({e}); unmount, then mount again or run \
             `envelopefs rotate --kek` to finish it"
        ));
        e
    }

    /// Counts name-key switches: a directory listing made before one is not continued.
    pub fn names_generation(&self) -> u64 {
        self.names_generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether opening this volume finished a rotation that a crash had cut short.
    pub fn finished_rotation_at_open(&self) -> bool {
        self.finished_rotation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The second half of a rotation, while the volume is quiet: everything the name key
    /// keeps moves to the new one (if the rotation brings one), then the header names the new
    /// KEK and name key.
    /// `moving` is set once the names-moving flag is committed.
    fn move_names_and_switch(
        &self,
        p: &Pending,
        moving: &mut bool,
        progress: &mut dyn FnMut(RotationStep, u64, u64),
    ) -> Result<VolumeHeader> {
        *self.rotation_left.lock().unwrap_or_else(|p| p.into_inner()) = Vec::new();
        if let Some(new) = self.keys().pending_names() {
            if p.flags & NAMES_MOVING == 0 {
                let flagged = Pending { id: p.id, wrapped: Vec::new(), flags: p.flags | NAMES_MOVING };
                let sealed = self.sealed(PENDING_ID, &flagged.id_record());
                self.store().apply(&[Change::PutMeta { key: PENDING_ID, value: &sealed }])?;
                *moving = true;
            }
            let old = self.keys().names();
            let k = super::rotate_names::NameMove { old: &old, new: &new };
            let moved = self.rotate_names(&k, &mut |d, t| progress(RotationStep::Names, d, t))?;
            tracing::info!(
                entries = moved.entries,
                xattr_sets = moved.xattr_sets,
                records = moved.records,
                stale_long_names = moved.stale_long_names,
                left = moved.left.len(),
                "names moved to the new name key"
            );
            for l in &moved.left {
                tracing::warn!("left as found by the rotation (it authenticates under neither key): {l}");
            }
            *self.rotation_left.lock().unwrap_or_else(|p| p.into_inner()) = moved.left;
        }
        // The header may now name the new keys. Opens wait meanwhile, so no file loads a row
        // wrapped under the old KEK after it is gone.
        let open_files = self.rewrap_open_files()?;
        // The other steering records move to the new KEK's record key with it: sealed under
        // both KEKs before the header switch (so a crash on either side of it leaves them
        // authentic), under the new one alone after it.
        let both = self.seal_for_switch(&self.records_but_rotation()?);
        let changes: Vec<Change<'_>> = both.iter().map(|(k, v)| Change::PutMeta { key: k, value: v }).collect();
        self.store().apply(&changes)?;
        let mut header = self.header();
        if header.kek_id != p.id {
            header.kek_id = p.id;
            header.kek_generation = self.keys().target_kek_generation();
            if header.kek_generation != 0 {
                header.features |= crate::format::FEATURE_KEK_GENERATION;
            }
            header.wrapped_kek = p.wrapped.clone();
            header.wrapped_name_key = self
                .keys()
                .rewrap_name_key(&header)
                .map_err(|_| Error::integrity(self.store().path(), "pending KEK is not loaded"))?;
            let path = self.cipherdir().join(HEADER_FILE);
            self.storage().sync_point(super::SyncPoint::HeaderReplace).map_err(|e| Error::io(&path, "replace", e))?;
            durable::replace_file(&path, &header.encode(), 0o600)?;
        }
        self.keys().promote_pending();
        self.set_header(header.clone());
        self.forget_cached_names();
        drop(open_files);
        Ok(header)
    }

    /// Whether a KEK rotation may start: the upgrades that replace older forms of bindings,
    /// symlink targets and attribute sets (at a writable open) have run (those forms would be
    /// left under neither key), and the set of files authenticates (a set changed behind the
    /// volume's back is not re-tagged as valid).
    pub(super) fn ready_to_rotate(&self) -> Result<()> {
        let upgraded = crate::format::FEATURE_ENTRIES_BOUND | crate::format::FEATURE_XATTRS_SEALED;
        if self.header().features & upgraded != upgraded {
            return Err(Error::Busy {
                path: self.cipherdir().to_path_buf(),
                reason: "the volume's upgrade (bound entries, sealed attributes) has not run yet: it runs at the \
                         first read-write open; mount the volume once, then rotate the KEK"
                    .into(),
            });
        }
        self.files_removed()
    }

    /// What the last rotation left as it found it (names, bindings, targets, attribute
    /// sets or records that authenticate under neither key), by backing path or row.
    pub fn rotation_left(&self) -> Vec<String> {
        self.rotation_left.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Remembers on this host, and beside the root where it keeps anchors, that the volume
    /// is at its header's KEK generation (and the set of files at its count of changes) —
    /// best effort: a failure is logged, the volume still opens.
    pub(super) fn anchor_generation(&self, kms: &dyn Kms) {
        let h = self.header();
        if let Err(e) = crate::anchor::record(&h.volume_id, h.kek_generation) {
            tracing::warn!("the KEK generation of this volume is not anchored on this host: {e}");
        }
        // A set that does not authenticate refuses the mount: nothing of it is recorded.
        if self.file_set_problem.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return;
        }
        let changes = self.store().file_set_changes().filter(|_| self.versioned_file_set());
        self.root_anchor.record(kms, h.kek_generation, changes);
    }

    /// Forgets cached directory and file ids by backing path, and directory listings (every
    /// backing name changed).
    fn forget_cached_names(&self) {
        self.names_generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.dir_ids.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.file_ids.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.encoded_names.clear();
    }

    /// Whether the header on disk holds another wrapped KEK than when this volume was opened:
    /// `rotate --root` ran beside a mount, whose KMS handle still holds the old root.
    pub fn root_changed(&self) -> Result<bool> {
        Ok(Self::read_live_header(self.cipherdir())?.wrapped_kek != self.header().wrapped_kek)
    }

    /// Rotates the KEK (or finishes an interrupted rotation), also while files are open and
    /// in use (a mounted volume). `progress(done, total)` is called after every batch.
    pub fn rotate_kek(&self, kms: &dyn Kms, progress: &mut dyn FnMut(RotationStep, u64, u64)) -> Result<VolumeHeader> {
        let _header_lock = durable::lock_header(self.cipherdir())?;
        if self.root_changed()? {
            // `rotate --root` ran beside this mount: `kms` holds the old root, and a KEK
            // wrapped under it would not open the volume again.
            return Err(Error::Busy {
                path: self.cipherdir().to_path_buf(),
                reason: "the root key was rotated since this volume was opened: remount, then rotate the KEK".into(),
            });
        }
        self.ready_to_rotate()?;
        let p = match self.pending_rotation()? {
            Some(p) => p,
            None => {
                let (id, wrapped, names) = self.keys().begin_rotation(kms)?;
                let p = Pending { id, wrapped, flags: BRINGS_NAMES };
                let (sid, swrapped) =
                    (self.sealed(PENDING_ID, &p.id_record()), self.sealed(PENDING_WRAPPED, &p.wrapped));
                let snames = self.sealed(PENDING_NAMES, &names);
                self.store().apply(&[
                    Change::PutMeta { key: PENDING_ID, value: &sid },
                    Change::PutMeta { key: PENDING_WRAPPED, value: &swrapped },
                    Change::PutMeta { key: PENDING_NAMES, value: &snames },
                ])?;
                p
            }
        };
        let id = p.id;
        // From here new DEKs are wrapped under the new KEK; open files move theirs in memory.
        drop(self.rewrap_open_files()?);
        let total = self.store().counts()?.1;
        // Scratch DEKs stay under the per-boot scratch key, mounted or not.
        let scratch = self.recorded_scratch()?.key_id;
        let mut done = 0u64;
        // Passes in key order, each from where the last batch ended, until one from the first
        // row finds nothing: a DEK a mount wrapped under the old KEK behind the pass meanwhile
        // is taken by the next pass.
        let mut after: Option<([u8; 16], u64)> = None;
        loop {
            let batch =
                self.store().extents_not_under(&id, scratch.as_ref(), after.as_ref().map(|(f, i)| (f, *i)), BATCH)?;
            let Some(last) = batch.last() else {
                if after.take().is_none() {
                    break;
                }
                continue;
            };
            after = Some((last.file, last.index));
            let rewrapped: Vec<([u8; 16], Vec<u8>)> = batch
                .par_iter()
                .map(|d| self.keys().rewrap_dek(&d.file, d.index, &d.kek_id, &d.wrapped))
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| Error::integrity(self.store().path(), "a wrapped DEK does not authenticate; run fsck"))?;
            let changes: Vec<Change<'_>> = batch
                .iter()
                .zip(&rewrapped)
                .map(|(d, (kek_id, w))| Change::RewrapExtent {
                    file: &d.file,
                    index: d.index,
                    old: &d.wrapped,
                    kek_id,
                    wrapped: w,
                })
                .collect();
            self.store().apply(&changes)?;
            done += batch.len() as u64;
            progress(RotationStep::Deks, done.min(total), total);
        }
        // Every DEK is under the new KEK. From here to the header switch the volume is quiet:
        // a mount's requests wait (none is under way), and what closed files left is committed.
        let quiet = self.quiet();
        self.flush_pending()?;
        // Once names move, a failure leaves a mount nothing it may serve (`halt`).
        let mut moving = p.flags & NAMES_MOVING != 0;
        let header =
            self.move_names_and_switch(&p, &mut moving, progress).map_err(|e| if moving { self.halt(e) } else { e })?;
        // A mount halted by an earlier failure serves again: the rotation is finished.
        *self.halted.write().unwrap_or_else(|p| p.into_inner()) = None;
        drop(quiet);
        self.anchor_generation(kms);
        let resealed = self.seal_all(&self.records_but_rotation()?);
        let now = unix_now().to_le_bytes();
        let mut changes: Vec<Change<'_>> = ROTATION_RECORDS.iter().map(|key| Change::DeleteMeta { key }).collect();
        changes.push(Change::PutMeta { key: KEK_SINCE, value: &now });
        changes.extend(resealed.iter().map(|(k, v)| Change::PutMeta { key: k, value: v }));
        self.store().apply(&changes)?;
        self.store().compact()?;
        Ok(header)
    }
}
