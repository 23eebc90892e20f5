//! Each object's set of extended attributes is sealed (volume feature xattrs-sealed): a row a
//! writer of CIPHERDIR drops, rolls back or adds in `meta.db`, or a whole set deleted, is an
//! integrity error (EIO through the mount), never an absent or older attribute
//! (docs/SECURITY.md, "Backing storage you do not trust").

mod common;

use std::path::Path;

use common::mount::MountFixture;
use common::*;
use envelopefs::format::{CipherKind, FEATURE_ENTRIES_BOUND, FEATURE_XATTRS_SEALED};
use envelopefs::fs::{Volume, XattrMode};
use envelopefs::Error;

type Row = (Vec<u8>, Vec<u8>, Vec<u8>);

fn rows(dir: &Path) -> Vec<Row> {
    let c = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    let mut s = c.prepare("SELECT object_id, name, value FROM xattrs ORDER BY object_id, name").unwrap();
    let out = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(|r| r.unwrap()).collect();
    out
}

fn put_back(dir: &Path, all: &[Row]) {
    let c = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    c.execute("DELETE FROM xattrs", []).unwrap();
    for (o, n, v) in all {
        c.execute("INSERT INTO xattrs (object_id, name, value) VALUES (?1, ?2, ?3)", rusqlite::params![o, n, v])
            .unwrap();
    }
}

fn sql(dir: &Path, q: &str, p: impl rusqlite::Params) -> usize {
    rusqlite::Connection::open(dir.join("meta.db")).unwrap().execute(q, p).unwrap()
}

fn assert_integrity<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    match r {
        Err(Error::Integrity { reason, .. }) => assert!(reason.contains("extended attribute"), "{what}: {reason}"),
        other => panic!("{what}: a tampered attribute set was served: {other:?}"),
    }
}

#[test]
fn dropped_rolled_back_added_or_deleted_attributes_are_integrity_errors() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    vol.create(Path::new("f"), 0o600).unwrap().close().unwrap();
    vol.mkdir(Path::new("d"), 0o700).unwrap();
    let (f, d) = (Path::new("f"), Path::new("d"));
    vol.set_xattr(f, "user.a".as_ref(), b"1", XattrMode::Set).unwrap();
    vol.set_xattr(f, "user.b".as_ref(), b"old", XattrMode::Set).unwrap();
    vol.set_xattr(d, "user.c".as_ref(), b"3", XattrMode::Set).unwrap();
    let before = rows(&dir);
    vol.set_xattr(f, "user.b".as_ref(), b"new", XattrMode::Replace).unwrap();
    let now = rows(&dir);
    drop(vol);
    // f's object has three rows (two attributes and the seal), d's two.
    let f_id = now.iter().map(|r| r.0.clone()).find(|id| now.iter().filter(|r| &r.0 == id).count() == 3).unwrap();

    // A row dropped: user.a then reads as absent, unless the set is sealed.
    let q = "DELETE FROM xattrs WHERE object_id = ?1 AND name = \
             (SELECT min(name) FROM xattrs WHERE object_id = ?1 AND length(name) > 1)";
    assert_eq!(sql(&dir, q, [&f_id]), 1);
    assert_integrity(reopen(&dir).get_xattr(f, "user.a".as_ref()), "a dropped row");
    assert_integrity(reopen(&dir).list_xattrs(f), "a dropped row, listed");
    // A value rolled back to an older sealed copy of itself.
    put_back(&dir, &now);
    let old_b: Vec<&Row> = before.iter().filter(|r| r.0 == f_id && r.1.len() > 1 && !now.contains(r)).collect();
    assert_eq!(old_b.len(), 1, "one row changed");
    sql(
        &dir,
        "UPDATE xattrs SET value = ?3 WHERE object_id = ?1 AND name = ?2",
        [&old_b[0].0, &old_b[0].1, &old_b[0].2],
    );
    assert_integrity(reopen(&dir).get_xattr(f, "user.b".as_ref()), "a rolled-back value");
    // A row added (an attribute of another object pasted in).
    put_back(&dir, &now);
    let d_row = now.iter().find(|r| r.0 != f_id && r.1.len() > 1).unwrap();
    sql(&dir, "INSERT INTO xattrs (object_id, name, value) VALUES (?1, ?2, ?3)", [&f_id, &d_row.1, &d_row.2]);
    assert_integrity(reopen(&dir).get_xattr(f, "user.a".as_ref()), "an added row");
    // The whole set deleted, its seal with it; and a directory's row dropped.
    put_back(&dir, &now);
    sql(&dir, "DELETE FROM xattrs WHERE object_id = ?1", [&f_id]);
    assert_integrity(reopen(&dir).get_xattr(f, "user.a".as_ref()), "a deleted set");
    assert_integrity(reopen(&dir).list_xattrs(f), "a deleted set, listed");
    put_back(&dir, &now);
    sql(&dir, "DELETE FROM xattrs WHERE object_id != ?1 AND length(name) > 1", [&f_id]);
    assert_integrity(reopen(&dir).get_xattr(d, "user.c".as_ref()), "a directory's dropped row");
    // Put back, everything reads as it was; and a set emptied by the user is no error.
    put_back(&dir, &now);
    let vol = reopen(&dir);
    assert_eq!(vol.get_xattr(f, "user.b".as_ref()).unwrap(), b"new");
    assert_eq!(vol.get_xattr(d, "user.c".as_ref()).unwrap(), b"3");
    vol.remove_xattr(d, "user.c".as_ref()).unwrap();
    assert!(vol.list_xattrs(d).unwrap().is_empty());
    drop(vol);
    assert!(matches!(reopen(&dir).get_xattr(d, "user.c".as_ref()), Err(Error::NoAttribute(_))));
    // A set brought back from an older store after its last attribute went: the header
    // says there is none.
    put_back(&dir, &now);
    assert_integrity(reopen(&dir).list_xattrs(d), "a set restored from an older store");
}

#[test]
fn attributes_survive_renames_exchanges_links_and_rekey() {
    let (_tmp, _dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    for (name, value) in [("f", "1"), ("g", "2")] {
        vol.create(Path::new(name), 0o600).unwrap().close().unwrap();
        vol.set_xattr(Path::new(name), "user.v".as_ref(), value.as_bytes(), XattrMode::Set).unwrap();
    }
    vol.mkdir(Path::new("d"), 0o700).unwrap();
    vol.set_xattr(Path::new("d"), "user.v".as_ref(), b"dir", XattrMode::Set).unwrap();
    let get = |p: &str| vol.get_xattr(Path::new(p), "user.v".as_ref()).unwrap();
    vol.rename(Path::new("f"), Path::new("d/f2")).unwrap();
    vol.rename(Path::new("d"), Path::new("d2")).unwrap();
    vol.rename_with(Path::new("d2/f2"), Path::new("g"), envelopefs::fs::RenameMode::Exchange).unwrap();
    vol.link(Path::new("g"), Path::new("g-link")).unwrap();
    vol.rekey(Path::new("d2/f2")).unwrap();
    assert_eq!(
        (get("g"), get("g-link"), get("d2/f2"), get("d2")),
        (b"1".to_vec(), b"1".to_vec(), b"2".to_vec(), b"dir".to_vec())
    );
    assert!(vol.fsck(false).unwrap().is_clean());
}

#[test]
fn a_flag_without_its_set_is_cleared_only_after_a_crash() {
    let mut m = MountFixture::new(&[]);
    let (f, g) = (m.p("f"), m.p("g"));
    std::fs::write(&f, b"x").unwrap();
    std::fs::write(&g, b"y").unwrap();
    let set = "import os, sys\nos.setxattr(sys.argv[1], 'user.k', b'v')\n";
    let list = "import os, sys\ntry:\n    sys.exit(len(os.listxattr(sys.argv[1])))\nexcept OSError as e:\n    sys.exit(100 + e.errno)\n";
    let run = |code: &str, p: &Path| std::process::Command::new("python3").arg("-c").arg(code).arg(p).status().unwrap();
    assert!(run(set, &f).success() && run(set, &g).success());
    let (bf, bg) = {
        m.unmount();
        let vol =
            Volume::open(&m.cipher, &envelopefs::secret::Passphrase::new("mount test passphrase").unwrap()).unwrap();
        (vol.backing_path(Path::new("f")).unwrap(), vol.backing_path(Path::new("g")).unwrap())
    };
    let id_of = |b: &Path| std::fs::read(b).unwrap()[8..24].to_vec();
    // The state a crash leaves between a set's flag and its rows (or after the last row went
    // and before the flag): the header flagged, no rows. After a clean unmount it is someone
    // else's doing: EIO.
    sql(&m.cipher, "DELETE FROM xattrs WHERE object_id = ?1", [id_of(&bf)]);
    m.mount();
    assert_eq!(run(list, &f).code(), Some(105), "listxattr of a flagged file without its set");
    // After a crash (an authentic unclean marker), recovery clears such a flag.
    m.crash();
    sql(&m.cipher, "DELETE FROM xattrs WHERE object_id = ?1", [id_of(&bg)]);
    m.mount();
    assert_eq!(run(list, &g).code(), Some(0), "recovery cleared the flag of a set the crash left unwritten");
}

#[test]
fn through_the_mount_a_dropped_attribute_gives_eio() {
    let mut m = MountFixture::new(&[]);
    std::fs::write(m.p("f"), b"x").unwrap();
    let set = "import os, sys\nos.setxattr(sys.argv[1], 'user.k', b'v')\n";
    let get = "import os, sys\ntry:\n    os.getxattr(sys.argv[1], 'user.k')\nexcept OSError as e:\n    sys.exit(100 + e.errno)\n";
    let f = m.p("f");
    let run = |code: &str| std::process::Command::new("python3").arg("-c").arg(code).arg(&f).status().unwrap();
    assert!(run(set).success());
    assert!(run(get).success());
    m.unmount();
    assert_eq!(sql(&m.cipher, "DELETE FROM xattrs WHERE length(name) > 1", []), 1);
    m.mount();
    assert_eq!(run(get).code(), Some(105), "getxattr of a dropped attribute: EIO");
}

#[test]
fn attribute_sets_of_a_volume_made_before_they_were_sealed_are_sealed_in_place() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256Xts, 16);
    vol.create(Path::new("f"), 0o600).unwrap().close().unwrap();
    vol.set_xattr(Path::new("f"), "user.k".as_ref(), b"kept", XattrMode::Set).unwrap();
    // As the previous build left it: no seal row, unbound headers, both bits clear.
    let backing = vol.backing_path(Path::new("f")).unwrap();
    let mut header = vol.header();
    header.features &= !(FEATURE_XATTRS_SEALED | FEATURE_ENTRIES_BOUND);
    header.wrapped_name_key = vol.keys().seal_name_key(&header).unwrap();
    drop(vol);
    std::fs::write(dir.join("envelopefs.conf"), header.encode()).unwrap();
    for p in [backing.clone(), dir.join("data/.dirid")] {
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[6..8].fill(0);
        bytes[24..32].fill(0);
        std::fs::write(&p, bytes).unwrap();
    }
    assert_eq!(sql(&dir, "DELETE FROM xattrs WHERE length(name) = 1", []), 1);

    let vol = reopen(&dir);
    let features = Volume::read_header(&dir).unwrap().features;
    assert_eq!(features & FEATURE_XATTRS_SEALED, FEATURE_XATTRS_SEALED, "not upgraded");
    assert_eq!(vol.get_xattr(Path::new("f"), "user.k".as_ref()).unwrap(), b"kept");
    drop(vol);
    // Sealed now: the set deleted reads as an integrity error, not as no attributes.
    sql(&dir, "DELETE FROM xattrs", []);
    assert_integrity(reopen(&dir).list_xattrs(Path::new("f")), "a deleted set after the upgrade");
}
