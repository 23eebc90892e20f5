//! `rotate --kek`: every DEK re-wrapped, no data byte rewritten, resumable after SIGKILL.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use envelopefs::format::CipherKind;
use envelopefs::fs::Volume;
use sha2::{Digest, Sha256};

const FILES: u64 = 10;
const BLOCKS_PER_FILE: u64 = 1000;

/// A volume with 4 KiB extents and FILES x BLOCKS_PER_FILE = 10,000 extents.
fn big_volume() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = scratch();
    let dir = tmp.path().join("vol");
    Volume::init(&dir, &opts(CipherKind::Aes256GcmSiv, 12), &pass()).unwrap();
    let vol = Volume::open(&dir, &pass()).unwrap();
    for f in 0..FILES {
        let h = vol.create(Path::new(&format!("f{f}")), 0o600).unwrap();
        h.write_at(0, &pattern(f, (BLOCKS_PER_FILE * 4096) as usize)).unwrap();
        h.close().unwrap();
    }
    assert_eq!(vol.store().counts().unwrap().1, FILES * BLOCKS_PER_FILE);
    let passfile = tmp.path().join("pass");
    fs::write(&passfile, format!("{PASS}\n")).unwrap();
    (tmp, dir, passfile)
}

/// The hash of every data file's blocks (all but the 32-byte object header, whose binding a
/// rotation re-keys along with the backing names), sorted.
fn data_hashes(dir: &Path) -> Vec<Vec<u8>> {
    let mut hashes: Vec<Vec<u8>> = all_files(&dir.join("data"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != ".dirid"))
        .map(|p| Sha256::digest(&fs::read(&p).unwrap()[32..]).to_vec())
        .collect();
    hashes.sort();
    hashes
}

fn assert_all_readable(dir: &Path) {
    let vol = reopen(dir);
    for f in 0..FILES {
        let h = vol.open_file(Path::new(&format!("f{f}")), false).unwrap();
        let mut buf = vec![0u8; (BLOCKS_PER_FILE * 4096) as usize];
        h.read_at(0, &mut buf).unwrap_or_else(|e| panic!("f{f} unreadable: {e}"));
        assert!(buf == pattern(f, buf.len()), "f{f} content");
    }
}

fn rotate_cmd(dir: &Path, passfile: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_envelopefs"));
    c.arg("rotate").arg(dir).arg("--kek").arg("--passfile").arg(passfile).stdin(Stdio::null());
    c
}

fn kek_ids_in_store(dir: &Path) -> Vec<Vec<u8>> {
    let c = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    let mut s = c.prepare("SELECT DISTINCT kek_id FROM extents").unwrap();
    let ids = s.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
    ids
}

/// Every byte of the store, its WAL and the header.
fn metadata_bytes(dir: &Path) -> Vec<u8> {
    ["meta.db", "meta.db-wal", "envelopefs.conf"]
        .iter()
        .flat_map(|f| fs::read(dir.join(f)).unwrap_or_default())
        .collect()
}

#[test]
fn rotate_kek_rewraps_10000_deks_and_rewrites_no_data() {
    let (_tmp, dir, passfile) = big_volume();
    let old = Volume::read_header(&dir).unwrap().kek_id;
    let before = data_hashes(&dir);
    let wrapped_before: Vec<Vec<u8>> = {
        let c = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
        let mut s = c.prepare("SELECT wrapped FROM extents ORDER BY file_id, idx").unwrap();
        let rows = s.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
        rows
    };
    let o = rotate_cmd(&dir, &passfile).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let new = Volume::read_header(&dir).unwrap().kek_id;
    assert_ne!(old, new);
    assert_eq!(data_hashes(&dir), before, "data blocks must be byte-identical");
    assert_eq!(kek_ids_in_store(&dir), vec![new.to_vec()]);
    assert!(!contains(&metadata_bytes(&dir), &old), "the old KEK id is still in the store or header");
    let bytes = metadata_bytes(&dir);
    for w in wrapped_before.iter().step_by(97) {
        assert!(!contains(&bytes, w), "an old wrapped DEK survived");
    }
    assert_all_readable(&dir);
}

#[test]
fn killed_rotation_leaves_everything_readable_and_a_rerun_finishes() {
    let (_tmp, dir, passfile) = big_volume();
    let first = Volume::read_header(&dir).unwrap().kek_id;
    let before = data_hashes(&dir);
    // Time one full run, then cut the next runs at random points within that span.
    let started = std::time::Instant::now();
    assert!(rotate_cmd(&dir, &passfile).output().unwrap().status.success());
    let span = (started.elapsed().as_millis() as u64).max(5);
    let mut rng = Rng(0xC0FFEE);
    let mut interrupted = 0;
    let mut mid_rotation = 0;
    for _ in 0..12 {
        let mut child = rotate_cmd(&dir, &passfile).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(span) + 1));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        if !status.success() {
            interrupted += 1;
        }
        assert_all_readable(&dir);
        assert!(kek_ids_in_store(&dir).len() <= 2, "at most the old and the pending KEK");
        if pending_records(&dir) > 0 {
            mid_rotation += 1;
        }
    }
    assert!(interrupted > 0 && mid_rotation > 0, "no run was cut mid-rotation; the test proves nothing");
    let o = rotate_cmd(&dir, &passfile).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let last = Volume::read_header(&dir).unwrap().kek_id;
    assert_eq!(kek_ids_in_store(&dir), vec![last.to_vec()], "one KEK at the end");
    assert!(!contains(&metadata_bytes(&dir), &first));
    assert_eq!(pending_records(&dir), 0, "no unfinished rotation recorded");
    assert_eq!(data_hashes(&dir), before);
    assert_all_readable(&dir);
}

fn pending_records(dir: &Path) -> i64 {
    let c = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    c.query_row("SELECT count(*) FROM meta WHERE key LIKE 'rotation.%'", [], |r| r.get(0)).unwrap()
}

#[test]
fn rotate_kek_while_mounted_with_reads_and_writes_going_on() {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let mut m = common::mount::MountFixture::new(&["--extent-size", "64K"]);
    for i in 0..4u64 {
        fs::write(m.p(&format!("f{i}")), pattern(i, 2 << 20)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3u64)
        .map(|t| {
            let (dir, stop) = (m.mnt.clone(), stop.clone());
            std::thread::spawn(move || {
                let own = dir.join(format!("w{t}"));
                let mut shadow = vec![0u8; 0];
                let mut rng = Rng(t + 1);
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) || rounds < 5 {
                    rounds += 1;
                    if rng.below(8) == 0 {
                        fs::write(&own, b"").unwrap(); // truncate: drops every DEK of the file
                        shadow.clear();
                    }
                    let f =
                        fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&own).unwrap();
                    let off = rng.below(600_000) as usize;
                    let data = pattern(rng.next(), 1 + rng.below(200_000) as usize);
                    f.write_all_at(&data, off as u64).unwrap();
                    if shadow.len() < off + data.len() {
                        shadow.resize(off + data.len(), 0);
                    }
                    shadow[off..off + data.len()].copy_from_slice(&data);
                    f.sync_all().unwrap();
                    assert!(fs::read(&own).unwrap() == shadow, "worker {t} round {rounds}");
                    let i = rng.below(4);
                    assert!(fs::read(dir.join(format!("f{i}"))).unwrap() == pattern(i, 2 << 20), "f{i}");
                }
                (own, shadow)
            })
        })
        .collect();
    let backing_names = || -> std::collections::HashSet<std::ffi::OsString> {
        fs::read_dir(m.cipher.join("data")).unwrap().map(|e| e.unwrap().file_name()).collect()
    };
    for _ in 0..3 {
        let before = backing_names();
        let o = rotate_cmd(&m.cipher, &m.passfile).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("while mounted"));
        // Every name moved to the new name key (only the directory id file keeps its name).
        let kept: Vec<_> = before.intersection(&backing_names()).cloned().collect();
        assert_eq!(kept, vec![std::ffi::OsString::from(".dirid")], "backing names the rotation left");
        assert!(fs::read_dir(&m.mnt).unwrap().count() >= 4, "the mount lists its files after the rotation");
    }
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(PathBuf, Vec<u8>)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    m.unmount();
    let header = Volume::read_header(&m.cipher).unwrap();
    assert_eq!(kek_ids_in_store(&m.cipher), vec![header.kek_id.to_vec()], "one KEK after the rotations");
    m.mount();
    for (own, shadow) in results {
        let name = own.file_name().unwrap().to_owned();
        assert!(fs::read(m.mnt.join(name)).unwrap() == shadow);
    }
    for i in 0..4u64 {
        assert!(fs::read(m.p(&format!("f{i}"))).unwrap() == pattern(i, 2 << 20));
    }
}

#[test]
fn rotate_root_rewraps_the_kek_under_a_new_root_and_resumes() {
    let (tmp, dir, passfile) = big_volume();
    let before = data_hashes(&dir);
    let header0 = Volume::read_header(&dir).unwrap();
    let old_keystore = fs::read(dir.join("keystore")).unwrap();
    let root_cmd = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_envelopefs"));
        c.arg("rotate").arg(&dir).arg("--root").arg("--passfile").arg(&passfile).stdin(Stdio::null());
        c.output().unwrap()
    };
    let o = root_cmd();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let header1 = Volume::read_header(&dir).unwrap();
    assert_eq!(header1.kek_id, header0.kek_id, "the KEK itself is unchanged");
    assert_ne!(header1.wrapped_kek, header0.wrapped_kek);
    assert_ne!(fs::read(dir.join("keystore")).unwrap()[39..55], old_keystore[39..55], "new root key id");
    assert_eq!(data_hashes(&dir), before);
    assert_all_readable(&dir);

    // The old keystore (e.g. an old backup of it) no longer opens the volume.
    let new_keystore = fs::read(dir.join("keystore")).unwrap();
    fs::write(dir.join("keystore"), &old_keystore).unwrap();
    assert!(matches!(Volume::open(&dir, &pass()), Err(envelopefs::Error::Integrity { .. })));

    // Interrupted after the header was written: the new root still waits as keystore.next.
    fs::write(dir.join("keystore.next"), &new_keystore).unwrap();
    let err = Volume::open(&dir, &pass()).unwrap_err().to_string();
    assert!(err.contains("rotate --root"), "{err}");
    let o = root_cmd();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!dir.join("keystore.next").exists());
    assert_eq!(Volume::read_header(&dir).unwrap().wrapped_kek, header1.wrapped_kek, "finished, not redone");
    assert_all_readable(&dir);
    drop(tmp);
}

#[test]
fn rotate_root_while_mounted_keeps_the_mount_and_its_scratch_working() {
    use common::mount::{evfs, ok, MountFixture};
    let mut m = MountFixture::new(&[]);
    m.unmount();
    m.mount_with(&["--scratch", "tmp"]);
    common::write_synced(&m.p("p"), &pattern(1, 100_000));
    common::write_synced(&m.p("tmp/s"), &pattern(2, 100_000));
    let wrapped0 = Volume::read_header(&m.cipher).unwrap().wrapped_kek;
    let (cipher, passfile) = (m.cipher.clone(), m.passfile.clone());
    let rotate = |what: &str| {
        evfs(&["rotate".as_ref(), cipher.as_os_str(), what.as_ref(), "--passfile".as_ref(), passfile.as_os_str()])
    };
    ok(&rotate("--root"));
    assert_ne!(Volume::read_header(&m.cipher).unwrap().wrapped_kek, wrapped0);
    // fsync'ed: a crash follows, and only fsync'ed data is promised to survive one.
    let mut after = fs::File::create(m.p("after")).unwrap();
    std::io::Write::write_all(&mut after, b"written after the root rotation").unwrap();
    after.sync_all().unwrap();
    drop(after);
    assert_eq!(fs::read(m.p("p")).unwrap(), pattern(1, 100_000));
    // The daemon still holds the old root: a KEK wrapped under it would lock the volume out.
    let o = rotate("--kek");
    assert_eq!(o.status.code(), Some(19), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("remount"));
    // A crash now: the scratch key was re-wrapped under the new root, so it still opens.
    m.crash();
    m.mount();
    assert_eq!(fs::read(m.p("tmp/s")).unwrap(), pattern(2, 100_000), "scratch survives the root rotation");
    assert_eq!(fs::read(m.p("after")).unwrap(), b"written after the root rotation");
    ok(&rotate("--kek"));
    assert_eq!(fs::read(m.p("p")).unwrap(), pattern(1, 100_000));
    m.remount();
    assert!(!m.p("tmp/s").exists(), "the resumed scratch died with this umount");
    assert_eq!(fs::read(m.p("p")).unwrap(), pattern(1, 100_000));
}
