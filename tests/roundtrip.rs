//! Round trips through the fs core: a size sweep and a model test against an in-memory
//! shadow, for both ciphers.

mod common;

use std::path::Path;

use common::*;
use envelopefs::format::CipherKind;

/// Extents of 8 KiB (two blocks) so "0 to 3 extents + 1 byte" is a sweep of every size
/// that still crosses block and extent boundaries many times.
const SWEEP_SHIFT: u8 = 13;

fn sweep(cipher: CipherKind) {
    let (_tmp, _dir, vol) = new_volume(cipher, SWEEP_SHIFT);
    let extent = 1usize << SWEEP_SHIFT;
    let max = 3 * extent + 1;
    let data = pattern(1, max);
    let offsets = [0usize, 1, 4095, 4096, 4097, 8191, 8193, 12_289];
    let f = vol.create(Path::new("sweep"), 0o600).unwrap();
    let mut back = vec![0u8; max + 12_289 + 10];
    for size in 0..=max {
        let off = offsets[size % offsets.len()];
        f.set_len(0).unwrap();
        assert_eq!(f.write_at(off as u64, &data[..size]).unwrap(), size);
        let expect_len = if size == 0 { 0 } else { off + size };
        assert_eq!(f.len() as usize, expect_len, "size {size} off {off}");
        let n = f.read_at(0, &mut back).unwrap();
        assert_eq!(n, expect_len, "size {size} off {off}");
        assert!(back[..off.min(n)].iter().all(|&b| b == 0), "hole before offset, size {size} off {off}");
        assert!(back[off.min(n)..n] == data[..size], "content mismatch at size {size} off {off} ({cipher:?})");
        // An unaligned read from the middle.
        if size > 2 {
            let n = f.read_at(off as u64 + 1, &mut back[..size - 2]).unwrap();
            assert_eq!(n, size - 2);
            assert!(back[..n] == data[1..size - 1], "partial read at size {size} ({cipher:?})");
        }
    }
    f.close().unwrap();
}

#[test]
fn sweep_every_size_gcm_siv() {
    sweep(CipherKind::Aes256GcmSiv);
}

#[test]
fn sweep_every_size_xts() {
    sweep(CipherKind::Aes256Xts);
}

/// Thousands of random writes, truncates, reads, syncs and reopens checked against a shadow.
fn model(cipher: CipherKind, seed: u64) {
    let (_tmp, dir, vol) = new_volume(cipher, 16);
    let mut vol = vol;
    let path = Path::new("model");
    let mut f = vol.create(path, 0o600).unwrap();
    let mut shadow: Vec<u8> = Vec::new();
    let mut rng = Rng(seed);
    const MAX: u64 = 300_000;
    for step in 0..4000 {
        match rng.below(100) {
            0..=44 => {
                let off = rng.below(MAX);
                let len = match rng.below(4) {
                    0 => rng.below(16) + 1,
                    1 => rng.below(4096) + 1,
                    2 => rng.below(70_000) + 1,
                    _ => 4096 * (rng.below(4) + 1),
                } as usize;
                let mut data = vec![0u8; len];
                rng.fill(&mut data);
                f.write_at(off, &data).unwrap();
                let end = off as usize + len;
                if shadow.len() < end {
                    shadow.resize(end, 0);
                }
                shadow[off as usize..end].copy_from_slice(&data);
            }
            45..=54 => {
                let size = rng.below(MAX) as usize;
                f.set_len(size as u64).unwrap();
                shadow.resize(size, 0);
            }
            55..=93 => {
                let off = rng.below(shadow.len() as u64 + 10);
                let len = rng.below(80_000) as usize;
                let mut buf = vec![0xEEu8; len];
                let n = f.read_at(off, &mut buf).unwrap();
                let start = (off as usize).min(shadow.len());
                let expect = &shadow[start..(start + len).min(shadow.len())];
                assert_eq!(n, expect.len(), "step {step}: read length");
                assert!(&buf[..n] == expect, "step {step}: read content ({cipher:?})");
            }
            94..=96 => f.sync().unwrap(),
            _ => {
                f.close().unwrap();
                if rng.below(2) == 0 {
                    drop(vol);
                    vol = reopen(&dir);
                }
                f = vol.open_file(path, true).unwrap();
            }
        }
        assert_eq!(f.len() as usize, shadow.len(), "step {step}: size");
    }
    f.close().unwrap();
    drop(vol);
    let vol = reopen(&dir);
    let f = vol.open_file(path, false).unwrap();
    let mut all = vec![0u8; shadow.len()];
    assert_eq!(f.read_at(0, &mut all).unwrap(), shadow.len());
    assert!(all == shadow, "final content after reopen ({cipher:?})");
}

#[test]
fn model_gcm_siv() {
    model(CipherKind::Aes256GcmSiv, 0x5EED_0001);
}

#[test]
fn model_xts() {
    model(CipherKind::Aes256Xts, 0x5EED_0002);
}

#[test]
fn large_parallel_write_and_read_across_extents() {
    for cipher in CIPHERS {
        let (_tmp, dir, vol) = new_volume(cipher, 20);
        let data = pattern(7, 3 * (1 << 20) + 12_345);
        let f = vol.create(Path::new("big"), 0o600).unwrap();
        f.write_at(100, &data).unwrap();
        f.close().unwrap();
        drop(vol);
        let vol = reopen(&dir);
        let f = vol.open_file(Path::new("big"), false).unwrap();
        let mut back = vec![0u8; data.len() + 100];
        assert_eq!(f.read_at(0, &mut back).unwrap(), data.len() + 100);
        assert!(back[..100].iter().all(|&b| b == 0));
        assert!(back[100..] == data[..]);
    }
}

/// A closed file's state is kept for a reopen (`fs::linger`), 64 files at most (the bytes
/// bound: `fs::linger::tests`). Kept or not, every file reads back and none counts as open;
/// a kept file unlinked leaves nothing kept and its keys go.
#[test]
fn closed_files_are_kept_for_a_reopen_within_bounds() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 12); // 4 KiB extents
    let read = |vol: &envelopefs::fs::Volume, name: &str| {
        let h = vol.open_file(Path::new(name), false).unwrap();
        let mut back = vec![0u8; 9_000];
        assert_eq!(h.read_at(0, &mut back).unwrap(), 9_000, "{name}");
        back
    };
    let mut ids = Vec::new();
    for i in 0..70u64 {
        let f = vol.create(Path::new(&format!("f{i}")), 0o644).unwrap();
        f.write_at(0, &pattern(i, 9_000)).unwrap();
        ids.push(f.file_id());
        f.close().unwrap();
    }
    let stats = vol.live_stats().unwrap();
    assert_eq!((stats.open_files, stats.closed_kept), (0, 64));
    for i in [0u64, 5, 69] {
        assert!(read(&vol, &format!("f{i}")) == pattern(i, 9_000), "f{i}");
    }
    assert_eq!(vol.live_stats().unwrap().closed_kept, 64);
    vol.unlink(Path::new("f69")).unwrap();
    vol.flush_pending().unwrap();
    assert_eq!(vol.live_stats().unwrap().closed_kept, 63, "an unlinked file is not kept");
    assert!(vol.store().load(&ids[69]).unwrap().is_none(), "its keys went with its last name");
    drop(vol);
    let vol = reopen(&dir);
    assert!(read(&vol, "f7") == pattern(7, 9_000) && read(&vol, "f0") == pattern(0, 9_000));
}
