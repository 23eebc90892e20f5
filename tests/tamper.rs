//! Tamper evidence: altered blocks, swapped blocks, moved wrapped keys and edited headers
//! give integrity errors — never wrong data.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use envelopefs::format::CipherKind;
use envelopefs::fs::Volume;
use envelopefs::Error;

/// Where block `i` of a file written once from start to end is, and its size on disk: format
/// 1 `32 + i * 4124` (nonce and tag inline), format 2 page `1 + i` (64 KiB extents, slot 0).
#[derive(Clone, Copy)]
struct Geometry {
    hdr: u64,
    slot: u64,
}

const FORMATS: [(u8, Geometry); 2] =
    [(1, Geometry { hdr: 32, slot: 4096 + 28 }), (2, Geometry { hdr: 4096, slot: 4096 })];

/// A GCM-SIV volume (64 KiB extents) with files `a` and `b`, each `blocks` blocks of data.
fn setup(blocks: usize) -> (tempfile::TempDir, PathBuf, Vec<u8>, Vec<u8>) {
    setup_format(blocks, 2)
}

fn setup_format(blocks: usize, format: u8) -> (tempfile::TempDir, PathBuf, Vec<u8>, Vec<u8>) {
    let (tmp, dir, vol) = new_volume_format(CipherKind::Aes256GcmSiv, 16, format);
    let a = pattern(1, blocks * 4096);
    let b = pattern(2, blocks * 4096);
    for (name, data) in [("a", &a), ("b", &b)] {
        let f = vol.create(Path::new(name), 0o600).unwrap();
        f.write_at(0, data).unwrap();
        f.close().unwrap();
    }
    (tmp, dir, a, b)
}

fn backing(dir: &Path, name: &str) -> PathBuf {
    reopen(dir).backing_path(Path::new(name)).unwrap()
}

fn read_block(vol: &Volume, name: &str, block: u64) -> Result<Vec<u8>, Error> {
    let f = vol.open_file(Path::new(name), false)?;
    let mut buf = vec![0u8; 4096];
    f.read_at(block * 4096, &mut buf)?;
    Ok(buf)
}

fn assert_integrity<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    match r {
        Err(Error::Integrity { .. }) => {}
        other => panic!("{what}: expected an integrity error, got {other:?}"),
    }
}

#[test]
fn flipped_bits_in_a_block_are_detected_and_other_blocks_stay_readable() {
    for (format, Geometry { hdr, slot }) in FORMATS {
        let (_tmp, dir, a, b) = setup_format(3, format);
        let path = backing(&dir, "a");
        for offset in [hdr + slot, hdr + slot + 11, hdr + slot + 12 + 2000, hdr + 2 * slot - 1] {
            let f = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
            let mut byte = [0u8];
            f.read_exact_at(&mut byte, offset).unwrap();
            f.write_all_at(&[byte[0] ^ 0x10], offset).unwrap();
            let vol = reopen(&dir);
            assert_integrity(read_block(&vol, "a", 1), &format!("bit flip at {offset}"));
            assert_eq!(read_block(&vol, "a", 0).unwrap(), a[..4096]);
            assert_eq!(read_block(&vol, "a", 2).unwrap(), a[8192..]);
            assert_eq!(read_block(&vol, "b", 1).unwrap(), b[4096..8192]);
            f.write_all_at(&byte, offset).unwrap();
        }
    }
}

#[test]
fn zeroed_written_block_is_an_integrity_error_not_a_hole() {
    for (format, Geometry { hdr, slot }) in FORMATS {
        let (_tmp, dir, _a, _b) = setup_format(3, format);
        let path = backing(&dir, "a");
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&vec![0u8; slot as usize], hdr + slot).unwrap();
        assert_integrity(read_block(&reopen(&dir), "a", 1), "zeroed block");
    }
}

#[test]
fn swapped_blocks_within_and_between_files_are_detected() {
    for (format, Geometry { hdr, slot }) in FORMATS {
        let (_tmp, dir, _a, _b) = setup_format(3, format);
        let (pa, pb) = (backing(&dir, "a"), backing(&dir, "b"));
        let fa = fs::OpenOptions::new().read(true).write(true).open(&pa).unwrap();
        let fb = fs::OpenOptions::new().read(true).write(true).open(&pb).unwrap();
        let read_slot = |f: &fs::File, i: u64| {
            let mut s = vec![0u8; slot as usize];
            f.read_exact_at(&mut s, hdr + i * slot).unwrap();
            s
        };
        let (a0, a1, b1) = (read_slot(&fa, 0), read_slot(&fa, 1), read_slot(&fb, 1));
        fa.write_all_at(&a1, hdr).unwrap();
        fa.write_all_at(&a0, hdr + slot).unwrap();
        let vol = reopen(&dir);
        assert_integrity(read_block(&vol, "a", 0), "block moved to another position");
        assert_integrity(read_block(&vol, "a", 1), "block moved to another position");
        // Same position, other file.
        fa.write_all_at(&b1, hdr + slot).unwrap();
        assert_integrity(read_block(&reopen(&dir), "a", 1), "block from another file");
    }
}

#[test]
fn truncated_data_file_is_detected() {
    for (format, Geometry { hdr, slot }) in FORMATS {
        let (_tmp, dir, a, _b) = setup_format(3, format);
        let path = backing(&dir, "a");
        fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(hdr + slot + 100).unwrap();
        let vol = reopen(&dir);
        assert_eq!(read_block(&vol, "a", 0).unwrap(), a[..4096]);
        assert_integrity(read_block(&vol, "a", 2), "missing block");
    }
}

fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("meta.db")).unwrap()
}

fn wrapped(dir: &Path, file: &[u8; 16], idx: i64) -> Vec<u8> {
    db(dir)
        .query_row(
            "SELECT wrapped FROM extents WHERE file_id = ?1 AND idx = ?2",
            rusqlite::params![&file[..], idx],
            |r| r.get(0),
        )
        .unwrap()
}

fn set_wrapped(dir: &Path, file: &[u8; 16], idx: i64, w: &[u8]) {
    let n = db(dir)
        .execute(
            "UPDATE extents SET wrapped = ?3 WHERE file_id = ?1 AND idx = ?2",
            rusqlite::params![&file[..], idx, w],
        )
        .unwrap();
    assert_eq!(n, 1);
}

fn file_id(dir: &Path, name: &str) -> [u8; 16] {
    let vol = reopen(dir);
    let f = vol.open_file(Path::new(name), false).unwrap();
    f.file_id()
}

#[test]
fn wrapped_dek_moved_to_another_extent_file_or_volume_fails_to_unwrap() {
    // 64 KiB extents, 40 blocks: extents 0, 1 and 2.
    let (_tmp, dir, _a, _b) = setup(40);
    let (ia, ib) = (file_id(&dir, "a"), file_id(&dir, "b"));
    let (a0, a1, b0) = (wrapped(&dir, &ia, 0), wrapped(&dir, &ia, 1), wrapped(&dir, &ib, 0));

    // Another extent of the same file.
    set_wrapped(&dir, &ia, 0, &a1);
    assert_integrity(read_block(&reopen(&dir), "a", 0), "DEK from another extent");
    set_wrapped(&dir, &ia, 0, &a0);
    assert!(read_block(&reopen(&dir), "a", 0).is_ok());

    // Same extent of another file.
    set_wrapped(&dir, &ia, 0, &b0);
    assert_integrity(read_block(&reopen(&dir), "a", 0), "DEK from another file");
    set_wrapped(&dir, &ia, 0, &a0);

    // Another volume (same passphrase, same layout).
    let (_tmp2, dir2, a2, _) = setup(40);
    let other = wrapped(&dir2, &file_id(&dir2, "a"), 0);
    set_wrapped(&dir, &ia, 0, &other);
    assert_integrity(read_block(&reopen(&dir), "a", 0), "DEK from another volume");
    assert!(!a2.is_empty());

    // A flipped bit in a wrapped DEK.
    let mut bad = a0.clone();
    bad[20] ^= 1;
    set_wrapped(&dir, &ia, 0, &bad);
    assert_integrity(read_block(&reopen(&dir), "a", 0), "altered wrapped DEK");
}

#[test]
fn edited_volume_header_refuses_to_open() {
    let (_tmp, dir, _a, _b) = setup(1);
    let conf = dir.join("envelopefs.conf");
    let orig = fs::read(&conf).unwrap();
    // Offsets: magic 8, version 2, features 4, volume id 16 → cipher at 30, extent shift at 31.
    for (offset, value) in [(30usize, 2u8), (31, 17), (14, orig[14] ^ 1), (40, orig[40] ^ 1)] {
        let mut b = orig.clone();
        b[offset] = value;
        fs::write(&conf, &b).unwrap();
        assert_integrity(Volume::open(&dir, &pass()), &format!("header byte {offset}"));
    }
    // The wrapped KEK (its last byte is just before the 2-byte length of the name key).
    let mut b = orig.clone();
    let at = orig.len() - 60 - 2 - 1;
    b[at] ^= 1;
    fs::write(&conf, &b).unwrap();
    assert_integrity(Volume::open(&dir, &pass()), "wrapped KEK");
    fs::write(&conf, &orig).unwrap();
    assert!(Volume::open(&dir, &pass()).is_ok());
}

#[test]
fn renamed_backing_entries_do_not_decrypt() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    vol.mkdir(Path::new("d1"), 0o700).unwrap();
    vol.mkdir(Path::new("d2"), 0o700).unwrap();
    vol.create(Path::new("d1/x"), 0o600).unwrap().close().unwrap();
    // Move the encrypted entry into another directory under the same encrypted name.
    let from = vol.backing_path(Path::new("d1/x")).unwrap();
    let d2 = vol.backing_path(Path::new("d2")).unwrap();
    fs::rename(&from, d2.join(from.file_name().unwrap())).unwrap();
    assert_integrity(vol.readdir(Path::new("d2")), "name moved between directories");
    drop(dir);
}
