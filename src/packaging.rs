//! Installing envelopefs as a system tool: mount(8)'s helper links, and man pages and shell
//! completions made from the command line's own description (clap_mangen, clap_complete).
//! `envelopefs install-helper` and `scripts/build-deb.sh` use these.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The names mount(8) looks for: `mount -t fuse.envelopefs` and fstab lines of that type
/// run `mount.fuse.envelopefs`; `mount.envelopefs` serves `-t envelopefs`.
pub const HELPERS: [&str; 2] = ["mount.fuse.envelopefs", "mount.envelopefs"];

/// Links each of [`HELPERS`] in `sbin` to `target`; returns the links made. A link already
/// pointing there is left as it is, one pointing elsewhere is replaced; anything else by
/// that name (a file of someone else's) is refused, untouched.
pub fn install_helper(sbin: &Path, target: &Path) -> Result<Vec<PathBuf>> {
    check_target(target)?;
    std::fs::create_dir_all(sbin).map_err(|e| Error::io(sbin, "create directory", e))?;
    let mut made = Vec::new();
    for name in HELPERS {
        let link = sbin.join(name);
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => {
                if std::fs::read_link(&link).is_ok_and(|t| t == target) {
                    continue;
                }
                std::fs::remove_file(&link).map_err(|e| Error::io(&link, "replace link", e))?;
            }
            Ok(_) => {
                return Err(Error::InvalidArgument(format!(
                    "{}: exists and is not a link: left as it is (remove it to install the helper)",
                    link.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&link, "stat", e)),
        }
        std::os::unix::fs::symlink(target, &link).map_err(|e| Error::io(&link, "link", e))?;
        made.push(link);
    }
    Ok(made)
}

/// mount(8) runs the helper as root: a binary (or a directory on its way) that anyone but
/// root can write would be a way to root. Checked where it is on this system; a target that
/// is not there yet (a package being staged) is for its installer to place.
fn check_target(target: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() || !target.exists() {
        return Ok(());
    }
    let mut p = Some(target);
    while let Some(at) = p {
        let m = std::fs::metadata(at).map_err(|e| Error::io(at, "stat", e))?;
        if m.uid() != 0 || m.mode() & 0o022 != 0 {
            return Err(Error::InvalidArgument(format!(
                "{}: {} can be changed by someone other than root, and mount(8) runs the helper as root: install \
                 the binary where only root can write (sudo cargo install --root /usr/local ...)",
                target.display(),
                at.display()
            )));
        }
        p = at.parent().filter(|q| !q.as_os_str().is_empty());
    }
    Ok(())
}

/// Writes a man page (section 1) for `cmd` and for each of its visible subcommands, nested
/// ones too (`envelopefs-tenant-add.1`) into `dir`; returns the files written.
pub fn write_man_pages(cmd: &clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create directory", e))?;
    let mut out = Vec::new();
    let mut stack = vec![(cmd.get_name().to_string(), cmd.clone())];
    while let Some((name, c)) = stack.pop() {
        for sub in c.get_subcommands().filter(|s| !s.is_hide_set()) {
            stack.push((format!("{name}-{}", sub.get_name()), sub.clone()));
        }
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        let mut c = c.name(name.clone()).bin_name(name.replace('-', " "));
        if let Some(v) = cmd.get_version() {
            c = c.version(v.to_string());
        }
        clap_mangen::Man::new(c).render(&mut page).map_err(|e| Error::io(&path, "render man page", e))?;
        std::fs::write(&path, page).map_err(|e| Error::io(&path, "write", e))?;
        out.push(path);
    }
    Ok(out)
}

/// Writes bash, zsh and fish completions for `cmd` into `dir`; returns the files written.
pub fn write_completions(cmd: &clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    use clap_complete::Shell;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create directory", e))?;
    let name = cmd.get_name().to_string();
    [Shell::Bash, Shell::Zsh, Shell::Fish]
        .into_iter()
        .map(|shell| {
            clap_complete::generate_to(shell, &mut cmd.clone(), &name, dir)
                .map_err(|e| Error::io(dir, "write completions", e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_links_are_made_replaced_and_never_clobber_a_file() {
        let d = tempfile::tempdir().unwrap();
        let sbin = d.path().join("sbin");
        let made = install_helper(&sbin, Path::new("/usr/bin/envelopefs")).unwrap();
        assert_eq!(made.len(), 2);
        assert_eq!(std::fs::read_link(sbin.join("mount.fuse.envelopefs")).unwrap(), Path::new("/usr/bin/envelopefs"));
        assert!(install_helper(&sbin, Path::new("/usr/bin/envelopefs")).unwrap().is_empty(), "already there");
        assert_eq!(install_helper(&sbin, Path::new("/opt/envelopefs")).unwrap().len(), 2, "repointed");
        std::fs::remove_file(sbin.join("mount.envelopefs")).unwrap();
        std::fs::write(sbin.join("mount.envelopefs"), b"someone else's").unwrap();
        let e = install_helper(&sbin, Path::new("/usr/bin/envelopefs")).unwrap_err().to_string();
        assert!(e.contains("not a link"), "{e}");
        assert_eq!(std::fs::read(sbin.join("mount.envelopefs")).unwrap(), b"someone else's");
    }
}
