//! Tamper evidence through a mount: each kind of offline edit of the backing directory or the
//! store makes the reads of the affected file fail with EIO, the daemon's log names the file
//! and the cause, and every other file reads back exactly.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::mount::{ok, MountFixture};
use common::pattern;
use envelopefs::fs::Volume;
use envelopefs::secret::Passphrase;

/// Where block `b` of a short file is: format 2 (the default for GCM-SIV) page `1 + b`; XTS
/// (format 1) `32 + b * 4096`.
const HDR: u64 = 4096;
const LEN: usize = 5 * 4096 + 100;

fn slot(xts: bool) -> u64 {
    let _ = xts;
    4096
}

fn volume(m: &MountFixture) -> Volume {
    Volume::open(&m.cipher, &Passphrase::new("mount test passphrase").unwrap()).unwrap()
}

fn file_id(backing: &Path) -> Vec<u8> {
    fs::read(backing).unwrap()[8..24].to_vec()
}

fn db(m: &MountFixture) -> rusqlite::Connection {
    rusqlite::Connection::open(m.cipher.join("meta.db")).unwrap()
}

fn flip(path: &Path, at: u64) {
    let f = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x10;
    f.write_all_at(&b, at).unwrap();
}

fn copy_slot(from: &Path, from_block: u64, to: &Path, to_block: u64, slot: u64) {
    let mut buf = vec![0u8; slot as usize];
    fs::File::open(from).unwrap().read_exact_at(&mut buf, HDR + from_block * slot).unwrap();
    OpenOptions::new().write(true).open(to).unwrap().write_all_at(&buf, HDR + to_block * slot).unwrap();
}

fn write_files(m: &MountFixture, names: &[&str]) {
    for (i, n) in names.iter().enumerate() {
        common::write_synced(&m.p(n), &pattern(i as u64, LEN));
    }
}

/// The daemon's log (from `status`), read from `from` bytes on.
fn daemon_log(m: &MountFixture) -> PathBuf {
    let o = m.run(&["status".as_ref(), m.mnt.as_os_str(), "--json".as_ref()]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    PathBuf::from(v["log"].as_str().unwrap())
}

fn assert_eio(m: &MountFixture, name: &str) {
    let err = fs::read(m.p(name)).expect_err(&format!("{name}: tampered data must not read"));
    assert_eq!(err.raw_os_error(), Some(5), "{name}: {err}");
}

#[test]
fn every_kind_of_tampering_reads_eio_and_is_logged_with_file_and_cause() {
    let mut m = MountFixture::new(&["--extent-size", "64K"]);
    let names = [
        "block-flip",
        "header-flip",
        "dek-flip",
        "dek-swap-a",
        "dek-swap-b",
        "block-swap-positions",
        "block-from-other-file",
        "truncated",
        "size-row",
        "bitmap-row",
        "extent-row-deleted",
        "fine-1",
        "fine-2",
    ];
    write_files(&m, &names);
    m.unmount();

    let vol = volume(&m);
    let b = |n: &str| vol.backing_path(Path::new(n)).unwrap();
    let s = slot(false);
    flip(&b("block-flip"), HDR + 2 * s + 100);
    flip(&b("header-flip"), 12);
    copy_slot(&b("block-swap-positions"), 0, &b("block-swap-positions"), 1, s);
    copy_slot(&b("fine-1"), 0, &b("block-from-other-file"), 0, s);
    OpenOptions::new().write(true).open(b("truncated")).unwrap().set_len(HDR + 3 * s + 10).unwrap();
    let ids: Vec<Vec<u8>> = names.iter().map(|n| file_id(&b(n))).collect();
    let id = |n: &str| ids[names.iter().position(|x| *x == n).unwrap()].clone();
    drop(vol);
    let c = db(&m);
    let wrapped = |f: &[u8]| -> Vec<u8> {
        c.query_row("SELECT wrapped FROM extents WHERE file_id = ?1 AND idx = 0", [f], |r| r.get(0)).unwrap()
    };
    let mut w = wrapped(&id("dek-flip"));
    w[20] ^= 1;
    c.execute("UPDATE extents SET wrapped = ?1 WHERE file_id = ?2", rusqlite::params![w, id("dek-flip")]).unwrap();
    let (wa, wb) = (wrapped(&id("dek-swap-a")), wrapped(&id("dek-swap-b")));
    c.execute("UPDATE extents SET wrapped = ?1 WHERE file_id = ?2", rusqlite::params![wb, id("dek-swap-a")]).unwrap();
    c.execute("UPDATE extents SET wrapped = ?1 WHERE file_id = ?2", rusqlite::params![wa, id("dek-swap-b")]).unwrap();
    c.execute("UPDATE files SET size = size + 4096 WHERE id = ?1", [id("size-row")]).unwrap();
    let mut bits: Vec<u8> =
        c.query_row("SELECT written FROM extents WHERE file_id = ?1", [id("bitmap-row")], |r| r.get(0)).unwrap();
    bits[8] &= !0b100; // block 2 would read as a hole of zeros (format 2: after the 8-byte base)
    c.execute("UPDATE extents SET written = ?1 WHERE file_id = ?2", rusqlite::params![bits, id("bitmap-row")]).unwrap();
    c.execute("DELETE FROM extents WHERE file_id = ?1", [id("extent-row-deleted")]).unwrap();
    drop(c);

    m.mount();
    let log = daemon_log(&m);
    let start = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    for n in &names[..11] {
        assert_eio(&m, n);
    }
    for (i, n) in names.iter().enumerate().skip(11) {
        assert_eq!(fs::read(m.p(n)).unwrap(), pattern(i as u64, LEN), "{n} is unaffected");
    }
    let text = String::from_utf8_lossy(&fs::read(&log).unwrap()[start as usize..]).into_owned();
    for n in &names[..11] {
        let want = format!(" {n}: integrity error: ");
        let line = text.lines().find(|l| l.contains(&want)).unwrap_or_else(|| panic!("{n} not logged: {text}"));
        assert!(line.contains("ERROR"), "{line}");
    }
}

#[test]
fn an_edited_volume_header_refuses_to_mount_and_the_original_still_works() {
    let mut m = MountFixture::new(&[]);
    write_files(&m, &["a"]);
    m.unmount();
    let header = m.cipher.join("envelopefs.conf");
    let good = fs::read(&header).unwrap();
    for at in [10usize, 30, good.len() - 5] {
        let mut bad = good.clone();
        bad[at] ^= 0x04;
        fs::write(&header, &bad).unwrap();
        let o = m.try_mount(&[]);
        assert!(!o.status.success(), "byte {at}: must not mount");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("envelopefs.conf"), "names the file: {err}");
    }
    fs::write(&header, &good).unwrap();
    m.mount();
    assert_eq!(fs::read(m.p("a")).unwrap(), pattern(0, LEN));
}

/// XTS has no per-block tag, so a changed block decrypts to noise (`docs/SECURITY.md`); but
/// the keys and the records are still authenticated.
#[test]
fn xts_volumes_still_authenticate_keys_and_records() {
    let mut m = MountFixture::new(&["--cipher", "aes-256-xts", "--extent-size", "64K"]);
    let names = ["dek-flip", "size-row", "bitmap-row", "fine"];
    write_files(&m, &names);
    m.unmount();
    let vol = volume(&m);
    let ids: Vec<Vec<u8>> = names.iter().map(|n| file_id(&vol.backing_path(Path::new(n)).unwrap())).collect();
    drop(vol);
    let c = db(&m);
    let mut w: Vec<u8> =
        c.query_row("SELECT wrapped FROM extents WHERE file_id = ?1", [&ids[0]], |r| r.get(0)).unwrap();
    w[30] ^= 1;
    c.execute("UPDATE extents SET wrapped = ?1 WHERE file_id = ?2", rusqlite::params![w, ids[0]]).unwrap();
    c.execute("UPDATE files SET size = 1 WHERE id = ?1", [&ids[1]]).unwrap();
    c.execute("UPDATE extents SET written = zeroblob(length(written)) WHERE file_id = ?1", [&ids[2]]).unwrap();
    drop(c);
    m.mount();
    for n in &names[..3] {
        assert_eio(&m, n);
    }
    assert_eq!(fs::read(m.p("fine")).unwrap(), pattern(3, LEN));
    let _ = slot(true);
}

/// A read that starts a long group of extents (format 2, code 4: extent 15 of 1 MiB extents
/// starts a group of 16), and a sequential one before it (extent 7, which starts the group
/// before), hint the kernel through a mapping of the data file (`DataFile::stream_from`, and
/// `DataFile::prefetch` on a thread of its own; on a disk: not on tmpfs). A data file cut
/// right there, from outside, must be an EIO for the blocks it lost, not a SIGBUS that ends
/// the daemon: the blocks before the cut read back, and the mount goes on serving.
#[test]
fn a_data_file_cut_where_a_group_of_extents_starts_reads_eio_and_the_daemon_lives() {
    const MIB: usize = 1 << 20;
    let Some(mut m) = MountFixture::on_disk("evfs-cut-") else { return };
    let data = pattern(7, 30 * MIB); // 15 extents of the group: a stream (more than 8 MiB)
    common::write_synced(&m.p("cut"), &data);
    write_files(&m, &["fine"]);
    m.unmount();
    let vol = volume(&m);
    let backing = vol.backing_path(Path::new("cut")).unwrap();
    drop(vol);
    // Groups of 1, 2, 4 and 8 extents, each a slot-0 run and then a slot-1 area as long:
    // extent 15's slot 0 is at page 1 + 256 * (15 + 15).
    let group_start = (1 + 256 * 30) * 4096;
    assert!(fs::metadata(&backing).unwrap().len() > group_start, "the layout this test plants into");
    OpenOptions::new().write(true).open(&backing).unwrap().set_len(group_start).unwrap();

    m.mount();
    let f = fs::File::open(m.p("cut")).unwrap();
    let mut head = vec![0u8; 15 * MIB];
    f.read_exact_at(&mut head, 0).unwrap();
    assert!(head == data[..15 * MIB], "the blocks before the cut read back");
    let mut buf = vec![0u8; MIB];
    let err = f.read_exact_at(&mut buf, 15 * MIB as u64).expect_err("the cut blocks must not read");
    assert_eq!(err.raw_os_error(), Some(5), "{err}");
    assert_eq!(fs::read(m.p("fine")).unwrap(), pattern(0, LEN), "the daemon still serves");
}
