//! What a reader of CIPHERDIR learns, exactly (docs/SECURITY.md, "What a reader learns"):
//! each file's exact size and which of its 4 KiB blocks were ever written. These tests pin
//! that statement: if a change hides more, the docs get stronger with it; if it leaks more,
//! the tests fail.

mod common;

use std::path::Path;

use common::*;
use envelopefs::format::{BlockTable, CipherKind};
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
    // Format 2: `base || written bits || slot bits || seals` (FORMAT.md §5a).
    let table = BlockTable::from_bytes(&extents[0].written, 16).unwrap();
    let written: Vec<u64> = (0..16u64).filter(|&b| table.written().get(b as usize)).collect();
    assert_eq!(written, vec![0, 5], "the written bitmap shows which blocks hold data");
    assert_eq!((table.page(0), table.page(5)), (1, 6), "written once: slot 0");

    // A block rewritten after a commit moves to its other page: the slot bits (and the
    // data file's allocated pages) show which blocks were rewritten, not what they hold.
    let vol = reopen(&dir);
    let f = vol.open_file(Path::new("sparse"), true).unwrap();
    f.write_at(0, b"FIRST").unwrap();
    f.close().unwrap();
    drop(vol);
    let store = Store::open(&dir.join("meta.db")).unwrap();
    let (_, extents) = store.load(&id).unwrap().unwrap();
    let table = BlockTable::from_bytes(&extents[0].written, 16).unwrap();
    assert_eq!((table.page(0), table.page(5)), (17, 6), "the rewritten block is in slot 1");
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
