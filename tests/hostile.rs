//! A backing directory written by an attacker (docs/SECURITY.md, "Backing storage you do not
//! trust"): each test plants something in a real volume and runs the real commands against
//! it, as root, checking that nothing outside CIPHERDIR is loaded, touched or hung on.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::mpsc;
use std::time::Duration;

use common::mount::{evfs_env, ok, MountFixture};
use envelopefs::format::VolumeHeader;

/// The one encrypted entry in the volume's root directory (a test made exactly one).
fn only_entry(cipher: &Path) -> PathBuf {
    let entries: Vec<PathBuf> = fs::read_dir(cipher.join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != ".dirid")
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0].clone()
}

fn rewrite_header(cipher: &Path, edit: impl FnOnce(&mut VolumeHeader)) {
    let path = cipher.join("envelopefs.conf");
    let mut h = VolumeHeader::decode(&fs::read(&path).unwrap()).unwrap();
    edit(&mut h);
    fs::write(&path, h.encode()).unwrap();
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

/// Runs `f` on another thread; fails the test if it has not returned within 20 s (a hang).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("{what}: hung (no answer in 20 s)"))
}

/// A shared library whose constructor writes `marker` when it is loaded.
fn evil_module(dir: &Path, marker: &Path) -> PathBuf {
    let src = dir.join("evil.c");
    fs::write(
        &src,
        format!(
            "#include <stdio.h>\n__attribute__((constructor)) static void evil(void) {{ FILE *f = fopen(\"{}\", \"w\"); if (f) fclose(f); }}\n",
            marker.display()
        ),
    )
    .unwrap();
    let so = dir.join("evil.so");
    let o = std::process::Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&src).output().unwrap();
    assert!(o.status.success(), "cc: {}", String::from_utf8_lossy(&o.stderr));
    so
}

#[test]
fn a_module_named_by_the_header_is_never_loaded() {
    let mut m = MountFixture::new(&[]);
    fs::write(m.p("f"), b"data").unwrap();
    m.unmount();
    let marker = m.tmp.path().join("marker");
    let so = evil_module(&m.cipher, &marker);
    let uri = format!("pkcs11:module={};token=t;object=k", so.display());
    rewrite_header(&m.cipher, |h| h.kms_uri = uri.clone());
    let pin = m.tmp.path().join("pin");
    fs::write(&pin, "1234\n").unwrap();
    let c = m.cipher.as_os_str();
    let cmds: Vec<Vec<&std::ffi::OsStr>> = vec![
        vec!["mount".as_ref(), c, m.mnt.as_os_str()],
        vec!["mount".as_ref(), c, m.mnt.as_os_str(), "--read-only".as_ref()],
        vec!["fsck".as_ref(), c],
        vec!["fsck".as_ref(), c, "--repair".as_ref()],
        vec!["rotate".as_ref(), c, "--kek".as_ref()],
        vec!["rotate".as_ref(), c, "--root".as_ref()],
        vec!["rotate".as_ref(), c, "--rekey".as_ref(), "f".as_ref()],
        vec!["shred".as_ref(), c, "--file".as_ref(), "f".as_ref(), "--yes".as_ref()],
        vec!["passwd".as_ref(), c],
    ];
    // Untrusted; and trusted by the operator's environment, but lying inside CIPHERDIR.
    for trust in [None, Some(uri.clone())] {
        let mut env = vec![("ENVELOPEFS_PIN_FILE".to_string(), pin.clone().into_os_string())];
        if let Some(t) = &trust {
            env.push((envelopefs::kms::ROOTS_ENV.into(), t.into()));
        }
        for args in &cmds {
            let o = evfs_env(args, &env);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_ne!(code(&o), Some(0), "{args:?} (trust {trust:?}) succeeded");
            // passwd has nothing to do on a non-keystore root, and says so.
            let expected = if args[0] == "passwd" { "local: keystores only" } else { "untrusted root" };
            assert!(err.contains(expected), "{args:?} (trust {trust:?}): {err}");
            assert!(!marker.exists(), "{args:?} (trust {trust:?}) loaded the module");
        }
        let o = evfs_env(&["status".as_ref(), c], &env);
        ok(&o);
    }
    // A volume shred needs no root: it destroys the wrapped keys and loads nothing.
    let o = evfs_env(&["shred".as_ref(), c, "--volume".as_ref(), "--yes".as_ref()], &[]);
    ok(&o);
    assert!(!marker.exists(), "shred --volume loaded the module");
    m.disown();
}

#[test]
fn an_unnamed_root_is_refused_before_any_kms_call() {
    let m = MountFixture::new(&[]);
    let mut m = m;
    m.unmount();
    rewrite_header(&m.cipher, |h| h.kms_uri = "aws-kms:arn:aws:kms:us-east-1:999999999999:key/attacker".into());
    let log = m.tmp.path().join("audit.log");
    let o = evfs_env(
        &["fsck".as_ref(), m.cipher.as_os_str(), "--audit-log".as_ref(), log.as_os_str()],
        &[("AWS_ENDPOINT_URL_KMS".into(), "http://127.0.0.1:9".into())],
    );
    assert_eq!(code(&o), Some(23), "{}", String::from_utf8_lossy(&o.stderr));
    let audit = fs::read_to_string(&log).unwrap_or_default();
    assert!(audit.trim().is_empty(), "a KMS call was made: {audit}");
}

#[test]
fn a_header_naming_another_keystore_of_the_volume_does_not_open() {
    // The root reference is bound into the header's authentication: pointing the header at
    // another name (here a copy of the same keystore, so the KMS call itself succeeds) is an
    // integrity error, not a quiet switch of roots.
    let mut m = MountFixture::new(&[]);
    m.unmount();
    fs::copy(m.cipher.join("keystore"), m.cipher.join("keystore2")).unwrap();
    rewrite_header(&m.cipher, |h| h.kms_uri = "local:keystore2".into());
    let o = m.run(&["fsck".as_ref(), m.cipher.as_os_str(), "--passfile".as_ref(), m.passfile.as_os_str()]);
    assert_eq!(code(&o), Some(14), "{}", String::from_utf8_lossy(&o.stderr));
    rewrite_header(&m.cipher, |h| h.kms_uri = "local:keystore".into());
    m.mount();
}

#[test]
fn a_trash_symlink_is_never_followed() {
    let mut m = MountFixture::new(&[]);
    m.unmount();
    let victim = m.tmp.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("precious"), b"keep me").unwrap();
    let _ = fs::remove_dir_all(m.cipher.join("trash"));
    symlink(&victim, m.cipher.join("trash")).unwrap();
    m.mount(); // a read-write mount empties leftovers of the trash
    fs::write(m.p("f"), b"x").unwrap();
    fs::remove_file(m.p("f")).unwrap(); // unlinked files go through the trash
    fs::create_dir(m.p("d")).unwrap();
    fs::remove_dir(m.p("d")).unwrap();
    m.unmount();
    assert_eq!(fs::read(victim.join("precious")).unwrap(), b"keep me");
    assert_eq!(fs::read_dir(&victim).unwrap().count(), 1, "nothing was moved outside the volume");
    assert!(fs::symlink_metadata(m.cipher.join("trash")).unwrap().file_type().is_symlink(), "left as planted");
}

#[test]
fn planted_temporary_lock_and_keystore_names_overwrite_nothing_outside() {
    let mut m = MountFixture::new(&[]);
    m.unmount();
    let victim = m.tmp.path().join("victim");
    fs::write(&victim, b"keep me").unwrap();
    for name in ["envelopefs.conf.tmp", "keystore.tmp", ".envelopefs.conf.tmp", "keystore.next.tmp"] {
        symlink(&victim, m.cipher.join(name)).unwrap();
    }
    let c = m.cipher.as_os_str();
    let pf = m.passfile.as_os_str();
    ok(&m.run(&["rotate".as_ref(), c, "--kek".as_ref(), "--passfile".as_ref(), pf]));
    ok(&m.run(&["rotate".as_ref(), c, "--root".as_ref(), "--passfile".as_ref(), pf]));
    let new_pass = m.tmp.path().join("newpass");
    fs::write(&new_pass, "mount test passphrase\n").unwrap();
    ok(&m.run(&["passwd".as_ref(), c, "--passfile".as_ref(), pf, "--new-passfile".as_ref(), new_pass.as_os_str()]));
    assert_eq!(fs::read(&victim).unwrap(), b"keep me");
    // A symlinked lock file: the mount refuses with a clear error, and creates nothing.
    let target = m.tmp.path().join("made-by-lock");
    symlink(&target, m.cipher.join(".envelopefs.lock")).unwrap_or_else(|_| {
        fs::remove_file(m.cipher.join(".envelopefs.lock")).unwrap();
        symlink(&target, m.cipher.join(".envelopefs.lock")).unwrap();
    });
    let o = m.try_mount(&[]);
    assert_ne!(code(&o), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("lock"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!target.exists(), "the lock was taken through the symlink");
    fs::remove_file(m.cipher.join(".envelopefs.lock")).unwrap();
    // A symlinked keystore is never read (nor overwritten by a shred).
    fs::rename(m.cipher.join("keystore"), m.tmp.path().join("moved-keystore")).unwrap();
    symlink(&victim, m.cipher.join("keystore")).unwrap();
    let o = m.run(&["fsck".as_ref(), c, "--passfile".as_ref(), pf]);
    assert_eq!(code(&o), Some(14), "{}", String::from_utf8_lossy(&o.stderr));
    ok(&m.run(&["shred".as_ref(), c, "--volume".as_ref(), "--yes".as_ref()]));
    assert_eq!(fs::read(&victim).unwrap(), b"keep me");
}

#[test]
fn special_files_through_the_mount_never_hang_the_daemon() {
    let m = MountFixture::new(&[]);
    let mnt = m.mnt.clone();
    bounded("fifo and socket operations", move || {
        let p = |n: &str| mnt.join(n);
        nix::unistd::mkfifo(&p("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        nix::unistd::mkfifo(&p("fifo2"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(p("sock")).unwrap();
        nix::sys::stat::mknod(
            &p("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        for n in ["fifo", "sock", "null"] {
            fs::rename(p(n), p(&format!("{n}.a"))).unwrap(); // plain rename(2)
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &p(&format!("{n}.a")),
                nix::fcntl::AT_FDCWD,
                &p(n),
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            )
            .unwrap();
            fs::set_permissions(p(n), fs::Permissions::from_mode(0o600)).unwrap();
            fs::hard_link(p(n), p(&format!("{n}.link"))).unwrap();
            fs::remove_file(p(&format!("{n}.link"))).unwrap();
            assert!(nix::unistd::truncate(&p(n), 0).is_err(), "{n}: truncate of a special file");
        }
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &p("fifo"),
            nix::fcntl::AT_FDCWD,
            &p("fifo2"),
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
        .unwrap();
        fs::rename(p("fifo"), p("fifo2")).unwrap(); // replaces a FIFO
        for n in ["fifo2", "sock", "null", "fifo.a"] {
            let _ = fs::remove_file(p(n));
        }
        fs::write(p("still"), b"served").unwrap();
        assert_eq!(fs::read(p("still")).unwrap(), b"served");
    });
}

#[test]
fn a_fifo_planted_where_a_data_file_belongs_is_an_error_not_a_hang() {
    let mut m = MountFixture::new(&[]);
    fs::write(m.p("f"), b"data").unwrap();
    m.unmount();
    let backing = only_entry(&m.cipher);
    fs::remove_file(&backing).unwrap();
    nix::unistd::mkfifo(&backing, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    m.mount();
    let mnt = m.mnt.clone();
    bounded("open, rename and unlink of a planted FIFO", move || {
        // The entry shows as what the backing tree holds (a FIFO): opened by the kernel as
        // a pipe, never by the daemon; listing it with attributes, renaming and removing it
        // must not open it either (tests/open_ahead.rs plants one where the daemon reads
        // ahead, on a disk).
        let listed: Vec<_> = fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().metadata().unwrap().file_type()).collect();
        assert!(listed.iter().any(std::os::unix::fs::FileTypeExt::is_fifo), "{listed:?}");
        let _ = fs::symlink_metadata(mnt.join("f")).unwrap();
        fs::rename(mnt.join("f"), mnt.join("g")).unwrap();
        fs::remove_file(mnt.join("g")).unwrap();
        fs::write(mnt.join("h"), b"ok").unwrap();
    });
}

#[test]
fn chmod_through_the_mount_never_follows_a_backing_symlink() {
    let m = MountFixture::new(&[]);
    fs::write(m.p("f"), b"data").unwrap();
    let before = fs::metadata(m.p("f")).unwrap();
    assert!(before.is_file()); // the kernel now holds f's attributes as a regular file
    let victim = m.tmp.path().join("victim");
    fs::write(&victim, b"keep").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
    let backing = only_entry(&m.cipher);
    fs::remove_file(&backing).unwrap();
    symlink(&victim, &backing).unwrap();
    let _ = bounded("chmod", {
        let f = m.p("f");
        move || fs::set_permissions(f, fs::Permissions::from_mode(0o666))
    });
    assert_eq!(fs::metadata(&victim).unwrap().mode() & 0o7777, 0o644, "chmod followed the planted symlink");
    fs::remove_file(&backing).unwrap();
}

#[test]
fn shred_file_refuses_what_it_cannot_destroy_and_verifies_what_it_did() {
    let mut m = MountFixture::new(&[]);
    fs::write(m.p("a"), vec![7u8; 100_000]).unwrap();
    fs::hard_link(m.p("a"), m.p("b")).unwrap();
    fs::write(m.p("open"), b"in use").unwrap();
    let held = fs::File::open(m.p("open")).unwrap();
    let c = m.cipher.clone().into_os_string();
    let shred = |m: &MountFixture, files: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec!["shred".as_ref(), &c, "--yes".as_ref(), "--file".as_ref()];
        args.extend(files.iter().map(std::ffi::OsStr::new));
        args.extend(["--passfile".as_ref(), m.passfile.as_os_str()]);
        m.run(&args)
    };
    // Mounted: one link of two, and a file held open, are refused; nothing is deleted.
    let o = shred(&m, &["a"]);
    assert_ne!(code(&o), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("hard links"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = shred(&m, &["open"]);
    assert_eq!(code(&o), Some(19), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(m.p("a").exists() && m.p("b").exists() && m.p("open").exists(), "nothing deleted");
    drop(held);
    let store = envelopefs::store::Store::open(&m.cipher.join("meta.db")).unwrap();
    // The close's RELEASE goes in the background and the record with the next group commit:
    // waited for, not raced.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.counts().unwrap().0 < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(store.counts().unwrap().0, 2, "two files (a = b, and open) with records");
    let o = shred(&m, &["a", "b", "open"]);
    ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Shredded 2 file(s) (3 name(s))") && out.contains("none is left"), "{out}");
    assert!(!m.p("a").exists() && !m.p("b").exists() && !m.p("open").exists());
    // They were the volume's only files: no record and no wrapped DEK may be left.
    assert_eq!(store.counts().unwrap(), (0, 0), "a record or wrapped DEK of a shredded file survived");
    // Unmounted: the same rules.
    fs::write(m.p("c"), b"c").unwrap();
    fs::hard_link(m.p("c"), m.p("d")).unwrap();
    m.unmount();
    let o = shred(&m, &["c"]);
    assert_ne!(code(&o), Some(0));
    ok(&shred(&m, &["c", "d"]));
    m.mount();
    assert!(!m.p("c").exists() && !m.p("d").exists());
}

#[test]
fn a_spoofed_volume_id_reaches_no_other_volumes_daemon() {
    let b = MountFixture::new(&[]);
    fs::write(b.p("f"), b"B's data").unwrap();
    let b_id = VolumeHeader::decode(&fs::read(b.cipher.join("envelopefs.conf")).unwrap()).unwrap().volume_id;
    let a = common::scratch();
    let a_dir = a.path().join("a");
    ok(&evfs_env(&["init".as_ref(), a_dir.as_os_str(), "--passfile".as_ref(), b.passfile.as_os_str()], &[]));
    rewrite_header(&a_dir, |h| h.volume_id = b_id);
    let o = evfs_env(&["shred".as_ref(), a_dir.as_os_str(), "--volume".as_ref(), "--yes".as_ref()], &[]);
    ok(&o);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("unmounting"), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(fs::read(b.p("f")).unwrap(), b"B's data", "B is still mounted and readable");
    let hb = VolumeHeader::decode(&fs::read(b.cipher.join("envelopefs.conf")).unwrap()).unwrap();
    assert!(!hb.is_shredded());
}

#[test]
fn a_directory_inside_the_tree_replaced_by_a_symlink_is_refused_not_followed() {
    let m = MountFixture::new(&[]);
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/f"), b"inside").unwrap();
    assert_eq!(fs::read(m.p("d/f")).unwrap(), b"inside"); // the daemon now knows d's id
                                                          // While mounted, the attacker moves the directory out of the volume and leaves a
                                                          // symlink to it in its place.
    let backing = only_entry(&m.cipher);
    let outside = m.tmp.path().join("outside");
    fs::rename(&backing, &outside).unwrap();
    symlink(&outside, &backing).unwrap();
    let before: Vec<_> = fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(fs::read(m.p("d/f")).is_err(), "read through a planted symlink");
    assert!(fs::write(m.p("d/g"), b"x").is_err(), "create through a planted symlink");
    assert!(fs::remove_file(m.p("d/f")).is_err(), "unlink through a planted symlink");
    let after: Vec<_> = fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "nothing outside the volume was created or removed");
    fs::write(m.p("still"), b"served").unwrap();
}

#[test]
fn a_directory_swapped_for_a_file_or_a_symlink_while_open_is_gone_for_its_reader() {
    let m = MountFixture::new(&[]);
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/f"), b"inside").unwrap();
    let backing = only_entry(&m.cipher);
    let aside = m.tmp.path().join("aside");
    for planted in ["a file", "a symlink"] {
        // Opened (the kernel asks for nothing yet), then swapped by a writer of CIPHERDIR
        // before the first read of its entries.
        let mut listing = fs::read_dir(m.p("d")).unwrap();
        fs::rename(&backing, &aside).unwrap();
        match planted {
            "a file" => fs::write(&backing, b"planted").unwrap(),
            _ => symlink(&aside, &backing).unwrap(),
        }
        // ENOENT, as for a directory removed while open, which the C library reads as the
        // end of the listing (POSIX); not ENOTDIR or EIO, and nothing of what was planted.
        assert!(listing.next().is_none(), "{planted}: the directory is gone for its reader");
        fs::remove_file(&backing).unwrap();
        fs::rename(&aside, &backing).unwrap();
    }
    assert_eq!(fs::read(m.p("d/f")).unwrap(), b"inside");
}

/// Whether `dir` and everything above it is root-owned and writable by nobody else.
fn root_owned_chain(dir: &Path) -> bool {
    dir.ancestors().all(|p| fs::metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0))
}

#[test]
fn a_trusted_module_loads_only_if_nobody_but_root_could_have_written_it() {
    let mut m = MountFixture::new(&[]);
    m.unmount();
    let dir = tempfile::Builder::new().prefix("evfs-module-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let marker = m.tmp.path().join("marker");
    let so = evil_module(dir.path(), &marker);
    let uri = format!("pkcs11:module={};token=t;object=k", so.display());
    rewrite_header(&m.cipher, |h| h.kms_uri = uri.clone());
    let fsck = |env: &[(String, std::ffi::OsString)]| evfs_env(&["fsck".as_ref(), m.cipher.as_os_str()], env);
    let trusted = vec![(envelopefs::kms::ROOTS_ENV.to_string(), std::ffi::OsString::from(&uri))];
    // Untrusted, with no PIN source at all: refused before any PIN is asked for.
    let o = fsck(&[]);
    assert_eq!(code(&o), Some(23), "{}", String::from_utf8_lossy(&o.stderr));
    // Trusted, but owned by another user, or writable by its group: not loaded.
    std::os::unix::fs::chown(&so, Some(65534), None).unwrap();
    let o = fsck(&trusted);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not root"), "{}", String::from_utf8_lossy(&o.stderr));
    std::os::unix::fs::chown(&so, Some(0), None).unwrap();
    fs::set_permissions(&so, fs::Permissions::from_mode(0o775)).unwrap();
    let o = fsck(&trusted);
    assert!(String::from_utf8_lossy(&o.stderr).contains("writable by group"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!marker.exists(), "a module someone else could write was loaded");
    // The control: root-owned, 0755, trusted — the rules above are what kept it out.
    fs::set_permissions(&so, fs::Permissions::from_mode(0o755)).unwrap();
    if root_owned_chain(dir.path()) {
        let _ = fsck(&trusted);
        assert!(marker.exists(), "a trusted, root-owned module is loaded (so the refusals above were the rules')");
    }
}

#[test]
fn shred_volume_destroys_copies_a_crash_left_behind() {
    let mut m = MountFixture::new(&[]);
    m.unmount();
    // What a crash during a header or keystore replacement leaves: full copies under
    // temporary names (a wrapped KEK among them).
    let header = fs::read(m.cipher.join("envelopefs.conf")).unwrap();
    fs::write(m.cipher.join(".envelopefs.conf.tmp-0123456789abcdef01234567"), &header).unwrap();
    fs::write(m.cipher.join("envelopefs.conf.tmp"), &header).unwrap();
    ok(&m.run(&["shred".as_ref(), m.cipher.as_os_str(), "--volume".as_ref(), "--yes".as_ref()]));
    let left: Vec<_> = fs::read_dir(&m.cipher).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().contains(".tmp")), "{left:?}");
}

/// Runs the binary with `args` under `timeout 30`, in `env`; a hang fails the test.
fn bounded_run(args: &[&std::ffi::OsStr], env: &[(String, std::ffi::OsString)]) -> Output {
    let mut c = std::process::Command::new("timeout");
    c.arg("30").arg(env!("CARGO_BIN_EXE_envelopefs")).args(args).env_remove("ENVELOPEFS_PASSFILE");
    c.stdin(std::process::Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert_ne!(o.status.code(), Some(124), "{args:?} hung");
    o
}

/// Every byte under `p` (a file or a directory tree), to compare before and after.
fn snapshot(p: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    if p.is_dir() {
        for f in common::all_files(p) {
            let bytes = fs::read(&f).unwrap_or_default();
            out.push((f, bytes));
        }
    } else {
        out.push((p.to_path_buf(), fs::read(p).unwrap_or_default()));
    }
    out
}

#[test]
fn every_command_against_every_fixed_name_planted_as_a_symlink_fifo_or_socket() {
    for name in ["envelopefs.conf", "keystore", "meta.db", "data", "trash", ".envelopefs.lock"] {
        for kind in ["symlink", "fifo", "socket"] {
            let mut m = MountFixture::new(&[]);
            fs::write(m.p("f"), b"data").unwrap();
            fs::write(m.p("g"), b"more").unwrap();
            m.unmount();
            let target = m.cipher.join(name);
            let outside = m.tmp.path().join(format!("outside-{}", name.trim_start_matches('.')));
            match fs::symlink_metadata(&target) {
                Ok(md) if md.is_dir() => {
                    common::copy_tree(&target, &outside);
                    fs::remove_dir_all(&target).unwrap();
                }
                Ok(_) => {
                    fs::copy(&target, &outside).unwrap();
                    fs::remove_file(&target).unwrap();
                }
                // trash exists only while in use: an outside directory with a file in it.
                Err(_) => {
                    fs::create_dir(&outside).unwrap();
                    fs::write(outside.join("precious"), b"keep").unwrap();
                }
            }
            let _listener;
            match kind {
                "symlink" => symlink(&outside, &target).unwrap(),
                "fifo" => nix::unistd::mkfifo(&target, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap(),
                _ => _listener = std::os::unix::net::UnixListener::bind(&target).unwrap(),
            }
            let before = snapshot(&outside);
            let c = m.cipher.as_os_str();
            let pf = m.passfile.as_os_str();
            let new_pass = m.tmp.path().join("newpass");
            fs::write(&new_pass, "mount test passphrase\n").unwrap();
            let pass: [&std::ffi::OsStr; 2] = ["--passfile".as_ref(), pf];
            let cmds: Vec<Vec<&std::ffi::OsStr>> = vec![
                vec!["status".as_ref(), c],
                vec!["fsck".as_ref(), c],
                vec!["fsck".as_ref(), c, "--repair".as_ref()],
                vec!["mount".as_ref(), c, m.mnt.as_os_str(), "--read-only".as_ref()],
                vec!["umount".as_ref(), m.mnt.as_os_str()],
                vec!["mount".as_ref(), c, m.mnt.as_os_str()],
                vec!["umount".as_ref(), m.mnt.as_os_str()],
                vec!["rotate".as_ref(), c, "--kek".as_ref()],
                vec!["rotate".as_ref(), c, "--root".as_ref()],
                vec!["rotate".as_ref(), c, "--rekey".as_ref(), "f".as_ref()],
                vec!["shred".as_ref(), c, "--file".as_ref(), "g".as_ref(), "--yes".as_ref()],
                vec!["passwd".as_ref(), c, "--new-passfile".as_ref(), new_pass.as_os_str()],
                vec!["shred".as_ref(), c, "--volume".as_ref(), "--yes".as_ref()],
            ];
            for args in cmds {
                let mut full = args.clone();
                if !matches!(args[0].to_str(), Some("status" | "umount" | "shred")) || args.len() == 5 {
                    full.extend(pass);
                }
                let o = bounded_run(&full, &[]);
                let err = String::from_utf8_lossy(&o.stderr);
                // A clear error is one line naming the cause; or the command did its job.
                assert!(
                    o.status.success() || err.trim_end().lines().count() >= 1,
                    "{name} as a {kind}: {args:?} failed without a word"
                );
                assert_eq!(snapshot(&outside), before, "{name} as a {kind}: {args:?} touched what lies outside");
                let _ = std::process::Command::new("fusermount3")
                    .arg("-uz")
                    .arg(&m.mnt)
                    .stderr(std::process::Stdio::null())
                    .status();
            }
            m.disown();
        }
    }
}

#[test]
fn a_file_swapped_in_under_a_name_during_chown_and_chmod_gets_neither() {
    // Root's tar sets owner and then mode 4755 through the mount; whoever can write CIPHERDIR
    // swaps a file of its own in under the entry's backing name, over and over. Whatever the
    // daemon checked is what it changes: the planted file never becomes setuid.
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let m = MountFixture::new(&[]);
    fs::write(m.p("f"), b"data").unwrap();
    let backing = only_entry(&m.cipher);
    let planted = backing.with_file_name("planted");
    fs::write(&planted, b"#!/bin/sh\nid\n").unwrap();
    fs::set_permissions(&planted, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&planted, Some(1234), Some(1234)).unwrap();
    let planted_ino = fs::metadata(&planted).unwrap().ino();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = std::thread::spawn({
        let (stop, a, b) = (stop.clone(), backing.clone(), planted.clone());
        move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                renameat2(AT_FDCWD, &a, AT_FDCWD, &b, RenameFlags::RENAME_EXCHANGE).unwrap();
                swaps += 1;
            }
            swaps
        }
    });
    let (f, mut changed) = (m.p("f"), 0);
    for _ in 0..2000 {
        // Errors are expected (the entry is the planted file half of the time); what matters
        // is where the changes land.
        changed += std::os::unix::fs::chown(&f, Some(0), Some(4321)).is_ok() as u32;
        changed += fs::set_permissions(&f, fs::Permissions::from_mode(0o4755)).is_ok() as u32;
        let _ = fs::set_permissions(&f, fs::Permissions::from_mode(0o644));
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    let now = [&backing, &planted].map(|p| fs::symlink_metadata(p).unwrap());
    let planted_now = now.iter().find(|s| s.ino() == planted_ino).expect("the planted file is still there");
    assert_eq!(planted_now.mode() & 0o7777, 0o755, "a chmod meant for f landed on the planted file");
    assert_eq!((planted_now.uid(), planted_now.gid()), (1234, 1234), "a chown meant for f landed on the planted file");
    assert!(swaps > 100 && changed > 0, "the race ran ({swaps} swaps, {changed} changes went through)");
}

#[test]
fn a_tree_renamed_to_a_hidden_name_is_reported_not_deleted_by_fsck_repair() {
    // `.evfs-new-*` is where the daemon makes directories, symlinks and nodes before they
    // take their names; `fsck --repair` (and a recovery) removes what a crash left there. A
    // writer of CIPHERDIR can rename any directory tree to such a name: it is reported and
    // kept, never removed recursively by a repair running as root. What a mkdir leaves (a
    // directory holding its `.dirid`) and a leftover FIFO are removed.
    let mut m = MountFixture::new(&[]);
    fs::create_dir(m.p("kept")).unwrap();
    fs::write(m.p("kept/file"), b"not the repair's to delete").unwrap();
    fs::create_dir(m.p("made")).unwrap();
    m.unmount();
    let data = m.cipher.join("data");
    let backing_of = |plain_dir: &str| {
        // The one backing directory holding `plain_dir`'s entries: the one with a `.dirid` and
        // that many entries besides.
        let want = usize::from(plain_dir == "kept");
        fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.is_dir() && fs::read_dir(p).unwrap().count() == want + 1)
            .unwrap()
    };
    let planted_tree = data.join(".evfs-new-00000000000000aa");
    fs::rename(backing_of("kept"), &planted_tree).unwrap();
    let half_made = data.join(".evfs-new-00000000000000bb");
    fs::rename(backing_of("made"), &half_made).unwrap();
    let fifo = data.join(".evfs-new-00000000000000cc");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let o = m.run(&[
        "fsck".as_ref(),
        m.cipher.as_os_str(),
        "--passfile".as_ref(),
        m.passfile.as_os_str(),
        "--repair".as_ref(),
    ]);
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("it holds entries no mkdir of the daemon put there"), "{out}");
    assert_eq!(fs::read_dir(&planted_tree).unwrap().count(), 2, "the planted tree is kept whole: {out}");
    assert!(!half_made.exists() && !fifo.exists(), "what a mkdir or a node left is removed: {out}");
}
