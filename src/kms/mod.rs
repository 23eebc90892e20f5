//! Root keys: the [`Kms`] trait and its backends, one module each.
//!
//! A KMS wraps and unwraps the volume's KEK (and the per-boot scratch key) under a root key
//! it holds. It is called once per mount, never per extent. Backends never see DEKs, file
//! data or names. The embedded passphrase keystore (`local:PATH`) is the default; PKCS#11
//! and the AWS KMS API plug in behind the same trait.

mod local;

use std::path::{Path, PathBuf};

pub use local::LocalKeystore;

use crate::crypto::Key256;
use crate::format::KdfParams;
use crate::secret::Secrets;
use crate::{Error, Result};

/// What a wrapped key is for; sent to the KMS as its encryption context / AAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The volume's key-encryption key.
    Kek,
    /// The per-boot scratch key of the boot with this id.
    Scratch { boot_id: [u8; 16] },
}

impl Purpose {
    pub fn name(self) -> &'static str {
        match self {
            Purpose::Kek => "kek",
            Purpose::Scratch { .. } => "scratch",
        }
    }
}

/// The encryption context of a KMS call: which volume, which purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KmsContext {
    pub volume_id: [u8; 16],
    pub purpose: Purpose,
}

impl KmsContext {
    /// `"EVFSKMS1" || volume_id || purpose name [|| boot_id]`: the AAD for backends that
    /// take bytes. A scratch key is bound to its boot.
    pub fn aad(&self) -> Vec<u8> {
        let mut out = b"EVFSKMS1".to_vec();
        out.extend_from_slice(&self.volume_id);
        out.extend_from_slice(self.purpose.name().as_bytes());
        if let Purpose::Scratch { boot_id } = self.purpose {
            out.extend_from_slice(&boot_id);
        }
        out
    }
}

/// Why a KMS call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KmsError {
    /// The KMS answered and refused: the wrapped key or its context does not authenticate
    /// under this root.
    Rejected(String),
    /// The KMS could not be reached or is not usable right now.
    Unavailable(String),
}

impl std::fmt::Display for KmsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KmsError::Rejected(r) => write!(f, "refused: {r}"),
            KmsError::Unavailable(r) => write!(f, "unavailable: {r}"),
        }
    }
}

/// A root of trust that wraps and unwraps 256-bit keys without ever releasing its own key.
pub trait Kms: Send + Sync + std::fmt::Debug {
    /// The URI this KMS was opened from (as stored in the volume header).
    fn uri(&self) -> &str;
    /// A printable id of the root key (never key material).
    fn key_id(&self) -> String;
    fn wrap(&self, key: &Key256, ctx: &KmsContext) -> std::result::Result<Vec<u8>, KmsError>;
    fn unwrap(&self, wrapped: &[u8], ctx: &KmsContext) -> std::result::Result<Key256, KmsError>;
}

/// A KMS that counts the calls made through it (for `status`: one unwrap per mount).
#[derive(Debug)]
pub struct CountingKms {
    inner: Box<dyn Kms>,
    wraps: std::sync::atomic::AtomicU64,
    unwraps: std::sync::atomic::AtomicU64,
}

impl CountingKms {
    pub fn new(inner: Box<dyn Kms>) -> Self {
        CountingKms { inner, wraps: Default::default(), unwraps: Default::default() }
    }

    /// (wrap calls, unwrap calls) so far.
    pub fn calls(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.wraps.load(Relaxed), self.unwraps.load(Relaxed))
    }
}

impl Kms for CountingKms {
    fn uri(&self) -> &str {
        self.inner.uri()
    }

    fn key_id(&self) -> String {
        self.inner.key_id()
    }

    fn wrap(&self, key: &Key256, ctx: &KmsContext) -> std::result::Result<Vec<u8>, KmsError> {
        self.wraps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.wrap(key, ctx)
    }

    fn unwrap(&self, wrapped: &[u8], ctx: &KmsContext) -> std::result::Result<Key256, KmsError> {
        self.unwraps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.unwrap(wrapped, ctx)
    }
}

/// A parsed KMS URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KmsUri {
    /// `local:PATH` — the embedded keystore; a relative PATH is relative to CIPHERDIR.
    Local(PathBuf),
}

impl KmsUri {
    pub fn parse(uri: &str) -> Result<Self> {
        let (scheme, rest) =
            uri.split_once(':').ok_or_else(|| Error::InvalidArgument(format!("KMS URI {uri:?} has no scheme")))?;
        match scheme {
            "local" if !rest.is_empty() => Ok(KmsUri::Local(PathBuf::from(rest))),
            "local" => Err(Error::InvalidArgument("local: KMS URI needs a path".into())),
            "pkcs11" | "aws-kms" => Err(Error::Kms {
                uri: uri.into(),
                reason: format!("the {scheme} backend is not available in this build of envelopefs"),
            }),
            _ => Err(Error::InvalidArgument(format!(
                "unknown KMS scheme {scheme:?} (expected local:, pkcs11: or aws-kms:)"
            ))),
        }
    }

    /// The keystore path of a `local:` URI, resolved against `cipherdir`.
    fn local_path(path: &Path, cipherdir: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            cipherdir.join(path)
        }
    }
}

/// Creates a new root (for `init`) and returns the KMS holding it.
pub fn create(uri: &str, cipherdir: &Path, secrets: &dyn Secrets, kdf: KdfParams) -> Result<Box<dyn Kms>> {
    match KmsUri::parse(uri)? {
        KmsUri::Local(p) => Ok(Box::new(LocalKeystore::create(uri, &KmsUri::local_path(&p, cipherdir), secrets, kdf)?)),
    }
}

/// Opens the KMS a volume names.
pub fn open(uri: &str, cipherdir: &Path, secrets: &dyn Secrets) -> Result<Box<dyn Kms>> {
    match KmsUri::parse(uri)? {
        KmsUri::Local(p) => Ok(Box::new(LocalKeystore::open(uri, &KmsUri::local_path(&p, cipherdir), secrets)?)),
    }
}

/// The keystore file of a `local:` URI (for `passwd`); an error for other schemes.
pub fn local_keystore_path(uri: &str, cipherdir: &Path) -> Result<PathBuf> {
    match KmsUri::parse(uri)? {
        KmsUri::Local(p) => Ok(KmsUri::local_path(&p, cipherdir)),
    }
}
