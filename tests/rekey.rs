//! `rotate --rekey`: a file's data re-encrypted under fresh DEKs, everything else kept.

mod common;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use envelopefs::format::CipherKind;
use envelopefs::fs::{Volume, XattrMode};

fn fingerprints(vol: &Volume, name: &str) -> (HashSet<[u8; 32]>, Vec<Vec<u8>>) {
    let id = vol.open_file(Path::new(name), false).unwrap().file_id();
    let (_, extents) = vol.store().load(&id).unwrap().unwrap();
    let fps = extents.iter().map(|e| vol.keys().dek_fingerprint(&id, e.index, &e.wrapped).unwrap()).collect();
    (fps, extents.into_iter().map(|e| e.wrapped).collect())
}

#[test]
fn rekey_replaces_every_dek_and_keeps_content_holes_and_attributes() {
    for cipher in CIPHERS {
        let (_tmp, dir, vol) = new_volume(cipher, 16);
        let f = vol.create(Path::new("leaked"), 0o640).unwrap();
        let head = pattern(1, 200_000);
        f.write_at(0, &head).unwrap();
        f.write_at(1_000_000, b"tail").unwrap();
        f.close().unwrap();
        vol.set_xattr(Path::new("leaked"), OsStr::new("user.tag"), b"keep me", XattrMode::Set).unwrap();
        let backing = vol.backing_path(Path::new("leaked")).unwrap();
        fs::set_permissions(&backing, fs::Permissions::from_mode(0o604)).unwrap();
        let (old_fps, old_wrapped) = fingerprints(&vol, "leaked");
        let old_bytes = fs::read(&backing).unwrap();

        assert_eq!(vol.rekey(Path::new("leaked")).unwrap(), 1_000_004);

        let (new_fps, _) = fingerprints(&vol, "leaked");
        assert!(old_fps.is_disjoint(&new_fps), "{cipher:?}: a DEK survived the rekey");
        assert_ne!(fs::read(&backing).unwrap(), old_bytes);
        assert_eq!(fs::metadata(&backing).unwrap().mode() & 0o7777, 0o604);
        let h = vol.open_file(Path::new("leaked"), false).unwrap();
        let mut back = vec![0u8; 1_000_004];
        h.read_at(0, &mut back).unwrap();
        assert!(back[..200_000] == head[..] && back[1_000_000..] == *b"tail");
        assert!(back[200_000..1_000_000].iter().all(|&b| b == 0));
        assert_eq!(h.seek_hole(0).unwrap(), 200_704, "holes stay holes");
        drop(h);
        assert_eq!(vol.get_xattr(Path::new("leaked"), OsStr::new("user.tag")).unwrap(), b"keep me");
        drop(vol);
        vol_store_lacks(&dir, &old_wrapped);
        assert_eq!(fs::read_dir(dir.join("data")).unwrap().count(), 2, "no temporary file left");
    }
}

fn vol_store_lacks(dir: &Path, wrapped: &[Vec<u8>]) {
    let vol = reopen(dir);
    vol.store().checkpoint().unwrap();
    let db = fs::read(dir.join("meta.db")).unwrap();
    for w in wrapped {
        assert!(!contains(&db, w), "an old wrapped DEK is still in the store");
    }
}

#[test]
fn rekey_refuses_hardlinked_files_and_directories() {
    let (_tmp, _dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    vol.create(Path::new("a"), 0o600).unwrap().close().unwrap();
    vol.link(Path::new("a"), Path::new("b")).unwrap();
    assert!(vol.rekey(Path::new("a")).unwrap_err().to_string().contains("hard links"));
    vol.mkdir(Path::new("d"), 0o700).unwrap();
    assert!(vol.rekey(Path::new("d")).is_err());
}

#[test]
fn rotate_rekey_from_the_command_line() {
    let (tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    let f = vol.create(Path::new("x"), 0o600).unwrap();
    f.write_at(0, &pattern(5, 70_000)).unwrap();
    f.close().unwrap();
    drop(vol);
    fs::write(tmp.path().join("pass"), format!("{PASS}\n")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_envelopefs"))
        .args(["rotate", "vol", "--rekey", "x", "--passfile", "pass"])
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("70000 bytes re-encrypted"));
    let vol = reopen(&dir);
    let mut back = vec![0u8; 70_000];
    vol.open_file(Path::new("x"), false).unwrap().read_at(0, &mut back).unwrap();
    assert!(back == pattern(5, 70_000));
}

#[test]
fn rotate_rekey_while_mounted_refuses_open_files() {
    use common::mount::{evfs, ok, MountFixture};
    let mut m = MountFixture::new(&["--extent-size", "64K"]);
    let data = pattern(9, 400_000);
    fs::write(m.p("leaked"), &data).unwrap();
    let before: HashSet<Vec<u8>> = wait_for_deks(&m.cipher, 7).into_iter().collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    assert_eq!(before.len(), 7);

    let held = fs::File::open(m.p("leaked")).unwrap();
    let o = evfs(&["rotate".as_ref(), m.cipher.as_os_str(), "--rekey".as_ref(), "/leaked".as_ref()]);
    assert_eq!(o.status.code(), Some(19), "an open file is busy: {}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("open"));
    drop(held);
    // FUSE releases the handle a moment after close: busy until then.
    let mut o = evfs(&["rotate".as_ref(), m.cipher.as_os_str(), "--rekey".as_ref(), "/leaked".as_ref()]);
    while o.status.code() == Some(19) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        o = evfs(&["rotate".as_ref(), m.cipher.as_os_str(), "--rekey".as_ref(), "/leaked".as_ref()]);
    }
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("400000 bytes re-encrypted"));
    assert_eq!(fs::read(m.p("leaked")).unwrap(), data, "same content through the mount");
    m.remount();
    assert_eq!(fs::read(m.p("leaked")).unwrap(), data);
    let after: HashSet<Vec<u8>> = wrapped_deks(&m.cipher).into_iter().collect();
    assert_eq!(after.len(), 7);
    assert!(before.is_disjoint(&after), "every wrapped DEK was replaced");
}

/// A closed file's state stays loaded for a reopen (`fs::linger`); a rekey forgets the old
/// one with its record, so the old data file put back at its name is refused as it would be
/// after a remount, never read through the state kept from before.
#[test]
fn a_rekeyed_files_old_data_file_put_back_is_refused_by_the_volume_that_rekeyed_it() {
    for cipher in CIPHERS {
        let (_tmp, _dir, vol) = new_volume(cipher, 16);
        let data = pattern(3, 150_000);
        let f = vol.create(Path::new("secret"), 0o600).unwrap();
        f.write_at(0, &data).unwrap();
        f.close().unwrap();
        let h = vol.open_file(Path::new("secret"), false).unwrap(); // read once: its state is kept
        let mut back = vec![0u8; data.len()];
        h.read_at(0, &mut back).unwrap();
        drop(h);
        assert!(vol.live_stats().unwrap().closed_kept >= 1, "{cipher:?}: the closed file's state is kept");
        let backing = vol.backing_path(Path::new("secret")).unwrap();
        let old = fs::read(&backing).unwrap();

        vol.rekey(Path::new("secret")).unwrap();
        fs::write(&backing, &old).unwrap(); // the old data file copied back over the new one

        match vol.open_file(Path::new("secret"), false) {
            Err(e) => assert!(e.to_string().contains("record"), "{cipher:?}: {e}"),
            Ok(h) => {
                let mut back = vec![0u8; data.len()];
                let read = h.read_at(0, &mut back);
                panic!("{cipher:?}: the rekeyed file's old data file opened (read: {:?})", read.map(|_| back == data));
            }
        }
    }
}
