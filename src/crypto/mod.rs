//! Cryptographic primitives and nothing else.
//!
//! Owns: key newtypes that zeroize on drop, per-block data ciphers (AES-256-GCM-SIV and
//! AES-256-XTS), authenticated key wrapping, deterministic name encryption, and access to the
//! OS CSPRNG. It knows no file, inode, path, KMS or FUSE; callers give it bytes and typed
//! associated data.

mod block;
mod key;
mod names;
mod wrap;

pub use block::{BlockAad, DataCipher, XtsAes256, BLOCK_SIZE, GCM_SIV_NONCE, GCM_SIV_OVERHEAD, GCM_SIV_TAG};
pub use key::{Key256, Key512, SecretKey};
pub use names::{NameCipher, NamePurpose};
pub use wrap::KeyWrapper;

/// The one error a primitive can report: the input did not authenticate.
///
/// Deliberately opaque (as RustCrypto's `aead::Error`): the caller knows what it was opening
/// and adds that context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthError;

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("authentication failed")
    }
}

impl std::error::Error for AuthError {}

/// Fills `buf` from the operating system's CSPRNG (getrandom(2)).
///
/// Panics if the OS cannot supply randomness: continuing with anything weaker would silently
/// produce guessable keys or repeated nonces, so stopping is the only safe answer.
pub fn fill_random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the OS CSPRNG (getrandom) failed; refusing to continue");
}

/// `N` random bytes from the OS CSPRNG.
pub fn random_array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    fill_random(&mut out);
    out
}
