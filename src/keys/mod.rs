//! The key hierarchy: the only holder of unwrapped keys.
//!
//! Owns the KEK (unwrapped once per mount through the KMS), the name key, and the DEK
//! lifecycle: generating a DEK per extent, wrapping it under the KEK bound to its place
//! (volume, file, extent, KEK id), and unwrapping it into a ready cipher kept in a bounded
//! [`DekCache`]. Callers get ciphers and wrapped bytes, never key bytes.

mod cache;
mod scratch;

use std::path::Path;
use std::sync::{Arc, RwLock};

pub use cache::{CacheStats, DekCache};
pub use scratch::{boot_id, rewrap_scratch, ScratchLoad, ScratchRecord};

use crate::crypto::{random_array, AuthError, DataCipher, Key256, Key512, KeyWrapper, NameCipher};
use crate::format::{CipherKind, VolumeHeader};
use crate::kms::{Kms, KmsContext, KmsError};
use crate::{Error, Result};

/// Identity of a file's data: the random id in its object header.
pub type FileId = [u8; 16];

/// A key-encryption key with its id, and (volume KEKs only) the key derived from it that
/// authenticates the store records which steer the volume (see [`KeyRing::record_mac`]).
struct Kek {
    id: [u8; 16],
    /// Its generation (`VolumeHeader::kek_generation`; 0 for scratch keys).
    generation: u64,
    wrapper: KeyWrapper,
    records: Option<aws_lc_rs::hmac::Key>,
}

impl Kek {
    fn volume(id: [u8; 16], generation: u64, key: &Key256, volume_id: &[u8; 16]) -> Kek {
        Kek { id, generation, wrapper: KeyWrapper::new(key), records: Some(record_key(key, volume_id)) }
    }
}

/// `HKDF-SHA256(salt "envelopefs", ikm KEK, info "record-mac" || volume_id)`: the KEK's key
/// for steering records, never used for anything else (the name key does not do this job).
/// AWS-LC cleanses the HMAC key when it is dropped.
fn record_key(kek: &Key256, volume_id: &[u8; 16]) -> aws_lc_rs::hmac::Key {
    use aws_lc_rs::{hkdf, hmac};
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"envelopefs").extract(kek.expose());
    let info: [&[u8]; 2] = [b"record-mac", volume_id];
    let okm = prk.expand(&info, hmac::HMAC_SHA256).expect("32 bytes is a valid HKDF-SHA256 output length");
    hmac::Key::from(okm)
}

/// `HKDF-SHA256(salt "envelopefs", ikm name key, info "entry-binding" || volume_id)`: the
/// key that binds objects to the directory entries naming them (`fs::binding`); derived per
/// purpose, so the name key itself only encrypts names.
fn entry_key(name_key: &Key256, volume_id: &[u8; 16]) -> aws_lc_rs::hmac::Key {
    derived_key(name_key, b"entry-binding", volume_id)
}

/// `HKDF-SHA256(salt "envelopefs", ikm name key, info "file-set" || volume_id)`: the key of
/// each file's share in the volume's set of files (`fs::file_set`).
fn file_set_key(name_key: &Key256, volume_id: &[u8; 16]) -> aws_lc_rs::hmac::Key {
    derived_key(name_key, b"file-set", volume_id)
}

/// `HKDF-SHA256(salt "envelopefs", ikm name key, info "xattr-set" || volume_id)`: the key
/// that seals each object's set of extended attributes (`fs::xattr`).
fn xattr_key(name_key: &Key256, volume_id: &[u8; 16]) -> aws_lc_rs::hmac::Key {
    derived_key(name_key, b"xattr-set", volume_id)
}

fn derived_key(ikm: &Key256, purpose: &[u8], volume_id: &[u8; 16]) -> aws_lc_rs::hmac::Key {
    use aws_lc_rs::{hkdf, hmac};
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"envelopefs").extract(ikm.expose());
    let info: [&[u8]; 2] = [purpose, volume_id];
    let okm = prk.expand(&info, hmac::HMAC_SHA256).expect("32 bytes is a valid HKDF-SHA256 output length");
    hmac::Key::from(okm)
}

/// The file-set key (`fs::file_set`): marks each file id and tags the digest of the set, so
/// the digest itself is never stored. AWS-LC cleanses it when the last holder drops it.
pub struct FileSetKey(aws_lc_rs::hmac::Key);

/// The first `N` bytes of `HMAC-SHA256(key, prefix || msg)`.
fn prefixed_mac<const N: usize>(key: &aws_lc_rs::hmac::Key, prefix: &[u8], msg: &[u8]) -> [u8; N] {
    let mut ctx = aws_lc_rs::hmac::Context::with_key(key);
    ctx.update(prefix);
    ctx.update(msg);
    let tag = ctx.sign();
    tag.as_ref()[..N].try_into().expect("HMAC-SHA256 is 32 bytes")
}

impl FileSetKey {
    /// File `id`'s share in the set: the first 16 bytes of `HMAC(key, "EVFSFIL1" || id)`.
    pub fn mark(&self, id: &[u8; 16]) -> [u8; 16] {
        prefixed_mac(&self.0, b"EVFSFIL1", id)
    }

    /// What the store keeps for a set whose digest (XOR of marks) is `digest`: the first 16
    /// bytes of `HMAC(key, "EVFSSET1" || digest)`.
    pub fn tag(&self, digest: &[u8; 16]) -> [u8; 16] {
        prefixed_mac(&self.0, b"EVFSSET1", digest)
    }

    /// Format 2: the mark of record `id` as it is now, `HMAC(key, "EVFSFIL2" || id || mac)`
    /// (first 16 bytes): a record put back from an older copy has another MAC, so another mark.
    pub fn mark_version(&self, id: &[u8; 16], mac: &[u8]) -> [u8; 16] {
        prefixed_mac(&self.0, b"EVFSFIL2", &[&id[..], mac].concat())
    }

    /// Format 2: the tag of `digest` after `changes` changes of the set,
    /// `HMAC(key, "EVFSSET2" || digest || u64le changes)` (first 16 bytes).
    pub fn tag_version(&self, digest: &[u8; 16], changes: u64) -> [u8; 16] {
        prefixed_mac(&self.0, b"EVFSSET2", &[&digest[..], &changes.to_le_bytes()].concat())
    }

    /// How a store keeps a set under this key: versioned (format 2) or not.
    pub fn fns(self: &std::sync::Arc<Self>, versioned: bool) -> crate::store::SetFns {
        let (m, t) = (self.clone(), self.clone());
        match versioned {
            true => crate::store::SetFns {
                mark: Box::new(move |id, mac| m.mark_version(id, mac)),
                tag: Box::new(move |d, n| t.tag_version(d, n)),
                versioned,
            },
            false => crate::store::SetFns {
                mark: Box::new(move |id, _| m.mark(id)),
                tag: Box::new(move |d, _| t.tag(d)),
                versioned,
            },
        }
    }
}

/// The name key and the keys derived from it (each for one purpose): what encrypts names,
/// symlink targets and extended attributes and what keys the MACs of `fs::binding`,
/// `fs::xattr` and `fs::file_set`. A KEK rotation replaces them all together.
pub struct NameKeys {
    /// Kept (zeroized on drop) so a KEK rotation can re-wrap it.
    key: Key256,
    cipher: NameCipher,
    /// Binds objects to their directory entries (see [`entry_key`]).
    entries: aws_lc_rs::hmac::Key,
    /// Seals each object's set of extended attributes (see [`xattr_key`]).
    xattrs: aws_lc_rs::hmac::Key,
    /// Keys each file's share in the volume's set of files (see [`file_set_key`]).
    file_set: Arc<FileSetKey>,
}

impl NameKeys {
    pub(crate) fn new(key: Key256, volume_id: &[u8; 16]) -> NameKeys {
        NameKeys {
            cipher: NameCipher::new(&key),
            entries: entry_key(&key, volume_id),
            xattrs: xattr_key(&key, volume_id),
            file_set: Arc::new(FileSetKey(file_set_key(&key, volume_id))),
            key,
        }
    }

    /// The first 8 bytes of `HMAC-SHA256(entry key, "EVFSENT1" || msg)`: the binding of an
    /// object to its directory entry (`fs::binding` builds `msg`).
    pub fn entry_mac(&self, msg: &[u8]) -> [u8; 8] {
        prefixed_mac(&self.entries, b"EVFSENT1", msg)
    }

    /// The first 16 bytes of `HMAC-SHA256(entry key, "EVFSLNK2" || msg)`: the tag of one entry
    /// of a file with hard links (`fs::links` builds `msg`).
    pub fn link_tag(&self, msg: &[u8]) -> [u8; 16] {
        prefixed_mac(&self.entries, b"EVFSLNK2", msg)
    }

    /// The first 16 bytes of `HMAC-SHA256(xattr key, "EVFSXAT1" || msg)`: the seal of an
    /// object's set of extended attributes (`fs::xattr` builds `msg`).
    pub fn xattr_mac(&self, msg: &[u8]) -> [u8; 16] {
        prefixed_mac(&self.xattrs, b"EVFSXAT1", msg)
    }

    /// The key of the volume's set of files (the store keeps the set with it).
    pub fn file_set(&self) -> Arc<FileSetKey> {
        self.file_set.clone()
    }
}

/// The name cipher itself: `keys.names().encrypt(..)`.
impl std::ops::Deref for NameKeys {
    type Target = NameCipher;
    fn deref(&self) -> &NameCipher {
        &self.cipher
    }
}

/// Unwrapped keys of one open volume.
pub struct KeyRing {
    volume_id: [u8; 16],
    cipher: CipherKind,
    /// The KEK the volume header names.
    current: RwLock<Arc<Kek>>,
    /// During an interrupted or running `rotate --kek`: the KEK being rotated to. DEKs already
    /// re-wrapped under it must stay readable.
    pending: RwLock<Option<Arc<Kek>>>,
    /// The per-boot scratch key, while scratch is in use (see [`scratch`]).
    scratch: RwLock<Option<Arc<Kek>>>,
    /// The name keys the header's wrapped name key holds.
    names: RwLock<Arc<NameKeys>>,
    /// During a `rotate --kek`: the name keys being rotated to (wrapped under the new KEK).
    pending_names: RwLock<Option<Arc<NameKeys>>>,
    cache: DekCache,
    /// Set by [`KeyRing::revoke`]: no key is loaded into this ring again.
    revoked: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("cipher", &self.cipher).field("kek_id", &self.kek_id()).finish_non_exhaustive()
    }
}

impl KeyRing {
    /// For `init`: a fresh KEK (wrapped by the KMS root) and name key (wrapped by the KEK);
    /// fills `header`'s key fields.
    pub fn generate(kms: &dyn Kms, header: &mut VolumeHeader) -> Result<KeyRing> {
        let kek = Key256::generate();
        let name_key = Key256::generate();
        header.kek_id = random_array();
        let ctx = KmsContext::kek(header.volume_id, header.kek_generation);
        header.wrapped_kek = kms.wrap(&kek, &ctx).map_err(|e| kms_error(kms, e))?;
        let kek = Kek::volume(header.kek_id, header.kek_generation, &kek, &header.volume_id);
        header.wrapped_name_key = kek.wrapper.wrap(&name_key, &header.binding());
        Ok(Self::assemble(header, kek, name_key))
    }

    /// For opening a volume: one KMS unwrap of the KEK, then the name key under the KEK
    /// (which also authenticates the header fields in [`VolumeHeader::binding`]).
    pub fn unlock(kms: &dyn Kms, header: &VolumeHeader, header_path: &Path) -> Result<KeyRing> {
        let ctx = KmsContext::kek(header.volume_id, header.kek_generation);
        let kek = kms.unwrap(&header.wrapped_kek, &ctx).map_err(|e| match e {
            KmsError::Rejected(r) => Error::integrity(header_path, format!("wrapped KEK refused by the KMS ({r})")),
            other => kms_error(kms, other),
        })?;
        let kek = Kek::volume(header.kek_id, header.kek_generation, &kek, &header.volume_id);
        let name_key: Key256 = kek.wrapper.unwrap(&header.wrapped_name_key, &header.binding()).map_err(|_| {
            Error::integrity(
                header_path,
                "volume header fields or wrapped name key were altered (authentication failed)",
            )
        })?;
        Ok(Self::assemble(header, kek, name_key))
    }

    fn assemble(header: &VolumeHeader, kek: Kek, name_key: Key256) -> KeyRing {
        KeyRing {
            volume_id: header.volume_id,
            cipher: header.cipher,
            current: RwLock::new(Arc::new(kek)),
            pending: RwLock::new(None),
            scratch: RwLock::new(None),
            names: RwLock::new(Arc::new(NameKeys::new(name_key, &header.volume_id))),
            pending_names: RwLock::new(None),
            revoked: Default::default(),
            cache: DekCache::new(DekCache::DEFAULT_ENTRIES, DekCache::DEFAULT_MAX_AGE),
        }
    }

    /// [`NameKeys::entry_mac`] under the current name keys.
    pub fn entry_mac(&self, msg: &[u8]) -> [u8; 8] {
        self.names().entry_mac(msg)
    }

    /// [`NameKeys::xattr_mac`] under the current name keys.
    pub fn xattr_mac(&self, msg: &[u8]) -> [u8; 16] {
        self.names().xattr_mac(msg)
    }

    /// The key of the volume's set of files (the store keeps the set with it).
    pub fn file_set(&self) -> Arc<FileSetKey> {
        self.names().file_set()
    }

    pub fn volume_id(&self) -> &[u8; 16] {
        &self.volume_id
    }

    fn current_kek(&self) -> Arc<Kek> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The KEK new DEKs are wrapped under: the pending one during a rotation, else the
    /// current one.
    fn target_kek(&self) -> Arc<Kek> {
        self.pending_kek().unwrap_or_else(|| self.current_kek())
    }

    /// The generation of the KEK the header names once the rotation under way (if any) is
    /// done.
    pub fn target_kek_generation(&self) -> u64 {
        self.target_kek().generation
    }

    /// The id of the KEK the header names.
    pub fn kek_id(&self) -> [u8; 16] {
        self.current_kek().id
    }

    /// The id of the KEK new and re-wrapped DEKs go under.
    pub fn target_kek_id(&self) -> [u8; 16] {
        self.target_kek().id
    }

    /// Whether DEKs wrapped under `id` can be opened (the current, pending or scratch KEK).
    pub fn knows_kek(&self, id: &[u8; 16]) -> bool {
        self.current_kek().id == *id || self.pending_kek().is_some_and(|k| k.id == *id) || self.is_scratch_kek(id)
    }

    /// Whether `id` is the loaded scratch key's (its DEKs are never rotated to the KEK).
    pub fn is_scratch_kek(&self, id: &[u8; 16]) -> bool {
        self.scratch_kek().is_some_and(|k| k.id == *id)
    }

    fn pending_kek(&self) -> Option<Arc<Kek>> {
        self.pending.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `f` with the KEK named `id`.
    fn with_kek<T>(
        &self,
        id: &[u8; 16],
        f: impl FnOnce(&KeyWrapper) -> std::result::Result<T, AuthError>,
    ) -> std::result::Result<T, AuthError> {
        let current = self.current_kek();
        if *id == current.id {
            return f(&current.wrapper);
        }
        match (self.pending_kek(), self.scratch_kek()) {
            (Some(k), _) if k.id == *id => f(&k.wrapper),
            (_, Some(k)) if k.id == *id => f(&k.wrapper),
            _ => Err(AuthError),
        }
    }

    /// The name keys the header names (replaced only by a finished KEK rotation).
    pub fn names(&self) -> Arc<NameKeys> {
        self.names.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The name keys a running or interrupted `rotate --kek` is moving everything to.
    pub fn pending_names(&self) -> Option<Arc<NameKeys>> {
        self.pending_names.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// `"EVFSDEK1" || volume_id || file_id || u64le(extent) || kek_id`.
    fn dek_aad(&self, file: &FileId, extent: u64, kek_id: &[u8; 16]) -> [u8; 64] {
        let mut aad = [0u8; 64];
        aad[..8].copy_from_slice(b"EVFSDEK1");
        aad[8..24].copy_from_slice(&self.volume_id);
        aad[24..40].copy_from_slice(file);
        aad[40..48].copy_from_slice(&extent.to_le_bytes());
        aad[48..].copy_from_slice(kek_id);
        aad
    }

    /// A fresh random DEK for `extent` of `file`: the id of the KEK wrapping it (the scratch
    /// key for a `scratch` file), its wrapped form (to store) and its cipher (cached,
    /// replacing any earlier key of that extent). `None` if a scratch key is asked for and
    /// none is loaded.
    pub fn new_dek(&self, file: &FileId, extent: u64, scratch: bool) -> Option<([u8; 16], Vec<u8>, Arc<DataCipher>)> {
        let target = if scratch { self.scratch_kek()? } else { self.target_kek() };
        let aad = self.dek_aad(file, extent, &target.id);
        let kek = &target.wrapper;
        let (wrapped, cipher) = match self.cipher {
            CipherKind::Aes256GcmSiv => {
                let k = Key256::generate();
                (kek.wrap(&k, &aad), DataCipher::gcm_siv(&k))
            }
            CipherKind::Aes256Xts => {
                let k = Key512::generate();
                (kek.wrap(&k, &aad), DataCipher::xts(&k))
            }
        };
        let cipher = Arc::new(cipher);
        self.cache.insert((*file, extent), cipher.clone());
        Some((target.id, wrapped, cipher))
    }

    /// The cipher of `extent` of `file`, from the cache or by unwrapping `wrapped`. A wrapped
    /// key moved from another extent, file, volume or KEK fails here.
    pub fn dek(
        &self,
        file: &FileId,
        extent: u64,
        kek_id: &[u8; 16],
        wrapped: &[u8],
    ) -> std::result::Result<Arc<DataCipher>, AuthError> {
        if let Some(c) = self.cache.get(&(*file, extent)) {
            return Ok(c);
        }
        let aad = self.dek_aad(file, extent, kek_id);
        let cipher = Arc::new(self.with_kek(kek_id, |kek| {
            Ok(match self.cipher {
                CipherKind::Aes256GcmSiv => DataCipher::gcm_siv(&kek.unwrap::<32>(wrapped, &aad)?),
                CipherKind::Aes256Xts => DataCipher::xts(&kek.unwrap::<64>(wrapped, &aad)?),
            })
        })?);
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
        let current = self.current_kek();
        let aad = self.dek_aad(file, extent, &current.id);
        let kek = &current.wrapper;
        let digest = match self.cipher {
            CipherKind::Aes256GcmSiv => Sha256::digest(kek.unwrap::<32>(wrapped, &aad)?.expose()),
            CipherKind::Aes256Xts => Sha256::digest(kek.unwrap::<64>(wrapped, &aad)?.expose()),
        };
        Ok(digest.into())
    }

    /// Drops cached ciphers of `file` from extent `from` on (truncation, deletion).
    pub fn forget(&self, file: &FileId, from: u64) {
        self.cache.remove_file(file, from);
    }
}

/// `rotate --kek`: the KEK being rotated to.
impl KeyRing {
    /// Starts a rotation: a fresh KEK and id, wrapped by the KMS root, and a fresh name key,
    /// wrapped by the new KEK. Returns what to record (id, wrapped KEK, wrapped name key)
    /// before any DEK is re-wrapped.
    pub fn begin_rotation(&self, kms: &dyn Kms) -> Result<([u8; 16], Vec<u8>, Vec<u8>)> {
        let key = Key256::generate();
        let id = random_array();
        let generation = next_generation(self.current_kek().generation);
        let ctx = KmsContext::kek(self.volume_id, generation);
        let wrapped = kms.wrap(&key, &ctx).map_err(|e| kms_error(kms, e))?;
        let kek = Kek::volume(id, generation, &key, &self.volume_id);
        let name_key = Key256::generate();
        let wrapped_names = kek.wrapper.wrap(&name_key, &self.pending_names_aad(&id));
        self.set_pending(kek);
        *self.pending_names.write().unwrap_or_else(|p| p.into_inner()) =
            Some(Arc::new(NameKeys::new(name_key, &self.volume_id)));
        self.unless_revoked(kms)?;
        Ok((id, wrapped, wrapped_names))
    }

    /// `"EVFSPNK1" || volume_id || new KEK id`: what the name key of a rotation under way is
    /// bound to while it is recorded in the store (the header binds it once it is named there).
    fn pending_names_aad(&self, kek_id: &[u8; 16]) -> [u8; 40] {
        let mut aad = [0u8; 40];
        aad[..8].copy_from_slice(b"EVFSPNK1");
        aad[8..24].copy_from_slice(&self.volume_id);
        aad[24..].copy_from_slice(kek_id);
        aad
    }

    /// Loads the name key of a recorded rotation (`wrapped` by the pending KEK, which must be
    /// loaded).
    pub fn resume_names(&self, wrapped: &[u8]) -> std::result::Result<(), AuthError> {
        let kek = self.pending_kek().ok_or(AuthError)?;
        let key: Key256 = kek.wrapper.unwrap(wrapped, &self.pending_names_aad(&kek.id))?;
        *self.pending_names.write().unwrap_or_else(|p| p.into_inner()) =
            Some(Arc::new(NameKeys::new(key, &self.volume_id)));
        Ok(())
    }

    /// Resumes a recorded rotation (one more KMS unwrap); `next`: it moves to the next KEK
    /// generation (a rotation recorded by a build before generations has none: it keeps 0).
    pub fn resume_rotation(
        &self,
        kms: &dyn Kms,
        id: [u8; 16],
        wrapped: &[u8],
        next: bool,
        store_path: &Path,
    ) -> Result<()> {
        if id == self.kek_id() {
            return Ok(());
        }
        let generation = match next {
            true => next_generation(self.current_kek().generation),
            false => self.current_kek().generation,
        };
        let ctx = KmsContext::kek(self.volume_id, generation);
        let key = kms.unwrap(wrapped, &ctx).map_err(|e| match e {
            KmsError::Rejected(r) => Error::integrity(store_path, format!("pending KEK refused by the KMS ({r})")),
            other => kms_error(kms, other),
        })?;
        self.set_pending(Kek::volume(id, generation, &key, &self.volume_id));
        self.unless_revoked(kms)
    }

    /// After a key was loaded: if the ring was revoked meanwhile (or before), what was
    /// loaded goes again and this is an error. (`revoke` sets its flag before it clears, and
    /// this looks after loading, so a key loaded beside a revocation never stays.)
    fn unless_revoked(&self, kms: &dyn Kms) -> Result<()> {
        if !self.revoked.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        self.pending.write().unwrap_or_else(|p| p.into_inner()).take();
        self.pending_names.write().unwrap_or_else(|p| p.into_inner()).take();
        self.scratch.write().unwrap_or_else(|p| p.into_inner()).take();
        Err(Error::Kms {
            uri: kms.uri().to_string(),
            reason: "the root was revoked while mounted: this mount loads no key any more".into(),
        })
    }

    fn set_pending(&self, kek: Kek) {
        *self.pending.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(kek));
    }

    /// The MAC of steering record `name = value` (the pending rotation, the unclean-shutdown
    /// marker, the scratch record) under the current KEK's record key:
    /// `HMAC-SHA256(record key, "EVFSREC1" || u16 len(name) || name || value)`.
    pub fn record_mac(&self, name: &str, value: &[u8]) -> [u8; 32] {
        Self::mac_with(&self.current_kek(), name, value)
    }

    /// [`KeyRing::record_mac`] under the pending KEK of a rotation, if one is loaded.
    pub fn pending_record_mac(&self, name: &str, value: &[u8]) -> Option<[u8; 32]> {
        self.pending_kek().map(|k| Self::mac_with(&k, name, value))
    }

    fn mac_with(kek: &Kek, name: &str, value: &[u8]) -> [u8; 32] {
        let key = kek.records.as_ref().expect("a volume KEK has a record key");
        let mut msg = b"EVFSREC1".to_vec();
        msg.extend_from_slice(&(name.len() as u16).to_le_bytes());
        msg.extend_from_slice(name.as_bytes());
        msg.extend_from_slice(value);
        let tag = aws_lc_rs::hmac::sign(key, &msg);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether `mac` is [`KeyRing::record_mac`] of `name = value` (constant time).
    pub fn record_authentic(&self, name: &str, value: &[u8], mac: &[u8]) -> bool {
        let want = self.record_mac(name, value);
        mac.len() == 32 && aws_lc_rs::constant_time::verify_slices_are_equal(&want, mac).is_ok()
    }

    /// The pending KEK becomes the current one (the header now names it); the old KEK is
    /// dropped, and zeroized once no call still uses it.
    pub fn promote_pending(&self) {
        if let Some(p) = self.pending.write().unwrap_or_else(|p| p.into_inner()).take() {
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = p;
        }
        if let Some(n) = self.pending_names.write().unwrap_or_else(|p| p.into_inner()).take() {
            *self.names.write().unwrap_or_else(|p| p.into_inner()) = n;
        }
    }

    /// Re-wraps one DEK from the KEK it is under to the pending KEK. The DEK is unwrapped only
    /// inside this call and zeroized on return.
    pub fn rewrap_dek(
        &self,
        file: &FileId,
        extent: u64,
        from: &[u8; 16],
        wrapped: &[u8],
    ) -> std::result::Result<([u8; 16], Vec<u8>), AuthError> {
        let to = self.target_kek();
        let (old_aad, new_aad) = (self.dek_aad(file, extent, from), self.dek_aad(file, extent, &to.id));
        let out = self.with_kek(from, |kek| {
            Ok(match self.cipher {
                CipherKind::Aes256GcmSiv => to.wrapper.wrap(&kek.unwrap::<32>(wrapped, &old_aad)?, &new_aad),
                CipherKind::Aes256Xts => to.wrapper.wrap(&kek.unwrap::<64>(wrapped, &old_aad)?, &new_aad),
            })
        })?;
        Ok((to.id, out))
    }

    /// The name key wrapped by the current KEK for `header` (whose bound fields changed,
    /// e.g. a new feature bit).
    pub fn seal_name_key(&self, header: &VolumeHeader) -> std::result::Result<Vec<u8>, AuthError> {
        let kek = self.current_kek();
        if kek.id != header.kek_id {
            return Err(AuthError);
        }
        Ok(kek.wrapper.wrap(&self.names().key, &header.binding()))
    }

    /// The name key the rotation moves to (the current one if the rotation keeps it: one
    /// recorded by an older build) wrapped under the pending KEK for `header`, which names it.
    pub fn rewrap_name_key(&self, header: &VolumeHeader) -> std::result::Result<Vec<u8>, AuthError> {
        let to = self.pending_kek().ok_or(AuthError)?;
        if to.id != header.kek_id {
            return Err(AuthError);
        }
        let names = self.pending_names().unwrap_or_else(|| self.names());
        Ok(to.wrapper.wrap(&names.key, &header.binding()))
    }
}

/// `rotate --root`: the volume's KEK, unwrapped by `from` and wrapped by `to` (a new root,
/// whose URI `header` then names), and the name key re-sealed for that header (the URI is
/// bound into it), without leaving this module. Returns false, changing nothing, if `from`
/// does not hold the root that wrapped it.
pub fn rewrap_kek(
    from: &dyn Kms,
    to: &dyn Kms,
    header: &mut VolumeHeader,
    header_path: &Path,
) -> Result<Option<Key256>> {
    let ctx = KmsContext::kek(header.volume_id, header.kek_generation);
    let kek = match from.unwrap(&header.wrapped_kek, &ctx) {
        Ok(k) => k,
        Err(KmsError::Rejected(_)) => return Ok(None),
        Err(e) => return Err(kms_error(from, e)),
    };
    let wrapper = KeyWrapper::new(&kek);
    let name_key: Key256 = wrapper.unwrap(&header.wrapped_name_key, &header.binding()).map_err(|_| {
        Error::integrity(header_path, "volume header fields or wrapped name key were altered (authentication failed)")
    })?;
    let wrapped_kek = to.wrap(&kek, &ctx).map_err(|e| kms_error(to, e))?;
    header.kms_uri = to.uri().to_string();
    header.wrapped_kek = wrapped_kek;
    header.wrapped_name_key = wrapper.wrap(&name_key, &header.binding());
    Ok(Some(kek))
}

/// Steering record `name = value` sealed under `kek` as a key ring seals it
/// (`value || KeyRing::record_mac`), for code that holds the KEK alone (a root rotation).
pub fn seal_record_under(kek: &Key256, volume_id: &[u8; 16], name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = value.to_vec();
    out.extend_from_slice(&record_mac_under(kek, volume_id, name, value));
    out
}

/// The value of sealed record `raw` (`value || MAC`) if it authenticates under `kek`.
/// Also `value || MAC || MAC` (a `rotate --kek` cut short after its header switch writes
/// both the old KEK's and the new one's).
pub fn open_record_under<'a>(kek: &Key256, volume_id: &[u8; 16], name: &str, raw: &'a [u8]) -> Option<&'a [u8]> {
    let ok = |value: &[u8], mac: &[u8]| {
        aws_lc_rs::constant_time::verify_slices_are_equal(&record_mac_under(kek, volume_id, name, value), mac).is_ok()
    };
    let (value, mac) = raw.split_at_checked(raw.len().checked_sub(32)?)?;
    if ok(value, mac) {
        return Some(value);
    }
    let (value, first) = value.split_at_checked(value.len().checked_sub(32)?)?;
    (ok(value, first) || ok(value, mac)).then_some(value)
}

/// Whether `raw` is record `name` = `value` sealed under the KEK of `header`, which `kms`
/// unwraps (a KMS call; `false` if it cannot).
pub fn record_vouched(kms: &dyn Kms, header: &VolumeHeader, name: &str, value: &[u8], raw: &[u8]) -> bool {
    let ctx = KmsContext::kek(header.volume_id, header.kek_generation);
    kms.unwrap(&header.wrapped_kek, &ctx)
        .is_ok_and(|kek| open_record_under(&kek, &header.volume_id, name, raw) == Some(value))
}

fn record_mac_under(kek: &Key256, volume_id: &[u8; 16], name: &str, value: &[u8]) -> [u8; 32] {
    let mut msg = b"EVFSREC1".to_vec();
    msg.extend_from_slice(&(name.len() as u16).to_le_bytes());
    msg.extend_from_slice(name.as_bytes());
    msg.extend_from_slice(value);
    let tag = aws_lc_rs::hmac::sign(&record_key(kek, volume_id), &msg);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Whether `kms` holds the root that wrapped the header's KEK.
pub fn root_matches(kms: &dyn Kms, header: &VolumeHeader) -> Result<bool> {
    let ctx = KmsContext::kek(header.volume_id, header.kek_generation);
    match kms.unwrap(&header.wrapped_kek, &ctx) {
        Ok(_) => Ok(true),
        Err(KmsError::Rejected(_)) => Ok(false),
        Err(e) => Err(kms_error(kms, e)),
    }
}

/// The generation a rotation moves a KEK of generation `g` to: the next one, and at least 2,
/// so the first rotation of a volume made before generations (0) is anchored too.
fn next_generation(g: u64) -> u64 {
    (g + 1).max(2)
}

fn kms_error(kms: &dyn Kms, e: KmsError) -> Error {
    Error::Kms { uri: kms.uri().to_string(), reason: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root for unit tests: a key in this process (the real roots are tested on real
    /// mounts).
    struct TestRoot(KeyWrapper);

    impl std::fmt::Debug for TestRoot {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("TestRoot")
        }
    }

    impl Kms for TestRoot {
        fn uri(&self) -> &str {
            "test:"
        }
        fn key_id(&self) -> String {
            "test".into()
        }
        fn wrap(&self, key: &Key256, ctx: &KmsContext) -> std::result::Result<Vec<u8>, KmsError> {
            Ok(self.0.wrap(key, &ctx.aad()))
        }
        fn unwrap(&self, wrapped: &[u8], ctx: &KmsContext) -> std::result::Result<Key256, KmsError> {
            self.0.unwrap(wrapped, &ctx.aad()).map_err(|_| KmsError::Rejected("bad".into()))
        }
    }

    /// `revoke` (a mount going dark): no key the ring held opens anything any more, the DEK
    /// cache is empty, and no key can be loaded into it again, however a rotation tries.
    #[test]
    fn a_revoked_ring_holds_no_key_and_loads_none() {
        let root = TestRoot(KeyWrapper::new(&Key256::generate()));
        let mut header = VolumeHeader { kek_generation: 1, kms_uri: "test:".into(), ..crate::format::sample_header() };
        let ring = KeyRing::generate(&root, &mut header).unwrap();
        let file = [9u8; 16];
        let (kek_id, wrapped, _) = ring.new_dek(&file, 0, false).unwrap();
        assert!(ring.knows_kek(&kek_id));
        assert_eq!(ring.cache_stats().entries, 1);
        let name = ring.names().encrypt(crate::crypto::NamePurpose::XattrName, &file, b"user.x");
        ring.forget(&file, 0);
        assert!(ring.dek(&file, 0, &kek_id, &wrapped).is_ok(), "unwraps before");

        ring.revoke();
        assert!(!ring.knows_kek(&kek_id));
        assert_eq!(ring.cache_stats().entries, 0);
        assert!(ring.dek(&file, 0, &kek_id, &wrapped).is_err(), "the DEK no longer unwraps");
        assert_ne!(ring.names().encrypt(crate::crypto::NamePurpose::XattrName, &file, b"user.x"), name);
        let e = ring.begin_rotation(&root).unwrap_err();
        assert!(e.to_string().contains("revoked while mounted"), "{e}");
        assert!(ring.pending_names().is_none() && ring.target_kek_id() == ring.kek_id());
    }

    /// The vectors in FORMAT.md §4 (entry binding) and §6 (sealed records): each MAC from a
    /// fixed key, so the derivations and message layouts cannot drift unnoticed.
    #[test]
    fn entry_binding_and_record_mac_vectors() {
        let name_key = Key256::from_bytes(&[0x11; 32]);
        let key = entry_key(&name_key, &[0x22; 16]);
        // kind 'F', id 33.., bound to entry (dir 44.., backing name "abc")
        let mut msg = b"EVFSENT1F".to_vec();
        msg.extend_from_slice(&[0x33; 16]);
        msg.push(1);
        msg.extend_from_slice(&[0x44; 16]);
        msg.extend_from_slice(&3u16.to_le_bytes());
        msg.extend_from_slice(b"abc");
        let tag = aws_lc_rs::hmac::sign(&key, &msg);
        assert_eq!(crate::format::hex(&tag.as_ref()[..8]), "8e7376155d876149");

        let kek = Key256::from_bytes(&[0x55; 32]);
        let key = record_key(&kek, &[0x22; 16]);
        let mut msg = b"EVFSREC1".to_vec();
        msg.extend_from_slice(&12u16.to_le_bytes());
        msg.extend_from_slice(b"mount.active");
        msg.extend_from_slice(&1u64.to_le_bytes());
        let tag = aws_lc_rs::hmac::sign(&key, &msg);
        assert_eq!(
            crate::format::hex(tag.as_ref()),
            "d0ab04d6aa7254142fa0889a87e965700090f8f602e3d447ac3b667ad75d0c37"
        );
    }

    /// The vector in FORMAT.md §4 (linked names): the tag of one name of a file with hard
    /// links.
    #[test]
    fn link_tag_vector() {
        let keys = NameKeys::new(Key256::from_bytes(&[0x11; 32]), &[0x22; 16]);
        // file 33.., named "abc" in directory 44..
        let mut msg = vec![0x33; 16];
        msg.extend_from_slice(&[0x44; 16]);
        msg.extend_from_slice(&3u16.to_le_bytes());
        msg.extend_from_slice(b"abc");
        assert_eq!(crate::format::hex(&keys.link_tag(&msg)), "fa703e75d9388d160a5d53b9e07a094d");
    }

    /// The vectors in FORMAT.md §6 (file set, attribute seal).
    #[test]
    fn file_set_and_xattr_seal_vectors() {
        let name_key = Key256::from_bytes(&[0x11; 32]);
        let set = FileSetKey(file_set_key(&name_key, &[0x22; 16]));
        let mark = set.mark(&[0x33; 16]);
        assert_eq!(crate::format::hex(&mark), "b7c212f1c39133c7f4d0d8875a8c494b");
        assert_eq!(crate::format::hex(&set.tag(&mark)), "9cbc2cf8982eb1598d670e1372758d07");
        let key = xattr_key(&name_key, &[0x22; 16]);
        let mut msg = b"EVFSXAT1".to_vec();
        msg.extend_from_slice(&[0x33; 16]);
        let tag = aws_lc_rs::hmac::sign(&key, &msg);
        assert_eq!(crate::format::hex(&tag.as_ref()[..16]), "937ee95a5b6d544de1600963b23dcddb");
    }

    /// The format-2 file-set vectors in FORMAT.md §6 (a record's mark covers its MAC; the tag
    /// its number of changes).
    #[test]
    fn versioned_file_set_vectors() {
        let set = Arc::new(FileSetKey(file_set_key(&Key256::from_bytes(&[0x11; 32]), &[0x22; 16])));
        let mark = set.mark_version(&[0x33; 16], &[0x44; 16]);
        assert_eq!(crate::format::hex(&mark), "2edaa13708ab8fe1993185bc73d7d7cf");
        assert_ne!(mark, set.mark_version(&[0x33; 16], &[0x45; 16]), "another MAC, another mark");
        assert_eq!(crate::format::hex(&set.tag_version(&mark, 7)), "e2f6da723aeb37c451f1434a72400773");
        assert_ne!(set.tag_version(&mark, 7), set.tag_version(&mark, 6), "another count, another tag");
        let fns = set.fns(true);
        let value = fns.value(&mark, 7);
        assert_eq!((value.len(), &value[..8]), (24, &7u64.to_le_bytes()[..]));
        assert!(fns.holds(&value, &mark) && !set.fns(false).holds(&value, &mark));
    }
}
