//! Which roots the operator trusts, and which PKCS#11 modules may be loaded.
//!
//! The KMS URI in a volume header is written by whoever can write CIPHERDIR, so it chooses
//! nothing by itself: before any KMS call, prompt or library load, [`check_root`] accepts it
//! only if it is the volume's own embedded keystore (`local:NAME`, one plain name inside
//! CIPHERDIR: its passphrase is what authenticates it) or a root the operator named:
//! `--trust-root URI` (repeatable; passed on to a mount's daemon as
//! `ENVELOPEFS_TRUST_ROOT`), `ENVELOPEFS_TRUST_ROOT` (URIs, one per line) or the file
//! [`ROOTS_FILE`] (one per line, `#` comments; root-owned and writable by nobody else, up
//! to `/`). A `pkcs11:` entry without `object=` trusts every key object of that module and
//! token (so `rotate --root` may make a new one); an `aws-kms:` entry ending in `*` trusts
//! every key whose ARN starts with what comes before it (an account's keys in a region).
//!
//! A PKCS#11 module is loaded only from an absolute path that is, with every directory
//! above it, owned by root and writable by no group or other user, and that is not inside
//! CIPHERDIR ([`check_module`]); this holds for roots named at `init` and `rotate --root
//! --to` too. Knows no key material.

use std::path::Path;

use super::KmsUri;
use crate::{confine, Error, Result};

/// The system-wide list of trusted roots.
pub const ROOTS_FILE: &str = "/etc/envelopefs/roots";
/// The environment variable holding trusted roots (one per line).
pub const ROOTS_ENV: &str = "ENVELOPEFS_TRUST_ROOT";

/// Accepts `uri` (from the header of the volume in `cipherdir`) or says why not, before
/// anything is loaded or asked.
pub fn check_root(uri: &str, cipherdir: &Path) -> Result<()> {
    let parsed = KmsUri::parse(uri)?;
    if let KmsUri::Local(p) = &parsed {
        if is_own_keystore(p) {
            return Ok(());
        }
    }
    let named = operator_roots();
    if named.iter().any(|entry| trusts(entry, &parsed)) {
        if let KmsUri::Pkcs11 { module, .. } = &parsed {
            check_module(module, cipherdir, uri)?; // and again, by kms::open, right before loading
        }
        return Ok(());
    }
    Err(Error::UntrustedRoot {
        uri: uri.to_string(),
        reason: format!(
            "the volume header names this root, but the operator has not: pass --trust-root '{uri}' \
             (or set {ROOTS_ENV}, or add it to {ROOTS_FILE}) if it is yours. Nothing was loaded or asked."
        ),
    })
}

/// A `local:` path that is one plain name: the keystore inside CIPHERDIR.
pub fn is_own_keystore(p: &Path) -> bool {
    let mut parts = p.components();
    matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None))
}

/// Refuses a PKCS#11 module that someone other than root could have written, or that lies
/// inside CIPHERDIR.
/// Returns the path that was checked (symlinks resolved): the one to load.
pub fn check_module(module: &Path, cipherdir: &Path, uri: &str) -> Result<std::path::PathBuf> {
    let refuse = |why: String| Error::UntrustedRoot {
        uri: uri.to_string(),
        reason: format!("PKCS#11 module {} not loaded: {why}", module.display()),
    };
    if !module.is_absolute() {
        return Err(refuse("the path is not absolute".into()));
    }
    let real = std::fs::canonicalize(module).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Kms {
            uri: uri.to_string(),
            reason: format!(
                "PKCS#11 module {} does not exist (for SoftHSM2: apt-get install softhsm2)",
                module.display()
            ),
        },
        _ => refuse(format!("cannot resolve it: {e}")),
    })?;
    if confine::is_inside(&real, cipherdir) {
        return Err(refuse("it lies inside the volume directory".into()));
    }
    confine::check_root_owned(&real).map_err(refuse)?;
    Ok(real)
}

/// Whether the operator's `entry` covers `uri`.
fn trusts(entry: &str, uri: &KmsUri) -> bool {
    match (parse_entry(entry), uri) {
        (Some(Entry::Token { module, token }), KmsUri::Pkcs11 { module: m, token: t, .. }) => {
            module == *m && token == *t
        }
        (Some(Entry::AwsPrefix(prefix)), KmsUri::AwsKms(key)) => key.starts_with(&prefix),
        // A relative keystore path would mean another file for every CIPHERDIR.
        (Some(Entry::Exact(KmsUri::Local(p))), _) if !p.is_absolute() => false,
        (Some(Entry::Exact(e)), u) => e == *u,
        _ => false,
    }
}

enum Entry {
    Exact(KmsUri),
    /// `pkcs11:module=..;token=..` without an object: every key of that token.
    Token {
        module: std::path::PathBuf,
        token: String,
    },
    /// `aws-kms:arn:aws:kms:REGION:ACCOUNT:key/*`: every key of that account and region.
    AwsPrefix(String),
}

fn parse_entry(entry: &str) -> Option<Entry> {
    if let Some(prefix) = entry.strip_prefix("aws-kms:").and_then(|k| k.strip_suffix('*')) {
        // Only an ARN prefix with an account: a bare `*` would trust any key anywhere.
        let parts: Vec<&str> = prefix.split(':').collect();
        return (parts.len() == 6 && parts[0] == "arn" && parts[4].len() == 12 && parts[5] == "key/")
            .then(|| Entry::AwsPrefix(prefix.to_string()));
    }
    if let Ok(u) = KmsUri::parse(entry) {
        return Some(Entry::Exact(u));
    }
    // A pkcs11: entry without object= parses once given a placeholder object.
    match KmsUri::parse(&format!("{entry};object=-")) {
        Ok(KmsUri::Pkcs11 { module, token, .. }) if !entry.contains("object=") => Some(Entry::Token { module, token }),
        _ => None,
    }
}

/// The roots the operator named: environment, then the system file (if it may be trusted).
fn operator_roots() -> Vec<String> {
    let mut out: Vec<String> = std::env::var(ROOTS_ENV).unwrap_or_default().lines().map(str::to_string).collect();
    let file = Path::new(ROOTS_FILE);
    if file.exists() {
        match confine::check_root_owned(file) {
            Ok(()) => out.extend(std::fs::read_to_string(file).unwrap_or_default().lines().map(str::to_string)),
            Err(why) => tracing::warn!("{ROOTS_FILE} ignored: {why}"),
        }
    }
    out.into_iter().map(|l| l.trim().to_string()).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_cover_exact_roots_and_whole_tokens() {
        let uri = KmsUri::parse("pkcs11:module=/usr/lib/m.so;token=t;object=root-r0011aabb").unwrap();
        assert!(trusts("pkcs11:module=/usr/lib/m.so;token=t", &uri));
        assert!(trusts("pkcs11:object=root-r0011aabb;token=t;module=/usr/lib/m.so", &uri));
        assert!(!trusts("pkcs11:module=/usr/lib/m.so;token=t;object=root", &uri));
        assert!(!trusts("pkcs11:module=/tmp/m.so;token=t", &uri));
        assert!(!trusts("pkcs11:module=/usr/lib/m.so;token=other", &uri));
        let aws = KmsUri::parse("aws-kms:arn:aws:kms:us-east-1:1:key/a").unwrap();
        assert!(trusts("aws-kms:arn:aws:kms:us-east-1:1:key/a", &aws));
        assert!(!trusts("aws-kms:arn:aws:kms:us-east-1:1:key/b", &aws));
        assert!(!trusts("garbage", &aws));
        let acct = KmsUri::parse("aws-kms:arn:aws:kms:us-east-1:123456789012:key/abc").unwrap();
        assert!(trusts("aws-kms:arn:aws:kms:us-east-1:123456789012:key/*", &acct));
        assert!(!trusts("aws-kms:arn:aws:kms:us-east-1:999999999999:key/*", &acct));
        assert!(!trusts("aws-kms:*", &acct));
        assert!(!trusts("aws-kms:arn:*", &acct));
    }

    #[test]
    fn only_a_plain_name_is_the_volumes_own_keystore() {
        assert!(is_own_keystore(Path::new("keystore")));
        for p in ["/etc/keystore", "../keystore", "a/keystore", "."] {
            assert!(!is_own_keystore(Path::new(p)), "{p}");
        }
    }
}
