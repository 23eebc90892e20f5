//! Directory entries are bound to the objects they name (volume feature entries-bound): a
//! writer of CIPHERDIR who swaps data files, directories or symlink targets in the backing
//! tree gets an integrity error (EIO through the mount) on both sides, never one file's
//! contents under the other's name (docs/SECURITY.md, "Backing storage you do not trust").

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::mount::MountFixture;
use common::*;
use envelopefs::format::{CipherKind, FEATURE_ENTRIES_BOUND};
use envelopefs::fs::Volume;
use envelopefs::Error;

fn mount_pass() -> envelopefs::secret::Passphrase {
    envelopefs::secret::Passphrase::new("mount test passphrase").unwrap()
}

/// Swaps backing entries `a` and `b` (what a writer of CIPHERDIR can do with `mv`).
fn swap(a: &Path, b: &Path) {
    let tmp = a.with_file_name("swap-tmp");
    fs::rename(a, &tmp).unwrap();
    fs::rename(b, a).unwrap();
    fs::rename(&tmp, b).unwrap();
}

fn backing(cipher: &Path, rel: &str) -> PathBuf {
    Volume::open(cipher, &mount_pass()).unwrap().backing_path(Path::new(rel)).unwrap()
}

fn assert_eio(r: std::io::Result<impl std::fmt::Debug>, what: &str) {
    match r {
        Err(e) => assert_eq!(e.raw_os_error(), Some(5), "{what}: {e}"),
        Ok(v) => panic!("{what}: a swapped entry was served: {v:?}"),
    }
}

#[test]
fn another_files_bytes_copied_in_place_while_mounted_read_eio_not_its_contents() {
    // On either cipher: the header is checked again at the open, whatever the stat before
    // kept (XTS's blocks are not authenticated: the header is what refuses the copy there).
    for init in [&[][..], &["--cipher", "aes-256-xts"][..]] {
        let mut m = MountFixture::new(init);
        fs::write(m.p("a"), b"contents of a").unwrap();
        fs::write(m.p("b"), b"contents of b").unwrap();
        m.unmount();
        let (fa, fb) = (backing(&m.cipher, "a"), backing(&m.cipher, "b"));
        let kept = fs::read(&fa).unwrap();
        m.mount();
        assert_eq!(fs::metadata(m.p("a")).unwrap().len(), 13, "{init:?}: a stat'ed, its id known");
        // b's data file, header and all, copied over a's: the same inode, another file's bytes.
        fs::write(&fa, fs::read(&fb).unwrap()).unwrap();
        assert_eio(fs::read(m.p("a")), &format!("{init:?}: cat a"));
        assert_eq!(fs::read(m.p("b")).unwrap(), b"contents of b");
        // Put back, a reads as it was.
        fs::write(&fa, &kept).unwrap();
        assert_eq!(fs::read(m.p("a")).unwrap(), b"contents of a", "{init:?}");
    }
}

#[test]
fn swapped_files_directories_and_symlink_targets_give_eio_not_each_others_contents() {
    let mut m = MountFixture::new(&[]);
    fs::write(m.p("a"), b"contents of a").unwrap();
    fs::write(m.p("b"), b"contents of b").unwrap();
    fs::create_dir(m.p("da")).unwrap();
    fs::create_dir(m.p("db")).unwrap();
    fs::write(m.p("da/in-a"), b"1").unwrap();
    fs::write(m.p("db/in-b"), b"2").unwrap();
    symlink("/target/of/la", m.p("la")).unwrap();
    symlink("/target/of/lb", m.p("lb")).unwrap();
    m.unmount();
    let b = |rel: &str| backing(&m.cipher, rel);
    let (fa, fb, da, db, la, lb) = (b("a"), b("b"), b("da"), b("db"), b("la"), b("lb"));
    swap(&fa, &fb);
    swap(&da, &db);
    // A symlink target pasted from another link (the backing symlinks swapped).
    swap(&la, &lb);
    m.mount();
    assert_eio(fs::read(m.p("a")), "cat a");
    assert_eio(fs::read(m.p("b")), "cat b");
    assert_eio(fs::read_dir(m.p("da")).and_then(|d| d.collect::<std::io::Result<Vec<_>>>()), "ls da");
    assert_eio(fs::read(m.p("db/in-b")), "cat db/in-b");
    assert_eio(fs::read_link(m.p("la")), "readlink la");
    assert_eio(fs::read_link(m.p("lb")), "readlink lb");
    // A rename does not launder a swapped object into a fresh binding.
    assert_eio(fs::rename(m.p("a"), m.p("c")), "mv a c");
    assert_eio(fs::rename(m.p("da"), m.p("dc")), "mv da dc");
    m.unmount();
    // Put back, everything reads as it was: nothing was rewritten on the attacker's say-so.
    swap(&fa, &fb);
    swap(&da, &db);
    swap(&la, &lb);
    m.mount();
    assert_eq!(fs::read(m.p("a")).unwrap(), b"contents of a");
    assert_eq!(fs::read(m.p("db/in-b")).unwrap(), b"2");
    assert_eq!(fs::read_link(m.p("lb")).unwrap(), Path::new("/target/of/lb"));
    m.unmount();
    // Swapped again, `rm a` fails (its lookup does not authenticate) and deletes no keys:
    // neither a's (its object is elsewhere) nor b's (whose object the name holds).
    let records = |cipher: &Path| -> i64 {
        let c = rusqlite::Connection::open(cipher.join("meta.db")).unwrap();
        c.query_row("SELECT count(*) FROM files", [], |r| r.get(0)).unwrap()
    };
    let before = records(&m.cipher);
    swap(&fa, &fb);
    m.mount();
    assert_eio(fs::remove_file(m.p("a")), "rm a");
    m.unmount();
    // Through the library (no lookup first) the name goes, and still no keys with it.
    let vol = Volume::open(&m.cipher, &mount_pass()).unwrap();
    vol.unlink(Path::new("a")).unwrap();
    drop(vol);
    assert_eq!(records(&m.cipher), before, "an unlink of a swapped name deleted keys");
}

#[test]
fn renames_links_and_exchanges_keep_every_entry_bound() {
    let mut m = MountFixture::new(&[]);
    fs::create_dir_all(m.p("d1/sub")).unwrap();
    fs::create_dir(m.p("d2")).unwrap();
    fs::write(m.p("d1/f"), b"f").unwrap();
    fs::write(m.p("d1/sub/g"), b"g").unwrap();
    fs::write(m.p("x"), b"x").unwrap();
    fs::write(m.p("y"), b"y").unwrap();
    symlink("t1", m.p("d1/l")).unwrap();
    // Renames of each kind, across directories, over an existing file, and exchanges.
    fs::rename(m.p("d1/f"), m.p("d2/f")).unwrap();
    fs::rename(m.p("d1/sub"), m.p("d2/sub")).unwrap();
    fs::rename(m.p("d1/l"), m.p("d2/l")).unwrap();
    fs::rename(m.p("x"), m.p("y")).unwrap();
    symlink("t2", m.p("l2")).unwrap();
    fs::rename(m.p("l2"), m.p("d2/l")).unwrap(); // a symlink over a symlink
    fs::write(m.p("e1"), b"e1").unwrap();
    fs::write(m.p("e2"), b"e2").unwrap();
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &m.p("e1"),
        nix::fcntl::AT_FDCWD,
        &m.p("e2"),
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .unwrap();
    // Exchanges of directories and of a symlink with a file; a no-replace symlink rename.
    fs::create_dir(m.p("x1")).unwrap();
    fs::write(m.p("x1/in"), b"in x1").unwrap();
    fs::create_dir(m.p("x2")).unwrap();
    let exchange = |a: &str, b: &str| {
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        renameat2(AT_FDCWD, &m.p(a), AT_FDCWD, &m.p(b), RenameFlags::RENAME_EXCHANGE).unwrap()
    };
    exchange("x1", "x2");
    symlink("t3", m.p("l3")).unwrap();
    fs::write(m.p("plain"), b"plain").unwrap();
    exchange("l3", "plain");
    symlink("t4", m.p("l4")).unwrap();
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &m.p("l4"),
        nix::fcntl::AT_FDCWD,
        &m.p("d1/l4"),
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .unwrap();
    // A renamed symlink keeps its owner and times (it is copied into place).
    symlink("owned", m.p("lo")).unwrap();
    std::os::unix::fs::lchown(m.p("lo"), Some(4321), Some(4321)).unwrap();
    let before = fs::symlink_metadata(m.p("lo")).unwrap();
    fs::rename(m.p("lo"), m.p("d2/lo")).unwrap();
    let after = fs::symlink_metadata(m.p("d2/lo")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((after.uid(), after.gid(), after.mtime()), (4321, 4321, before.mtime()));
    // A hard link planted in the backing tree does not make a renamed file "shared" (bound
    // to the volume only): whether it is comes from its header, not from a link count.
    fs::write(m.p("single"), b"one name").unwrap();
    m.unmount();
    fs::hard_link(backing(&m.cipher, "single"), m.cipher.join("planted-link")).unwrap();
    m.mount();
    fs::rename(m.p("single"), m.p("single2")).unwrap();
    m.unmount();
    let flags = u16::from_le_bytes(fs::read(backing(&m.cipher, "single2")).unwrap()[6..8].try_into().unwrap());
    assert_eq!(flags & 3, 1, "bound to its entry, not shared");
    fs::remove_file(m.cipher.join("planted-link")).unwrap();
    m.mount();
    // Hard links (a file with two names is bound to the volume), and a link of a symlink.
    fs::hard_link(m.p("y"), m.p("d1/y-link")).unwrap();
    fs::hard_link(m.p("d2/l"), m.p("l-copy")).unwrap();
    m.remount();
    assert_eq!(fs::read(m.p("x2/in")).unwrap(), b"in x1");
    assert!(fs::read_dir(m.p("x1")).unwrap().next().is_none());
    assert_eq!(fs::read_link(m.p("plain")).unwrap(), Path::new("t3"));
    assert_eq!(fs::read(m.p("l3")).unwrap(), b"plain");
    assert_eq!(fs::read_link(m.p("d1/l4")).unwrap(), Path::new("t4"));
    assert_eq!(fs::read_link(m.p("d2/lo")).unwrap(), Path::new("owned"));
    assert_eq!(fs::read(m.p("d2/f")).unwrap(), b"f");
    assert_eq!(fs::read(m.p("d2/sub/g")).unwrap(), b"g");
    assert_eq!(fs::read_link(m.p("d2/l")).unwrap(), Path::new("t2"));
    assert_eq!(fs::read_link(m.p("l-copy")).unwrap(), Path::new("t2"));
    assert_eq!(fs::read(m.p("y")).unwrap(), b"x");
    assert_eq!(fs::read(m.p("d1/y-link")).unwrap(), b"x");
    assert_eq!(fs::read(m.p("e1")).unwrap(), b"e2");
    assert_eq!(fs::read(m.p("e2")).unwrap(), b"e1");
    assert!(!m.p("x").exists() && !m.p("d1/l").exists());
    m.unmount();
    let report = Volume::open(&m.cipher, &mount_pass()).unwrap().fsck(false).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[test]
fn a_rename_cut_by_a_crash_is_bound_by_recovery_and_only_then() {
    let mut m = MountFixture::new(&[]);
    fs::write(m.p("f"), b"data").unwrap();
    fs::write(m.p("g"), b"data of g").unwrap();
    m.unmount();
    let (f, g) = (backing(&m.cipher, "f"), backing(&m.cipher, "g"));
    let f_moved = backing(&m.cipher, "f-moved");
    // The mount crashed (its marker is authentic) right after a rename of f, before the
    // header rewrite: recovery binds it where it is.
    m.mount();
    m.crash();
    fs::rename(&f, &f_moved).unwrap();
    m.mount();
    assert_eq!(fs::read(m.p("f-moved")).unwrap(), b"data");
    m.unmount();
    // The same move on a cleanly unmounted volume is someone else's doing: refused.
    let g_moved = backing(&m.cipher, "g-moved");
    fs::rename(&g, &g_moved).unwrap();
    m.mount();
    assert_eio(fs::read(m.p("g-moved")), "cat g-moved");
}

/// A link's rows are committed lazily (no WAL fsync of their own), and the header rewrite
/// that binds the file to the volume is not synced either: a crash can keep the new name and
/// lose both. Recovery after that crash binds every name again, whichever of a file's names
/// its walk meets first; the same loss on a cleanly unmounted volume is refused.
#[test]
fn a_link_whose_rows_and_header_a_crash_lost_is_bound_by_recovery_and_only_then() {
    let mut m = MountFixture::new(&[]);
    fs::create_dir(m.p("d")).unwrap();
    for (name, data) in [("x", "data of x"), ("d/y", "data of y"), ("t", "data of t"), ("z", "data of z")] {
        fs::write(m.p(name), data).unwrap();
    }
    m.unmount();
    let (bx, by) = (backing(&m.cipher, "x"), backing(&m.cipher, "d/y"));
    let (hx, hy) = (fs::read(&bx).unwrap()[..32].to_vec(), fs::read(&by).unwrap()[..32].to_vec());
    let put_header = |path: &Path, h: &[u8]| {
        use std::os::unix::fs::FileExt;
        fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(h, 0).unwrap();
    };
    let lose_rows = |cipher: &Path| {
        let c = rusqlite::Connection::open(cipher.join("meta.db")).unwrap();
        assert!(c.execute("DELETE FROM links", []).unwrap() > 0, "the links made rows");
    };
    m.mount();
    fs::hard_link(m.p("x"), m.p("d/x2")).unwrap(); // the header's name first in the walk...
    fs::hard_link(m.p("d/y"), m.p("y2")).unwrap(); // ... or the new one
    fs::hard_link(m.p("t"), m.p("u")).unwrap(); // git's way: the first name goes
    fs::remove_file(m.p("t")).unwrap();
    m.crash();
    // What a power cut may leave: the names, but neither their rows nor the header rewrites.
    lose_rows(&m.cipher);
    put_header(&bx, &hx);
    put_header(&by, &hy);
    m.mount();
    for (name, data) in
        [("x", "data of x"), ("d/x2", "data of x"), ("d/y", "data of y"), ("y2", "data of y"), ("u", "data of t")]
    {
        assert_eq!(fs::read(m.p(name)).unwrap(), data.as_bytes(), "{name}");
    }
    fs::write(m.p("d/x2"), b"written through one name").unwrap();
    assert_eq!(fs::read(m.p("x")).unwrap(), b"written through one name", "still one file");
    m.unmount();
    let report = Volume::open(&m.cipher, &mount_pass()).unwrap().fsck(false).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    // The same loss on a cleanly unmounted volume is someone else's doing: refused.
    m.mount();
    fs::hard_link(m.p("z"), m.p("z2")).unwrap();
    m.unmount();
    lose_rows(&m.cipher);
    m.mount();
    assert_eio(fs::read(m.p("z2")), "cat z2 (its row deleted after a clean unmount)");
    assert_eio(fs::read(m.p("z")), "cat z");
}

#[test]
fn a_volume_made_before_entries_were_bound_is_bound_in_place() {
    use base64::Engine;
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    vol.mkdir(Path::new("d"), 0o700).unwrap();
    let f = vol.create(Path::new("d/f"), 0o600).unwrap();
    f.write_at(0, b"old").unwrap();
    f.close().unwrap();
    vol.symlink(Path::new("d/l"), "target".as_ref()).unwrap();
    // As the previous build left it: unbound headers, a symlink target sealed with the zero
    // context, the feature bit clear (the name key re-sealed for that binding).
    let (bf, bd, bl) = (
        vol.backing_path(Path::new("d/f")).unwrap(),
        vol.backing_path(Path::new("d")).unwrap(),
        vol.backing_path(Path::new("d/l")).unwrap(),
    );
    let unbind = |p: &Path| {
        let mut bytes = fs::read(p).unwrap();
        bytes[6..8].fill(0);
        bytes[24..32].fill(0);
        fs::write(p, bytes).unwrap();
    };
    unbind(&bf);
    unbind(&bd.join(".dirid"));
    unbind(&dir.join("data/.dirid"));
    let sealed = vol.keys().names().seal_random(envelopefs::crypto::NamePurpose::SymlinkTarget, &[0; 16], b"target");
    fs::remove_file(&bl).unwrap();
    symlink(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed), &bl).unwrap();
    let mut header = vol.header();
    header.features &= !FEATURE_ENTRIES_BOUND;
    header.wrapped_name_key = vol.keys().seal_name_key(&header).unwrap();
    drop(vol);
    fs::write(dir.join("envelopefs.conf"), header.encode()).unwrap();

    let vol = reopen(&dir);
    assert_ne!(Volume::read_header(&dir).unwrap().features & FEATURE_ENTRIES_BOUND, 0, "not upgraded");
    let mut back = [0u8; 3];
    vol.open_file(Path::new("d/f"), false).unwrap().read_at(0, &mut back).unwrap();
    assert_eq!(&back, b"old");
    assert_eq!(vol.readlink(Path::new("d/l")).unwrap(), "target");
    assert!(vol.fsck(false).unwrap().is_clean());
    drop(vol);
    // Bound now: an unbound header planted from here on is an integrity error.
    unbind(&bf);
    match reopen(&dir).open_file(Path::new("d/f"), false) {
        Err(Error::Integrity { path, .. }) => assert!(path.ends_with("d/f"), "{}", path.display()),
        other => panic!("an unbound header was accepted on a bound volume: {:?}", other.map(|_| ())),
    }
}

/// A file with hard links is bound to each of its names in the store (volume feature
/// links-bound; its header binds it to the volume only): two such files swapped in the backing
/// tree give EIO, a name it lost does not take it back, and every way its names come and go
/// keeps them bound.
#[test]
fn hard_linked_files_are_bound_to_each_of_their_names() {
    let mut m = MountFixture::new(&[]);
    fs::write(m.p("a"), b"contents of a").unwrap();
    fs::write(m.p("b"), b"contents of b").unwrap();
    fs::hard_link(m.p("a"), m.p("a2")).unwrap();
    fs::hard_link(m.p("b"), m.p("b2")).unwrap();
    m.unmount();
    let (fa, fb) = (backing(&m.cipher, "a"), backing(&m.cipher, "b"));
    swap(&fa, &fb);
    m.mount();
    assert_eio(fs::read(m.p("a")), "cat a");
    assert_eio(fs::read(m.p("b")), "cat b");
    assert_eq!(fs::read(m.p("a2")).unwrap(), b"contents of a", "its other names still read");
    assert_eio(fs::rename(m.p("a"), m.p("c")), "mv a c");
    m.unmount();
    swap(&fa, &fb);
    m.mount();
    assert_eq!(fs::read(m.p("a")).unwrap(), b"contents of a");
    let exchange = |a: &str, b: &str| {
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        renameat2(AT_FDCWD, &m.p(a), AT_FDCWD, &m.p(b), RenameFlags::RENAME_EXCHANGE).unwrap()
    };
    fs::create_dir(m.p("d")).unwrap();
    fs::rename(m.p("a2"), m.p("d/a3")).unwrap(); // across directories
    fs::hard_link(m.p("d/a3"), m.p("d/a4")).unwrap(); // a third name
    fs::write(m.p("plain"), b"plain").unwrap();
    exchange("b2", "plain"); // exchanged with a file of one name
    fs::write(m.p("over"), b"over").unwrap();
    fs::rename(m.p("over"), m.p("d/a4")).unwrap(); // one of its names replaced
    fs::remove_file(m.p("a")).unwrap(); // one removed
    m.remount();
    assert_eq!(fs::read(m.p("d/a3")).unwrap(), b"contents of a");
    assert_eq!(fs::read(m.p("d/a4")).unwrap(), b"over");
    assert_eq!(fs::read(m.p("plain")).unwrap(), b"contents of b");
    assert_eq!(fs::read(m.p("b2")).unwrap(), b"plain");
    assert_eq!(fs::read(m.p("b")).unwrap(), b"contents of b");
    m.unmount();
    let report = Volume::open(&m.cipher, &mount_pass()).unwrap().fsck(false).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    // Renaming one name of a file onto another of its names changes nothing (POSIX): both
    // names still read (through the library: the kernel does not send such a rename).
    let vol = Volume::open(&m.cipher, &mount_pass()).unwrap();
    vol.link(Path::new("d/a3"), Path::new("d/a5")).unwrap();
    vol.rename(Path::new("d/a3"), Path::new("d/a5")).unwrap();
    for p in ["d/a3", "d/a5"] {
        let f = vol.open_file(Path::new(p), false).unwrap();
        let mut buf = vec![0u8; 13];
        f.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, b"contents of a", "{p}");
    }
    // A link that fails (its name is taken) leaves no row for that name behind.
    assert!(matches!(vol.link(Path::new("d/a3"), Path::new("b")), Err(envelopefs::Error::Exists(_))));
    let fb_now = vol.backing_path(Path::new("b")).unwrap();
    drop(vol);
    // A writer of CIPHERDIR links the file back under the name it lost, or under the name
    // whose link failed: bound to neither.
    fs::hard_link(backing(&m.cipher, "d/a3"), &fa).unwrap();
    fs::remove_file(&fb_now).unwrap();
    fs::hard_link(backing(&m.cipher, "d/a3"), &fb_now).unwrap();
    m.mount();
    assert_eio(fs::read(m.p("a")), "cat a (a name the file lost, linked back)");
    assert_eio(fs::read(m.p("b")), "cat b (a name whose link failed)");
    assert_eq!(fs::read(m.p("d/a3")).unwrap(), b"contents of a");
}

/// A removed name's row goes in the next group commit (`git` links every object it writes
/// and unlinks the temporary name), while the volume is still mounted; a file linked back to
/// that name meanwhile keeps the row.
#[test]
fn a_removed_names_row_goes_with_the_next_group_commit_unless_the_name_comes_back() {
    let mut m = MountFixture::new(&[]);
    let rows = |cipher: &Path| -> i64 {
        let c = rusqlite::Connection::open(cipher.join("meta.db")).unwrap();
        c.query_row("SELECT COUNT(*) FROM links", [], |r| r.get(0)).unwrap()
    };
    // Rows are written before a link returns and deleted a moment after an unlink: wait
    // (bounded) until there are `n`.
    let wait_for = |cipher: &Path, n: i64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while rows(cipher) != n && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        rows(cipher)
    };
    fs::write(m.p("a"), b"contents of a").unwrap();
    fs::hard_link(m.p("a"), m.p("c")).unwrap();
    assert_eq!(rows(&m.cipher), 2, "a and c bound before the link returned");
    fs::remove_file(m.p("c")).unwrap();
    assert_eq!(wait_for(&m.cipher, 1), 1, "c's row goes while mounted");
    // Linked, unlinked and linked again at once: the row whose deletion was queued stays.
    for _ in 0..20 {
        fs::hard_link(m.p("a"), m.p("b")).unwrap();
        fs::remove_file(m.p("b")).unwrap();
        fs::hard_link(m.p("a"), m.p("b")).unwrap();
        assert_eq!(fs::read(m.p("b")).unwrap(), b"contents of a");
        fs::remove_file(m.p("b")).unwrap();
    }
    fs::hard_link(m.p("a"), m.p("b")).unwrap();
    m.remount();
    assert_eq!(fs::read(m.p("b")).unwrap(), b"contents of a", "b's row outlived the queued deletions");
    assert_eq!(rows(&m.cipher), 2);
    m.unmount();
    let report = Volume::open(&m.cipher, &mount_pass()).unwrap().fsck(false).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    // A name removed and then linked again, where the link fails (a writer of CIPHERDIR holds
    // the backing name): the row whose deletion the link took back goes with the failure, so
    // the file planted there later is not the file's.
    let fb = backing(&m.cipher, "b");
    let vol = Volume::open(&m.cipher, &mount_pass()).unwrap();
    vol.unlink(Path::new("b")).unwrap();
    fs::write(&fb, b"planted").unwrap();
    assert!(matches!(vol.link(Path::new("a"), Path::new("b")), Err(envelopefs::Error::Exists(_))));
    drop(vol);
    assert_eq!(rows(&m.cipher), 1, "only a's row is left");
    fs::remove_file(&fb).unwrap();
    fs::hard_link(backing(&m.cipher, "a"), &fb).unwrap();
    m.mount();
    assert_eio(fs::read(m.p("b")), "cat b (its link failed; the file planted there)");
}

/// The same loss as above, met by `rotate --kek` run offline right after the crash: refused
/// (the recovery a mount runs has not run; it used to finish with the link "left as found",
/// an integrity error), nothing changed. After the mount's recovery, which leaves the header
/// bound to the first name and a row for the link (a state that lasts), every rotation,
/// mounted or not, moves that row, and both names read.
#[test]
fn a_link_a_crash_left_without_its_row_is_rotated_after_recovery_and_refused_before_it() {
    let mut m = MountFixture::new(&[]);
    fs::write(m.p("x"), "data of x").unwrap();
    m.unmount();
    let bx = backing(&m.cipher, "x");
    let hx = fs::read(&bx).unwrap()[..32].to_vec();
    m.mount();
    fs::hard_link(m.p("x"), m.p("x2")).unwrap();
    m.crash();
    let c = rusqlite::Connection::open(m.cipher.join("meta.db")).unwrap();
    assert!(c.execute("DELETE FROM links", []).unwrap() > 0, "the link made rows");
    drop(c);
    {
        use std::os::unix::fs::FileExt;
        fs::OpenOptions::new().write(true).open(&bx).unwrap().write_all_at(&hx, 0).unwrap();
    }
    let rotate = |m: &MountFixture| {
        m.run(&[
            "rotate".as_ref(),
            "--kek".as_ref(),
            m.cipher.as_os_str(),
            "--passfile".as_ref(),
            m.passfile.as_os_str(),
        ])
    };
    let kek = |m: &MountFixture| Volume::open(&m.cipher, &mount_pass()).unwrap().header().kek_id;
    let before = kek(&m);
    let o = rotate(&m);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "refused before the recovery: {err}");
    assert!(err.contains("was not unmounted cleanly") && err.contains("mount it once"), "{err}");
    assert_eq!(kek(&m), before, "nothing rotated");
    m.mount();
    for name in ["x", "x2"] {
        assert_eq!(fs::read(m.p(name)).unwrap(), b"data of x", "{name} after the recovery");
    }
    let o = rotate(&m);
    assert!(o.status.success(), "mounted: {}", String::from_utf8_lossy(&o.stderr));
    m.unmount();
    let o = rotate(&m);
    assert!(o.status.success(), "offline: {}", String::from_utf8_lossy(&o.stderr));
    m.mount();
    for name in ["x", "x2"] {
        assert_eq!(fs::read(m.p(name)).unwrap(), b"data of x", "{name} after two rotations");
    }
}
