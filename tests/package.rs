//! The Debian package (issue 20): `scripts/build-deb.sh` builds it from this tree (here
//! around the binary this test run built); unpacked into a scratch root (`dpkg-deb -x`),
//! every file is where it belongs, the mount helper links point at the installed binary,
//! and that binary runs.

mod common;

use std::path::Path;
use std::process::Command;

use common::run;

#[test]
fn the_debian_package_puts_everything_where_it_belongs_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let said = run(Command::new("scripts/build-deb.sh")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--binary", env!("CARGO_BIN_EXE_envelopefs"), "--out"])
        .arg(&out));
    let deb = Path::new(said.trim());
    assert!(deb.starts_with(&out) && deb.extension().is_some_and(|e| e == "deb"), "{said}");
    assert_eq!(run(Command::new("dpkg-deb").args(["-f"]).arg(deb).arg("Package")).trim(), "envelopefs");
    assert_eq!(run(Command::new("dpkg-deb").args(["-f"]).arg(deb).arg("Version")).trim(), env!("CARGO_PKG_VERSION"));
    assert!(run(Command::new("dpkg-deb").args(["-f"]).arg(deb).arg("Depends")).contains("fuse3"));

    let root = tmp.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    for f in [
        "usr/bin/envelopefs",
        "usr/share/man/man1/envelopefs.1.gz",
        "usr/share/man/man1/envelopefs-mount.1.gz",
        "usr/share/man/man1/envelopefs-tenant-add.1.gz",
        "usr/share/bash-completion/completions/envelopefs",
        "usr/share/zsh/vendor-completions/_envelopefs",
        "usr/share/fish/vendor_completions.d/envelopefs.fish",
        "usr/lib/systemd/system/envelopefs@.service",
        "usr/share/doc/envelopefs/OPERATIONS.md",
    ] {
        assert!(root.join(f).is_file(), "{f} is missing from the package");
    }
    assert!(!root.join("usr/share/man/man1/envelopefs-generate-docs.1.gz").exists(), "no page for a hidden command");
    for helper in ["mount.fuse.envelopefs", "mount.envelopefs"] {
        assert_eq!(std::fs::read_link(root.join("usr/sbin").join(helper)).unwrap(), Path::new("/usr/bin/envelopefs"));
    }
    let version = run(Command::new(root.join("usr/bin/envelopefs")).arg("--version"));
    assert_eq!(version.trim(), format!("envelopefs {}", env!("CARGO_PKG_VERSION")));
    let page = run(Command::new("zcat").arg(root.join("usr/share/man/man1/envelopefs-mount.1.gz")));
    let title = format!(".TH envelopefs-mount 1  \"envelopefs-mount {}\"", env!("CARGO_PKG_VERSION"));
    assert!(page.contains(&title) && page.contains("\\-\\-idle"), "{page}");
    let completion = std::fs::read_to_string(root.join("usr/share/bash-completion/completions/envelopefs")).unwrap();
    assert!(completion.contains("--tenant-passfile"), "the completions know the options");
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/envelopefs@.service")).unwrap();
    for want in ["EnvironmentFile=/etc/envelopefs/%i.conf", "LoadCredential=", "mount --foreground", "ExecStop="] {
        assert!(unit.contains(want), "{want:?} not in the unit");
    }
}
