//! Tenants against real roots: a volume on one SoftHSM2 key with two tenants on two other
//! key objects of the token, mounted. One tenant's key destroyed while mounted darkens its
//! subtree only; a shredded tenant is gone from the listing and from CIPHERDIR, with nothing
//! left that holds its KEK; renames and links across a tenant's boundary are EXDEV.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::kms::SoftHsm;
use common::mount::{ok, status, tenant, MountFixture};
use common::pattern;
use serde_json::Value;

const EKEYREVOKED: i32 = 128;
const EXDEV: i32 = 18;
const EBUSY: i32 = 16;

#[test]
#[ignore = "a helper process, run by another test"]
fn helper_destroy_key_object() {
    common::kms::destroy_key_object_from_env();
}

/// Polls `status` until `done` holds (commits are grouped: counts follow a moment later).
fn wait_for(m: &MountFixture, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = status(m);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "waited 30 s for {what}: {v:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `tenant add`; returns what it said (which names the tenant's id first).
fn add(m: &MountFixture, dir: &str, uri: &str) -> String {
    let o = m.tenant_add(dir, uri);
    ok(&o);
    String::from_utf8(o.stdout).unwrap()
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>, what: &str) -> i32 {
    r.expect_err(what).raw_os_error().unwrap_or_else(|| panic!("{what}: no errno"))
}

#[test]
fn a_tenant_goes_dark_alone_and_a_shredded_tenant_leaves_nothing_that_holds_its_key() {
    let hsm = SoftHsm::new();
    let mut env = hsm.env();
    env.push(("ENVELOPEFS_KMS_TIMEOUT".into(), "1".into()));
    let mut m = MountFixture::new_with(&["--kms", &hsm.uri("vol-root"), "--create-key"], env);
    fs::create_dir(m.p("projects")).unwrap();
    m.unmount();

    // A tenant is added offline, at a new directory; not over one that holds one, not nested.
    let said = add(&m, "projects/team-a", &hsm.uri("team-a"));
    assert!(said.contains("/projects/team-a"), "{said}");
    add(&m, "team-b", &hsm.uri("team-b"));
    let o = m.tenant_add("projects", &hsm.uri("t3"));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("holds tenant"), "{o:?}");
    let o = m.tenant_add("team-b/inner", &hsm.uri("t4"));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("do not nest"), "{o:?}");
    let o = m.tenant_add("team-c", "local:/etc/shared-keystore");
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("tenant's own volume"), "{o:?}");

    // Scratch is emptied at unmount: it may neither be, hold, nor lie inside a tenant.
    for scratch in
        [&["--scratch", "projects"][..], &["--scratch", "team-b"], &["--scratch", "team-b/tmp"], &["--ephemeral"]]
    {
        let o = m.try_mount(scratch);
        assert!(!o.status.success(), "{scratch:?}: {o:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("tenants and scratch do not mix"), "{o:?}");
    }
    m.mount_with(&["--recheck-root", "1s"]);
    let (a, b, outer) = (pattern(1, 200_000), pattern(2, 90_000), pattern(3, 50_000));
    fs::write(m.p("projects/team-a/a.bin"), &a).unwrap();
    fs::create_dir(m.p("projects/team-a/sub")).unwrap();
    fs::write(m.p("projects/team-a/sub/deep"), b"deep").unwrap();
    fs::write(m.p("team-b/b.bin"), &b).unwrap();
    fs::write(m.p("outer.bin"), &outer).unwrap();
    let mut names: Vec<String> =
        fs::read_dir(m.p("projects/team-a")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["a.bin", "sub"]);
    assert_eq!(fs::read(m.p("projects/team-a/a.bin")).unwrap(), a);

    // The tenant's files are in its own volume, not the outer one.
    let v = wait_for(&m, "the files committed", |v| tenant(v, "/projects/team-a")["files"] == 2 && v["files"] == 1);
    let ta = tenant(&v, "/projects/team-a");
    assert_eq!(ta["state"], "open", "{v:#}");
    assert_eq!(tenant(&v, "/team-b")["files"], 1, "{v:#}");
    let a_dir = m.cipher.join("tenants").join(ta["id"].as_str().unwrap());
    assert!(common::all_files(&a_dir.join("data")).len() >= 2);

    // The boundary: no rename or hard link across it, and its root stays.
    assert_eq!(errno_of(fs::rename(m.p("projects/team-a/a.bin"), m.p("moved")), "rename out"), EXDEV);
    assert_eq!(errno_of(fs::rename(m.p("outer.bin"), m.p("team-b/in")), "rename in"), EXDEV);
    assert_eq!(errno_of(fs::rename(m.p("team-b/b.bin"), m.p("projects/team-a/b")), "tenant to tenant"), EXDEV);
    assert_eq!(errno_of(fs::hard_link(m.p("team-b/b.bin"), m.p("b-link")), "link out"), EXDEV);
    assert_eq!(errno_of(fs::remove_dir(m.p("team-b")), "rmdir a tenant's root"), EBUSY);
    fs::create_dir(m.p("empty")).unwrap();
    assert_eq!(errno_of(fs::rename(m.p("empty"), m.p("team-b")), "rename over a tenant's root"), EBUSY);
    fs::rename(m.p("projects/team-a/a.bin"), m.p("projects/team-a/sub/a.bin")).unwrap();
    assert_eq!(fs::read(m.p("projects/team-a/sub/a.bin")).unwrap(), a, "renames inside a tenant work");
    // The directory holding a tenant's root moves, the root with it.
    fs::rename(m.p("projects"), m.p("projects2")).unwrap();
    assert_eq!(fs::read(m.p("projects2/team-a/sub/a.bin")).unwrap(), a);
    fs::rename(m.p("projects2"), m.p("projects")).unwrap();

    // Per tenant, while mounted: its KEK rotated, a file of it re-encrypted under fresh DEKs.
    let o = m.run(&["rotate".as_ref(), m.cipher.as_os_str(), "--kek".as_ref(), "--tenant".as_ref(), "team-b".as_ref()]);
    ok(&o);
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    let (from, to) = said.trim_end().rsplit_once(": ").unwrap().1.split_once(" -> ").unwrap();
    assert_ne!(from, to.split(' ').next().unwrap(), "{said}");
    let o = m.run(&["rotate".as_ref(), m.cipher.as_os_str(), "--rekey".as_ref(), "/team-b/b.bin".as_ref()]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("90000 bytes re-encrypted"), "{o:?}");
    assert_eq!(fs::read(m.p("team-b/b.bin")).unwrap(), b);
    let o =
        m.run(&["rotate".as_ref(), m.cipher.as_os_str(), "--kek".as_ref(), "--tenant".as_ref(), "projects".as_ref()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not a tenant's root"), "{o:?}");

    // Team A's key object destroyed: its subtree goes dark, also a file held open; the rest
    // of the volume goes on serving, reads and writes.
    let mut held = fs::File::open(m.p("projects/team-a/sub/a.bin")).unwrap();
    held.read_to_end(&mut Vec::new()).unwrap();
    hsm.destroy_in_helper("team-a");
    let deadline = Instant::now() + Duration::from_secs(60);
    while held.read_at(&mut [0u8; 4096], 0).is_ok() {
        assert!(Instant::now() < deadline, "a tenant whose key object is gone still serves after 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(errno_of(held.read_at(&mut [0u8; 4096], 100_000), "uncached page"), EKEYREVOKED);
    assert_eq!(errno_of(fs::read(m.p("projects/team-a/sub/deep")), "a dark tenant's file"), EKEYREVOKED);
    assert_eq!(errno_of(fs::write(m.p("projects/team-a/new"), b"x"), "a write into a dark tenant"), EKEYREVOKED);
    assert_eq!(fs::read(m.p("team-b/b.bin")).unwrap(), b, "the other tenant is untouched");
    assert_eq!(fs::read(m.p("outer.bin")).unwrap(), outer);
    fs::write(m.p("team-b/later"), b"later").unwrap();
    fs::write(m.p("outer-later"), b"later").unwrap();
    let v = status(&m);
    let ta = tenant(&v, "/projects/team-a");
    assert_eq!(ta["state"], "dark", "{v:#}");
    assert_eq!(ta["root_check"]["state"], "revoked", "{v:#}");
    assert_eq!(tenant(&v, "/team-b")["state"], "open", "{v:#}");
    assert_eq!(v["mounted"], true);
    let log = v["log"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(&log).unwrap().contains("tenant-dark") {
        assert!(Instant::now() < deadline, "no tenant-dark event: {}", fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let id = ta["id"].as_str().unwrap();
    let said = fs::read_to_string(&log).unwrap();
    let revoked = said.lines().find(|l| l.contains("root-revoked")).unwrap();
    assert!(revoked.contains(id), "the event names the tenant: {revoked}");
    drop(held);

    // Remounted without team A's key: its subtree is dark from the start, the rest served.
    m.unmount();
    m.mount();
    let v = status(&m);
    assert_eq!(tenant(&v, "/projects/team-a")["state"], "closed", "{v:#}");
    let listed = fs::read_dir(m.p("projects/team-a")).and_then(|mut d| d.next().transpose());
    assert_eq!(errno_of(listed, "list a closed tenant"), EKEYREVOKED);
    assert_eq!(errno_of(fs::metadata(m.p("projects/team-a/sub")), "look up in a closed tenant"), EKEYREVOKED);
    assert_eq!(fs::read(m.p("team-b/later")).unwrap(), b"later");
    m.unmount();
    // fsck checks every tenant with its own keys, and says which one it cannot open.
    let o = m.run(&["fsck".as_ref(), m.cipher.as_os_str()]);
    let said = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{said}");
    assert!(said.contains("tenant /projects/team-a") && said.contains("cannot be checked"), "{said}");
    assert!(said.contains("tenant /team-b: "), "{said}");
    // Offline, a tenant's KEK rotates too.
    let o =
        m.run(&["rotate".as_ref(), m.cipher.as_os_str(), "--kek".as_ref(), "--tenant".as_ref(), "/team-b".as_ref()]);
    ok(&o);

    // Shredding team B while mounted: what holds its KEK (the wrapped copy in its header)
    // is destroyed, a file held open reads nothing more, its directory leaves the listing and
    // its files CIPHERDIR; the rest is untouched.
    let b_id = tenant(&v, "/team-b")["id"].as_str().unwrap().to_string();
    let b_dir = m.cipher.join("tenants").join(&b_id);
    let header = envelopefs::format::VolumeHeader::decode(&fs::read(b_dir.join("envelopefs.conf")).unwrap()).unwrap();
    m.mount();
    let held = fs::File::open(m.p("team-b/b.bin")).unwrap();
    assert!(m.p("team-b/later").exists());
    let o = m.run(&["shred".as_ref(), m.cipher.as_os_str(), "--tenant".as_ref(), "/team-b".as_ref(), "--yes".as_ref()]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("shredded"), "{o:?}");
    assert!(!b_dir.exists());
    assert_eq!(errno_of(held.read_at(&mut [0u8; 16], 0), "a shredded tenant's open file"), EKEYREVOKED);
    assert!(!m.p("team-b").exists(), "a shredded tenant is gone from the listing at once");
    assert_eq!(fs::read(m.p("outer.bin")).unwrap(), outer);
    let v = status(&m);
    let log = fs::read_to_string(v["log"].as_str().unwrap()).unwrap();
    assert!(log.contains("tenant-shredded"), "{log}");
    drop(held);
    m.unmount();
    for f in common::all_files(&m.cipher) {
        let bytes = fs::read(&f).unwrap();
        assert!(
            !common::contains(&bytes, &header.wrapped_kek),
            "{} holds the shredded tenant's wrapped KEK",
            f.display()
        );
        assert!(!common::contains(&bytes, &header.wrapped_name_key), "{} holds its wrapped name key", f.display());
    }
    // The volume itself checks clean (team A, whose key is gone, is what fsck still names).
    let o = m.run(&["fsck".as_ref(), m.cipher.as_os_str()]);
    let said = String::from_utf8_lossy(&o.stdout);
    let own = said.lines().next().unwrap();
    assert!(own.contains(" 0 problem(s)"), "fsck after a tenant shred: {said}");
    assert!(!said.contains("team-b") && said.lines().count() == 2, "{said}");
    m.mount();
    assert!(!m.p("team-b").exists(), "a shredded tenant is gone from the listing");
    assert_eq!(fs::read(m.p("outer.bin")).unwrap(), outer);
    assert_eq!(fs::read(m.p("outer-later")).unwrap(), b"later");
    let v = status(&m);
    assert_eq!(v["tenants"].as_array().unwrap().len(), 1, "{v:#}");
}

/// The id `tenant add` reported.
fn id_in(said: &str) -> String {
    said.split_whitespace().nth(1).unwrap().to_string()
}

/// A volume on the token's key "vol-root" with tenants at /a and /b (keys "a" and "b"),
/// each holding a file; unmounted. Returns the fixture and the tenants' ids.
fn with_two_tenants(hsm: &SoftHsm) -> (MountFixture, String, String) {
    let mut m = MountFixture::new_with(&["--kms", &hsm.uri("vol-root"), "--create-key"], hsm.env());
    fs::write(m.p("outer"), b"outer").unwrap();
    m.unmount();
    let a = id_in(&add(&m, "a", &hsm.uri("a")));
    let b = id_in(&add(&m, "b", &hsm.uri("b")));
    m.mount();
    fs::write(m.p("a/file"), b"tenant a").unwrap();
    fs::write(m.p("b/file"), b"tenant b").unwrap();
    m.unmount();
    (m, a, b)
}

fn meta_db(m: &MountFixture) -> rusqlite::Connection {
    rusqlite::Connection::open(m.cipher.join("meta.db")).unwrap()
}

/// CIPHERDIR is hostile (DESIGN.md §7): the tenant list is sealed and required, and what
/// lies under `tenants/` is checked against it before anything there is opened.
#[test]
fn a_planted_or_edited_tenant_list_or_tenant_volume_is_refused_and_nothing_is_written_to_it() {
    let hsm = SoftHsm::new();
    let (mut m, a, b) = with_two_tenants(&hsm);
    let tenants = m.cipher.join("tenants");

    // The list deleted: the volume says it has tenants (header feature), so no mount.
    let row: Vec<u8> = meta_db(&m).query_row("SELECT value FROM meta WHERE key = 'tenants'", [], |r| r.get(0)).unwrap();
    meta_db(&m).execute("DELETE FROM meta WHERE key = 'tenants'", []).unwrap();
    let o = m.try_mount(&[]);
    assert!(!o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("tenant list is missing"), "{o:?}");
    // Edited (one bit): it does not authenticate.
    let mut edited = row.clone();
    edited[20] ^= 1;
    meta_db(&m).execute("INSERT INTO meta (key, value) VALUES ('tenants', ?1)", [&edited]).unwrap();
    let o = m.try_mount(&[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("tenant list does not authenticate"), "{o:?}");
    meta_db(&m).execute("UPDATE meta SET value = ?1 WHERE key = 'tenants'", [&row]).unwrap();

    // Tenant A's volume swapped with B's: each names the other's volume id, so neither is
    // opened (and neither is written to); the rest is served.
    let (ta, tb) = (tenants.join(&a), tenants.join(&b));
    let swap = tenants.join("swap");
    fs::rename(&ta, &swap).unwrap();
    fs::rename(&tb, &ta).unwrap();
    fs::rename(&swap, &tb).unwrap();
    let before: Vec<(std::path::PathBuf, Vec<u8>)> = common::all_files(&tenants)
        .into_iter()
        .map(|f| {
            let b = fs::read(&f).unwrap();
            (f, b)
        })
        .collect();
    m.mount();
    let v = status(&m);
    for label in ["/a", "/b"] {
        let t = tenant(&v, label);
        assert_eq!(t["state"], "closed", "{v:#}");
        assert!(t["reason"].as_str().unwrap().contains("not the tenant's"), "{v:#}");
    }
    assert_eq!(errno_of(fs::read(m.p("a/file")), "a swapped tenant"), EKEYREVOKED);
    assert_eq!(fs::read(m.p("outer")).unwrap(), b"outer");
    m.unmount();
    for (f, bytes) in before {
        if f.file_name().is_some_and(|n| n == ".lock") {
            continue;
        }
        assert_eq!(fs::read(&f).unwrap(), bytes, "{} was written to", f.display());
    }
    fs::rename(&ta, &swap).unwrap();
    fs::rename(&tb, &ta).unwrap();
    fs::rename(&swap, &tb).unwrap();

    // A symlink planted for tenant A's volume (to B's): refused, not followed.
    let aside = tenants.join("a-aside");
    fs::rename(&ta, &aside).unwrap();
    std::os::unix::fs::symlink(&tb, &ta).unwrap();
    m.mount();
    let v = status(&m);
    assert!(tenant(&v, "/a")["reason"].as_str().unwrap().contains("planted"), "{v:#}");
    assert_eq!(fs::read(m.p("b/file")).unwrap(), b"tenant b", "B is served as itself");
    m.unmount();
    fs::remove_file(&ta).unwrap();
    fs::rename(&aside, &ta).unwrap();
    m.mount();
    assert_eq!(fs::read(m.p("a/file")).unwrap(), b"tenant a", "put back, A is served again");
    m.unmount();

    // `tenants/` itself a symlink (to where the volumes are): refused, not followed.
    let real = m.cipher.join("tenants-real");
    fs::rename(&tenants, &real).unwrap();
    std::os::unix::fs::symlink(&real, &tenants).unwrap();
    m.mount();
    let v = status(&m);
    for label in ["/a", "/b"] {
        assert!(tenant(&v, label)["reason"].as_str().unwrap().contains("planted"), "{v:#}");
    }
    m.unmount();
    fs::remove_file(&tenants).unwrap();
    fs::rename(&real, &tenants).unwrap();

    // A tenant's root stays where it is, like a mount point: not renamed, and nothing takes
    // its place. Removed behind the volume's back, its place takes no new directory (whose
    // files would go under the volume's KEK), and fsck names the tenant.
    m.mount();
    assert_eq!(errno_of(fs::rename(m.p("b"), m.p("b-moved")), "rename a tenant's root"), EBUSY);
    m.unmount();
    let flagged = |d: &std::path::Path| {
        fs::read(d.join(".dirid"))
            .ok()
            .and_then(|b| envelopefs::format::ObjectHeader::decode(&b).ok())
            .is_some_and(|h| h.tenant)
    };
    let root = fs::read_dir(m.cipher.join("data")).unwrap().flatten().map(|e| e.path()).find(|p| flagged(p)).unwrap();
    let aside = m.tmp.path().join("root-aside");
    fs::rename(&root, &aside).unwrap();
    m.mount();
    let gone = if m.p("a").exists() { "b" } else { "a" };
    assert!(!m.p(gone).exists());
    assert_eq!(errno_of(fs::create_dir(m.p(gone)), "a directory where a tenant's root belongs"), libc_eio());
    fs::create_dir(m.p("plain")).unwrap();
    assert_eq!(errno_of(fs::rename(m.p("plain"), m.p(gone)), "a directory moved there"), EBUSY);
    fs::remove_dir(m.p("plain")).unwrap();
    assert_eq!(errno_of(fs::write(m.p(gone), b"x"), "a file made there"), libc_eio());
    assert_eq!(errno_of(std::os::unix::fs::symlink("/tmp", m.p(gone)), "a symlink made there"), libc_eio());
    m.unmount();
    // Its volume holds files: `shred --tenant` of the missing root refuses (CIPHERDIR removing
    // a directory is no reason to destroy a tenant), and `fsck --repair` makes the root again
    // at its place with its id (the sealed list vouches for both): the tenant is back.
    let o = m.run(&["shred".as_ref(), m.cipher.as_os_str(), "--tenant".as_ref(), gone.as_ref(), "--yes".as_ref()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("fsck --repair"), "{o:?}");
    let o = m.run(&["fsck".as_ref(), m.cipher.as_os_str()]);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains(&format!("tenant /{gone}")) && said.contains("root directory was not found"), "{said}");
    let o = m.run(&["fsck".as_ref(), m.cipher.as_os_str(), "--repair".as_ref()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("its root made again"), "{o:?}");
    m.mount();
    assert_eq!(fs::read(m.p(&format!("{gone}/file"))).unwrap(), format!("tenant {gone}").as_bytes());
    m.unmount();
    fs::remove_dir_all(&aside).unwrap();

    // A tenant's root whose directory id no longer reads (one byte of it flipped): its
    // entries are EIO, never a plain directory's; and `fsck --repair` does not give it a new
    // id (which would make it one).
    let root_dirid = fs::read_dir(m.cipher.join("data"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join(".dirid"))
        .find(|p| {
            fs::read(p).ok().and_then(|b| envelopefs::format::ObjectHeader::decode(&b).ok()).is_some_and(|h| h.tenant)
        })
        .expect("a tenant's root directory carries the flag");
    let good = fs::read(&root_dirid).unwrap();
    let mut bad = good.clone();
    bad[30] ^= 1;
    fs::write(&root_dirid, &bad).unwrap();
    m.mount();
    for d in ["a", "b"] {
        if let Ok(mut l) = fs::read_dir(m.p(d)) {
            if let Some(Err(e)) = l.next() {
                assert_eq!(e.raw_os_error(), Some(libc_eio()), "{d}");
            }
        }
    }
    let (a_ok, b_ok) = (fs::read(m.p("a/file")).is_ok(), fs::read(m.p("b/file")).is_ok());
    assert!(a_ok != b_ok, "exactly the damaged root is refused");
    let damaged = if a_ok { "b" } else { "a" };
    assert_eq!(errno_of(fs::write(m.p(&format!("{damaged}/new")), b"x"), "a file made in it"), libc_eio());
    m.unmount();
    let o = m.run(&["fsck".as_ref(), m.cipher.as_os_str(), "--repair".as_ref()]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert_eq!(fs::read(&root_dirid).unwrap(), bad, "left as it is");
    // Cut short (no header at all): an empty directory fsck would give a new id, but not on a
    // volume with tenants.
    fs::write(&root_dirid, &good[..10]).unwrap();
    let o = m.run(&["fsck".as_ref(), m.cipher.as_os_str(), "--repair".as_ref()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("may be a tenant's root"), "{o:?}");
    assert_eq!(fs::read(&root_dirid).unwrap(), &good[..10], "left as it is");
    fs::write(&root_dirid, &good).unwrap();

    // Shredded offline: gone, and the rest served.
    let o = m.run(&["shred".as_ref(), m.cipher.as_os_str(), "--tenant".as_ref(), "a".as_ref(), "--yes".as_ref()]);
    ok(&o);
    assert!(!ta.exists());
    m.mount_with(&["--recheck-root", "1s"]);
    assert!(!m.p("a").exists());
    assert_eq!(fs::read(m.p("b/file")).unwrap(), b"tenant b");
    assert_eq!(fs::read(m.p("outer")).unwrap(), b"outer");

    // The volume's own root gone: the mount goes dark, and every tenant with it.
    // (A file held open keeps the detached mount's daemon, and so its status, a while.)
    let pid = status(&m)["pid"].as_u64().unwrap();
    let held = fs::File::open(m.p("b/file")).unwrap();
    hsm.destroy_in_helper("vol-root");
    let v = wait_for_dark(&m);
    assert_eq!(tenant(&v, "/b")["state"], "dark", "{v:#}");
    assert_eq!(errno_of(held.read_at(&mut [0u8; 8], 0), "a tenant's file on a dark mount"), EKEYREVOKED);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "a dark mount's daemon stays after its last file closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    m.disown();
}

/// Polls the daemon (by CIPHERDIR: the mount is detached once dark) until its root is revoked.
fn wait_for_dark(m: &MountFixture) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = m.run(&["status".as_ref(), m.cipher.as_os_str(), "--json".as_ref()]);
        if let Ok(v) = serde_json::from_slice::<Value>(&o.stdout) {
            if v["root_check"]["state"] == "revoked" {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "the mount did not go dark in 60 s: {o:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A volume on its embedded keystore with a tenant on an AWS KMS key (moto): the key gone
/// from the server darkens the tenant at its next re-check, the volume serves on, and the
/// audit log names the tenant in each of its root's calls.
#[cfg(feature = "aws-kms")]
#[test]
fn a_tenant_on_a_kms_key_that_is_gone_goes_dark_and_its_calls_are_audited_by_name() {
    use common::kms::Moto;
    let moto = Moto::start();
    let mut env = moto.env();
    env.push(("ENVELOPEFS_KMS_TIMEOUT".into(), "0.5".into()));
    let mut m = MountFixture::new_with(&[], env);
    let audit = m.tmp.path().join("audit.log");
    m.env.push(("ENVELOPEFS_AUDIT_LOG".into(), audit.clone().into()));
    fs::write(m.p("mine"), b"the volume's").unwrap();
    m.unmount();
    let said = add(&m, "cloud", "aws-kms:new");
    assert!(said.contains("arn:aws:kms:"), "the tenant records the new key's ARN: {said}");
    m.mount_with(&["--recheck-root", "1s"]);
    fs::write(m.p("cloud/theirs"), b"the tenant's").unwrap();
    let held = fs::File::open(m.p("cloud/theirs")).unwrap();
    wait_for(&m, "a first re-check of the tenant's root", |v| {
        tenant(v, "/cloud")["root_check"]["checks"].as_u64() >= Some(1)
    });
    moto.reset();
    let v = wait_for(&m, "the tenant to go dark", |v| tenant(v, "/cloud")["state"] == "dark");
    assert!(tenant(&v, "/cloud")["root_check"]["answer"].as_str().unwrap().contains("NotFoundException"), "{v:#}");
    assert_eq!(errno_of(held.read_at(&mut [0u8; 8], 0), "a dark tenant's file"), EKEYREVOKED);
    assert_eq!(fs::read(m.p("mine")).unwrap(), b"the volume's");
    assert_eq!(v["root_check"]["state"], "off", "the keystore has nothing to re-check: {v:#}");
    let lines: Vec<Value> =
        fs::read_to_string(&audit).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let rechecks: Vec<&Value> = lines.iter().filter(|l| l["op"] == "recheck").collect();
    assert!(!rechecks.is_empty() && rechecks.iter().all(|l| l["tenant"] == "/cloud"), "{lines:?}");
    assert!(lines.iter().any(|l| l["op"] == "unwrap" && l["tenant"] == "/cloud"), "the mount's unwrap: {lines:?}");
    assert!(lines.iter().any(|l| l["event"] == "tenant-dark"), "{lines:?}");
}

/// A tenant's root says so in its own authenticated header, so a tenant list (or a volume
/// header) put back from before a tenant was added does not make its root a plain
/// directory whose new files would be under the volume's KEK: its lookup fails instead.
#[test]
fn a_tenant_list_or_header_put_back_from_before_a_tenant_fails_closed() {
    let hsm = SoftHsm::new();
    let mut m = MountFixture::new_with(&["--kms", &hsm.uri("vol-root"), "--create-key"], hsm.env());
    m.unmount();
    let header_before = fs::read(m.cipher.join("envelopefs.conf")).unwrap();
    add(&m, "a", &hsm.uri("a"));
    let row = |m: &MountFixture| -> Vec<u8> {
        meta_db(m).query_row("SELECT value FROM meta WHERE key = 'tenants'", [], |r| r.get(0)).unwrap()
    };
    let list_with_a = row(&m);
    add(&m, "b", &hsm.uri("b"));
    let list_with_both = row(&m);

    // The list from before b was added: b's root is refused (EIO), not served as a plain
    // directory of the volume, and nothing can be made in it.
    meta_db(&m).execute("UPDATE meta SET value = ?1 WHERE key = 'tenants'", [&list_with_a]).unwrap();
    m.mount();
    let listed = fs::read_dir(m.p("b")).and_then(|mut d| d.next().transpose());
    assert_eq!(errno_of(listed, "a listing of a tenant's root the list forgot"), libc_eio());
    assert_eq!(errno_of(fs::write(m.p("b/new"), b"x"), "a file made in it"), libc_eio());
    assert_eq!(errno_of(fs::create_dir(m.p("b/d")), "a directory made in it"), libc_eio());
    assert_eq!(errno_of(fs::remove_dir(m.p("b")), "its removal"), libc_eio());
    fs::write(m.p("a/ok"), b"a").unwrap();
    m.unmount();

    // The volume header from before the first tenant: the list it does not know of is refused.
    meta_db(&m).execute("UPDATE meta SET value = ?1 WHERE key = 'tenants'", [&list_with_both]).unwrap();
    fs::write(m.cipher.join("envelopefs.conf"), &header_before).unwrap();
    let o = m.try_mount(&[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("volume header says the volume has no tenants"), "{o:?}");
    // ... and without the list too: each tenant's root still says what it is.
    meta_db(&m).execute("DELETE FROM meta WHERE key = 'tenants'", []).unwrap();
    m.mount();
    assert_eq!(errno_of(fs::metadata(m.p("a/file")), "a file of a tenant's root, no list"), libc_eio());
    assert_eq!(errno_of(fs::create_dir(m.p("a/sub")), "a directory made in it"), libc_eio());
}

fn libc_eio() -> i32 {
    5
}

/// `shred --volume` shreds every tenant's volume with it (their roots are kept), and
/// `shred --tenant` shreds only the volume the list names.
#[test]
fn shredding_the_volume_shreds_its_tenants_and_a_tenant_shred_checks_what_it_destroys() {
    let hsm = SoftHsm::new();
    let (mut m, a, b) = with_two_tenants(&hsm);
    let tenants = m.cipher.join("tenants");
    // A's place holding B's volume: `shred --tenant /a` refuses, and destroys nothing.
    let (ta, tb, aside) = (tenants.join(&a), tenants.join(&b), tenants.join("aside"));
    fs::rename(&ta, &aside).unwrap();
    fs::rename(&tb, &ta).unwrap();
    let o = m.run(&["shred".as_ref(), m.cipher.as_os_str(), "--tenant".as_ref(), "a".as_ref(), "--yes".as_ref()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not the tenant's"), "{o:?}");
    let h = envelopefs::format::VolumeHeader::decode(&fs::read(ta.join("envelopefs.conf")).unwrap()).unwrap();
    assert!(!h.is_shredded(), "B's volume was left alone");
    fs::rename(&ta, &tb).unwrap();
    fs::rename(&aside, &ta).unwrap();

    // A tenant's root rotated to another key object, unmounted. The list put back from
    // before the rotation (naming the old root) does not make the tenant's header, which
    // names the new one, acceptable: the tenant is closed, and a rotation refuses to adopt
    // what the header says; the list put back as it was after, it is served again.
    let before: Vec<u8> =
        meta_db(&m).query_row("SELECT value FROM meta WHERE key = 'tenants'", [], |r| r.get(0)).unwrap();
    let a2 = hsm.uri("a2");
    let rotate_a = |m: &MountFixture, to: &str| {
        m.run(&[
            "rotate".as_ref(),
            m.cipher.as_os_str(),
            "--root".as_ref(),
            "--tenant".as_ref(),
            "a".as_ref(),
            "--to".as_ref(),
            to.as_ref(),
            "--create-key".as_ref(),
        ])
    };
    let o = rotate_a(&m, &a2);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("object=a2"), "{o:?}");
    let after: Vec<u8> =
        meta_db(&m).query_row("SELECT value FROM meta WHERE key = 'tenants'", [], |r| r.get(0)).unwrap();
    meta_db(&m).execute("UPDATE meta SET value = ?1 WHERE key = 'tenants'", [&before]).unwrap();
    m.mount();
    let v = status(&m);
    assert!(tenant(&v, "/a")["reason"].as_str().unwrap().contains("but the tenant list names"), "{v:#}");
    m.unmount();
    let o = rotate_a(&m, &hsm.uri("a3"));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("but the tenant list names"), "{o:?}");
    meta_db(&m).execute("UPDATE meta SET value = ?1 WHERE key = 'tenants'", [&after]).unwrap();
    m.mount();
    let v = status(&m);
    assert_eq!(tenant(&v, "/a")["root"], a2.as_str(), "{v:#}");
    assert_eq!(fs::read(m.p("a/file")).unwrap(), b"tenant a");
    m.unmount();

    // The volume's own KEK and name key rotated: the list is re-sealed, each tenant's root
    // keeps its flag under the new key, and the tenants are served as before.
    let o = m.run(&["rotate".as_ref(), m.cipher.as_os_str(), "--kek".as_ref()]);
    ok(&o);
    m.mount();
    assert_eq!(fs::read(m.p("a/file")).unwrap(), b"tenant a");
    assert_eq!(fs::read(m.p("b/file")).unwrap(), b"tenant b");
    m.unmount();

    // fsck: a leftover volume nobody owns (as a `tenant add` cut short leaves one).
    let leftover = tenants.join(".new-0011223344556677");
    common::copy_tree(&tb, &leftover);
    let mut hdr =
        envelopefs::format::VolumeHeader::decode(&fs::read(leftover.join("envelopefs.conf")).unwrap()).unwrap();
    hdr.volume_id = [0x77; 16];
    fs::write(leftover.join("envelopefs.conf"), hdr.encode()).unwrap();
    let o = m.run(&["fsck".as_ref(), m.cipher.as_os_str()]);
    let said = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{said}");
    assert!(said.contains(".new-0011223344556677: a volume no tenant owns"), "{said}");
    // Not authenticated as a whole, so repair removes nothing there: the operator does.
    let o = m.run(&["fsck".as_ref(), m.cipher.as_os_str(), "--repair".as_ref()]);
    let said = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{said}");
    assert!(said.contains("not repaired: left as it is"), "{said}");
    assert!(leftover.join("envelopefs.conf").exists());
    fs::remove_dir_all(&leftover).unwrap();

    // Junk planted under tenants/ is named, and stops neither the tenants nor the volume.
    let junk = tenants.join("zz");
    fs::create_dir(&junk).unwrap();
    fs::write(junk.join("envelopefs.conf"), b"not a header").unwrap();
    let o = m.run(&["shred".as_ref(), m.cipher.as_os_str(), "--volume".as_ref(), "--yes".as_ref()]);
    ok(&o);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("2 tenant volume(s) shredded too"), "{said}");
    assert!(said.contains("Not shredded:") && said.contains("zz"), "{said}");
    let h = envelopefs::format::VolumeHeader::decode(&fs::read(m.cipher.join("envelopefs.conf")).unwrap()).unwrap();
    assert!(h.is_shredded(), "the volume itself is shredded");
    for t in [&ta, &tb] {
        let h = envelopefs::format::VolumeHeader::decode(&fs::read(t.join("envelopefs.conf")).unwrap()).unwrap();
        assert!(h.is_shredded(), "{}", t.display());
    }
}
