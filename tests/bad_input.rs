//! Bad input through the command line and a mount: a store from a newer build, a missing data
//! file or store row, an empty or read-only backing directory, and a full backing file
//! system. Each gives a clear error (ENOSPC to the writer when full) and damages nothing.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::mount::{ok, MountFixture};
use common::pattern;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A mount of the system's own (tmpfs, ro bind); unmounted (lazily) in Drop.
struct SysMount(std::path::PathBuf);

impl SysMount {
    fn new(target: &Path, args: &[&str]) -> SysMount {
        fs::create_dir_all(target).unwrap();
        let st = Command::new("mount").args(args).arg(target).status().unwrap();
        assert!(st.success(), "mount {args:?} {}", target.display());
        SysMount(target.to_path_buf())
    }
}

impl Drop for SysMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_store_from_a_newer_build_is_refused_and_left_alone() {
    let mut m = MountFixture::new(&[]);
    common::write_synced(&m.p("a"), b"kept");
    m.unmount();
    let c = rusqlite::Connection::open(m.cipher.join("meta.db")).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    let before = fs::read(m.cipher.join("meta.db")).unwrap();
    let o = m.try_mount(&[]);
    assert_eq!(o.status.code(), Some(13), "{}", stderr(&o));
    assert!(stderr(&o).contains("meta.db") && stderr(&o).contains("schema version 99"), "{}", stderr(&o));
    assert_eq!(fs::read(m.cipher.join("meta.db")).unwrap(), before, "nothing written to a store we do not understand");
    let c = rusqlite::Connection::open(m.cipher.join("meta.db")).unwrap();
    c.pragma_update(None, "user_version", 5).unwrap();
    drop(c);
    m.mount();
    assert_eq!(fs::read(m.p("a")).unwrap(), b"kept");
}

#[test]
fn a_missing_data_file_or_store_row_costs_only_that_file() {
    let mut m = MountFixture::new(&[]);
    for n in ["gone", "no-row", "fine"] {
        common::write_synced(&m.p(n), &pattern(n.len() as u64, 20_000));
    }
    m.unmount();
    let vol =
        envelopefs::fs::Volume::open(&m.cipher, &envelopefs::secret::Passphrase::new("mount test passphrase").unwrap())
            .unwrap();
    let gone = vol.backing_path(Path::new("gone")).unwrap();
    let no_row = vol.backing_path(Path::new("no-row")).unwrap();
    drop(vol);
    fs::remove_file(&gone).unwrap();
    let id = fs::read(&no_row).unwrap()[8..24].to_vec();
    let c = rusqlite::Connection::open(m.cipher.join("meta.db")).unwrap();
    c.execute("DELETE FROM files WHERE id = ?1", [&id]).unwrap();
    drop(c);

    // A deleted row changes the set of files the store last committed: no mount until the
    // operator has looked (fsck names both files) and accepted what is there.
    let o = m.try_mount(&[]);
    assert!(!o.status.success() && stderr(&o).contains("meta.db"), "{}", stderr(&o));
    let fsck = ["fsck".as_ref(), m.cipher.as_os_str(), "--passfile".as_ref(), m.passfile.as_os_str()];
    let o = m.run(&fsck);
    assert_eq!(o.status.code(), Some(4));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("keys without data") && out.contains("/no-row: data without keys"), "{out}");
    assert!(out.contains("files removed"), "{out}");
    // --repair: the set accepted, the row-less file to lost+found (ciphertext intact); each
    // broken file costs only itself.
    let repair = [&fsck[..], &["--repair".as_ref()]].concat();
    m.run(&repair);
    m.mount();
    assert!(!m.p("gone").exists() && !m.p("no-row").exists());
    let kept: Vec<_> = fs::read_dir(m.p("lost+found")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(fs::read(&kept[0]).unwrap_err().raw_os_error(), Some(5), "no keys, no plaintext");
    assert_eq!(fs::read(m.p("fine")).unwrap(), pattern(4, 20_000));
}

#[test]
fn an_empty_or_missing_backing_directory_is_not_a_volume() {
    let tmp = common::scratch();
    let (empty, mnt, pass) = (tmp.path().join("empty"), tmp.path().join("mnt"), tmp.path().join("pass"));
    fs::create_dir(&empty).unwrap();
    fs::create_dir(&mnt).unwrap();
    fs::write(&pass, "x\n").unwrap();
    for dir in [empty.clone(), tmp.path().join("missing")] {
        let o = common::mount::evfs(&[
            "mount".as_ref(),
            dir.as_os_str(),
            mnt.as_os_str(),
            "--passfile".as_ref(),
            pass.as_os_str(),
        ]);
        assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
        assert!(stderr(&o).contains("not an envelopefs volume"), "{}", stderr(&o));
    }
    assert_eq!(fs::read_dir(&empty).unwrap().count(), 0, "nothing created in it");
}

#[test]
fn a_read_only_backing_directory_is_a_clear_error() {
    if !is_root() {
        eprintln!("skipped: needs root for a read-only bind mount (CI runs as root)");
        return;
    }
    let mut m = MountFixture::new(&[]);
    common::write_synced(&m.p("a"), b"data");
    m.unmount();
    let ro = m.tmp.path().join("ro");
    let _bind = SysMount::new(&ro, &["--bind", "-o", "ro", m.cipher.to_str().unwrap()]);
    let before = fs::read(m.cipher.join("meta.db")).unwrap();
    let o =
        m.run(&["mount".as_ref(), ro.as_os_str(), m.mnt.as_os_str(), "--passfile".as_ref(), m.passfile.as_os_str()]);
    assert!(!o.status.success(), "a read-write mount of a read-only backing directory");
    let err = stderr(&o);
    assert!(err.contains("Read-only file system") || err.contains("read-only"), "{err}");
    assert_eq!(fs::read(m.cipher.join("meta.db")).unwrap(), before);
    m.mount();
    assert_eq!(fs::read(m.p("a")).unwrap(), b"data");
}

#[test]
fn a_full_backing_file_system_gives_enospc_and_loses_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root to mount a small tmpfs (CI runs as root)");
        return;
    }
    let tmp = common::scratch();
    let small = tmp.path().join("small");
    let _fs = SysMount::new(&small, &["-t", "tmpfs", "-o", "size=12m", "tmpfs"]);
    let (cipher, mnt, pass) = (small.join("c"), tmp.path().join("mnt"), tmp.path().join("pass"));
    fs::create_dir(&mnt).unwrap();
    fs::write(&pass, "mount test passphrase\n").unwrap();
    ok(&common::mount::evfs(&["init".as_ref(), cipher.as_os_str(), "--passfile".as_ref(), pass.as_os_str()]));
    let mut m = MountFixture::adopt_existing(cipher, mnt, pass);
    m.mount();

    let kept: Vec<Vec<u8>> = (0..4).map(|i| pattern(i, 700_000)).collect();
    for (i, k) in kept.iter().enumerate() {
        common::write_synced(&m.p(&format!("kept{i}")), k);
    }
    // Fill the disk: the writer must see ENOSPC, not EIO.
    let mut f = fs::File::create(m.p("filler")).unwrap();
    let chunk = pattern(99, 1 << 20);
    let err = loop {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_all()) {
            break e;
        }
    };
    assert_eq!(err.raw_os_error(), Some(28), "{err}");
    drop(f);
    // More small files fail cleanly too, and none of it touches what is already stored.
    for i in 0..20 {
        let _ = fs::write(m.p(&format!("small{i}")), pattern(i, 50_000));
    }
    for (i, k) in kept.iter().enumerate() {
        assert_eq!(&fs::read(m.p(&format!("kept{i}"))).unwrap(), k);
    }
    // Free the space: the volume is consistent and everything written before is readable.
    fs::remove_file(m.p("filler")).unwrap();
    for i in 0..20 {
        let _ = fs::remove_file(m.p(&format!("small{i}")));
    }
    // Space comes back once the daemon has closed the deleted data files (its group commit
    // drops them within moments).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while nix::sys::statvfs::statvfs(&small).unwrap().blocks_available() * 4096 < 4 << 20 {
        assert!(std::time::Instant::now() < deadline, "the space of deleted files never came back");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    common::write_synced(&m.p("after"), b"space again");
    m.unmount();
    let o = m.run(&["fsck".as_ref(), m.cipher.as_os_str(), "--passfile".as_ref(), m.passfile.as_os_str()]);
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    m.mount();
    for (i, k) in kept.iter().enumerate() {
        assert_eq!(&fs::read(m.p(&format!("kept{i}"))).unwrap(), k);
    }
    assert_eq!(fs::read(m.p("after")).unwrap(), b"space again");
}
