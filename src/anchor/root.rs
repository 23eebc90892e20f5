//! A volume's anchor kept beside its root, where the root can keep one ([`Kms::keeps_anchors`]:
//! an HSM token, as a private data object), so that a whole CIPHERDIR put back is refused on
//! every host that reaches the root, not only on the host whose state directory saw it newer.
//!
//! An open reads it once before the KEK is unwrapped and writes it once after the volume has
//! been checked: two calls to the token per open besides the unwrap, none on the data path.
//! Between opens only the host's anchor follows the commits; so the root's anchor holds what
//! the last open found. A copy older than that is refused on any host; a copy taken during
//! the session since is caught only by that session's host.

use std::path::Path;

use super::{accepts_rollback, older_changes, older_generation, parse, render, Seen};
use crate::format::VolumeHeader;
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
    /// Reads volume `volume_id`'s anchor beside `kms`'s root (nothing, for a root that keeps
    /// none). A token that cannot be read, or an anchor that is not one, fails the open.
    pub fn read(kms: &dyn Kms, volume_id: &[u8; 16]) -> Result<RootAnchor> {
        let name = format!("the anchor kept by its root {}", kms.key_id());
        let mut anchor = RootAnchor { volume_id: *volume_id, seen: Seen::default(), name, keeps: kms.keeps_anchors() };
        if !anchor.keeps {
            return Ok(anchor);
        }
        let kms_err = |reason: String| Error::Kms { uri: kms.uri().into(), reason };
        let text = kms.read_anchor(volume_id).map_err(|e| kms_err(format!("reading this volume's anchor: {e}")))?;
        // Lines of several objects (a write cut between making the new one and destroying
        // the old): the highest of each count stands.
        for line in text.iter().flat_map(|t| t.split(|&b| b == b'\n')).filter(|l| !l.is_empty()) {
            let seen = std::str::from_utf8(line).ok().and_then(parse).ok_or_else(|| {
                kms_err("this volume's anchor in the root's token is not an envelopefs anchor".into())
            })?;
            anchor.seen.generation = anchor.seen.generation.max(seen.generation);
            anchor.seen.changes = anchor.seen.changes.max(seen.changes);
        }
        Ok(anchor)
    }

    /// Refuses `header` if its KEK generation is older than the root's anchor has seen.
    /// (With `--accept-rollback`, [`RootAnchor::record`] moves the anchor back.)
    pub fn check_generation(&self, header: &VolumeHeader, header_path: &Path) -> Result<()> {
        let seen_by = format!("{} has seen generation {{}} of this volume", self.name);
        older_generation(header.kek_generation, self.seen.generation, header_path, &seen_by).map(|_| ())
    }

    /// Refuses a versioned set of files with fewer `changes` than the root's anchor has seen.
    pub fn check_changes(&self, changes: u64, store: &Path) -> Result<()> {
        older_changes(changes, self.seen.changes, store, &self.name).map(|_| ())
    }

    /// Writes what this open found (KEK `generation`, and `changes` of a versioned set) to
    /// the root's anchor if it is newer (or, with `--accept-rollback`, older). A failure is
    /// logged: the open goes on, anchored on this host only.
    pub fn record(&self, kms: &dyn Kms, generation: u64, changes: Option<u64>) {
        if !self.keeps {
            return;
        }
        let now = Seen { generation: (generation >= 2).then_some(generation), changes };
        let next = match accepts_rollback() {
            true => {
                Seen { generation: now.generation.or(self.seen.generation), changes: now.changes.or(self.seen.changes) }
            }
            false => Seen {
                generation: now.generation.max(self.seen.generation),
                changes: now.changes.max(self.seen.changes),
            },
        };
        if next == self.seen || next == Seen::default() {
            return;
        }
        if let Err(e) = kms.write_anchor(&self.volume_id, render(next).as_bytes()) {
            tracing::warn!("this volume is not anchored by its root {}: {e}", kms.key_id());
        }
    }
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
            features: crate::format::FEATURE_KEK_GENERATION,
            volume_id: [7; 16],
            cipher: crate::format::CipherKind::Aes256GcmSiv,
            extent_shift: 20,
            kek_id: [1; 16],
            kek_generation: generation,
            kms_uri: "test:token".into(),
            wrapped_kek: vec![3; 60],
            wrapped_name_key: vec![4; 60],
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
        // Recording never lowers it (without --accept-rollback) and collapses the objects.
        a.record(&token, 4, Some(10));
        assert_eq!(*token.0.lock().unwrap(), [b"kek-generation 4\nfile-set-changes 12\n".to_vec()]);
        // What is not an anchor fails the open.
        *token.0.lock().unwrap() = vec![b"file-set-changes twelve".to_vec()];
        assert!(RootAnchor::read(&token, &[7; 16]).is_err());
    }
}
