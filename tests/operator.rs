//! What an operator sees of a mount (issue 20): its type is `fuse.envelopefs` in
//! `/proc/mounts` (so `findmnt -t` and `umount -t` find it), `status` reads as aligned text,
//! and `mount --idle` unmounts a mount nobody uses, destroying its scratch as `umount` does,
//! while an open file keeps it.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::mount::{ok, MountFixture};

/// The `/proc/self/mountinfo` line of the mount at `mnt`, if it is mounted.
fn mount_line(mnt: &Path) -> Option<String> {
    let mnt = mnt.canonicalize().ok()?;
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == mnt.to_str())
        .map(String::from)
}

#[test]
fn the_mount_type_is_fuse_envelopefs() {
    let m = MountFixture::new(&[]);
    let line = mount_line(&m.mnt).expect("mounted");
    let (_, post) = line.split_once(" - ").unwrap();
    assert!(post.starts_with("fuse.envelopefs "), "{line}");
    // Named by its CIPHERDIR, as gocryptfs names its own.
    assert!(post.contains(m.cipher.canonicalize().unwrap().to_str().unwrap()), "{line}");
    let o = std::process::Command::new("findmnt")
        .args(["-n", "-t", "fuse.envelopefs", "-o", "TARGET"])
        .arg(m.mnt.canonicalize().unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "findmnt -t fuse.envelopefs does not find it: {o:?}");

    // `status` for people: aligned text, ages and rates in human units, no JSON.
    fs::write(m.p("f"), b"x").unwrap();
    fs::read(m.p("f")).unwrap();
    let o = m.run(&["status".as_ref(), m.mnt.as_os_str()]);
    ok(&o);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(!text.contains('{') && !text.contains('"'), "{text}");
    for want in
        ["state      mounted on ", " s (daemon ", "hit rate ", " % (", "data       aes-256-gcm-siv, 1 MiB extents"]
    {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
}

#[test]
fn an_idle_mount_unmounts_itself_unless_a_file_is_open() {
    let mut m = MountFixture::new(&[]);
    m.unmount();
    m.mount_with(&["--idle", "2s", "--scratch", "tmp"]);
    fs::write(m.p("tmp/x"), b"scratch").unwrap();
    fs::write(m.p("kept"), b"kept").unwrap();
    // An open file keeps it mounted, however long it sits.
    let held = fs::File::open(m.p("kept")).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert!(mount_line(&m.mnt).is_some(), "unmounted with a file open");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    while mount_line(&m.mnt).is_some() {
        assert!(Instant::now() < deadline, "still mounted 30 s after the last file closed (--idle 2s)");
        std::thread::sleep(Duration::from_millis(100));
    }
    m.disown();
    // The daemon ended as after umount: the volume mounts again (once it let go), what was
    // written is there, and the scratch is gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = m.try_mount(&[]);
        if o.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon did not let go of the volume: {o:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    m.adopt();
    assert_eq!(fs::read(m.p("kept")).unwrap(), b"kept");
    assert!(!m.p("tmp/x").exists(), "the scratch was destroyed at the idle unmount");
    ok(&m.run(&["umount".as_ref(), m.mnt.as_os_str()]));
    m.disown();
}
