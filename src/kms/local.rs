//! The embedded keystore (`local:PATH`): a random root key sealed under
//! Argon2id(passphrase) with AES-256-GCM-SIV, the keystore header as AAD.
//!
//! Overwriting this file is not a guaranteed erase on SSDs or journaling file systems;
//! HSM/KMS roots give the stronger shred (`docs/SECURITY.md`).

use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};

use super::{Kms, KmsContext, KmsError};
use crate::crypto::{random_array, Key256, KeyWrapper};
use crate::durable;
use crate::format::{hex, KdfParams, KeystoreFile};
use crate::secret::{Passphrase, Secrets};
use crate::{Error, Result};

pub struct LocalKeystore {
    uri: String,
    key_id: [u8; 16],
    root: KeyWrapper,
}

impl std::fmt::Debug for LocalKeystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeystore").field("uri", &self.uri).field("key_id", &hex(&self.key_id)).finish()
    }
}

impl LocalKeystore {
    /// Generates a root key, seals it under a new passphrase and writes `path` (mode 0600).
    /// Refuses to overwrite an existing keystore.
    pub fn create(uri: &str, path: &Path, secrets: &dyn Secrets, kdf: KdfParams) -> Result<Self> {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(Error::Exists(path.to_path_buf()));
        }
        let pass = secrets.passphrase(path, true)?;
        let root = Key256::generate();
        let file = seal(&root, random_array(), &pass, kdf, path)?;
        durable::replace_file(path, &file.encode(), 0o600)?;
        Ok(LocalKeystore { uri: uri.into(), key_id: file.key_id, root: KeyWrapper::new(&root) })
    }

    /// Reads `path` and unseals the root key with the passphrase from `secrets`.
    pub fn open(uri: &str, path: &Path, secrets: &dyn Secrets) -> Result<Self> {
        let file = read(path)?;
        let pass = secrets.passphrase(path, false)?;
        let root = unseal(&file, &pass, path)?;
        Ok(LocalKeystore { uri: uri.into(), key_id: file.key_id, root: KeyWrapper::new(&root) })
    }

    /// Re-seals the root key under a new passphrase (and fresh salt); the root key, and so
    /// every volume under it, is unchanged.
    pub fn change_passphrase(path: &Path, old: &dyn Secrets, new: &dyn Secrets, kdf: KdfParams) -> Result<()> {
        let file = read(path)?;
        let root = unseal(&file, &old.passphrase(path, false)?, path)?;
        let new_pass = new.passphrase(path, true)?;
        let resealed = seal(&root, file.key_id, &new_pass, kdf, path)?;
        durable::replace_file(path, &resealed.encode(), 0o600)
    }
}

impl Kms for LocalKeystore {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn key_id(&self) -> String {
        hex(&self.key_id)
    }

    fn wrap(&self, key: &Key256, ctx: &KmsContext) -> std::result::Result<Vec<u8>, KmsError> {
        Ok(self.root.wrap(key, &ctx.aad()))
    }

    fn unwrap(&self, wrapped: &[u8], ctx: &KmsContext) -> std::result::Result<Key256, KmsError> {
        self.root.unwrap(wrapped, &ctx.aad()).map_err(|_| {
            KmsError::Rejected("the wrapped key does not authenticate under this keystore's root key".into())
        })
    }
}

fn read(path: &Path) -> Result<KeystoreFile> {
    // Never through a planted symlink, never a FIFO; a keystore is a few hundred bytes.
    let bytes = crate::confine::read_file(path, 64 * 1024).map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::NotAVolume { path: path.to_path_buf(), reason: "keystore file is missing".into() }
        }
        other => other,
    })?;
    KeystoreFile::decode(&bytes).map_err(|e| e.at(path))
}

/// The sealing key: Argon2id(passphrase, salt) with the file's parameters.
fn derive(pass: &Passphrase, salt: &[u8; 16], kdf: KdfParams, path: &Path) -> Result<Key256> {
    let params = Params::new(kdf.m_cost_kib, kdf.t_cost, kdf.p_cost, Some(32))
        .map_err(|e| Error::corrupt(path, format!("Argon2 parameters: {e}")))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    Key256::from_fill(|out| argon.hash_password_into(pass.expose(), salt, out))
        .map_err(|e| Error::corrupt(path, format!("Argon2: {e}")))
}

fn seal(root: &Key256, key_id: [u8; 16], pass: &Passphrase, kdf: KdfParams, path: &Path) -> Result<KeystoreFile> {
    let mut file = KeystoreFile { kdf, salt: random_array(), key_id, sealed: Vec::new() };
    let sealing = KeyWrapper::new(&derive(pass, &file.salt, kdf, path)?);
    file.sealed = sealing.wrap(root, &file.header_bytes());
    Ok(file)
}

fn unseal(file: &KeystoreFile, pass: &Passphrase, path: &Path) -> Result<Key256> {
    let sealing = KeyWrapper::new(&derive(pass, &file.salt, file.kdf, path)?);
    sealing.unwrap(&file.sealed, &file.header_bytes()).map_err(|_| Error::WrongPassphrase(PathBuf::from(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams { m_cost_kib: 64, t_cost: 1, p_cost: 1 };

    #[test]
    fn create_open_wrong_passphrase_and_passwd() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore");
        let pass = Passphrase::new("correct horse").unwrap();
        let ks = LocalKeystore::create("local:keystore", &path, &pass, FAST).unwrap();
        let ctx = KmsContext::kek([1; 16], 0);
        let kek = Key256::generate();
        let wrapped = ks.wrap(&kek, &ctx).unwrap();

        let wrong = Passphrase::new("wrong").unwrap();
        assert!(matches!(LocalKeystore::open("local:keystore", &path, &wrong), Err(Error::WrongPassphrase(_))));

        let again = LocalKeystore::open("local:keystore", &path, &pass).unwrap();
        assert_eq!(again.unwrap(&wrapped, &ctx).unwrap().expose(), kek.expose());
        let other = KmsContext::kek([2; 16], 0);
        assert!(matches!(again.unwrap(&wrapped, &other), Err(KmsError::Rejected(_))));

        let new = Passphrase::new("battery staple").unwrap();
        LocalKeystore::change_passphrase(&path, &pass, &new, FAST).unwrap();
        assert!(matches!(LocalKeystore::open("local:keystore", &path, &pass), Err(Error::WrongPassphrase(_))));
        let after = LocalKeystore::open("local:keystore", &path, &new).unwrap();
        assert_eq!(after.unwrap(&wrapped, &ctx).unwrap().expose(), kek.expose());
        assert_eq!(after.key_id(), ks.key_id());
    }
}
