//! The per-boot scratch key: a KEK for scratch files that must not outlive the boot.
//!
//! Generated once per boot and volume, wrapped by the KMS root with the boot id in the
//! context, and kept wrapped only in a runtime file on tmpfs (`RUNTIME/<volume id>.scratch`):
//! a reboot empties tmpfs and changes the boot id, so the key is gone for good; deleting the
//! runtime file (at `umount`) shreds it at once. The file format is
//! `"EVFSSCR2" || boot_id (16) || key id (16) || recorded (1) || wrapped key`, where
//! `recorded` is 1 once the store holds the scratch record (written after that commit): a
//! record missing from the store while this file says it was written was removed behind the
//! volume's back. (`"EVFSSCR1"` files, from before the flag, have none.)

use std::path::Path;
use std::sync::Arc;

use super::{kms_error, Kek, KeyRing, NameKeys};
use crate::crypto::{random_array, Key256, KeyWrapper};
use crate::kms::{Kms, KmsContext, KmsError, Purpose};
use crate::{durable, Error, Result};

const MAGIC: &[u8; 8] = b"EVFSSCR2";
const MAGIC_V1: &[u8; 8] = b"EVFSSCR1";
/// Where Linux publishes the id of the running boot.
pub const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

/// The id of the running boot (`ENVELOPEFS_BOOT_ID_FILE` overrides where it is read from, so
/// tests can simulate a reboot).
pub fn boot_id() -> Result<[u8; 16]> {
    let path = std::env::var_os("ENVELOPEFS_BOOT_ID_FILE").unwrap_or_else(|| BOOT_ID_FILE.into());
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, "read boot id", e))?;
    parse_uuid(text.trim()).ok_or_else(|| Error::corrupt(&path, "boot id is not a UUID"))
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let digits: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
    if digits.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in digits.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// The contents of a runtime scratch file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchRecord {
    pub boot_id: [u8; 16],
    pub key_id: [u8; 16],
    /// Whether the store's scratch record was committed (`None`: a file from before the flag).
    pub recorded: Option<bool>,
    pub wrapped: Vec<u8>,
}

impl ScratchRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = if self.recorded.is_some() { MAGIC } else { MAGIC_V1 }.to_vec();
        out.extend_from_slice(&self.boot_id);
        out.extend_from_slice(&self.key_id);
        if let Some(recorded) = self.recorded {
            out.push(u8::from(recorded));
        }
        out.extend_from_slice(&self.wrapped);
        out
    }

    /// `None` for anything that is not a well-formed record.
    pub fn decode(b: &[u8]) -> Option<ScratchRecord> {
        let (recorded, wrapped) = match b.get(..8)? {
            m if m == MAGIC && b.len() > 41 && b[40] <= 1 => (Some(b[40] == 1), &b[41..]),
            m if m == MAGIC_V1 && b.len() > 40 => (None, &b[40..]),
            _ => return None,
        };
        Some(ScratchRecord {
            boot_id: b[8..24].try_into().ok()?,
            key_id: b[24..40].try_into().ok()?,
            recorded,
            wrapped: wrapped.to_vec(),
        })
    }

    /// Notes in the record at `path` that the store's scratch record is committed (durably;
    /// nothing to do if it says so already).
    pub fn mark_recorded(path: &Path) -> Result<()> {
        match Self::read(path) {
            Some(mut rec) if rec.recorded != Some(true) => {
                rec.recorded = Some(true);
                durable::replace_file(path, &rec.encode(), 0o600)
            }
            _ => Ok(()),
        }
    }

    /// Reads the record at `path`; `None` if there is none or it is unreadable.
    pub fn read(path: &Path) -> Option<ScratchRecord> {
        crate::confine::read_file(path, 64 * 1024).ok().and_then(|b| Self::decode(&b))
    }
}

/// How [`KeyRing::load_scratch`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScratchLoad {
    /// The key of this boot is loaded.
    Loaded,
    /// No usable key: none recorded, another boot's, or another key than the volume expects.
    Stale,
}

impl KeyRing {
    fn scratch_ctx(&self, boot_id: [u8; 16]) -> KmsContext {
        KmsContext { volume_id: self.volume_id, purpose: Purpose::Scratch { boot_id }, generation: 0 }
    }

    /// Loads the scratch key recorded at `path` if it is this boot's and has id `expected`
    /// (one KMS unwrap).
    pub fn load_scratch(
        &self,
        kms: &dyn Kms,
        path: &Path,
        boot_id: [u8; 16],
        expected: [u8; 16],
    ) -> Result<ScratchLoad> {
        let Some(rec) = ScratchRecord::read(path) else { return Ok(ScratchLoad::Stale) };
        if rec.boot_id != boot_id || rec.key_id != expected {
            return Ok(ScratchLoad::Stale);
        }
        let key = match kms.unwrap(&rec.wrapped, &self.scratch_ctx(boot_id)) {
            Ok(k) => k,
            Err(KmsError::Rejected(r)) => {
                return Err(Error::integrity(path, format!("wrapped scratch key refused by the KMS ({r})")))
            }
            Err(e) => return Err(kms_error(kms, e)),
        };
        self.set_scratch(rec.key_id, &key);
        self.unless_revoked(kms)?;
        Ok(ScratchLoad::Loaded)
    }

    /// Makes a new scratch key for this boot, records it wrapped at `path` (mode 0600) and
    /// loads it (one KMS wrap). Returns its id.
    pub fn create_scratch(&self, kms: &dyn Kms, path: &Path, boot_id: [u8; 16]) -> Result<[u8; 16]> {
        let key = Key256::generate();
        let key_id = random_array();
        let dir = path.parent().unwrap_or(Path::new("."));
        if !crate::confine::in_memory(dir) {
            return Err(Error::InvalidArgument(format!(
                "{}: not on tmpfs or ramfs, so the wrapped scratch key would reach a disk and outlive the boot \
                 there: set ENVELOPEFS_RUNTIME_DIR to a directory on tmpfs (such as /dev/shm/envelopefs)",
                dir.display()
            )));
        }
        let wrapped = kms.wrap(&key, &self.scratch_ctx(boot_id)).map_err(|e| kms_error(kms, e))?;
        let rec = ScratchRecord { boot_id, key_id, recorded: Some(false), wrapped };
        durable::replace_file(path, &rec.encode(), 0o600)?;
        self.set_scratch(key_id, &key);
        self.unless_revoked(kms)?;
        Ok(key_id)
    }

    fn set_scratch(&self, id: [u8; 16], key: &Key256) {
        *self.scratch.write().unwrap_or_else(|p| p.into_inner()) =
            Some(Arc::new(Kek { id, generation: 0, wrapper: KeyWrapper::new(key), records: None }));
    }

    /// The id of the loaded scratch key.
    pub fn scratch_id(&self) -> Option<[u8; 16]> {
        self.scratch_kek().map(|k| k.id)
    }

    pub(super) fn scratch_kek(&self) -> Option<Arc<Kek>> {
        self.scratch.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets the scratch key and every cached cipher (zeroized once no call still uses
    /// them). Scratch DEKs can no longer be unwrapped.
    pub fn drop_scratch(&self) {
        self.scratch.write().unwrap_or_else(|p| p.into_inner()).take();
        self.cache.clear();
    }

    /// The root was revoked: drops every key this ring holds (the KEK, a pending KEK, the
    /// scratch key, the name keys and every cached DEK cipher; each zeroized or cleansed as
    /// its last holder lets go, which is at once once no request is under way). What takes
    /// their place is a fresh random key that wraps and names nothing: the volume refuses
    /// every request and write before this is called (`Volume::go_dark`), so it is never
    /// used, and no lookup ever meets a missing key.
    pub fn revoke(&self) {
        self.revoked.store(true, std::sync::atomic::Ordering::SeqCst);
        self.drop_scratch();
        self.pending.write().unwrap_or_else(|p| p.into_inner()).take();
        self.pending_names.write().unwrap_or_else(|p| p.into_inner()).take();
        let filler = Key256::generate();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Kek::volume([0; 16], 0, &filler, &self.volume_id));
        *self.names.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(NameKeys::new(filler, &self.volume_id));
    }
}

/// `rotate --root`: the runtime scratch record at `path` (if it is this volume's and this
/// boot's) with its key re-wrapped from root `from` to root `to`.
pub fn rewrap_scratch(
    from: &dyn Kms,
    to: &dyn Kms,
    header: &crate::format::VolumeHeader,
    path: &Path,
) -> Result<Option<ScratchRecord>> {
    let Some(mut rec) = ScratchRecord::read(path) else { return Ok(None) };
    let ctx =
        KmsContext { volume_id: header.volume_id, purpose: Purpose::Scratch { boot_id: rec.boot_id }, generation: 0 };
    let key = match from.unwrap(&rec.wrapped, &ctx) {
        Ok(k) => k,
        Err(KmsError::Rejected(_)) => return Ok(None), // not under this root: stale, left alone
        Err(e) => return Err(kms_error(from, e)),
    };
    rec.wrapped = to.wrap(&key, &ctx).map_err(|e| kms_error(to, e))?;
    Ok(Some(rec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_parses_and_rejects() {
        let id = parse_uuid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0").unwrap();
        assert_eq!(id[0], 0x0f);
        assert_eq!(id[15], 0xf0);
        assert!(parse_uuid("0f1e2d3c-4b5a-6978-8796").is_none());
        assert!(parse_uuid("zz1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0").is_none());
    }

    #[test]
    fn record_round_trips_and_rejects_garbage() {
        let old = ScratchRecord { boot_id: [1; 16], key_id: [2; 16], recorded: None, wrapped: vec![3; 48] };
        assert_eq!(&old.encode()[..8], b"EVFSSCR1", "a record without the flag is the old format");
        assert_eq!(ScratchRecord::decode(&old.encode()), Some(old.clone()));
        let r = ScratchRecord { recorded: Some(true), ..old };
        assert_eq!(ScratchRecord::decode(&r.encode()), Some(r.clone()));
        let enc = r.encode();
        assert_eq!(enc[40], 1);
        let mut two = enc.clone();
        two[40] = 2;
        assert_eq!(ScratchRecord::decode(&two), None, "a flag is 0 or 1");
        for n in 0..=41 {
            assert_eq!(ScratchRecord::decode(&enc[..n]), None);
        }
        let mut bad = enc.clone();
        bad[0] ^= 1;
        assert_eq!(ScratchRecord::decode(&bad), None);
    }
}
