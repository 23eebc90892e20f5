//! Real roots of trust on real mounts: a SoftHSM2 token (PKCS#11) and a moto server (the AWS
//! KMS API), next to the embedded keystore: the volume life cycle, root rotation, shredding
//! the root, refusals, a KMS that goes away, and one KMS unwrap per mount however much data
//! moves (from `status --json` and from the audit log).

mod common;

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
#[cfg(feature = "aws-kms")]
use std::time::{Duration, Instant};

#[cfg(feature = "aws-kms")]
use common::kms::Moto;
use common::kms::SoftHsm;
use common::mount::{ok, MountFixture};
use common::{copy_tree, pattern};
use envelopefs::format::VolumeHeader;
use serde_json::Value;

fn status(m: &MountFixture, target: &Path) -> Value {
    let o = m.run(&["status".as_ref(), target.as_os_str(), "--json".as_ref()]);
    ok(&o);
    serde_json::from_slice(&o.stdout).unwrap()
}

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn with_audit(mut env: Vec<(String, OsString)>, log: &Path) -> Vec<(String, OsString)> {
    env.push(("ENVELOPEFS_AUDIT_LOG".into(), log.into()));
    env
}

/// The environment of a host of its own reaching `hsm`: its state directory `name` (new and
/// empty: the host has seen no volume).
fn on_host(hsm: &SoftHsm, name: &str) -> Vec<(String, OsString)> {
    let dir = hsm.dir.path().join(name);
    fs::create_dir(&dir).unwrap();
    let mut env = hsm.env();
    env.push(("ENVELOPEFS_STATE_DIR".into(), dir.into()));
    env
}

/// Mounts `m` where the mount must be refused (`what` says what mounted otherwise); returns
/// what it said. A mount that wrongly succeeds is adopted first, so Drop unmounts it.
fn refused_mount(m: &mut MountFixture, what: &str) -> String {
    let o = m.try_mount(&[]);
    if code(&o) == 0 {
        m.adopt();
    }
    assert_ne!(code(&o), 0, "{what}");
    stderr(&o)
}

/// Audit records of process `pid`.
fn audit_records(log: &Path, pid: u64) -> Vec<Value> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("every audit line is JSON"))
        .filter(|v| v["pid"].as_u64() == Some(pid))
        .collect()
}

/// A copy of the shredded volume, its "shredded" flag cleared as an attacker would, does not
/// mount.
fn copy_after_shred_does_not_open(m: &MountFixture, copy: &Path) {
    copy_tree(&m.cipher, copy);
    let conf = copy.join("envelopefs.conf");
    let mut h = VolumeHeader::decode(&fs::read(&conf).unwrap()).unwrap();
    h.features = 0;
    fs::write(&conf, h.encode()).unwrap();
    let o = m.run(&["mount".as_ref(), copy.as_os_str(), m.mnt.as_os_str()]);
    assert_ne!(code(&o), 0, "a copy taken after the shred does not open");
}

/// Writes and reads back 1 GiB through the mount, then checks that the daemon made exactly
/// one KMS key operation, an unwrap, by its status and by the audit log (an HSM root also
/// reads and writes the volume's anchor once, at mount).
fn one_unwrap_for_a_gigabyte(m: &MountFixture, log: &Path) {
    let chunk = pattern(42, 1 << 20);
    let mut f = fs::File::create(m.p("big")).unwrap();
    for i in 0..1024u32 {
        let mut c = chunk.clone();
        c[..4].copy_from_slice(&i.to_le_bytes());
        f.write_all(&c).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let mut f = fs::File::open(m.p("big")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..1024u32 {
        f.read_exact(&mut buf).unwrap();
        assert_eq!(buf[..4], i.to_le_bytes());
        assert!(buf[4..] == chunk[4..], "MiB {i} differs");
    }
    let v = status(m, &m.mnt);
    assert_eq!(v["kms_calls"], serde_json::json!({"wrap": 0, "unwrap": 1, "recheck": 0}), "{}", v["kms_uri"]);
    let mut records = audit_records(log, v["pid"].as_u64().unwrap());
    // An HSM root also keeps the volume's anchor: read before the unwrap, read again and
    // written once the volume is checked.
    if v["kms_uri"].as_str().is_some_and(|u| u.starts_with("pkcs11:")) {
        let anchor_ops: Vec<_> = records.iter().filter(|r| r["purpose"] == "anchor").map(|r| r["op"].clone()).collect();
        assert_eq!(anchor_ops, ["read-anchor", "read-anchor", "write-anchor"], "{records:?}");
        assert!(records.iter().all(|r| r["outcome"] == "ok" && r["volume"] == v["volume_id"]), "{records:?}");
        records.retain(|r| r["purpose"] != "anchor");
    }
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!((records[0]["op"].as_str(), records[0]["outcome"].as_str()), (Some("unwrap"), Some("ok")));
    assert_eq!(records[0]["purpose"], "kek");
    assert_eq!(records[0]["volume"], v["volume_id"]);
    fs::remove_file(m.p("big")).unwrap();
}

#[test]
fn embedded_keystore_mount_makes_one_unwrap_for_a_gigabyte() {
    let tmp = common::scratch();
    let log = tmp.path().join("audit.log");
    let m = MountFixture::new_with(&[], with_audit(Vec::new(), &log));
    one_unwrap_for_a_gigabyte(&m, &log);
    let text = fs::read_to_string(&log).unwrap();
    assert!(!text.contains("mount test passphrase"), "no secret in the audit log");
}

#[test]
fn pkcs11_root_init_mount_rotate_and_shred() {
    let hsm = SoftHsm::new();
    let log = hsm.dir.path().join("audit.log");
    let uri = hsm.uri("vol-root");
    let mut m = MountFixture::new_with(&["--kms", &uri, "--create-key"], with_audit(hsm.env(), &log));
    let data = pattern(1, 300_000);
    fs::write(m.p("f"), &data).unwrap();
    m.remount();
    assert_eq!(fs::read(m.p("f")).unwrap(), data);
    assert_eq!(status(&m, &m.mnt)["kms_uri"], uri.as_str());

    // The label is taken: --create-key refuses to make a second key under it.
    let other = hsm.dir.path().join("other");
    let o = m.run(&["init".as_ref(), other.as_os_str(), "--kms".as_ref(), uri.as_ref(), "--create-key".as_ref()]);
    assert_eq!(code(&o), 15, "{}", stderr(&o));
    assert!(stderr(&o).contains("already has a key"));
    assert!(!other.exists(), "a failed init leaves nothing");

    // rotate --root --destroy-old-root: a new key object; the old one (made for this volume,
    // as its sealed record says, also after a KEK rotation re-sealed it) is destroyed.
    m.unmount();
    ok(&m.run(&["rotate".as_ref(), m.cipher.as_os_str(), "--kek".as_ref()]));
    ok(&m.run(&["rotate".as_ref(), m.cipher.as_os_str(), "--root".as_ref(), "--destroy-old-root".as_ref()]));
    let new_uri = VolumeHeader::decode(&fs::read(m.cipher.join("envelopefs.conf")).unwrap()).unwrap().kms_uri;
    assert!(new_uri.starts_with(&format!("{uri}-r")), "{new_uri}");
    let o = m.run(&["init".as_ref(), other.as_os_str(), "--kms".as_ref(), uri.as_ref()]);
    assert_eq!(code(&o), 15);
    assert!(stderr(&o).contains("has no AES key labelled \"vol-root\""), "{}", stderr(&o));
    m.mount();
    assert_eq!(fs::read(m.p("f")).unwrap(), data);

    // shred --volume (mounted): the wrapped KEK and the key object are destroyed, and the
    // volume's anchors, in the token and on this host (the root vouched for its id; the
    // daemon's close does not write the host's again).
    let id = VolumeHeader::decode(&fs::read(m.cipher.join("envelopefs.conf")).unwrap()).unwrap().volume_id;
    let host_anchor = envelopefs::anchor::path(&id).unwrap();
    assert!(host_anchor.exists(), "this host anchors the volume");
    let o = m.run(&[
        "shred".as_ref(),
        m.cipher.as_os_str(),
        "--volume".as_ref(),
        "--yes".as_ref(),
        "--destroy-root".as_ref(),
    ]);
    ok(&o);
    m.disown();
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("destroyed in token"), "{said}");
    assert!(said.contains("the volume's anchor in its token removed"), "{said}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mounted = || fs::read_to_string("/proc/mounts").unwrap().contains(m.mnt.to_str().unwrap());
    while mounted() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!host_anchor.exists(), "this host's anchor of the shredded volume is gone");
    let o = m.run(&["init".as_ref(), other.as_os_str(), "--kms".as_ref(), new_uri.as_ref()]);
    assert!(stderr(&o).contains("has no AES key labelled"), "the root key object is gone: {}", stderr(&o));
    copy_after_shred_does_not_open(&m, &hsm.dir.path().join("copy"));
}

/// `root.owned` (the HSM key was made for this volume, so shred and rotate may destroy it)
/// is sealed under the volume's KEK: one planted in `meta.db`, bare or copied from the volume
/// that did make the key, is not believed, and a key shared with another volume survives
/// that volume's `rotate --root` and `shred --volume`.
#[test]
fn a_planted_root_owned_record_does_not_get_a_shared_hsm_key_destroyed() {
    let hsm = SoftHsm::new();
    let shared = hsm.uri("shared");
    let mut owner = MountFixture::new_with(&["--kms", &shared, "--create-key"], hsm.env());
    fs::write(owner.p("f"), b"the owner's").unwrap();
    owner.unmount();
    let mut other = MountFixture::new_with(&["--kms", &shared], hsm.env());
    other.unmount();
    let db = |m: &MountFixture| rusqlite::Connection::open(m.cipher.join("meta.db")).unwrap();
    let sealed: Vec<u8> =
        db(&owner).query_row("SELECT value FROM meta WHERE key = 'root.owned'", [], |r| r.get(0)).unwrap();
    assert_ne!(sealed, shared.as_bytes(), "stored sealed, not bare");
    for planted in [shared.as_bytes().to_vec(), sealed] {
        db(&other).execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('root.owned', ?1)", [&planted]).unwrap();
        let copy = other.tmp.path().join("copy");
        let _ = fs::remove_dir_all(&copy);
        copy_tree(&other.cipher, &copy);
        // The operator asks for the root to go: still, only a root the sealed record vouches for.
        let o = other.run(&["rotate".as_ref(), copy.as_os_str(), "--root".as_ref(), "--destroy-old-root".as_ref()]);
        ok(&o);
        let o = other.run(&[
            "shred".as_ref(),
            copy.as_os_str(),
            "--volume".as_ref(),
            "--yes".as_ref(),
            "--destroy-root".as_ref(),
        ]);
        ok(&o);
        let o = other.run(&[
            "shred".as_ref(),
            other.cipher.as_os_str(),
            "--volume".as_ref(),
            "--yes".as_ref(),
            "--destroy-root".as_ref(),
        ]);
        ok(&o);
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("does not record (sealed) that it was made for it"),
            "{o:?}"
        );
        // (the other volume, shredded, is made again for the next round)
        fs::remove_dir_all(&other.cipher).unwrap();
        ok(&other.run(&[
            "init".as_ref(),
            other.cipher.as_os_str(),
            "--kms".as_ref(),
            shared.as_ref(),
            "--passfile".as_ref(),
            other.passfile.as_os_str(),
        ]));
        // The shared key is there: the owner mounts and reads.
        owner.mount();
        assert_eq!(fs::read(owner.p("f")).unwrap(), b"the owner's");
        owner.unmount();
    }
}

#[test]
fn pkcs11_wrong_pin_missing_token_and_module_are_clear_errors() {
    let hsm = SoftHsm::new();
    let mut m = MountFixture::new_with(&["--kms", &hsm.uri("k"), "--create-key"], hsm.env());
    m.unmount();
    let bad = hsm.dir.path().join("bad-pin");
    fs::write(&bad, "9999\n").unwrap();
    let o = m.try_mount(&["--pin-file", bad.to_str().unwrap()]);
    assert_eq!(code(&o), 15);
    assert!(stderr(&o).contains("wrong PIN"), "{}", stderr(&o));

    let x = hsm.dir.path().join("x");
    for (uri, says) in [
        (format!("pkcs11:module={};token=nope;object=k", common::kms::SOFTHSM_MODULE), "no token labelled \"nope\""),
        ("pkcs11:module=/nonexistent/lib.so;token=evfs;object=k".to_string(), "does not exist"),
        ("pkcs11:module=/x.so;token=evfs".to_string(), "needs module=PATH;token=LABEL;object=KEYLABEL"),
    ] {
        let o = m.run(&["init".as_ref(), x.as_os_str(), "--kms".as_ref(), uri.as_ref(), "--create-key".as_ref()]);
        assert_ne!(code(&o), 0);
        assert!(stderr(&o).contains(says), "{uri}: {}", stderr(&o));
        assert_eq!(stderr(&o).trim_end().lines().count(), 1);
    }
    m.mount();
}

#[test]
fn pkcs11_mount_makes_one_unwrap_for_a_gigabyte() {
    let hsm = SoftHsm::new();
    let log = hsm.dir.path().join("audit.log");
    let m = MountFixture::new_with(&["--kms", &hsm.uri("big"), "--create-key"], with_audit(hsm.env(), &log));
    one_unwrap_for_a_gigabyte(&m, &log);
}

/// The ARN an `aws-kms:` volume's header names.
#[cfg(feature = "aws-kms")]
fn header_uri(cipher: &Path) -> String {
    VolumeHeader::decode(&fs::read(cipher.join("envelopefs.conf")).unwrap()).unwrap().kms_uri
}

#[cfg(feature = "aws-kms")]
#[test]
fn aws_kms_root_init_mount_rotate_and_shred() {
    let moto = Moto::start();
    let mut m = MountFixture::new_with(&["--kms", "aws-kms:new", "--create-key"], moto.env());
    let uri = header_uri(&m.cipher);
    assert!(uri.starts_with("aws-kms:arn:aws:kms:us-east-1:"), "{uri}");
    let data = pattern(3, 200_000);
    fs::write(m.p("f"), &data).unwrap();
    m.remount();
    assert_eq!(fs::read(m.p("f")).unwrap(), data);

    // Same key, fresh ciphertext (after an on-demand rotation, under the new material).
    m.unmount();
    let before = VolumeHeader::decode(&fs::read(m.cipher.join("envelopefs.conf")).unwrap()).unwrap().wrapped_kek;
    ok(&m.run(&["rotate".as_ref(), m.cipher.as_os_str(), "--root".as_ref()]));
    let after = VolumeHeader::decode(&fs::read(m.cipher.join("envelopefs.conf")).unwrap()).unwrap();
    assert_eq!(after.kms_uri, uri);
    assert_ne!(after.wrapped_kek, before);
    // To a new key.
    let o = m.run(&[
        "rotate".as_ref(),
        m.cipher.as_os_str(),
        "--root".as_ref(),
        "--to".as_ref(),
        "aws-kms:second".as_ref(),
        "--create-key".as_ref(),
    ]);
    ok(&o);
    let moved = header_uri(&m.cipher);
    assert!(moved.starts_with("aws-kms:arn:") && moved != uri, "{moved}");
    m.mount();
    assert_eq!(fs::read(m.p("f")).unwrap(), data);

    let o = m.run(&[
        "shred".as_ref(),
        m.cipher.as_os_str(),
        "--volume".as_ref(),
        "--yes".as_ref(),
        "--delete-root-after".as_ref(),
        "7".as_ref(),
    ]);
    ok(&o);
    m.disown();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("deletion of KMS key") && out.contains("scheduled"), "{out}");
    // moto still decrypts with a key pending deletion (real AWS refuses): the copy must fail
    // on the volume's side — its wrapped KEK is gone.
    copy_after_shred_does_not_open(&m, &m.tmp.path().join("copy"));
}

#[cfg(feature = "aws-kms")]
#[test]
fn aws_kms_refuses_a_wrong_context_and_a_mount_outlives_the_kms() {
    let mut moto = Moto::start();
    let mut a = MountFixture::new_with(&["--kms", "aws-kms:new", "--create-key"], moto.env());
    let uri = header_uri(&a.cipher);
    let mut b = MountFixture::new_with(&["--kms", &uri], moto.env());
    b.unmount();
    // B's header with A's wrapped KEK: same KMS key, but the context names another volume.
    let a_header = VolumeHeader::decode(&fs::read(a.cipher.join("envelopefs.conf")).unwrap()).unwrap();
    let conf = b.cipher.join("envelopefs.conf");
    let original = fs::read(&conf).unwrap();
    let mut h = VolumeHeader::decode(&original).unwrap();
    h.wrapped_kek = a_header.wrapped_kek.clone();
    fs::write(&conf, h.encode()).unwrap();
    let o = b.try_mount(&[]);
    assert_eq!(code(&o), 14, "{}", stderr(&o));
    assert!(stderr(&o).contains("refused by the KMS") && stderr(&o).contains("InvalidCiphertext"), "{}", stderr(&o));
    fs::write(&conf, &original).unwrap();

    // A key that does not exist: a clear refusal, nothing created.
    let x = a.tmp.path().join("x");
    let o = a.run(&["init".as_ref(), x.as_os_str(), "--kms".as_ref(), "aws-kms:no-such-key".as_ref()]);
    assert_eq!(code(&o), 15, "{}", stderr(&o));
    assert!(stderr(&o).contains("NotFoundException"), "{}", stderr(&o));
    assert!(!x.exists());

    // The KMS goes away after mount: reads and writes go on.
    let data = pattern(4, 3 << 20);
    fs::write(a.p("before"), &data).unwrap();
    moto.stop();
    fs::write(a.p("after"), &data).unwrap();
    assert_eq!(fs::read(a.p("before")).unwrap(), data);
    assert_eq!(fs::read(a.p("after")).unwrap(), data);
    assert_eq!(status(&a, &a.mnt)["kms_calls"]["unwrap"], 1);
    a.unmount();

    // ... and before a mount: a clear error within the bound.
    let started = Instant::now();
    let o = a.try_mount(&["--kms-timeout", "2"]);
    let took = started.elapsed();
    assert_eq!(code(&o), 15, "{}", stderr(&o));
    assert!(stderr(&o).contains("unavailable") && stderr(&o).contains("gave up"), "{}", stderr(&o));
    assert!(took < Duration::from_secs(2 + 30), "bounded by --kms-timeout (took {took:?})");
    assert_eq!(stderr(&o).trim_end().lines().count(), 1);
}

#[cfg(feature = "aws-kms")]
#[test]
fn aws_kms_mount_makes_one_unwrap_for_a_gigabyte() {
    let moto = Moto::start();
    let tmp = common::scratch();
    let log = tmp.path().join("audit.log");
    let m = MountFixture::new_with(&["--kms", "aws-kms:new", "--create-key"], with_audit(moto.env(), &log));
    one_unwrap_for_a_gigabyte(&m, &log);
}

#[test]
fn scratch_key_goes_through_the_hsm_too() {
    let hsm = SoftHsm::new();
    let mut m = MountFixture::new_with(&["--kms", &hsm.uri("s"), "--create-key"], hsm.env());
    m.unmount();
    m.mount_with(&["--scratch", "tmp"]);
    fs::write(m.p("tmp/x"), b"scratch under an HSM root").unwrap();
    let v = status(&m, &m.mnt);
    assert_eq!(v["kms_calls"], serde_json::json!({"wrap": 1, "unwrap": 1, "recheck": 0}));
    ok(&m.run(&["umount".as_ref(), m.mnt.as_os_str(), "--keep-scratch".as_ref()]));
    m.mount();
    assert_eq!(fs::read(m.p("tmp/x")).unwrap(), b"scratch under an HSM root");
    assert_eq!(status(&m, &m.mnt)["kms_calls"]["unwrap"], 2);
}

/// Writes `f` ("before the copy"), copies CIPHERDIR to `<tmp>/old` unmounted, then writes `g`
/// and remounts, so the next open anchors the newer set's count: the copy is older than every
/// anchor. Returns the copy (`m` mounted).
fn older_copy(m: &mut MountFixture) -> PathBuf {
    fs::write(m.p("f"), b"before the copy").unwrap();
    m.unmount();
    let old = m.tmp.path().join("old");
    copy_tree(&m.cipher, &old);
    m.mount();
    fs::write(m.p("g"), b"after the copy").unwrap();
    m.remount();
    old
}

/// The root's token keeps the volume's anchor (FORMAT.md §6): a whole CIPHERDIR put back to a
/// copy older than the last open is refused on a host that never saw the volume (a state
/// directory of its own, with no anchor), naming the root's anchor; `--accept-rollback` takes
/// the copy and moves the token's anchor back, so the next plain mount opens it.
#[test]
fn an_hsm_root_anchors_the_volume_so_another_host_refuses_an_older_copy() {
    let hsm = SoftHsm::new();
    let host = |name: &str| on_host(&hsm, name);
    let log = hsm.dir.path().join("audit.log");
    let mut m = MountFixture::new_with(&["--kms", &hsm.uri("anchored"), "--create-key"], with_audit(host("a"), &log));
    let old = older_copy(&mut m);
    let pid = status(&m, &m.mnt)["pid"].as_u64().unwrap();
    let ops: Vec<String> = audit_records(&log, pid).iter().map(|r| format!("{} {}", r["op"], r["purpose"])).collect();
    assert_eq!(
        ops,
        [
            "\"read-anchor\" \"anchor\"",
            "\"unwrap\" \"kek\"",
            "\"read-anchor\" \"anchor\"",
            "\"write-anchor\" \"anchor\""
        ]
    );
    m.unmount();

    // Host b has never seen the volume: its own anchor cannot tell; the token's does.
    fs::remove_dir_all(&m.cipher).unwrap();
    copy_tree(&old, &m.cipher);
    m.env = with_audit(host("b"), &log);
    let err = refused_mount(&mut m, "an older copy mounted on another host");
    assert!(err.contains("anchor kept by its root") && err.contains("--accept-rollback"), "{err}");
    assert!(err.contains("meta.db"), "names the store: {err}");

    m.mount_with(&["--accept-rollback"]);
    assert_eq!(fs::read(m.p("f")).unwrap(), b"before the copy");
    assert!(!m.p("g").exists());
    m.unmount();
    // A third host, no flag: the token's anchor was moved back to the copy.
    m.env = host("c");
    m.mount();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"before the copy");
}

/// `rotate --kek` raises the token's anchor itself (not only the next open): a copy from
/// before the rotation, taken to a host that never saw the volume, is refused for its older
/// KEK generation by the token alone.
#[test]
fn a_kek_rotation_is_anchored_in_the_token_before_any_later_mount() {
    let hsm = SoftHsm::new();
    let host = |name: &str| on_host(&hsm, name);
    let mut m = MountFixture::new_with(&["--kms", &hsm.uri("rotated"), "--create-key"], host("a"));
    fs::write(m.p("f"), b"under the first KEK").unwrap();
    m.unmount();
    let old = m.tmp.path().join("old");
    copy_tree(&m.cipher, &old);
    ok(&m.run(&["rotate".as_ref(), m.cipher.as_os_str(), "--kek".as_ref()]));

    m.env = host("b");
    fs::remove_dir_all(&m.cipher).unwrap();
    copy_tree(&old, &m.cipher);
    let err = refused_mount(&mut m, "a header from before the rotation mounted on another host");
    assert!(err.contains("generation") && err.contains("anchor kept by its root"), "{err}");
    assert!(err.contains("envelopefs.conf") && err.contains("--accept-rollback"), "{err}");
}

/// `fsck --repair` on a host that never saw the volume counts the set of files on from the
/// token's anchor (not from 0), so the volume it repaired mounts there.
#[test]
fn fsck_repair_on_a_new_host_counts_on_from_the_tokens_anchor() {
    let hsm = SoftHsm::new();
    let host = |name: &str| on_host(&hsm, name);
    let mut m = MountFixture::new_with(&["--kms", &hsm.uri("repaired"), "--create-key"], host("a"));
    fs::write(m.p("gone"), pattern(9, 10_000)).unwrap();
    for i in 0..4 {
        // A commit of its own each (the set's count moves once per commit).
        fs::write(m.p(&format!("keep{i}")), b"kept").unwrap();
        m.remount();
    }
    // This last open raised the token's count past what a count from 0 reaches.
    m.unmount();

    // The file `gone` removed whole, as a writer of CIPHERDIR can: its rows and data file.
    let db = rusqlite::Connection::open(m.cipher.join("meta.db")).unwrap();
    let id: Vec<u8> = db.query_row("SELECT id FROM files WHERE size = 10000", [], |r| r.get(0)).unwrap();
    db.execute("DELETE FROM extents WHERE file_id = ?1", [&id]).unwrap();
    db.execute("DELETE FROM files WHERE id = ?1", [&id]).unwrap();
    drop(db);
    let mut dirs = vec![m.cipher.join("data")];
    let mut removed = 0;
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if fs::read(&p).unwrap().get(8..24) == Some(&id[..]) {
                fs::remove_file(&p).unwrap();
                removed += 1;
            }
        }
    }
    assert_eq!(removed, 1);

    m.env = host("b");
    ok(&m.run(&["fsck".as_ref(), m.cipher.as_os_str(), "--repair".as_ref()]));
    m.mount();
    assert_eq!(fs::read(m.p("keep3")).unwrap(), b"kept");
    assert!(!m.p("gone").exists());
}

/// `rotate --root` to another token carries the volume's anchor there (and removes it from
/// the old one): a store put back to a copy older than the last mount, under the rotated
/// header, is refused by the new token on a host that never saw the volume, before any mount
/// under the new root has written an anchor of its own.
#[test]
fn a_root_rotation_to_another_token_carries_the_anchor() {
    let hsm = SoftHsm::new();
    let conf = hsm.dir.path().join("softhsm2.conf");
    let out = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "evfs2", "--so-pin", "0000", "--pin", "1234"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let host = |name: &str| {
        let mut env = on_host(&hsm, name);
        env.retain(|(k, _)| k != envelopefs::kms::ROOTS_ENV);
        let module = common::kms::SOFTHSM_MODULE;
        let roots = format!("pkcs11:module={module};token=evfs\npkcs11:module={module};token=evfs2");
        env.push((envelopefs::kms::ROOTS_ENV.into(), roots.into()));
        env
    };
    let log = hsm.dir.path().join("audit.log");
    let mut m = MountFixture::new_with(&["--kms", &hsm.uri("first"), "--create-key"], with_audit(host("a"), &log));
    fs::write(m.p("f"), b"one").unwrap();
    m.unmount();
    let old_db = fs::read(m.cipher.join("meta.db")).unwrap();
    m.mount();
    fs::write(m.p("g"), b"two").unwrap();
    m.remount(); // the first token's anchor now counts the commit that made g
    m.unmount();
    let new_uri = format!("pkcs11:module={};token=evfs2;object=second", common::kms::SOFTHSM_MODULE);
    let to: &[&std::ffi::OsStr] =
        &["rotate".as_ref(), m.cipher.as_os_str(), "--root".as_ref(), "--to".as_ref(), new_uri.as_ref()];
    ok(&m.run(&[to, &["--create-key".as_ref()]].concat()));
    let forgot = fs::read_to_string(&log).unwrap().lines().filter(|l| l.contains("\"forget-anchor\"")).count();
    assert_eq!(forgot, 1, "the old token's anchor is removed");

    // Host b: the store put back (its WAL with it), under the rotated header.
    m.env = host("b");
    for side in ["meta.db-wal", "meta.db-shm"] {
        let _ = fs::remove_file(m.cipher.join(side));
    }
    fs::write(m.cipher.join("meta.db"), &old_db).unwrap();
    let err = refused_mount(&mut m, "an older store mounted under the new root");
    assert!(err.contains("anchor kept by its root evfs2/second"), "{err}");
}

/// `shred --volume` removes only the anchor of the volume its root vouches for: a header given
/// another volume's id (CIPHERDIR is writable by an attacker) does not take that volume's
/// anchor with it, and an older copy of that volume is still refused on a new host.
#[test]
fn shredding_a_header_given_another_volumes_id_leaves_that_volumes_anchor() {
    let hsm = SoftHsm::new();
    let mut b = MountFixture::new_with(&["--kms", &hsm.uri("b"), "--create-key"], on_host(&hsm, "a"));
    let old_b = older_copy(&mut b);
    b.unmount();
    let b_id = VolumeHeader::decode(&fs::read(b.cipher.join("envelopefs.conf")).unwrap()).unwrap().volume_id;

    let mut a = MountFixture::new_with(&["--kms", &hsm.uri("a"), "--create-key"], b.env.clone());
    a.unmount();
    let conf = a.cipher.join("envelopefs.conf");
    let mut h = VolumeHeader::decode(&fs::read(&conf).unwrap()).unwrap();
    h.volume_id = b_id;
    fs::write(&conf, h.encode()).unwrap();
    ok(&a.run(&["shred".as_ref(), a.cipher.as_os_str(), "--volume".as_ref(), "--yes".as_ref()]));

    b.env = on_host(&hsm, "c");
    fs::remove_dir_all(&b.cipher).unwrap();
    copy_tree(&old_b, &b.cipher);
    let err = refused_mount(&mut b, "an older copy mounted after another header's shred");
    assert!(err.contains("anchor kept by its root"), "{err}");
}
