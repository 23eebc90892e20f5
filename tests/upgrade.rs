//! `envelopefs upgrade`: the format-1 fixture made by an earlier version converted to format
//! 2 in place; cut at every step, the volume opens and reads, and running it again finishes.

mod common;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use common::*;
use envelopefs::fs::{DataFile, Storage, SyncPoint, Volume};
use envelopefs::secret::Passphrase;

const FIXTURE_PASSPHRASE: &str = "envelopefs fixture v1";

fn fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = scratch();
    let dir = tmp.path().join(name);
    copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name), &dir);
    (tmp, dir)
}

/// Every test here works on copies of one fixture, one volume id to this host's anchors: a
/// fresh copy is an older copy of a volume already upgraded by another run, accepted on
/// purpose (in this test binary only, with a state directory of its own, so that the
/// anchors it leaves never refuse the fixture in another test binary).
fn same_volume_again() {
    common::own_state_dir();
    envelopefs::anchor::accept_rollback();
}

fn pass() -> Passphrase {
    Passphrase::new(FIXTURE_PASSPHRASE).unwrap()
}

/// The fixture's files and what they hold (`tests/fixture.rs`).
fn contents() -> Vec<(String, Vec<u8>)> {
    let mut sparse = vec![0u8; 200_004];
    sparse[..4].copy_from_slice(b"head");
    sparse[200_000..].copy_from_slice(b"tail");
    vec![
        ("hello.txt".into(), b"hello, envelopefs\n".to_vec()),
        ("docs/pattern.bin".into(), pattern(42, 150_000)),
        ("docs/sparse.bin".into(), sparse),
        ("truncated.bin".into(), pattern(43, 5000)),
        (format!("{}.txt", "long-name-".repeat(20)), b"long".to_vec()),
    ]
}

/// Every file reads back; returns how many have a format-2 record.
fn check(vol: &Volume, when: &str) -> usize {
    let mut pages = 0;
    for (path, data) in contents() {
        let f = vol.open_file(Path::new(&path), false).unwrap_or_else(|e| panic!("{when}: {path}: {e}"));
        let mut back = vec![0u8; data.len()];
        assert_eq!(f.read_at(0, &mut back).unwrap_or_else(|e| panic!("{when}: {path}: {e}")), data.len());
        assert!(back == data, "{when}: {path}: content");
        let (rec, _) = vol.store().load(&f.file_id()).unwrap().unwrap();
        pages += usize::from(envelopefs::format::Placement::of_code(rec.cipher).is_some());
    }
    pages
}

#[test]
fn the_format_1_fixture_upgrades_in_place_and_reads_back() {
    same_volume_again();
    let (_tmp, dir) = fixture("v1-gcm-siv");
    let passfile = dir.parent().unwrap().join("pass");
    std::fs::write(&passfile, FIXTURE_PASSPHRASE).unwrap();
    // The command runs with a state directory of its own (see `same_volume_again`).
    let env = [("ENVELOPEFS_STATE_DIR".to_string(), dir.parent().unwrap().join("state").into_os_string())];
    let up =
        || mount::evfs_env(&["upgrade".as_ref(), dir.as_os_str(), "--passfile".as_ref(), passfile.as_os_str()], &env);
    // `status` says which format the volume is, before and after (the text and the JSON).
    let status = |args: &[&str]| {
        let mut all: Vec<&std::ffi::OsStr> = vec!["status".as_ref(), dir.as_os_str()];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        let o = mount::evfs_env(&all, &env);
        mount::ok(&o);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let format = || serde_json::from_str::<serde_json::Value>(&status(&["--json"])).unwrap()["volume_format"].clone();
    assert_eq!(format(), 1);
    assert!(status(&[]).contains("format 1, aes-256-gcm-siv"), "{}", status(&[]));
    let o = up();
    mount::ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("5 files converted now, 0 already"), "{out}");
    assert_eq!(format(), 2, "status after the upgrade");
    assert!(status(&[]).contains("format 2, aes-256-gcm-siv"), "{}", status(&[]));
    let vol = Volume::open(&dir, &pass()).unwrap();
    assert_ne!(vol.header().features & envelopefs::format::FEATURE_PAGES, 0);
    assert_eq!(check(&vol, "after the upgrade"), 5, "every file is format 2");
    vol.files_removed().unwrap();
    assert!(vol.fsck(false).unwrap().is_clean());
    // A converted file grows into new extents (placed after its converted ones, never over
    // them) and is rewritten in place (to the blocks' other pages).
    let mut want = pattern(42, 150_000);
    want.extend_from_slice(&pattern(44, 300_000));
    want[5000..9000].copy_from_slice(&pattern(45, 4000));
    let f = vol.open_file(Path::new("docs/pattern.bin"), true).unwrap();
    f.write_at(150_000, &pattern(44, 300_000)).unwrap();
    f.write_at(5000, &pattern(45, 4000)).unwrap();
    f.close().unwrap();
    drop(vol);
    let vol = Volume::open(&dir, &pass()).unwrap();
    let f = vol.open_file(Path::new("docs/pattern.bin"), false).unwrap();
    let mut back = vec![0u8; want.len()];
    assert_eq!(f.read_at(0, &mut back).unwrap(), want.len());
    assert!(back == want, "a converted file, grown and rewritten, reads back");
    drop(f);
    // New files are format 2 too, and a second run has nothing to do.
    let f = vol.create(Path::new("new"), 0o644).unwrap();
    f.write_at(0, b"new").unwrap();
    let id = f.file_id();
    f.close().unwrap();
    assert_eq!(vol.store().load(&id).unwrap().unwrap().0.cipher, envelopefs::format::GROUPS_CODE);
    drop(vol);
    let out = String::from_utf8_lossy(&up().stdout).into_owned();
    assert!(out.contains("0 files converted now, 6 already"), "{out}");
}

#[test]
fn an_xts_volume_is_not_upgraded() {
    same_volume_again();
    let (_tmp, dir) = fixture("v1-xts");
    let vol = Volume::open(&dir, &pass()).unwrap();
    let err = vol.upgrade_to_pages(&mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("needs aes-256-gcm-siv"), "{err}");
    assert_eq!(vol.header().features & envelopefs::format::FEATURE_PAGES, 0);
}

/// Storage that fails (a kill: nothing after it happens) at sync point `n`, counting data
/// fsyncs and the volume's own sync points.
struct Cut {
    left: AtomicI64,
}

impl Cut {
    fn hit(&self) -> io::Result<()> {
        match self.left.fetch_sub(1, Ordering::SeqCst) {
            1 => Err(io::Error::other("killed")),
            n if n <= 0 => Err(io::Error::other("killed")),
            _ => Ok(()),
        }
    }
}

struct CutStorage(Arc<Cut>);
struct CutFile(File, Arc<Cut>);

impl Storage for CutStorage {
    fn data_file(&self, file: File, _path: &Path) -> Box<dyn DataFile> {
        Box::new(CutFile(file, self.0.clone()))
    }
    fn sync_point(&self, _point: SyncPoint) -> io::Result<()> {
        self.0.hit()
    }
}

impl DataFile for CutFile {
    fn size(&self) -> io::Result<u64> {
        DataFile::size(&self.0)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        DataFile::read_at(&self.0, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.1.left.load(Ordering::SeqCst) <= 0 {
            return Err(io::Error::other("killed"));
        }
        DataFile::write_all_at(&self.0, buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        DataFile::set_len(&self.0, len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.1.hit()?;
        self.0.sync_data()
    }
}

/// Runs the upgrade of a fresh copy of the fixture, killed at sync point `n` (never if
/// `None`); returns the sync points it passed.
fn upgrade_cut_at(dir: &Path, n: Option<i64>) -> i64 {
    let header = Volume::read_live_header(dir).unwrap();
    let kms = envelopefs::kms::open(&header.kms_uri, dir, &pass()).unwrap();
    let start = n.unwrap_or(i64::MAX);
    let cut = Arc::new(Cut { left: AtomicI64::new(start) });
    let vol = Volume::open_with_storage(dir, header, &kms, Arc::new(CutStorage(cut.clone()))).unwrap();
    let result = vol.upgrade_to_pages(&mut |_| {});
    let passed = start - cut.left.load(Ordering::SeqCst);
    match n {
        None => {
            result.unwrap();
            drop(vol);
        }
        // Killed: no close, no flush.
        Some(_) => std::mem::forget(vol),
    }
    passed
}

#[test]
fn an_upgrade_killed_at_any_step_leaves_a_readable_volume_and_finishes_when_run_again() {
    same_volume_again();
    let (_tmp, dir) = fixture("v1-gcm-siv");
    Volume::open(&dir, &pass()).unwrap(); // the fixture's own in-place upgrades first
    let total = upgrade_cut_at(&dir, None);
    assert!(total >= 6, "the upgrade has {total} sync points");
    for n in 1..=total {
        let (_tmp, dir) = fixture("v1-gcm-siv");
        Volume::open(&dir, &pass()).unwrap();
        upgrade_cut_at(&dir, Some(n));
        let vol = Volume::open(&dir, &pass()).unwrap();
        check(&vol, &format!("killed at {n}"));
        vol.files_removed().unwrap_or_else(|e| panic!("killed at {n}: {e}"));
        let report = vol.upgrade_to_pages(&mut |_| {}).unwrap();
        assert!(report.left.is_empty(), "killed at {n}: {:?}", report.left);
        assert_eq!(check(&vol, &format!("killed at {n}, run again")), 5);
        assert!(vol.fsck(false).unwrap().is_clean(), "killed at {n}");
    }
}

/// `upgrade` launders nothing: a set of files that does not authenticate (a file removed
/// whole) is refused before anything changes, and once upgraded, the set as it was before the
/// upgrade (unversioned) is not accepted back.
#[test]
fn upgrade_refuses_a_tampered_set_and_format_2_refuses_the_old_unversioned_one() {
    same_volume_again();
    let (_tmp, dir) = fixture("v1-gcm-siv");
    let vol = Volume::open(&dir, &pass()).unwrap(); // the fixture's own in-place upgrades
    let id = vol.open_file(Path::new("hello.txt"), false).unwrap().file_id();
    drop(vol);
    let db = || rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    let old_set: Vec<u8> = db().query_row("SELECT value FROM meta WHERE key = 'files.set'", [], |r| r.get(0)).unwrap();
    assert_eq!(old_set.len(), 16, "format 1: unversioned");
    let saved: (i64, i64) = db()
        .query_row("SELECT size, cipher FROM files WHERE id = ?1", [&id[..]], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    let mac: Vec<u8> = db().query_row("SELECT mac FROM files WHERE id = ?1", [&id[..]], |r| r.get(0)).unwrap();
    db().execute("DELETE FROM files WHERE id = ?1", [&id[..]]).unwrap();
    let vol = Volume::open(&dir, &pass()).unwrap();
    let err = vol.upgrade_to_pages(&mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("not the set last committed"), "{err}");
    assert_eq!(vol.header().features & envelopefs::format::FEATURE_PAGES, 0, "nothing changed");
    drop(vol);
    db().execute(
        "INSERT INTO files (id, size, cipher, mac) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![&id[..], saved.0, saved.1, mac],
    )
    .unwrap();
    let vol = Volume::open(&dir, &pass()).unwrap();
    vol.upgrade_to_pages(&mut |_| {}).unwrap();
    drop(vol);
    db().execute("UPDATE meta SET value = ?1 WHERE key = 'files.set'", [&old_set]).unwrap();
    let vol = Volume::open(&dir, &pass()).unwrap();
    let err = vol.files_removed().unwrap_err().to_string();
    assert!(err.contains("not the set last committed"), "{err}");
}

/// A file with two names is converted once: the state its first name's conversion leaves
/// is format 1's while its record is format 2's now, so it is not kept for the second name
/// (`fs::linger`), which opens the converted record.
#[test]
fn a_file_with_two_links_is_converted_once_and_reads_back_at_both_names() {
    same_volume_again();
    let (_tmp, dir, vol) = new_volume_format(envelopefs::format::CipherKind::Aes256GcmSiv, 16, 1);
    let data = pattern(5, 300_000);
    let f = vol.create(Path::new("a"), 0o644).unwrap();
    f.write_at(0, &data).unwrap();
    f.close().unwrap();
    vol.link(Path::new("a"), Path::new("b")).unwrap();
    let read = |vol: &Volume, name: &str| {
        let h = vol.open_file(Path::new(name), false).unwrap();
        let mut back = vec![0u8; data.len()];
        assert_eq!(h.read_at(0, &mut back).unwrap(), data.len());
        back
    };
    assert!(read(&vol, "a") == data && read(&vol, "b") == data);

    let report = vol.upgrade_to_pages(&mut |_| {}).unwrap();
    assert!(report.left.is_empty(), "{:?}", report.left);
    assert_eq!((report.converted, report.already), (1, 1), "one file, two names");
    for name in ["a", "b"] {
        assert!(read(&vol, name) == data, "{name} reads back after the upgrade, in the same volume");
    }
    drop(vol);
    let vol = reopen(&dir);
    assert!(read(&vol, "a") == data && read(&vol, "b") == data, "and after reopening it");
    assert!(vol.fsck(false).unwrap().is_clean());
}
