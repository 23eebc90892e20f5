//! On-disk bytes: the volume header, the keystore file, object (file/directory) headers,
//! the written-block bitmap and the offset arithmetic of data files.
//!
//! Pure encode/decode: canonical (one encoding per value; trailing bytes are an error),
//! versioned, little-endian fixed-width integers only. Calls no cipher; `docs/FORMAT.md` is
//! the specification this module implements.

mod bitmap;
pub(crate) mod codec;
mod keystore;
mod layout;
mod object;
mod pages;
mod volume;

pub use bitmap::WrittenBits;
pub use keystore::{KdfParams, KeystoreFile};
pub use layout::Layout;
pub use object::{Binding, ObjectHeader, ObjectKind, OBJECT_HEADER_LEN};
pub use pages::{
    BlockTable, Placement, Seal, GROUPS_CODE, MAX_BASE, MAX_FIRST_PAGE, MAX_PAGES_SIZE, PAGE, PAGES_CODE, SEAL_LEN,
};
#[cfg(test)]
pub(crate) use volume::sample as sample_header;
pub use volume::{
    CipherKind, VolumeHeader, FEATURES_KNOWN, FEATURE_ENTRIES_BOUND, FEATURE_FILES_RECORDED, FEATURE_FILE_SET,
    FEATURE_KEK_GENERATION, FEATURE_LINKS_BOUND, FEATURE_PAGES, FEATURE_RECORDS_SEALED, FEATURE_RECORD_MACS,
    FEATURE_ROOT_BOUND, FEATURE_ROOT_OWNED_SEALED, FEATURE_SHREDDED, FEATURE_TENANTS, FEATURE_XATTRS_SEALED,
};

/// Lower-case hex of `b` (ids in status output and messages; never key material).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The 16 bytes `s` spells in lowercase hex (as [`hex`] writes them), if it does.
pub fn unhex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not what it should be: wrong magic, truncated, trailing bytes, out-of-range field.
    Corrupt(String),
    /// Well-formed but from a format version or with features this build does not know.
    Unsupported(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Corrupt(r) | DecodeError::Unsupported(r) => f.write_str(r),
        }
    }
}

impl DecodeError {
    /// Attach the file the bytes came from.
    pub fn at(self, path: &std::path::Path) -> crate::Error {
        match self {
            DecodeError::Corrupt(reason) => crate::Error::Corrupt { path: path.to_path_buf(), reason },
            DecodeError::Unsupported(reason) => crate::Error::Unsupported { path: path.to_path_buf(), reason },
        }
    }
}
