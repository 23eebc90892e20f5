//! Files and directories through the fs core: names, deletion of keys, rename without
//! rewriting, and no plaintext in the backing directory.

mod common;

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::path::Path;

use common::*;
use envelopefs::format::CipherKind;
use envelopefs::fs::EntryKind;
use envelopefs::Error;
use sha2::{Digest, Sha256};

fn p(s: &str) -> &Path {
    Path::new(s)
}

#[test]
fn directory_operations_and_their_errors() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 20);
    vol.mkdir(p("docs"), 0o755).unwrap();
    vol.mkdir(p("docs/deep"), 0o700).unwrap();
    vol.create(p("docs/a.txt"), 0o644).unwrap().close().unwrap();
    assert!(matches!(vol.mkdir(p("docs"), 0o755), Err(Error::Exists(_))));
    assert!(matches!(vol.create(p("docs/a.txt"), 0o644), Err(Error::Exists(_))));
    assert!(matches!(vol.create(p("nope/a.txt"), 0o644), Err(Error::NotFound(_))));
    assert!(matches!(vol.create(p("docs/a.txt/x"), 0o644), Err(Error::NotDir(_))));
    assert!(matches!(vol.open_file(p("docs/none"), false), Err(Error::NotFound(_))));
    assert!(matches!(vol.open_file(p("docs"), false), Err(Error::IsDir(_))));
    assert!(matches!(vol.unlink(p("docs")), Err(Error::IsDir(_))));
    assert!(matches!(vol.rmdir(p("docs")), Err(Error::DirNotEmpty(_))));
    assert!(matches!(vol.create(p(&"n".repeat(256)), 0o644), Err(Error::NameTooLong(_))));
    let names: Vec<(OsString, EntryKind)> =
        vol.readdir(p("docs")).unwrap().into_iter().map(|e| (e.name, e.kind)).collect();
    assert_eq!(names, vec![("a.txt".into(), EntryKind::File), ("deep".into(), EntryKind::Directory)]);
    assert_eq!(vol.stat(p("docs/a.txt")).unwrap().mode, 0o644);
    vol.rmdir(p("docs/deep")).unwrap();
    vol.unlink(p("docs/a.txt")).unwrap();
    vol.rmdir(p("docs")).unwrap();
    assert!(vol.readdir(p("/")).unwrap().is_empty());
    assert_eq!(fs::read_dir(dir.join("data")).unwrap().count(), 1, "only .dirid remains");
}

#[test]
fn long_names_round_trip() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 20);
    let long = "é".repeat(127); // 254 bytes
    vol.mkdir(p(&long), 0o755).unwrap();
    let inner = format!("{long}/{}", "z".repeat(255));
    let f = vol.create(p(&inner), 0o600).unwrap();
    f.write_at(0, b"long").unwrap();
    f.close().unwrap();
    drop(vol);
    let vol = reopen(&dir);
    assert_eq!(vol.readdir(p(&long)).unwrap()[0].name, OsString::from("z".repeat(255)));
    let mut buf = [0u8; 4];
    vol.open_file(p(&inner), false).unwrap().read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"long");
    for f in all_files(&dir.join("data")) {
        assert!(f.file_name().unwrap().len() <= 255);
    }
    vol.unlink(p(&inner)).unwrap();
    vol.rmdir(p(&long)).unwrap();
    let rows: i64 = rusqlite::Connection::open(dir.join("meta.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM long_names", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0, "long-name records are removed with their entries");
}

#[test]
fn equal_names_in_different_directories_look_different() {
    let (_tmp, _dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 20);
    vol.mkdir(p("x"), 0o755).unwrap();
    vol.mkdir(p("y"), 0o755).unwrap();
    vol.create(p("x/same"), 0o600).unwrap().close().unwrap();
    vol.create(p("y/same"), 0o600).unwrap().close().unwrap();
    let a = vol.backing_path(p("x/same")).unwrap();
    let b = vol.backing_path(p("y/same")).unwrap();
    assert_ne!(a.file_name(), b.file_name());
}

#[test]
fn backing_directory_holds_no_plaintext() {
    for cipher in CIPHERS {
        let (_tmp, dir, vol) = new_volume(cipher, 16);
        let marker = b"PLAINTEXT-MARKER-4c1f";
        let mut data = Vec::new();
        while data.len() < 300_000 {
            data.extend_from_slice(marker);
        }
        vol.mkdir(p("secret-directory-name"), 0o700).unwrap();
        let f = vol.create(p("secret-directory-name/secret-file-name.txt"), 0o600).unwrap();
        f.write_at(0, &data).unwrap();
        f.write_at(1_000_000, marker).unwrap();
        f.sync().unwrap();
        f.close().unwrap();
        vol.sync_all().unwrap();
        for file in all_files(&dir) {
            let bytes = fs::read(&file).unwrap();
            for needle in [&marker[..], b"secret-directory-name", b"secret-file-name"] {
                assert!(!contains(&bytes, needle), "{} holds plaintext ({cipher:?})", file.display());
            }
        }
    }
}

#[test]
fn no_two_extents_share_a_dek() {
    for cipher in CIPHERS {
        let (_tmp, _dir, vol) = new_volume(cipher, 16);
        let mut seen = HashSet::new();
        let mut count = 0;
        for name in ["one", "two"] {
            let f = vol.create(p(name), 0o600).unwrap();
            f.write_at(0, &vec![7u8; 6 * 65536]).unwrap(); // identical content in both files
            f.close().unwrap();
            let id = vol.open_file(p(name), false).unwrap().file_id();
            let (_, extents) = vol.store().load(&id).unwrap().unwrap();
            assert_eq!(extents.len(), 6);
            for e in extents {
                let fp = vol.keys().dek_fingerprint(&id, e.index, &e.wrapped).unwrap();
                seen.insert(fp);
                count += 1;
            }
        }
        assert_eq!(seen.len(), count, "{cipher:?}: a DEK was reused");
    }
}

#[test]
fn unlink_and_truncate_delete_wrapped_deks() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    let f = vol.create(p("f"), 0o600).unwrap();
    f.write_at(0, &pattern(1, 5 * 65536)).unwrap();
    f.sync().unwrap();
    let id = f.file_id();
    assert_eq!(vol.store().load(&id).unwrap().unwrap().1.len(), 5);
    f.set_len(65536 + 10).unwrap();
    assert_eq!(vol.store().load(&id).unwrap().unwrap().1.len(), 2, "truncation drops extents 2..");
    let mut buf = vec![0u8; 20];
    assert_eq!(f.read_at(65536, &mut buf).unwrap(), 10);

    // Unlinked while open: still readable; keys go at the last close.
    vol.unlink(p("f")).unwrap();
    assert_eq!(f.read_at(0, &mut buf).unwrap(), 20);
    assert!(vol.store().load(&id).unwrap().is_some());
    f.close().unwrap();
    assert!(vol.store().load(&id).unwrap().is_none());
    assert_eq!(vol.store().counts().unwrap(), (0, 0));
    drop(vol);
    assert_eq!(fs::read_dir(dir.join("data")).unwrap().count(), 1);
}

fn wrapped_rows(dir: &Path) -> Vec<Vec<u8>> {
    let c = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    let mut s = c.prepare("SELECT wrapped FROM extents ORDER BY idx").unwrap();
    let rows = s.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
    rows
}

#[test]
fn rename_rewrites_neither_data_nor_keys_nor_children() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    vol.mkdir(p("a"), 0o755).unwrap();
    let data = pattern(4, 200_000);
    let f = vol.create(p("a/file"), 0o600).unwrap();
    f.write_at(0, &data).unwrap();
    f.close().unwrap();
    let child = vol.backing_path(p("a/file")).unwrap();
    let child_name = child.file_name().unwrap().to_owned();
    let before = Sha256::digest(fs::read(&child).unwrap());
    let rows_before = wrapped_rows(&dir);
    vol.rename(p("a"), p("b")).unwrap();
    let moved = vol.backing_path(p("b/file")).unwrap();
    assert_eq!(moved.file_name().unwrap(), child_name, "children keep their encrypted names");
    assert_eq!(Sha256::digest(fs::read(&moved).unwrap()), before);
    vol.rename(p("b/file"), p("renamed")).unwrap();
    let rows_after = wrapped_rows(&dir);
    assert_eq!(rows_before, rows_after);
    let mut back = vec![0u8; data.len()];
    vol.open_file(p("renamed"), false).unwrap().read_at(0, &mut back).unwrap();
    assert!(back == data);

    // Rename over an existing file deletes the replaced file's keys.
    let g = vol.create(p("victim"), 0o600).unwrap();
    g.write_at(0, b"bye").unwrap();
    let gid = g.file_id();
    g.close().unwrap();
    vol.rename(p("renamed"), p("victim")).unwrap();
    vol.flush_pending().unwrap(); // deletions go in the next group commit
    assert!(vol.store().load(&gid).unwrap().is_none());
    assert_eq!(vol.stat(p("victim")).unwrap().size, data.len() as u64);
}

#[test]
fn concurrent_writers_on_distinct_ranges_of_one_file() {
    let (_tmp, _dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    let vol = std::sync::Arc::new(vol);
    let f = std::sync::Arc::new(vol.create(p("shared"), 0o600).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let off = (i * 4 + t) * 10_000;
                    f.write_at(off, &pattern(off, 10_000)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut buf = vec![0u8; 10_000];
    for k in 0..200u64 {
        f.read_at(k * 10_000, &mut buf).unwrap();
        assert!(buf == pattern(k * 10_000, 10_000), "range {k}");
    }
}

#[test]
fn an_unlinked_file_still_open_stays_readable_through_a_group_commit() {
    for cipher in CIPHERS {
        let (_tmp, dir, vol) = new_volume(cipher, 20);
        let data = pattern(5, 17_563);
        let w = vol.create(p("f"), 0o644).unwrap();
        w.write_at(0, &data).unwrap();
        w.close_deferred().unwrap(); // parked for the next group commit
        let r = vol.open_file(p("f"), false).unwrap(); // reopened before that commit
        vol.unlink(p("f")).unwrap();
        vol.flush_pending().unwrap(); // the parked commit runs while `r` is open
        let mut buf = vec![0u8; data.len()];
        assert_eq!(r.read_at(0, &mut buf).unwrap(), data.len());
        assert!(buf == data, "{cipher:?}: an open, unlinked file reads what was written");
        r.close().unwrap();
        vol.flush_pending().unwrap();
        drop(vol);
        let vol = reopen(&dir);
        assert!(vol.fsck(false).unwrap().problems.is_empty(), "{cipher:?}: its keys went with its last close");
    }
}

#[test]
fn unlinked_data_goes_through_the_trash_and_nothing_is_left_there() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 20);
    for i in 0..50 {
        let f = vol.create(Path::new(&format!("f{i}")), 0o644).unwrap();
        f.write_at(0, &pattern(i, 10_000)).unwrap();
        f.close().unwrap();
        vol.mkdir(Path::new(&format!("d{i}")), 0o755).unwrap();
    }
    vol.create(p("d0/kept"), 0o644).unwrap().close().unwrap();
    for i in 0..50 {
        vol.unlink(Path::new(&format!("f{i}"))).unwrap();
        assert!(matches!(vol.stat(Path::new(&format!("f{i}"))), Err(Error::NotFound(_))), "the name is gone at once");
        if i > 0 {
            vol.rmdir(Path::new(&format!("d{i}"))).unwrap();
            assert!(matches!(vol.stat(Path::new(&format!("d{i}"))), Err(Error::NotFound(_))), "gone at once");
        }
    }
    assert!(matches!(vol.rmdir(p("d0")), Err(Error::DirNotEmpty(_))), "a directory with a file stays");
    assert_eq!(vol.readdir(p("d0")).unwrap().len(), 1);
    vol.unlink(p("d0/kept")).unwrap();
    vol.rmdir(p("d0")).unwrap();
    assert!(vol.readdir(p("")).unwrap().is_empty());
    drop(vol); // unmount: the trash is emptied, and removed
    assert!(!dir.join("trash").exists());
    assert_eq!(fs::read_dir(dir.join("data")).unwrap().count(), 1, "only .dirid remains");

    // What a crash left in the trash is removed by the next read-write mount.
    fs::create_dir(dir.join("trash")).unwrap();
    fs::write(dir.join("trash/0123456789abcdef"), b"leftover ciphertext").unwrap();
    let vol = reopen(&dir);
    vol.begin_mount().unwrap();
    drop(vol);
    assert!(!dir.join("trash").exists(), "leftovers removed");
}

/// Readers racing renames (one renamer, as the kernel serializes a directory's renames). A
/// renamed file or directory is bound to its new entry just after it moves; a reader that
/// read its header before that rebinding and checks it after must not take it for an entry
/// swapped in the backing tree (the load test met this as EIO). Every open, stat and read
/// finds a whole file, or nothing.
#[test]
fn readers_racing_renames_see_whole_files_or_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (_tmp, _dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    let vol = Arc::new(vol);
    let stamped = |seed: u64| [seed.to_le_bytes().to_vec(), pattern(seed, 5_000)].concat();
    let whole = |d: &[u8]| d.len() == 5_008 && d[8..] == pattern(u64::from_le_bytes(d[..8].try_into().unwrap()), 5_000);
    vol.mkdir(p("d1"), 0o755).unwrap();
    let f = vol.create(p("d1/f"), 0o644).unwrap();
    f.write_at(0, &stamped(7)).unwrap();
    f.close().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (vol, stop) = (vol.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for path in ["a", "d1/f", "d2/f"] {
                        let r = vol.open_file(p(path), false).and_then(|h| {
                            let mut buf = vec![0u8; 6_000];
                            let n = h.read_at(0, &mut buf)?;
                            h.close()?;
                            Ok(buf[..n].to_vec())
                        });
                        match r {
                            Ok(data) => {
                                assert!(whole(&data), "{path}: a torn file read ({} bytes)", data.len());
                                seen += 1;
                            }
                            Err(Error::NotFound(_)) => {}
                            Err(e) => panic!("open {path} racing a rename: {e}"),
                        }
                        match vol.stat(p(path)) {
                            Ok(_) | Err(Error::NotFound(_)) => {}
                            Err(e) => panic!("stat {path} racing a rename: {e}"),
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let start = std::time::Instant::now();
    let mut rounds = 0u64;
    while rounds < 200 || (start.elapsed().as_secs() < 4 && rounds < 5_000) {
        let t = vol.create(p("t"), 0o644).unwrap();
        t.write_at(0, &stamped(rounds)).unwrap();
        t.close().unwrap();
        vol.rename(p("t"), p("a")).unwrap();
        let (from, to) = if rounds.is_multiple_of(2) { ("d1", "d2") } else { ("d2", "d1") };
        vol.rename(p(from), p(to)).unwrap();
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let seen: u64 = readers.into_iter().map(|r| r.join().expect("a reader met an error")).sum();
    assert!(seen > 0, "the readers read whole files ({rounds} renames)");
}
