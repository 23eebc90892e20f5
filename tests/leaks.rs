//! What a reader of CIPHERDIR learns, exactly (docs/SECURITY.md, "What a reader learns"):
//! each file's exact size and which of its 4 KiB blocks were ever written. These tests pin
//! that statement: if a change hides more, the docs get stronger with it; if it leaks more,
//! the tests fail.

mod common;

use std::path::Path;

use common::*;
use envelopefs::format::CipherKind;
use envelopefs::store::Store;

#[test]
fn the_store_shows_exact_sizes_and_which_blocks_were_written() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    let f = vol.create(Path::new("sparse"), 0o600).unwrap();
    f.write_at(0, b"first block").unwrap(); // block 0
    f.write_at(5 * 4096 + 7, b"sixth block").unwrap(); // block 5; the size is 5*4096+18
    let id = f.file_id();
    f.close().unwrap();
    drop(vol);
    let store = Store::open(&dir.join("meta.db")).unwrap();
    let (rec, extents) = store.load(&id).unwrap().unwrap();
    assert_eq!(rec.size, 5 * 4096 + 18, "the exact size is stored in plain");
    assert_eq!(extents.len(), 1);
    let written: Vec<u64> = (0..16u64).filter(|b| extents[0].written[(b / 8) as usize] >> (b % 8) & 1 == 1).collect();
    assert_eq!(written, vec![0, 5], "the written bitmap shows which blocks hold data");
}

#[test]
fn the_data_file_shows_only_the_size_rounded_up_to_whole_blocks() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256Xts, 16);
    let f = vol.create(Path::new("f"), 0o600).unwrap();
    f.write_at(0, &[7u8; 5000]).unwrap();
    f.close().unwrap();
    let backing = vol.backing_path(Path::new("f")).unwrap();
    drop(vol);
    // XTS keeps 4 KiB blocks 4 KiB long: header (32 bytes) + 2 blocks for 5,000 bytes.
    assert_eq!(std::fs::metadata(&backing).unwrap().len(), 32 + 2 * 4096);
    let _ = dir;
}
