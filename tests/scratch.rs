//! The per-boot scratch key on real mounts: scratch files are readable while mounted and
//! after a daemon crash in the same boot, and gone (unreadable, then cleaned up) after
//! `umount` and after a reboot (simulated with another boot id).

mod common;

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::mount::{ok, MountFixture};
use common::{all_files, contains, pattern, wrapped_deks, write_synced};
use serde_json::Value;

/// Runs the binary with extra environment variables.
fn evfs_env(args: &[&std::ffi::OsStr], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_envelopefs"));
    c.args(args).env_remove("ENVELOPEFS_PASSFILE").stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn status(target: &Path) -> Value {
    let o = evfs_env(&["status".as_ref(), target.as_os_str(), "--json".as_ref()], &[]);
    ok(&o);
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Where the daemon keeps the volume's wrapped scratch key.
fn runtime_file(m: &MountFixture) -> PathBuf {
    let id = status(&m.cipher)["volume_id"].as_str().unwrap().to_string();
    let dir = envelopefs::control::runtime_dir();
    dir.join(format!("{id}.scratch"))
}

fn kms_unwraps(v: &Value) -> u64 {
    v["kms_calls"]["unwrap"].as_u64().unwrap()
}

fn backing_bytes(cipher: &Path) -> Vec<Vec<u8>> {
    all_files(cipher).iter().map(|p| fs::read(p).unwrap()).collect()
}

#[test]
fn scratch_lives_through_a_crash_in_the_same_boot_and_dies_with_umount() {
    let mut m = MountFixture::new(&[]);
    m.unmount();
    m.mount_with(&["--scratch", "tmp"]);
    let secret = pattern(7, 200_000);
    write_synced(&m.p("tmp/secret"), &secret);
    fs::create_dir(m.p("tmp/sub")).unwrap();
    write_synced(&m.p("tmp/sub/more"), b"more scratch");
    write_synced(&m.p("kept"), b"persistent");
    let v = status(&m.mnt);
    assert_eq!(v["scratch"]["dirs"], serde_json::json!(["/tmp"]));
    assert_eq!(v["scratch"]["key"], "loaded");
    assert_eq!((kms_unwraps(&v), v["kms_calls"]["wrap"].as_u64()), (1, Some(1)), "KEK unwrap + scratch key wrap");
    let runtime = runtime_file(&m);
    assert!(runtime.exists(), "the wrapped scratch key lives in the runtime directory");
    assert!(!all_files(&m.cipher).iter().any(|p| contains(&fs::read(p).unwrap(), &fs::read(&runtime).unwrap())));

    // A crash keeps scratch readable in this boot, through one more KMS unwrap.
    m.crash();
    m.mount();
    assert_eq!(fs::read(m.p("tmp/secret")).unwrap(), secret);
    assert_eq!(fs::read(m.p("tmp/sub/more")).unwrap(), b"more scratch");
    let v = status(&m.mnt);
    assert_eq!(kms_unwraps(&v), 2, "KEK + scratch key, however much is read");
    assert_eq!(v["scratch"]["key"], "loaded");

    // `umount --keep-scratch` keeps it too.
    ok(&evfs_env(&["umount".as_ref(), m.mnt.as_os_str(), "--keep-scratch".as_ref()], &[]));
    assert!(runtime.exists());
    m.mount();
    assert_eq!(fs::read(m.p("tmp/secret")).unwrap(), secret);

    // A plain umount destroys the key first, then the files and their wrapped DEKs.
    let f = fs::File::open(m.p("tmp/secret")).unwrap();
    drop(f);
    m.unmount();
    let deks_after = wrapped_deks(&m.cipher);
    assert!(!runtime.exists(), "umount deletes the wrapped scratch key");
    assert_eq!(deks_after.len(), 1, "only the persistent file's DEK is left");
    m.mount();
    assert_eq!(fs::read_dir(m.p("tmp")).unwrap().count(), 0, "scratch is empty after umount");
    assert_eq!(fs::read(m.p("kept")).unwrap(), b"persistent");
    assert_eq!(status(&m.mnt)["scratch"]["dirs"], serde_json::json!([]), "a mount without --scratch has none");
}

#[test]
fn a_reboot_makes_scratch_unreadable_and_the_next_mount_removes_it() {
    let mut m = MountFixture::new(&[]);
    m.unmount();
    m.mount_with(&["--scratch", "/cache/build"]);
    fs::write(m.p("cache/build/obj"), pattern(3, 70_000)).unwrap();
    fs::write(m.p("cache/persistent"), b"outside the scratch dir").unwrap();
    ok(&evfs_env(&["umount".as_ref(), m.mnt.as_os_str(), "--keep-scratch".as_ref()], &[]));
    let scratch_deks: Vec<Vec<u8>> = wrapped_deks(&m.cipher);
    assert_eq!(scratch_deks.len(), 2);

    // Another boot: same runtime directory (as if tmpfs survived), another boot id.
    let boot = m.tmp.path().join("boot_id");
    fs::write(&boot, "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n").unwrap();
    let env = [("ENVELOPEFS_BOOT_ID_FILE", boot.as_path())];
    let (cipher, mnt, passfile) = (m.cipher.clone(), m.mnt.clone(), m.passfile.clone());
    let mount = |extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["mount".as_ref(), cipher.as_os_str(), mnt.as_os_str(), "--passfile".as_ref(), passfile.as_os_str()];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        evfs_env(&args, &env)
    };
    // Read-only, nothing is cleaned: the scratch file is there but cannot be read.
    ok(&mount(&["--read-only"]));
    m.adopt();
    let err = fs::read(m.p("cache/build/obj")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "EIO, never wrong data: {err}");
    assert_eq!(fs::read(m.p("cache/persistent")).unwrap(), b"outside the scratch dir");
    m.unmount();

    ok(&mount(&[]));
    m.adopt();
    assert_eq!(fs::read_dir(m.p("cache/build")).unwrap().count(), 0, "stale scratch is removed at mount");
    assert_eq!(fs::read(m.p("cache/persistent")).unwrap(), b"outside the scratch dir");
    assert!(!runtime_file(&m).exists(), "the other boot's wrapped key is deleted");
    m.unmount();
    let left = backing_bytes(&m.cipher);
    let deks = wrapped_deks(&m.cipher);
    assert_eq!(deks.len(), 1);
    for w in scratch_deks.iter().filter(|w| !deks.contains(w)) {
        assert!(!left.iter().any(|f| contains(f, w)), "a stale scratch DEK survives in a backing file");
    }
}

#[test]
fn ephemeral_mount_needs_an_empty_volume_and_leaves_nothing() {
    let mut m = MountFixture::new(&[]);
    m.unmount();
    m.mount_with(&["--ephemeral"]);
    fs::create_dir_all(m.p("a/b")).unwrap();
    fs::write(m.p("a/b/c"), pattern(1, 50_000)).unwrap();
    fs::write(m.p("top"), b"top").unwrap();
    assert_eq!(status(&m.mnt)["scratch"]["dirs"], serde_json::json!(["/"]));
    m.unmount();
    m.mount();
    assert_eq!(fs::read_dir(&m.mnt).unwrap().count(), 0, "an ephemeral mount leaves nothing");
    fs::write(m.p("precious"), b"keep me").unwrap();
    m.unmount();

    let o = m.try_mount(&["--ephemeral"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"), "{}", String::from_utf8_lossy(&o.stderr));
    m.mount();
    assert_eq!(fs::read(m.p("precious")).unwrap(), b"keep me", "a refused --ephemeral changes nothing");
    fs::create_dir(m.p("full")).unwrap();
    fs::write(m.p("full/x"), b"x").unwrap();
    m.unmount();
    let o = m.try_mount(&["--scratch", "full"]);
    assert_eq!(o.status.code(), Some(1), "a non-empty directory cannot become scratch");
    m.mount();
    assert_eq!(fs::read(m.p("full/x")).unwrap(), b"x");
}

#[test]
fn nothing_moves_across_a_scratch_boundary() {
    let mut m = MountFixture::new(&[]);
    m.unmount();
    m.mount_with(&["--scratch", "tmp"]);
    fs::write(m.p("tmp/s"), b"scratch").unwrap();
    fs::write(m.p("p"), b"persistent").unwrap();
    fs::create_dir(m.p("tmp/d")).unwrap();
    for (from, to) in [("tmp/s", "s"), ("p", "tmp/p"), ("tmp/d", "d")] {
        let e = fs::rename(m.p(from), m.p(to)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(18), "{from} -> {to}: EXDEV, so mv copies: {e}");
    }
    assert_eq!(fs::hard_link(m.p("p"), m.p("tmp/link")).unwrap_err().raw_os_error(), Some(18));
    assert_eq!(fs::rename(m.p("tmp"), m.p("tmp2")).unwrap_err().raw_os_error(), Some(16), "EBUSY");
    fs::remove_file(m.p("tmp/s")).unwrap();
    fs::remove_dir(m.p("tmp/d")).unwrap();
    assert_eq!(fs::remove_dir(m.p("tmp")).unwrap_err().raw_os_error(), Some(16), "EBUSY");
    fs::write(m.p("tmp/a"), b"a").unwrap();
    fs::rename(m.p("tmp/a"), m.p("tmp/b")).unwrap();
    assert_eq!(fs::read(m.p("tmp/b")).unwrap(), b"a", "renames inside scratch work");
    // `mv` falls back to copy + delete: the copy is keyed like its new place.
    let out = Command::new("mv").arg(m.p("tmp/b")).arg(m.p("moved")).output().unwrap();
    assert!(out.status.success());
    m.unmount();
    m.mount();
    assert_eq!(fs::read(m.p("moved")).unwrap(), b"a", "moved out of scratch = persistent");
    assert_eq!(fs::read(m.p("p")).unwrap(), b"persistent");
    assert!(fs::read_dir(m.p("tmp")).unwrap().next().is_none());
}

#[test]
fn kek_rotation_leaves_scratch_keys_alone() {
    let mut m = MountFixture::new(&["--extent-size", "64K"]);
    m.unmount();
    m.mount_with(&["--scratch", "tmp"]);
    let (s, p) = (pattern(11, 300_000), pattern(12, 300_000));
    fs::write(m.p("tmp/s"), &s).unwrap();
    fs::write(m.p("p"), &p).unwrap();
    let o = evfs_env(&["rotate".as_ref(), m.cipher.as_os_str(), "--kek".as_ref()], &[]);
    ok(&o);
    assert_eq!(fs::read(m.p("tmp/s")).unwrap(), s);
    assert_eq!(fs::read(m.p("p")).unwrap(), p);
    // Kept across an unmounted rotation too.
    ok(&evfs_env(&["umount".as_ref(), m.mnt.as_os_str(), "--keep-scratch".as_ref()], &[]));
    let o = evfs_env(
        &["rotate".as_ref(), m.cipher.as_os_str(), "--kek".as_ref(), "--passfile".as_ref(), m.passfile.as_os_str()],
        &[],
    );
    ok(&o);
    m.mount();
    assert_eq!(fs::read(m.p("tmp/s")).unwrap(), s, "scratch readable after two KEK rotations");
    assert_eq!(fs::read(m.p("p")).unwrap(), p);
    let err = fs::read(m.p("nope")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn the_scratch_key_never_goes_to_a_disk_directory() {
    // A runtime directory on a disk (this project's target directory, not a tmpfs): a
    // mount with scratch refuses, naming the directory and the cause; without scratch it runs.
    let Some(disk) = common::disk_scratch("evfs-runtime-") else { return };
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(disk.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let env = vec![("ENVELOPEFS_RUNTIME_DIR".to_string(), disk.path().as_os_str().to_os_string())];
    let mut m = MountFixture::new_with(&[], env);
    m.unmount();
    let o = m.try_mount(&["--scratch", "s"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not on tmpfs or ramfs") && err.contains(&*disk.path().to_string_lossy()), "{err}");
    assert!(fs::read_dir(disk.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".scratch")));
    m.mount();
}

#[test]
fn a_scratch_record_removed_from_the_store_stops_the_mount_and_destroys_nothing() {
    let mut m = MountFixture::new(&[]);
    m.unmount();
    m.mount_with(&["--scratch", "/tmp"]);
    fs::write(m.p("tmp/secret"), b"scratch data").unwrap();
    ok(&evfs_env(&["umount".as_ref(), m.mnt.as_os_str(), "--keep-scratch".as_ref()], &[]));
    let runtime = runtime_file(&m);
    let before = all_files(&m.cipher).len();
    // A writer of CIPHERDIR deletes the (sealed) record: a mount used to drop this boot's
    // scratch key and make /tmp an ordinary directory whose new files outlive the boot.
    remove_scratch_record_and_mount(&m, &runtime);
    assert_eq!(all_files(&m.cipher).len(), before, "something was deleted");
    // The way out it names: give that scratch up.
    fs::remove_file(&runtime).unwrap();
    m.mount();
    assert!(fs::read(m.p("tmp/secret")).is_err(), "scratch data outlived its key");
}

/// Deletes the scratch record from the store (as a writer of CIPHERDIR can) and checks that
/// the next mount refuses, naming the runtime scratch file, which it keeps.
fn remove_scratch_record_and_mount(m: &MountFixture, runtime: &Path) {
    let c = rusqlite::Connection::open(m.cipher.join("meta.db")).unwrap();
    assert_eq!(c.execute("DELETE FROM meta WHERE key LIKE 'scratch.%'", []).unwrap(), 2);
    drop(c);
    let o = m.try_mount(&[]);
    assert!(!o.status.success(), "a mount went on without the scratch record");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("scratch record is missing") && err.contains(&runtime.display().to_string()), "{err}");
    assert!(runtime.exists(), "the scratch key was thrown away");
}

/// The same with no file under the key: the runtime file (outside CIPHERDIR) says the record
/// was committed, so its absence is a removal, not a mount cut short between the key and its
/// record (which is nothing to lose, and goes on).
#[test]
fn a_scratch_record_removed_with_no_file_under_the_key_stops_the_mount_too() {
    let mut m = MountFixture::new(&[]);
    m.unmount();
    m.mount_with(&["--scratch", "/tmp"]);
    ok(&evfs_env(&["umount".as_ref(), m.mnt.as_os_str(), "--keep-scratch".as_ref()], &[]));
    let runtime = runtime_file(&m);
    let rec = envelopefs::keys::ScratchRecord::read(&runtime).expect("this boot's scratch key");
    assert_eq!(rec.recorded, Some(true), "the runtime file says the record was committed");
    remove_scratch_record_and_mount(&m, &runtime);
    // A key whose record was never committed (a mount stopped between the two): nothing to
    // lose, the mount goes on and drops it.
    let uncommitted = envelopefs::keys::ScratchRecord { recorded: Some(false), ..rec };
    fs::write(&runtime, uncommitted.encode()).unwrap();
    m.mount();
    assert!(!runtime.exists(), "the uncommitted scratch key was kept");
}
