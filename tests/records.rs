//! Steering records in `meta.db` (pending rotation, unclean-shutdown marker, scratch record)
//! are sealed under the KEK's record key: a writer of CIPHERDIR who plants or edits one gets
//! an integrity error or is ignored, never a volume that acts on it (docs/SECURITY.md,
//! "Backing storage you do not trust").

mod common;

use std::path::{Path, PathBuf};

use common::*;
use envelopefs::format::{CipherKind, VolumeHeader};
use envelopefs::fs::Volume;
use envelopefs::Error;

/// Plants `key = value` in the store as an attacker would (no MAC).
fn plant(dir: &Path, key: &str, value: &[u8]) {
    let c = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)", rusqlite::params![key, value]).unwrap();
}

fn kms(dir: &Path) -> envelopefs::kms::Audited {
    let header = Volume::read_header(dir).unwrap();
    envelopefs::kms::open(&header.kms_uri, dir, &pass()).unwrap()
}

fn with_file(name: &str, len: usize) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let (tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    let data = pattern(7, len);
    let f = vol.create(Path::new(name), 0o600).unwrap();
    f.write_at(0, &data).unwrap();
    f.close().unwrap();
    drop(vol);
    (tmp, dir, data)
}

#[test]
fn a_planted_pending_rotation_to_an_old_kek_is_refused() {
    let (_tmp, dir, data) = with_file("f", 100_000);
    let old = Volume::read_header(&dir).unwrap();
    let k = kms(&dir);
    Volume::open(&dir, &pass()).unwrap().rotate_kek(&k, &mut |_, _, _| {}).unwrap();
    // The old header's KEK has leaked: the attacker records it as a rotation "in progress",
    // so new DEKs (and the next remedial rotation) would go under it.
    plant(&dir, "rotation.kek_id", &old.kek_id);
    plant(&dir, "rotation.wrapped_kek", &old.wrapped_kek);
    match Volume::open(&dir, &pass()) {
        Err(Error::Integrity { path, reason }) => {
            assert!(path.ends_with("meta.db") && reason.contains("rotation"), "{}: {reason}", path.display())
        }
        other => panic!("a planted rotation was accepted: {other:?}"),
    }
    // Remove the planted rows and everything reads as before.
    let c = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    c.execute("DELETE FROM meta WHERE key LIKE 'rotation.%'", []).unwrap();
    let vol = Volume::open(&dir, &pass()).unwrap();
    let mut back = vec![0u8; data.len()];
    vol.open_file(Path::new("f"), false).unwrap().read_at(0, &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn a_planted_crash_marker_makes_recovery_cut_nothing() {
    let (_tmp, dir, _data) = with_file("f", 100_000);
    let backing = Volume::open(&dir, &pass()).unwrap().backing_path(Path::new("f")).unwrap();
    let len = std::fs::metadata(&backing).unwrap().len();
    // Claim a crash, and drop the file's rows: recovery used to cut such a file to nothing.
    plant(&dir, "mount.active", &1u64.to_le_bytes());
    let c = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    c.execute("DELETE FROM extents", []).unwrap();
    c.execute("DELETE FROM files", []).unwrap();
    drop(c);
    let vol = Volume::open(&dir, &pass()).unwrap();
    assert!(vol.begin_mount().unwrap().is_none(), "no recovery on an unauthenticated marker");
    assert_eq!(std::fs::metadata(&backing).unwrap().len(), len, "the ciphertext was cut");
    drop(vol); // a clean close: the mount's own marker goes
    plant(&dir, "mount.active", &1u64.to_le_bytes());
    let report = Volume::open(&dir, &pass()).unwrap().fsck(true).unwrap();
    assert!(!report.unclean, "fsck believed a planted crash marker");
    for p in &report.problems {
        let repaired = p.repaired.clone().unwrap_or_default();
        assert!(!repaired.contains("cut"), "fsck --repair cut data on a planted claim: {repaired}");
    }
}

#[test]
fn a_planted_scratch_record_destroys_nothing() {
    let (_tmp, dir, data) = with_file("f", 10_000);
    // "The whole volume is scratch of an earlier boot": a mount used to empty it.
    plant(&dir, "scratch.dirs", b"");
    plant(&dir, "scratch.key_id", &[9u8; 16]);
    let k = kms(&dir);
    let vol = Volume::open(&dir, &pass()).unwrap();
    let runtime = tempfile::tempdir_in("/dev/shm").unwrap();
    let setup = vol.setup_scratch(&k, &[], &runtime.path().join("x.scratch"), false).unwrap();
    assert_eq!(setup.stale_removed, 0);
    let mut back = vec![0u8; data.len()];
    vol.open_file(Path::new("f"), false).unwrap().read_at(0, &mut back).unwrap();
    assert_eq!(back, data, "a file was destroyed on a planted scratch record");
}

#[test]
fn records_written_by_the_volume_survive_a_kek_rotation() {
    let (_tmp, dir, _data) = with_file("f", 10_000);
    let k = kms(&dir);
    let vol = Volume::open(&dir, &pass()).unwrap();
    assert!(vol.begin_mount().unwrap().is_none());
    let before = Volume::read_header(&dir).unwrap().kek_id;
    vol.rotate_kek(&k, &mut |_, _, _| {}).unwrap();
    assert_ne!(Volume::read_header(&dir).unwrap().kek_id, before);
    // The marker was re-sealed under the new KEK: a crash now is recognised as one.
    std::mem::forget(vol); // a crash: the marker stays
    let vol = Volume::open(&dir, &pass()).unwrap();
    assert!(vol.begin_mount().unwrap().is_some(), "the volume's own marker after a rotation");
    let h: VolumeHeader = Volume::read_header(&dir).unwrap();
    assert_ne!(h.features & envelopefs::format::FEATURE_RECORDS_SEALED, 0);
}

#[test]
fn planted_rows_naming_the_current_kek_are_no_rotation() {
    let (_tmp, dir, data) = with_file("f", 10_000);
    let old = Volume::read_header(&dir).unwrap();
    let k = kms(&dir);
    Volume::open(&dir, &pass()).unwrap().rotate_kek(&k, &mut |_, _, _| {}).unwrap();
    let now = Volume::read_header(&dir).unwrap();
    // The current KEK's id (readable in the header) with an old wrapped KEK that leaked: a
    // finished rotation's leftover in form, but nothing in it may be used.
    plant(&dir, "rotation.kek_id", &now.kek_id);
    plant(&dir, "rotation.wrapped_kek", &old.wrapped_kek);
    let vol = Volume::open(&dir, &pass()).unwrap();
    let g = vol.create(Path::new("g"), 0o600).unwrap();
    g.write_at(0, &data).unwrap();
    g.close().unwrap();
    // A rotation asked for now is a real one, not the planted "resume".
    let after = vol.rotate_kek(&k, &mut |_, _, _| {}).unwrap();
    assert_ne!(after.kek_id, now.kek_id, "rotate --kek did not rotate");
    drop(vol);
    let vol = Volume::open(&dir, &pass()).unwrap();
    for name in ["f", "g"] {
        let mut back = vec![0u8; data.len()];
        vol.open_file(Path::new(name), false).unwrap().read_at(0, &mut back).unwrap();
        assert_eq!(back, data, "{name}");
    }
}

/// A file record naming a data format this build does not know (a newer build's file, or an
/// edited row): `fsck` says so by name and leaves the data alone (it is not "truncated", and
/// `--repair` neither cuts nor moves it), and the file does not open (here: its record no
/// longer authenticates; an authentic one is refused by code, `fs::file::tests`).
#[test]
fn fsck_names_an_unknown_record_format_and_leaves_its_data_alone() {
    let (_tmp, dir, _) = with_file("f", 100_000);
    let c = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    assert_eq!(c.execute("UPDATE files SET cipher = 9", []).unwrap(), 1);
    drop(c);
    let vol = Volume::open(&dir, &pass()).unwrap();
    let backing = vol.backing_path(Path::new("f")).unwrap();
    let before = std::fs::read(&backing).unwrap();
    let report = vol.fsck(true).unwrap();
    let kinds: Vec<_> = report.problems.iter().map(|p| (p.kind.name(), p.path.clone())).collect();
    assert!(kinds.contains(&("unknown format", PathBuf::from("/f"))), "{:?}", report.problems);
    assert!(!kinds.iter().any(|(k, _)| *k == "size mismatch"), "{:?}", report.problems);
    assert_eq!(std::fs::read(&backing).unwrap(), before, "the data file is left as it is");
    assert!(vol.open_file(Path::new("f"), false).is_err(), "an unknown format does not open");
}
