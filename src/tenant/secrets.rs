//! Where a tenant's secrets come from. A tenant whose root is an embedded keystore of its
//! own has a passphrase of its own: from `--tenant-passfile DIR=FILE` (DIR: the tenant's
//! label, as `status` lists it, or its id), else from a prompt naming the tenant when the
//! caller may ask; never the volume's passphrase. A tenant on an HSM token gets its PIN from
//! the source the caller gives (the mount's daemon: its own rules, `daemon::tenants`).

use std::path::{Path, PathBuf};

use super::volume_path;
use crate::format::hex;
use crate::fs::TenantEntry;
use crate::secret::{Passphrase, Secrets};
use crate::{Error, Result};

/// `--tenant-passfile DIR=FILE`: the passphrase of the tenant at DIR is the first line of
/// FILE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPassfile {
    /// The tenant's label as a path inside the volume (`team-a` for `/team-a`), or its id.
    pub dir: PathBuf,
    /// Absolute, so a daemon that changes directory reads the same file.
    pub file: PathBuf,
}

impl std::str::FromStr for TenantPassfile {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad =
            || Error::InvalidArgument(format!("--tenant-passfile {s:?}: expected DIR=FILE (DIR: the tenant's root)"));
        let (dir, file) = s.split_once('=').ok_or_else(bad)?;
        if dir.is_empty() || file.is_empty() {
            return Err(bad());
        }
        let file = std::path::absolute(file).map_err(|e| Error::io(file, "resolve", e))?;
        Ok(TenantPassfile { dir: volume_path(Path::new(dir))?, file })
    }
}

/// The secrets of every tenant a command or a mount opens.
pub struct TenantSecrets<'a> {
    pins: &'a dyn Secrets,
    passfiles: &'a [TenantPassfile],
    prompt: bool,
}

impl<'a> TenantSecrets<'a> {
    /// `pins`: where HSM PINs come from; `prompt`: a keystore tenant with no passfile is
    /// asked for on the terminal (commands; never the mount's daemon).
    pub fn new(pins: &'a dyn Secrets, passfiles: &'a [TenantPassfile], prompt: bool) -> Self {
        TenantSecrets { pins, passfiles, prompt }
    }

    /// The secrets of the tenant labelled `label` (id `id`).
    pub fn of(&self, label: &str, id: &[u8; 16]) -> OneTenant<'_> {
        OneTenant { all: self, label: label.to_string(), id: *id }
    }

    /// The secrets of tenant `entry`.
    pub fn of_entry(&self, entry: &TenantEntry) -> OneTenant<'_> {
        self.of(&entry.label, &entry.id)
    }

    /// Passfiles that name no tenant of `list` (a typo, or a tenant since shredded).
    pub fn unused(&self, list: &[TenantEntry]) -> Vec<&TenantPassfile> {
        self.passfiles.iter().filter(|p| !list.iter().any(|t| names(p, &t.label, &t.id))).collect()
    }
}

fn names(p: &TenantPassfile, label: &str, id: &[u8; 16]) -> bool {
    volume_path(Path::new(label)).is_ok_and(|l| l == p.dir) || p.dir == Path::new(&hex(id))
}

/// One tenant's secrets.
pub struct OneTenant<'a> {
    all: &'a TenantSecrets<'a>,
    label: String,
    id: [u8; 16],
}

impl Secrets for OneTenant<'_> {
    fn passphrase(&self, _keystore: &Path, new: bool) -> Result<Passphrase> {
        let label = &self.label;
        if let Some(p) = self.all.passfiles.iter().find(|p| names(p, label, &self.id)) {
            return crate::secret::from_file(&p.file).map_err(|e| match e {
                Error::Passphrase(m) => Error::Passphrase(format!("tenant {label}: {m}")),
                e => e,
            });
        }
        let flag = format!("--tenant-passfile {label}=FILE");
        if self.all.prompt {
            return crate::secret::prompt(&format!("tenant {label}"), new, &flag);
        }
        Err(Error::Passphrase(format!("tenant {label}: locked, no passphrase given ({flag})")))
    }

    fn pin(&self, token: &str) -> Result<Passphrase> {
        self.all.pins.pin(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passfiles_name_a_tenant_by_label_or_id() {
        let p: TenantPassfile = "/team-a/=/etc/a.pass".parse().unwrap();
        assert_eq!(p, TenantPassfile { dir: "team-a".into(), file: "/etc/a.pass".into() });
        assert!(names(&p, "/team-a", &[0; 16]));
        assert!(!names(&p, "/team-b", &[0; 16]));
        let by_id: TenantPassfile = format!("{}=/x", hex(&[7; 16])).parse().unwrap();
        assert!(names(&by_id, "/elsewhere", &[7; 16]));
        for bad in ["team-a", "=/x", "team-a=", "/=/x", "../a=/x"] {
            assert!(bad.parse::<TenantPassfile>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_tenant_without_a_passfile_is_locked_when_nobody_may_be_asked() {
        let pins = Passphrase::new("pin").unwrap();
        let files = ["/a=/nonexistent/a.pass".parse().unwrap()];
        let all = TenantSecrets::new(&pins, &files, false);
        let e = all.of("/b", &[1; 16]).passphrase(Path::new("k"), false).unwrap_err().to_string();
        assert!(e.contains("tenant /b: locked") && e.contains("--tenant-passfile /b=FILE"), "{e}");
        let e = all.of("/a", &[1; 16]).passphrase(Path::new("k"), false).unwrap_err().to_string();
        assert!(e.contains("tenant /a") && e.contains("/nonexistent/a.pass"), "{e}");
        assert_eq!(all.of("/b", &[1; 16]).pin("tok").unwrap().expose(), b"pin");
        assert_eq!(all.unused(&[]).len(), 1);
    }
}
