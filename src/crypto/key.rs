//! Secret key newtypes: heap-pinned, zeroized on drop, never `Clone`, redacted `Debug`.

use zeroize::Zeroize;

/// `N` bytes of secret key material.
///
/// The bytes live in their own heap allocation so that moving the key never leaves a copy
/// behind on the stack; they are overwritten with zeros when the key is dropped.
pub struct SecretKey<const N: usize>(Box<[u8; N]>);

/// A 256-bit key (KEKs, GCM-SIV DEKs, the name key, root keys).
pub type Key256 = SecretKey<32>;
/// A 512-bit key (an XTS-AES-256 DEK: two AES-256 keys).
pub type Key512 = SecretKey<64>;

impl<const N: usize> SecretKey<N> {
    /// A fresh key from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut key = Self::zeroed();
        super::fill_random(&mut key.0[..]);
        key
    }

    /// A key made by `fill`, which writes the key bytes straight into the key's own buffer
    /// (used by unwrapping and key derivation so no intermediate copy exists).
    pub fn from_fill<E>(fill: impl FnOnce(&mut [u8; N]) -> Result<(), E>) -> Result<Self, E> {
        let mut key = Self::zeroed();
        fill(&mut key.0)?;
        Ok(key)
    }

    /// Test vectors and fixtures only: a key from known bytes.
    pub fn from_bytes(bytes: &[u8; N]) -> Self {
        let mut key = Self::zeroed();
        key.0.copy_from_slice(bytes);
        key
    }

    /// The key bytes, for handing to a cipher's key schedule.
    pub fn expose(&self) -> &[u8; N] {
        &self.0
    }

    fn zeroed() -> Self {
        SecretKey(Box::new([0u8; N]))
    }
}

impl<const N: usize> Drop for SecretKey<N> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<const N: usize> zeroize::ZeroizeOnDrop for SecretKey<N> {}

impl<const N: usize> std::fmt::Debug for SecretKey<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey<{N}>(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let key = Key256::from_bytes(&[0xAB; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(Key256::generate().expose(), Key256::generate().expose());
    }
}
