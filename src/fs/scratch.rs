//! Scratch directories (`mount --scratch DIR`, `--ephemeral` for the whole volume): files in
//! them are keyed by the per-boot scratch key and do not outlive the mount or the boot.
//!
//! The store records which directories are scratch and the id of their key for as long as
//! scratch files may exist (from mount until they are destroyed). At mount, that record is
//! either matched with this boot's wrapped key in the runtime directory (a daemon crash or
//! `umount --keep-scratch`: the files stay readable) or found stale (a reboot, a lost runtime
//! file): its files are removed. At unmount the runtime copy is deleted first (the shred
//! itself), then the files.
//!
//! While mounted a scratch directory behaves like a mount point: it cannot be renamed or
//! removed, and nothing is renamed or hard-linked across its boundary (EXDEV, so `mv` copies).

use std::fs;
use std::path::{Component, Path, PathBuf};

use super::volume::{EntryKind, Volume};
use crate::keys::{boot_id, ScratchLoad};
use crate::kms::Kms;
use crate::store::{Change, Store};
use crate::{Error, Result};

/// `meta`: the scratch directories, NUL-separated relative paths (`""` is the root).
pub(super) const SCRATCH_DIRS: &str = "scratch.dirs";
/// `meta`: the id of the scratch key their DEKs are wrapped under.
pub(super) const SCRATCH_KEY: &str = "scratch.key_id";

/// What setting up scratch found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScratchSetup {
    /// Entries removed from an earlier boot's (or a destroyed key's) scratch directories.
    pub stale_removed: u64,
    /// Scratch of an earlier mount in this boot was found and kept readable.
    pub resumed: bool,
}

/// Scratch directories of a volume and the id of their key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScratchState {
    pub dirs: Vec<PathBuf>,
    pub key_id: Option<[u8; 16]>,
}

/// `path` as the relative form scratch directories are kept in (`""` for the root).
fn normalize(path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            _ => return Err(Error::InvalidArgument(format!("{}: path must not contain '..'", path.display()))),
        }
    }
    Ok(out)
}

fn encode_dirs(dirs: &[PathBuf]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    dirs.iter().map(|d| d.as_os_str().as_bytes()).collect::<Vec<_>>().join(&0u8)
}

fn decode_dirs(b: &[u8]) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    b.split(|&c| c == 0).map(|d| PathBuf::from(std::ffi::OsStr::from_bytes(d))).collect()
}

/// The scratch record in `store` as shown by `status` of an unmounted volume: unverified
/// (no keys), `sealed` records with their MAC stripped.
pub(super) fn recorded(store: &Store, sealed: bool) -> Result<ScratchState> {
    let dirs = super::records::unverified(store, SCRATCH_DIRS, sealed)?;
    let key_id = super::records::unverified(store, SCRATCH_KEY, sealed)?;
    state(store, dirs, key_id)
}

fn state(store: &Store, dirs: Option<Vec<u8>>, key_id: Option<Vec<u8>>) -> Result<ScratchState> {
    let dirs = dirs.map(|b| decode_dirs(&b)).unwrap_or_default();
    let key_id = match key_id {
        Some(id) => Some(id.try_into().map_err(|_| Error::corrupt(store.path(), "malformed scratch key id"))?),
        None => None,
    };
    Ok(ScratchState { dirs, key_id })
}

impl Volume {
    /// The scratch record in the store (what may exist on disk), mounted or not. A record
    /// that does not authenticate is not acted on (logged; as if there were none): a planted
    /// one must not make a mount destroy directories it names.
    pub fn recorded_scratch(&self) -> Result<ScratchState> {
        match (self.record(SCRATCH_DIRS), self.record(SCRATCH_KEY)) {
            (Ok(dirs), Ok(key_id)) => state(self.store(), dirs, key_id),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("{e}: the scratch record is ignored");
                Ok(ScratchState::default())
            }
        }
    }

    /// The scratch directories of this mount and the id of the loaded scratch key.
    pub fn scratch_state(&self) -> ScratchState {
        ScratchState { dirs: self.scratch_dirs(), key_id: self.keys().scratch_id() }
    }

    /// Loads this boot's scratch (or removes stale scratch) and makes `requested` (which must
    /// be empty or missing) scratch directories. `runtime_file` holds the wrapped scratch key.
    /// One KMS call when scratch is in use: an unwrap (resumed) or a wrap (new key).
    /// A `read_only` mount only loads this boot's scratch key (it changes nothing on disk).
    pub fn setup_scratch(
        &self,
        kms: &dyn Kms,
        requested: &[PathBuf],
        runtime_file: &Path,
        read_only: bool,
    ) -> Result<ScratchSetup> {
        if read_only && !requested.is_empty() {
            return Err(Error::InvalidArgument("--scratch and --ephemeral need a writable mount".into()));
        }
        let recorded = self.recorded_scratch()?;
        let mut report = ScratchSetup::default();
        let mut dirs = Vec::new();
        if let Some(id) = recorded.key_id {
            if self.keys().load_scratch(kms, runtime_file, boot_id()?, id)? == ScratchLoad::Loaded {
                report.resumed = true;
                dirs = recorded.dirs.clone();
            }
        }
        if read_only {
            self.set_scratch_dirs(dirs);
            return Ok(report);
        }
        if !report.resumed && (!recorded.dirs.is_empty() || recorded.key_id.is_some()) {
            // An earlier boot's scratch (or one whose key is gone): without its key it is
            // noise. Remove it so it cannot be mistaken for data.
            for d in &recorded.dirs {
                if self.getattr(d).is_ok() {
                    report.stale_removed += self.empty_tree(d)?;
                }
            }
            self.store().apply(&[Change::DeleteMeta { key: SCRATCH_DIRS }, Change::DeleteMeta { key: SCRATCH_KEY }])?;
        }
        if !report.resumed {
            self.check_no_lost_record(&recorded, runtime_file)?;
            remove_if_present(runtime_file)?;
        }
        for r in requested {
            let r = normalize(r)?;
            if !dirs.contains(&r) {
                self.prepare_scratch_dir(&r)?;
                dirs.push(r);
            }
        }
        if dirs.is_empty() {
            return Ok(report);
        }
        let key_id = match self.keys().scratch_id() {
            Some(id) => id,
            None => self.keys().create_scratch(kms, runtime_file, boot_id()?)?,
        };
        let (key_rec, dirs_rec) = (self.sealed(SCRATCH_KEY, &key_id), self.sealed(SCRATCH_DIRS, &encode_dirs(&dirs)));
        self.store().apply(&[
            Change::PutMeta { key: SCRATCH_KEY, value: &key_rec },
            Change::PutMeta { key: SCRATCH_DIRS, value: &dirs_rec },
        ])?;
        // From now on a missing store record means it was removed (see check_no_lost_record).
        crate::keys::ScratchRecord::mark_recorded(runtime_file)?;
        self.set_scratch_dirs(dirs);
        Ok(report)
    }

    /// No scratch record in the store, but this boot's scratch key for the volume in the
    /// runtime directory (which no writer of CIPHERDIR can touch) says the record was
    /// committed (or, in a runtime file from before that flag, files are still under the
    /// key): the record was removed from `meta.db`. Going on would throw that scratch key
    /// away and turn its directories into ordinary ones whose new files outlive the boot, so
    /// the mount refuses, naming the way out. (A key whose record was never committed is a
    /// mount that stopped between writing the key and its record: nothing to lose.)
    fn check_no_lost_record(&self, recorded: &ScratchState, runtime_file: &Path) -> Result<()> {
        if recorded.key_id.is_some() {
            return Ok(());
        }
        let Some(rec) = crate::keys::ScratchRecord::read(runtime_file) else { return Ok(()) };
        if rec.boot_id != boot_id()? {
            return Ok(());
        }
        let lost = match rec.recorded {
            Some(committed) => committed,
            None => self.store().has_extents_under(&rec.key_id)?,
        };
        if !lost {
            return Ok(());
        }
        Err(Error::integrity(
            self.store().path(),
            format!(
                "the scratch record is missing, but this boot's scratch key ({}) was recorded in the store: \
                 the record was removed from it. Nothing was deleted; to give that scratch up, delete {} and \
                 mount again",
                crate::format::hex(&rec.key_id),
                runtime_file.display()
            ),
        ))
    }

    /// A new scratch directory must be empty (everything in it is destroyed at unmount) or
    /// missing (it is created, mode 0700).
    fn prepare_scratch_dir(&self, dir: &Path) -> Result<()> {
        let shown = Path::new("/").join(dir);
        match self.getattr(dir) {
            Ok(a) if a.kind != EntryKind::Directory => Err(Error::NotDir(shown)),
            Ok(_) if dir.as_os_str().is_empty() && !self.readdir(dir)?.is_empty() => Err(Error::InvalidArgument(
                "the volume is not empty; --ephemeral needs an empty volume (everything in an ephemeral mount \
                 is destroyed at unmount)"
                    .into(),
            )),
            Ok(_) if !self.readdir(dir)?.is_empty() => Err(Error::InvalidArgument(format!(
                "{}: not empty; a scratch directory is emptied at every unmount, so it must start empty \
                 (move its files out or choose another directory)",
                shown.display()
            ))),
            Ok(_) => Ok(()),
            Err(Error::NotFound(_)) => {
                let mut at = PathBuf::new();
                for c in dir.components() {
                    at.push(c);
                    match self.mkdir(&at, 0o700) {
                        Ok(()) | Err(Error::Exists(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Destroys this mount's scratch: the wrapped key in `runtime_file` first (after that the
    /// scratch files are noise), the key in memory, then the files and their records.
    /// Returns the number of entries removed.
    pub fn destroy_scratch(&self, runtime_file: &Path) -> Result<u64> {
        let dirs = self.scratch_dirs();
        if dirs.is_empty() && self.keys().scratch_id().is_none() {
            return Ok(0);
        }
        remove_if_present(runtime_file)?;
        self.keys().drop_scratch();
        let mut removed = 0;
        for d in &dirs {
            removed += self.empty_tree(d)?;
        }
        self.store().apply(&[Change::DeleteMeta { key: SCRATCH_DIRS }, Change::DeleteMeta { key: SCRATCH_KEY }])?;
        self.set_scratch_dirs(Vec::new());
        Ok(removed)
    }

    /// Removes everything inside directory `dir` (keys and records with it); keeps `dir`.
    fn empty_tree(&self, dir: &Path) -> Result<u64> {
        let mut removed = 0;
        for e in self.readdir(dir)? {
            let child = dir.join(&e.name);
            if e.kind == EntryKind::Directory {
                removed += self.empty_tree(&child)?;
                self.rmdir_unchecked(&child)?;
            } else {
                self.unlink(&child)?;
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// Whether `path` is in a scratch directory of this mount (new DEKs go under the scratch
    /// key).
    pub(super) fn is_scratch(&self, path: &Path) -> bool {
        let dirs = self.scratch_dirs();
        !dirs.is_empty() && normalize(path).is_ok_and(|p| dirs.iter().any(|d| p.starts_with(d)))
    }

    /// Refuses a rename or link that would move an entry across a scratch boundary (EXDEV),
    /// or move a scratch directory or one of its parents (EBUSY).
    pub(super) fn check_scratch_move(&self, from: &Path, to: &Path) -> Result<()> {
        let dirs = self.scratch_dirs();
        if dirs.is_empty() {
            return Ok(());
        }
        let (f, t) = (normalize(from)?, normalize(to)?);
        if dirs.iter().any(|d| d.starts_with(&f) || d.starts_with(&t)) {
            return Err(Error::Busy {
                path: from.into(),
                reason: "is or holds a scratch directory of this mount".into(),
            });
        }
        if self.is_scratch(&f) != self.is_scratch(&t) {
            return Err(Error::CrossesScratch(from.into()));
        }
        Ok(())
    }

    /// Refuses to remove a scratch directory of this mount (EBUSY).
    pub(super) fn check_scratch_rmdir(&self, path: &Path) -> Result<()> {
        let p = normalize(path)?;
        if self.scratch_dirs().contains(&p) {
            return Err(Error::Busy { path: path.into(), reason: "is a scratch directory of this mount".into() });
        }
        Ok(())
    }
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, "remove", e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_round_trip_and_normalize() {
        let dirs = vec![PathBuf::new(), PathBuf::from("tmp"), PathBuf::from("a/b c")];
        assert_eq!(decode_dirs(&encode_dirs(&dirs)), dirs);
        assert_eq!(normalize(Path::new("/a/./b/")).unwrap(), PathBuf::from("a/b"));
        assert_eq!(normalize(Path::new("/")).unwrap(), PathBuf::new());
        assert!(normalize(Path::new("a/../b")).is_err());
        assert!(Path::new("x/y").starts_with(PathBuf::new()), "the root holds everything");
    }
}
