//! Crypto-shredding: after `shred --volume` nothing decrypts, even with the passphrase; after
//! `shred --file` the file's wrapped DEKs are gone and the KEK that wrapped them too.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use envelopefs::format::{CipherKind, VolumeHeader};
use envelopefs::fs::Volume;
use envelopefs::Error;

fn evfs(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_envelopefs")).args(args).current_dir(dir).stdin(Stdio::null()).output().unwrap()
}

/// A volume at `<tmp>/vol` with two files, and its passphrase file.
fn volume(kms: Option<String>) -> (tempfile::TempDir, PathBuf) {
    let tmp = scratch();
    let dir = tmp.path().join("vol");
    let mut o = opts(CipherKind::Aes256GcmSiv, 16);
    o.kms_uri = kms;
    Volume::init(&dir, &o, &pass()).unwrap();
    let vol = Volume::open(&dir, &pass()).unwrap();
    for (name, seed) in [("keep", 1), ("gone", 2)] {
        let f = vol.create(Path::new(name), 0o600).unwrap();
        f.write_at(0, &pattern(seed, 300_000)).unwrap();
        f.close().unwrap();
    }
    fs::write(tmp.path().join("pass"), format!("{PASS}\n")).unwrap();
    (tmp, dir)
}

/// Clears the "shredded" flag in a copy's header, as an attacker would.
fn unflag(dir: &Path) {
    let conf = dir.join("envelopefs.conf");
    let mut h = VolumeHeader::decode(&fs::read(&conf).unwrap()).unwrap();
    h.features = 0;
    fs::write(&conf, h.encode()).unwrap();
}

#[test]
fn shredded_volume_cannot_be_opened_even_with_the_passphrase() {
    let (tmp, dir) = volume(None);
    let o = evfs(&["shred", "vol", "--volume"], tmp.path());
    assert_eq!(o.status.code(), Some(1), "no --yes without a terminal");
    assert!(Volume::open(&dir, &pass()).is_ok(), "an unconfirmed shred changes nothing");
    let anchor = envelopefs::anchor::path(&Volume::read_header(&dir).unwrap().volume_id).unwrap();
    assert!(anchor.exists(), "this host anchors the (format-2) volume");
    let o = evfs(&["shred", "vol", "--volume", "--yes"], tmp.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(matches!(Volume::open(&dir, &pass()), Err(Error::Shredded(_))));
    assert!(!dir.join("keystore").exists());
    // A shred needs no passphrase, so nothing vouches for the volume id the header names:
    // the host's anchor of that id stays (an HSM or KMS root vouches: kms_backends).
    assert!(anchor.exists(), "a header's volume id is not taken on its word");

    let copy = tmp.path().join("copy");
    copy_tree(&dir, &copy);
    unflag(&copy);
    let err = Volume::open(&copy, &pass()).unwrap_err();
    assert!(!matches!(err, Error::Shredded(_)), "the flag is gone, yet: {err}");
    let o = evfs(&["mount", "vol", "mnt", "--passfile", "pass"], tmp.path());
    assert_eq!(o.status.code(), Some(22));
}

#[test]
fn shredding_with_a_shared_root_destroys_the_volume_keys_but_keeps_the_root() {
    let tmp0 = scratch();
    let shared = tmp0.path().join("shared-keystore");
    // The operator trusts the shared keystore (outside CIPHERDIR, so it must be named).
    std::env::set_var(envelopefs::kms::ROOTS_ENV, format!("local:{}", shared.display()));
    let (tmp, dir) = volume(Some(format!("local:{}", shared.display())));
    let o = evfs(&["shred", "vol", "--volume", "--yes"], tmp.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(shared.exists(), "a shared root is not this volume's to destroy");
    let copy = tmp.path().join("copy");
    copy_tree(&dir, &copy);
    unflag(&copy);
    let err = Volume::open(&copy, &pass()).unwrap_err();
    assert!(matches!(err, Error::Integrity { .. }), "root and passphrase present, KEK destroyed: {err}");
}

#[test]
fn shred_file_deletes_its_wrapped_deks_and_rotates_the_kek() {
    let (tmp, dir) = volume(None);
    let vol = Volume::open(&dir, &pass()).unwrap();
    let id = vol.open_file(Path::new("gone"), false).unwrap().file_id();
    let (_, extents) = vol.store().load(&id).unwrap().unwrap();
    assert_eq!(extents.len(), 5);
    let old_kek = vol.keys().kek_id().to_vec();
    drop(vol);
    let o = evfs(&["shred", "vol", "--file", "gone", "--yes", "--passfile", "pass"], tmp.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut everything = Vec::new();
    for f in all_files(&dir) {
        everything.extend(fs::read(&f).unwrap());
    }
    for e in &extents {
        assert!(!contains(&everything, &e.wrapped), "a wrapped DEK of the shredded file survived");
    }
    assert!(!contains(&everything, &old_kek), "the KEK that wrapped them is gone too");
    let vol = Volume::open(&dir, &pass()).unwrap();
    assert!(matches!(vol.open_file(Path::new("gone"), false), Err(Error::NotFound(_))));
    let mut back = vec![0u8; 300_000];
    vol.open_file(Path::new("keep"), false).unwrap().read_at(0, &mut back).unwrap();
    assert!(back == pattern(1, 300_000));
}

#[test]
fn rm_through_the_mount_leaves_no_trace_of_the_wrapped_deks() {
    let mut m = common::mount::MountFixture::new(&["--extent-size", "64K"]);
    fs::write(m.p("keep"), pattern(1, 500_000)).unwrap();
    fs::write(m.p("victim"), pattern(2, 500_000)).unwrap();
    let victim = fs::read_dir(m.cipher.join("data")).unwrap().count(); // .dirid + 2 files
    assert_eq!(victim, 3);
    // Every wrapped DEK, read from the store while mounted.
    let before = wait_for_deks(&m.cipher, 16);
    assert_eq!(before.len(), 16);
    fs::remove_file(m.p("victim")).unwrap();
    m.unmount(); // closing the store checkpoints its WAL
    let wal = fs::metadata(m.cipher.join("meta.db-wal")).map(|md| md.len()).unwrap_or(0);
    assert_eq!(wal, 0, "the daemon must drop the volume (keys, store) before it exits");
    let left = wrapped_deks(&m.cipher);
    assert_eq!(left.len(), 8, "only the kept file's DEKs remain");
    let gone: Vec<&Vec<u8>> = before.iter().filter(|w| !left.contains(w)).collect();
    assert_eq!(gone.len(), 8);
    for f in all_files(&m.cipher) {
        let bytes = fs::read(&f).unwrap();
        for w in &gone {
            assert!(!contains(&bytes, w), "{} still holds a wrapped DEK of the removed file", f.display());
        }
    }
}

#[test]
fn shred_works_on_a_mounted_volume() {
    use common::mount::{evfs as run, ok, MountFixture};
    let mut m = MountFixture::new(&["--extent-size", "64K"]);
    fs::write(m.p("keep"), pattern(1, 200_000)).unwrap();
    fs::write(m.p("gone"), pattern(2, 200_000)).unwrap();
    let kek = |m: &MountFixture| {
        let o = run(&["status".as_ref(), m.mnt.as_os_str(), "--json".as_ref()]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["kek_id"].as_str().unwrap().to_string()
    };
    let old_kek = kek(&m);
    let o = run(&["shred".as_ref(), m.cipher.as_os_str(), "--file".as_ref(), "gone".as_ref(), "--yes".as_ref()]);
    ok(&o);
    assert!(!m.p("gone").exists());
    assert_ne!(kek(&m), old_kek, "the KEK was rotated while mounted");
    assert_eq!(fs::read(m.p("keep")).unwrap(), pattern(1, 200_000));

    let o = run(&["shred".as_ref(), m.cipher.as_os_str(), "--volume".as_ref(), "--yes".as_ref()]);
    ok(&o);
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(m.mnt.canonicalize().unwrap().to_str().unwrap()), "shred unmounts the volume");
    m.disown();
    let copy = m.tmp.path().join("copy");
    copy_tree(&m.cipher, &copy);
    unflag(&copy);
    fs::write(m.tmp.path().join("p"), "mount test passphrase\n").unwrap();
    let o = evfs(&["mount", "copy", "mnt", "--passfile", "p"], m.tmp.path());
    assert!(!o.status.success(), "a copy taken after the shred must not open");
    assert!(String::from_utf8_lossy(&o.stderr).contains("keystore"), "{}", String::from_utf8_lossy(&o.stderr));
}
