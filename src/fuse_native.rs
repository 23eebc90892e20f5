//! The requests a ring thread answers itself (`mount --io-uring`): the ones a tree is
//! unpacked, listed, read, committed to git and removed with (LOOKUP, GETATTR, SETATTR,
//! GETXATTR, CREATE, MKDIR, SYMLINK, READLINK, OPEN, READ, WRITE, FLUSH, RELEASE, FSYNC,
//! UNLINK, RMDIR, RENAME, RENAME2, LINK, READDIR, READDIRPLUS).
//!
//! Why: passed on to a fuser session, a request costs a message through a socket to another
//! thread and its reply one back: two context switches and two copies, about as much as the
//! work of a GETATTR. Here the thread the kernel handed the request to decodes it from the
//! ring entry, calls `fs::InodeFs` as `fuse::Adapter` would (sharing its conversions), and
//! writes the reply into the same entry.
//!
//! What this module owns: the byte layout of those requests' arguments and replies (uapi
//! `linux/fuse.h` as the kernels with FUSE over io_uring, 6.14 and later, lay them out;
//! integers in the machine's order). It knows nothing
//! else: a request it does not answer, one whose fixed argument is not the size it expects
//! (another protocol version), one carrying extension headers, and one fuser's access check
//! would look at (another user than the daemon's on a mount without `allow_other`) are passed
//! on to fuser unchanged, which answers them as over /dev/fuse. One of its own that is
//! malformed (a name without its NUL, a WRITE whose size is not its payload's) is answered
//! EIO: fuser would end its session on it. A reply larger than the entry's buffer (which the
//! kernel's request sizes rule out) is an error too, not a truncated reply.
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::SystemTime;

use nix::libc;

use crate::fs::{epoch_parts, Attr, Caller, EntryKind, InodeFs, SetTime};
use crate::fuse::{errno_code, open_flags, readdir, readdirplus, rename_mode, set_attr, TTL};

// Opcodes (enum fuse_opcode).
const LOOKUP: u32 = 1;
const GETATTR: u32 = 3;
const SETATTR: u32 = 4;
const READLINK: u32 = 5;
const SYMLINK: u32 = 6;
const MKDIR: u32 = 9;
const UNLINK: u32 = 10;
const RMDIR: u32 = 11;
const RENAME: u32 = 12;
const LINK: u32 = 13;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const RELEASE: u32 = 18;
const FSYNC: u32 = 20;
const GETXATTR: u32 = 22;
const FLUSH: u32 = 25;
const READDIR: u32 = 28;
const RELEASEDIR: u32 = 29;
const CREATE: u32 = 35;
const READDIRPLUS: u32 = 44;
const RENAME2: u32 = 45;

/// Whether the kernel sends request `opcode` in the background, so that nobody is usually
/// asleep on its reply on this CPU (a file's last close does not wait for its RELEASE; the
/// rare synchronous release, after a failed create, only waits longer for it).
pub(crate) fn in_background(opcode: u32) -> bool {
    matches!(opcode, RELEASE | RELEASEDIR)
}

// `fuse_setattr_in.valid` bits.
const FATTR_MODE: u32 = 1 << 0;
const FATTR_UID: u32 = 1 << 1;
const FATTR_GID: u32 = 1 << 2;
const FATTR_SIZE: u32 = 1 << 3;
const FATTR_ATIME: u32 = 1 << 4;
const FATTR_MTIME: u32 = 1 << 5;
const FATTR_FH: u32 = 1 << 6;
const FATTR_ATIME_NOW: u32 = 1 << 7;
const FATTR_MTIME_NOW: u32 = 1 << 8;
/// `fuse_write_in.write_flags`: the writer lacks CAP_FSETID (FUSE_HANDLE_KILLPRIV_V2).
const WRITE_KILL_SUIDGID: u32 = 1 << 2;

/// Sizes of the replies' fixed parts.
const ENTRY_OUT: usize = 128;
const DIRENT: usize = 24;

/// A request's `fuse_in_header`, decoded.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    /// Extension headers after the arguments (8-byte units); none here is ever answered.
    pub extlen: u16,
}

impl Head {
    /// The first 40 bytes of an entry's header.
    pub fn parse(h: &[u8]) -> Head {
        Head {
            opcode: u32_at(h, 4),
            unique: u64_at(h, 8),
            nodeid: u64_at(h, 16),
            uid: u32_at(h, 24),
            gid: u32_at(h, 28),
            extlen: u16::from_ne_bytes([h[36], h[37]]),
        }
    }
}

/// What answering a request came to: a reply body of `n` bytes written at the start of the
/// buffer, or an errno.
pub type Answered = Result<usize, i32>;

/// The requests a ring thread answers itself, for one mount.
pub struct Native {
    fs: Arc<InodeFs>,
    /// `Some(uid)`: a mount without `allow_other`, whose fuser sessions refuse most requests
    /// of other users than `uid`: those are passed on, for fuser to decide.
    owner_only: Option<u32>,
}

impl Native {
    pub fn new(fs: Arc<InodeFs>, owner_only: Option<u32>) -> Native {
        Native { fs, owner_only }
    }

    /// Answers request `h` (its fixed argument `op`, the first `len` bytes of `buf` its
    /// payload) if it is one of this module's, writing the reply body into `buf`; `None`
    /// passes it on to fuser.
    pub fn answer(&self, h: &Head, op: &[u8], buf: &mut [u8], len: usize) -> Option<Answered> {
        if h.extlen != 0 || self.owner_only.is_some_and(|uid| uid != h.uid) || len > buf.len() {
            return None;
        }
        let want = match h.opcode {
            LOOKUP | UNLINK | RMDIR | SYMLINK | READLINK => 0,
            GETATTR | CREATE | FSYNC | RENAME2 => 16,
            SETATTR => 88,
            MKDIR | OPEN | LINK | GETXATTR | RENAME => 8,
            READ | WRITE | READDIR | READDIRPLUS => 40,
            RELEASE | FLUSH => 24,
            _ => return None,
        };
        if op.len() != want {
            return None;
        }
        if matches!(h.opcode, READ | WRITE) && u64_at(op, 8) > i64::MAX as u64 {
            return Some(Err(libc::EINVAL)); // an offset beyond off_t, refused as fuser does
        }
        let _op = match self.fs.op() {
            Ok(guard) => guard,
            Err(e) => return Some(Err(errno_code(&e))),
        };
        let fs = &*self.fs;
        let ino = h.nodeid;
        // The payload's names; a request without them is answered EIO (passed on, it would
        // end the fuser session, and with it the daemon).
        macro_rules! names {
            () => {
                match names(&buf[..len]) {
                    Some(names) => names,
                    None => return Some(Err(libc::EIO)),
                }
            };
        }
        let got: Result<usize, crate::Error> = match h.opcode {
            LOOKUP => {
                let [name] = names!();
                fs.lookup(ino, name).map(|a| put_entry(buf, &a))
            }
            GETATTR => fs.getattr(ino).map(|a| put_attr_out(buf, &a)),
            SETATTR => fs.setattr(ino, &set_attr_in(h.uid, op)).map(|a| put_attr_out(buf, &a)),
            GETXATTR => {
                let [name] = names!();
                let size = u32_at(op, 0) as usize;
                match fs.get_xattr(ino, name) {
                    Ok(v) if size == 0 => Ok(put(buf, 0, &[&(v.len() as u32).to_ne_bytes(), &[0; 4]])),
                    Ok(v) if v.len() > size || v.len() > buf.len() => return Some(Err(libc::ERANGE)),
                    Ok(v) => Ok(put(buf, 0, &[&v])),
                    Err(e) => Err(e),
                }
            }
            MKDIR => {
                let [name] = names!();
                let mode = u32_at(op, 0) & !u32_at(op, 4);
                fs.mkdir(ino, name, mode, Caller { uid: h.uid, gid: h.gid }).map(|a| put_entry(buf, &a))
            }
            CREATE => {
                let [name] = names!();
                let (flags, mode) = (u32_at(op, 0), u32_at(op, 4) & !u32_at(op, 8));
                fs.create(ino, name, mode, Caller { uid: h.uid, gid: h.gid }).map(|(a, fh)| {
                    let n = put_entry(buf, &a);
                    n + put_open(&mut buf[n..], fh, flags)
                })
            }
            OPEN => {
                let flags = u32_at(op, 0);
                // As fuser reads it: O_ACCMODE itself (3) is no write access.
                let write = matches!(flags as i32 & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR);
                fs.open(ino, write).map(|fh| put_open(buf, fh, flags))
            }
            READ => {
                let (fh, offset, size) = (u64_at(op, 0), u64_at(op, 8), u32_at(op, 16));
                return Some(fs.read_with(fh, offset, size, |r| match r {
                    Ok(data) if data.len() <= buf.len() => Ok(put(buf, 0, &[data])),
                    Ok(_) => Err(libc::EIO),
                    Err(e) => Err(errno_code(&e)),
                }));
            }
            WRITE => {
                let (fh, offset, size, flags) = (u64_at(op, 0), u64_at(op, 8), u32_at(op, 16), u32_at(op, 20));
                if size as usize != len {
                    return Some(Err(libc::EIO)); // (fuser would panic on it)
                }
                // A writer without CAP_FSETID: setuid/setgid go first.
                let ready = if flags & WRITE_KILL_SUIDGID != 0 { fs.drop_privs(ino, Some(fh)) } else { Ok(()) };
                ready
                    .and_then(|()| fs.write(fh, offset, &buf[..len]))
                    .map(|n| put(buf, 0, &[&n.to_ne_bytes(), &[0; 4]]))
            }
            FLUSH => Ok(0),
            RELEASE => fs.release(u64_at(op, 0)).map(|()| 0),
            FSYNC => fs.fsync(u64_at(op, 0)).map(|()| 0),
            UNLINK => {
                let [name] = names!();
                fs.unlink(ino, name).map(|()| 0)
            }
            RMDIR => {
                let [name] = names!();
                fs.rmdir(ino, name).map(|()| 0)
            }
            RENAME | RENAME2 => {
                let [from, to] = names!();
                let flags = if h.opcode == RENAME2 { u32_at(op, 8) } else { 0 };
                let Some(mode) = rename_mode(flags) else { return Some(Err(libc::EINVAL)) };
                fs.rename(ino, from, u64_at(op, 0), to, mode).map(|()| 0)
            }
            SYMLINK => {
                let [name, target] = names!();
                let target = std::path::Path::new(target);
                fs.symlink(ino, name, target, Caller { uid: h.uid, gid: h.gid }).map(|a| put_entry(buf, &a))
            }
            READLINK => match fs.readlink(ino) {
                Ok(t) if t.len() <= buf.len() => Ok(put(buf, 0, &[t.as_bytes()])),
                Ok(_) => return Some(Err(libc::ENAMETOOLONG)),
                Err(e) => Err(e),
            },
            LINK => {
                let [name] = names!();
                fs.link(u64_at(op, 0), ino, name).map(|a| put_entry(buf, &a))
            }
            READDIR => {
                let (offset, size) = (u64_at(op, 8), (u32_at(op, 16) as usize).min(buf.len()));
                let mut at = 0;
                readdir(fs, ino, offset, |ino, next, kind, name| {
                    match put_dirent(&mut buf[at..size], ino, next, kind, name) {
                        Some(n) => {
                            at += n;
                            false
                        }
                        None => true,
                    }
                })
                .map(|()| at)
            }
            READDIRPLUS => {
                let (offset, size) = (u64_at(op, 8), (u32_at(op, 16) as usize).min(buf.len()));
                let mut at = 0;
                readdirplus(fs, ino, offset, |next, name, a| match put_direntplus(&mut buf[at..size], next, name, a) {
                    Some(n) => {
                        at += n;
                        false
                    }
                    None => true,
                })
                .map(|()| at)
            }
            _ => return None,
        };
        Some(got.map_err(|e| errno_code(&e)))
    }
}

/// The changes a `struct fuse_setattr_in` asks for, from a caller `uid`.
fn set_attr_in(uid: u32, op: &[u8]) -> crate::fs::SetAttr {
    let valid = u32_at(op, 0);
    let has = |bit: u32| valid & bit != 0;
    // Seconds at `at`, nanoseconds at `nsec_at`.
    let time = |bit: u32, now: u32, at: usize, nsec_at: usize| {
        has(bit).then(|| match has(now) {
            true => SetTime::Now,
            false => SetTime::At(time_at(u64_at(op, at) as i64, u32_at(op, nsec_at))),
        })
    };
    set_attr(
        uid,
        has(FATTR_MODE).then(|| u32_at(op, 68)),
        has(FATTR_UID).then(|| u32_at(op, 76)),
        has(FATTR_GID).then(|| u32_at(op, 80)),
        has(FATTR_SIZE).then(|| u64_at(op, 16)),
        time(FATTR_ATIME, FATTR_ATIME_NOW, 32, 56),
        time(FATTR_MTIME, FATTR_MTIME_NOW, 40, 60),
        has(FATTR_FH).then(|| u64_at(op, 8)),
    )
}

/// The first `N` NUL-terminated names of a request's payload (`None`: not there).
fn names<const N: usize>(payload: &[u8]) -> Option<[&OsStr; N]> {
    let mut rest = payload;
    let mut out = [OsStr::new(""); N];
    for slot in out.iter_mut() {
        let end = rest.iter().position(|&b| b == 0)?;
        *slot = OsStr::from_bytes(&rest[..end]);
        rest = &rest[end + 1..];
    }
    Some(out)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
}

/// A time as the kernel sends it (`nsecs` beyond a second taken as its last nanosecond).
fn time_at(secs: i64, nsecs: u32) -> SystemTime {
    crate::fs::time(secs, i64::from(nsecs.min(999_999_999)))
}

/// Writes `parts` one after the other at `buf[at..]`; the bytes written.
fn put(buf: &mut [u8], at: usize, parts: &[&[u8]]) -> usize {
    let mut n = at;
    for p in parts {
        buf[n..n + p.len()].copy_from_slice(p);
        n += p.len();
    }
    n - at
}

/// `st_mode` of `a`: its type's bits and its permissions.
fn mode(a: &Attr) -> u32 {
    type_bits(a.kind) | u32::from(a.perm)
}

/// The `S_IFMT` bits of `kind`.
fn type_bits(kind: EntryKind) -> u32 {
    match kind {
        EntryKind::Fifo => libc::S_IFIFO,
        EntryKind::CharDevice => libc::S_IFCHR,
        EntryKind::BlockDevice => libc::S_IFBLK,
        EntryKind::Directory => libc::S_IFDIR,
        EntryKind::File => libc::S_IFREG,
        EntryKind::Symlink => libc::S_IFLNK,
        EntryKind::Socket => libc::S_IFSOCK,
    }
}

/// `struct fuse_attr` (88 bytes).
fn attr_bytes(a: &Attr) -> [u8; 88] {
    let mut b = [0u8; 88];
    let (at, mt, ct) = (epoch_parts(a.atime), epoch_parts(a.mtime), epoch_parts(a.ctime));
    put(&mut b, 0, &[&a.ino.to_ne_bytes(), &a.size.to_ne_bytes(), &a.blocks.to_ne_bytes()]);
    put(&mut b, 24, &[&at.0.to_ne_bytes(), &mt.0.to_ne_bytes(), &ct.0.to_ne_bytes()]);
    put(&mut b, 48, &[&at.1.to_ne_bytes(), &mt.1.to_ne_bytes(), &ct.1.to_ne_bytes()]);
    put(&mut b, 60, &[&mode(a).to_ne_bytes(), &a.nlink.to_ne_bytes(), &a.uid.to_ne_bytes(), &a.gid.to_ne_bytes()]);
    put(&mut b, 76, &[&a.rdev.to_ne_bytes(), &4096u32.to_ne_bytes(), &0u32.to_ne_bytes()]); // rdev, blksize, flags
    b
}

/// `struct fuse_attr_out`: valid for [`TTL`], then the attributes.
fn put_attr_out(buf: &mut [u8], a: &Attr) -> usize {
    put(buf, 0, &[&TTL.as_secs().to_ne_bytes(), &TTL.subsec_nanos().to_ne_bytes(), &[0; 4], &attr_bytes(a)])
}

/// `struct fuse_entry_out`: node id (the inode number), generation 0, entry and attributes
/// valid for [`TTL`].
fn entry_bytes(a: &Attr) -> [u8; ENTRY_OUT] {
    let mut b = [0u8; ENTRY_OUT];
    let (secs, nsecs) = (TTL.as_secs().to_ne_bytes(), TTL.subsec_nanos().to_ne_bytes());
    put(&mut b, 0, &[&a.ino.to_ne_bytes(), &0u64.to_ne_bytes(), &secs, &secs, &nsecs, &nsecs, &attr_bytes(a)]);
    b
}

fn put_entry(buf: &mut [u8], a: &Attr) -> usize {
    put(buf, 0, &[&entry_bytes(a)])
}

/// `struct fuse_open_out` for handle `fh` of a file opened with `flags`.
fn put_open(buf: &mut [u8], fh: u64, flags: u32) -> usize {
    let open = open_flags(flags as i32).bits();
    put(buf, 0, &[&fh.to_ne_bytes(), &open.to_ne_bytes(), &0i32.to_ne_bytes()])
}

/// One `struct fuse_direntplus` (entry, dirent, name, zeros to 8 bytes) into `buf`; its
/// length, or `None` if it does not fit.
fn put_direntplus(buf: &mut [u8], next: u64, name: &OsStr, a: &Attr) -> Option<usize> {
    if ENTRY_OUT > buf.len() {
        return None;
    }
    let n = put_dirent(&mut buf[ENTRY_OUT..], a.ino, next, a.kind, name)?;
    put(buf, 0, &[&entry_bytes(a)]);
    Some(ENTRY_OUT + n)
}

/// One `struct fuse_dirent` (inode, next offset, name length, type, name, zeros to 8 bytes)
/// into `buf`; its length, or `None` if it does not fit.
fn put_dirent(buf: &mut [u8], ino: u64, next: u64, kind: EntryKind, name: &OsStr) -> Option<usize> {
    let name = name.as_bytes();
    let len = (DIRENT + name.len()).next_multiple_of(8);
    if len > buf.len() {
        return None;
    }
    let head = [
        &ino.to_ne_bytes()[..],
        &next.to_ne_bytes(),
        &(name.len() as u32).to_ne_bytes(),
        &(type_bits(kind) >> 12).to_ne_bytes(),
    ];
    let n = put(buf, 0, &head) + put(buf, DIRENT, &[name]);
    buf[n..len].fill(0);
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn attr() -> Attr {
        Attr {
            ino: 0x1122_3344_5566_7788,
            kind: EntryKind::File,
            size: 5000,
            blocks: 16,
            atime: UNIX_EPOCH + std::time::Duration::new(1_000_000_000, 5),
            mtime: UNIX_EPOCH - std::time::Duration::new(10, 250_000_000),
            ctime: UNIX_EPOCH + std::time::Duration::new(2_000_000_000, 0),
            perm: 0o4755,
            nlink: 2,
            uid: 1000,
            gid: 100,
            rdev: 0,
        }
    }

    #[test]
    fn an_entry_and_its_attributes_are_laid_out_as_the_kernel_reads_them() {
        let mut buf = [0xffu8; 200];
        assert_eq!(put_entry(&mut buf, &attr()), ENTRY_OUT);
        assert_eq!(u64_at(&buf, 0), 0x1122_3344_5566_7788, "nodeid");
        assert_eq!(u64_at(&buf, 8), 0, "generation");
        assert_eq!((u64_at(&buf, 16), u64_at(&buf, 24)), (10, 10), "entry_valid, attr_valid");
        assert_eq!((u32_at(&buf, 32), u32_at(&buf, 36)), (0, 0), "their nanoseconds");
        let a = &buf[40..];
        assert_eq!((u64_at(a, 0), u64_at(a, 8), u64_at(a, 16)), (0x1122_3344_5566_7788, 5000, 16));
        assert_eq!(u64_at(a, 24) as i64, 1_000_000_000, "atime");
        assert_eq!(u64_at(a, 32) as i64, -11, "mtime before the epoch");
        assert_eq!(u64_at(a, 40) as i64, 2_000_000_000, "ctime");
        assert_eq!((u32_at(a, 48), u32_at(a, 52), u32_at(a, 56)), (5, 750_000_000, 0), "nanoseconds");
        assert_eq!(u32_at(a, 60), libc::S_IFREG | 0o4755, "mode");
        assert_eq!((u32_at(a, 64), u32_at(a, 68), u32_at(a, 72)), (2, 1000, 100), "nlink, uid, gid");
        assert_eq!((u32_at(a, 76), u32_at(a, 80), u32_at(a, 84)), (0, 4096, 0), "rdev, blksize, flags");
        assert_eq!(buf[ENTRY_OUT], 0xff, "nothing past the entry");
        let mut out = [0u8; 104]; // struct fuse_attr_out
        assert_eq!(put_attr_out(&mut out, &attr()), 104);
        assert_eq!((u64_at(&out, 0), u32_at(&out, 8)), (10, 0));
        assert_eq!(&out[16..], &buf[40..ENTRY_OUT]);
    }

    #[test]
    fn directory_entries_are_padded_to_eight_bytes_and_refused_when_they_do_not_fit() {
        let mut buf = [0xffu8; 400];
        let n = put_direntplus(&mut buf, 7, OsStr::new("abc"), &attr()).unwrap();
        assert_eq!(n, 160, "128 + 24 + 3, rounded up");
        let d = &buf[ENTRY_OUT..];
        assert_eq!((u64_at(d, 0), u64_at(d, 8)), (0x1122_3344_5566_7788, 7), "ino, next offset");
        assert_eq!((u32_at(d, 16), u32_at(d, 20)), (3, libc::DT_REG as u32), "namelen, type");
        assert_eq!(&d[24..32], b"abc\0\0\0\0\0");
        assert_eq!(buf[160], 0xff);
        assert_eq!(put_direntplus(&mut buf[..159], 7, OsStr::new("abc"), &attr()), None);
        let mut plain = [0xffu8; 40];
        assert_eq!(put_dirent(&mut plain, 5, 8, EntryKind::Directory, OsStr::new("sub")), Some(32));
        assert_eq!((u64_at(&plain, 0), u64_at(&plain, 8), u32_at(&plain, 16)), (5, 8, 3));
        assert_eq!(u32_at(&plain, 20), libc::DT_DIR as u32);
        assert_eq!(&plain[24..32], b"sub\0\0\0\0\0");
        assert_eq!(plain[32], 0xff);
        assert_eq!(put_dirent(&mut plain[..31], 5, 8, EntryKind::Directory, OsStr::new("sub")), None);
    }

    #[test]
    fn a_setattr_is_read_from_the_kernels_layout() {
        let mut op = [0u8; 88];
        let valid = FATTR_MODE | FATTR_GID | FATTR_SIZE | FATTR_ATIME | FATTR_ATIME_NOW | FATTR_MTIME | FATTR_FH;
        put(&mut op, 0, &[&valid.to_ne_bytes()]);
        put(&mut op, 8, &[&9u64.to_ne_bytes(), &4096u64.to_ne_bytes()]); // fh, size
        put(&mut op, 40, &[&1_000u64.to_ne_bytes()]); // mtime
        put(&mut op, 60, &[&7u32.to_ne_bytes()]); // mtimensec
        put(&mut op, 68, &[&0o640u32.to_ne_bytes(), &0u32.to_ne_bytes(), &55u32.to_ne_bytes(), &66u32.to_ne_bytes()]);
        let set = set_attr_in(1000, &op);
        assert_eq!((set.size, set.fh), (Some(4096), Some(9)));
        let c = &set.changes;
        assert_eq!((c.mode, c.uid, c.gid), (Some(0o640), None, Some(66)), "uid not valid: not changed");
        assert_eq!(c.atime, Some(SetTime::Now));
        assert_eq!(c.mtime, Some(SetTime::At(UNIX_EPOCH + std::time::Duration::new(1_000, 7))));
        assert!(c.drop_privs, "a truncation by another user than root");
        assert!(!set_attr_in(0, &op).changes.drop_privs);
    }

    #[test]
    fn names_are_read_up_to_their_nul_and_a_missing_one_is_none() {
        assert_eq!(names::<2>(b"old\0new\0"), Some([OsStr::new("old"), OsStr::new("new")]));
        assert_eq!(names::<2>(b"old\0new"), None);
        assert_eq!(names::<1>(b""), None);
    }

    #[test]
    fn wire_times_round_trip_on_both_sides_of_the_epoch() {
        for t in [attr().atime, attr().mtime, UNIX_EPOCH, UNIX_EPOCH - std::time::Duration::from_secs(3)] {
            let (s, n) = epoch_parts(t);
            assert_eq!(time_at(s, n), t);
        }
    }
}
