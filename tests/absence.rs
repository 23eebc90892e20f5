//! A file whose rows a writer of CIPHERDIR deleted from `meta.db` is an integrity error,
//! never an empty file (volume feature files-recorded; docs/SECURITY.md, "Backing storage you
//! do not trust").

mod common;

use std::path::{Path, PathBuf};

use common::mount::MountFixture;
use common::*;
use envelopefs::format::CipherKind;
use envelopefs::fs::{ProblemKind, Volume};
use envelopefs::Error;

/// Deletes every row of every file (records and wrapped DEKs) and cuts each data file in
/// `backings` to its header: what "empty a file unnoticed" does.
fn empty_behind_its_back(dir: &Path, backings: &[PathBuf]) {
    let c = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    c.execute("DELETE FROM extents", []).unwrap();
    c.execute("DELETE FROM files", []).unwrap();
    drop(c);
    for b in backings {
        let f = std::fs::OpenOptions::new().write(true).open(b).unwrap();
        f.set_len(32).unwrap();
    }
}

fn assert_missing(r: Result<impl std::fmt::Debug, Error>, name: &str) {
    match r {
        Err(Error::Integrity { path, reason }) => {
            assert!(path.ends_with(name), "the error names {} for {name}", path.display());
            assert!(reason.contains("no record"), "{reason}");
        }
        other => panic!("{name}: a file without its rows was accepted: {other:?}"),
    }
}

#[test]
fn a_file_whose_rows_were_deleted_is_an_integrity_error_not_an_empty_file() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    let f = vol.create(Path::new("full"), 0o600).unwrap();
    f.write_at(0, &pattern(3, 50_000)).unwrap();
    f.close().unwrap();
    vol.create(Path::new("empty"), 0o600).unwrap().close().unwrap();
    let backings = vec![vol.backing_path(Path::new("full")).unwrap(), vol.backing_path(Path::new("empty")).unwrap()];
    drop(vol);
    empty_behind_its_back(&dir, &backings);

    let vol = reopen(&dir);
    for name in ["full", "empty"] {
        assert_missing(vol.open_file(Path::new(name), false).map(|_| ()), name);
        assert_missing(vol.stat(Path::new(name)), name);
    }
    // fsck names both; --repair does not pass them off as empty files (no crash was claimed).
    let report = vol.fsck(true).unwrap();
    let missing: Vec<&PathBuf> =
        report.problems.iter().filter(|p| p.kind == ProblemKind::RecordMissing).map(|p| &p.path).collect();
    assert_eq!(missing.len(), 2, "{:?}", report.problems);
    assert!(!report.is_clean());
    assert_missing(vol.open_file(Path::new("empty"), false).map(|_| ()), "empty");
    // The user can still remove what is broken.
    vol.unlink(Path::new("empty")).unwrap();
    vol.unlink(Path::new("full")).unwrap();
}

#[test]
fn an_empty_file_keeps_its_record_through_close_rename_and_reopen() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256Xts, 16);
    vol.create(Path::new("e"), 0o600).unwrap().close().unwrap();
    vol.rename(Path::new("e"), Path::new("e2")).unwrap();
    drop(vol);
    let vol = reopen(&dir);
    assert_eq!(vol.stat(Path::new("e2")).unwrap().size, 0);
    assert_eq!(vol.open_file(Path::new("e2"), false).unwrap().len(), 0);
    assert!(vol.fsck(false).unwrap().is_clean());
}

#[test]
fn through_the_mount_an_emptied_file_gives_eio() {
    let mut m = MountFixture::new(&[]);
    std::fs::write(m.p("full"), pattern(5, 20_000)).unwrap();
    std::fs::write(m.p("empty"), b"").unwrap();
    m.unmount();
    let pass = envelopefs::secret::Passphrase::new("mount test passphrase").unwrap();
    let vol = Volume::open(&m.cipher, &pass).unwrap();
    let backings = vec![vol.backing_path(Path::new("full")).unwrap(), vol.backing_path(Path::new("empty")).unwrap()];
    drop(vol);
    empty_behind_its_back(&m.cipher, &backings);
    m.mount();
    for name in ["full", "empty"] {
        let err = std::fs::read(m.p(name)).expect_err(name);
        assert_eq!(err.raw_os_error(), Some(5), "{name}: {err}");
    }
    // A file made now is recorded at once, empty or not, and survives a remount.
    std::fs::write(m.p("new"), b"").unwrap();
    m.remount();
    assert_eq!(std::fs::read(m.p("new")).unwrap(), b"");
}

#[test]
fn a_volume_made_before_files_were_recorded_is_upgraded_in_place() {
    use envelopefs::format::FEATURE_FILES_RECORDED;
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    vol.mkdir(Path::new("d"), 0o700).unwrap();
    vol.create(Path::new("d/old-empty"), 0o600).unwrap().close().unwrap();
    let f = vol.create(Path::new("full"), 0o600).unwrap();
    f.write_at(0, b"data").unwrap();
    f.close().unwrap();
    // Make it look as a volume of the previous build does: the empty file has no record and
    // the header's feature bit is clear (the name key re-sealed for that binding).
    let mut header = vol.header();
    header.features &= !FEATURE_FILES_RECORDED;
    header.wrapped_name_key = vol.keys().seal_name_key(&header).unwrap();
    drop(vol);
    std::fs::write(dir.join("envelopefs.conf"), header.encode()).unwrap();
    let c = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    assert_eq!(c.execute("DELETE FROM files WHERE size = 0", []).unwrap(), 1);
    drop(c);

    let vol = reopen(&dir);
    assert_ne!(Volume::read_header(&dir).unwrap().features & FEATURE_FILES_RECORDED, 0, "not upgraded");
    assert_eq!(vol.open_file(Path::new("d/old-empty"), false).unwrap().len(), 0);
    assert_eq!(vol.store().counts().unwrap().0, 2, "the empty file was given its record");
    drop(vol);
    // From now on, the record's absence is an integrity error.
    let c = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    c.execute("DELETE FROM files WHERE size = 0", []).unwrap();
    drop(c);
    assert_missing(reopen(&dir).open_file(Path::new("d/old-empty"), false).map(|_| ()), "old-empty");
}
