//! Where passphrases and PINs come from: `--passfile`, `ENVELOPEFS_PASSFILE`, `--extpass
//! CMD`, or a prompt on the terminal; PINs from `--pin-file`, `ENVELOPEFS_PIN_FILE` or a
//! prompt. Never from argv. Secrets live only in zeroizing buffers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use zeroize::Zeroizing;

use crate::{Error, Result};

/// A passphrase; zeroized on drop, redacted in `Debug`.
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl Passphrase {
    /// A passphrase from bytes the caller already holds (tests, library users).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self> {
        let bytes = Zeroizing::new(bytes.into());
        if bytes.is_empty() {
            return Err(Error::Passphrase("the passphrase is empty".into()));
        }
        Ok(Passphrase(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(redacted)")
    }
}

/// Supplies secrets to KMS backends on demand.
pub trait Secrets {
    /// The passphrase protecting `keystore`. `new` is true when a passphrase is being set,
    /// so an interactive source asks twice.
    fn passphrase(&self, keystore: &Path, new: bool) -> Result<Passphrase>;

    /// The user PIN of the PKCS#11 token `token`.
    fn pin(&self, token: &str) -> Result<Passphrase> {
        Err(Error::Passphrase(format!("no PIN source for token {token:?}: use --pin-file or ENVELOPEFS_PIN_FILE")))
    }
}

/// A secret handed over whole (the mount daemon gets the passphrase or PIN through a pipe).
impl Secrets for Passphrase {
    fn passphrase(&self, _keystore: &Path, _new: bool) -> Result<Passphrase> {
        Passphrase::new(self.expose().to_vec())
    }

    fn pin(&self, _token: &str) -> Result<Passphrase> {
        Passphrase::new(self.expose().to_vec())
    }
}

/// The command-line sources, tried in this order: `--passfile`, `--extpass`,
/// `ENVELOPEFS_PASSFILE`, then a terminal prompt.
#[derive(Debug, Clone, Default)]
pub struct PassSource {
    pub passfile: Option<PathBuf>,
    pub extpass: Option<String>,
    /// Name of the environment variable consulted after the flags.
    pub env_var: Option<&'static str>,
    /// `--pin-file` (else `ENVELOPEFS_PIN_FILE`, else a terminal prompt).
    pub pin_file: Option<PathBuf>,
}

impl Secrets for PassSource {
    fn passphrase(&self, keystore: &Path, new: bool) -> Result<Passphrase> {
        if let Some(file) = &self.passfile {
            return from_file(file);
        }
        if let Some(cmd) = &self.extpass {
            return from_command(cmd);
        }
        if let Some(var) = self.env_var {
            if let Some(file) = std::env::var_os(var) {
                return from_file(Path::new(&file));
            }
        }
        from_terminal(keystore, new)
    }

    fn pin(&self, token: &str) -> Result<Passphrase> {
        if let Some(file) = self.pin_file.clone().or_else(|| std::env::var_os("ENVELOPEFS_PIN_FILE").map(PathBuf::from))
        {
            return from_file(&file).map_err(|e| match e {
                Error::Passphrase(m) => Error::Passphrase(format!("PIN: {m}")),
                e => e,
            });
        }
        let pin =
            Zeroizing::new(rpassword::prompt_password(format!("User PIN for token {token:?}: ")).map_err(|e| {
                Error::Passphrase(format!(
                    "no PIN source: use --pin-file FILE or ENVELOPEFS_PIN_FILE, or run on a terminal ({e})"
                ))
            })?);
        Passphrase::new(pin.as_bytes().to_vec())
    }
}

/// The first line of `path` (without its line ending).
pub fn from_file(path: &Path) -> Result<Passphrase> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| Error::Passphrase(format!("{}: {e}", path.display())))?);
    first_line(&bytes).map_err(|e| Error::Passphrase(format!("{}: {e}", path.display())))
}

/// The first line `cmd` (run by `/bin/sh -c`) prints on stdout; it must exit 0.
fn from_command(cmd: &str) -> Result<Passphrase> {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::inherit())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::Passphrase(format!("--extpass: cannot run: {e}")))?;
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        return Err(Error::Passphrase(format!("--extpass command failed ({})", out.status)));
    }
    first_line(&stdout).map_err(|e| Error::Passphrase(format!("--extpass: {e}")))
}

fn from_terminal(keystore: &Path, new: bool) -> Result<Passphrase> {
    prompt(&keystore.display().to_string(), new, "--passfile FILE, --extpass CMD or ENVELOPEFS_PASSFILE")
}

/// Asks on the terminal for the passphrase of `what` (twice when `new`); without a terminal,
/// says to use `sources` instead.
pub fn prompt(what: &str, new: bool, sources: &str) -> Result<Passphrase> {
    let no_tty = |e: std::io::Error| {
        Error::Passphrase(format!("no passphrase source for {what}: use {sources}, or run on a terminal ({e})"))
    };
    let asked = if new { "New passphrase" } else { "Passphrase" };
    let first = Zeroizing::new(rpassword::prompt_password(format!("{asked} for {what}: ")).map_err(no_tty)?);
    if new {
        let again = Zeroizing::new(rpassword::prompt_password("Repeat passphrase: ").map_err(no_tty)?);
        if *first != *again {
            return Err(Error::Passphrase("the two passphrases differ".into()));
        }
    }
    Passphrase::new(first.as_bytes().to_vec())
}

fn first_line(bytes: &[u8]) -> std::result::Result<Passphrase, String> {
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Passphrase::new(line.to_vec()).map_err(|_| "the passphrase is empty".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_rules() {
        assert_eq!(first_line(b"abc\n").unwrap().expose(), b"abc");
        assert_eq!(first_line(b"abc\r\nsecond").unwrap().expose(), b"abc");
        assert_eq!(first_line(b"a b").unwrap().expose(), b"a b");
        assert!(first_line(b"\nabc").is_err());
        assert!(first_line(b"").is_err());
    }

    #[test]
    fn extpass_runs_a_command() {
        assert_eq!(from_command("echo hunter2").unwrap().expose(), b"hunter2");
        assert!(from_command("exit 3").is_err());
    }
}
