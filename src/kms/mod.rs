//! Root keys: the [`Kms`] trait and its backends, one module each.
//!
//! A KMS wraps and unwraps the volume's KEK (and the per-boot scratch key) under a root key
//! it holds. It is called once per mount, never per extent (a root that keeps volumes'
//! anchors, an HSM token, is also asked to read and write the anchor at each open: `anchor`).
//! Backends never see DEKs, file data or names. The embedded passphrase keystore
//! (`local:PATH`) is the default; PKCS#11 and the AWS KMS API plug in behind the same trait.

mod audit;
#[cfg(feature = "aws-kms")]
mod aws;
mod local;
mod pkcs11;
mod trust;

use std::path::{Path, PathBuf};

pub use audit::{set_timeout, timeout, Audited};
pub use local::LocalKeystore;
pub use pkcs11::Pkcs11Root;
pub use trust::{check_module, check_root, is_own_keystore, ROOTS_ENV, ROOTS_FILE};

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

/// The encryption context of a KMS call: which volume, which purpose, which KEK generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KmsContext {
    pub volume_id: [u8; 16],
    pub purpose: Purpose,
    /// The KEK's generation (0: a KEK made before generations, and every scratch key).
    pub generation: u64,
}

impl KmsContext {
    /// The context of volume `volume_id`'s KEK of generation `generation`.
    pub fn kek(volume_id: [u8; 16], generation: u64) -> Self {
        KmsContext { volume_id, purpose: Purpose::Kek, generation }
    }

    /// `"EVFSKMS1" || volume_id || purpose name [|| boot_id] [|| u64 generation, if not 0]`: the
    /// AAD for backends that take bytes. A scratch key is bound to its boot, a KEK to its
    /// generation.
    pub fn aad(&self) -> Vec<u8> {
        let mut out = b"EVFSKMS1".to_vec();
        out.extend_from_slice(&self.volume_id);
        out.extend_from_slice(self.purpose.name().as_bytes());
        if let Purpose::Scratch { boot_id } = self.purpose {
            out.extend_from_slice(&boot_id);
        }
        if self.generation != 0 {
            out.extend_from_slice(&self.generation.to_le_bytes());
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

/// A 256-bit key from bytes a backend unwrapped (zeroized by the caller); `who` names the
/// backend in the error for a wrong length.
fn key_from_unwrapped(bytes: &[u8], who: &str) -> std::result::Result<Key256, KmsError> {
    Key256::from_fill(|out| {
        let b: &[u8; 32] = bytes.try_into().map_err(|_| ())?;
        out.copy_from_slice(b);
        Ok(())
    })
    .map_err(|()| KmsError::Rejected(format!("{who} returned a key of the wrong length")))
}

/// A root of trust that wraps and unwraps 256-bit keys without ever releasing its own key.
pub trait Kms: Send + Sync + std::fmt::Debug {
    /// The URI this KMS was opened from (as stored in the volume header).
    fn uri(&self) -> &str;
    /// A printable id of the root key (never key material).
    fn key_id(&self) -> String;
    fn wrap(&self, key: &Key256, ctx: &KmsContext) -> std::result::Result<Vec<u8>, KmsError>;
    fn unwrap(&self, wrapped: &[u8], ctx: &KmsContext) -> std::result::Result<Key256, KmsError>;

    /// The periodic re-check of a mounted volume's root (`crate::revocation`): one call
    /// that tells whether the root still vouches for the volume. By default an unwrap of the
    /// wrapped KEK the mount opened, the key dropped (zeroized) at once. `Rejected` means
    /// revoked; `Unavailable`, unreachable for now.
    fn recheck(&self, wrapped: &[u8], ctx: &KmsContext) -> std::result::Result<(), KmsError> {
        self.unwrap(wrapped, ctx).map(drop)
    }

    /// Gives up what this process holds to call the root (a mount that went dark): a PKCS#11
    /// session logs out; a backend holding nothing of the kind does nothing.
    fn disconnect(&self) {}

    /// Whether this backend keeps volumes' anchors beside the root (`anchor.rs`): an HSM
    /// token does, as a data object; the embedded keystore lives in CIPHERDIR (it would be
    /// rolled back with it) and an AWS KMS key has no place for state a data-plane principal
    /// may write.
    fn keeps_anchors(&self) -> bool {
        false
    }

    /// The anchor of volume `volume_id` kept beside the root, if there is one.
    fn read_anchor(&self, volume_id: &[u8; 16]) -> std::result::Result<Option<Vec<u8>>, KmsError> {
        let _ = volume_id;
        Ok(None)
    }

    /// Keeps `text` as volume `volume_id`'s anchor beside the root (replacing the one there).
    /// A root that keeps none refuses, at once (not retried as an unavailable one would be).
    fn write_anchor(&self, volume_id: &[u8; 16], text: &[u8]) -> std::result::Result<(), KmsError> {
        let _ = (volume_id, text);
        Err(KmsError::Rejected("this root keeps no anchors".into()))
    }

    /// Removes volume `volume_id`'s anchor beside the root (`shred --volume`); whether there
    /// was one.
    fn forget_anchor(&self, volume_id: &[u8; 16]) -> std::result::Result<bool, KmsError> {
        let _ = volume_id;
        Ok(false)
    }

    /// Destroys the root key (`shred --volume` of a volume whose root is its own): at once
    /// in an HSM; for a cloud KMS, scheduled after `delete_after_days` (and only when given).
    /// Returns what was done, or `None` where this backend has nothing to destroy.
    fn destroy_root(&self, delete_after_days: Option<u32>) -> std::result::Result<Option<String>, KmsError> {
        let _ = delete_after_days;
        Ok(None)
    }
}

/// A parsed KMS URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KmsUri {
    /// `local:PATH` — the embedded keystore; a relative PATH is relative to CIPHERDIR.
    Local(PathBuf),
    /// `pkcs11:module=PATH;token=LABEL;object=KEYLABEL` — an AES key object in a token.
    Pkcs11 { module: PathBuf, token: String, object: String },
    /// `aws-kms:KEY_ID_OR_ARN` — a symmetric key of the AWS KMS API.
    AwsKms(String),
}

impl KmsUri {
    pub fn parse(uri: &str) -> Result<Self> {
        let (scheme, rest) =
            uri.split_once(':').ok_or_else(|| Error::InvalidArgument(format!("KMS URI {uri:?} has no scheme")))?;
        match scheme {
            "local" if !rest.is_empty() => Ok(KmsUri::Local(PathBuf::from(rest))),
            "local" => Err(Error::InvalidArgument("local: KMS URI needs a path".into())),
            "pkcs11" => Self::parse_pkcs11(uri, rest),
            "aws-kms" if !rest.is_empty() => Ok(KmsUri::AwsKms(rest.to_string())),
            "aws-kms" => Err(Error::InvalidArgument("aws-kms: KMS URI needs a key id or ARN".into())),
            _ => Err(Error::InvalidArgument(format!(
                "unknown KMS scheme {scheme:?} (expected local:, pkcs11: or aws-kms:)"
            ))),
        }
    }

    fn parse_pkcs11(uri: &str, rest: &str) -> Result<Self> {
        let (mut module, mut token, mut object) = (None, None, None);
        for part in rest.split(';').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("module", v)) if !v.is_empty() => module = Some(PathBuf::from(v)),
                Some(("token", v)) if !v.is_empty() => token = Some(v.to_string()),
                Some(("object", v)) if !v.is_empty() => object = Some(v.to_string()),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "{uri:?}: unknown or empty attribute {part:?} (expected module=, token=, object=)"
                    )))
                }
            }
        }
        match (module, token, object) {
            (Some(module), Some(token), Some(object)) => Ok(KmsUri::Pkcs11 { module, token, object }),
            _ => Err(Error::InvalidArgument(format!(
                "{uri:?}: a pkcs11: URI needs module=PATH;token=LABEL;object=KEYLABEL"
            ))),
        }
    }

    /// Whether roots `a` and `b` keep their anchors in one place (one PKCS#11 token: the
    /// anchor object is per volume, not per key), so moving a volume from one to the other
    /// must not remove the anchor from the first.
    pub fn share_anchors(a: &str, b: &str) -> bool {
        match (KmsUri::parse(a), KmsUri::parse(b)) {
            (Ok(KmsUri::Pkcs11 { module: m1, token: t1, .. }), Ok(KmsUri::Pkcs11 { module: m2, token: t2, .. })) => {
                (m1, t1) == (m2, t2)
            }
            _ => false,
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

/// Creates a new root (for `init`; `create_key` makes the key in an HSM or KMS) and returns
/// the KMS holding it. Its [`Kms::uri`] is what the header records (for `aws-kms` with
/// `create_key`, the new key's ARN).
pub fn create(uri: &str, cipherdir: &Path, secrets: &dyn Secrets, kdf: KdfParams, create_key: bool) -> Result<Audited> {
    let inner: Box<dyn Kms> = match KmsUri::parse(uri)? {
        KmsUri::Local(p) => Box::new(LocalKeystore::create(uri, &KmsUri::local_path(&p, cipherdir), secrets, kdf)?),
        KmsUri::Pkcs11 { module, token, object } => {
            let module = trust::check_module(&module, cipherdir, uri)?;
            Box::new(Pkcs11Root::open(uri, &module, &token, &object, secrets, create_key)?)
        }
        KmsUri::AwsKms(key) => aws_root(uri, &key, create_key)?,
    };
    Ok(Audited::new(inner))
}

/// Opens the KMS a volume names — only a root the operator trusts ([`check_root`]), checked
/// before anything is loaded or asked.
pub fn open(uri: &str, cipherdir: &Path, secrets: &dyn Secrets) -> Result<Audited> {
    trust::check_root(uri, cipherdir)?;
    let inner: Box<dyn Kms> = match KmsUri::parse(uri)? {
        KmsUri::Local(p) => Box::new(LocalKeystore::open(uri, &KmsUri::local_path(&p, cipherdir), secrets)?),
        KmsUri::Pkcs11 { module, token, object } => {
            let module = trust::check_module(&module, cipherdir, uri)?;
            Box::new(Pkcs11Root::open(uri, &module, &token, &object, secrets, false)?)
        }
        KmsUri::AwsKms(key) => aws_root(uri, &key, false)?,
    };
    Ok(Audited::new(inner))
}

#[cfg(feature = "aws-kms")]
fn aws_root(uri: &str, key: &str, create_key: bool) -> Result<Box<dyn Kms>> {
    Ok(Box::new(aws::AwsKmsRoot::open(uri, key, create_key)?))
}

#[cfg(not(feature = "aws-kms"))]
fn aws_root(uri: &str, _key: &str, _create_key: bool) -> Result<Box<dyn Kms>> {
    Err(Error::Kms {
        uri: uri.into(),
        reason: "this build of envelopefs has no AWS KMS support: rebuild with `cargo build --features aws-kms`".into(),
    })
}

/// The keystore file of a `local:` URI (for `passwd`, `rotate --root`); an error for other
/// schemes and for a keystore outside CIPHERDIR the operator has not trusted.
pub fn local_keystore_path(uri: &str, cipherdir: &Path) -> Result<PathBuf> {
    match KmsUri::parse(uri)? {
        KmsUri::Local(p) => {
            trust::check_root(uri, cipherdir)?;
            Ok(KmsUri::local_path(&p, cipherdir))
        }
        _ => Err(Error::InvalidArgument(format!("{uri} is not an embedded keystore"))),
    }
}

/// The volume's own keystore (`local:NAME`, a plain name inside CIPHERDIR), which `shred
/// --volume` and `rotate --root` may destroy; `None` for any other root.
pub fn own_keystore(uri: &str, cipherdir: &Path) -> Option<PathBuf> {
    match KmsUri::parse(uri).ok()? {
        KmsUri::Local(p) if trust::is_own_keystore(&p) => Some(cipherdir.join(p)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_or_say_why_not() {
        assert_eq!(KmsUri::parse("local:keystore").unwrap(), KmsUri::Local("keystore".into()));
        assert_eq!(
            KmsUri::parse("pkcs11:module=/usr/lib/m.so;token=t 1;object=root").unwrap(),
            KmsUri::Pkcs11 { module: "/usr/lib/m.so".into(), token: "t 1".into(), object: "root".into() }
        );
        assert_eq!(
            KmsUri::parse("aws-kms:arn:aws:kms:us-east-1:1:key/abc").unwrap(),
            KmsUri::AwsKms("arn:aws:kms:us-east-1:1:key/abc".into())
        );
        for bad in [
            "keystore",
            "local:",
            "pkcs11:module=/m.so;token=t",
            "pkcs11:module=/m.so;tok=t;object=o",
            "aws-kms:",
            "vault:x",
        ] {
            assert!(KmsUri::parse(bad).is_err(), "{bad}");
        }
    }
}
