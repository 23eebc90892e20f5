//! KEK generations (docs/SECURITY.md, "Backing storage you do not trust"): every
//! `rotate --kek` moves the KEK to the next generation, bound into the header and the KMS
//! context; a host that has seen a generation refuses an older header (a KEK that was
//! replaced, perhaps leaked, is never accepted again), and a generation cannot be edited.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use envelopefs::format::{CipherKind, VolumeHeader, FEATURE_KEK_GENERATION};
use envelopefs::fs::Volume;

fn kms(dir: &Path) -> envelopefs::kms::Audited {
    let header = Volume::read_header(dir).unwrap();
    envelopefs::kms::open(&header.kms_uri, dir, &pass()).unwrap()
}

fn with_file() -> (tempfile::TempDir, PathBuf) {
    common::own_state_dir();
    let (tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    let f = vol.create(Path::new("secret"), 0o600).unwrap();
    f.write_at(0, b"the first version").unwrap();
    f.close().unwrap();
    (tmp, dir)
}

#[test]
fn each_rotation_moves_the_kek_to_the_next_generation() {
    let (_tmp, dir) = with_file();
    let h = Volume::read_header(&dir).unwrap();
    assert_eq!((h.kek_generation, h.features & FEATURE_KEK_GENERATION != 0), (1, true), "init makes generation 1");
    for want in 2..=3 {
        reopen(&dir).rotate_kek(&kms(&dir), &mut |_, _, _| {}).unwrap();
        assert_eq!(Volume::read_header(&dir).unwrap().kek_generation, want);
    }
    let anchor = envelopefs::anchor::path(&h.volume_id).unwrap();
    assert!(anchor.starts_with(common::own_state_dir()));
    let text = fs::read_to_string(anchor).unwrap();
    assert!(text.starts_with("kek-generation 3\n"), "{text}");
}

#[test]
fn a_whole_volume_put_back_from_before_a_rotation_is_refused_on_this_host() {
    let (tmp, dir) = with_file();
    let old = tmp.path().join("old-copy");
    copy_tree(&dir, &old);
    reopen(&dir).rotate_kek(&kms(&dir), &mut |_, _, _| {}).unwrap();
    // The attacker puts the whole CIPHERDIR back as it was (header, store and data agree):
    // its KEK, generation 1, was replaced by generation 2.
    fs::remove_dir_all(&dir).unwrap();
    copy_tree(&old, &dir);
    let err = Volume::open(&dir, &pass()).expect_err("an older header was accepted");
    let text = err.to_string();
    assert!(matches!(err, envelopefs::Error::Integrity { .. }), "{text}");
    assert!(text.contains("generation 1") && text.contains("generation 2"), "{text}");
    assert!(text.contains("envelopefs.conf") && text.contains("anchors"), "names the header and the anchor: {text}");
    // So does every other way in: a mount, read-only too.
    let o = common::mount::evfs(&[
        "fsck".as_ref(),
        dir.as_os_str(),
        "--passfile".as_ref(),
        write_pass(tmp.path()).as_os_str(),
    ]);
    assert!(!o.status.success(), "fsck accepted the older header");
    assert!(String::from_utf8_lossy(&o.stderr).contains("generation"), "{}", String::from_utf8_lossy(&o.stderr));
    // The operator who restored it on purpose removes the anchor, as the error says.
    let id = Volume::read_header(&dir).unwrap().volume_id;
    fs::remove_file(envelopefs::anchor::path(&id).unwrap()).unwrap();
    let vol = reopen(&dir);
    let f = vol.open_file(Path::new("secret"), false).unwrap();
    let mut buf = vec![0u8; 17];
    f.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, b"the first version");
}

#[test]
fn a_generation_edited_in_the_header_does_not_open() {
    let (_tmp, dir) = with_file();
    reopen(&dir).rotate_kek(&kms(&dir), &mut |_, _, _| {}).unwrap();
    let path = dir.join("envelopefs.conf");
    let original = fs::read(&path).unwrap();
    let h = VolumeHeader::decode(&original).unwrap();
    for forged in [h.kek_generation + 1, h.kek_generation - 1] {
        let mut edited = h.clone();
        edited.kek_generation = forged;
        fs::write(&path, edited.encode()).unwrap();
        let err = Volume::open(&dir, &pass()).expect_err("an edited generation was accepted");
        assert!(matches!(err, envelopefs::Error::Integrity { .. }), "generation {forged}: {err}");
    }
    fs::write(&path, &original).unwrap();
    reopen(&dir);
}

fn write_pass(dir: &Path) -> PathBuf {
    let p = dir.join("passfile");
    fs::write(&p, format!("{PASS}\n")).unwrap();
    p
}

/// A volume made before generations (a fixture: header bit 8 clear, generation 0): its first
/// rotation goes to generation 2, is anchored, and the volume as it was is refused after it.
#[test]
fn the_first_rotation_of_an_older_volume_is_anchored_too() {
    common::own_state_dir();
    let tmp = scratch();
    let dir = tmp.path().join("vol");
    copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-gcm-siv"), &dir);
    let pass = envelopefs::secret::Passphrase::new("envelopefs fixture v1").unwrap();
    let h = Volume::read_header(&dir).unwrap();
    assert_eq!((h.kek_generation, h.features & FEATURE_KEK_GENERATION), (0, 0), "the fixture predates generations");
    drop(Volume::open(&dir, &pass).unwrap()); // its upgrades, at this first writable open
    let old = tmp.path().join("old-copy");
    copy_tree(&dir, &old);
    let k = envelopefs::kms::open(&h.kms_uri, &dir, &pass).unwrap();
    Volume::open(&dir, &pass).unwrap().rotate_kek(&k, &mut |_, _, _| {}).unwrap();
    let now = Volume::read_header(&dir).unwrap();
    assert_eq!((now.kek_generation, now.features & FEATURE_KEK_GENERATION != 0), (2, true));
    fs::remove_dir_all(&dir).unwrap();
    copy_tree(&old, &dir);
    let err = Volume::open(&dir, &pass).expect_err("the volume as it was before its first rotation was accepted");
    assert!(err.to_string().contains("generation 0"), "{err}");
}
