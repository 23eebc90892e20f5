//! The thin fuser adapter: converts arguments and replies, one match per operation. The only
//! importer of `fuser`; all semantics live in `fs::InodeFs`. What a conversion decides (the
//! open flags, a SETATTR's changes, a RENAME's mode, which entries a READDIRPLUS lists) is a
//! function here that `fuse_native` (the requests a ring thread answers itself) shares.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};

use crate::fs::{Attr, AttrChanges, Caller, EntryKind, InodeFs, RenameMode, SetAttr, SetTime, XattrMode};
use crate::Error;

/// How long the kernel may cache attributes and entries. Every change goes through this
/// daemon and the kernel sees it, so caching is safe; the bound is for changes made to the
/// backing directory behind our back (not supported while mounted). With one second, a tree
/// walk slower than that (`rm -rf` of 10,000 files) revalidated every directory on its path
/// with a LOOKUP: ten seconds cut its requests by a quarter.
pub(crate) const TTL: Duration = Duration::from_secs(10);
/// Largest read/write request asked of the kernel.
const MAX_IO: u32 = 1 << 20;

/// How a file is opened. Never a FLUSH request at close: ours would have nothing to do
/// (metadata is committed at the last release). A cached open keeps the kernel's page cache
/// of the file (`FOPEN_KEEP_CACHE`): every change to a file's contents comes through this
/// mount and updates or drops the cached pages itself (writes through, truncation, O_DIRECT
/// writes), so pages cached by an earlier open are still true, and a file read again is not
/// decrypted again. (`data/` changed behind the daemon's back is not supported while mounted.)
/// An `O_DIRECT` open bypasses the page cache for the handle (as the caller asked) so that
/// its writes inside the file run in parallel: the kernel otherwise serialises them on the
/// inode lock, while here whole-block overwrites run under a shared lock and anything else
/// takes the file's own lock.
pub(crate) fn open_flags(flags: i32) -> FopenFlags {
    if flags & nix::libc::O_DIRECT != 0 {
        FopenFlags::FOPEN_NOFLUSH | FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
    } else {
        FopenFlags::FOPEN_NOFLUSH | FopenFlags::FOPEN_KEEP_CACHE
    }
}

/// Options of one mount.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub read_only: bool,
    pub allow_other: bool,
    pub fsname: String,
    pub threads: usize,
    /// Serve requests over io_uring rings, one per CPU (`crate::fuse_uring`), where the
    /// kernel allows it; /dev/fuse otherwise.
    pub io_uring: bool,
}

/// What the main session's INIT negotiated, for the io_uring sessions (set once, at INIT).
type Negotiation = std::sync::Arc<std::sync::OnceLock<crate::fuse_uring::Negotiated>>;

/// The kernel caps a FUSE mount's readahead at 128 KiB whatever `max_readahead` says; root
/// may raise it per mount (`/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`), so sequential reads
/// arrive as 1 MiB requests. Best effort: without root it stays as it is.
fn raise_readahead(mountpoint: &Path) {
    // The device number comes from mountinfo: a stat of the mountpoint would wait for the
    // FUSE handshake, which this thread has not served yet.
    if let Some(dev) = crate::mountinfo::fuse_at(mountpoint).map(|m| m.dev) {
        let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
        if let Err(e) = std::fs::write(&knob, format!("{}", MAX_IO / 1024)) {
            tracing::debug!("cannot raise readahead ({knob}: {e})");
        }
    }
}

/// A mounted session, ready to serve; `unmounter` ends it from another thread.
pub struct Mounted {
    session: fuser::Session<Adapter>,
    /// The mount made by this process itself (as root), which it unmounts.
    direct: Option<std::sync::Arc<crate::mount_sys::Mounted>>,
    /// The io_uring rings serving requests beside /dev/fuse (`--io-uring`), and whether
    /// they serve (else why not).
    rings: Option<crate::fuse_uring::Rings>,
    transport: Transport,
    fs: std::sync::Arc<InodeFs>,
}

/// How requests reach the daemon, for `status`.
#[derive(Clone)]
pub enum Transport {
    DevFuse,
    /// `--io-uring` asked for, /dev/fuse serving: the reason.
    DevFuseInstead(String),
    IoUring(std::sync::Arc<crate::fuse_uring::Stats>),
}

impl Transport {
    pub fn status_json(&self) -> serde_json::Value {
        match self {
            Transport::DevFuse => serde_json::json!({ "kind": "/dev/fuse" }),
            Transport::DevFuseInstead(why) => serde_json::json!({ "kind": "/dev/fuse", "io_uring_refused": why }),
            Transport::IoUring(s) => {
                let per_ring = s.per_ring();
                serde_json::json!({
                    "kind": "io_uring",
                    "rings": per_ring.len(),
                    "requests": per_ring.iter().sum::<u64>(),
                    "requests_per_ring": per_ring,
                    "answered_in_ring": s.answered_in_ring(),
                })
            }
        }
    }
}

impl Mounted {
    /// Mounts `fs` on `mountpoint` (the FUSE handshake is done when this returns).
    pub fn new(fs: std::sync::Arc<InodeFs>, mountpoint: &Path, cfg: &MountConfig) -> std::io::Result<Self> {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(cfg.fsname.clone()),
            MountOption::Subtype("envelopefs".into()),
            MountOption::DefaultPermissions,
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        if cfg.read_only {
            config.mount_options.push(MountOption::RO);
        }
        if cfg.allow_other {
            config.acl = SessionACL::All;
        }
        config.n_threads = Some(cfg.threads.max(1));
        config.clone_fd = true;
        // As root the daemon mounts itself, so the mount's type is `fuse.envelopefs`; others
        // go through fusermount3, which gives the same type from the subtype option.
        let direct = match nix::unistd::geteuid().is_root() {
            true => match crate::mount_sys::mount(mountpoint, &cfg.fsname, cfg.read_only, cfg.allow_other) {
                Ok(fd) => Some((fd, std::sync::Arc::new(crate::mount_sys::Mounted::new(mountpoint)))),
                // Root without the right to mount here (a user namespace): fusermount3.
                Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => None,
                Err(e) => return Err(e),
            },
            false => None,
        };
        let negotiated: Negotiation = Default::default();
        let commit_elsewhere = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Rings only where the daemon mounted itself, as root: they need its connection's
        // descriptor, and root's rights to size the sockets and to leave SCHED_IDLE. What
        // they need is tried now: once INIT asks for io_uring, a failure holds every request.
        let mut not_before_init = None;
        let uring = cfg.io_uring
            && direct.is_some()
            && match crate::fuse_uring::preflight() {
                Ok(()) => true,
                Err(e) => {
                    not_before_init = Some(e.to_string());
                    false
                }
            };
        let main = Adapter {
            fs: fs.clone(),
            uring: uring.then(|| negotiated.clone()),
            commit_elsewhere: commit_elsewhere.clone(),
        };
        let (session, direct, dev) = match direct {
            Some((fd, m)) => {
                // A second descriptor of the connection, for the rings' commands.
                let dev = match uring.then(|| fd.try_clone()).transpose() {
                    Ok(dev) => dev,
                    Err(e) => {
                        m.detach_if_still_there();
                        return Err(e);
                    }
                };
                match fuser::Session::from_fd(main, fd, config.acl, config.clone()) {
                    Ok(session) => (session, Some(m), dev),
                    Err(e) => {
                        m.detach_if_still_there(); // no dead mount left by a failed start
                        return Err(e);
                    }
                }
            }
            None => (fuser::Session::new(main, mountpoint, &config)?, None, None),
        };
        raise_readahead(mountpoint);
        let (rings, transport) = match (cfg.io_uring, dev, negotiated.get(), not_before_init) {
            (false, ..) => (None, Transport::DevFuse),
            (true, _, _, Some(why)) => (None, refused(why)),
            (true, None, _, None) => (
                None,
                refused("it needs the daemon to make the mount itself, as root (here fusermount3 made it)".into()),
            ),
            (true, Some(_), None, None) => (
                None,
                refused(
                    "the kernel does not offer FUSE over io_uring (it needs Linux 6.14+ and, as root, `echo Y > \
                     /sys/module/fuse/parameters/enable_uring`)"
                        .into(),
                ),
            ),
            (true, Some(dev), Some(&neg), None) => match start_rings(dev, neg, fs.clone(), &config, cfg.threads) {
                Ok(r) => r,
                Err(e) => {
                    if let Some(m) = &direct {
                        m.detach_if_still_there(); // no mount left that holds every request
                    }
                    return Err(e);
                }
            },
        };
        // With rings, the main session's end is not the end of requests: the commit at
        // unmount waits for the rings' threads (`run`).
        commit_elsewhere.store(rings.is_some(), std::sync::atomic::Ordering::SeqCst);
        Ok(Mounted { session, direct, rings, transport, fs })
    }

    /// How requests reach the daemon.
    pub fn transport(&self) -> Transport {
        self.transport.clone()
    }

    /// A handle that unmounts the file system (from a signal thread).
    pub fn unmounter(&mut self) -> impl FnMut() -> std::io::Result<()> + Send + 'static {
        let mut u = self.session.unmount_callable();
        let direct = self.direct.clone();
        move || match &direct {
            Some(m) => m.unmount(),
            None => u.unmount(),
        }
    }

    /// A handle that unmounts the file system only if nothing uses it (`mount --idle`): as
    /// `umount` (root) or `fusermount3 -u` (others, never lazily), an error while busy.
    pub fn idle_unmounter(&self, mountpoint: &Path) -> impl FnMut() -> std::io::Result<()> + Send + 'static {
        let direct = self.direct.clone();
        let path = mountpoint.to_path_buf();
        move || match &direct {
            Some(m) => m.unmount(),
            None => crate::mount_sys::fusermount_unmount(&path, false)?.map_err(std::io::Error::other),
        }
    }

    /// A handle that drops what the kernel caches of this mount's files (from another
    /// thread, while the session serves).
    pub fn invalidator(&self) -> Invalidator {
        Invalidator(self.session.notifier())
    }

    /// Serves requests until the file system is unmounted.
    pub fn run(self) -> std::io::Result<()> {
        let Mounted { session, direct, rings, fs, .. } = self;
        let served = session.run();
        if let Some(m) = direct {
            m.detach_if_still_there(); // serving failed: no dead mount is left behind
        }
        // The connection is gone: the kernel has ended every ring entry.
        if let Some(r) = rings {
            r.join();
            commit_at_unmount(&fs);
        }
        served
    }
}

/// `--io-uring` refused: /dev/fuse serves, and the log says why.
fn refused(why: String) -> Transport {
    tracing::warn!("--io-uring: {why}; serving over /dev/fuse");
    Transport::DevFuseInstead(why)
}

/// Starts a ring per CPU, each served by worker threads (`threads` spread over the CPUs, at
/// least eight each, so that a few slow requests of one CPU do not hold up the rest of its
/// requests: the kernel never moves a request to another CPU's ring), each answering what
/// `fuse_native` knows itself and passing the rest to a fuser session of its own; /dev/fuse
/// serves everything if that fails.
/// `ENVELOPEFS_RING_PASS_ON=1` passes every request on to the sessions (for comparisons, and
/// the tests of both paths).
fn start_rings(
    dev: std::os::fd::OwnedFd,
    neg: crate::fuse_uring::Negotiated,
    fs: std::sync::Arc<InodeFs>,
    config: &Config,
    threads: usize,
) -> std::io::Result<(Option<crate::fuse_uring::Rings>, Transport)> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // To send the connection back to /dev/fuse if the rings cannot start.
    let spare = dev.try_clone()?;
    let workers = threads.div_ceil(cpus).max(8);
    let mut per_worker = config.clone();
    per_worker.n_threads = Some(1); // a worker waits for its session's one reply at a time
    per_worker.clone_fd = false;
    let pass_on = std::env::var_os("ENVELOPEFS_RING_PASS_ON").is_some_and(|v| v == "1");
    let owner_only = (config.acl != SessionACL::All).then(|| nix::unistd::geteuid().as_raw());
    let native = (!pass_on).then(|| std::sync::Arc::new(crate::fuse_native::Native::new(fs.clone(), owner_only)));
    let committing = fs.clone();
    let once = std::sync::Arc::new(std::sync::Mutex::new(()));
    let fatal: crate::fuse_uring::Fatal = std::sync::Arc::new(move |why: String| {
        // One ring's failure ends the daemon; another failing meanwhile waits for that.
        let _only = once.lock();
        tracing::error!("{why}: committing, then ending the daemon (the mount's callers get ENOTCONN)");
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commit_at_unmount(&committing)));
        std::process::exit(1);
    });
    let session = move |fd: std::os::fd::OwnedFd| -> std::io::Result<Box<dyn FnOnce() + Send>> {
        let commit_elsewhere = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let adapter = Adapter { fs: fs.clone(), uring: None, commit_elsewhere };
        let session = fuser::Session::from_fd(adapter, fd, per_worker.acl, per_worker.clone())?;
        let t = std::thread::Builder::new().name("uring-session".into()).spawn(move || {
            let _ = session.run(); // ends when the ring closes its socket
        })?;
        Ok(Box::new(move || {
            let _ = t.join();
        }))
    };
    let (rings, started) = crate::fuse_uring::Rings::start(dev, neg, workers, session, native, fatal);
    let transport = match started {
        Ok(()) => {
            tracing::info!("serving requests over io_uring, a ring per CPU");
            Transport::IoUring(rings.stats())
        }
        Err(e) => {
            // The kernel holds every request until the rings are all registered: unless it
            // is told to go back to /dev/fuse, the mount hangs.
            crate::fuse_uring::turn_off(&spare).map_err(|off| {
                std::io::Error::other(format!(
                    "--io-uring: {e}, and the connection cannot go back to /dev/fuse ({off})"
                ))
            })?;
            refused(e.to_string())
        }
    };
    Ok((Some(rings), transport))
}

/// Drops the kernel's cached pages and attributes of inodes of one mount.
#[derive(Clone)]
pub struct Invalidator(fuser::Notifier);

impl Invalidator {
    /// Drops everything the kernel caches of `inodes` (pages, also mapped ones, and
    /// attributes; an inode the kernel no longer knows is skipped); how many it dropped.
    pub fn drop_cached(&self, inodes: &[u64]) -> usize {
        inodes.iter().filter(|&&ino| self.0.inval_inode(INodeNo(ino), 0, 0).is_ok()).count()
    }

    /// Drops the kernel's cached entry `name` of directory `parent` (an entry removed
    /// behind the kernel's back). Never from a request's own thread.
    pub fn forget_entry(&self, parent: u64, name: &std::ffi::OsStr) -> bool {
        self.0.inval_entry(INodeNo(parent), name).is_ok()
    }
}

struct Adapter {
    fs: std::sync::Arc<InodeFs>,
    /// The main session of an `--io-uring` mount: asks for io_uring at INIT and records what
    /// INIT negotiated here.
    uring: Option<Negotiation>,
    /// Whether the commit at unmount is someone else's: a session serving one CPU's ring
    /// (always), or the main session of a mount served by rings (`Mounted::run` commits once
    /// the rings' threads are done, not at this session's end).
    commit_elsewhere: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The commit at unmount (nothing to commit, and no key, if the volume went dark).
fn commit_at_unmount(fs: &InodeFs) {
    if fs.volume().dark().is_some() {
        return; // committed when it went dark; its keys are gone
    }
    if let Err(e) = fs.sync_all() {
        tracing::error!("committing at unmount failed: {e}");
    }
}

/// The errno for `e`; an EIO (integrity, corruption, store or I/O trouble) is logged with
/// its file and cause, since the caller only sees "Input/output error".
fn errno(e: &Error) -> Errno {
    Errno::from_i32(errno_code(e))
}

/// As [`errno`], the number.
pub(crate) fn errno_code(e: &Error) -> i32 {
    let n = e.errno();
    if n == nix::libc::EIO {
        tracing::error!("{e}");
    }
    n
}

/// What a SETATTR of `caller_uid` asks for. fuser does not pass on FATTR_KILL_SUIDGID (the
/// kernel sets it on a truncation by a caller without CAP_FSETID): root stands for the
/// callers that have it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn set_attr(
    caller_uid: u32,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<SetTime>,
    mtime: Option<SetTime>,
    fh: Option<u64>,
) -> SetAttr {
    let truncated_by_user = size.is_some() && caller_uid != 0;
    SetAttr { size, changes: AttrChanges { mode, uid, gid, atime, mtime, drop_privs: truncated_by_user }, fh }
}

/// The mode of a RENAME with `flags`; `None`: flags this file system does not know (EINVAL).
pub(crate) fn rename_mode(flags: u32) -> Option<RenameMode> {
    let flags = RenameFlags::from_bits_retain(flags);
    if flags.contains(RenameFlags::RENAME_EXCHANGE) {
        Some(RenameMode::Exchange)
    } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
        Some(RenameMode::NoReplace)
    } else if flags.is_empty() {
        Some(RenameMode::Replace)
    } else {
        None
    }
}

/// A READDIR of directory `ino` from `offset`: each entry's inode, next offset, kind and name
/// go to `add` until it says the reply is full.
pub(crate) fn readdir(
    fs: &InodeFs,
    ino: u64,
    offset: u64,
    mut add: impl FnMut(u64, u64, EntryKind, &OsStr) -> bool,
) -> crate::Result<()> {
    let (l, _) = fs.readdir_from(ino, offset)?;
    for (i, e) in l.entries.iter().enumerate().skip(offset as usize) {
        if add(e.ino, (i + 1) as u64, e.kind, &e.name) {
            break;
        }
    }
    Ok(())
}

/// A READDIRPLUS of directory `ino` from `offset`: each entry's next offset, name and
/// attributes go to `add` until it says the reply is full. An entry removed meanwhile is
/// skipped; one whose attributes fail ends the reply if entries went before it (the next
/// read starts at it and reports the error: an empty reply would end the listing).
pub(crate) fn readdirplus(
    fs: &InodeFs,
    ino: u64,
    offset: u64,
    mut add: impl FnMut(u64, &OsStr, &Attr) -> bool,
) -> crate::Result<()> {
    // The backing directory: the listing's own for its first reply, else opened at the
    // first entry that needs it.
    let (l, mut listed) = fs.readdirplus_from(ino, offset)?;
    let mut sent = false;
    let mut dir_attr = None; // "." and ".." both carry the directory's attributes
    for (i, e) in l.entries.iter().enumerate().skip(offset as usize) {
        let got = match &dir_attr {
            Some(a) if e.backing.is_empty() => Ok(Some(Attr::clone(a))),
            _ if e.backing.is_empty() => fs.getattr(e.ino).map(Some),
            _ => match &listed {
                Some(d) => fs.listed_attr(&l, d, i),
                None => match fs.listed_dir(&l) {
                    Ok(d) => fs.listed_attr(&l, listed.insert(d), i),
                    Err(crate::Error::NotFound(_)) => break, // the directory is gone, and its entries
                    Err(e) => Err(e),
                },
            },
        };
        let a = match got {
            Ok(Some(a)) => a,
            Ok(None) => continue,
            Err(_) if sent => break,
            Err(err) => return Err(err),
        };
        if add((i + 1) as u64, &e.name, &a) {
            break;
        }
        sent = true;
        if e.backing.is_empty() {
            dir_attr = Some(a);
        } else {
            fs.note_lookup(ino, &e.name, &a);
        }
    }
    Ok(())
}

fn file_type(k: EntryKind) -> FileType {
    match k {
        EntryKind::File => FileType::RegularFile,
        EntryKind::Directory => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::Fifo => FileType::NamedPipe,
        EntryKind::Socket => FileType::Socket,
        EntryKind::CharDevice => FileType::CharDevice,
        EntryKind::BlockDevice => FileType::BlockDevice,
    }
}

fn attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(t) => SetTime::At(as_sent(t)),
        TimeOrNow::Now => SetTime::Now,
    })
}

/// The time the kernel sent, from fuser's reading of it: fuser 0.18 takes a time before the
/// epoch with nanoseconds as that many nanoseconds earlier instead of later (the kernel's
/// -2 s + 500,000,000 ns, 1.5 s before the epoch, comes as 2.5 s before it).
fn as_sent(t: SystemTime) -> SystemTime {
    match SystemTime::UNIX_EPOCH.duration_since(t) {
        Ok(d) if d.subsec_nanos() != 0 => {
            SystemTime::UNIX_EPOCH - Duration::from_secs(d.as_secs()) + Duration::from_nanos(d.subsec_nanos().into())
        }
        _ => t,
    }
}

fn caller(req: &Request) -> Caller {
    Caller { uid: req.uid(), gid: req.gid() }
}

fn entry(reply: ReplyEntry, r: crate::Result<Attr>) {
    match r {
        Ok(a) => reply.entry(&TTL, &attr(&a), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn empty(reply: ReplyEmpty, r: crate::Result<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// getxattr/listxattr: size 0 asks for the length; a too-small buffer is ERANGE.
fn xattr_reply(reply: ReplyXattr, size: u32, r: crate::Result<Vec<u8>>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Holds the volume's request guard (`InodeFs::op`) for the rest of the handler, or replies
/// with its error and returns.
macro_rules! op {
    ($self:ident, $reply:ident) => {
        match $self.fs.op() {
            Ok(guard) => guard,
            Err(e) => {
                $reply.error(errno(&e));
                return;
            }
        }
    };
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        let _ = config.add_capabilities(
            InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO | InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        );
        if let Some(negotiated) = &self.uring {
            let offered = config.capabilities();
            if offered.contains(InitFlags::FUSE_OVER_IO_URING)
                && config.add_capabilities(InitFlags::FUSE_OVER_IO_URING).is_ok()
            {
                let abi = config.kernel_abi();
                let _ = negotiated.set(crate::fuse_uring::Negotiated {
                    major: abi.0,
                    minor: abi.1,
                    flags: (offered | InitFlags::FUSE_INIT_EXT).bits(),
                    max_payload: MAX_IO as usize + (64 << 10),
                });
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if !self.commit_elsewhere.load(std::sync::atomic::Ordering::SeqCst) {
            commit_at_unmount(&self.fs);
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _op = op!(self, reply);
        entry(reply, self.fs.lookup(parent.0, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _op = op!(self, reply);
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _op = op!(self, reply);
        let set = set_attr(req.uid(), mode, uid, gid, size, set_time(atime), set_time(mtime), fh.map(|f| f.0));
        match self.fs.setattr(ino.0, &set) {
            Ok(a) => reply.attr(&TTL, &attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _op = op!(self, reply);
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str())),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let _op = op!(self, reply);
        entry(reply, self.fs.mknod(parent.0, name, mode & !umask, u64::from(rdev), caller(req)));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let _op = op!(self, reply);
        entry(reply, self.fs.mkdir(parent.0, name, mode & !umask, caller(req)));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = op!(self, reply);
        empty(reply, self.fs.unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = op!(self, reply);
        empty(reply, self.fs.rmdir(parent.0, name));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let _op = op!(self, reply);
        entry(reply, self.fs.symlink(parent.0, link_name, target, caller(req)));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _op = op!(self, reply);
        let Some(mode) = rename_mode(flags.bits()) else { return reply.error(Errno::EINVAL) };
        empty(reply, self.fs.rename(parent.0, name, newparent.0, newname, mode));
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _op = op!(self, reply);
        entry(reply, self.fs.link(ino.0, newparent.0, newname));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _op = op!(self, reply);
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        match self.fs.open(ino.0, write) {
            Ok(fh) => reply.opened(FileHandle(fh), open_flags(flags.0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _op = op!(self, reply);
        self.fs.read_with(fh.0, offset, size, |r| match r {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(errno(&e)),
        })
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _op = op!(self, reply);
        // A writer without CAP_FSETID: setuid/setgid go first (FUSE_HANDLE_KILLPRIV_V2).
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let ready = if kill { self.fs.drop_privs(ino.0, Some(fh.0)) } else { Ok(()) };
        match ready.and_then(|()| self.fs.write(fh.0, offset, data)) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let _op = op!(self, reply);
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _op = op!(self, reply);
        empty(reply, self.fs.release(fh.0));
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _op = op!(self, reply);
        empty(reply, self.fs.fsync(fh.0));
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _op = op!(self, reply);
        // "Zero-message opendir": the kernel opens directories itself from now on and sends
        // neither OPENDIR nor RELEASEDIR (listings are kept per directory: fs/listing.rs).
        reply.error(Errno::ENOSYS);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _op = op!(self, reply);
        let listed = readdir(&self.fs, ino.0, offset, |ino, next, kind, name| {
            reply.add(INodeNo(ino), next, file_type(kind), name)
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _op = op!(self, reply);
        const XATTR_CREATE: i32 = 1;
        const XATTR_REPLACE: i32 = 2;
        let mode = match flags {
            0 => XattrMode::Set,
            XATTR_CREATE => XattrMode::Create,
            XATTR_REPLACE => XattrMode::Replace,
            _ => return reply.error(Errno::EINVAL),
        };
        empty(reply, self.fs.set_xattr(ino.0, name, value, mode));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _op = op!(self, reply);
        xattr_reply(reply, size, self.fs.get_xattr(ino.0, name));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _op = op!(self, reply);
        xattr_reply(reply, size, self.fs.list_xattrs(ino.0));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = op!(self, reply);
        empty(reply, self.fs.remove_xattr(ino.0, name));
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _op = op!(self, reply);
        let listed = readdirplus(&self.fs, ino.0, offset, |off, name, a| {
            reply.add(INodeNo(a.ino), off, name, &TTL, &attr(a), Generation(0))
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _op = op!(self, reply);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _op = op!(self, reply);
        match self.fs.statfs() {
            Ok(s) => reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        let _op = op!(self, reply);
        // default_permissions: the kernel checks permissions; we only confirm existence.
        empty(reply, self.fs.getattr(ino.0).map(|_| ()));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _op = op!(self, reply);
        match self.fs.create(parent.0, name, mode & !umask, caller(req)) {
            Ok((a, fh)) => reply.created(&TTL, &attr(&a), Generation(0), FileHandle(fh), open_flags(flags)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _op = op!(self, reply);
        empty(reply, self.fs.fallocate(fh.0, offset, length, mode));
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let _op = op!(self, reply);
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_before_the_epoch_is_read_as_the_kernel_sent_it() {
        let epoch = SystemTime::UNIX_EPOCH;
        // fuser's reading of the kernel's (-2 s, 500,000,000 ns): 1.5 s before the epoch.
        assert_eq!(as_sent(epoch - Duration::new(2, 500_000_000)), epoch - Duration::from_millis(1_500));
        for t in [epoch - Duration::from_secs(3), epoch, epoch + Duration::new(5, 7)] {
            assert_eq!(as_sent(t), t);
        }
    }
}
