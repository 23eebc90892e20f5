//! A volume's anchor kept beside its root, where the root can keep one ([`Kms::keeps_anchors`]:
//! an HSM token, as a private data object), so that a whole CIPHERDIR put back is refused on
//! every host that reaches the root, not only on the host whose state directory saw it newer.
//!
//! An open reads it before the KEK is unwrapped and, once the volume has been checked, reads
//! it again and raises it: three calls to the token per open besides the unwrap, none on the
//! data path (and `rotate --kek` raises it too).
//! Between opens only the host's anchor follows the commits; so the root's anchor holds what
//! the last open found. A copy older than that is refused on any host; a copy taken during
//! the session since is caught only by that session's host.

use std::path::Path;

use super::{accepts_rollback, older_changes, older_format, older_generation, parse, render, Seen, SeenBy};
use crate::format::{hex, VolumeHeader};
use crate::kms::Kms;
use crate::{Error, Result};

/// What an open read from the anchor beside its root.
#[derive(Debug)]
pub struct RootAnchor {
    volume_id: [u8; 16],
    seen: Seen,
    /// Where it is, for errors: the root's key id.
    name: String,
    keeps: bool,
}

impl RootAnchor {
    /// No anchor beside the root (a root that keeps none).
    fn none(volume_id: &[u8; 16]) -> RootAnchor {
        RootAnchor { volume_id: *volume_id, seen: Seen::default(), name: String::new(), keeps: false }
    }

    /// Reads volume `volume_id`'s anchor beside `kms`'s root (nothing, for a root that keeps
    /// none). A token that cannot be read, or an anchor that is not one, fails the open.
    pub fn read(kms: &dyn Kms, volume_id: &[u8; 16]) -> Result<RootAnchor> {
        if !kms.keeps_anchors() {
            return Ok(RootAnchor::none(volume_id));
        }
        let name = format!("the anchor kept by its root {}", kms.key_id());
        Ok(RootAnchor { volume_id: *volume_id, seen: read_seen(kms, volume_id)?, name, keeps: true })
    }

    fn seen_by(&self) -> SeenBy<'_> {
        SeenBy { who: "its root", anchor: &self.name }
    }

    /// Refuses `header` if its KEK generation is older than the root's anchor has seen, or
    /// if it is format 1 and the anchor has seen the volume at format 2 (with
    /// `--accept-rollback`, [`RootAnchor::record`] moves the anchor back).
    pub fn check_generation(&self, header: &VolumeHeader, header_path: &Path) -> Result<()> {
        older_generation(header.kek_generation, self.seen.generation, header_path, self.seen_by())?;
        older_format(header, self.seen.changes, header_path, self.seen_by())?;
        Ok(())
    }

    /// Refuses a versioned set of files with fewer `changes` than the root's anchor has seen.
    pub fn check_changes(&self, changes: u64, store: &Path) -> Result<()> {
        older_changes(changes, self.seen.changes, store, &self.name).map(|_| ())
    }

    /// The changes of the set of files the root's anchor had seen at open.
    pub fn seen_changes(&self) -> Option<u64> {
        self.seen.changes
    }

    /// Writes what the volume is at (KEK `generation`, and `changes` of a versioned set) to
    /// the root's anchor: the higher of it and what the anchor holds now (read again: another
    /// host may have moved it since this open read it), or with `--accept-rollback` exactly
    /// it. A failure is logged: the volume goes on, anchored on this host only.
    pub fn record(&self, kms: &dyn Kms, generation: u64, changes: Option<u64>) {
        if !self.keeps {
            return;
        }
        let accept = accepts_rollback();
        let result = (|| {
            let stored = read_seen(kms, &self.volume_id)?;
            let next = match accept {
                true => Seen { generation: Some(generation), changes },
                false => Seen {
                    generation: (generation >= 2).then_some(generation).max(stored.generation),
                    changes: changes.max(stored.changes),
                },
            };
            if next == stored || next == Seen::default() {
                return Ok(());
            }
            // Moving it back too: the write makes the new object before it destroys every old
            // one, so no higher object stays behind to win the next read, and a failure leaves
            // the higher anchor, never none.
            kms.write_anchor(&self.volume_id, render(next).as_bytes())
                .map_err(|e| Error::Kms { uri: kms.uri().into(), reason: format!("writing this volume's anchor: {e}") })
        })();
        if let Err(e) = result {
            tracing::warn!("this volume is not anchored by its root {}: {e}", kms.key_id());
        }
    }

    /// `rotate --root`: writes what this anchor holds beside the new root `to` too (if it
    /// keeps anchors), so a volume moved to another token stays anchored.
    pub fn carry_to(&self, to: &dyn Kms) {
        if self.seen == Seen::default() {
            return;
        }
        let next = RootAnchor { keeps: to.keeps_anchors(), ..RootAnchor::none(&self.volume_id) };
        next.record(to, self.seen.generation.unwrap_or(0), self.seen.changes);
    }
}

/// The anchor's counts beside the root. Lines of several objects (a write cut between making
/// the new one and destroying the old) are merged: the highest of each count stands.
fn read_seen(kms: &dyn Kms, volume_id: &[u8; 16]) -> Result<Seen> {
    let kms_err = |reason: String| Error::Kms { uri: kms.uri().into(), reason };
    let text = kms.read_anchor(volume_id).map_err(|e| kms_err(format!("reading this volume's anchor: {e}")))?;
    let mut seen = Seen::default();
    for line in text.iter().flat_map(|t| t.split(|&b| b == b'\n')).filter(|l| !l.is_empty()) {
        let one = std::str::from_utf8(line).ok().and_then(parse).ok_or_else(|| {
            kms_err(format!(
                "this volume's anchor beside the root (envelopefs-anchor-{}) is not an envelopefs anchor; delete \
                 that data object to start it anew (see OPERATIONS.md)",
                hex(volume_id)
            ))
        })?;
        seen.generation = seen.generation.max(one.generation);
        seen.changes = seen.changes.max(one.changes);
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Key256;
    use crate::kms::{KmsContext, KmsError};

    /// A root that keeps anchors in memory (as several objects, the way a cut write leaves
    /// them) and wraps nothing.
    #[derive(Debug, Default)]
    struct Token(std::sync::Mutex<Vec<Vec<u8>>>);

    impl Kms for Token {
        fn uri(&self) -> &str {
            "test:token"
        }
        fn key_id(&self) -> String {
            "token/root".into()
        }
        fn wrap(&self, _: &Key256, _: &KmsContext) -> std::result::Result<Vec<u8>, KmsError> {
            Err(KmsError::Rejected("no keys here".into()))
        }
        fn unwrap(&self, _: &[u8], _: &KmsContext) -> std::result::Result<Key256, KmsError> {
            Err(KmsError::Rejected("no keys here".into()))
        }
        fn keeps_anchors(&self) -> bool {
            true
        }
        fn read_anchor(&self, _: &[u8; 16]) -> std::result::Result<Option<Vec<u8>>, KmsError> {
            let objects = self.0.lock().unwrap();
            Ok((!objects.is_empty()).then(|| objects.join(&b"\n"[..])))
        }
        fn write_anchor(&self, _: &[u8; 16], text: &[u8]) -> std::result::Result<(), KmsError> {
            *self.0.lock().unwrap() = vec![text.to_vec()];
            Ok(())
        }
    }

    fn header(generation: u64) -> VolumeHeader {
        VolumeHeader {
            features: crate::format::FEATURE_KEK_GENERATION | crate::format::FEATURE_PAGES,
            volume_id: [7; 16],
            kek_id: [1; 16],
            kek_generation: generation,
            kms_uri: "test:token".into(),
            ..crate::format::sample_header()
        }
    }

    #[test]
    fn the_highest_of_cut_writes_stands_and_older_volumes_are_refused() {
        let token = Token::default();
        let (conf, store) = (Path::new("envelopefs.conf"), Path::new("meta.db"));
        // A write cut after making its object: two objects, the higher count of each stands.
        token
            .0
            .lock()
            .unwrap()
            .extend([b"kek-generation 3\nfile-set-changes 9\n".to_vec(), b"file-set-changes 12\n".to_vec()]);
        let a = RootAnchor::read(&token, &[7; 16]).unwrap();
        assert_eq!(a.seen, Seen { generation: Some(3), changes: Some(12) });
        let err = a.check_changes(11, store).unwrap_err().to_string();
        assert!(err.contains("meta.db") && err.contains("token/root") && err.contains("12"), "{err}");
        let err = a.check_generation(&header(2), conf).unwrap_err().to_string();
        assert!(err.contains("envelopefs.conf") && err.contains("generation 3"), "{err}");
        a.check_changes(12, store).unwrap();
        a.check_generation(&header(3), conf).unwrap();
        // A format-1 header of a volume seen at format 2: a copy from before `upgrade`.
        let err = a.check_generation(&VolumeHeader { features: 0, ..header(3) }, conf).unwrap_err().to_string();
        assert!(err.contains("format 1") && err.contains("upgrade"), "{err}");
        // Recording never lowers it (without --accept-rollback), takes what another host wrote
        // since the read, and collapses the objects.
        token.0.lock().unwrap().push(b"file-set-changes 13\n".to_vec());
        a.record(&token, 4, Some(10));
        assert_eq!(*token.0.lock().unwrap(), [b"kek-generation 4\nfile-set-changes 13\n".to_vec()]);
        // What is not an anchor fails the open.
        *token.0.lock().unwrap() = vec![b"file-set-changes twelve".to_vec()];
        assert!(RootAnchor::read(&token, &[7; 16]).is_err());
    }
}
