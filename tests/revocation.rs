//! Revocation while mounted, against real roots: a SoftHSM2 token whose key object is
//! destroyed by another process, and a moto server (the AWS KMS API) that forgets its keys or
//! cannot be reached (through a loopback proxy the test switches off and on). The mount
//! re-checks its root every second here; what it must do is in `envelopefs::revocation`.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::kms::SoftHsm;
use common::mount::{ok, status, MountFixture};
use common::pattern;
use serde_json::Value;

/// "Key has been revoked".
const EKEYREVOKED: i32 = 128;

/// Polls the mount's status (by its daemon's control socket, so also once the mount is
/// detached: `cipherdir` names it) until `done` holds; at most 60 s.
fn wait_for(m: &MountFixture, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = m.run(&["status".as_ref(), m.cipher.as_os_str(), "--json".as_ref()]);
        if let Ok(v) = serde_json::from_slice::<Value>(&o.stdout) {
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "waited 60 s for {what}; status: {v:#}");
        }
        assert!(Instant::now() < deadline, "waited 60 s for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn state(v: &Value) -> &str {
    v["root_check"]["state"].as_str().unwrap_or("")
}

fn mounted_at(mnt: &Path) -> bool {
    let want = mnt.canonicalize().unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.to_str().unwrap()))
}

/// Closes `held` (the last file open on the detached mount) and waits for the daemon to go.
fn let_go(m: &mut MountFixture, held: fs::File, pid: u64) {
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the daemon of a dark mount stays after its last file closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    m.disown();
}

/// What every read through a dark mount gets.
fn assert_revoked(r: std::io::Result<usize>, what: &str) {
    match r {
        Err(e) => assert_eq!(e.raw_os_error(), Some(EKEYREVOKED), "{what}: {e}"),
        Ok(n) => panic!("{what}: a read of {n} bytes through a dark mount"),
    }
}

/// Destroys a key object in a process of its own (see `SoftHsm::destroy_in_helper`).
#[test]
#[ignore = "a helper process, run by another test"]
fn helper_destroy_key_object() {
    common::kms::destroy_key_object_from_env();
}

#[test]
fn an_hsm_root_destroyed_while_mounted_darkens_the_mount_and_its_scratch() {
    let hsm = SoftHsm::new();
    let uri = hsm.uri("vol-root");
    let mut env = hsm.env();
    env.push(("ENVELOPEFS_KMS_TIMEOUT".into(), "1".into()));
    let mut m = MountFixture::new_with(&["--kms", &uri, "--create-key"], env);
    m.unmount();
    m.mount_with(&["--recheck-root", "2s", "--scratch", "tmp"]);
    let data = pattern(7, 300_000);
    fs::write(m.p("keep"), &data).unwrap();
    fs::write(m.p("tmp/s"), b"scratch").unwrap();
    // Held open, and its pages in the kernel's cache.
    let mut held = fs::File::open(m.p("keep")).unwrap();
    let mut back = Vec::new();
    held.read_to_end(&mut back).unwrap();
    assert_eq!(back, data);
    // Written just before the revocation and still open, neither closed nor synced.
    let fresh = pattern(8, 70_000);
    let mut writer = fs::OpenOptions::new().write(true).create_new(true).open(m.p("fresh")).unwrap();
    writer.write_all(&fresh).unwrap();
    let before = wait_for(&m, "a first re-check", |v| v["root_check"]["checks"].as_u64() >= Some(1));
    assert_eq!(state(&before), "ok");
    assert_eq!(before["scratch"]["key"], "loaded");
    let pid = before["pid"].as_u64().unwrap();
    assert!(before["kms_calls"]["recheck"].as_u64() >= Some(1));

    // The token as it is now: put back later, it brings the key back.
    let token = hsm.dir.path().join("tokens");
    let saved = hsm.dir.path().join("tokens-saved");
    common::copy_tree(&token, &saved);
    hsm.destroy_in_helper("vol-root");
    // Served until the next check finds the key gone; then not even a cached page is.
    let revoked = Instant::now();
    let deadline = revoked + Duration::from_secs(60);
    while held.read_at(&mut [0u8; 4096], 0).is_ok() {
        assert!(Instant::now() < deadline, "a mount whose key object is gone still serves after 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Reported, not asserted (no timing assertions): the figure, interval 2 s.
    eprintln!("revocation to the first failing read, interval 2 s: {:?}", revoked.elapsed());

    let after = wait_for(&m, "the mount to go dark", |v| state(v) == "revoked");
    assert_eq!(after["root_check"]["cause"], "refused", "{after:#}");
    let answer = after["root_check"]["answer"].as_str().unwrap();
    assert!(answer.contains("no key object labelled \"vol-root\""), "{answer}");
    // Scratch destroyed as at unmount; the daemon's key ring is empty.
    assert_eq!(after["scratch"]["key"], "none", "{after:#}");
    assert!(after["scratch"]["dirs"].as_array().unwrap().is_empty(), "{after:#}");
    // The open file reads nothing, not even what the kernel had cached.
    assert_revoked(held.read_at(&mut [0u8; 4096], 0), "a cached page of a file held open");
    assert_revoked(held.read_at(&mut [0u8; 4096], 200_000), "an uncached page of a file held open");
    // Detached: the mountpoint is an empty directory again.
    assert!(!mounted_at(&m.mnt), "the dark mount is detached");
    assert!(!m.p("keep").exists());
    // A rotation asked of the dark daemon is refused, naming why.
    let o = m.run(&["rotate".as_ref(), m.cipher.as_os_str(), "--kek".as_ref()]);
    assert_eq!(o.status.code(), Some(24), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no longer vouches"), "{o:?}");
    assert_eq!(after["dek_cache"]["entries"], 0, "no DEK cipher left: {after:#}");
    assert_eq!(after["mounted"], false);
    let log = fs::read_to_string(after["log"].as_str().unwrap()).unwrap();
    assert!(log.contains("root-revoked") && log.contains("going dark"), "{log}");

    assert_revoked(writer.write(b"more"), "a write to a file held open");
    drop(writer);
    let_go(&mut m, held, pid);
    // The root is what is gone: no mount without it.
    let o = m.try_mount(&[]);
    assert_eq!(o.status.code(), Some(15), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no AES key labelled \"vol-root\""), "{o:?}");
    // With the key back, everything is there, also what was written but not yet closed
    // when the mount went dark, and fsck finds nothing wrong: nothing stored was damaged.
    fs::remove_dir_all(&token).unwrap();
    common::copy_tree(&saved, &token);
    let o = m.run(&["fsck".as_ref(), m.cipher.as_os_str()]);
    assert!(
        o.status.success(),
        "fsck after going dark: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    m.mount();
    assert_eq!(fs::read(m.p("keep")).unwrap(), data);
    assert_eq!(fs::read(m.p("fresh")).unwrap(), fresh, "accepted before going dark, kept");
    assert!(fs::read_dir(m.p("tmp")).map(|d| d.count() == 0).unwrap_or(true), "the scratch stays destroyed");
}

/// `Volume::go_dark` itself: what it committed stays, every request is refused from then on
/// (the errno and exit code of a revocation), and no key is left to read or write with, also
/// for a file whose DEK was cached; reopened with its root, the volume is intact.
#[test]
fn going_dark_refuses_every_request_and_leaves_no_key_to_read_or_write_with() {
    use envelopefs::fs::Volume;
    let tmp = common::scratch();
    let (cipher, pass) = (tmp.path().join("c"), tmp.path().join("pass"));
    fs::write(&pass, "dark volume passphrase\n").unwrap();
    ok(&common::mount::evfs(&["init".as_ref(), cipher.as_os_str(), "--passfile".as_ref(), pass.as_os_str()]));
    let vol = Volume::open(&cipher, &envelopefs::secret::Passphrase::new("dark volume passphrase").unwrap()).unwrap();
    let f = vol.create(Path::new("kept"), 0o600).unwrap();
    f.write_at(0, b"accepted before the revocation").unwrap();
    let mut buf = [0u8; 30];
    assert_eq!(f.read_at(0, &mut buf).unwrap(), 30, "its DEK is cached now");
    assert!(vol.keys().cache_stats().entries > 0);

    let report = vol.go_dark("test: revoked", &tmp.path().join("no-scratch"), false).unwrap();
    assert!(report.not_committed.is_empty(), "{:?}", report.not_committed);
    assert!(vol.go_dark("again", &tmp.path().join("no-scratch"), false).is_none(), "once");
    assert_eq!(vol.keys().cache_stats().entries, 0);
    assert!(f.read_at(0, &mut buf).is_err(), "no key left to read with");
    assert!(f.write_at(0, b"after").is_err(), "no key left to write with");
    let e = vol.op().expect_err("a request after going dark");
    assert_eq!((e.errno(), e.exit_code()), (EKEYREVOKED, 24), "{e}");
    assert!(e.to_string().contains("test: revoked"), "{e}");
    drop(f);
    drop(vol);
    // Nothing stored was damaged, and what was accepted is there.
    let vol = Volume::open(&cipher, &envelopefs::secret::Passphrase::new("dark volume passphrase").unwrap()).unwrap();
    let mut back = [0u8; 30];
    vol.open_file(Path::new("kept"), false).unwrap().read_at(0, &mut back).unwrap();
    assert_eq!(&back, b"accepted before the revocation");
    let report = vol.fsck(false).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn the_embedded_keystore_has_nothing_to_recheck_and_bad_durations_are_clear_errors() {
    let mut m = MountFixture::new(&[]);
    let v = status(&m);
    assert_eq!(state(&v), "off", "{v:#}");
    assert_eq!(v["kms_calls"]["recheck"], 0);
    m.unmount();
    let o = m.try_mount(&["--recheck-root", "soon"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a duration"), "{o:?}");
    for (args, says) in [
        (&["--recheck-root", "10ms"][..], "out of range"),
        (&["-o", "offline_grace=400d"][..], "out of range"),
        (&["-o", "recheck_root=often"][..], "is not a duration"),
    ] {
        let o = m.try_mount(args);
        assert!(!o.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(says), "{args:?}: {o:?}");
    }
    assert!(!mounted_at(&m.mnt), "nothing mounted on bad input");
    m.mount();
}

#[cfg(feature = "aws-kms")]
mod aws {
    use super::*;
    use common::kms::Moto;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    /// A loopback TCP proxy to the moto server that the test switches off (every connection,
    /// open or new, is cut: the KMS is unreachable) and on again, without losing moto's keys.
    struct Proxy {
        port: u16,
        up: Arc<AtomicBool>,
        open: Arc<Mutex<Vec<TcpStream>>>,
        stop: Arc<AtomicBool>,
    }

    impl Proxy {
        fn start(target: u16) -> Proxy {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            let port = l.local_addr().unwrap().port();
            let (up, open, stop) = (Arc::new(AtomicBool::new(true)), Arc::new(Mutex::new(Vec::new())), Arc::default());
            let (u, o, s): (Arc<AtomicBool>, Arc<Mutex<Vec<TcpStream>>>, Arc<AtomicBool>) =
                (up.clone(), open.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    let Ok((client, _)) = l.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    if !u.load(Ordering::SeqCst) {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    client.set_nonblocking(false).unwrap();
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                    o.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                    for (mut from, mut to) in
                        [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                    {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(Shutdown::Both);
                        });
                    }
                }
            });
            Proxy { port, up, open, stop }
        }

        fn down(&self) {
            self.up.store(false, Ordering::SeqCst);
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }

        fn up(&self) {
            self.up.store(true, Ordering::SeqCst);
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.down();
            self.stop.store(true, Ordering::SeqCst);
        }
    }

    /// A volume on a moto key, reached through `proxy`, mounted with `options`.
    fn mounted(moto: &Moto, proxy: Option<&Proxy>, options: &[&str]) -> MountFixture {
        let mut env = moto.env();
        if let Some(p) = proxy {
            env.retain(|(k, _)| k != "AWS_ENDPOINT_URL_KMS");
            env.push(("AWS_ENDPOINT_URL_KMS".into(), format!("http://127.0.0.1:{}", p.port).into()));
        }
        env.push(("ENVELOPEFS_KMS_TIMEOUT".into(), "0.5".into()));
        let mut m = MountFixture::new_with(&["--kms", "aws-kms:new", "--create-key"], env);
        m.unmount();
        m.mount_with(options);
        m
    }

    /// The server stops answering: the mount serves on through the grace, an answer in time
    /// changes nothing, and silence past the grace darkens it.
    #[test]
    fn an_unreachable_kms_is_served_through_the_grace_then_darkens_the_mount() {
        let moto = Moto::start();
        let proxy = Proxy::start(moto.port);
        // Through fstab-style options this time.
        let mut m = mounted(&moto, Some(&proxy), &["-o", "recheck_root=1s,offline_grace=10s"]);
        let started = Instant::now();
        let (a, b) = (pattern(1, 100_000), pattern(2, 100_000));
        fs::write(m.p("a"), &a).unwrap();
        fs::write(m.p("b"), &b).unwrap();
        let mut held = fs::File::open(m.p("a")).unwrap();
        wait_for(&m, "a first re-check", |v| v["root_check"]["checks"].as_u64() >= Some(1));

        proxy.down();
        let down = Instant::now();
        let v = wait_for(&m, "a missed re-check", |v| state(v) == "unreachable");
        assert!(v["root_check"]["misses"].as_u64() >= Some(1), "{v:#}");
        // Still served meanwhile: reads and writes.
        assert_eq!(fs::read(m.p("b")).unwrap(), b);
        fs::write(m.p("c"), b"written while the KMS was away").unwrap();
        std::thread::sleep(Duration::from_secs(5).saturating_sub(down.elapsed()));
        proxy.up();
        let v = wait_for(&m, "the root answering again", |v| state(v) == "ok");
        let misses = v["root_check"]["misses"].as_u64().unwrap();
        assert!(misses >= 1);
        assert_eq!(fs::read(m.p("c")).unwrap(), b"written while the KMS was away");
        // Past the grace counted from the mount (or from the first miss): an answer in time
        // reset it, so the mount still serves.
        std::thread::sleep(Duration::from_secs(13).saturating_sub(started.elapsed()));
        let v = status(&m);
        assert_eq!(state(&v), "ok", "{v:#}");
        assert_eq!(fs::read(m.p("b")).unwrap(), b);

        proxy.down();
        let v = wait_for(&m, "the grace to run out", |v| state(v) == "revoked");
        assert_eq!(v["root_check"]["cause"], "unreachable past the grace", "{v:#}");
        assert!(v["root_check"]["answer"].as_str().unwrap().contains("offline grace (10s)"), "{v:#}");
        assert_revoked(held.read_at(&mut [0u8; 4096], 0), "a file held open");
        assert!(!mounted_at(&m.mnt));
        let pid = v["pid"].as_u64().unwrap();
        let mut rest = Vec::new();
        assert!(held.read_to_end(&mut rest).is_err());
        let_go(&mut m, held, pid);
        // The KMS back, the volume mounts again with everything written to it.
        proxy.up();
        m.mount();
        assert_eq!(fs::read(m.p("a")).unwrap(), a);
        assert_eq!(fs::read(m.p("c")).unwrap(), b"written while the KMS was away");
    }

    /// `--recheck-root 0`: a mount on a KMS root that never asks again, so a key gone
    /// changes nothing until the next mount.
    #[test]
    fn zero_turns_rechecks_off_on_a_kms_root() {
        let moto = Moto::start();
        let m = mounted(&moto, None, &["--recheck-root", "0"]);
        fs::write(m.p("a"), b"kept").unwrap();
        moto.reset();
        std::thread::sleep(Duration::from_secs(3));
        let v = status(&m);
        assert_eq!(state(&v), "off", "{v:#}");
        assert_eq!(v["kms_calls"]["recheck"], 0);
        assert_eq!(fs::read(m.p("a")).unwrap(), b"kept");
    }

    /// A key the server no longer has (moto's reset forgets every key) is a revocation: dark
    /// at the next re-check, with the server's answer in `status`.
    #[test]
    fn a_kms_key_that_is_gone_darkens_the_mount_at_the_next_recheck() {
        let moto = Moto::start();
        let mut m = mounted(&moto, None, &["--recheck-root", "1s"]);
        let audit = m.tmp.path().join("audit.log");
        m.env.push(("ENVELOPEFS_AUDIT_LOG".into(), audit.clone().into()));
        m.unmount();
        m.mount_with(&["--recheck-root", "1s"]);
        fs::write(m.p("a"), b"secret").unwrap();
        let held = fs::File::open(m.p("a")).unwrap();
        let v = wait_for(&m, "a first re-check", |v| v["root_check"]["checks"].as_u64() >= Some(1));
        let pid = v["pid"].as_u64().unwrap();
        let calls_before = v["kms_calls"]["unwrap"].as_u64().unwrap();
        moto.reset();
        let v = wait_for(&m, "the mount to go dark", |v| state(v) == "revoked");
        assert_eq!(v["root_check"]["cause"], "refused", "{v:#}");
        assert!(v["root_check"]["answer"].as_str().unwrap().contains("NotFoundException"), "{v:#}");
        assert_eq!(v["kms_calls"]["unwrap"].as_u64().unwrap(), calls_before, "re-checks are counted apart");
        assert_revoked(held.read_at(&mut [0u8; 6], 0), "a file held open");
        // Audited: each re-check as a KMS call, and the revocation as an event.
        let lines: Vec<Value> =
            fs::read_to_string(&audit).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(lines.iter().any(|l| l["op"] == "recheck" && l["outcome"].as_str().unwrap().contains("NotFound")));
        assert!(lines.iter().any(|l| l["event"] == "root-revoked"), "{lines:?}");
        assert!(lines.iter().any(|l| l["event"] == "dark"), "{lines:?}");
        // SIGTERM ends a dark mount at once, though a file still holds it.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "SIGTERM did not end a dark mount's daemon");
            std::thread::sleep(Duration::from_millis(50));
        }
        let e = held.read_at(&mut [0u8; 6], 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(107), "ENOTCONN once the daemon is gone: {e}");
        drop(held);
        m.disown();
    }
}
