//! Per-volume state kept on the host, outside CIPHERDIR (its anchor): the highest KEK
//! generation this host has seen each volume at, and (format 2) the highest number of changes
//! of its set of files.
//!
//! Every `rotate --kek` gives the volume's KEK the next generation, bound into the header and
//! into the KMS context the KEK is wrapped under (so no generation can be claimed for a KEK
//! without the root). A writer of CIPHERDIR who puts back an older header (an older KEK,
//! perhaps one that leaked) offers an older generation: an open refuses it once this host has
//! seen a newer one. What lives in CIPHERDIR can be rolled back as a whole; this cannot (by
//! that writer). A host that never saw the newer generation cannot tell.
//!
//! Anchors are written only once a volume has been rotated (generation 2 and up; a volume made
//! before generations, at 0, goes to 2 at its first rotation): before that there is nothing
//! older to refuse. The state directory is per user (root's is `/var/lib/envelopefs`).
//!
//! A format-2 volume's set of files (`fs::file_set`) counts its changes: every commit that
//! adds, deletes or changes a file record is one more, bound into the set's tag. The anchor
//! follows that count (every commit that moves it renames a new anchor into place, without an
//! fsync; the close writes it durably),
//! so a whole CIPHERDIR put back to a copy older than the anchor is refused at open, naming
//! the anchor; `--accept-rollback` accepts it on purpose and moves the anchor back.
//!
//! A root that can keep state (an HSM token) keeps the same anchor beside the key, for every
//! host that reaches it: [`RootAnchor`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::format::{hex, VolumeHeader};
use crate::{Error, Result};

mod root;
pub use root::RootAnchor;

/// The host's state directory: `$ENVELOPEFS_STATE_DIR`; else `/var/lib/envelopefs` for root,
/// `$XDG_STATE_HOME/envelopefs` or `~/.local/state/envelopefs` for others.
pub fn state_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("ENVELOPEFS_STATE_DIR") {
        return Some(PathBuf::from(d));
    }
    if nix::unistd::geteuid().is_root() {
        return Some(PathBuf::from("/var/lib/envelopefs"));
    }
    match std::env::var_os("XDG_STATE_HOME").filter(|d| Path::new(d).is_absolute()) {
        Some(d) => Some(PathBuf::from(d).join("envelopefs")),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/envelopefs")),
    }
}

/// Where volume `volume_id`'s anchor is.
pub fn path(volume_id: &[u8; 16]) -> Option<PathBuf> {
    state_dir().map(|d| path_in(&d, volume_id))
}

fn path_in(state: &Path, volume_id: &[u8; 16]) -> PathBuf {
    state.join("anchors").join(hex(volume_id))
}

/// What this host has seen of one volume.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// The highest KEK generation (written from generation 2 on).
    generation: Option<u64>,
    /// The highest number of changes of its set of files (format 2 volumes).
    changes: Option<u64>,
}

/// `--accept-rollback`: an open accepts a volume older than its anchor (and lowers the anchor
/// to it), instead of refusing it.
static ACCEPT_ROLLBACK: AtomicBool = AtomicBool::new(false);

/// From now on, this process accepts volumes older than their anchors (the operator restored
/// one on purpose), and moves the anchors back to them.
pub fn accept_rollback() {
    ACCEPT_ROLLBACK.store(true, Ordering::SeqCst);
}

/// Whether [`accept_rollback`] was called.
pub fn accepts_rollback() -> bool {
    ACCEPT_ROLLBACK.load(Ordering::SeqCst)
}

/// The highest KEK generation this host has seen volume `volume_id` at, if it kept one.
pub fn seen(volume_id: &[u8; 16]) -> Result<Option<u64>> {
    match path(volume_id) {
        Some(p) => Ok(seen_at(&p)?.generation),
        None => Ok(None),
    }
}

fn seen_at(p: &Path) -> Result<Seen> {
    let text = match std::fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Seen::default()),
        Err(e) => return Err(Error::io(p, "read", e)),
    };
    parse(&text).ok_or_else(|| {
        Error::corrupt(p, "not an envelopefs anchor (expected `kek-generation N` and/or `file-set-changes N` lines)")
    })
}

/// An anchor's text: `kek-generation N` and/or `file-set-changes N` lines.
fn parse(text: &str) -> Option<Seen> {
    let mut seen = Seen::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line.split_once(' ')?;
        let value: u64 = value.trim().parse().ok()?;
        match key {
            "kek-generation" => seen.generation = Some(value),
            "file-set-changes" => seen.changes = Some(value),
            _ => return None,
        }
    }
    (seen != Seen::default()).then_some(seen)
}

fn render(seen: Seen) -> String {
    let mut text = String::new();
    if let Some(g) = seen.generation {
        text.push_str(&format!("kek-generation {g}\n"));
    }
    if let Some(c) = seen.changes {
        text.push_str(&format!("file-set-changes {c}\n"));
    }
    text
}

fn write_at(p: &Path, seen: Seen) -> Result<()> {
    write_at_then(p, seen, true)
}

fn write_at_then(p: &Path, seen: Seen, durable: bool) -> Result<()> {
    let dir = p.parent().expect("an anchor has a directory");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create state directory", e))?;
    crate::durable::replace_file_then(p, render(seen).as_bytes(), 0o600, durable)
}

/// Refuses `header` (read from `header_path`) if its KEK generation is older than the one this
/// host has seen (unless [`accept_rollback`]).
pub fn check(header: &VolumeHeader, header_path: &Path) -> Result<()> {
    match path(&header.volume_id) {
        Some(p) => check_at(&p, header, header_path),
        None => Ok(()),
    }
}

fn check_at(anchor: &Path, header: &VolumeHeader, header_path: &Path) -> Result<()> {
    let seen = seen_at(anchor)?;
    let by = SeenBy { who: "this host", anchor: &format!("anchor {}", anchor.display()) };
    let mut next = seen;
    if older_generation(header.kek_generation, seen.generation, header_path, by)? {
        next.generation = Some(header.kek_generation);
    }
    if older_format(header, seen.changes, header_path, by)? {
        next.changes = None;
    }
    match next {
        n if n == seen => Ok(()),
        // Gone already (another process accepting the same older copy) is as good.
        n if n == Seen::default() => match std::fs::remove_file(anchor) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(anchor, "remove", e)),
            _ => Ok(()),
        },
        n => write_at(anchor, n),
    }
}

/// Who has seen a volume newer, for errors: `who` ("this host") and where it keeps that.
#[derive(Clone, Copy)]
struct SeenBy<'a> {
    who: &'a str,
    anchor: &'a str,
}

/// A volume older than an anchor says (`why`, read from `path`): an integrity error that says
/// how to accept it, or with `--accept-rollback` a warning and `true` (the anchor is to be
/// moved back).
fn older(path: &Path, why: String) -> Result<bool> {
    if accepts_rollback() {
        tracing::warn!("{}: accepted (--accept-rollback) although {why}", path.display());
        return Ok(true);
    }
    Err(Error::integrity(path, format!("{why}. If you restored it on purpose, mount it with --accept-rollback")))
}

/// Whether a header at KEK generation `found` is older than the `seen` one ([`older`]).
fn older_generation(found: u64, seen: Option<u64>, header_path: &Path, by: SeenBy<'_>) -> Result<bool> {
    let Some(g) = seen.filter(|&g| found < g) else { return Ok(false) };
    let SeenBy { who, anchor } = by;
    older(
        header_path,
        format!(
            "its KEK is generation {found}, but {who} has seen generation {g} of this volume ({anchor}): an older \
             header was put back, and a KEK that was replaced is not accepted again"
        ),
    )
}

/// Whether a format-1 header belongs to a volume `seen` at format 2 (an anchor counts the
/// changes of its set of files only once it is format 2, and `upgrade` never goes back): a
/// copy from before `upgrade` was put back ([`older`]).
fn older_format(header: &VolumeHeader, seen_changes: Option<u64>, header_path: &Path, by: SeenBy<'_>) -> Result<bool> {
    if header.features & crate::format::FEATURE_PAGES != 0 || seen_changes.is_none() {
        return Ok(false);
    }
    let SeenBy { who, anchor } = by;
    older(
        header_path,
        format!(
            "the volume is format 1, but {who} has seen it at format 2 ({anchor}): a copy from before `envelopefs \
             upgrade` was put back"
        ),
    )
}

/// Whether a set of files with `found` changes is older than the `seen` count that `anchor`
/// holds ([`older`]).
fn older_changes(found: u64, seen: Option<u64>, store: &Path, anchor: &str) -> Result<bool> {
    let Some(c) = seen.filter(|&c| found < c) else { return Ok(false) };
    older(
        store,
        format!(
            "the volume is older than its anchor: its set of files has had {found} changes, {anchor} says {c}. \
             The volume (or its metadata store) was put back to an older copy"
        ),
    )
}

/// Remembers that volume `volume_id` is at KEK generation `generation` (a newer one only;
/// nothing is written for a volume never rotated). Durable before it returns.
pub fn record(volume_id: &[u8; 16], generation: u64) -> Result<()> {
    if forgotten(volume_id) {
        return Ok(());
    }
    match path(volume_id) {
        Some(p) => record_at(&p, generation),
        None if generation < 2 => Ok(()),
        None => {
            tracing::warn!("no state directory (no HOME): the KEK generation of this volume is not anchored here");
            Ok(())
        }
    }
}

fn record_at(p: &Path, generation: u64) -> Result<()> {
    let seen = seen_at(p)?;
    if generation < 2 || seen.generation.is_some_and(|g| g >= generation) {
        return Ok(());
    }
    write_at(p, Seen { generation: Some(generation), ..seen })
}

/// Volumes this process has shredded: their anchors are not written again (a mounted
/// volume's close would anchor its set of files once more).
static FORGOTTEN: std::sync::Mutex<Vec<[u8; 16]>> = std::sync::Mutex::new(Vec::new());

fn forgotten(volume_id: &[u8; 16]) -> bool {
    FORGOTTEN.lock().unwrap_or_else(|p| p.into_inner()).contains(volume_id)
}

/// Removes this host's anchor of volume `volume_id` for good (`shred --volume`, once the
/// volume's root has vouched for that id; this process writes it no more); whether there was
/// one.
pub fn forget(volume_id: &[u8; 16]) -> Result<bool> {
    FORGOTTEN.lock().unwrap_or_else(|p| p.into_inner()).push(*volume_id);
    let Some(p) = path(volume_id) else { return Ok(false) };
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(&p, "remove", e)),
    }
}

/// Refuses a format-2 volume whose set of files has had fewer changes than this host has
/// seen: the whole store (and so, with it, the volume) was put back to an older copy. `store`
/// names the file in the error.
pub fn check_changes(volume_id: &[u8; 16], changes: u64, store: &Path) -> Result<()> {
    let Some(p) = path(volume_id) else { return Ok(()) };
    let seen = seen_at(&p)?;
    match older_changes(changes, seen.changes, store, &format!("this host's anchor {}", p.display()))? {
        true => write_at(&p, Seen { changes: Some(changes), ..seen }),
        false => Ok(()),
    }
}

/// The highest number of changes of volume `volume_id`'s set of files this host has seen.
pub fn seen_changes(volume_id: &[u8; 16]) -> Result<Option<u64>> {
    match path(volume_id) {
        Some(p) => Ok(seen_at(&p)?.changes),
        None => Ok(None),
    }
}

/// Remembers that volume `volume_id`'s set of files has had `changes` changes (a higher
/// number only); durable before it returns if `durable` (else a power cut may lose it: the
/// commits that follow a volume's open write it so, and its close durably).
pub fn record_changes(volume_id: &[u8; 16], changes: u64, durable: bool) -> Result<()> {
    let Some(p) = path(volume_id).filter(|_| !forgotten(volume_id)) else { return Ok(()) };
    let seen = seen_at(&p)?;
    if seen.changes.is_some_and(|c| c >= changes) {
        return Ok(());
    }
    write_at_then(&p, Seen { changes: Some(changes), ..seen }, durable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_anchor_only_rises_and_refuses_older_headers() {
        let dir = tempfile::tempdir().unwrap();
        let id = [0x5a; 16];
        let p = path_in(dir.path(), &id);
        assert_eq!(seen_at(&p).unwrap().generation, None);
        record_at(&p, 1).unwrap();
        assert!(!p.exists(), "generation 1 (never rotated) is not anchored");
        record_at(&p, 3).unwrap();
        record_at(&p, 2).unwrap();
        assert_eq!(seen_at(&p).unwrap().generation, Some(3));
        let mut h = crate::format::VolumeHeader {
            features: crate::format::FEATURE_KEK_GENERATION,
            volume_id: id,
            kek_id: [1; 16],
            kek_generation: 2,
            ..crate::format::sample_header()
        };
        let err = check_at(&p, &h, Path::new("envelopefs.conf")).unwrap_err().to_string();
        assert!(err.contains("generation 2") && err.contains("generation 3"), "{err}");
        h.kek_generation = 3;
        check_at(&p, &h, Path::new("envelopefs.conf")).unwrap();
        std::fs::write(&p, "garbage").unwrap();
        assert!(seen_at(&p).is_err());
    }
}
