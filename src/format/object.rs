//! The 32-byte header at the start of every data file and every directory id file.
//!
//! `"EVFS" || kind (1) || version (1) || flags u16 (0) || id (16) || reserved (8, zero)`.
//! The id is random: a data file's id binds its blocks and DEKs (hardlinks share it, renames
//! keep it); a directory's id is the context of its children's encrypted names.

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHeader {
    pub kind: ObjectKind,
    pub id: [u8; 16],
}

impl ObjectHeader {
    pub fn encode(&self) -> [u8; OBJECT_HEADER_LEN] {
        let mut out = [0u8; OBJECT_HEADER_LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4] = self.kind.code();
        out[5] = VERSION;
        out[8..24].copy_from_slice(&self.id);
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
        if flags != 0 {
            return Err(DecodeError::Unsupported(format!("object header flags {flags:#x}")));
        }
        let id = r.array("id")?;
        if r.array::<8>("reserved")? != [0; 8] {
            return Err(r.corrupt("reserved bytes are not zero".into()));
        }
        r.finish()?;
        Ok(ObjectHeader { kind, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let h = ObjectHeader { kind: ObjectKind::File, id: [7; 16] };
        let b = h.encode();
        assert_eq!(ObjectHeader::decode(&b).unwrap(), h);
        assert!(ObjectHeader::decode(&b[..31]).is_err());
        let mut bad = b;
        bad[5] = 9;
        assert!(matches!(ObjectHeader::decode(&bad), Err(DecodeError::Unsupported(_))));
        let mut bad = b;
        bad[30] = 1;
        assert!(matches!(ObjectHeader::decode(&bad), Err(DecodeError::Corrupt(_))));
    }
}
