//! `mount --io-uring`: FUSE requests served over a ring per CPU (src/fuse_uring.rs), and
//! /dev/fuse when the kernel does not allow it. Needs root (the daemon mounts itself, and
//! the fuse module's `enable_uring` is switched for the test and put back after).

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::mount::{status, MountFixture};
use common::{pattern, run, tool};

const KNOB: &str = "/sys/module/fuse/parameters/enable_uring";

/// Sets the kernel's `enable_uring` for the life of the guard, then puts it back; `None` if
/// it is not there or cannot be set (a read-only /sys) and is not already so.
struct Knob(String);

impl Knob {
    fn set(on: bool) -> Option<Knob> {
        let before = fs::read_to_string(KNOB).ok()?.trim().to_string();
        let want = if on { "Y" } else { "N" };
        (before == want || fs::write(KNOB, want).is_ok()).then_some(Knob(before))
    }
}

impl Drop for Knob {
    fn drop(&mut self) {
        let _ = fs::write(KNOB, &self.0);
    }
}

/// Every kind of request a mount serves, each checked by what it does.
fn workload(root: &Path) {
    let d = root.join("dir");
    fs::create_dir(&d).unwrap();
    let big = pattern(1, 3 << 20);
    let mut f = fs::File::create(d.join("big")).unwrap();
    for chunk in big.chunks(300_000) {
        f.write_all(chunk).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::read(d.join("big")).unwrap(), big);
    let f = fs::OpenOptions::new().read(true).write(true).open(d.join("big")).unwrap();
    f.write_all_at(b"in the middle", 1_000_000).unwrap();
    let mut got = [0u8; 13];
    f.read_exact_at(&mut got, 1_000_000).unwrap();
    assert_eq!(&got, b"in the middle");
    f.set_len(2 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 2 << 20);
    nix::fcntl::posix_fallocate(&f, 4 << 20, 4096).unwrap();
    assert_eq!(f.metadata().unwrap().len(), (4 << 20) + 4096);
    // Data up to 2 MiB, then a hole.
    assert_eq!(nix::unistd::lseek(&f, 0, nix::unistd::Whence::SeekData).unwrap(), 0);
    let hole = nix::unistd::lseek(&f, 0, nix::unistd::Whence::SeekHole).unwrap();
    assert_eq!(hole, 2 << 20);
    drop(f);
    for i in 0..300 {
        fs::write(d.join(format!("small-{i:03}")), format!("file {i}")).unwrap();
    }
    let mut names: Vec<String> =
        fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names.len(), 301);
    assert_eq!(fs::read_to_string(d.join("small-123")).unwrap(), "file 123");
    fs::set_permissions(d.join("small-001"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(d.join("small-001")).unwrap().mode() & 0o777, 0o640);
    std::os::unix::fs::chown(d.join("small-002"), Some(1234), Some(5678)).unwrap();
    let m = fs::metadata(d.join("small-002")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    let then = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    fs::File::options().write(true).open(d.join("small-003")).unwrap().set_modified(then).unwrap();
    assert_eq!(fs::metadata(d.join("small-003")).unwrap().mtime(), 1_000_000_000);
    std::os::unix::fs::symlink("small-004", d.join("link")).unwrap();
    assert_eq!(fs::read_link(d.join("link")).unwrap(), Path::new("small-004"));
    assert_eq!(fs::read_to_string(d.join("link")).unwrap(), "file 4");
    fs::hard_link(d.join("small-005"), d.join("hard")).unwrap();
    assert_eq!(fs::metadata(d.join("hard")).unwrap().nlink(), 2);
    fs::rename(d.join("small-006"), d.join("small-007")).unwrap();
    assert_eq!(fs::read_to_string(d.join("small-007")).unwrap(), "file 6");
    fs::remove_file(d.join("small-008")).unwrap();
    assert!(!d.join("small-008").exists());
    nix::unistd::mkfifo(&d.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert!(fs::symlink_metadata(d.join("fifo")).unwrap().file_type().is_fifo());
    xattr_roundtrip(&d.join("small-009"));
    let mut src = fs::File::open(d.join("big")).unwrap();
    let mut dst = fs::File::create(d.join("copy")).unwrap();
    std::io::copy(&mut src, &mut dst).unwrap(); // copy_file_range where it can
    dst.sync_all().unwrap();
    drop(dst);
    src.seek(SeekFrom::Start(0)).unwrap();
    let mut a = Vec::new();
    src.read_to_end(&mut a).unwrap();
    assert_eq!(fs::read(d.join("copy")).unwrap(), a);
    let e = d.join("empty");
    fs::create_dir(&e).unwrap();
    fs::remove_dir(&e).unwrap();
    let st = nix::sys::statvfs::statvfs(root).unwrap();
    assert!(st.blocks() > 0);
}

fn xattr_roundtrip(p: &Path) {
    let name = std::ffi::CString::new("user.colour").unwrap();
    let path = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let check = |r: isize| {
        assert!(r >= 0, "{}", std::io::Error::last_os_error());
        r as usize
    };
    let (mut buf, mut list) = ([0u8; 16], [0u8; 64]);
    // SAFETY (test): NUL-terminated strings and buffers valid for their stated lengths.
    unsafe {
        check(nix::libc::setxattr(path.as_ptr(), name.as_ptr(), b"blue".as_ptr().cast(), 4, 0) as isize);
        let n = check(nix::libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()));
        assert_eq!(&buf[..n], b"blue");
        let n = check(nix::libc::listxattr(path.as_ptr(), list.as_mut_ptr().cast(), list.len()));
        assert!(common::contains(&list[..n], b"user.colour"));
        check(nix::libc::removexattr(path.as_ptr(), name.as_ptr()) as isize);
        assert_eq!(nix::libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()), -1);
    }
}

/// Whether `p` has no `user.envelopefs-probe` xattr (one GETXATTR request, answered ENODATA).
fn xattr_missing(p: &Path) -> bool {
    let path = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new("user.envelopefs-probe").unwrap();
    // SAFETY (test): NUL-terminated strings; a size of 0 asks for the length only.
    let n = unsafe { nix::libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    n == -1 && std::io::Error::last_os_error().raw_os_error() == Some(nix::libc::ENODATA)
}

/// The CPUs in /sys/devices/system/cpu/`which`, as the rings count them.
fn cpu_list(which: &str) -> Vec<usize> {
    envelopefs::fuse_uring::cpu_list(which).unwrap()
}

/// What a tree looks like: per path, kind, mode, size and content digest.
fn manifest(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.is_dir() {
                stack.push(p.clone());
                String::new()
            } else if m.is_file() {
                let data = fs::read(&p).unwrap();
                format!("{:x}", data.iter().fold(0u64, |h, &b| h.wrapping_mul(1_099_511_628_211) ^ u64::from(b)))
            } else {
                String::new()
            };
            out.push(format!("{} {:o} {} {what}", p.strip_prefix(root).unwrap().display(), m.mode(), m.len()));
        }
    }
    out.sort();
    out
}

#[test]
fn a_mount_over_io_uring_serves_every_request_and_falls_back_to_dev_fuse_without_it() {
    assert!(nix::unistd::geteuid().is_root(), "io_uring mount tests need root (CI runs as root)");
    // (Guards before the mount: on a panic the mount goes first, then the switches.)
    let knob = Knob::set(true);
    let mut m = MountFixture::new(&[]);
    m.unmount();
    // A kernel without FUSE over io_uring, or a sandbox that refuses io_uring itself (a
    // seccomp policy): the flag must still mount, over /dev/fuse, and say why.
    let no_uring = match io_uring::IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::new(2) {
        Err(e) => Some(format!("io_uring itself is refused here ({e})")),
        Ok(_) if !Path::new(KNOB).exists() => {
            Some(format!("this kernel has no FUSE over io_uring ({KNOB} is missing)"))
        }
        Ok(_) if knob.is_none() => Some(format!("{KNOB} is off and cannot be switched on here")),
        Ok(_) => None,
    };
    if let Some(why) = no_uring {
        falls_back(&mut m, "--io-uring:");
        eprintln!("{why}: only the fallback to /dev/fuse was tested");
        return;
    }

    // What the rings need is tried before the kernel is asked for them: with io_uring
    // switched off system-wide, the mount serves over /dev/fuse (it would hang if the
    // kernel had been asked: it holds every request until the rings are registered).
    match Sysctl::set("2") {
        Some(_off) => falls_back(&mut m, "io_uring_disabled"),
        None => eprintln!("{SYSCTL} cannot be set here: io_uring switched off system-wide was not tried"),
    }
    // A set-up that fails after the kernel was asked sends the connection back to /dev/fuse.
    m.env.push(("ENVELOPEFS_TEST_BREAK_IO_URING".into(), "1".into()));
    falls_back(&mut m, "broken on purpose");
    m.env.pop();

    // Allowed: requests go over the rings, one per CPU.
    m.mount_with(&["--io-uring"]);
    let v = status(&m);
    assert_eq!(v["transport"]["kind"], "io_uring", "{v:#}");
    assert_eq!(v["transport"]["rings"].as_u64().unwrap() as usize, cpu_list("possible").len(), "{v:#}");
    workload(&m.mnt);
    let out = run(Command::new(tool("fsx")).args(["-N", "20000", "-S", "20261205"]).arg(m.p("fsx.file")));
    assert!(out.contains("A-OK") || out.is_empty(), "{out}");
    // Each CPU's requests go over that CPU's ring: a thread pinned to each online CPU in
    // turn asks PROBES times for an xattr the file does not have (one request each).
    const PROBES: u64 = 2000;
    let possible = cpu_list("possible");
    for cpu in cpu_list("online") {
        let before = status(&m)["transport"]["requests_per_ring"].clone();
        let file = m.p("dir/small-010");
        std::thread::spawn(move || {
            let mut set = nix::sched::CpuSet::new();
            set.set(cpu).unwrap();
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
            for _ in 0..PROBES {
                let e = nix::sys::stat::lstat(&file).map(|_| ());
                assert!(e.is_ok());
                assert!(xattr_missing(&file));
            }
        })
        .join()
        .unwrap();
        let after = status(&m)["transport"]["requests_per_ring"].clone();
        let ring = possible.iter().position(|&c| c == cpu).unwrap();
        let served = after[ring].as_u64().unwrap() - before[ring].as_u64().unwrap();
        assert!(served >= PROBES, "CPU {cpu}: {served} requests over its ring, not {PROBES}: {before} -> {after}");
    }
    let text = String::from_utf8(m.run(&["status".as_ref(), m.mnt.as_os_str()]).stdout).unwrap();
    assert!(text.contains("io_uring"), "{text}");
    // The ring threads answered what they know themselves (src/fuse_native.rs): all but a
    // few of the requests (the rest went to their fuser sessions).
    let t = &status(&m)["transport"];
    let (native, all) = (t["answered_in_ring"].as_u64().unwrap(), t["requests"].as_u64().unwrap());
    assert!(native > all * 9 / 10 && native < all, "{t:#}");

    // Everything passed on to the sessions (the path every other request takes) serves the
    // same requests alike.
    m.unmount();
    m.env.push(("ENVELOPEFS_RING_PASS_ON".into(), "1".into()));
    m.mount_with(&["--io-uring"]);
    m.env.pop();
    fs::create_dir(m.p("passed-on")).unwrap();
    workload(&m.p("passed-on"));
    let t = &status(&m)["transport"];
    assert_eq!(t["kind"], "io_uring", "{t:#}");
    assert!(t["requests"].as_u64().unwrap() > 1000 && t["answered_in_ring"] == 0, "{t:#}");
    let seen = manifest(&m.mnt);

    // What it wrote reads the same over /dev/fuse.
    m.unmount();
    m.mount();
    assert_eq!(status(&m)["transport"]["kind"], "/dev/fuse");
    assert_eq!(manifest(&m.mnt), seen);

    // Refused by the kernel: the mount serves over /dev/fuse and says why.
    m.unmount();
    drop(knob);
    match Knob::set(false) {
        Some(_off) => falls_back(&mut m, "enable_uring"),
        None => eprintln!("{KNOB} cannot be switched off here: that refusal was not tried"),
    }
    m.mount();
    assert_eq!(manifest(&m.mnt), seen);
}

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

/// Sets `kernel.io_uring_disabled` for the life of the guard, then puts it back; `None` if
/// it is not there or cannot be set (a read-only /proc/sys).
struct Sysctl(String);

impl Sysctl {
    fn set(v: &str) -> Option<Sysctl> {
        let before = fs::read_to_string(SYSCTL).ok()?.trim().to_string();
        fs::write(SYSCTL, v).ok()?;
        Some(Sysctl(before))
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = fs::write(SYSCTL, &self.0);
    }
}

/// Mounts `m` with --io-uring expecting /dev/fuse instead, the reason (containing `why`)
/// told to the user and in `status`, and the mount serving (a write and a read, within 30 s:
/// a mount that holds its requests fails here instead of hanging the test); unmounts it.
fn falls_back(m: &mut MountFixture, why: &str) {
    let o = m.try_mount(&["--io-uring"]);
    common::mount::ok(&o);
    m.adopt();
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(said.contains("--io-uring:") && said.contains(why), "the user is told: {said}");
    let v = status(m);
    assert_eq!(v["transport"]["kind"], "/dev/fuse", "{v:#}");
    assert!(v["transport"]["io_uring_refused"].as_str().unwrap().contains(why), "{v:#}");
    let file = m.p("served-over-dev-fuse");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        fs::write(&file, b"still served").unwrap();
        tx.send(fs::read(&file).unwrap()).unwrap();
    });
    let got = rx.recv_timeout(std::time::Duration::from_secs(30));
    assert_eq!(got.as_deref(), Ok(&b"still served"[..]), "the mount does not serve ({why})");
    m.unmount();
}
