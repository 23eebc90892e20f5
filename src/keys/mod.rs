//! The key hierarchy: the only holder of unwrapped keys.
//!
//! Owns the KEK (unwrapped once per mount through the KMS), the name key, and the DEK
//! lifecycle: generating a DEK per extent, wrapping it under the KEK bound to its place
//! (volume, file, extent, KEK id), and unwrapping it into a ready cipher kept in a bounded
//! [`DekCache`]. Callers get ciphers and wrapped bytes, never key bytes.

mod cache;

use std::path::Path;
use std::sync::Arc;

pub use cache::{CacheStats, DekCache};

use crate::crypto::{random_array, AuthError, DataCipher, Key256, Key512, KeyWrapper, NameCipher};
use crate::format::{CipherKind, VolumeHeader};
use crate::kms::{Kms, KmsContext, KmsError, Purpose};
use crate::{Error, Result};

/// Identity of a file's data: the random id in its object header.
pub type FileId = [u8; 16];

/// Unwrapped keys of one open volume.
pub struct KeyRing {
    volume_id: [u8; 16],
    cipher: CipherKind,
    kek_id: [u8; 16],
    kek: KeyWrapper,
    names: NameCipher,
    cache: DekCache,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("cipher", &self.cipher).field("kek_id", &self.kek_id).finish_non_exhaustive()
    }
}

impl KeyRing {
    /// For `init`: a fresh KEK (wrapped by the KMS root) and name key (wrapped by the KEK);
    /// fills `header`'s key fields.
    pub fn generate(kms: &dyn Kms, header: &mut VolumeHeader) -> Result<KeyRing> {
        let kek = Key256::generate();
        let name_key = Key256::generate();
        header.kek_id = random_array();
        let ctx = KmsContext { volume_id: header.volume_id, purpose: Purpose::Kek };
        header.wrapped_kek = kms.wrap(&kek, &ctx).map_err(|e| kms_error(kms, e))?;
        let kek = KeyWrapper::new(&kek);
        header.wrapped_name_key = kek.wrap(&name_key, &header.binding());
        Ok(Self::assemble(header, kek, &name_key))
    }

    /// For opening a volume: one KMS unwrap of the KEK, then the name key under the KEK
    /// (which also authenticates the header fields in [`VolumeHeader::binding`]).
    pub fn unlock(kms: &dyn Kms, header: &VolumeHeader, header_path: &Path) -> Result<KeyRing> {
        let ctx = KmsContext { volume_id: header.volume_id, purpose: Purpose::Kek };
        let kek = kms.unwrap(&header.wrapped_kek, &ctx).map_err(|e| match e {
            KmsError::Rejected(r) => Error::integrity(header_path, format!("wrapped KEK refused by the KMS ({r})")),
            other => kms_error(kms, other),
        })?;
        let kek = KeyWrapper::new(&kek);
        let name_key: Key256 = kek.unwrap(&header.wrapped_name_key, &header.binding()).map_err(|_| {
            Error::integrity(
                header_path,
                "volume header fields or wrapped name key were altered (authentication failed)",
            )
        })?;
        Ok(Self::assemble(header, kek, &name_key))
    }

    fn assemble(header: &VolumeHeader, kek: KeyWrapper, name_key: &Key256) -> KeyRing {
        KeyRing {
            volume_id: header.volume_id,
            cipher: header.cipher,
            kek_id: header.kek_id,
            kek,
            names: NameCipher::new(name_key),
            cache: DekCache::new(DekCache::DEFAULT_ENTRIES, DekCache::DEFAULT_MAX_AGE),
        }
    }

    pub fn volume_id(&self) -> &[u8; 16] {
        &self.volume_id
    }

    pub fn kek_id(&self) -> &[u8; 16] {
        &self.kek_id
    }

    pub fn names(&self) -> &NameCipher {
        &self.names
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// `"EVFSDEK1" || volume_id || file_id || u64le(extent) || kek_id`.
    fn dek_aad(&self, file: &FileId, extent: u64) -> [u8; 64] {
        let mut aad = [0u8; 64];
        aad[..8].copy_from_slice(b"EVFSDEK1");
        aad[8..24].copy_from_slice(&self.volume_id);
        aad[24..40].copy_from_slice(file);
        aad[40..48].copy_from_slice(&extent.to_le_bytes());
        aad[48..].copy_from_slice(&self.kek_id);
        aad
    }

    /// A fresh random DEK for `extent` of `file`: its wrapped form (to store) and its cipher
    /// (cached, replacing any earlier key of that extent).
    pub fn new_dek(&self, file: &FileId, extent: u64) -> (Vec<u8>, Arc<DataCipher>) {
        let aad = self.dek_aad(file, extent);
        let (wrapped, cipher) = match self.cipher {
            CipherKind::Aes256GcmSiv => {
                let k = Key256::generate();
                (self.kek.wrap(&k, &aad), DataCipher::gcm_siv(&k))
            }
            CipherKind::Aes256Xts => {
                let k = Key512::generate();
                (self.kek.wrap(&k, &aad), DataCipher::xts(&k))
            }
        };
        let cipher = Arc::new(cipher);
        self.cache.insert((*file, extent), cipher.clone());
        (wrapped, cipher)
    }

    /// The cipher of `extent` of `file`, from the cache or by unwrapping `wrapped`. A wrapped
    /// key moved from another extent, file, volume or KEK fails here.
    pub fn dek(&self, file: &FileId, extent: u64, wrapped: &[u8]) -> std::result::Result<Arc<DataCipher>, AuthError> {
        if let Some(c) = self.cache.get(&(*file, extent)) {
            return Ok(c);
        }
        let aad = self.dek_aad(file, extent);
        let cipher = Arc::new(match self.cipher {
            CipherKind::Aes256GcmSiv => DataCipher::gcm_siv(&self.kek.unwrap::<32>(wrapped, &aad)?),
            CipherKind::Aes256Xts => DataCipher::xts(&self.kek.unwrap::<64>(wrapped, &aad)?),
        });
        self.cache.insert((*file, extent), cipher.clone());
        Ok(cipher)
    }

    /// A one-way commitment to the DEK behind `wrapped`: SHA-256 of the key bytes. Lets
    /// tests and `fsck` tell keys apart without handling them; it cannot be inverted.
    pub fn dek_fingerprint(
        &self,
        file: &FileId,
        extent: u64,
        wrapped: &[u8],
    ) -> std::result::Result<[u8; 32], AuthError> {
        use sha2::{Digest, Sha256};
        let aad = self.dek_aad(file, extent);
        let digest = match self.cipher {
            CipherKind::Aes256GcmSiv => Sha256::digest(self.kek.unwrap::<32>(wrapped, &aad)?.expose()),
            CipherKind::Aes256Xts => Sha256::digest(self.kek.unwrap::<64>(wrapped, &aad)?.expose()),
        };
        Ok(digest.into())
    }

    /// Drops cached ciphers of `file` from extent `from` on (truncation, deletion).
    pub fn forget(&self, file: &FileId, from: u64) {
        self.cache.remove_where(|(f, e)| f == file && *e >= from);
    }
}

fn kms_error(kms: &dyn Kms, e: KmsError) -> Error {
    Error::Kms { uri: kms.uri().to_string(), reason: e.to_string() }
}
