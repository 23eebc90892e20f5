//! Real tools on a real mount: fsx, fio with verification, git and SQLite.

mod common;

use std::process::Command;

use common::mount::MountFixture;
use common::{run, tool};

#[test]
fn fsx_100k_operations() {
    let m = MountFixture::new(&[]);
    let out = run(Command::new(tool("fsx"))
        .args(["-N", "100000", "-S", "20261122"])
        .arg(m.p("fsx.file"))
        .current_dir(&m.mnt));
    assert!(out.contains("A-OK") || out.is_empty(), "{out}");
}

#[test]
fn fio_verify_crc32c_8_jobs() {
    let m = MountFixture::new(&[]);
    run(Command::new(tool("fio")).args([
        "--name=verify",
        "--rw=randrw",
        "--bsrange=4k-64k",
        "--size=16M",
        "--numjobs=8",
        "--ioengine=psync",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--group_reporting",
        &format!("--directory={}", m.mnt.display()),
    ]));
    // And the data survives a remount.
    let mut m = m;
    m.remount();
    assert_eq!(std::fs::read_dir(&m.mnt).unwrap().count(), 8);
}

#[test]
fn git_init_commit_clone_fsck() {
    let m = MountFixture::new(&[]);
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args(["-c", "user.name=envelopefs", "-c", "user.email=test@envelopefs", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(&m.mnt))
    };
    git(&["init", "-q", "repo"]);
    for i in 0..50 {
        std::fs::write(m.p(&format!("repo/file{i}.txt")), format!("content {i}\n").repeat(100 * i + 1)).unwrap();
    }
    git(&["-C", "repo", "add", "."]);
    git(&["-C", "repo", "commit", "-qm", "first"]);
    std::fs::write(m.p("repo/file1.txt"), "changed\n").unwrap();
    git(&["-C", "repo", "commit", "-qam", "second"]);
    git(&["clone", "-q", "repo", "clone"]);
    git(&["-C", "repo", "fsck", "--full", "--strict"]);
    git(&["-C", "clone", "fsck", "--full", "--strict"]);
    assert_eq!(std::fs::read_to_string(m.p("clone/file1.txt")).unwrap(), "changed\n");
    assert!(git(&["-C", "clone", "log", "--oneline"]).lines().count() == 2);
}

#[test]
fn sqlite_integrity_after_a_write_workload() {
    let mut m = MountFixture::new(&[]);
    let db = m.p("test.db");
    let script = format!(
        r#"
import sqlite3, random
random.seed(7)
c = sqlite3.connect({db:?})
c.execute("create table t (id integer primary key, v blob)")
for batch in range(50):
    with c:
        for i in range(200):
            c.execute("insert into t (v) values (?)", (random.randbytes(random.randint(1, 3000)),))
    with c:
        c.execute("delete from t where id % 7 = ?", (batch % 7,))
        c.execute("update t set v = randomblob(500) where id % 11 = 0")
c.execute("vacuum")
print(c.execute("pragma integrity_check").fetchone()[0], c.execute("select count(*) from t").fetchone()[0])
"#
    );
    let out = run(Command::new("python3").arg("-c").arg(&script));
    assert!(out.starts_with("ok "), "{out}");
    m.remount();
    let check = format!(
        "import sqlite3; c = sqlite3.connect({db:?}); print(c.execute('pragma integrity_check').fetchone()[0])"
    );
    assert_eq!(run(Command::new("python3").arg("-c").arg(&check)).trim(), "ok");
}
