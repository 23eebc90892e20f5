//! The crate error, the one errno table and the one exit-code table.
//!
//! Every variant names the file (or KMS) it is about and the cause in words; no variant
//! carries a third-party type, so dependencies can change without breaking callers.

use std::io;
use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: {op}: {source}", path.display())]
    Io { path: PathBuf, op: &'static str, source: io::Error },

    #[error("{}: wrong passphrase (or the keystore was altered)", .0.display())]
    WrongPassphrase(PathBuf),

    #[error("{}: not an envelopefs volume: {reason}", path.display())]
    NotAVolume { path: PathBuf, reason: String },

    #[error("{}: directory is not empty; init needs an empty or missing directory", .0.display())]
    NotEmpty(PathBuf),

    #[error("{}: corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },

    #[error("{}: unsupported: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },

    #[error("{}: integrity error: {reason}", path.display())]
    Integrity { path: PathBuf, reason: String },

    #[error("{}: metadata store: {reason}", path.display())]
    Store { path: PathBuf, reason: String },

    #[error("KMS {uri}: {reason}")]
    Kms { uri: String, reason: String },

    #[error("KMS {uri}: untrusted root: {reason}")]
    UntrustedRoot { uri: String, reason: String },

    #[error("passphrase: {0}")]
    Passphrase(String),

    #[error("{}: no such file or directory", .0.display())]
    NotFound(PathBuf),

    #[error("{}: already exists", .0.display())]
    Exists(PathBuf),

    #[error("{}: is a directory", .0.display())]
    IsDir(PathBuf),

    #[error("{}: not a directory", .0.display())]
    NotDir(PathBuf),

    #[error("{}: directory not empty", .0.display())]
    DirNotEmpty(PathBuf),

    #[error("{}: file name too long", .0.display())]
    NameTooLong(PathBuf),

    #[error("{0}")]
    InvalidArgument(String),

    #[error("{}: no such attribute", .0.display())]
    NoAttribute(PathBuf),

    #[error("not supported: {0}")]
    NotSupported(String),

    #[error("{}: {reason}", path.display())]
    Mountpoint { path: PathBuf, reason: String },

    #[error("{}: busy: {reason}", path.display())]
    Busy { path: PathBuf, reason: String },

    #[error("{}: cannot move or link across the boundary of a scratch directory", .0.display())]
    CrossesScratch(PathBuf),

    #[error("{}: not an envelopefs mount", .0.display())]
    NotMounted(PathBuf),

    #[error("FUSE: {0}")]
    Fuse(String),

    #[error("{}: this volume was shredded; its keys are destroyed and nothing in it can be decrypted", .0.display())]
    Shredded(PathBuf),

    #[error("{}: {count} problem(s) left; see above (run `envelopefs fsck --repair` for what can be repaired)", path.display())]
    Unrepaired { path: PathBuf, count: usize },

    /// The volume's root refused the mount's periodic re-check (or stayed unreachable past
    /// the grace): its keys are gone from memory and nothing in it is served any more.
    #[error("{}: the root key no longer vouches for this volume ({reason}); its keys were zeroized", path.display())]
    Revoked { path: PathBuf, reason: String },

    /// An error the mount daemon reported before the mount was ready.
    #[error("{message}")]
    Daemon { code: u8, message: String },
}

impl Error {
    /// An I/O error about `path` while doing `op`.
    pub fn io(path: impl AsRef<Path>, op: &'static str, source: io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), op, source }
    }

    pub fn corrupt(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Error::Corrupt { path: path.as_ref().to_path_buf(), reason: reason.into() }
    }

    pub fn integrity(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Error::Integrity { path: path.as_ref().to_path_buf(), reason: reason.into() }
    }

    /// The same error about `path` instead (the plaintext name of a backing file).
    pub fn renamed(self, path: &Path) -> Self {
        let p = path.to_path_buf();
        match self {
            Error::Io { op, source, .. } => Error::Io { path: p, op, source },
            Error::Integrity { reason, .. } => Error::Integrity { path: p, reason },
            Error::Corrupt { reason, .. } => Error::Corrupt { path: p, reason },
            Error::Shredded(_) => Error::Shredded(p),
            Error::WrongPassphrase(_) => Error::WrongPassphrase(p),
            other => other,
        }
    }

    /// The exit code of a dark mount (`Error::Revoked`): also its daemon's, when a signal
    /// ends it before the error itself is at hand.
    pub const REVOKED_EXIT: u8 = 24;

    /// The errno a file-system caller (FUSE) sees for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc_errno::EIO),
            Error::NotFound(_) => libc_errno::ENOENT,
            Error::Exists(_) => libc_errno::EEXIST,
            Error::IsDir(_) => libc_errno::EISDIR,
            Error::NotDir(_) => libc_errno::ENOTDIR,
            Error::DirNotEmpty(_) => libc_errno::ENOTEMPTY,
            Error::NameTooLong(_) => libc_errno::ENAMETOOLONG,
            Error::InvalidArgument(_) => libc_errno::EINVAL,
            Error::NoAttribute(_) => libc_errno::ENODATA,
            Error::NotSupported(_) => libc_errno::EOPNOTSUPP,
            Error::Mountpoint { .. } | Error::Busy { .. } => libc_errno::EBUSY,
            Error::CrossesScratch(_) => libc_errno::EXDEV,
            Error::WrongPassphrase(_) | Error::Passphrase(_) | Error::UntrustedRoot { .. } => libc_errno::EACCES,
            Error::Revoked { .. } => libc_errno::EKEYREVOKED,
            _ => libc_errno::EIO,
        }
    }

    /// The process exit code for this error (documented in `docs/OPERATIONS.md`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::WrongPassphrase(_) => 10,
            Error::NotAVolume { .. } => 11,
            Error::Corrupt { .. } | Error::Store { .. } => 12,
            Error::Unsupported { .. } => 13,
            Error::Integrity { .. } => 14,
            Error::Kms { .. } => 15,
            Error::Io { .. } => 16,
            Error::Passphrase(_) => 17,
            Error::NotEmpty(_) => 18,
            Error::Mountpoint { .. } | Error::Busy { .. } => 19,
            Error::NotMounted(_) => 20,
            Error::Fuse(_) => 21,
            Error::Shredded(_) => 22,
            Error::UntrustedRoot { .. } => 23,
            Error::Revoked { .. } => Error::REVOKED_EXIT,
            Error::Daemon { code, .. } => *code,
            Error::Unrepaired { .. } => 4,
            _ => 1,
        }
    }
}

/// The errno values we use (Linux numbers; stable ABI), kept here so the table above is
/// the only place that knows them.
mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EACCES: i32 = 13;
    pub const EEXIST: i32 = 17;
    /// "Key has been revoked": what every request on a mount whose root was revoked gets.
    pub const EKEYREVOKED: i32 = 128;
    pub const EXDEV: i32 = 18;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOTEMPTY: i32 = 39;
    pub const EBUSY: i32 = 16;
    pub const ENODATA: i32 = 61;
    pub const EOPNOTSUPP: i32 = 95;
}
