//! The mount table (`/proc/self/mountinfo`), read in one place: which mount is on top at a
//! path, its device number, file system type and source. Mountpoints and sources are
//! compared as the kernel wrote them back into paths (its octal escapes of space, tab,
//! newline and backslash undone), so a mountpoint with a space in it is found like any other.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `MAJOR:MINOR`, as `/sys/class/bdi/` names it.
    pub dev: String,
    pub mountpoint: PathBuf,
    /// `fuse.envelopefs`, `fuse`, `ext4`, ...
    pub fstype: String,
    /// What was mounted (for envelopefs: CIPHERDIR).
    pub source: PathBuf,
}

impl Mount {
    /// Whether it is a FUSE mount (of any FUSE file system).
    pub fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype.starts_with("fuse.")
    }
}

/// The mount on top at `mountpoint` (the last line for it: a mount stacked on another hides
/// it), if it is a FUSE mount.
pub fn fuse_at(mountpoint: &Path) -> Option<Mount> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    top_at(&table, mountpoint).filter(Mount::is_fuse)
}

/// The last mount at `mountpoint` in `table` (mountinfo's text).
fn top_at(table: &str, mountpoint: &Path) -> Option<Mount> {
    table.lines().rev().filter_map(parse).find(|m| m.mountpoint == mountpoint)
}

/// One mountinfo line: `ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE
/// SOURCE SUPER_OPTIONS`.
fn parse(line: &str) -> Option<Mount> {
    let (pre, post) = line.split_once(" - ")?;
    let pre: Vec<&str> = pre.split(' ').collect();
    let mut post = post.split(' ');
    Some(Mount {
        dev: pre.get(2)?.to_string(),
        mountpoint: unescape(pre.get(4)?),
        fstype: post.next()?.to_string(),
        source: unescape(post.next()?),
    })
}

/// `field` with mountinfo's `\ooo` octal escapes undone.
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw
41 22 0:40 / /mnt/a\\040b rw,nosuid,nodev,relatime shared:20 - fuse.envelopefs /srv/enc\\040dir rw,user_id=0
42 41 0:41 / /mnt/a\\040b rw,relatime - tmpfs tmpfs rw
43 22 0:42 / /mnt/tab\\011and\\134slash rw - fuse.envelopefs /srv/x rw
44 22 0:43 / /mnt/plain rw - fuse /dev/fuse rw";

    #[test]
    fn escaped_mountpoints_and_sources_read_back_as_paths() {
        let m = top_at(TABLE, Path::new("/mnt/tab\tand\\slash")).unwrap();
        assert_eq!((m.dev.as_str(), m.fstype.as_str()), ("0:42", "fuse.envelopefs"));
        assert_eq!(unescape("/srv/enc\\040dir"), Path::new("/srv/enc dir"));
        assert_eq!(unescape("/a\\\\b\\04"), Path::new("/a\\\\b\\04"), "not an escape: kept as written");
        assert!(top_at(TABLE, Path::new("/mnt/plain")).unwrap().is_fuse());
        assert!(top_at(TABLE, Path::new("/mnt")).is_none());
    }

    #[test]
    fn the_mount_on_top_is_the_one_that_counts() {
        // A tmpfs stacked on the envelopefs mount at "/mnt/a b" hides it.
        let top = top_at(TABLE, Path::new("/mnt/a b")).unwrap();
        assert_eq!((top.dev.as_str(), top.fstype.as_str(), top.is_fuse()), ("0:41", "tmpfs", false));
        let below = parse(TABLE.lines().nth(1).unwrap()).unwrap();
        assert_eq!(below.source, Path::new("/srv/enc dir"));
        assert!(below.is_fuse());
    }
}
