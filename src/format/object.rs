//! The 32-byte header at the start of every data file and every directory id file.
//!
//! `"EVFS" || kind (1) || version (1) || flags u16 || id (16) || binding (8)`.
//! The id is random: a data file's id binds its blocks and DEKs (hardlinks share it, renames
//! keep it); a directory's id is the context of its children's encrypted names.
//!
//! Flags bits 0-1 say what the 8 binding bytes hold: 0 = nothing (zero; volumes made before
//! entries were bound), 1 = a MAC binding the object to the one directory entry that names
//! it, 2 = a MAC binding it to the volume only (a file with several hard links). Bit 2 says
//! the object has extended attributes (a sealed set in the store), and is covered by the MAC;
//! bit 3 says the directory is a tenant's root (`fs::tenants`), covered by the MAC too.
//! The MAC itself is computed and checked in `fs::binding`.

use super::codec::Reader;
use super::DecodeError;

pub const OBJECT_HEADER_LEN: usize = 32;
const MAGIC: &[u8; 4] = b"EVFS";
const VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    File,
    Directory,
}

impl ObjectKind {
    fn code(self) -> u8 {
        match self {
            ObjectKind::File => b'F',
            ObjectKind::Directory => b'D',
        }
    }
}

/// What an object header's binding bytes hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Nothing (a header written before entries were bound).
    None,
    /// A MAC over the object and the one directory entry that names it.
    Entry([u8; 8]),
    /// A MAC over the object alone: a file with more than one hard link.
    Shared([u8; 8]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHeader {
    pub kind: ObjectKind,
    pub id: [u8; 16],
    pub binding: Binding,
    /// The object has extended attributes (flags bit 2; only in a bound header).
    pub xattrs: bool,
    /// The directory is a tenant's root (flags bit 3; only in a directory's entry-bound header).
    pub tenant: bool,
}

/// Flags bit 2: the object has a sealed set of extended attributes.
const FLAG_XATTRS: u16 = 4;
/// Flags bit 3: the directory is a tenant's root.
const FLAG_TENANT: u16 = 8;

impl ObjectHeader {
    /// An unbound header (the binding is added by the file system layer, which has the key).
    pub fn new(kind: ObjectKind, id: [u8; 16]) -> Self {
        ObjectHeader { kind, id, binding: Binding::None, xattrs: false, tenant: false }
    }
}

impl ObjectHeader {
    pub fn encode(&self) -> [u8; OBJECT_HEADER_LEN] {
        let mut out = [0u8; OBJECT_HEADER_LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4] = self.kind.code();
        out[5] = VERSION;
        let (flags, mac) = match self.binding {
            Binding::None => (0u16, [0u8; 8]),
            Binding::Entry(m) => (1, m),
            Binding::Shared(m) => (2, m),
        };
        let flags = if self.xattrs { flags | FLAG_XATTRS } else { flags };
        let flags = if self.tenant { flags | FLAG_TENANT } else { flags };
        out[6..8].copy_from_slice(&flags.to_le_bytes());
        out[8..24].copy_from_slice(&self.id);
        out[24..].copy_from_slice(&mac);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf, "object header");
        if &r.array::<4>("magic")? != MAGIC {
            return Err(r.corrupt("bad magic".into()));
        }
        let kind = match r.u8("kind")? {
            b'F' => ObjectKind::File,
            b'D' => ObjectKind::Directory,
            k => return Err(r.corrupt(format!("unknown kind {k:#x}"))),
        };
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(DecodeError::Unsupported(format!(
                "object header version {version}; this build reads {VERSION}"
            )));
        }
        let flags = r.u16("flags")?;
        let id = r.array("id")?;
        let mac = r.array::<8>("binding")?;
        let xattrs = flags & FLAG_XATTRS != 0;
        let tenant = flags & FLAG_TENANT != 0;
        if tenant && (kind != ObjectKind::Directory || flags & 3 != 1) {
            return Err(r.corrupt("only an entry-bound directory can be a tenant's root".into()));
        }
        let binding = match flags & !(FLAG_XATTRS | FLAG_TENANT) {
            0 if mac == [0; 8] && !xattrs => Binding::None,
            0 => return Err(r.corrupt("binding bytes or flags of an unbound header are not zero".into())),
            1 => Binding::Entry(mac),
            2 => Binding::Shared(mac),
            _ => return Err(DecodeError::Unsupported(format!("object header flags {flags:#x}"))),
        };
        r.finish()?;
        Ok(ObjectHeader { kind, id, binding, xattrs, tenant })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let h = ObjectHeader::new(ObjectKind::File, [7; 16]);
        let b = h.encode();
        assert_eq!(ObjectHeader::decode(&b).unwrap(), h);
        for binding in [Binding::Entry([3; 8]), Binding::Shared([4; 8])] {
            for xattrs in [false, true] {
                let bound = ObjectHeader { binding, xattrs, ..h };
                assert_eq!(ObjectHeader::decode(&bound.encode()).unwrap(), bound);
            }
        }
        let mut bad = b;
        bad[6] = 4; // extended attributes claimed by an unbound header
        assert!(matches!(ObjectHeader::decode(&bad), Err(DecodeError::Corrupt(_))));
        let tenant = ObjectHeader { kind: ObjectKind::Directory, binding: Binding::Entry([5; 8]), tenant: true, ..h };
        assert_eq!(ObjectHeader::decode(&tenant.encode()).unwrap(), tenant);
        let mut bad = b;
        bad[6] = 8 | 2; // a tenant's root that is a file shared by hard links
        assert!(matches!(ObjectHeader::decode(&bad), Err(DecodeError::Corrupt(_))));
        let mut bad = b;
        bad[6] = 3;
        assert!(matches!(ObjectHeader::decode(&bad), Err(DecodeError::Unsupported(_))));
        assert!(ObjectHeader::decode(&b[..31]).is_err());
        let mut bad = b;
        bad[5] = 9;
        assert!(matches!(ObjectHeader::decode(&bad), Err(DecodeError::Unsupported(_))));
        let mut bad = b;
        bad[30] = 1;
        assert!(matches!(ObjectHeader::decode(&bad), Err(DecodeError::Corrupt(_))));
    }
}
