//! What an operator sees of a mount (issue 20): its type is `fuse.envelopefs` in
//! `/proc/mounts` (so `findmnt -t` and `umount -t` find it), `status` reads as aligned text,
//! `mount --idle` unmounts a mount nobody uses, destroying its scratch as `umount` does,
//! while an open file keeps it, and long commands show their progress on a terminal only (or
//! as JSON lines when asked), and say how to resume when interrupted.

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
    for want in [
        "state      mounted on ",
        " s (daemon ",
        "hit rate ",
        " % (",
        "data       format 2, aes-256-gcm-siv, 1 MiB extents",
    ] {
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

/// A volume with `files` files of 40 KiB in 4 KiB extents (ten DEKs each), unmounted.
fn volume_with_files(files: usize) -> MountFixture {
    let mut m = MountFixture::new(&["--extent-size", "4K"]);
    fs::create_dir(m.p("d")).unwrap();
    for i in 0..files {
        fs::write(m.p(&format!("d/f{i}")), common::pattern(i as u64, 40 * 1024)).unwrap();
    }
    m.unmount();
    m
}

#[test]
fn progress_shows_on_a_terminal_only_or_as_json_and_an_interrupt_says_how_to_resume() {
    let m = volume_with_files(300);
    let c = m.cipher.to_str().unwrap().to_string();
    let pass = m.passfile.to_str().unwrap().to_string();
    let bin = env!("CARGO_BIN_EXE_envelopefs");

    // Not a terminal: nothing on stderr.
    let o = m.run(&["rotate".as_ref(), c.as_ref(), "--kek".as_ref(), "--passfile".as_ref(), pass.as_ref()]);
    ok(&o);
    assert!(o.stderr.is_empty(), "progress without a terminal: {:?}", String::from_utf8_lossy(&o.stderr));
    // Under a pseudo-terminal (script(1)): a bar with done and to do.
    let o = std::process::Command::new("script")
        .args(["-qec", &format!("{bin} rotate {c} --kek --passfile {pass}"), "/dev/null"])
        .env_remove("ENVELOPEFS_PASSFILE")
        .output()
        .unwrap();
    ok(&o);
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains("re-wrapping DEKs") && shown.contains("3,000/3,000"), "{shown}");
    // --quiet: nothing, even on a terminal.
    let o = std::process::Command::new("script")
        .args(["-qec", &format!("{bin} rotate {c} --kek --passfile {pass} --quiet"), "/dev/null"])
        .output()
        .unwrap();
    ok(&o);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("re-wrapping"), "{o:?}");
    // --progress-json: one object per line, the last of a stage finished and whole.
    let o = m.run(&[
        "rotate".as_ref(),
        c.as_ref(),
        "--kek".as_ref(),
        "--passfile".as_ref(),
        pass.as_ref(),
        "--progress-json".as_ref(),
    ]);
    ok(&o);
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stderr).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let last_deks = lines.iter().rfind(|v| v["stage"] == "re-wrapping DEKs").expect("a DEK stage");
    assert_eq!((last_deks["done"].as_u64(), last_deks["total"].as_u64()), (Some(3000), Some(3000)), "{lines:?}");
    assert_eq!(last_deks["finished"], true);
    assert!(lines.iter().all(|v| v["op"] == "rotate-kek"));

    // A rotation through a mount's daemon shows the daemon's progress.
    let mut m = m;
    m.mount();
    let o = std::process::Command::new("script")
        .args(["-qec", &format!("{bin} rotate {c} --kek --progress-json"), "/dev/null"])
        .output()
        .unwrap();
    ok(&o);
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains("in the mount's daemon") && shown.contains("\"done\":3000"), "{shown}");
    m.unmount();

    // Ctrl-C in the midst of making a directory a tenant: it says how to go on, ends by the
    // signal,
    // and going on finishes it.
    let tpass = m.tmp.path().join("t.pass");
    fs::write(&tpass, "tenant\n").unwrap();
    let given = format!("/d={}", tpass.display());
    let args = ["tenant", "add", &c, "d", "--passfile", &pass, "--tenant-passfile", &given, "--progress-json"];
    let mut child = std::process::Command::new(bin)
        .args(args)
        .env_remove("ENVELOPEFS_PASSFILE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0, "no progress came");
        if line.contains("\"copying entries") {
            break;
        }
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let status = child.wait().unwrap();
    // Ended by the signal, as if not caught (a shell shows 130 and stops a script there).
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(2), "{rest}");
    assert!(rest.contains("interrupted: run `envelopefs tenant add") && rest.contains("--abort"), "{rest}");
    let o = m.run(&args.iter().map(std::ffi::OsStr::new).collect::<Vec<_>>());
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("Finished the conversion cut short of /d"), "{o:?}");
}

/// A foreground mount started by a service manager (`Type=notify`) says when it is ready:
/// the datagram `READY=1` on `$NOTIFY_SOCKET`, sent once the mount serves.
#[test]
fn a_foreground_mount_tells_its_service_manager_when_it_is_ready() {
    let mut m = MountFixture::new(&[]);
    m.unmount();
    let sock_path = m.tmp.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_envelopefs"))
        .args(["mount", "--foreground"])
        .arg(&m.cipher)
        .arg(&m.mnt)
        .arg("--passfile")
        .arg(&m.passfile)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(mount_line(&m.mnt).is_some(), "ready means mounted");
    ok(&m.run(&["umount".as_ref(), m.mnt.as_os_str()]));
    assert!(daemon.wait().unwrap().success());
}
