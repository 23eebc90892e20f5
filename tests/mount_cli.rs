//! What a user sees when mounting goes wrong, and the ways a mount ends.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::mount::{evfs, MountFixture};

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// The error message: one line on stderr.
fn one_line(o: &std::process::Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(e.trim_end().lines().count(), 1, "expected one line, got: {e:?}");
    e
}

fn mounted(mnt: &Path) -> bool {
    let mnt = mnt.canonicalize().unwrap();
    fs::read_to_string("/proc/self/mountinfo").unwrap().lines().any(|l| l.split(' ').nth(4) == mnt.to_str())
}

#[test]
fn mount_errors_are_one_clear_line_with_documented_codes() {
    let mut m = MountFixture::new(&[]);
    m.unmount();

    let wrong = m.tmp.path().join("wrong");
    fs::write(&wrong, "not the passphrase\n").unwrap();
    let o =
        evfs(&["mount".as_ref(), m.cipher.as_os_str(), m.mnt.as_os_str(), "--passfile".as_ref(), wrong.as_os_str()]);
    assert_eq!(code(&o), 10);
    assert!(one_line(&o).contains("wrong passphrase"));
    assert!(!mounted(&m.mnt));

    let missing = m.tmp.path().join("no-such-volume");
    let o = evfs(&[
        "mount".as_ref(),
        missing.as_os_str(),
        m.mnt.as_os_str(),
        "--passfile".as_ref(),
        m.passfile.as_os_str(),
    ]);
    assert_eq!(code(&o), 11);
    assert!(one_line(&o).contains("no-such-volume"));

    let plain_dir = m.tmp.path().join("plain");
    fs::create_dir(&plain_dir).unwrap();
    let o = evfs(&[
        "mount".as_ref(),
        plain_dir.as_os_str(),
        m.mnt.as_os_str(),
        "--passfile".as_ref(),
        m.passfile.as_os_str(),
    ]);
    assert_eq!(code(&o), 11);
    assert!(one_line(&o).contains("not an envelopefs volume"));

    m.mount();
    let o = m.try_mount(&[]);
    assert_eq!(code(&o), 19, "busy mountpoint");
    assert!(one_line(&o).contains("busy"));
    let other = m.tmp.path().join("other-mnt");
    fs::create_dir(&other).unwrap();
    let o = evfs(&[
        "mount".as_ref(),
        m.cipher.as_os_str(),
        other.as_os_str(),
        "--passfile".as_ref(),
        m.passfile.as_os_str(),
    ]);
    assert_eq!(code(&o), 19, "volume already mounted elsewhere");
    assert!(one_line(&o).contains("already mounted"));
    assert!(!mounted(&other));
    m.unmount();

    let o = evfs(&[
        "mount".as_ref(),
        m.cipher.as_os_str(),
        m.tmp.path().join("nowhere").as_os_str(),
        "--passfile".as_ref(),
        m.passfile.as_os_str(),
    ]);
    assert_eq!(code(&o), 19);
    assert!(one_line(&o).contains("mountpoint does not exist"));

    let o = evfs(&["umount".as_ref(), m.mnt.as_os_str()]);
    assert_eq!(code(&o), 20, "not mounted");
    one_line(&o);
}

#[test]
fn missing_dev_fuse_is_a_clear_error() {
    // A private mount namespace whose /dev lacks fuse (so the volume lives outside /dev).
    let tmp = tempfile::tempdir().unwrap();
    let (cipher, mnt, pass) = (tmp.path().join("c"), tmp.path().join("m"), tmp.path().join("p"));
    fs::create_dir(&mnt).unwrap();
    fs::write(&pass, "pw\n").unwrap();
    let o = evfs(&["init".as_ref(), cipher.as_os_str(), "--passfile".as_ref(), pass.as_os_str()]);
    assert_eq!(code(&o), 0);
    let script = format!(
        "mount -t tmpfs tmpfs /dev && exec {} mount {} {} --passfile {}",
        env!("CARGO_BIN_EXE_envelopefs"),
        cipher.display(),
        mnt.display(),
        pass.display()
    );
    let o =
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    assert_eq!(code(&o), 21, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(one_line(&o).contains("/dev/fuse"));
}

/// The pid of the daemon serving `mnt`.
fn daemon_pid(mnt: &Path) -> i32 {
    let want = mnt.canonicalize().unwrap();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.iter().any(|a| *a == b"--daemon-child")
            && args.iter().any(|a| *a == want.as_os_str().as_encoded_bytes())
        {
            return pid;
        }
    }
    panic!("no daemon for {}", mnt.display());
}

#[test]
fn sigterm_unmounts_cleanly_and_data_survives() {
    let mut m = MountFixture::new(&[]);
    fs::write(m.p("kept"), b"written before SIGTERM").unwrap();
    let pid = daemon_pid(&m.mnt);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Uid:")), "daemon visible");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (mounted(&m.mnt) || Path::new(&format!("/proc/{pid}")).exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!mounted(&m.mnt), "still mounted after SIGTERM");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "daemon still running after SIGTERM");
    m.mount();
    assert_eq!(fs::read(m.p("kept")).unwrap(), b"written before SIGTERM");
}

#[test]
fn daemon_drops_its_core_limit() {
    // Start the daemon from a shell that allows unlimited core dumps; it must set its own to 0.
    let mut m = MountFixture::new(&[]);
    m.unmount();
    let script = format!(
        "ulimit -c unlimited && exec {} mount {} {} --passfile {}",
        env!("CARGO_BIN_EXE_envelopefs"),
        m.cipher.display(),
        m.mnt.display(),
        m.passfile.display()
    );
    let o = Command::new("bash").arg("-c").arg(&script).output().unwrap();
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    m.adopt();
    let pid = daemon_pid(&m.mnt);
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
}

#[test]
fn mount_t_fuse_envelopefs_through_the_helper() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test installs /sbin/mount.fuse.envelopefs and needs root (CI runs as root)");
    }
    struct Helper(&'static str);
    impl Drop for Helper {
        fn drop(&mut self) {
            let _ = fs::remove_file(self.0);
        }
    }
    let helper = Helper("/sbin/mount.fuse.envelopefs");
    let _ = fs::remove_file(helper.0);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_envelopefs"), helper.0).unwrap();
    let mut m = MountFixture::new(&[]);
    fs::write(m.p("f"), b"via fstab").unwrap();
    m.unmount();
    let opts = format!("passfile={},noauto,_netdev", m.passfile.display());
    let o = Command::new("mount")
        .args(["-t", "fuse.envelopefs"])
        .arg(&m.cipher)
        .arg(&m.mnt)
        .args(["-o", &opts])
        .output()
        .unwrap();
    assert!(o.status.success(), "mount -t fuse.envelopefs: {}", String::from_utf8_lossy(&o.stderr));
    m.adopt();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"via fstab");
    m.unmount();
    // And a line of an fstab (util-linux's `mount --fstab FILE MOUNTPOINT`), whose type
    // /proc/mounts then shows.
    let fstab = m.tmp.path().join("fstab");
    let line =
        format!("{} {} fuse.envelopefs {opts} 0 0\n", m.cipher.display(), m.mnt.canonicalize().unwrap().display());
    fs::write(&fstab, line).unwrap();
    let o = Command::new("mount").arg("--fstab").arg(&fstab).arg(m.mnt.canonicalize().unwrap()).output().unwrap();
    assert!(o.status.success(), "mount from an fstab line: {}", String::from_utf8_lossy(&o.stderr));
    m.adopt();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"via fstab");
    let mnt = m.mnt.canonicalize().unwrap();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info.lines().find(|l| l.split(' ').nth(4) == mnt.to_str()).unwrap();
    assert!(line.contains(" - fuse.envelopefs "), "{line}");
    m.unmount();
    drop(helper);
}

#[test]
fn plain_fusermount3_unmount_commits_and_ends_the_daemon() {
    let mut m = MountFixture::new(&[]);
    fs::write(m.p("kept"), b"written before fusermount3 -u").unwrap();
    let pid = daemon_pid(&m.mnt);
    let o = Command::new("fusermount3").arg("-u").arg(&m.mnt).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "daemon still running");
    m.mount();
    assert_eq!(fs::read(m.p("kept")).unwrap(), b"written before fusermount3 -u");
}

#[test]
fn status_of_a_mounted_volume_shows_one_kms_unwrap_however_much_io() {
    let mut m = MountFixture::new(&[]);
    let data = common::pattern(9, 8 << 20);
    for i in 0..8 {
        fs::write(m.p(&format!("f{i}")), &data).unwrap();
    }
    for i in 0..8 {
        assert!(fs::read(m.p(&format!("f{i}"))).unwrap() == data);
    }
    // FUSE sends release (which commits sizes and keys) asynchronously after close: wait.
    let status = |target: &Path| -> serde_json::Value {
        let o = evfs(&["status".as_ref(), target.as_os_str(), "--json".as_ref()]);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&m.mnt)["wrapped_deks"] != 64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for target in [&m.mnt, &m.cipher] {
        let o = evfs(&["status".as_ref(), target.as_os_str(), "--json".as_ref()]);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["mounted"], true);
        assert_eq!(v["kms_calls"]["unwrap"], 1, "{v:#}");
        assert_eq!(v["kms_calls"]["wrap"], 0);
        assert!(v["kek_age_seconds"].is_u64());
        assert_eq!(v["files"], 8);
        assert_eq!(v["wrapped_deks"], 64);
        assert!(v["dek_cache"]["entries"].as_u64().unwrap() > 0);
    }
    m.unmount();
    let o = evfs(&["status".as_ref(), m.cipher.as_os_str(), "--json".as_ref()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["mounted"], false);
    assert_eq!(v["wrapped_deks"], 64);
}

#[test]
fn a_mountpoint_with_a_space_tab_and_backslash_mounts_reports_and_unmounts() {
    // The mount table escapes these characters (`\040`, `\011`, `\134`): the daemon finds its
    // mount there to raise its readahead, `status` and `umount` find the volume through it
    // (and CIPHERDIR, with a space, as its source).
    use std::os::unix::fs::MetadataExt;
    let tmp = common::scratch();
    // (CIPHERDIR without a backslash: fusermount3, which mounts for users other than root,
    // drops backslashes from the mount's source.)
    let (cipher, mnt, pass) = (tmp.path().join("c dir"), tmp.path().join("m n\tt\\b"), tmp.path().join("pass"));
    fs::create_dir(&mnt).unwrap();
    fs::write(&pass, "mount test passphrase\n").unwrap();
    common::mount::ok(&evfs(&["init".as_ref(), cipher.as_os_str(), "--passfile".as_ref(), pass.as_os_str()]));
    let mut m = MountFixture::adopt_existing(cipher, mnt, pass);
    m.mount();
    fs::write(m.p("f"), b"through a mountpoint with a space").unwrap();
    let v = common::mount::status(&m);
    assert_eq!(v["mounted"], true, "{v:#}");
    assert_eq!(Path::new(v["mountpoint"].as_str().unwrap()), m.mnt.canonicalize().unwrap(), "{v:#}");
    if nix::unistd::geteuid().is_root() {
        let dev = fs::metadata(&m.mnt).unwrap().dev();
        let knob =
            format!("/sys/class/bdi/{}:{}/read_ahead_kb", nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
        assert_eq!(fs::read_to_string(&knob).unwrap().trim(), "1024", "{knob}: the readahead is raised");
    }
    m.unmount();
    let dev = |p: &Path| fs::metadata(p).unwrap().dev();
    assert_eq!(dev(&m.mnt), dev(tmp.path()), "unmounted: the mountpoint is its parent's file system again");
    m.mount();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"through a mountpoint with a space");
}
