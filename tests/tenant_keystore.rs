//! Tenants whose root is an embedded keystore of their own: a passphrase of their own, given
//! per tenant (`--tenant-passfile DIR=FILE`, or `-o tenant_passfile=DIR=FILE`); without it,
//! or with a wrong one (the volume's own among them), the tenant is locked and the rest of
//! the volume is served. Its passphrase changes, its root and KEK rotate, fsck checks it,
//! and shredding it removes its keystore with its volume.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Output;

use common::mount::{ok, status, tenant, MountFixture};
use common::pattern;

const EKEYREVOKED: i32 = 128;

fn run(m: &MountFixture, args: &[&OsStr]) -> Output {
    m.run(args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `--tenant-passfile /home/alice=FILE`.
fn given(file: &Path) -> String {
    format!("/home/alice={}", file.display())
}

#[test]
fn a_keystore_tenant_opens_with_its_own_passphrase_only_and_is_locked_without_it() {
    let mut m = MountFixture::new(&[]);
    fs::create_dir(m.p("home")).unwrap();
    m.unmount();
    let (a, b) = (m.tmp.path().join("alice.pass"), m.tmp.path().join("alice2.pass"));
    fs::write(&a, "alice's own passphrase\n").unwrap();
    fs::write(&b, "alice's next passphrase\n").unwrap();
    let (cipher, passfile) = (m.cipher.clone(), m.passfile.clone());
    let c = cipher.as_os_str();
    let pass = ["--passfile".as_ref(), passfile.as_os_str()];
    let add = |dir: &str, extra: &[&OsStr]| {
        let mut args: Vec<&OsStr> = vec!["tenant".as_ref(), "add".as_ref(), c, dir.as_ref()];
        args.extend(pass);
        args.extend(extra);
        run(&m, &args)
    };

    // No passphrase for the tenant and no terminal: nothing is made, and it says how.
    let o = add("home/alice", &[]);
    assert!(!o.status.success() && stderr(&o).contains("--tenant-passfile /home/alice=FILE"), "{o:?}");
    // A keystore outside the tenant's volume is refused (shredding could not destroy it).
    let o = add("bob", &["--kms".as_ref(), "local:/etc/shared-keystore".as_ref()]);
    assert!(!o.status.success() && stderr(&o).contains("tenant's own volume"), "{o:?}");
    // The default root is a keystore of its own.
    let o = add("home/alice", &["--tenant-passfile".as_ref(), given(&a).as_ref()]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("wrapped by local:keystore"), "{o:?}");

    let (secret, outer) = (pattern(5, 100_000), pattern(6, 30_000));
    m.mount_with(&["--tenant-passfile", &given(&a)]);
    fs::write(m.p("home/alice/secret.bin"), &secret).unwrap();
    fs::write(m.p("outer.bin"), &outer).unwrap();
    let v = status(&m);
    let t = tenant(&v, "/home/alice");
    assert_eq!((t["state"].as_str(), t["root"].as_str()), (Some("open"), Some("local:keystore")), "{v:#}");
    assert_eq!(t["root_check"]["state"], "off", "a keystore has nothing to re-check: {v:#}");
    let id = t["id"].as_str().unwrap().to_string();
    let own = m.cipher.join("tenants").join(&id);
    assert!(own.join("keystore").is_file(), "the tenant's keystore is in its own volume");
    m.unmount();

    // Without its passphrase, and with the volume's: locked; the rest is served.
    for (extra, why) in [
        (vec![], "locked, no passphrase given"),
        (vec!["--tenant-passfile".to_string(), given(&passfile)], "wrong passphrase"),
    ] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        m.mount_with(&extra);
        let v = status(&m);
        let t = tenant(&v, "/home/alice");
        assert_eq!(t["state"], "closed", "{v:#}");
        assert!(t["reason"].as_str().unwrap().contains(why), "{v:#}");
        let listed = fs::read_dir(m.p("home/alice")).and_then(|d| d.collect::<Result<Vec<_>, _>>());
        let e = listed.map(|_| ()).expect_err("a locked tenant lists nothing");
        assert_eq!(e.raw_os_error(), Some(EKEYREVOKED), "{e}");
        let e = fs::read(m.p("home/alice/secret.bin")).expect_err("a locked tenant reads nothing");
        assert_eq!(e.raw_os_error(), Some(EKEYREVOKED), "{e}");
        assert_eq!(fs::read(m.p("outer.bin")).unwrap(), outer);
        m.unmount();
    }

    // A symlink planted for its keystore is not followed (even to its own keystore).
    let (ks, kept) = (own.join("keystore"), own.join("keystore.kept"));
    fs::rename(&ks, &kept).unwrap();
    std::os::unix::fs::symlink(&kept, &ks).unwrap();
    m.mount_with(&["--tenant-passfile", &given(&a)]);
    let v = status(&m);
    assert_eq!(tenant(&v, "/home/alice")["state"], "closed", "{v:#}");
    assert_eq!(fs::read(m.p("outer.bin")).unwrap(), outer);
    m.unmount();
    fs::remove_file(&ks).unwrap();
    fs::rename(&kept, &ks).unwrap();

    // Its passphrase changes (offline); the old one no longer opens it, the new one does
    // (here as a mount option, as fstab gives it).
    let o = run(
        &m,
        &[
            "passwd".as_ref(),
            c,
            "--tenant".as_ref(),
            "home/alice".as_ref(),
            pass[0],
            pass[1],
            "--tenant-passfile".as_ref(),
            given(&a).as_ref(),
            "--new-passfile".as_ref(),
            b.as_os_str(),
        ],
    );
    ok(&o);
    m.mount_with(&["--tenant-passfile", &given(&a)]);
    assert_eq!(tenant(&status(&m), "/home/alice")["state"], "closed");
    m.unmount();
    m.mount_with(&["-o", &format!("tenant_passfile={}", given(&b))]);
    assert_eq!(fs::read(m.p("home/alice/secret.bin")).unwrap(), secret);
    m.unmount();

    // Its root key (in its own keystore) and its KEK rotate; fsck checks it with its key.
    let gb = given(&b);
    let with_b: [&OsStr; 2] = ["--tenant-passfile".as_ref(), gb.as_ref()];
    let keystore_before = fs::read(own.join("keystore")).unwrap();
    for mode in ["--root", "--kek"] {
        let mut args: Vec<&OsStr> =
            vec!["rotate".as_ref(), c, mode.as_ref(), "--tenant".as_ref(), "home/alice".as_ref()];
        args.extend(pass);
        args.extend(&with_b);
        ok(&run(&m, &args));
    }
    assert_ne!(fs::read(own.join("keystore")).unwrap(), keystore_before, "a new root key in its keystore");
    let mut args: Vec<&OsStr> = vec!["fsck".as_ref(), c];
    args.extend(pass);
    let o = run(&m, &args);
    assert_eq!(o.status.code(), Some(4), "unchecked without its passphrase: {o:?}");
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("tenant /home/alice") && said.contains("cannot be checked"), "{said}");
    args.extend(&with_b);
    let o = run(&m, &args);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("tenant /home/alice: "), "{o:?}");
    m.mount_with(&["--tenant-passfile", &given(&b)]);
    assert_eq!(fs::read(m.p("home/alice/secret.bin")).unwrap(), secret);
    m.unmount();

    // Shredded: its volume, keystore with it, is gone; the rest of the volume is untouched.
    ok(&run(
        &m,
        &["shred".as_ref(), c, "--tenant".as_ref(), "home/alice".as_ref(), "--yes".as_ref(), pass[0], pass[1]],
    ));
    assert!(!own.exists(), "the tenant's volume and keystore are removed");
    m.mount();
    assert_eq!(fs::read(m.p("outer.bin")).unwrap(), outer);
    assert!(!m.p("home/alice").exists());
    assert!(status(&m)["tenants"].as_array().is_none_or(|t| t.is_empty()));
}
