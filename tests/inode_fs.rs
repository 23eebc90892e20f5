//! The inode-addressed view (`InodeFs`) without a kernel: an inode the kernel still holds
//! after its name went to another file must never reach that other file — not to open it,
//! stat it or truncate it — and must not fail on a file whose creation is half done.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::sync::Arc;

use common::*;
use envelopefs::format::CipherKind;
use envelopefs::fs::{Caller, InodeFs, RenameMode, SetAttr, ROOT_INO};
use envelopefs::Error;

const ME: Caller = Caller { uid: 0, gid: 0 };

fn put(fs: &InodeFs, name: &str, data: &[u8]) -> u64 {
    let (attr, fh) = fs.create(ROOT_INO, OsStr::new(name), 0o644, ME).unwrap();
    fs.write(fh, 0, data).unwrap();
    fs.release(fh).unwrap();
    attr.ino
}

fn contents(fs: &InodeFs, ino: u64) -> Vec<u8> {
    let fh = fs.open(ino, false).unwrap();
    let data = fs.read(fh, 0, 1 << 20).unwrap();
    fs.release(fh).unwrap();
    data
}

#[test]
fn an_inode_whose_name_went_to_another_file_is_gone() {
    let (_tmp, _dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 20);
    let fs = InodeFs::new(Arc::new(vol), false, false).unwrap();
    let old = put(&fs, "a", b"old file");
    let new = put(&fs, "b", b"the other file");
    assert_ne!(old, new);
    // `b` renamed over `a`: the kernel may still hold `old`, which now has no name.
    fs.rename(ROOT_INO, OsStr::new("b"), ROOT_INO, OsStr::new("a"), RenameMode::Replace).unwrap();

    assert!(matches!(fs.getattr(old), Err(Error::NotFound(_))), "{:?}", fs.getattr(old));
    assert!(matches!(fs.open(old, false), Err(Error::NotFound(_))));
    assert!(matches!(fs.open(old, true), Err(Error::NotFound(_))));
    let truncate = SetAttr { size: Some(0), ..Default::default() };
    assert!(matches!(fs.setattr(old, &truncate), Err(Error::NotFound(_))));
    // The file that has the name now is untouched and reachable by its own inode.
    assert_eq!(contents(&fs, new), b"the other file");
    assert_eq!(fs.lookup(ROOT_INO, OsStr::new("a")).unwrap().ino, new);
}

#[test]
fn an_inode_whose_name_holds_a_file_still_being_created_is_gone_not_corrupt() {
    let (_tmp, _dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 20);
    let vol = Arc::new(vol);
    let fs = InodeFs::new(vol.clone(), false, false).unwrap();
    let old = put(&fs, "a", b"old file");
    fs.unlink(ROOT_INO, OsStr::new("a")).unwrap();
    // Another create of `a` has made its data file but not yet written its header.
    fs::File::create(vol.backing_path("a".as_ref()).unwrap()).unwrap();

    assert!(matches!(fs.getattr(old), Err(Error::NotFound(_))), "{:?}", fs.getattr(old));
    assert!(matches!(fs.open(old, false), Err(Error::NotFound(_))));
}

#[test]
fn an_open_handle_survives_its_name_going_elsewhere() {
    let (_tmp, _dir, vol) = new_volume(CipherKind::Aes256GcmSiv, 20);
    let fs = InodeFs::new(Arc::new(vol), false, false).unwrap();
    let a = put(&fs, "a", b"contents of a");
    let fh = fs.open(a, false).unwrap();
    put(&fs, "b", b"b");
    fs.rename(ROOT_INO, OsStr::new("b"), ROOT_INO, OsStr::new("a"), RenameMode::Replace).unwrap();
    assert_eq!(fs.read(fh, 0, 100).unwrap(), b"contents of a", "reads what was opened");
    fs.release(fh).unwrap();
}
