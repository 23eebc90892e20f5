//! An existing directory made a tenant (`tenant add` of a directory that exists): every
//! entry is copied under the tenant's keys (data, holes, directories, symlinks, FIFOs, hard
//! links, xattrs, modes and times) and the old copies go with their DEKs; what cannot cross
//! a boundary (a hard link to outside, a tenant inside) is refused before anything changes;
//! and a conversion SIGKILLed at any point leaves every file readable through a mount and
//! is finished by running `tenant add` again.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::mount::{ok, status, tenant, MountFixture};
use common::pattern;
use envelopefs::fs::Volume;

/// What a tree looks like through the mount: per path, kind, mode, size, mtime, content
/// (or target) and the `user.` xattrs.
fn manifest(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.is_file() {
                format!("file {:x}", crc(&fs::read(&p).unwrap()))
            } else {
                "node".to_string()
            };
            let mtime = if m.file_type().is_symlink() { 0 } else { m.mtime() * 1_000_000_000 + m.mtime_nsec() };
            let x = if m.file_type().is_symlink() { String::new() } else { xattr(&p) };
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                format!("{what} mode {:o} size {} mtime {mtime} xattr {x}", m.mode(), m.size()),
            );
        }
    }
    out
}

fn crc(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x100000001b3))
}

/// `user.` xattrs of `p`, as Python lists them.
fn xattr(p: &Path) -> String {
    let code =
        "import os,sys\nfor n in sorted(os.listxattr(sys.argv[1])):\n  print(n, os.getxattr(sys.argv[1], n).hex())";
    let o = Command::new("python3").args(["-c", code]).arg(p).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    String::from_utf8(o.stdout).unwrap().replace('\n', ";")
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let code = format!("import os,sys\nos.setxattr(sys.argv[1], {name:?}, bytes.fromhex('{}'))", hex::encode(value));
    ok(&Command::new("python3").args(["-c", &code]).arg(p).output().unwrap());
}

fn meta(m: &MountFixture) -> rusqlite::Connection {
    rusqlite::Connection::open(m.cipher.join("meta.db")).unwrap()
}

/// The volume's `tenant.convert` row, if any.
fn convert_row(m: &MountFixture) -> Option<Vec<u8>> {
    use rusqlite::OptionalExtension;
    meta(m).query_row("SELECT value FROM meta WHERE key = 'tenant.convert'", [], |r| r.get(0)).optional().unwrap()
}

/// `fsck` of `m`'s volume, the tenant's passphrase given as `given`.
fn fsck(m: &MountFixture, given: &str) -> Output {
    m.run(&[
        "fsck".as_ref(),
        m.cipher.as_os_str(),
        "--passfile".as_ref(),
        m.passfile.as_os_str(),
        "--tenant-passfile".as_ref(),
        given.as_ref(),
    ])
}

/// `shred --tenant DIR --yes` of `m`'s volume.
fn shred_tenant(m: &MountFixture, dir: &str) -> Output {
    m.run(&[
        "shred".as_ref(),
        m.cipher.as_os_str(),
        "--tenant".as_ref(),
        dir.as_ref(),
        "--yes".as_ref(),
        "--passfile".as_ref(),
        m.passfile.as_os_str(),
    ])
}

/// Runs `abort` (`tenant add ... --abort`), which must succeed, shred the half-made tenant
/// and remove its volume, and forget the conversion.
fn aborted_and_shredded(m: &MountFixture, abort: &[&OsStr]) {
    let o = m.run(abort);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("the half-made tenant is shredded"), "{o:?}");
    assert!(convert_row(m).is_none());
    let left: Vec<_> = fs::read_dir(m.cipher.join("tenants")).unwrap().collect();
    assert!(left.is_empty(), "the half-made tenant's volume is removed: {left:?}");
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `tenant add CIPHERDIR DIR` on a keystore tenant whose passphrase is in `tpass`.
fn add_args<'a>(m: &'a MountFixture, dir: &'a str, given: &'a str) -> Vec<&'a OsStr> {
    vec![
        "tenant".as_ref(),
        "add".as_ref(),
        m.cipher.as_os_str(),
        dir.as_ref(),
        "--passfile".as_ref(),
        m.passfile.as_os_str(),
        "--tenant-passfile".as_ref(),
        given.as_ref(),
    ]
}

#[test]
fn an_existing_directory_becomes_a_tenant_with_everything_in_it() {
    let mut m = MountFixture::new(&[]);
    let tpass = m.tmp.path().join("docs.pass");
    fs::write(&tpass, "the tenant's own\n").unwrap();
    let given = format!("/docs={}", tpass.display());
    fs::create_dir_all(m.p("docs/sub/deep")).unwrap();
    fs::write(m.p("docs/a.txt"), b"alpha").unwrap();
    fs::write(m.p("docs/big.bin"), pattern(1, 3 << 20)).unwrap();
    let sparse = fs::File::create(m.p("docs/sparse")).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse, &pattern(2, 4096), 10 << 20).unwrap();
    drop(sparse);
    fs::write(m.p("docs/sub/deep/x"), pattern(3, 70_000)).unwrap();
    std::os::unix::fs::symlink("../a.txt", m.p("docs/sub/ln")).unwrap();
    fs::write(m.p("docs/h1"), b"linked").unwrap();
    fs::hard_link(m.p("docs/h1"), m.p("docs/sub/h2")).unwrap();
    nix::unistd::mkfifo(&m.p("docs/fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    set_xattr(&m.p("docs/a.txt"), "user.tag", b"kept");
    set_xattr(&m.p("docs/sub"), "user.dir", b"too");
    fs::set_permissions(m.p("docs/a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(m.p("docs/sub/deep"), fs::Permissions::from_mode(0o750)).unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    fs::File::options().write(true).open(m.p("docs/a.txt")).unwrap().set_modified(old).unwrap();
    fs::write(m.p("outer.txt"), b"stays in the volume").unwrap();
    fs::create_dir(m.p("shared")).unwrap();
    fs::write(m.p("shared/x"), b"x").unwrap();
    fs::hard_link(m.p("shared/x"), m.p("x-link")).unwrap();
    fs::create_dir(m.p("docs2")).unwrap();
    let before = manifest(&m.p("docs"));
    assert_eq!(before.len(), 10, "{before:#?}");
    m.unmount();

    // Refused before anything changes: a hard link to outside, a tenant inside.
    let o = m.run(&add_args(&m, "shared", &given));
    assert!(!o.status.success() && stderr(&o).contains("hard links outside"), "{o:?}");
    assert!(!m.cipher.join("tenants").exists(), "nothing was made");
    let o = m.run(&add_args(&m, "docs2/inner", &format!("/docs2/inner={}", tpass.display())));
    ok(&o);
    let o = m.run(&add_args(&m, "docs2", &given));
    assert!(!o.status.success() && stderr(&o).contains("tenants do not nest"), "{o:?}");
    let o = m.run(&add_args(&m, "docs2/inner", &given));
    assert!(!o.status.success() && stderr(&o).contains("already the root of tenant"), "{o:?}");

    let o = m.run(&add_args(&m, "docs", &given));
    ok(&o);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("Converted /docs: 5 files") && said.contains("2 directories and 2 other entries"), "{said}");

    m.mount_with(&["--tenant-passfile", &given]);
    let v = status(&m);
    assert_eq!(tenant(&v, "/docs")["state"], "open", "{v:#}");
    assert_eq!(manifest(&m.p("docs")), before, "everything came across as it was");
    let (h1, h2) = (fs::metadata(m.p("docs/h1")).unwrap(), fs::metadata(m.p("docs/sub/h2")).unwrap());
    assert_eq!((h1.ino(), h1.nlink()), (h2.ino(), 2), "still one file with two names");
    assert!(fs::metadata(m.p("docs/sparse")).unwrap().blocks() < 64, "the hole stayed a hole");
    let names: Vec<String> =
        fs::read_dir(&m.mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(!names.iter().any(|n| n.starts_with(".envelopefs-converting")), "{names:?}");
    // The files are the tenant's now (its store), and no longer the volume's.
    assert_eq!(tenant(&v, "/docs")["files"], 5, "{v:#}");
    assert_eq!(v["files"], 2, "outer.txt and shared/x are the volume's own: {v:#}");
    fs::write(m.p("docs/new"), b"written after").unwrap();
    assert_eq!(fs::read(m.p("docs/new")).unwrap(), b"written after");
    assert_eq!(fs::read(m.p("outer.txt")).unwrap(), b"stays in the volume");
}

/// `status` of the volume mounted for a moment.
fn status_offline(m: &MountFixture, given: &str) -> serde_json::Value {
    let o = m.try_mount(&["--tenant-passfile", given]);
    ok(&o);
    let v = serde_json::from_slice(&m.run(&["status".as_ref(), m.mnt.as_os_str(), "--json".as_ref()]).stdout).unwrap();
    ok(&m.run(&["umount".as_ref(), m.mnt.as_os_str()]));
    v
}

/// Every file of `expect` reads back whole, from the tenant or from the directory being
/// converted (whichever holds it now).
/// Returns whether the directory being converted was there (the run was killed in the midst).
fn all_readable(m: &MountFixture, expect: &BTreeMap<String, Vec<u8>>) -> Result<bool, String> {
    let source: Option<PathBuf> = fs::read_dir(&m.mnt).unwrap().map(|e| e.unwrap().path()).find(|p| {
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        n.starts_with(".envelopefs-converting-") || n.starts_with(".envelopefs-removing-")
    });
    for (name, want) in expect {
        let here = fs::read(m.p("data").join(name)).ok().filter(|b| b == want);
        let there = source.as_ref().and_then(|s| fs::read(s.join(name)).ok()).filter(|b| b == want);
        if here.is_none() && there.is_none() {
            return Err(format!("{name}: readable neither in /data nor in {source:?}"));
        }
    }
    Ok(source.is_some())
}

#[test]
fn a_conversion_killed_at_any_point_leaves_every_file_readable_and_finishes_when_run_again() {
    let mut m = MountFixture::new(&[]);
    let tpass = m.tmp.path().join("data.pass");
    fs::write(&tpass, "data's own\n").unwrap();
    let given = format!("/data={}", tpass.display());
    let mut expect = BTreeMap::new();
    for i in 0..1500u64 {
        let name = format!("d{}/f{i}", i % 8);
        fs::create_dir_all(m.p("data").join(format!("d{}", i % 8))).unwrap();
        let body = pattern(i, 1000 + (i as usize * 397) % 30_000);
        fs::write(m.p("data").join(&name), &body).unwrap();
        expect.insert(name, body);
    }
    m.unmount();

    let args: Vec<std::ffi::OsString> = add_args(&m, "data", &given).iter().map(|s| s.to_os_string()).collect();
    let (mut kills, mut midway, mut seen_copying, mut delay) = (0, 0, false, Duration::from_millis(100));
    let (mut copying_row, mut source_backing) = (None, None);
    let finished = loop {
        let mut child = Command::new(env!("CARGO_BIN_EXE_envelopefs"))
            .args(&args)
            .env_remove("ENVELOPEFS_PASSFILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_some() {
            break child.wait_with_output().unwrap();
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        // Between two runs, the volume mounts and every file reads somewhere.
        m.mount_with(&["--tenant-passfile", &given]);
        match all_readable(&m, &expect) {
            Ok(mid) => midway += usize::from(mid),
            Err(e) => panic!("after kill {kills} ({delay:?} in): {e}"),
        }
        let copying = status(&m)["tenants"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["reason"].as_str().is_some_and(|r| r.contains("being made a tenant")));
        m.unmount();
        if copying && !seen_copying {
            // fsck says what to do; the half-made tenant cannot be shredded from under it.
            seen_copying = true;
            copying_row = Some(convert_row(&m).expect("a conversion under way has its record"));
            // And the source's backing directory as it is now (the largest under data/).
            let backing = fs::read_dir(m.cipher.join("data"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_dir())
                .max_by_key(|p| common::all_files(p).len())
                .unwrap();
            common::copy_tree(&backing, &m.tmp.path().join("snapshot"));
            source_backing = Some(backing);
            let o = fsck(&m, &given);
            let said = String::from_utf8_lossy(&o.stdout);
            assert!(o.status.code() == Some(4) && said.contains("/data: being made a tenant, cut short"), "{said}");
            let o = shred_tenant(&m, "data");
            assert!(!o.status.success() && stderr(&o).contains("finish it first"), "{o:?}");
        }
        delay += Duration::from_millis(40);
        assert!(kills < 40, "the conversion never finished");
    };
    // A run killed after it had finished leaves nothing to do: the rerun says so.
    let done_before = stderr(&finished).contains("/data: already the root of tenant /data");
    assert!(finished.status.success() || (kills > 0 && done_before), "{}", stderr(&finished));
    assert!(midway >= 1 && seen_copying, "no run was cut short in the midst of its copy (kills: {kills})");
    m.mount_with(&["--tenant-passfile", &given]);
    assert_eq!(tenant(&status(&m), "/data")["state"], "open");
    for (name, want) in &expect {
        assert_eq!(&fs::read(m.p("data").join(name)).unwrap(), want, "{name}");
    }
    let names: Vec<String> =
        fs::read_dir(&m.mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, ["data"], "the old copy is gone");
    fs::write(m.p("data/after"), b"written to the tenant").unwrap();
    m.unmount();

    // The record of a copy under way put back (it authenticates: it was the volume's), with
    // the source's directory as it was then: the tenant is no longer marked as being
    // filled, so neither --abort nor a rerun copies over it or shreds it.
    let row = copying_row.unwrap();
    meta(&m).execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('tenant.convert', ?1)", [&row]).unwrap();
    let backing = source_backing.unwrap();
    assert!(!backing.exists(), "the source was removed");
    common::copy_tree(&m.tmp.path().join("snapshot"), &backing);
    let mut abort = args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>();
    abort.push("--abort".as_ref());
    let o = m.run(&abort);
    assert!(!o.status.success() && stderr(&o).contains("its copy was done"), "{o:?}");
    let o = m.run(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing was copied over it"), "{o:?}");
    assert!(convert_row(&m).is_none(), "the rerun cleared it");
    fs::remove_dir_all(&backing).unwrap(); // what the operator does with it, having looked
    m.mount_with(&["--tenant-passfile", &given]);
    assert_eq!(fs::read(m.p("data/after")).unwrap(), b"written to the tenant");
    for (name, want) in &expect {
        assert_eq!(&fs::read(m.p("data").join(name)).unwrap(), want, "{name}");
    }
    m.unmount();
    // A run killed while it made the tenant's volume leaves it beside, never listed: fsck
    // names it and the operator removes it (docs/OPERATIONS.md, "Tenants").
    let own = tenant(&status_offline(&m, &given), "/data")["id"].as_str().unwrap().to_string();
    for e in fs::read_dir(m.cipher.join("tenants")).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy() != own {
            fs::remove_dir_all(p).unwrap();
        }
    }
    eprintln!("{kills} runs killed before one finished, {midway} in the midst of the conversion");
    let o = fsck(&m, &given);
    assert!(o.status.success(), "fsck after the conversion: {}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
}

#[test]
fn a_conversion_that_fails_keeps_every_file_and_can_be_undone() {
    let mut m = MountFixture::new(&[]);
    let tpass = m.tmp.path().join("p.pass");
    fs::write(&tpass, "its own\n").unwrap();
    let given = format!("/docs={}", tpass.display());
    fs::create_dir(m.p("docs")).unwrap();
    fs::write(m.p("docs/good"), b"good").unwrap();
    let bad = pattern(9, 300_000);
    fs::write(m.p("docs/bad.bin"), &bad).unwrap();
    fs::create_dir(m.p("other")).unwrap();
    m.unmount();
    // bad.bin's data file, the largest in CIPHERDIR, gets a byte flipped: it reads as EIO.
    let data = common::all_files(&m.cipher.join("data"));
    let target = data.iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
    let mut bytes = fs::read(target).unwrap();
    bytes[150_000] ^= 1;
    fs::write(target, bytes).unwrap();

    let o = m.run(&add_args(&m, "docs", &given));
    assert!(!o.status.success() && stderr(&o).contains("bad.bin"), "the failure names the file: {o:?}");
    // Cut short while copying: the files are served beside, the tenant is closed, and
    // nothing else may start or shred it meanwhile.
    m.mount_with(&["--tenant-passfile", &given]);
    let v = status(&m);
    assert!(tenant(&v, "/docs")["reason"].as_str().unwrap().contains("being made a tenant"), "{v:#}");
    let beside: Vec<PathBuf> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".envelopefs-converting-"))
        .collect();
    assert_eq!(beside.len(), 1, "{beside:?}");
    assert_eq!(fs::read(beside[0].join("good")).unwrap(), b"good");
    m.unmount();
    let o = m.run(&add_args(&m, "other", &format!("/other={}", tpass.display())));
    assert!(!o.status.success() && stderr(&o).contains("finish it first"), "{o:?}");
    let o = shred_tenant(&m, "docs");
    assert!(!o.status.success() && stderr(&o).contains("finish it first"), "{o:?}");
    let mut rotate: Vec<&OsStr> = vec!["rotate".as_ref(), m.cipher.as_os_str(), "--root".as_ref(), "--tenant".as_ref()];
    rotate.extend(["docs".as_ref(), "--passfile".as_ref(), m.passfile.as_os_str()]);
    rotate.extend([OsStr::new("--tenant-passfile"), OsStr::new(&given)]);
    let o = m.run(&rotate);
    assert!(!o.status.success() && stderr(&o).contains("finish it first"), "{o:?}");

    // Undone with a wrong passphrase for the tenant: it does not open, so its volume is left
    // (unlisted) for the operator, and DIR has its files back.
    let wrong = m.tmp.path().join("wrong.pass");
    fs::write(&wrong, "not it\n").unwrap();
    let wrong_given = format!("/docs={}", wrong.display());
    let mut abort = add_args(&m, "docs", &wrong_given);
    abort.push("--abort".as_ref());
    let o = m.run(&abort);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("its volume was left at"), "{o:?}");
    assert!(convert_row(&m).is_none());
    let left: Vec<PathBuf> = fs::read_dir(m.cipher.join("tenants")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(left.len(), 1, "{left:?}");
    fs::remove_dir_all(&left[0]).unwrap();

    // Again, undone with its passphrase: the half-made tenant is shredded and removed, DIR
    // has its files back, and `docs` is free to become a tenant again.
    let o = m.run(&add_args(&m, "docs", &given));
    assert!(!o.status.success() && stderr(&o).contains("bad.bin"), "{o:?}");
    let mut abort = add_args(&m, "docs", &given);
    abort.push("--abort".as_ref());
    // A header planted over the tenant's saying "shredded" (nothing authenticates that
    // flag: a shredded header's keys are noise) is not believed: the abort changes nothing,
    // where it would otherwise have removed the tenant's volume without opening it.
    let made: Vec<PathBuf> = fs::read_dir(m.cipher.join("tenants")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(made.len(), 1, "{made:?}");
    let conf = made[0].join("envelopefs.conf");
    let live = fs::read(&conf).unwrap();
    let mut h = Volume::read_header(&made[0]).unwrap();
    h.features |= envelopefs::format::FEATURE_SHREDDED;
    fs::write(&conf, h.encode()).unwrap();
    let row = convert_row(&m);
    let o = m.run(&abort);
    assert!(!o.status.success() && stderr(&o).contains("no abort of this conversion shredded it"), "{o:?}");
    assert_eq!(convert_row(&m), row, "nothing was changed");
    assert!(made[0].join("meta.db").exists(), "the tenant's volume is still there");
    // The abort with the tenant's own header: it opens, is still being filled, so it is
    // shredded and removed, and DIR has its files back.
    fs::write(&conf, &live).unwrap();
    aborted_and_shredded(&m, &abort);
    // Only an abort that decided to shred (its record, sealed under the volume's KEK, says
    // so) and was cut short afterwards takes the flag for its own work: a rerun of `tenant
    // add` then refuses, and the abort run again finishes. (Cut short is made here by
    // hand: the record put to "aborting" with the volume's keys, the header flagged, as the
    // shred leaves it.)
    let o = m.run(&add_args(&m, "docs", &given));
    assert!(!o.status.success() && stderr(&o).contains("bad.bin"), "{o:?}");
    let made: Vec<PathBuf> = fs::read_dir(m.cipher.join("tenants")).unwrap().map(|e| e.unwrap().path()).collect();
    let mut h = Volume::read_header(&made[0]).unwrap();
    h.features |= envelopefs::format::FEATURE_SHREDDED;
    let pass = envelopefs::secret::Passphrase::new("mount test passphrase").unwrap();
    let vol = Volume::open(&m.cipher, &pass).unwrap();
    let mut c = vol.tenant_conversion().unwrap().unwrap();
    c.phase = envelopefs::fs::ConversionPhase::Aborting;
    vol.put_tenant_conversion(Some(&c)).unwrap();
    drop(vol);
    fs::write(made[0].join("envelopefs.conf"), h.encode()).unwrap();
    let o = m.run(&add_args(&m, "docs", &given));
    assert!(!o.status.success() && stderr(&o).contains("an abort of this conversion was cut short"), "{o:?}");
    aborted_and_shredded(&m, &abort);
    m.mount();
    assert_eq!(fs::read(m.p("docs/good")).unwrap(), b"good");
    let e = fs::read(m.p("docs/bad.bin")).expect_err("still the damaged file it was");
    assert_eq!(e.raw_os_error(), Some(5), "{e}");
    assert!(status(&m)["tenants"].as_array().is_none_or(|t| t.is_empty()));
    fs::remove_file(m.p("docs/bad.bin")).unwrap();
    m.unmount();
    let o = m.run(&add_args(&m, "docs", &given));
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("Converted /docs: 1 files"), "{o:?}");
}
