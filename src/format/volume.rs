//! The volume header (`CIPHERDIR/envelopefs.conf`).

use super::codec::{put_var_bytes, Reader};
use super::DecodeError;

const MAGIC: &[u8; 8] = b"EVFSVOL\0";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Feature bit 0: the volume was shredded (`shred --volume`); its keys are destroyed.
pub const FEATURE_SHREDDED: u32 = 1;
/// Feature bit 1: every file record in the store carries a MAC (`files.mac`); a record
/// without one, or with a wrong one, is an integrity error. Set at `init`, and when a volume
/// made before it is first opened (after its records have been given MACs).
pub const FEATURE_RECORD_MACS: u32 = 2;
/// Feature bit 2: the KMS URI (the root reference: scheme, PKCS#11 module, token and
/// object, AWS key, keystore name) is part of [`VolumeHeader::binding`], so a header naming
/// another root than the one its name key was sealed for refuses to open. Set at `init`,
/// and when a volume made before it is first opened.
pub const FEATURE_ROOT_BOUND: u32 = 4;
/// Feature bit 3: the steering records of the store (pending rotation, unclean-shutdown
/// marker, scratch record) carry a MAC under the KEK's record key; one without is refused.
/// Set at `init`, and when a volume made before it is first opened (its records sealed).
pub const FEATURE_RECORDS_SEALED: u32 = 8;
/// Feature bit 4: every regular file has a record in the store from its creation on (an
/// empty file too), so a data file without one is an integrity error, never an empty file.
/// Set at `init`, and when a volume made before it is first opened (its record-less files,
/// all empty, given records).
pub const FEATURE_FILES_RECORDED: u32 = 16;
/// Feature bit 5: every data file and directory id file carries a MAC binding its object to
/// the directory entry that names it (object header flags), and every symlink target is
/// sealed for its entry; an unbound or wrongly bound object is an integrity error. Set at
/// `init`, and when a volume made before it is first opened (every entry bound, trusted once).
pub const FEATURE_ENTRIES_BOUND: u32 = 32;
/// Feature bit 6: every object's set of extended attributes is sealed (a seal row in the
/// store, a flag in its header); a dropped or rolled-back attribute is an integrity error.
/// Set at `init`, and when a volume made before it is first opened (its sets sealed).
pub const FEATURE_XATTRS_SEALED: u32 = 64;
/// Feature bit 7: the store keeps a sealed digest of its set of file records, updated with
/// every record added or deleted; a set that differs (a file removed whole) stops the mount.
/// Set at `init`, and when a volume made before it is first opened.
pub const FEATURE_FILE_SET: u32 = 128;
/// Feature bit 8: the header carries the KEK's generation (`kek_generation`: 1 at `init`,
/// one more with every `rotate --kek`), bound into the header and into the KMS context the
/// KEK is wrapped under; a host refuses a generation older than it has seen (`anchor`). Set
/// at `init` and by the first `rotate --kek` of a volume made before it.
pub const FEATURE_KEK_GENERATION: u32 = 256;
/// Feature bit 9: every entry of a file with hard links (whose header binds it to the volume
/// only) is bound by a `links` row in the store (`fs::links`). Set at `init`, and when a
/// volume made before it is first opened writable.
pub const FEATURE_LINKS_BOUND: u32 = 512;
/// Feature bit 10: files are made in format 2 (`format::BlockTable`: page-aligned blocks,
/// each written whole or not at all, sealed by a nonce and tag kept in the store). Set at
/// `init` of a GCM-SIV volume and by `envelopefs upgrade`; such a volume's file records say
/// which of its files are format 2 (cipher code 3 or 4).
pub const FEATURE_PAGES: u32 = 1024;
/// Feature bit 11: the volume has tenants (`fs::tenants`): subtrees whose files live in a
/// volume of their own under `tenants/`, listed in a store row sealed under the name key.
/// The row must be there and authenticate. Set by the first `tenant add`.
pub const FEATURE_TENANTS: u32 = 2048;
/// Feature bit 12: the record `root.owned` (the HSM/KMS root was made for this volume, so
/// `shred --volume` and `rotate --root` may destroy it) is sealed like the steering records;
/// a bare or foreign one is ignored (the root is kept). Set at `init`, and when a volume
/// made before it is first opened writable (its bare record is left bare: never believed).
pub const FEATURE_ROOT_OWNED_SEALED: u32 = 4096;
/// Feature bits this build understands; any other bit refuses to open.
pub const FEATURES_KNOWN: u32 = FEATURE_SHREDDED
    | FEATURE_TENANTS
    | FEATURE_ROOT_OWNED_SEALED
    | FEATURE_PAGES
    | FEATURE_LINKS_BOUND
    | FEATURE_KEK_GENERATION
    | FEATURE_FILE_SET
    | FEATURE_XATTRS_SEALED
    | FEATURE_RECORD_MACS
    | FEATURE_ROOT_BOUND
    | FEATURE_RECORDS_SEALED
    | FEATURE_FILES_RECORDED
    | FEATURE_ENTRIES_BOUND;
/// Extent sizes allowed: 4 KiB (one block) ..= 16 MiB, powers of two.
const EXTENT_SHIFT_MIN: u8 = 12;
const EXTENT_SHIFT_MAX: u8 = 24;
const KMS_URI_MAX: usize = 2048;
const WRAPPED_KEK_MAX: usize = 4096;
const WRAPPED_NAME_KEY_LEN: usize = 60;

/// The data cipher of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherKind {
    Aes256GcmSiv,
    Aes256Xts,
}

impl CipherKind {
    pub fn code(self) -> u8 {
        match self {
            CipherKind::Aes256GcmSiv => 1,
            CipherKind::Aes256Xts => 2,
        }
    }

    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(CipherKind::Aes256GcmSiv),
            2 => Some(CipherKind::Aes256Xts),
            _ => None,
        }
    }

    /// Bytes one 4 KiB block occupies in a data file (FORMAT.md §5).
    pub fn slot_size(self) -> usize {
        match self {
            CipherKind::Aes256GcmSiv => crate::crypto::BLOCK_SIZE + crate::crypto::GCM_SIV_OVERHEAD,
            CipherKind::Aes256Xts => crate::crypto::BLOCK_SIZE,
        }
    }

    /// The name used on the command line and in `status`.
    pub fn name(self) -> &'static str {
        match self {
            CipherKind::Aes256GcmSiv => "aes-256-gcm-siv",
            CipherKind::Aes256Xts => "aes-256-xts",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        [CipherKind::Aes256GcmSiv, CipherKind::Aes256Xts].into_iter().find(|c| c.name() == s)
    }
}

/// Everything `envelopefs.conf` holds. No secret is in plaintext: the KEK is wrapped by the
/// KMS root, the name key by the KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeHeader {
    pub features: u32,
    pub volume_id: [u8; 16],
    pub cipher: CipherKind,
    pub extent_shift: u8,
    pub kek_id: [u8; 16],
    /// 1 for the KEK `init` made, one more with every `rotate --kek` (0: a volume made before
    /// generations, feature bit 8 clear).
    pub kek_generation: u64,
    pub kms_uri: String,
    pub wrapped_kek: Vec<u8>,
    pub wrapped_name_key: Vec<u8>,
}

impl VolumeHeader {
    pub fn is_shredded(&self) -> bool {
        self.features & FEATURE_SHREDDED != 0
    }

    pub fn extent_size(&self) -> u64 {
        1u64 << self.extent_shift
    }

    /// Whether `shift` is an allowed extent size exponent.
    pub fn valid_extent_shift(shift: u8) -> bool {
        (EXTENT_SHIFT_MIN..=EXTENT_SHIFT_MAX).contains(&shift)
    }

    /// The fields that decide how data is interpreted, bound (as AAD) into the wrapped name
    /// key so that editing any of them makes the volume refuse to open:
    /// `"EVFSHDR1" || u16 version || u32 features || volume_id || cipher || extent_shift || kek_id`,
    /// then, with [`FEATURE_ROOT_BOUND`], `|| u16 len || kms_uri`.
    pub fn binding(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.kms_uri.len());
        out.extend_from_slice(b"EVFSHDR1");
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.features.to_le_bytes());
        out.extend_from_slice(&self.volume_id);
        out.push(self.cipher.code());
        out.push(self.extent_shift);
        out.extend_from_slice(&self.kek_id);
        if self.features & FEATURE_KEK_GENERATION != 0 {
            out.extend_from_slice(&self.kek_generation.to_le_bytes());
        }
        if self.features & FEATURE_ROOT_BOUND != 0 {
            put_var_bytes(&mut out, self.kms_uri.as_bytes());
        }
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.features.to_le_bytes());
        out.extend_from_slice(&self.volume_id);
        out.push(self.cipher.code());
        out.push(self.extent_shift);
        out.extend_from_slice(&self.kek_id);
        if self.features & FEATURE_KEK_GENERATION != 0 {
            out.extend_from_slice(&self.kek_generation.to_le_bytes());
        }
        put_var_bytes(&mut out, self.kms_uri.as_bytes());
        put_var_bytes(&mut out, &self.wrapped_kek);
        put_var_bytes(&mut out, &self.wrapped_name_key);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf, "volume header");
        if &r.array::<8>("magic")? != MAGIC {
            return Err(r.corrupt("bad magic (not an envelopefs volume header)".into()));
        }
        let version = r.u16("version")?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::Unsupported(format!(
                "volume format version {version}; this build reads version {FORMAT_VERSION}"
            )));
        }
        let features = r.u32("features")?;
        if features & !FEATURES_KNOWN != 0 {
            return Err(DecodeError::Unsupported(format!(
                "volume uses feature flags {:#x} this build does not know",
                features & !FEATURES_KNOWN
            )));
        }
        let volume_id = r.array("volume id")?;
        let code = r.u8("cipher")?;
        let cipher = CipherKind::from_code(code).ok_or_else(|| r.corrupt(format!("unknown cipher code {code}")))?;
        let extent_shift = r.u8("extent shift")?;
        if !Self::valid_extent_shift(extent_shift) {
            return Err(
                r.corrupt(format!("extent shift {extent_shift} outside {EXTENT_SHIFT_MIN}..={EXTENT_SHIFT_MAX}"))
            );
        }
        let kek_id = r.array("KEK id")?;
        let kek_generation = match features & FEATURE_KEK_GENERATION {
            0 => 0,
            _ => u64::from_le_bytes(r.array("KEK generation")?),
        };
        let uri = r.var_bytes("KMS URI", 1, KMS_URI_MAX)?;
        let kms_uri = String::from_utf8(uri.to_vec()).map_err(|_| r.corrupt("KMS URI is not UTF-8".into()))?;
        let wrapped_kek = r.var_bytes("wrapped KEK", 1, WRAPPED_KEK_MAX)?.to_vec();
        let wrapped_name_key = r.var_bytes("wrapped name key", WRAPPED_NAME_KEY_LEN, WRAPPED_NAME_KEY_LEN)?.to_vec();
        r.finish()?;
        Ok(VolumeHeader {
            features,
            volume_id,
            cipher,
            extent_shift,
            kek_id,
            kek_generation,
            kms_uri,
            wrapped_kek,
            wrapped_name_key,
        })
    }
}

/// A header of made-up values, for unit tests here and in other modules.
#[cfg(test)]
pub(crate) fn sample() -> VolumeHeader {
    VolumeHeader {
        features: 0,
        volume_id: [1; 16],
        cipher: CipherKind::Aes256GcmSiv,
        extent_shift: 20,
        kek_id: [2; 16],
        kek_generation: 0,
        kms_uri: "local:keystore".into(),
        wrapped_kek: vec![3; 60],
        wrapped_name_key: vec![4; 60],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = sample();
        assert_eq!(VolumeHeader::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn the_root_reference_is_in_the_binding_once_bound() {
        // The vector in FORMAT.md §2: binding of sample() with features = 4 (root bound).
        let mut h = sample();
        h.features = FEATURE_ROOT_BOUND;
        let mut want = b"EVFSHDR1".to_vec();
        want.extend_from_slice(&[1, 0, 4, 0, 0, 0]);
        want.extend_from_slice(&[1; 16]);
        want.extend_from_slice(&[1, 20]);
        want.extend_from_slice(&[2; 16]);
        want.extend_from_slice(&[14, 0]);
        want.extend_from_slice(b"local:keystore");
        assert_eq!(h.binding(), want);
        let other = VolumeHeader { kms_uri: "local:other".into(), ..h.clone() };
        assert_ne!(other.binding(), h.binding(), "another root, another binding");
        h.features = 0;
        assert_eq!(h.binding().len(), 48, "an unbound header's binding has no URI");
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_an_error() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(VolumeHeader::decode(&bytes[..n]).is_err(), "prefix {n}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(VolumeHeader::decode(&long), Err(DecodeError::Corrupt(_))));
    }

    #[test]
    fn newer_version_and_unknown_features_are_unsupported() {
        let mut b = sample().encode();
        b[8] = 2;
        assert!(matches!(VolumeHeader::decode(&b), Err(DecodeError::Unsupported(_))));
        let mut b = sample().encode();
        b[11] = 0x80;
        assert!(matches!(VolumeHeader::decode(&b), Err(DecodeError::Unsupported(_))));
    }
}
