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
    // The set of files changed: the mount refuses until the operator accepts the store as it
    // is; then each file without its rows is still an error of its own.
    assert!(!m.try_mount(&[]).status.success(), "a volume whose rows were deleted was mounted");
    let repair =
        ["fsck".as_ref(), m.cipher.as_os_str(), "--passfile".as_ref(), m.passfile.as_os_str(), "--repair".as_ref()];
    // Not clean afterwards (the two files are still without rows), but the set is accepted.
    let o = m.run(&repair);
    assert!(String::from_utf8_lossy(&o.stdout).contains("files removed"), "{}", String::from_utf8_lossy(&o.stdout));
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

/// Removes file `rel` whole, as a writer of CIPHERDIR can: its data file and every row.
fn remove_whole(cipher: &Path, rel: &str) {
    let backing = Volume::open(cipher, &envelopefs::secret::Passphrase::new("mount test passphrase").unwrap())
        .unwrap()
        .backing_path(Path::new(rel))
        .unwrap();
    let id = std::fs::read(&backing).unwrap()[8..24].to_vec();
    std::fs::remove_file(&backing).unwrap();
    let c = rusqlite::Connection::open(cipher.join("meta.db")).unwrap();
    c.execute("DELETE FROM extents WHERE file_id = ?1", [&id]).unwrap();
    assert_eq!(c.execute("DELETE FROM files WHERE id = ?1", [&id]).unwrap(), 1);
}

#[test]
fn a_file_removed_whole_stops_the_mount_until_fsck_repair_accepts_it() {
    let mut m = MountFixture::new(&[]);
    std::fs::write(m.p("keep"), b"kept").unwrap();
    std::fs::write(m.p("gone"), pattern(9, 10_000)).unwrap();
    m.unmount();
    remove_whole(&m.cipher, "gone");
    for extra in [&[][..], &["--read-only"][..]] {
        let o = m.try_mount(extra);
        assert!(!o.status.success(), "a volume missing a file was mounted ({extra:?})");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("removed whole") && err.contains("fsck --repair"), "{err}");
    }
    let fsck = |repair: bool| {
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["fsck".as_ref(), m.cipher.as_os_str(), "--passfile".as_ref(), m.passfile.as_os_str()];
        if repair {
            args.push("--repair".as_ref());
        }
        m.run(&args)
    };
    let o = fsck(false);
    assert!(!o.status.success(), "fsck found nothing wrong");
    assert!(String::from_utf8_lossy(&o.stdout).contains("files removed"), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(fsck(true).status.success());
    m.mount();
    assert_eq!(std::fs::read(m.p("keep")).unwrap(), b"kept");
    assert!(!m.p("gone").exists());
}

#[test]
fn a_row_added_or_a_file_removed_is_seen_at_open_and_normal_work_keeps_the_set() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256Xts, 16);
    // Creates, writes, renames, truncation, unlinks, rekey: the set follows every commit.
    for i in 0..20 {
        let f = vol.create(Path::new(&format!("f{i}")), 0o600).unwrap();
        f.write_at(0, &pattern(i, 5000)).unwrap();
        f.close().unwrap();
    }
    for i in 0..10 {
        vol.unlink(Path::new(&format!("f{i}"))).unwrap();
    }
    vol.rename(Path::new("f10"), Path::new("g")).unwrap();
    vol.rekey(Path::new("g")).unwrap();
    vol.truncate(Path::new("f11"), 0).unwrap();
    drop(vol);
    let vol = reopen(&dir);
    vol.files_removed().unwrap();
    assert!(vol.fsck(false).unwrap().is_clean());
    drop(vol);
    // A junk row (its MAC is never checked until the file is opened) is a change of the set.
    let c = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    c.execute("INSERT INTO files (id, size, cipher, mac) VALUES (?1, 0, 2, ?2)", [vec![7u8; 16], vec![0u8; 16]])
        .unwrap();
    drop(c);
    match reopen(&dir).files_removed() {
        Err(Error::Integrity { path, reason }) => {
            assert!(path.ends_with("meta.db") && reason.contains("removed whole"))
        }
        other => panic!("an added row went unnoticed: {other:?}"),
    }
}
