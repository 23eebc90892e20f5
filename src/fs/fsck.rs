//! `fsck` and crash recovery: the backing tree checked against the metadata store.
//!
//! Owns the unclean-shutdown marker (`meta mount.active`, set by a read-write mount and
//! removed when it has committed everything), the walk that finds data files without keys,
//! keys without data files, data files shorter than their written blocks, unreadable blocks
//! and entries whose names or headers do not decode, and the repairs:
//!
//! * After an unclean shutdown, what a crash leaves is expected and repaired without a
//!   question (by the next read-write mount, or `fsck --repair`): a data file with no
//!   record was never committed, so no wrapped DEK for its blocks exists anywhere — they
//!   are provably noise and the file is cut back to its header (an empty file, as POSIX
//!   allows for data never fsync'ed); a record whose data file is gone is an unlink whose
//!   queued key deletion did not commit — it is deleted (the shred the unlink asked for).
//! * On a volume that was unmounted cleanly the same findings are damage, and `--repair`
//!   removes nothing: a data file without keys moves to `/lost+found` (ciphertext intact);
//!   keys without data stay in the store, listed under `meta lost+found.keys`, so a data
//!   file restored from a backup can still be read. Short files, unreadable blocks and bad
//!   entries are reported, never "fixed" (that would turn an integrity error into wrong
//!   data).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::binding::Entry;
use super::names::{self, DIRID_FILE};
use super::volume::Volume;
use crate::format::{hex, Layout, ObjectKind, OBJECT_HEADER_LEN};
use crate::keys::FileId;
use crate::store::Change;
use crate::{Error, Result};

/// `meta` key: a read-write mount is (or was, if it crashed) active.
pub(super) const MOUNT_ACTIVE: &str = "mount.active";
/// `meta` key: ids (16 bytes each) of file records kept by `fsck --repair` without data.
const LOST_KEYS: &str = "lost+found.keys";
/// Where `fsck --repair` moves data files it cannot attach to keys.
pub const LOST_FOUND: &str = "lost+found";
/// Bytes read per request when checking a file's blocks.
const CHUNK: usize = 1 << 20;

/// What `fsck` found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A data file with ciphertext but no record (no keys) in the store.
    DataWithoutKeys,
    /// A file record (wrapped DEKs) whose data file is in no directory.
    KeysWithoutData,
    /// A data file shorter than the blocks its record says are written.
    SizeMismatch,
    /// A block that does not decrypt (or authenticate).
    UnreadableBlock,
    /// A name, directory id, file header or symlink target that does not decode.
    BadEntry,
    /// A regular file with no record in the store (volume feature files-recorded).
    RecordMissing,
    /// The store's file records are not the set last committed (volume feature file-set).
    FilesRemoved,
    /// A file record naming a data format this build does not know (a newer build's, or
    /// another volume's): its data is left as it is, neither sized nor read.
    UnknownFormat,
}

impl ProblemKind {
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::DataWithoutKeys => "data without keys",
            ProblemKind::KeysWithoutData => "keys without data",
            ProblemKind::SizeMismatch => "size mismatch",
            ProblemKind::UnreadableBlock => "unreadable block",
            ProblemKind::BadEntry => "bad entry",
            ProblemKind::RecordMissing => "record missing",
            ProblemKind::FilesRemoved => "files removed",
            ProblemKind::UnknownFormat => "unknown format",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The plaintext path, or the backing path where no plaintext name is known.
    pub path: PathBuf,
    pub detail: String,
    /// Expected after an unclean shutdown (and repaired without loss).
    pub crash_leftover: bool,
    /// What `--repair` did about it, if anything.
    pub repaired: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct FsckReport {
    /// The volume was not unmounted cleanly (a mount crashed or was killed).
    pub unclean: bool,
    pub dirs: u64,
    pub files: u64,
    pub blocks: u64,
    /// Entries in `/lost+found` and records kept there (known, not problems).
    pub lost_found: u64,
    /// Scratch directories not checked (their keys belong to a mount's boot).
    pub skipped_scratch: Vec<PathBuf>,
    pub problems: Vec<Problem>,
}

impl FsckReport {
    /// Nothing is wrong (or everything wrong was repaired).
    pub fn is_clean(&self) -> bool {
        self.problems.iter().all(|p| p.repaired.is_some())
    }
}

/// How much to check and whether to repair.
#[derive(Debug, Clone, Copy)]
struct Mode {
    repair: bool,
    /// Decrypt every written block (off for the recovery run at mount).
    verify_blocks: bool,
    /// Inside a scratch directory: files are only counted as seen (their keys belong to a
    /// mount's boot; the mount's scratch set-up owns them).
    in_scratch: bool,
}

impl Volume {
    /// Files an `fsck` of this volume has checked so far (for its progress, from another
    /// thread).
    pub fn files_checked(&self) -> u64 {
        self.files_checked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks the whole volume; `repair` fixes what can be fixed without loss. The volume
    /// must not be in use by anyone else (the caller holds its lock).
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        self.files_checked.store(0, std::sync::atomic::Ordering::Relaxed); // this run's progress
        let mut report = self.check(Mode { repair, verify_blocks: true, in_scratch: false })?;
        if repair && report.unclean && report.is_clean() {
            // What the repairs rewrote in place (headers) is durable before the marker that
            // let them run goes: a power cut after it must not bring back a misbound header
            // on a volume that looks cleanly unmounted.
            self.sync_data_fs().map_err(|e| Error::io(self.data_dir(), "syncfs", e))?;
            self.store().apply(&[Change::DeleteMeta { key: MOUNT_ACTIVE }])?;
            report.unclean = false;
        }
        Ok(report)
    }

    /// Called by a read-write mount before serving: repairs what an unclean shutdown left
    /// (if the marker says there was one) and sets the marker for this mount. Returns the
    /// recovery report if a recovery ran.
    pub fn begin_mount(&self) -> Result<Option<FsckReport>> {
        self.core.trash.empty_leftovers();
        let report = match self.record(MOUNT_ACTIVE) {
            Ok(Some(_)) => Some(self.check(Mode { repair: true, verify_blocks: false, in_scratch: false })?),
            Ok(None) => None,
            // Nothing is cut or deleted on an unauthenticated claim of a crash.
            Err(e) => {
                tracing::error!("{e}: no recovery ran; run `envelopefs fsck` to see what is there");
                None
            }
        };
        let now = self.sealed(MOUNT_ACTIVE, &super::volume::unix_now().to_le_bytes());
        self.store().apply(&[Change::PutMeta { key: MOUNT_ACTIVE, value: &now }])?;
        self.set_mount_marker(true);
        Ok(report)
    }

    /// Whether an authentic unclean-shutdown marker is there: what the volume's last writer
    /// left was not recovered yet (the next read-write mount, or `fsck --repair`, does it).
    pub fn needs_recovery(&self) -> bool {
        matches!(self.record(MOUNT_ACTIVE), Ok(Some(_)))
    }

    /// [`Volume::begin_mount`], the recovery's findings logged: what a read-write mount, a
    /// tenant opened read-write and a tenant's conversion do first.
    pub fn begin_writing(&self, what: &str) -> Result<()> {
        if let Some(report) = self.begin_mount()? {
            for p in &report.problems {
                tracing::warn!(path = %p.path.display(), "{what}: recovery after an unclean shutdown: {}: {}; {}",
                    p.kind.name(), p.detail, p.repaired.as_deref().unwrap_or("left as it is"));
            }
            tracing::info!(problems = report.problems.len(), "{what}: recovered after an unclean shutdown");
        }
        Ok(())
    }

    fn check(&self, mode: Mode) -> Result<FsckReport> {
        let store = self.store();
        // Only an authentic marker lets repairs treat leftovers as a crash's (cut, remove).
        let unclean = match self.record(MOUNT_ACTIVE) {
            Ok(m) => m.is_some(),
            Err(e) => {
                tracing::error!("{e}: leftovers are reported, not repaired as a crash's");
                false
            }
        };
        let mut report = FsckReport { unclean, ..Default::default() };
        if let Err(Error::Integrity { reason, path }) = self.files_removed() {
            let mut p = Problem {
                kind: ProblemKind::FilesRemoved,
                path,
                detail: reason,
                crash_leftover: false,
                repaired: None,
            };
            if mode.repair {
                self.accept_file_set()?;
                p.repaired = Some("the store's file records accepted as the set of files".into());
            }
            report.problems.push(p);
        }
        report.skipped_scratch = self.recorded_scratch()?.dirs;
        let mut seen = HashSet::new();
        let root = self.data_dir().to_path_buf();
        let root_id = names::read_dir_id(&self.core.tree, &root)?;
        let whole_volume_scratch = report.skipped_scratch.iter().any(|d| d.as_os_str().is_empty());
        let mode = Mode { in_scratch: whole_volume_scratch, ..mode };
        self.check_dir(&root, &root_id, Path::new("/"), mode, &mut seen, &mut report)?;

        let kept: HashSet<FileId> = lost_keys(store)?.into_iter().collect();
        let mut newly_kept = Vec::new();
        for id in store.file_ids()? {
            if seen.contains(&id) {
                continue;
            }
            if kept.contains(&id) {
                report.lost_found += 1;
                continue;
            }
            let mut p = Problem {
                kind: ProblemKind::KeysWithoutData,
                path: PathBuf::from(format!("file id {}", hex(&id))),
                detail: "the store holds wrapped DEKs for a data file that is in no directory".into(),
                crash_leftover: report.unclean,
                repaired: None,
            };
            if mode.repair && report.unclean {
                store.apply(&[Change::DeleteFile { id: &id }])?;
                p.repaired = Some("deleted the keys (an unlink's key deletion that the crash interrupted)".into());
            } else if mode.repair {
                newly_kept.push(id);
                p.repaired = Some(format!("kept the keys, listed under meta {LOST_KEYS}"));
            }
            report.problems.push(p);
        }
        if !newly_kept.is_empty() {
            let mut all: Vec<u8> = kept.iter().flatten().copied().collect();
            all.extend(newly_kept.iter().flatten());
            store.apply(&[Change::PutMeta { key: LOST_KEYS, value: &all }])?;
        }
        Ok(report)
    }

    fn check_dir(
        &self,
        dir: &Path,
        dir_id: &[u8; 16],
        plain: &Path,
        mode: Mode,
        seen: &mut HashSet<FileId>,
        report: &mut FsckReport,
    ) -> Result<()> {
        report.dirs += 1;
        let mut entries: Vec<(OsString, fs::FileType)> = Vec::new();
        let listed = self.core.tree.dir(dir).map_err(|e| Error::io(dir, "open directory", e))?;
        for e in fs::read_dir(listed.path()).map_err(|e| Error::io(dir, "read directory", e))? {
            let e = e.map_err(|e| Error::io(dir, "read directory", e))?;
            let t = e.file_type().map_err(|err| Error::io(dir.join(e.file_name()), "stat", err))?;
            entries.push((e.file_name(), t));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (backing_name, t) in entries {
            let backing = dir.join(&backing_name);
            if backing_name.to_string_lossy().starts_with(names::TEMP_PREFIX) {
                // A file or directory still being made when the volume stopped: never linked
                // into the tree, so nothing refers to it.
                let mut p = bad_entry(&backing, "an entry left half-made (never linked in)".into());
                p.crash_leftover = true;
                if mode.repair {
                    let at = self.core.tree.at(&backing).map_err(|e| Error::io(&backing, "open", e))?;
                    // A directory only as `mkdir` leaves it (its id at most): never recursively.
                    let gone = match t.is_dir() {
                        true => super::made::remove_half_made_dir(&at, names::DIRID_FILE),
                        false => fs::remove_file(at.path()),
                    };
                    match gone {
                        Ok(()) => p.repaired = Some("removed".into()),
                        // Not one this daemon left: reported, kept, and no crash leftover.
                        Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                            p.detail = format!("a directory at a hidden name: {e}");
                            p.crash_leftover = false;
                        }
                        Err(e) => return Err(Error::io(&backing, "remove", e)),
                    }
                }
                report.problems.push(p);
                continue;
            }
            let name = match names::decode(&self.keys().names(), self.store(), dir_id, &backing_name, dir) {
                Ok(Some(n)) => n,
                Ok(None) => continue, // the directory id file and other dot files
                Err(e) => {
                    report.problems.push(bad_entry(&backing, e.to_string()));
                    continue;
                }
            };
            let path = plain.join(&name);
            let rel = path.strip_prefix("/").unwrap_or(&path).to_path_buf();
            let entry = Entry::new(*dir_id, &backing_name);
            if t.is_dir() {
                let in_scratch = mode.in_scratch || report.skipped_scratch.iter().any(|s| rel.starts_with(s));
                match names::read_dir_header(&self.core.tree, &backing) {
                    Ok(h) => {
                        if let Err(e) = self.check_binding(&h, &entry, &path) {
                            let id_file = backing.join(DIRID_FILE);
                            let p = self.misbound(&id_file, &h, &entry, &path, e, mode, report.unclean, 1)?;
                            report.problems.push(p);
                        } else {
                            let id_file = backing.join(DIRID_FILE);
                            self.xattr_problem(&h, &id_file, &entry, &path, mode, report)?;
                        }
                        self.check_dir(&backing, &h.id, &path, Mode { in_scratch, ..mode }, seen, report)?
                    }
                    Err(e) => report.problems.push(self.bad_dir(&backing, &entry, &path, e, mode)?),
                }
            } else if t.is_file() {
                self.check_file(&backing, &entry, &path, mode, seen, report)?;
            } else if t.is_symlink() {
                if let Err(e) = self.readlink(&path) {
                    report.problems.push(bad_entry(&path, e.to_string()));
                }
            } else if !(t.is_fifo() || t.is_socket() || t.is_char_device() || t.is_block_device()) {
                report.problems.push(bad_entry(&path, "unknown file type".into()));
            }
        }
        Ok(())
    }

    /// A directory whose id file is missing or bad: an empty one gets a new id (nothing
    /// under it can depend on the old one); otherwise its entries' names are lost with it.
    fn bad_dir(&self, backing: &Path, entry: &Entry, path: &Path, e: Error, mode: Mode) -> Result<Problem> {
        let mut p = bad_entry(path, format!("directory id: {e}"));
        let listed = self.core.tree.dir(backing).map_err(|e| Error::io(backing, "open directory", e))?;
        let empty = fs::read_dir(listed.path())
            .map_err(|e| Error::io(backing, "read directory", e))?
            .flatten()
            .all(|e| e.file_name() == DIRID_FILE);
        // A tenant's root is always empty here, and a new id would make it a plain directory
        // (whose files would go under this volume's KEK): on a volume with tenants, left as it is.
        let tenants = self.header().features & crate::format::FEATURE_TENANTS != 0;
        if tenants && mode.repair && empty {
            p.repaired = None;
            p.detail.push_str(" (left as it is: on a volume with tenants it may be a tenant's root)");
        } else if mode.repair && empty {
            // The bad id file itself goes (a planted symlink is removed, never followed).
            let _ = fs::remove_file(listed.path().join(DIRID_FILE));
            let header = self.bound_header(ObjectKind::Directory, crate::crypto::random_array(), entry);
            names::write_dir_id(listed.path(), &header).map_err(|e| e.renamed(path))?;
            p.repaired = Some("the empty directory got a new id".into());
        }
        Ok(p)
    }

    /// Reports an attribute set that does not read (repaired only as a crash's leftover).
    fn xattr_problem(
        &self,
        header: &crate::format::ObjectHeader,
        header_file: &Path,
        entry: &Entry,
        path: &Path,
        mode: Mode,
        report: &mut FsckReport,
    ) -> Result<()> {
        let repair = mode.repair && report.unclean;
        if let Some((detail, repaired)) = self.check_xattr_set(header, header_file, entry, path, repair)? {
            let mut p = bad_entry(path, detail);
            p.crash_leftover = report.unclean;
            p.repaired = repaired;
            report.problems.push(p);
        }
        Ok(())
    }

    /// An object not bound to the entry it was found at (`nlink`: its backing link count):
    /// only a crash cut short is repaired. A rename whose header rewrite never happened: its
    /// header is bound to this entry. A link whose lazily committed rows (`fs::links`) the
    /// crash lost, and maybe its header rewrite too: a file with several names gets a row for
    /// this one (its header is left as it is: a header bound to its other name still reads
    /// there, whichever name the walk meets first); one left with a single name, a header
    /// bound to it.
    #[allow(clippy::too_many_arguments)]
    fn misbound(
        &self,
        header_file: &Path,
        header: &crate::format::ObjectHeader,
        entry: &Entry,
        path: &Path,
        e: Error,
        mode: Mode,
        unclean: bool,
        nlink: u64,
    ) -> Result<Problem> {
        let mut p = bad_entry(path, e.to_string());
        p.crash_leftover = unclean;
        if mode.repair && unclean {
            if nlink > 1 && header.kind == ObjectKind::File && self.links_bound() {
                self.add_links(&header.id, &[entry])?;
                p.repaired = Some("bound to this name by a row (a hard link the crash cut short)".into());
            } else {
                let at = self.core.tree.at(header_file).map_err(|e| Error::io(path, "open", e))?;
                self.write_binding(at.path(), &header.id, entry, false, path)?;
                p.repaired = Some("bound to this entry (a rename or link the crash cut short)".into());
            }
        }
        Ok(p)
    }

    fn check_file(
        &self,
        backing: &Path,
        entry: &Entry,
        path: &Path,
        mode: Mode,
        seen: &mut HashSet<FileId>,
        report: &mut FsckReport,
    ) -> Result<()> {
        report.files += 1;
        self.files_checked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let in_lost_found = path.starts_with(Path::new("/").join(LOST_FOUND));
        let at = self.core.tree.at(backing).map_err(|e| Error::io(path, "open", e))?;
        let file = crate::confine::open_file(at.path(), false).map_err(|e| e.renamed(path))?;
        let meta = file.metadata().map_err(|e| Error::io(path, "stat", e))?;
        let (len, nlink) = (meta.len(), meta.nlink());
        let id = match super::volume::read_header(&file, at.path(), path) {
            Ok(h) => {
                if let Err(e) = self.check_binding(&h, entry, path) {
                    report.problems.push(self.misbound(backing, &h, entry, path, e, mode, report.unclean, nlink)?);
                } else if !mode.in_scratch {
                    self.xattr_problem(&h, backing, entry, path, mode, report)?;
                }
                h.id
            }
            Err(e) => {
                let mut p = bad_entry(path, format!("file header: {e}"));
                if report.unclean && len < OBJECT_HEADER_LEN as u64 {
                    // Created just before the crash; its header never reached the disk.
                    p.crash_leftover = true;
                    if mode.repair {
                        drop(file);
                        let header = self.bound_header(ObjectKind::File, crate::crypto::random_array(), entry);
                        let mode =
                            fs::symlink_metadata(at.path()).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o600);
                        crate::durable::replace_file(at.path(), &header.encode(), mode).map_err(|e| e.renamed(path))?;
                        self.record_empty(&header.id)?;
                        seen.insert(header.id); // its new record is no leftover
                        p.repaired = Some("given a new header: an empty file (created just before the crash)".into());
                    }
                    report.problems.push(p);
                    return Ok(());
                }
                if mode.repair {
                    p.repaired = self.move_to_lost_found(path, None)?;
                }
                report.problems.push(p);
                return Ok(());
            }
        };
        if !seen.insert(id) || mode.in_scratch {
            return Ok(()); // another link of a file already checked, or a scratch file
        }
        let layout = self.layout();
        let Some((rec, extents)) = self.store().load(&id)? else {
            if len <= layout.physical_len(0) && !self.core.files_recorded() {
                return Ok(()); // an empty file never committed: consistent as it is
            }
            if len <= layout.physical_len(0) {
                // Created just before a crash (its record was still queued), or its rows were
                // deleted: only an authentic crash marker makes it the first.
                let mut p = Problem {
                    kind: ProblemKind::RecordMissing,
                    path: path.to_path_buf(),
                    detail: "the metadata store has no record of this file (rows deleted, or meta.db replaced)".into(),
                    crash_leftover: report.unclean,
                    repaired: None,
                };
                if mode.repair && report.unclean {
                    self.record_empty(&id)?;
                    p.repaired = Some("given an empty record (created just before the crash)".into());
                }
                report.problems.push(p);
                return Ok(());
            }
            if in_lost_found {
                report.lost_found += 1;
                return Ok(());
            }
            let mut p = Problem {
                kind: ProblemKind::DataWithoutKeys,
                path: path.to_path_buf(),
                detail: format!("{} bytes of ciphertext and no record of their keys", len - OBJECT_HEADER_LEN as u64),
                crash_leftover: report.unclean,
                repaired: None,
            };
            if mode.repair && report.unclean {
                drop(file);
                let f = crate::confine::open_file(at.path(), true).map_err(|e| e.renamed(path))?;
                f.set_len(layout.physical_len(0))
                    .and_then(|_| f.sync_all())
                    .map_err(|e| Error::io(path, "truncate", e))?;
                self.record_empty(&id)?;
                p.repaired = Some("cut back to an empty file (written, never committed, before the crash)".into());
            } else if mode.repair {
                p.repaired = self.move_to_lost_found(path, Some(&id))?;
            }
            report.problems.push(p);
            return Ok(());
        };
        let placement = crate::format::Placement::of_code(rec.cipher);
        if placement.is_none() && rec.cipher != self.core.cipher_code {
            // Sized as format 1 it would look truncated (and read, unreadable): say what it is.
            report.problems.push(Problem {
                kind: ProblemKind::UnknownFormat,
                path: path.to_path_buf(),
                detail: format!(
                    "its record names data format (cipher code) {}, which this build does not know: a newer build's file, or another volume's record",
                    rec.cipher
                ),
                crash_leftover: false,
                repaired: None,
            });
            return Ok(());
        }
        let needed = if let Some(p) = placement {
            let bpe = layout.blocks_per_extent();
            extents
                .iter()
                .filter_map(|e| {
                    crate::format::BlockTable::from_bytes(&e.written, bpe, p.stride(e.index, bpe))?.end_page()
                })
                .map(|page| page * crate::format::PAGE)
                .max()
                .unwrap_or(0)
        } else {
            extents
                .iter()
                .filter_map(|e| last_written(&layout, e.index, &e.written))
                .map(|block| layout.physical_len(block + 1))
                .max()
                .unwrap_or(0)
        };
        if len < needed {
            report.problems.push(Problem {
                kind: ProblemKind::SizeMismatch,
                path: path.to_path_buf(),
                detail: format!("data file is {len} bytes; its written blocks need {needed} (truncated?)"),
                crash_leftover: false,
                repaired: None,
            });
        }
        if mode.verify_blocks {
            self.verify_blocks(path, report)?;
        }
        Ok(())
    }

    /// Gives file `id` an empty record (a repair of a crash leftover), if every file has one.
    fn record_empty(&self, id: &FileId) -> Result<()> {
        if !self.core.files_recorded() {
            return Ok(());
        }
        let (cipher, mac) = super::file::empty_record(&self.core, id);
        self.store().apply(&[Change::PutFile { id, size: 0, cipher, mac: &mac }])
    }

    /// Reads the whole file; each 4 KiB block that does not decrypt is one problem (at most
    /// a few are listed per file).
    fn verify_blocks(&self, path: &Path, report: &mut FsckReport) -> Result<()> {
        let handle = match self.open_file(path, false) {
            Ok(h) => h,
            Err(e) => {
                report.problems.push(bad_entry(path, e.to_string()));
                return Ok(());
            }
        };
        let size = handle.len();
        let mut buf = vec![0u8; CHUNK];
        let mut bad = Vec::new();
        let mut offset = 0;
        while offset < size {
            if handle.read_at(offset, &mut buf).is_err() {
                for b in (offset..(offset + CHUNK as u64).min(size)).step_by(4096) {
                    if let Err(e) = handle.read_at(b, &mut buf[..4096]) {
                        bad.push((b, e));
                    }
                }
            }
            offset += CHUNK as u64;
        }
        report.blocks += size.div_ceil(4096);
        let total = bad.len();
        for (b, e) in bad.into_iter().take(4) {
            report.problems.push(Problem {
                kind: ProblemKind::UnreadableBlock,
                path: path.to_path_buf(),
                detail: format!("block at offset {b} of {total} bad ones: {e}"),
                crash_leftover: false,
                repaired: None,
            });
        }
        handle.close()
    }

    /// Moves `path` into `/lost+found` (created if missing); returns what was done.
    fn move_to_lost_found(&self, path: &Path, id: Option<&FileId>) -> Result<Option<String>> {
        let lf = Path::new("/").join(LOST_FOUND);
        match self.mkdir(&lf, 0o700) {
            Ok(()) | Err(Error::Exists(_)) => {}
            Err(e) => return Err(e),
        }
        let flat: String = path.to_string_lossy().trim_start_matches('/').replace('/', "#");
        let tag = id.map(|id| hex(&id[..4])).unwrap_or_else(|| "noid".into());
        let mut to = lf.join(format!("{flat}.{tag}"));
        if to.as_os_str().len() > 200 {
            to = lf.join(tag);
        }
        self.rename_checked(path, &to, false)?;
        Ok(Some(format!("moved to {}", to.display())))
    }
}

/// The last written block of an extent, if any.
fn last_written(layout: &Layout, extent: u64, bits: &[u8]) -> Option<u64> {
    let bpe = layout.blocks_per_extent() as usize;
    (0..bpe.min(bits.len() * 8))
        .rev()
        .find(|&i| bits[i / 8] & (1 << (i % 8)) != 0)
        .map(|i| layout.first_block(extent) + i as u64)
}

fn bad_entry(path: &Path, detail: String) -> Problem {
    Problem { kind: ProblemKind::BadEntry, path: path.to_path_buf(), detail, crash_leftover: false, repaired: None }
}

fn lost_keys(store: &crate::store::Store) -> Result<Vec<FileId>> {
    Ok(store
        .meta(LOST_KEYS)?
        .unwrap_or_default()
        .chunks_exact(16)
        .map(|c| <[u8; 16]>::try_from(c).unwrap_or_default())
        .collect())
}
