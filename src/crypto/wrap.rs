//! Authenticated key wrapping: AES-256-GCM-SIV under a key-encryption key.
//!
//! Wrapped form: `nonce (12) || E(key) || tag (16)`; the AAD is supplied by the caller and
//! says where the wrapped key belongs (volume, file, extent, KEK id).

use aes_gcm_siv::aead::AeadInOut;
use aes_gcm_siv::{Aes256GcmSiv, KeyInit, Nonce, Tag};

use super::{AuthError, Key256, SecretKey, GCM_SIV_NONCE, GCM_SIV_OVERHEAD};

/// A KEK (or root key) ready to wrap and unwrap other keys.
pub struct KeyWrapper(Box<Aes256GcmSiv>);

impl KeyWrapper {
    pub fn new(kek: &Key256) -> Self {
        KeyWrapper(Box::new(Aes256GcmSiv::new(kek.expose().into())))
    }

    /// Length of a wrapped `n`-byte key.
    pub const fn wrapped_len(n: usize) -> usize {
        n + GCM_SIV_OVERHEAD
    }

    /// Wraps `key` with a fresh random nonce.
    pub fn wrap<const N: usize>(&self, key: &SecretKey<N>, aad: &[u8]) -> Vec<u8> {
        self.wrap_with_nonce(key, aad, &super::random_array())
    }

    /// Wraps `key` with the given nonce (test vectors; everything else uses [`Self::wrap`]).
    pub fn wrap_with_nonce<const N: usize>(
        &self,
        key: &SecretKey<N>,
        aad: &[u8],
        nonce: &[u8; GCM_SIV_NONCE],
    ) -> Vec<u8> {
        let mut out = vec![0u8; Self::wrapped_len(N)];
        out[..GCM_SIV_NONCE].copy_from_slice(nonce);
        out[GCM_SIV_NONCE..GCM_SIV_NONCE + N].copy_from_slice(key.expose());
        let tag = self
            .0
            .encrypt_inout_detached(&Nonce::from(*nonce), aad, (&mut out[GCM_SIV_NONCE..GCM_SIV_NONCE + N]).into())
            .expect("key-sized plaintext is within GCM-SIV limits");
        out[GCM_SIV_NONCE + N..].copy_from_slice(&tag);
        out
    }

    /// Unwraps an `N`-byte key; a blob of the wrong length, or one that does not authenticate
    /// under this KEK and `aad`, is an [`AuthError`].
    pub fn unwrap<const N: usize>(&self, wrapped: &[u8], aad: &[u8]) -> Result<SecretKey<N>, AuthError> {
        if wrapped.len() != Self::wrapped_len(N) {
            return Err(AuthError);
        }
        let nonce = Nonce::try_from(&wrapped[..GCM_SIV_NONCE]).map_err(|_| AuthError)?;
        let tag = Tag::try_from(&wrapped[GCM_SIV_NONCE + N..]).map_err(|_| AuthError)?;
        SecretKey::from_fill(|buf: &mut [u8; N]| {
            buf.copy_from_slice(&wrapped[GCM_SIV_NONCE..GCM_SIV_NONCE + N]);
            self.0.decrypt_inout_detached(&nonce, aad, (&mut buf[..]).into(), &tag).map_err(|_| AuthError)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trip_and_aad_binding() {
        let kek = KeyWrapper::new(&Key256::generate());
        let dek = Key256::generate();
        let w = kek.wrap(&dek, b"place-a");
        assert_eq!(w.len(), 60);
        let back: Key256 = kek.unwrap(&w, b"place-a").unwrap();
        assert_eq!(back.expose(), dek.expose());
        assert!(kek.unwrap::<32>(&w, b"place-b").is_err());
        assert!(kek.unwrap::<32>(&w[..59], b"place-a").is_err());
        assert!(kek.unwrap::<64>(&w, b"place-a").is_err());
        let other = KeyWrapper::new(&Key256::generate());
        assert!(other.unwrap::<32>(&w, b"place-a").is_err());
    }
}
