//! `rotate --kek` replaces the name key and every key derived from it (docs/SECURITY.md,
//! "Backing storage you do not trust"): after it, the old keys (what an old header plus the
//! root gives) decrypt no name, long name, symlink target or attribute name in CIPHERDIR, and
//! match no entry binding, record MAC or file-set tag; everything still reads the same
//! through the new keys, and a rotation cut short while names move finishes at the next open.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use envelopefs::crypto::NamePurpose;
use envelopefs::format::{Binding, CipherKind, ObjectHeader, ObjectKind, VolumeHeader};
use envelopefs::fs::{EntryKind, Volume, XattrMode};
use envelopefs::keys::NameKeys;
use sha2::{Digest, Sha256};

fn kms(dir: &Path) -> envelopefs::kms::Audited {
    let header = Volume::read_header(dir).unwrap();
    envelopefs::kms::open(&header.kms_uri, dir, &pass()).unwrap()
}

/// A tree with every kind of thing the name key keeps: nested directories, data, an empty
/// file, a long name, a symlink, a hard link, attributes on a file and a directory.
fn build(vol: &Volume) {
    vol.mkdir(Path::new("d"), 0o755).unwrap();
    vol.mkdir(Path::new("d/e"), 0o700).unwrap();
    for (p, seed, len) in [("top", 1, 10_000), ("d/inner", 2, 5_000), ("d/e/deep", 3, 0)] {
        let h = vol.create(Path::new(p), 0o644).unwrap();
        h.write_at(0, &pattern(seed, len)).unwrap();
        h.close().unwrap();
    }
    let long = format!("d/{}", "x".repeat(200));
    let h = vol.create(Path::new(&long), 0o600).unwrap();
    h.write_at(0, b"long").unwrap();
    h.close().unwrap();
    vol.symlink(Path::new("d/link"), OsStr::new("../top")).unwrap();
    vol.link(Path::new("d/inner"), Path::new("d/e/hard")).unwrap();
    vol.set_xattr(Path::new("top"), OsStr::new("user.colour"), b"blue", XattrMode::Set).unwrap();
    vol.set_xattr(Path::new("d"), OsStr::new("user.kind"), b"dir", XattrMode::Set).unwrap();
}

/// Everything the tree shows: kind, contents or target, and attributes, by path.
fn snapshot(vol: &Volume) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        for e in vol.readdir(&dir).unwrap() {
            let p = dir.join(&e.name);
            let shown = match e.kind {
                EntryKind::Directory => {
                    stack.push(p.clone());
                    "dir".to_string()
                }
                EntryKind::Symlink => format!("link {:?}", vol.readlink(&p).unwrap()),
                _ => {
                    let f = vol.open_file(&p, false).unwrap();
                    let mut buf = vec![0u8; f.len() as usize];
                    f.read_at(0, &mut buf).unwrap();
                    format!("file {}", envelopefs::format::hex(&Sha256::digest(&buf)))
                }
            };
            let mut xattrs = Vec::new();
            if e.kind != EntryKind::Symlink {
                for n in vol.list_xattrs(&p).unwrap() {
                    xattrs.push(format!("{n:?}={:?}", vol.get_xattr(&p, &n).unwrap()));
                }
            }
            out.insert(p.display().to_string(), format!("{shown} {xattrs:?}"));
        }
    }
    out
}

/// What `keys` still opens in CIPHERDIR `dir`, by kind.
#[derive(Debug, Default, PartialEq)]
struct Opened {
    names: usize,
    long_names: usize,
    targets: usize,
    bindings: usize,
    xattr_names: usize,
    records: usize,
    file_set: usize,
}

fn header_at(path: &Path) -> ObjectHeader {
    ObjectHeader::decode(&fs::read(path).unwrap()[..32]).unwrap()
}

fn binding_msg(h: &ObjectHeader, entry: Option<(&[u8; 16], &[u8])>) -> Vec<u8> {
    let mut msg = vec![if h.kind == ObjectKind::File { b'F' } else { b'D' }];
    msg.extend_from_slice(&h.id);
    match entry {
        Some((dir, name)) => {
            msg.push(1);
            msg.extend_from_slice(dir);
            msg.extend_from_slice(&(name.len() as u16).to_le_bytes());
            msg.extend_from_slice(name);
        }
        None => msg.push(2),
    }
    if h.xattrs {
        msg.push(b'X');
    }
    msg
}

fn bound_under(keys: &NameKeys, h: &ObjectHeader, entry: (&[u8; 16], &[u8])) -> bool {
    match h.binding {
        Binding::Entry(mac) => mac == keys.entry_mac(&binding_msg(h, Some(entry))),
        Binding::Shared(mac) => mac == keys.entry_mac(&binding_msg(h, None)),
        Binding::None => false,
    }
}

fn opened_by(keys: &NameKeys, dir: &Path) -> Opened {
    let mut o = Opened::default();
    let db = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    let data = dir.join("data");
    let root = header_at(&data.join(".dirid"));
    o.bindings += bound_under(keys, &root, (&[0; 16], b"")) as usize;
    let mut stack = vec![(data, root.id)];
    while let Some((d, id)) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            let b = name.as_bytes();
            if b[0] == b'.' {
                continue;
            }
            let sealed = if b[0] == b'~' {
                let hash = URL_SAFE_NO_PAD.decode(&b[1..]).unwrap();
                let s: Vec<u8> = db
                    .query_row("SELECT name FROM long_names WHERE dir_id = ?1 AND hash = ?2", (&id[..], &hash), |r| {
                        r.get(0)
                    })
                    .unwrap();
                o.long_names += keys.decrypt(NamePurpose::Entry, &id, &s).is_ok() as usize;
                s
            } else {
                URL_SAFE_NO_PAD.decode(b).unwrap()
            };
            o.names += keys.decrypt(NamePurpose::Entry, &id, &sealed).is_ok() as usize;
            let t = e.file_type().unwrap();
            if t.is_symlink() {
                let stored = fs::read_link(e.path()).unwrap();
                let sealed = URL_SAFE_NO_PAD.decode(stored.as_os_str().as_bytes()).unwrap();
                let ctx: [u8; 16] = Sha256::new().chain_update(b"EVFSLNK1").chain_update(id).chain_update(b).finalize()
                    [..16]
                    .try_into()
                    .unwrap();
                o.targets += keys.open_random(NamePurpose::SymlinkTarget, &ctx, &sealed).is_ok() as usize;
            } else if t.is_dir() {
                let h = header_at(&e.path().join(".dirid"));
                o.bindings += bound_under(keys, &h, (&id, b)) as usize;
                stack.push((e.path(), h.id));
            } else {
                o.bindings += bound_under(keys, &header_at(&e.path()), (&id, b)) as usize;
            }
        }
    }
    let mut s = db.prepare("SELECT object_id, name FROM xattrs WHERE name != x'00'").unwrap();
    for row in s.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))).unwrap() {
        let (object, name) = row.unwrap();
        let object: [u8; 16] = object.try_into().unwrap();
        o.xattr_names += keys.decrypt(NamePurpose::XattrName, &object, &name).is_ok() as usize;
    }
    let mut s = db.prepare("SELECT id, size, cipher, mac FROM files").unwrap();
    let mut digest = [0u8; 16];
    for row in s
        .query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, u8>(2)?, r.get::<_, Vec<u8>>(3)?))
        })
        .unwrap()
    {
        let (id, size, cipher, mac) = row.unwrap();
        let id: [u8; 16] = id.try_into().unwrap();
        let mut msg = (size as u64).to_le_bytes().to_vec();
        msg.push(cipher);
        let mut e = db.prepare("SELECT idx, written FROM extents WHERE file_id = ?1 ORDER BY idx").unwrap();
        for x in e.query_map([&id[..]], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))).unwrap() {
            let (idx, written) = x.unwrap();
            msg.extend_from_slice(&(idx as u64).to_le_bytes());
            msg.extend_from_slice(&(written.len() as u32).to_le_bytes());
            msg.extend_from_slice(&written);
        }
        o.records += (keys.mac(NamePurpose::Record, &id, &msg)[..] == mac[..]) as usize;
        // Format 2 (these volumes): the set is versioned, each mark covers the record's MAC.
        digest.iter_mut().zip(keys.file_set().mark_version(&id, &mac)).for_each(|(d, m)| *d ^= m);
    }
    let value: Vec<u8> = db.query_row("SELECT value FROM meta WHERE key = 'files.set'", [], |r| r.get(0)).unwrap();
    let changes = u64::from_le_bytes(value[..8].try_into().unwrap());
    o.file_set += (keys.file_set().tag_version(&digest, changes)[..] == value[8..]) as usize;
    o
}

#[test]
fn after_rotate_kek_the_old_name_keys_open_nothing_and_the_new_ones_everything() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    build(&vol);
    let before = snapshot(&vol);
    let old = vol.keys().names();
    drop(vol);
    // The counter finds every kind under the keys in use (so its zeros below mean something):
    // 8 names (top, d, e, deep, inner, the long one, link, hard), 8 bound headers met (the
    // root, 2 directories, 4 data files, one of them twice by its 2 links), 4 file records.
    let all = opened_by(&old, &dir);
    assert_eq!(
        all,
        Opened { names: 8, long_names: 1, targets: 1, bindings: 8, xattr_names: 2, records: 4, file_set: 1 },
        "before the rotation"
    );
    let vol = reopen(&dir);
    let old_header = fs::read(dir.join("envelopefs.conf")).unwrap();
    vol.rotate_kek(&kms(&dir), &mut |_, _, _| {}).unwrap();
    assert_eq!(opened_by(&old, &dir), Opened::default(), "the old name keys still open something");
    assert_eq!(opened_by(&vol.keys().names(), &dir), all, "the new name keys open everything");
    assert_eq!(snapshot(&vol), before, "the tree reads the same through the rotated volume");
    drop(vol);
    let vol = reopen(&dir);
    assert_eq!(snapshot(&vol), before, "and after a reopen");
    let report = vol.fsck(false).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    drop(vol);
    // The old header itself (its KEK, which the root still unwraps) opens nothing either:
    // the store's records and the root's binding are under the new keys.
    fs::write(dir.join("envelopefs.conf"), &old_header).unwrap();
    let err = Volume::open(&dir, &pass()).expect_err("the old header opened the rotated volume");
    assert!(matches!(err, envelopefs::Error::Integrity { .. }), "{err}");
}

#[test]
fn a_rotation_cut_while_names_move_is_finished_by_the_next_open() {
    let mut cut_somewhere = 0;
    for cut in [1u64, 2, 4, 6] {
        let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
        build(&vol);
        let before = snapshot(&vol);
        let old = vol.keys().names();
        drop(vol);
        if rotate_cut_at(&dir, cut).is_err() {
            cut_somewhere += 1;
            // Half the names are under each key now: the next open finishes the rotation.
            let vol = reopen(&dir);
            assert!(vol.finished_rotation_at_open(), "cut {cut}: the open did not finish the rotation");
            assert_eq!(snapshot(&vol), before, "cut {cut}");
            let report = vol.fsck(false).unwrap();
            assert!(report.problems.is_empty(), "cut {cut}: {:?}", report.problems);
        }
        assert_eq!(opened_by(&old, &dir), Opened::default(), "cut {cut}: the old name keys still open something");
    }
    assert!(cut_somewhere >= 3, "the cuts fell outside the name move; the test proves nothing");
}

/// `rotate --kek` of the volume in `dir`, its `n`th name move cut (see [`CutAt`]).
fn rotate_cut_at(dir: &Path, n: u64) -> envelopefs::Result<VolumeHeader> {
    let header = Volume::read_header(dir).unwrap();
    let vol = Volume::open_with_storage(dir, header, &kms(dir), std::sync::Arc::new(CutAt::new(n))).unwrap();
    vol.rotate_kek(&kms(dir), &mut |_, _, _| {})
}

/// Storage whose `n`th name move fails (the power is cut there for the rotation; the
/// rename does not happen).
struct CutAt {
    left: std::sync::atomic::AtomicI64,
}

impl CutAt {
    fn new(n: u64) -> Self {
        CutAt { left: (n as i64).into() }
    }
}

impl envelopefs::fs::Storage for CutAt {
    fn data_file(&self, file: fs::File, _path: &Path) -> Box<dyn envelopefs::fs::DataFile> {
        Box::new(file)
    }

    fn sync_point(&self, point: envelopefs::fs::SyncPoint) -> std::io::Result<()> {
        if point == envelopefs::fs::SyncPoint::NameMoved
            && self.left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) <= 1
        {
            return Err(std::io::Error::other("power cut"));
        }
        Ok(())
    }
}

/// A planted entry whose name authenticates under neither key, and one that is no name of the
/// volume at all: the rotation moves everything else, leaves both as found and names them;
/// for the first, `rotate --kek` exits non-zero after finishing.
#[test]
fn what_authenticates_under_neither_key_is_left_as_found_and_reported() {
    let (tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    build(&vol);
    let before = snapshot(&vol);
    drop(vol);
    let planted = dir.join("data").join(URL_SAFE_NO_PAD.encode([7u8; 40]));
    fs::write(&planted, b"not ours").unwrap();
    let dotted = dir.join("data").join(".hidden-by-someone");
    fs::write(&dotted, b"not ours either").unwrap();
    let passfile = tmp.path().join("pass");
    fs::write(&passfile, format!("{PASS}\n")).unwrap();
    let o = common::mount::evfs(&[
        "rotate".as_ref(),
        dir.as_os_str(),
        "--kek".as_ref(),
        "--passfile".as_ref(),
        passfile.as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a rotation that left something said nothing: {err}");
    // The planted name counts; the dot file (a sync tool's temporary?) holds nothing under
    // our keys: it is logged, not counted.
    assert!(err.contains("the rotation is done") && err.contains("1 item(s)"), "{err}");
    assert!(err.contains(&planted.file_name().unwrap().to_string_lossy().to_string()), "{err}");
    assert!(err.contains("not a name of this volume") && err.contains(".hidden-by-someone"), "{err}");
    assert_eq!(fs::read(&planted).unwrap(), b"not ours", "left as found");
    assert_eq!(fs::read(&dotted).unwrap(), b"not ours either", "left as found");
    let vol = reopen(&dir);
    fs::remove_file(&planted).unwrap();
    assert_eq!(snapshot(&vol), before, "everything else moved and reads the same");
}

/// A set of files changed behind the volume's back (a file removed whole) is not re-tagged
/// as valid by a rotation: the rotation refuses until `fsck --repair` accepts the set.
#[test]
fn a_rotation_does_not_launder_a_tampered_set_of_files() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    build(&vol);
    let id = {
        let f = vol.open_file(Path::new("top"), false).unwrap();
        f.file_id()
    };
    let backing = vol.backing_path(Path::new("top")).unwrap();
    drop(vol);
    // The file removed whole: its data file, its hard-link-free entry and its rows.
    fs::remove_file(&backing).unwrap();
    let db = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    for t in [
        "DELETE FROM extents WHERE file_id = ?1",
        "DELETE FROM xattrs WHERE object_id = ?1",
        "DELETE FROM files WHERE id = ?1",
    ] {
        db.execute(t, [&id[..]]).unwrap();
    }
    drop(db);
    let vol = reopen(&dir);
    let err = vol.rotate_kek(&kms(&dir), &mut |_, _, _| {}).expect_err("the rotation re-tagged a tampered set");
    assert!(err.to_string().contains("fsck"), "{err}");
    assert!(vol.files_removed().is_err());
}

/// The row of a rotation's new name key deleted while the rotation is under way: the volume
/// refuses to resume it (it would keep the old name key unseen), naming `meta.db`.
#[test]
fn a_rotation_that_lost_its_new_name_key_row_is_refused() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    build(&vol);
    drop(vol);
    rotate_cut_at(&dir, 1).expect_err("the cut did not happen");
    let db = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    assert_eq!(db.execute("DELETE FROM meta WHERE key = 'rotation.wrapped_name_key'", []).unwrap(), 1);
    drop(db);
    let err = Volume::open(&dir, &pass()).expect_err("a rotation without its name key was resumed");
    assert!(matches!(err, envelopefs::Error::Integrity { .. }), "{err}");
    assert!(err.to_string().contains("meta.db") && err.to_string().contains("name key"), "{err}");
}

/// A directory whose id file was deleted (or made unreadable) is one entry's problem, not the
/// volume's: the rotation leaves it as found, reports it, and finishes; the volume opens.
#[test]
fn a_directory_without_its_id_file_is_left_and_the_rotation_finishes() {
    let (_tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    build(&vol);
    let e = vol.backing_path(Path::new("d/e")).unwrap();
    drop(vol);
    fs::remove_file(e.join(".dirid")).unwrap();
    let vol = reopen(&dir);
    vol.rotate_kek(&kms(&dir), &mut |_, _, _| {}).unwrap();
    let left = vol.rotation_left();
    assert!(left.iter().any(|l| l.contains(&e.file_name().unwrap().to_string_lossy().to_string())), "{left:?}");
    drop(vol);
    let vol = reopen(&dir);
    let f = vol.open_file(Path::new("top"), false).unwrap();
    let mut buf = vec![0u8; 10_000];
    f.read_at(0, &mut buf).unwrap();
    assert!(buf == pattern(1, 10_000));
    assert!(vol.readdir(Path::new("d/e")).is_err(), "still the integrity error it was");
}

/// `shred --volume` in the middle of a rotation removes the rotation's wrapped KEK and its
/// wrapped name key from the store too (docs/SECURITY.md, "Crypto-shredding").
#[test]
fn shredding_a_volume_mid_rotation_removes_the_pending_keys() {
    let (tmp, dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 16);
    build(&vol);
    drop(vol);
    rotate_cut_at(&dir, 2).expect_err("the cut did not happen");
    let rows = || -> i64 {
        let db = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
        db.query_row("SELECT count(*) FROM meta WHERE key LIKE 'rotation.%'", [], |r| r.get(0)).unwrap()
    };
    assert_eq!(rows(), 3, "a rotation under way: its KEK, wrapped KEK and wrapped name key");
    Volume::shred_volume(&dir, &tmp.path().join("no-scratch"), None, false, None).unwrap();
    assert_eq!(rows(), 0, "a pending key survived the shred");
    assert!(matches!(Volume::open(&dir, &pass()), Err(envelopefs::Error::Shredded(_))));
}
