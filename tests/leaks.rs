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
    let table = BlockTable::from_bytes(&extents[0].written, 16, 16).unwrap();
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
    let table = BlockTable::from_bytes(&extents[0].written, 16, 16).unwrap();
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

/// Format 2 (code 4, FORMAT.md §5a): a file written once from start to end lies in one run of
/// pages per group of extents (groups of 1, 2, 4 … extents), the slot-1 halves between groups
/// holes, so a sequential reader gives the kernel a plain stream to read ahead.
#[test]
fn a_file_written_once_is_one_run_of_pages_per_group() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16); // B = 16 pages
    let f = vol.create(Path::new("f"), 0o600).unwrap();
    f.write_at(0, &pattern(9, 7 * 65_536)).unwrap(); // extents 0..=6: groups {0}, {1, 2}, {3..=6}
    f.close().unwrap();
    drop(vol);
    let data = all_files(&dir.join("data")).into_iter().max_by_key(|p| p.metadata().unwrap().len()).unwrap();
    // Page 0 (the header) and extent 0; extents 1 and 2 from page 1 + 16·2; 3..=6 from 1 + 16·6.
    assert_eq!(data_runs(&data), [(0, 17), (33, 65), (97, 161)], "runs of pages holding data");

    // Block 0 of extent 1 rewritten after its commit goes to slot 1, 32 pages on (group 1
    // holds two extents); then a truncation into extent 1 gives back the pages of the
    // extents dropped, extent 2's slot 0 below that slot-1 page included.
    let vol = reopen(&dir);
    let f = vol.open_file(Path::new("f"), true).unwrap();
    f.write_at(65_536, &pattern(10, 4096)).unwrap();
    f.sync().unwrap();
    f.set_len(65_536 + 8192).unwrap();
    f.close().unwrap();
    assert_eq!(data_runs(&data), [(0, 17), (33, 49), (65, 66)], "runs after the truncation");
    let f = vol.open_file(Path::new("f"), false).unwrap();
    let mut back = vec![0u8; 65_536 + 8192];
    f.read_at(0, &mut back).unwrap();
    let mut want = pattern(9, 65_536 + 8192);
    want[65_536..65_536 + 4096].copy_from_slice(&pattern(10, 4096));
    assert!(back == want, "the file reads back as written and cut");
}

/// The runs of pages of `path` that hold data (`SEEK_DATA` / `SEEK_HOLE`), as `start..end`.
fn data_runs(path: &Path) -> Vec<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as i64;
    let (mut runs, mut at) = (Vec::new(), 0);
    while at < len {
        let Ok(start) = lseek(&f, at, Whence::SeekData) else { break };
        let end = lseek(&f, start, Whence::SeekHole).unwrap();
        runs.push((start as u64 / 4096, (end as u64).div_ceil(4096)));
        at = end;
    }
    runs
}

/// FORMAT.md §5a: a format-2 data file's apparent length is at most twice its size rounded
/// up to whole extents (plus the header page) when written once, and at most three times once
/// blocks of its last group are rewritten (here extent 3 alone in group {3..=6}: its slot 1
/// four extents on).
#[test]
fn a_data_files_apparent_length_is_at_most_twice_its_extents_or_three_times_after_rewrites() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    let (size, extents) = (3 * 65_536 + 4096, 4 * 65_536u64); // extents 0..=3, the last one block
    let f = vol.create(Path::new("f"), 0o600).unwrap();
    f.write_at(0, &pattern(11, size)).unwrap();
    f.close().unwrap();
    let data = all_files(&dir.join("data")).into_iter().max_by_key(|p| p.metadata().unwrap().len()).unwrap();
    let apparent = || data.metadata().unwrap().len();
    assert!(apparent() <= 2 * extents + 4096, "written once: {} bytes", apparent());
    let f = vol.open_file(Path::new("f"), true).unwrap();
    f.write_at(3 * 65_536, &pattern(12, 4096)).unwrap();
    f.close().unwrap();
    assert!(apparent() > 2 * extents, "the rewritten block went past twice: {} bytes", apparent());
    assert!(apparent() <= 3 * extents + 4096, "rewritten: {} bytes", apparent());
}
