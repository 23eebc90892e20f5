//! Walk-ahead (`fs::walk_ahead`): a directory listed while a walk is going on (its parent
//! was listed just before) has its subdirectories read ahead, their `.dirid` included while
//! their ids are not cached; what a writer of CIPHERDIR plants there is not opened.

mod common;

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::mount::{status, MountFixture};
use common::*;

/// The backing subdirectories of backing directory `dir`.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir() && !p.is_symlink()).collect();
    out.sort();
    out
}

/// Waits until every walk-ahead thread of daemon `pid` waits for work (on its condition
/// variable, not on a disk or an open), three looks in a row.
fn walk_ahead_idle(pid: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut quiet = 0;
    while quiet < 3 {
        assert!(Instant::now() < deadline, "the walk-ahead threads did not settle");
        let tasks = fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten();
        // Asleep in futex(2): its wait symbol, or (without kernel symbols) its system call.
        let waiting = |t: &Path| {
            fs::read_to_string(t.join("wchan")).is_ok_and(|w| w.contains("futex"))
                || fs::read_to_string(t.join("syscall"))
                    .is_ok_and(|c| c.split_whitespace().next() == Some(&nix::libc::SYS_futex.to_string()))
        };
        let busy = tasks
            .filter(|t| fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "walk-ahead"))
            .any(|t| !waiting(&t.path()));
        quiet = if busy { 0 } else { quiet + 1 };
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn listing_a_directory_in_a_walk_reads_its_subdirectories_ahead_and_opens_nothing_planted() {
    // On a disk: a tmpfs (where the tests' volumes usually are) has no page cache to miss.
    let Some(mut m) = MountFixture::on_disk("evfs-walk-ahead-") else { return };
    for d in ["a/s0", "a/s1", "a/s2", "a/s3", "a/s4", "a/s5", "a/s6", "b/t0", "b/t1"] {
        fs::create_dir_all(m.p(d)).unwrap();
        fs::write(m.p(&format!("{d}/f")), b"x").unwrap();
    }
    m.unmount();
    let data = m.cipher.join("data");
    let top = subdirs(&data);
    let a = top.iter().find(|d| subdirs(d).len() == 7).unwrap().clone();
    let b = top.iter().find(|d| subdirs(d).len() == 2).unwrap().clone();
    let (a_subs, b_subs) = (subdirs(&a), subdirs(&b));
    // Planted by a writer of CIPHERDIR in three of a's subdirectories: a symlink to a file
    // outside as one's `.dirid` (never followed), a FIFO as another's (opening it would
    // block; a writer waits for a reader: if the daemon opened it, the wait would end), and
    // a symlink to a directory outside in place of the third (with a `.dirid` of its own).
    let outside = m.cipher.with_file_name("outside"); // on the same disk
    fs::write(&outside, vec![1u8; 10_000]).unwrap();
    fs::remove_file(a_subs[1].join(".dirid")).unwrap();
    std::os::unix::fs::symlink(&outside, a_subs[1].join(".dirid")).unwrap();
    let fifo = a_subs[2].join(".dirid");
    fs::remove_file(&fifo).unwrap();
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let writer = std::thread::spawn({
        let fifo = fifo.clone();
        move || drop(fs::OpenOptions::new().write(true).open(fifo))
    });
    let outside_dir = m.cipher.with_file_name("outside-dir");
    fs::rename(&a_subs[3], &outside_dir).unwrap();
    std::os::unix::fs::symlink(&outside_dir, &a_subs[3]).unwrap();
    let ids = |subs: &[PathBuf]| -> Vec<PathBuf> { subs.iter().map(|d| d.join(".dirid")).collect() };
    let regular = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
    let good: Vec<PathBuf> =
        ids(&a_subs).into_iter().filter(|p| !p.parent().unwrap().is_symlink() && regular(p)).collect();
    assert_eq!(good.len(), 4);
    let evict_all = || {
        nix::unistd::sync();
        all_files(&data)
            .iter()
            .chain([&outside, &outside_dir.join(".dirid")])
            .filter(|p| p.is_file() && !p.is_symlink())
            .for_each(|p| evict(p));
        let (b_ids, outside_id) = (ids(&b_subs), outside_dir.join(".dirid"));
        assert!(good.iter().chain(&b_ids).chain([&outside, &outside_id]).all(|f| resident(f) == 0), "evicted");
    };
    // A fresh daemon: no directory id cached.
    m.mount();
    let pid = status(&m)["pid"].as_u64().unwrap();
    evict_all();
    // b listed alone (its parent was not): no walk, nothing read ahead. (A directory is
    // listed once: the kernel keeps what it read, so b stays out of what follows.)
    assert_eq!(fs::read_dir(m.p("b")).unwrap().count(), 2);
    walk_ahead_idle(pid);
    assert!(ids(&b_subs).iter().all(|f| resident(f) == 0), "a listing outside a walk reads nothing ahead");
    // A walk: the root listed, then a.
    assert_eq!(fs::read_dir(m.p("")).unwrap().count(), 2);
    assert_eq!(fs::read_dir(m.p("a")).unwrap().count(), 7);
    // The reads were asked for (WILLNEED does not wait for them): they land.
    let deadline = Instant::now() + Duration::from_secs(20);
    let cached = || good.iter().filter(|f| resident(f) > 0).count();
    while cached() < good.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(cached(), good.len(), "a's subdirectories' ids read ahead");
    walk_ahead_idle(pid);
    assert!(ids(&b_subs).iter().all(|f| resident(f) == 0), "b's subdirectories are still not read ahead");
    assert_eq!(resident(&outside), 0, "the planted `.dirid` symlink was not followed");
    assert_eq!(resident(&outside_dir.join(".dirid")), 0, "the symlink planted for a subdirectory was not followed");
    assert!(!writer.is_finished(), "the planted FIFO was opened");
    drop(fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(&fifo).unwrap());
    writer.join().unwrap();
    // What was read ahead is read as before; the three planted subdirectories are refused.
    let readable = (0..7).filter(|i| fs::read(m.p(&format!("a/s{i}/f"))).is_ok_and(|c| c == b"x")).count();
    assert_eq!(readable, 4);
}
