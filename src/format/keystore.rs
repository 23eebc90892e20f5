//! The embedded keystore file: a root key sealed under Argon2id(passphrase).
//!
//! `"EVFSKEY\0" || u16 version || u8 kdf (1 = Argon2id) || u32 m_cost_kib || u32 t_cost ||
//! u32 p_cost || salt (16) || key_id (16) || sealed (60)`, where `sealed` is the root key
//! wrapped with AES-256-GCM-SIV under the Argon2id output and every byte before it as AAD.

use super::codec::Reader;
use super::DecodeError;

const MAGIC: &[u8; 8] = b"EVFSKEY\0";
const VERSION: u16 = 1;
const KDF_ARGON2ID: u8 = 1;
const SEALED_LEN: usize = 60;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl KdfParams {
    /// 64 MiB, 3 passes, 1 lane (~0.2 s on this class of machine).
    pub const DEFAULT: KdfParams = KdfParams { m_cost_kib: 64 * 1024, t_cost: 3, p_cost: 1 };

    /// Bounds accepted when reading a keystore, so a garbled file cannot ask for terabytes.
    fn check(&self) -> Result<(), String> {
        if !(8..=4 * 1024 * 1024).contains(&self.m_cost_kib) {
            return Err(format!("Argon2 memory {} KiB out of range", self.m_cost_kib));
        }
        if !(1..=64).contains(&self.t_cost) {
            return Err(format!("Argon2 passes {} out of range", self.t_cost));
        }
        if !(1..=16).contains(&self.p_cost) || self.m_cost_kib < 8 * self.p_cost {
            return Err(format!("Argon2 lanes {} out of range", self.p_cost));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeystoreFile {
    pub kdf: KdfParams,
    pub salt: [u8; 16],
    pub key_id: [u8; 16],
    pub sealed: Vec<u8>,
}

impl KeystoreFile {
    /// The bytes before `sealed`: the AAD of the sealed root key.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(KDF_ARGON2ID);
        out.extend_from_slice(&self.kdf.m_cost_kib.to_le_bytes());
        out.extend_from_slice(&self.kdf.t_cost.to_le_bytes());
        out.extend_from_slice(&self.kdf.p_cost.to_le_bytes());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.key_id);
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.header_bytes();
        out.extend_from_slice(&self.sealed);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf, "keystore");
        if &r.array::<8>("magic")? != MAGIC {
            return Err(r.corrupt("bad magic (not an envelopefs keystore)".into()));
        }
        let version = r.u16("version")?;
        if version != VERSION {
            return Err(DecodeError::Unsupported(format!("keystore version {version}; this build reads {VERSION}")));
        }
        let kdf_id = r.u8("kdf")?;
        if kdf_id != KDF_ARGON2ID {
            return Err(DecodeError::Unsupported(format!("keystore KDF {kdf_id}")));
        }
        let kdf = KdfParams { m_cost_kib: r.u32("m_cost")?, t_cost: r.u32("t_cost")?, p_cost: r.u32("p_cost")? };
        kdf.check().map_err(|e| r.corrupt(e))?;
        let salt = r.array("salt")?;
        let key_id = r.array("key id")?;
        let sealed = r.bytes(SEALED_LEN, "sealed root key")?.to_vec();
        r.finish()?;
        Ok(KeystoreFile { kdf, salt, key_id, sealed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let k = KeystoreFile { kdf: KdfParams::DEFAULT, salt: [1; 16], key_id: [2; 16], sealed: vec![3; 60] };
        let b = k.encode();
        assert_eq!(KeystoreFile::decode(&b).unwrap(), k);
        for n in 0..b.len() {
            assert!(KeystoreFile::decode(&b[..n]).is_err());
        }
        let mut huge = b.clone();
        huge[11..15].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(KeystoreFile::decode(&huge).is_err());
    }
}
