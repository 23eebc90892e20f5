//! Volumes written by earlier versions must still open and read back their known contents.
//! `tests/fixtures/v1-*` were made by format version 1 (`make_fixtures`, run by hand once).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use envelopefs::format::CipherKind;
use envelopefs::fs::Volume;
use envelopefs::secret::Passphrase;
use sha2::{Digest, Sha256};

const FIXTURE_PASSPHRASE: &str = "envelopefs fixture v1";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// What every fixture holds: (path, content).
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

/// Makes fixture `name` (never over an existing one): a volume of `cipher` (format as `init`
/// makes it for that cipher) holding [`contents`]; then `rewritten`, a block of
/// `docs/pattern.bin` rewritten with the same bytes after its commit (format 2: so it lives in
/// its slot 1). Returns with the store checkpointed, nothing in its WAL.
fn make_fixture(name: &str, cipher: CipherKind, rewritten: Option<usize>) {
    let dir = fixtures().join(name);
    assert!(!dir.exists(), "{} exists; fixtures are never rewritten", dir.display());
    let pass = Passphrase::new(FIXTURE_PASSPHRASE).unwrap();
    Volume::init(&dir, &opts(cipher, 16), &pass).unwrap();
    let vol = Volume::open(&dir, &pass).unwrap();
    vol.mkdir(Path::new("docs"), 0o755).unwrap();
    for (path, data) in contents() {
        let f = vol.create(Path::new(&path), 0o644).unwrap();
        if path == "docs/sparse.bin" {
            f.write_at(0, b"head").unwrap();
            f.write_at(200_000, b"tail").unwrap();
        } else if path == "truncated.bin" {
            f.write_at(0, &pattern(43, 70_000)).unwrap();
            f.set_len(5000).unwrap();
        } else {
            f.write_at(0, &data).unwrap();
        }
        f.close().unwrap();
    }
    if let Some(block) = rewritten {
        let f = vol.open_file(Path::new("docs/pattern.bin"), true).unwrap();
        f.write_at(block as u64 * 4096, &pattern(42, 150_000)[block * 4096..(block + 1) * 4096]).unwrap();
        f.close().unwrap();
    }
    vol.store().checkpoint().unwrap();
}

/// Regenerates the fixtures; only when the format version changes (and then as new
/// directories: old fixtures stay). `cargo test --test fixture -- --ignored make_fixtures`
#[test]
#[ignore]
fn make_fixtures() {
    make_fixture("v1-gcm-siv", CipherKind::Aes256GcmSiv, None);
    make_fixture("v1-xts", CipherKind::Aes256Xts, None);
}

/// The format-2 fixture: the same contents, made by format 2 (`init` default for GCM-SIV);
/// block 1 of `docs/pattern.bin` rewritten with the same bytes after its commit, so it lives
/// in slot 1. `cargo test --test fixture -- --ignored make_fixture_v2`
#[test]
#[ignore]
fn make_fixture_v2() {
    make_fixture("v2-gcm-siv", CipherKind::Aes256GcmSiv, Some(1));
}

/// The format-2 fixture of record code 4 (extents in groups, FORMAT.md §5a): the same
/// contents; block 33 of `docs/pattern.bin` (extent 2, the second of group 1) rewritten with
/// the same bytes after its commit, so it lives in slot 1, one group stride (32 pages) on.
/// `cargo test --test fixture -- --ignored make_fixture_v2_groups`
#[test]
#[ignore]
fn make_fixture_v2_groups() {
    make_fixture("v2-groups", CipherKind::Aes256GcmSiv, Some(33));
}

#[test]
fn v2_groups_fixture_reads_back_from_the_pages_code_4_places() {
    check_fixture("v2-groups");
    let tmp = scratch();
    let dir = tmp.path().join("v2-groups");
    copy_tree(&fixtures().join("v2-groups"), &dir);
    let vol = Volume::open(&dir, &Passphrase::new(FIXTURE_PASSPHRASE).unwrap()).unwrap();
    let f = vol.open_file(Path::new("docs/pattern.bin"), false).unwrap();
    let (rec, extents) = vol.store().load(&f.file_id()).unwrap().unwrap();
    assert_eq!(rec.cipher, envelopefs::format::GROUPS_CODE);
    let g = envelopefs::format::Placement::Groups;
    let table = |e: usize| {
        envelopefs::format::BlockTable::from_bytes(&extents[e].written, 16, g.stride(extents[e].index, 16)).unwrap()
    };
    // Extent 0 from page 1; extents 1 and 2 (group 1) from pages 33 and 49, slot 1 32 on.
    assert_eq!((table(0).page(0), table(1).page(0), table(2).page(0)), (1, 33, 49));
    assert_eq!(table(2).page(1), 49 + 32 + 1, "block 33 rewritten after its commit: slot 1");
}

#[test]
fn v2_gcm_siv_fixture_reads_back() {
    check_fixture("v2-gcm-siv");
    let tmp = scratch();
    let dir = tmp.path().join("v2");
    copy_tree(&fixtures().join("v2-gcm-siv"), &dir);
    let vol = Volume::open(&dir, &Passphrase::new(FIXTURE_PASSPHRASE).unwrap()).unwrap();
    assert_ne!(vol.header().features & envelopefs::format::FEATURE_PAGES, 0);
    let f = vol.open_file(Path::new("docs/pattern.bin"), false).unwrap();
    let (rec, extents) = vol.store().load(&f.file_id()).unwrap().unwrap();
    assert_eq!(rec.cipher, envelopefs::format::PAGES_CODE);
    let table = envelopefs::format::BlockTable::from_bytes(&extents[0].written, 16, 16).unwrap();
    assert_eq!((table.page(0), table.page(1)), (1, 18), "block 1 rewritten after its commit: slot 1");
    let id = f.file_id();
    let before = read_all(&f);
    f.close().unwrap();

    // A code-3 file stays code 3 (its extents in pairs) as it grows and is rewritten; a new
    // file is code 4.
    let f = vol.open_file(Path::new("docs/pattern.bin"), true).unwrap();
    let (far, tail) = (5 * 65_536 + 100, pattern(31, 70_000));
    f.write_at(far, &tail).unwrap();
    f.write_at(10, b"rewritten").unwrap();
    f.close().unwrap();
    // A committed block of extent 5 rewritten: slot 1, B pages on (a code-4 stride would be 4·B).
    let f = vol.open_file(Path::new("docs/pattern.bin"), true).unwrap();
    f.write_at(far + 10, b"again").unwrap();
    f.close().unwrap();
    let n = vol.create(Path::new("new"), 0o644).unwrap();
    n.write_at(0, &pattern(32, 200_000)).unwrap();
    n.close().unwrap();
    drop(vol);
    let vol = Volume::open(&dir, &Passphrase::new(FIXTURE_PASSPHRASE).unwrap()).unwrap();
    let f = vol.open_file(Path::new("docs/pattern.bin"), false).unwrap();
    let mut want = before;
    want.resize(far as usize, 0);
    want.extend_from_slice(&tail);
    want[10..19].copy_from_slice(b"rewritten");
    want[far as usize + 10..far as usize + 15].copy_from_slice(b"again");
    assert!(read_all(&f) == want, "the code-3 file reads back what was written");
    assert_eq!(vol.store().load(&id).unwrap().unwrap().0.cipher, envelopefs::format::PAGES_CODE);
    let n = vol.open_file(Path::new("new"), false).unwrap();
    assert!(read_all(&n) == pattern(32, 200_000));
    assert_eq!(vol.store().load(&n.file_id()).unwrap().unwrap().0.cipher, envelopefs::format::GROUPS_CODE);
    assert!(vol.fsck(false).unwrap().problems.is_empty());
}

fn read_all(f: &envelopefs::fs::FileHandle) -> Vec<u8> {
    let mut buf = vec![0u8; f.len() as usize];
    assert_eq!(f.read_at(0, &mut buf).unwrap(), buf.len());
    buf
}

fn check_fixture(name: &str) {
    common::own_state_dir();
    let tmp = scratch();
    let dir = tmp.path().join(name);
    copy_tree(&fixtures().join(name), &dir);
    let vol = Volume::open(&dir, &Passphrase::new(FIXTURE_PASSPHRASE).unwrap())
        .unwrap_or_else(|e| panic!("fixture {name} no longer opens: {e}"));
    let mut listed: Vec<String> =
        vol.readdir(Path::new("")).unwrap().iter().map(|e| e.name.to_string_lossy().into()).collect();
    listed.sort();
    assert_eq!(listed.len(), 4, "{listed:?}");
    for (path, data) in contents() {
        let f = vol.open_file(Path::new(&path), false).unwrap();
        assert_eq!(f.len(), data.len() as u64, "{name}/{path}: size");
        let mut back = vec![0u8; data.len()];
        assert_eq!(f.read_at(0, &mut back).unwrap(), data.len());
        assert_eq!(Sha256::digest(&back), Sha256::digest(&data), "{name}/{path}: content");
    }
    let features = Volume::read_header(&dir).unwrap().features;
    assert_ne!(features & envelopefs::format::FEATURE_RECORDS_SEALED, 0, "{name}: records not sealed in place");
    assert_ne!(features & envelopefs::format::FEATURE_FILES_RECORDED, 0, "{name}: not upgraded in place");
    assert_ne!(features & envelopefs::format::FEATURE_ENTRIES_BOUND, 0, "{name}: entries not bound in place");
    assert_ne!(features & envelopefs::format::FEATURE_XATTRS_SEALED, 0, "{name}: xattrs not sealed in place");
    assert_ne!(features & envelopefs::format::FEATURE_FILE_SET, 0, "{name}: the set of files not kept");
    assert_ne!(features & envelopefs::format::FEATURE_LINKS_BOUND, 0, "{name}: linked names not bound in place");
    vol.files_removed().unwrap();
    assert!(vol.fsck(false).unwrap().is_clean(), "{name}: not clean after its upgrade");
    assert!(Volume::open(&dir, &Passphrase::new("wrong").unwrap()).is_err());
}

#[test]
fn v1_gcm_siv_fixture_reads_back() {
    check_fixture("v1-gcm-siv");
}

#[test]
fn v1_xts_fixture_reads_back() {
    check_fixture("v1-xts");
}
