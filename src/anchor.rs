//! Per-volume state kept on the host, outside CIPHERDIR: the highest KEK generation this host
//! has seen each volume at (its anchor).
//!
//! Every `rotate --kek` gives the volume's KEK the next generation, bound into the header and
//! into the KMS context the KEK is wrapped under (so no generation can be claimed for a KEK
//! without the root). A writer of CIPHERDIR who puts back an older header (an older KEK,
//! perhaps one that leaked) offers an older generation: an open refuses it once this host has
//! seen a newer one. What lives in CIPHERDIR can be rolled back as a whole; this cannot (by
//! that writer). A host that never saw the newer generation cannot tell.
//!
//! Anchors are written only once a volume has been rotated (generation 2 and up; a volume made
//! before generations, at 0, goes to 2 at its first rotation): before that there is nothing
//! older to refuse. The state directory is per user (root's is `/var/lib/envelopefs`).

use std::path::{Path, PathBuf};

use crate::format::{hex, VolumeHeader};
use crate::{Error, Result};

/// The host's state directory: `$ENVELOPEFS_STATE_DIR`; else `/var/lib/envelopefs` for root,
/// `$XDG_STATE_HOME/envelopefs` or `~/.local/state/envelopefs` for others.
pub fn state_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("ENVELOPEFS_STATE_DIR") {
        return Some(PathBuf::from(d));
    }
    if nix::unistd::geteuid().is_root() {
        return Some(PathBuf::from("/var/lib/envelopefs"));
    }
    match std::env::var_os("XDG_STATE_HOME").filter(|d| Path::new(d).is_absolute()) {
        Some(d) => Some(PathBuf::from(d).join("envelopefs")),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/envelopefs")),
    }
}

/// Where volume `volume_id`'s anchor is.
pub fn path(volume_id: &[u8; 16]) -> Option<PathBuf> {
    state_dir().map(|d| path_in(&d, volume_id))
}

fn path_in(state: &Path, volume_id: &[u8; 16]) -> PathBuf {
    state.join("anchors").join(hex(volume_id))
}

/// The highest KEK generation this host has seen volume `volume_id` at, if it kept one.
pub fn seen(volume_id: &[u8; 16]) -> Result<Option<u64>> {
    match path(volume_id) {
        Some(p) => seen_at(&p),
        None => Ok(None),
    }
}

fn seen_at(p: &Path) -> Result<Option<u64>> {
    let text = match std::fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(p, "read", e)),
    };
    text.strip_prefix("kek-generation ")
        .and_then(|g| g.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| Error::corrupt(p, "not an envelopefs anchor (expected `kek-generation N`)"))
}

/// Refuses `header` (read from `header_path`) if its KEK generation is older than the one this
/// host has seen.
pub fn check(header: &VolumeHeader, header_path: &Path) -> Result<()> {
    match path(&header.volume_id) {
        Some(p) => check_at(&p, header, header_path),
        None => Ok(()),
    }
}

fn check_at(anchor: &Path, header: &VolumeHeader, header_path: &Path) -> Result<()> {
    match seen_at(anchor)? {
        Some(seen) if header.kek_generation < seen => Err(Error::integrity(
            header_path,
            format!(
                "its KEK is generation {}, but this host has seen generation {seen} of this volume: an older \
                 header was put back, and a KEK that was replaced is not accepted again. If you restored an older \
                 copy of the volume on purpose, remove {} and open it again",
                header.kek_generation,
                anchor.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// Remembers that volume `volume_id` is at KEK generation `generation` (a newer one only;
/// nothing is written for a volume never rotated). Durable before it returns.
pub fn record(volume_id: &[u8; 16], generation: u64) -> Result<()> {
    match path(volume_id) {
        Some(p) => record_at(&p, generation),
        None if generation < 2 => Ok(()),
        None => {
            tracing::warn!("no state directory (no HOME): the KEK generation of this volume is not anchored here");
            Ok(())
        }
    }
}

fn record_at(p: &Path, generation: u64) -> Result<()> {
    if generation < 2 || seen_at(p)?.is_some_and(|g| g >= generation) {
        return Ok(());
    }
    let dir = p.parent().expect("an anchor has a directory");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create state directory", e))?;
    crate::durable::replace_file(p, format!("kek-generation {generation}\n").as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_anchor_only_rises_and_refuses_older_headers() {
        let dir = tempfile::tempdir().unwrap();
        let id = [0x5a; 16];
        let p = path_in(dir.path(), &id);
        assert_eq!(seen_at(&p).unwrap(), None);
        record_at(&p, 1).unwrap();
        assert_eq!(seen_at(&p).unwrap(), None, "generation 1 (never rotated) is not anchored");
        record_at(&p, 3).unwrap();
        record_at(&p, 2).unwrap();
        assert_eq!(seen_at(&p).unwrap(), Some(3));
        let mut h = crate::format::VolumeHeader {
            features: crate::format::FEATURE_KEK_GENERATION,
            volume_id: id,
            cipher: crate::format::CipherKind::Aes256GcmSiv,
            extent_shift: 20,
            kek_id: [1; 16],
            kek_generation: 2,
            kms_uri: "local:keystore".into(),
            wrapped_kek: vec![3; 60],
            wrapped_name_key: vec![4; 60],
        };
        let err = check_at(&p, &h, Path::new("envelopefs.conf")).unwrap_err().to_string();
        assert!(err.contains("generation 2") && err.contains("generation 3"), "{err}");
        h.kek_generation = 3;
        check_at(&p, &h, Path::new("envelopefs.conf")).unwrap();
        std::fs::write(&p, "garbage").unwrap();
        assert!(seen_at(&p).is_err());
    }
}
