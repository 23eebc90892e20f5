//! Steering records: the store's `meta` rows that decide what the volume does next — a
//! pending KEK rotation (which KEK new DEKs go under), the unclean-shutdown marker (whether
//! recovery may cut or delete data) and the scratch record (which directories a mount
//! destroys). Whoever can write `meta.db` could plant or edit them, so each is stored as
//! `value || HMAC-SHA256` under the current KEK's record key (`KeyRing::record_mac`) and read
//! back only if it authenticates.
//!
//! Volumes made before this (header feature bit 3 clear) have bare records: they are trusted
//! once, sealed at the first open, and the bit is set (bound into the header, so it cannot be
//! cleared again). A rotation re-seals the records under the new KEK when it finishes.

use super::fsck::MOUNT_ACTIVE;
use super::rotate::{PENDING_ID, PENDING_NAMES, PENDING_WRAPPED};
use super::scratch::{SCRATCH_DIRS, SCRATCH_KEY};
use super::tenant_conversion::CONVERSION_ROW;
use super::volume::Volume;
use super::volume::ROOT_OWNED;
use crate::keys::KeyRing;
use crate::store::{Change, Store};
use crate::{Error, Result};

/// The records sealed this way.
pub(super) const SEALED: [&str; 8] =
    [PENDING_ID, PENDING_WRAPPED, PENDING_NAMES, MOUNT_ACTIVE, SCRATCH_KEY, SCRATCH_DIRS, ROOT_OWNED, CONVERSION_ROW];
const MAC_LEN: usize = 32;

impl Volume {
    /// `value` with its MAC, to store as record `name` (bare on a volume not upgraded yet).
    pub(super) fn sealed(&self, name: &str, value: &[u8]) -> Vec<u8> {
        match self.header().features & crate::format::FEATURE_RECORDS_SEALED {
            0 => value.to_vec(),
            _ => self.with_macs(name, value, false),
        }
    }

    /// `value || MAC(current KEK)`, and `|| MAC(pending KEK)` with `pending` while a rotation
    /// has one loaded.
    fn with_macs(&self, name: &str, value: &[u8], pending: bool) -> Vec<u8> {
        seal_with(self.keys(), name, value, pending)
    }

    /// Record `name`, if present and authentic; an integrity error naming the store if it is
    /// present and does not authenticate (planted, edited, or from another KEK).
    pub(super) fn record(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(raw) = self.store().meta(name)? else { return Ok(None) };
        if let Some(value) = self.authentic(name, &raw) {
            return Ok(Some(value.to_vec()));
        }
        if self.header().features & crate::format::FEATURE_RECORDS_SEALED == 0 && name != CONVERSION_ROW {
            return Ok(Some(raw)); // not upgraded yet (read-only storage): bare, as before
        }
        Err(Error::integrity(
            self.store().path(),
            format!("record {name:?} does not authenticate under this volume's KEK (planted or edited)"),
        ))
    }

    /// The value of `raw` if it is `value || MAC` under the current KEK, or `value || MAC
    /// (old KEK) || MAC (new KEK)` as a rotation writes before its header switch.
    fn authentic<'a>(&self, name: &str, raw: &'a [u8]) -> Option<&'a [u8]> {
        open_with(self.keys(), name, raw)
    }

    /// `records` sealed under the current and the pending KEK (before a rotation's header
    /// switch).
    pub(super) fn seal_for_switch(&self, records: &[(&'static str, Vec<u8>)]) -> Vec<(&'static str, Vec<u8>)> {
        records.iter().map(|(n, v)| (*n, self.with_macs(n, v, true))).collect()
    }

    /// The changes that seal `records` (name, bare value) under the current KEK.
    pub(super) fn seal_all(&self, records: &[(&'static str, Vec<u8>)]) -> Vec<(&'static str, Vec<u8>)> {
        records.iter().map(|(n, v)| (*n, self.sealed(n, v))).collect()
    }

    /// Every present sealed record, authentic ones only, as (name, bare value): what a
    /// rotation re-seals under the new KEK.
    pub(super) fn authentic_records(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let mut out = Vec::new();
        for name in SEALED {
            if let Ok(Some(v)) = self.record(name) {
                out.push((name, v));
            }
        }
        Ok(out)
    }

    /// A volume made before sealed records: seals what is there (trusted this once). A row
    /// sealed already (an upgrade cut short before its header write) is left as it is.
    pub(super) fn seal_bare_records(&self) -> Result<()> {
        let mut bare = Vec::new();
        // No build ever wrote `tenant.convert` bare: one found bare is planted, not sealed.
        for name in SEALED.into_iter().filter(|n| *n != CONVERSION_ROW) {
            if let Some(v) = self.store().meta(name)? {
                if self.authentic(name, &v).is_none() {
                    bare.push((name, v));
                }
            }
        }
        let sealed: Vec<(&str, Vec<u8>)> = bare.iter().map(|(n, v)| (*n, self.with_macs(n, v, false))).collect();
        let changes: Vec<Change<'_>> = sealed.iter().map(|(k, v)| Change::PutMeta { key: k, value: v }).collect();
        self.store().apply(&changes)
    }
}

/// `value || MAC(current KEK)`, and `|| MAC(pending KEK)` with `pending` while a rotation has
/// one loaded.
pub(super) fn seal_with(keys: &KeyRing, name: &str, value: &[u8], pending: bool) -> Vec<u8> {
    let mut out = value.to_vec();
    out.extend_from_slice(&keys.record_mac(name, value));
    if let Some(m) = pending.then(|| keys.pending_record_mac(name, value)).flatten() {
        out.extend_from_slice(&m);
    }
    out
}

/// The value of `raw` if it is `value || MAC` under the current KEK, or `value || MAC (old
/// KEK) || MAC (new KEK)` as a rotation writes before its header switch.
fn open_with<'a>(keys: &KeyRing, name: &str, raw: &'a [u8]) -> Option<&'a [u8]> {
    if let Some((value, mac)) = split(raw) {
        if keys.record_authentic(name, value, mac) {
            return Some(value);
        }
    }
    let (head, second) = split(raw)?;
    let (value, first) = split(head)?;
    (keys.record_authentic(name, value, first) || keys.record_authentic(name, value, second)).then_some(value)
}

fn split(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    (raw.len() >= MAC_LEN).then(|| raw.split_at(raw.len() - MAC_LEN))
}

/// Record `name` without its MAC and unverified: for `status` of an unmounted volume, which
/// has no keys (and only shows it).
pub(super) fn unverified(store: &Store, name: &str, sealed: bool) -> Result<Option<Vec<u8>>> {
    Ok(store.meta(name)?.map(|raw| match (sealed, split(&raw)) {
        (true, Some((value, _))) => value.to_vec(),
        _ => raw,
    }))
}
