//! Per-block data encryption: one 4 KiB plaintext block in, one fixed-size slot out.
//!
//! AES-256-GCM-SIV slot: `nonce (12) || ciphertext (4096) || tag (16)`, the AAD binding the
//! block to its volume, file and position. AES-256-XTS slot: the 4096-byte ciphertext, with
//! the block index as the IEEE 1619 tweak (data unit sequence number), no integrity.

use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::Aes256;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM_SIV};

use super::{AuthError, Key256, Key512};

/// Plaintext bytes per block.
pub const BLOCK_SIZE: usize = 4096;
/// GCM-SIV nonce length.
pub const GCM_SIV_NONCE: usize = 12;
/// GCM-SIV tag length.
pub const GCM_SIV_TAG: usize = 16;
/// Bytes a GCM-SIV slot adds to a block.
pub const GCM_SIV_OVERHEAD: usize = GCM_SIV_NONCE + GCM_SIV_TAG;

/// What a block's ciphertext is bound to: moving it to another volume, file or position
/// makes it fail to open (GCM-SIV).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockAad {
    pub volume_id: [u8; 16],
    pub file_id: [u8; 16],
    pub block_index: u64,
}

impl BlockAad {
    /// `"EVFSBLK1" || volume_id || file_id || u64le(block_index)`: 48 bytes.
    pub fn encode(&self) -> [u8; 48] {
        let mut out = [0u8; 48];
        out[..8].copy_from_slice(b"EVFSBLK1");
        out[8..24].copy_from_slice(&self.volume_id);
        out[24..40].copy_from_slice(&self.file_id);
        out[40..].copy_from_slice(&self.block_index.to_le_bytes());
        out
    }

    /// Format 2 (page-aligned blocks, the seal kept in the store): the same fields under
    /// `"EVFSBLK2"`, so no block moves between the formats.
    pub fn encode_pages(&self) -> [u8; 48] {
        let mut out = self.encode();
        out[..8].copy_from_slice(b"EVFSBLK2");
        out
    }
}

/// A ready-to-use data cipher for one extent (its key schedule already expanded).
///
/// GCM-SIV is AWS-LC's (RFC 8452, with its AES-NI/AVX assembly: about twice the RustCrypto
/// crate's speed on a 4 KiB block, `benches/crypto.rs`; the tests check both give the same
/// slots). Its key state lives in an AWS-LC allocation that `OPENSSL_free` cleanses when this
/// is dropped; the XTS key schedules are zeroized on drop by the `aes` crate's `zeroize`
/// feature.
pub enum DataCipher {
    GcmSiv(Box<LessSafeKey>),
    Xts(Box<XtsAes256>),
}

impl DataCipher {
    pub fn gcm_siv(key: &Key256) -> Self {
        let key = UnboundKey::new(&AES_256_GCM_SIV, key.expose()).expect("AES-256-GCM-SIV takes a 32-byte key");
        DataCipher::GcmSiv(Box::new(LessSafeKey::new(key)))
    }

    pub fn xts(key: &Key512) -> Self {
        DataCipher::Xts(Box::new(XtsAes256::new(key)))
    }

    /// Bytes one block occupies on disk.
    pub fn slot_size(&self) -> usize {
        match self {
            DataCipher::GcmSiv(_) => BLOCK_SIZE + GCM_SIV_OVERHEAD,
            DataCipher::Xts(_) => BLOCK_SIZE,
        }
    }

    /// Encrypts `plain` (exactly one block) into `slot` (exactly `slot_size()` bytes).
    /// `nonce` is used by GCM-SIV only and must come from the CSPRNG.
    pub fn seal(&self, aad: &BlockAad, nonce: &[u8; GCM_SIV_NONCE], plain: &[u8], slot: &mut [u8]) {
        assert_eq!(plain.len(), BLOCK_SIZE, "seal takes exactly one block");
        assert_eq!(slot.len(), self.slot_size(), "slot size mismatch");
        match self {
            DataCipher::GcmSiv(aead) => {
                let (n, rest) = slot.split_at_mut(GCM_SIV_NONCE);
                let (body, tag) = rest.split_at_mut(BLOCK_SIZE);
                n.copy_from_slice(nonce);
                body.copy_from_slice(plain);
                let t = aead
                    .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad.encode()), body)
                    .expect("a 4 KiB block with 48 bytes of AAD is within GCM-SIV limits");
                tag.copy_from_slice(t.as_ref());
            }
            DataCipher::Xts(xts) => {
                slot.copy_from_slice(plain);
                xts.encrypt_unit(slot, u128::from(aad.block_index));
            }
        }
    }

    /// Format 2: encrypts `plain` into `page` (both one block) and returns the tag; the nonce
    /// and tag are kept apart from the page (`format::BlockTable`). GCM-SIV only.
    pub fn seal_page(&self, aad: &BlockAad, nonce: &[u8; GCM_SIV_NONCE], plain: &[u8], page: &mut [u8]) -> [u8; 16] {
        let DataCipher::GcmSiv(aead) = self else { unreachable!("format 2 is GCM-SIV only") };
        page.copy_from_slice(plain);
        let t = aead
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad.encode_pages()), page)
            .expect("a 4 KiB block with 48 bytes of AAD is within GCM-SIV limits");
        t.as_ref().try_into().expect("16-byte tag")
    }

    /// Format 2: decrypts `page` sealed as `nonce`/`tag` into `plain`; on failure `plain` is
    /// zeroed.
    pub fn open_page(
        &self,
        aad: &BlockAad,
        nonce: &[u8],
        tag: &[u8],
        page: &[u8],
        plain: &mut [u8],
    ) -> Result<(), AuthError> {
        let DataCipher::GcmSiv(aead) = self else { unreachable!("format 2 is GCM-SIV only") };
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| AuthError)?;
        aead.open_separate_gather(nonce, Aad::from(aad.encode_pages()), page, tag, plain).map_err(|_| {
            plain.fill(0);
            AuthError
        })
    }

    /// Decrypts `slot` into `plain` (one block). For GCM-SIV a slot that does not
    /// authenticate under this key and AAD is an [`AuthError`] and `plain` is zeroed; XTS
    /// cannot detect tampering and always succeeds.
    pub fn open(&self, aad: &BlockAad, slot: &[u8], plain: &mut [u8]) -> Result<(), AuthError> {
        assert_eq!(plain.len(), BLOCK_SIZE, "open yields exactly one block");
        assert_eq!(slot.len(), self.slot_size(), "slot size mismatch");
        match self {
            DataCipher::GcmSiv(aead) => {
                let nonce = Nonce::try_assume_unique_for_key(&slot[..GCM_SIV_NONCE]).expect("12-byte nonce");
                let (body, tag) = slot[GCM_SIV_NONCE..].split_at(BLOCK_SIZE);
                aead.open_separate_gather(nonce, Aad::from(aad.encode()), body, tag, plain).map_err(|_| {
                    plain.fill(0);
                    AuthError
                })
            }
            DataCipher::Xts(xts) => {
                plain.copy_from_slice(slot);
                xts.decrypt_unit(plain, u128::from(aad.block_index));
                Ok(())
            }
        }
    }
}

/// XTS-AES-256 (IEEE 1619) over data units that are a whole number of 16-byte AES blocks
/// (ours are 4096 bytes, so ciphertext stealing is never needed).
///
/// Written here rather than taken from the `xts-mode` crate, which encrypts one AES block
/// per call and so cannot use the pipelined AES-NI path (~0.2 GB/s against GB/s here); the
/// tests check it against that crate and the IEEE 1619 vectors.
pub struct XtsAes256 {
    data: Aes256,
    tweak: Aes256,
}

/// AES blocks handled per batch (tweaks for a batch live on the stack).
const XTS_BATCH: usize = 32;

impl XtsAes256 {
    pub fn new(key: &Key512) -> Self {
        let (k1, k2) = key.expose().split_at(32);
        let k1: &[u8; 32] = k1.try_into().expect("split_at(32) of 64 bytes");
        let k2: &[u8; 32] = k2.try_into().expect("split_at(32) of 64 bytes");
        XtsAes256 { data: Aes256::new(k1.into()), tweak: Aes256::new(k2.into()) }
    }

    /// Encrypts one data unit in place; `index` is the data unit sequence number.
    pub fn encrypt_unit(&self, unit: &mut [u8], index: u128) {
        self.process(unit, index, |blocks| self.data.encrypt_blocks(blocks));
    }

    pub fn decrypt_unit(&self, unit: &mut [u8], index: u128) {
        self.process(unit, index, |blocks| self.data.decrypt_blocks(blocks));
    }

    /// `C_j = E(P_j ^ T_j) ^ T_j` with `T_0 = E_k2(index)` and `T_{j+1} = T_j * x` in
    /// GF(2^128) (little-endian, reduction polynomial x^128 + x^7 + x^2 + x + 1).
    fn process(&self, unit: &mut [u8], index: u128, cipher: impl Fn(&mut [aes::Block])) {
        let (blocks, rest) = aes::Block::slice_as_chunks_mut(unit);
        assert!(rest.is_empty() && !blocks.is_empty(), "XTS units are whole AES blocks");
        let mut t = aes::Block::from(index.to_le_bytes());
        self.tweak.encrypt_block(&mut t);
        let mut tweak = u128::from_le_bytes(t.0);
        let mut tweaks = [0u128; XTS_BATCH];
        for batch in blocks.chunks_mut(XTS_BATCH) {
            for (block, slot) in batch.iter_mut().zip(tweaks.iter_mut()) {
                *slot = tweak;
                block.0 = (u128::from_le_bytes(block.0) ^ tweak).to_le_bytes();
                tweak = (tweak << 1) ^ ((tweak >> 127) * 0x87);
            }
            cipher(batch);
            for (block, t) in batch.iter_mut().zip(tweaks.iter()) {
                block.0 = (u128::from_le_bytes(block.0) ^ t).to_le_bytes();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aad(i: u64) -> BlockAad {
        BlockAad { volume_id: [1; 16], file_id: [2; 16], block_index: i }
    }

    #[test]
    fn gcm_siv_round_trip_and_binding() {
        let c = DataCipher::gcm_siv(&Key256::generate());
        let plain: Vec<u8> = (0..BLOCK_SIZE).map(|i| i as u8).collect();
        let mut slot = vec![0u8; c.slot_size()];
        c.seal(&aad(7), &[9; 12], &plain, &mut slot);
        let mut out = vec![0u8; BLOCK_SIZE];
        c.open(&aad(7), &slot, &mut out).unwrap();
        assert_eq!(out, plain);
        assert_eq!(c.open(&aad(8), &slot, &mut out), Err(AuthError));
        assert!(out.iter().all(|&b| b == 0), "failed open must not leak plaintext");
        let mut other_file = aad(7);
        other_file.file_id = [3; 16];
        assert_eq!(c.open(&other_file, &slot, &mut out), Err(AuthError));
        for bit in [0usize, 12 * 8, 2000 * 8 + 3, (slot.len() - 1) * 8] {
            let mut bad = slot.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(c.open(&aad(7), &bad, &mut out), Err(AuthError), "bit {bit}");
        }
    }

    #[test]
    fn gcm_siv_matches_the_rustcrypto_crate() {
        use aes_gcm_siv::aead::AeadInOut;
        for seed in 0u8..20 {
            let key_bytes: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed));
            let ours = DataCipher::gcm_siv(&Key256::from_bytes(&key_bytes));
            let theirs = aes_gcm_siv::Aes256GcmSiv::new((&key_bytes).into());
            let plain: Vec<u8> = (0..BLOCK_SIZE).map(|i| (i * 13 + seed as usize) as u8).collect();
            let nonce = [seed.wrapping_mul(3); 12];
            let mut slot = vec![0u8; BLOCK_SIZE + GCM_SIV_OVERHEAD];
            ours.seal(&aad(u64::from(seed)), &nonce, &plain, &mut slot);
            let mut body = plain.clone();
            let tag = theirs
                .encrypt_inout_detached(&nonce.into(), &aad(u64::from(seed)).encode(), body.as_mut_slice().into())
                .unwrap();
            assert_eq!(slot, [&nonce[..], &body, &tag].concat(), "seed {seed}");
        }
    }

    #[test]
    fn xts_matches_the_xts_mode_crate() {
        use xts_mode::{get_tweak_default, Xts128};
        for seed in 0u8..20 {
            let key_bytes: [u8; 64] = std::array::from_fn(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed));
            let ours = XtsAes256::new(&Key512::from_bytes(&key_bytes));
            let (k1, k2) = key_bytes.split_at(32);
            let k1: &[u8; 32] = k1.try_into().unwrap();
            let k2: &[u8; 32] = k2.try_into().unwrap();
            let theirs = Xts128::new(Aes256::new(k1.into()), Aes256::new(k2.into()));
            let len = 16 * (1 + seed as usize * 17);
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + seed as usize) as u8).collect();
            let index = u128::from(seed) * 0x0123_4567_89ab_cdef;
            let (mut a, mut b) = (plain.clone(), plain.clone());
            ours.encrypt_unit(&mut a, index);
            theirs.encrypt_sector(&mut b, get_tweak_default(index));
            assert_eq!(a, b, "seed {seed}");
            ours.decrypt_unit(&mut a, index);
            assert_eq!(a, plain);
        }
    }

    /// The format-2 page vector of FORMAT.md §9: key `00 01 .. 1f`, nonce `0c`×12, volume
    /// `11`×16, file `22`×16, block 5, plaintext byte `i` = `i mod 251`.
    #[test]
    fn page_vector() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let c = DataCipher::gcm_siv(&Key256::from_bytes(&key));
        let plain: Vec<u8> = (0..BLOCK_SIZE).map(|i| (i % 251) as u8).collect();
        let aad = BlockAad { volume_id: [0x11; 16], file_id: [0x22; 16], block_index: 5 };
        let mut page = vec![0u8; BLOCK_SIZE];
        let tag = c.seal_page(&aad, &[0x0c; 12], &plain, &mut page);
        use sha2::Digest;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(hex(&tag), "afd75b547e7371382b43cbd7063964bb");
        assert_eq!(
            hex(&sha2::Sha256::digest(&page)),
            "8685eae9f18335b7db1975f14a69dd27076ca23023e59ce9223d2ca3273e8d9e"
        );
        // The same as the RustCrypto crate gives (an independent implementation).
        use aes_gcm_siv::aead::AeadInOut;
        let theirs = aes_gcm_siv::Aes256GcmSiv::new((&key).into());
        let mut body = plain.clone();
        let their_tag =
            theirs.encrypt_inout_detached(&[0x0c; 12].into(), &aad.encode_pages(), body.as_mut_slice().into()).unwrap();
        assert_eq!((&body[..], &their_tag[..]), (&page[..], &tag[..]));
        let mut out = vec![0u8; BLOCK_SIZE];
        c.open_page(&aad, &[0x0c; 12], &tag, &page, &mut out).unwrap();
        assert_eq!(out, plain);
        // Not a format-1 slot's tag (another domain), nor valid at another block.
        let mut slot = vec![0u8; BLOCK_SIZE + GCM_SIV_OVERHEAD];
        c.seal(&aad, &[0x0c; 12], &plain, &mut slot);
        assert_ne!(&slot[12 + BLOCK_SIZE..], &tag[..]);
        let moved = BlockAad { block_index: 6, ..aad };
        assert_eq!(c.open_page(&moved, &[0x0c; 12], &tag, &page, &mut out), Err(AuthError));
    }

    #[test]
    fn xts_round_trip_depends_on_index() {
        let c = DataCipher::xts(&Key512::generate());
        let plain = vec![0x5Au8; BLOCK_SIZE];
        let mut s1 = vec![0u8; BLOCK_SIZE];
        let mut s2 = vec![0u8; BLOCK_SIZE];
        c.seal(&aad(1), &[0; 12], &plain, &mut s1);
        c.seal(&aad(2), &[0; 12], &plain, &mut s2);
        assert_ne!(s1, s2);
        let mut out = vec![0u8; BLOCK_SIZE];
        c.open(&aad(1), &s1, &mut out).unwrap();
        assert_eq!(out, plain);
    }
}
