//! The record of a directory being made a tenant (`tenant add` of an existing directory):
//! `meta` row `tenant.convert`, a steering record sealed under the KEK like the others
//! (`fs::records`), so nothing planted in CIPHERDIR makes `tenant add` copy or remove a
//! directory. It names the tenant, the directory its files come from, and the phase: while
//! copying, the source is the truth (the tenant is not served, and a rerun copies again
//! what differs); once removing, the tenant is (a rerun only removes what is left of the
//! source). The conversion itself is `crate::tenant`'s.

use super::tenants::TenantEntry;
use super::volume::Volume;
use crate::store::Change;
use crate::{Error, Result};

/// `meta` key of the record.
pub(super) const CONVERSION_ROW: &str = "tenant.convert";
const VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversionPhase {
    /// The source's files are being copied into the tenant; the source is the truth.
    Copying = 1,
    /// Everything is in the tenant; what is left of the source is being removed.
    Removing = 2,
    /// `tenant add --abort` found the tenant still being filled and decided to shred it; the
    /// source is being given back. Only in this phase is a tenant's header that says
    /// "shredded" (which nothing authenticates) taken for this abort's own work.
    Aborting = 3,
}

/// A directory being made a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    /// The tenant as the list names it (or will: a rerun lists exactly this, never what a
    /// volume under `tenants/` says of itself).
    pub entry: TenantEntry,
    /// The directory id of the directory whose files become the tenant's.
    pub source_dir: [u8; 16],
    pub phase: ConversionPhase,
}

impl Conversion {
    /// `version (1) || source directory id (16) || phase (1) || the entry as a tenant list
    /// of one (§6)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        out.extend_from_slice(&self.source_dir);
        out.push(self.phase as u8);
        out.extend_from_slice(&super::tenants::encode(std::slice::from_ref(&self.entry)));
        out
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        let (&[VERSION], rest) = b.split_at_checked(1)? else { return None };
        let (source_dir, rest) = rest.split_at_checked(16)?;
        let (&[phase], rest) = rest.split_at_checked(1)? else { return None };
        let phase = match phase {
            1 => ConversionPhase::Copying,
            2 => ConversionPhase::Removing,
            3 => ConversionPhase::Aborting,
            _ => return None,
        };
        let [entry] = <[TenantEntry; 1]>::try_from(super::tenants::decode(rest).ok()?).ok()?;
        Some(Conversion { entry, source_dir: source_dir.try_into().ok()?, phase })
    }
}

impl Volume {
    /// The directory being made a tenant, if any: an integrity error if the record is there
    /// and does not authenticate or decode.
    pub fn tenant_conversion(&self) -> Result<Option<Conversion>> {
        let Some(raw) = self.record(CONVERSION_ROW)? else { return Ok(None) };
        Conversion::decode(&raw)
            .map(Some)
            .ok_or_else(|| Error::integrity(self.store().path(), "the record of a tenant conversion does not decode"))
    }

    /// Records `c` (sealed), or clears the record.
    pub fn put_tenant_conversion(&self, c: Option<&Conversion>) -> Result<()> {
        match c {
            Some(c) => {
                let sealed = self.sealed(CONVERSION_ROW, &c.encode());
                self.store().apply(&[Change::PutMeta { key: CONVERSION_ROW, value: &sealed }])
            }
            None => self.store().apply(&[Change::DeleteMeta { key: CONVERSION_ROW }]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector in docs/FORMAT.md §6 ("Tenant conversion").
    #[test]
    fn conversion_record_vector() {
        let entry = TenantEntry {
            id: [0x01; 16],
            dir_id: [0x03; 16],
            kms_uri: "local:keystore".into(),
            label: "/a".into(),
            pending_uri: String::new(),
            parent_id: [0x04; 16],
            name: b"a".to_vec(),
        };
        let c = Conversion { entry, source_dir: [0x02; 16], phase: ConversionPhase::Removing };
        let enc = c.encode();
        let list = format!(
            "010100{}{}0e006c6f63616c3a6b657973746f7265", /* "local:keystore" */
            "01".repeat(16),
            "03".repeat(16)
        );
        let tail = format!("02002f610000{}010061", "04".repeat(16)); // "/a", "", parent, "a"
        assert_eq!(crate::format::hex(&enc), format!("01{}02{list}{tail}", "02".repeat(16)));
        assert_eq!(Conversion::decode(&enc), Some(c));
        for bad in [&enc[..17], &[&enc[..], &[0]].concat()[..], &[&[2], &enc[1..]].concat()[..]] {
            assert_eq!(Conversion::decode(bad), None);
        }
        let mut other = enc.clone();
        other[17] = 3;
        assert_eq!(Conversion::decode(&other).map(|c| c.phase), Some(ConversionPhase::Aborting));
        other[17] = 4;
        assert_eq!(Conversion::decode(&other), None);
    }
}
