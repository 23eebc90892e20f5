//! Deterministic name encryption: AES-256-GCM-SIV under the name key with an all-zero nonce.
//!
//! GCM-SIV is nonce-misuse resistant, so a fixed nonce leaks only equality of
//! (purpose, context, name) triples — which is what lets a lookup find a name without
//! listing the directory. The context (a directory id, or a file id for symlink targets)
//! makes equal names in different directories encrypt differently.

use aes_gcm_siv::aead::AeadInOut;
use aes_gcm_siv::{Aes256GcmSiv, KeyInit, Nonce, Tag};

use super::{AuthError, Key256, GCM_SIV_TAG};

/// What the encrypted string is; part of the AAD so one can never stand in for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NamePurpose {
    /// A directory entry name; context = the parent directory's id.
    Entry = 1,
    /// A symlink target (randomized; context = zero, so a link can move between directories).
    SymlinkTarget = 2,
    /// An extended attribute name; context = the file or directory id.
    XattrName = 3,
    /// An extended attribute value (randomized); context = a hash of object id and name.
    XattrValue = 4,
    /// A MAC over a file's record in the store (size, extent set, written bitmaps);
    /// context = the file id.
    Record = 5,
    /// The volume's list of tenants (randomized); context = the volume id.
    Tenants = 6,
}

/// The name key, ready to use.
pub struct NameCipher(Box<Aes256GcmSiv>);

impl NameCipher {
    pub fn new(key: &Key256) -> Self {
        NameCipher(Box::new(Aes256GcmSiv::new(key.expose().into())))
    }

    /// `"EVFSNAM1" || purpose || context`.
    fn aad(purpose: NamePurpose, context: &[u8; 16]) -> [u8; 25] {
        let mut aad = [0u8; 25];
        aad[..8].copy_from_slice(b"EVFSNAM1");
        aad[8] = purpose as u8;
        aad[9..].copy_from_slice(context);
        aad
    }

    /// `E(name) || tag`: `name.len() + 16` bytes.
    pub fn encrypt(&self, purpose: NamePurpose, context: &[u8; 16], name: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(name.len() + GCM_SIV_TAG);
        out.extend_from_slice(name);
        let tag = self
            .0
            .encrypt_inout_detached(&Nonce::default(), &Self::aad(purpose, context), (&mut out[..]).into())
            .expect("names are far below GCM-SIV limits");
        out.extend_from_slice(&tag);
        out
    }

    /// A 16-byte MAC of `data`: the GCM-SIV tag of an empty message whose AAD is the
    /// purpose, the context and `data` (with a fixed nonce the tag is a PRF of its input).
    pub fn mac(&self, purpose: NamePurpose, context: &[u8; 16], data: &[u8]) -> [u8; 16] {
        self.mac_built(purpose, context, |aad| aad.extend_from_slice(data))
    }

    /// [`NameCipher::mac`] of the bytes `build` appends (no second copy of a large input).
    pub fn mac_built(&self, purpose: NamePurpose, context: &[u8; 16], build: impl FnOnce(&mut Vec<u8>)) -> [u8; 16] {
        let mut aad = Self::aad(purpose, context).to_vec();
        build(&mut aad);
        let tag = self
            .0
            .encrypt_inout_detached(&Nonce::default(), &aad, (&mut [][..]).into())
            .expect("records are far below GCM-SIV limits");
        tag.into()
    }

    pub fn decrypt(&self, purpose: NamePurpose, context: &[u8; 16], sealed: &[u8]) -> Result<Vec<u8>, AuthError> {
        let body_len = sealed.len().checked_sub(GCM_SIV_TAG).ok_or(AuthError)?;
        let tag = Tag::try_from(&sealed[body_len..]).map_err(|_| AuthError)?;
        let mut out = sealed[..body_len].to_vec();
        self.0
            .decrypt_inout_detached(&Nonce::default(), &Self::aad(purpose, context), (&mut out[..]).into(), &tag)
            .map_err(|_| AuthError)?;
        Ok(out)
    }
}

impl NameCipher {
    /// Randomized sealing (`nonce || E(bytes) || tag`) for strings that need no lookup, such
    /// as symlink targets: equal inputs do not encrypt equally.
    pub fn seal_random(&self, purpose: NamePurpose, context: &[u8; 16], bytes: &[u8]) -> Vec<u8> {
        let nonce: [u8; 12] = super::random_array();
        let mut out = Vec::with_capacity(12 + bytes.len() + GCM_SIV_TAG);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(bytes);
        let tag = self
            .0
            .encrypt_inout_detached(&Nonce::from(nonce), &Self::aad(purpose, context), (&mut out[12..]).into())
            .expect("short strings are far below GCM-SIV limits");
        out.extend_from_slice(&tag);
        out
    }

    pub fn open_random(&self, purpose: NamePurpose, context: &[u8; 16], sealed: &[u8]) -> Result<Vec<u8>, AuthError> {
        if sealed.len() < 12 + GCM_SIV_TAG {
            return Err(AuthError);
        }
        let nonce = Nonce::try_from(&sealed[..12]).map_err(|_| AuthError)?;
        let body_len = sealed.len() - GCM_SIV_TAG;
        let tag = Tag::try_from(&sealed[body_len..]).map_err(|_| AuthError)?;
        let mut out = sealed[12..body_len].to_vec();
        self.0
            .decrypt_inout_detached(&nonce, &Self::aad(purpose, context), (&mut out[..]).into(), &tag)
            .map_err(|_| AuthError)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_directory() {
        let c = NameCipher::new(&Key256::generate());
        let a = c.encrypt(NamePurpose::Entry, &[1; 16], b"secret.txt");
        assert_eq!(a, c.encrypt(NamePurpose::Entry, &[1; 16], b"secret.txt"));
        assert_ne!(a, c.encrypt(NamePurpose::Entry, &[2; 16], b"secret.txt"));
        assert_ne!(a, c.encrypt(NamePurpose::SymlinkTarget, &[1; 16], b"secret.txt"));
        assert_eq!(c.decrypt(NamePurpose::Entry, &[1; 16], &a).unwrap(), b"secret.txt");
        assert!(c.decrypt(NamePurpose::Entry, &[2; 16], &a).is_err());
        assert!(c.decrypt(NamePurpose::Entry, &[1; 16], &a[..10]).is_err());
    }
}
