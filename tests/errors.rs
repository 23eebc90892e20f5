//! Bad input gets a clear error, never a panic, and nothing already stored is damaged.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use envelopefs::format::CipherKind;
use envelopefs::fs::Volume;
use envelopefs::secret::Passphrase;
use envelopefs::Error;

fn volume_with_file() -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let (tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    let data = pattern(3, 100_000);
    let f = vol.create(Path::new("keep"), 0o600).unwrap();
    f.write_at(0, &data).unwrap();
    f.close().unwrap();
    (tmp, dir, data)
}

fn assert_readable(dir: &Path, data: &[u8]) {
    let vol = reopen(dir);
    let f = vol.open_file(Path::new("keep"), false).unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(f.read_at(0, &mut back).unwrap(), data.len());
    assert!(back == data);
}

#[test]
fn wrong_passphrase_is_its_own_error() {
    let (_tmp, dir, data) = volume_with_file();
    let err = Volume::open(&dir, &Passphrase::new("not it").unwrap()).unwrap_err();
    assert!(matches!(err, Error::WrongPassphrase(_)), "{err:?}");
    assert!(err.to_string().contains("wrong passphrase"), "{err}");
    assert_eq!(err.exit_code(), 10);
    assert_readable(&dir, &data);
}

/// Opening with each damaged version of `file` fails with an error (no panic); restoring
/// the file restores the volume.
fn damage_each_way(dir: &Path, name: &str, data: &[u8]) {
    let path = dir.join(name);
    let orig = fs::read(&path).unwrap();
    let mut rng = Rng(99);
    let mut variants: Vec<Vec<u8>> = (0..orig.len()).map(|n| orig[..n].to_vec()).collect();
    for _ in 0..200 {
        let mut b = orig.clone();
        let i = rng.below(b.len() as u64) as usize;
        b[i] ^= 1 << rng.below(8);
        variants.push(b);
    }
    variants.push([orig.clone(), vec![0]].concat());
    variants.push(pattern(5, orig.len()));
    for v in variants {
        fs::write(&path, &v).unwrap();
        match Volume::open(dir, &pass()) {
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.is_empty() && e.exit_code() != 0);
            }
            Ok(_) => panic!("{name} damaged ({} bytes) still opened", v.len()),
        }
    }
    fs::write(&path, &orig).unwrap();
    assert_readable(dir, data);
}

#[test]
fn damaged_volume_header_is_a_clear_error() {
    let (_tmp, dir, data) = volume_with_file();
    damage_each_way(&dir, "envelopefs.conf", &data);
}

#[test]
fn damaged_keystore_is_a_clear_error() {
    let (_tmp, dir, data) = volume_with_file();
    damage_each_way(&dir, "keystore", &data);
}

#[test]
fn damaged_or_missing_store_is_a_clear_error() {
    let (_tmp, dir, data) = volume_with_file();
    let db = dir.join("meta.db");
    let orig = fs::read(&db).unwrap();
    for bad in [Vec::new(), orig[..100].to_vec(), pattern(8, orig.len()), b"SQLite format 3\0garbage".to_vec()] {
        fs::write(&db, &bad).unwrap();
        let err = Volume::open(&dir, &pass()).unwrap_err();
        assert!(matches!(err, Error::Store { .. } | Error::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("meta.db"), "error must name the file: {err}");
        let _ = fs::remove_file(dir.join("meta.db-wal"));
        let _ = fs::remove_file(dir.join("meta.db-shm"));
    }
    fs::remove_file(&db).unwrap();
    let err = Volume::open(&dir, &pass()).unwrap_err();
    assert!(err.to_string().contains("meta.db") && err.to_string().contains("missing"), "{err}");
    fs::write(&db, &orig).unwrap();
    assert_readable(&dir, &data);
}

#[test]
fn newer_format_version_and_unknown_features_are_refused_clearly() {
    let (_tmp, dir, data) = volume_with_file();
    let conf = dir.join("envelopefs.conf");
    let orig = fs::read(&conf).unwrap();
    let mut newer = orig.clone();
    newer[8] = 2;
    fs::write(&conf, &newer).unwrap();
    let err = Volume::open(&dir, &pass()).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("version 2"), "{err}");
    let mut feat = orig.clone();
    feat[13] = 0x80;
    fs::write(&conf, &feat).unwrap();
    let err = Volume::open(&dir, &pass()).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }) && err.to_string().contains("feature"), "{err}");
    fs::write(&conf, &orig).unwrap();
    assert_readable(&dir, &data);
}

#[test]
fn init_refuses_a_non_empty_directory_and_leaves_it_alone() {
    let tmp = scratch();
    fs::write(tmp.path().join("precious"), b"mine").unwrap();
    let err = Volume::init(tmp.path(), &opts(CipherKind::Aes256GcmSiv, 20), &pass()).unwrap_err();
    assert!(matches!(err, Error::NotEmpty(_)), "{err:?}");
    assert_eq!(fs::read(tmp.path().join("precious")).unwrap(), b"mine");
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn failed_init_leaves_nothing_behind() {
    let tmp = scratch();
    let dir = tmp.path().join("vol");
    let mut o = opts(CipherKind::Aes256GcmSiv, 20);
    o.kms_uri = Some("aws-kms:alias/none".into());
    assert!(matches!(Volume::init(&dir, &o, &pass()), Err(Error::Kms { .. })));
    assert!(!dir.exists());
    o.kms_uri = Some("nonsense".into());
    assert!(Volume::init(&dir, &o, &pass()).is_err());
    assert!(!dir.exists());
}

#[test]
fn missing_volume_parts_are_named() {
    let tmp = scratch();
    let err = Volume::open(&tmp.path().join("absent"), &pass()).unwrap_err();
    assert!(matches!(err, Error::NotAVolume { .. }) && err.exit_code() == 11, "{err:?}");
    let err = Volume::open(tmp.path(), &pass()).unwrap_err();
    assert!(err.to_string().contains("envelopefs.conf"), "{err}");

    let (_tmp, dir, _data) = volume_with_file();
    fs::rename(dir.join("keystore"), dir.join("keystore.moved")).unwrap();
    let err = Volume::open(&dir, &pass()).unwrap_err();
    assert!(err.to_string().contains("keystore"), "{err}");
    fs::rename(dir.join("keystore.moved"), dir.join("keystore")).unwrap();
    fs::remove_file(dir.join("data/.dirid")).unwrap();
    let err = Volume::open(&dir, &pass()).unwrap_err();
    assert!(matches!(err, Error::Integrity { .. }) && err.to_string().contains(".dirid"), "{err}");
}

/// Format 2 keeps every page offset below `i64::MAX`: a write or a size beyond 2 EiB is
/// refused with a clear error, and nothing is written (the data file's header page stays).
#[test]
fn a_format_2_file_refuses_sizes_whose_pages_would_not_fit() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    let f = vol.create(Path::new("big"), 0o600).unwrap();
    f.write_at(0, b"start").unwrap();
    let max = envelopefs::format::MAX_PAGES_SIZE;
    for r in [f.write_at(max, b"x").map(|_| ()), f.set_len(max + 1)] {
        match r {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("maximum file size"), "{m}"),
            other => panic!("expected a clear refusal, got {other:?}"),
        }
    }
    f.write_at(max - 1, b"y").unwrap(); // the last byte allowed
    f.close().unwrap();
    drop(vol);
    let vol = reopen(&dir);
    let f = vol.open_file(Path::new("big"), false).unwrap();
    let (mut a, mut b) = ([0u8; 5], [0u8; 1]);
    f.read_at(0, &mut a).unwrap();
    f.read_at(max - 1, &mut b).unwrap();
    assert_eq!((&a, &b), (b"start", b"y"));
}
