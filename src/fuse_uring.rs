//! FUSE over io_uring (`mount --io-uring`; Linux 6.14 and later with the `fuse` module's
//! `enable_uring` parameter set): the transport that answers a request on the CPU that sent it.
//!
//! Why: on /dev/fuse every request wakes a daemon thread on whichever CPU it slept on, and
//! the reply wakes the caller back; on this project's 2-CPU VMs a wake-up across CPUs costs
//! more than the work (docs/BENCHMARKS.md, issue 19: `ls -lR` 1.5 s with the daemon on the
//! other CPU, 0.29 s on the caller's). The kernel queues a request of a ring-enabled mount on
//! the ring of the CPU it was made on, so here every CPU has its own ring, served by threads
//! pinned to that CPU: caller and daemon hand over without crossing CPUs.
//!
//! What this module owns, per CPU `q` (all of it pinned to `q`), for each of the CPU's
//! worker threads (`--threads` spread over the CPUs, at least eight each):
//! - one ring entry (a 288-byte header and a payload buffer), registered with the kernel
//!   (`FUSE_IO_URING_CMD_REGISTER`) through the thread's own io_uring; it completes when the
//!   kernel puts a request into it. A thread busy with a slow request holds up only its own
//!   entry: the kernel gives the CPU's next request to a free one (and queues it while the
//!   CPU has none: it never moves a request to another CPU's ring);
//! - the answer: a request `fuse_native` knows (the metadata and I/O requests of everyday
//!   work) is answered on the thread itself, straight from the entry into the entry; any
//!   other is passed to a fuser session of the thread's own, through a `SOCK_SEQPACKET`
//!   socket pair, in /dev/fuse's byte layout, and its reply comes back the same way (one
//!   protocol decoder, fuser's, and one adapter, `fuse::Adapter`, for everything else);
//! - the reply, committed with `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`, which also waits for
//!   the entry's next request.
//!
//! FORGET, INTERRUPT and notifications still travel over /dev/fuse, served by the mount's
//! main session as before; so does everything until every CPU's ring is registered. When the
//! connection ends the kernel completes the entries with an error, and the threads end.
//!
//! Failures. Once INIT accepted io_uring, the kernel holds every request until every CPU's
//! ring is registered, and once they are it sends everything over the rings and never goes
//! back. So: what can be tried before INIT is ([`preflight`]: a ring, the socket pair, the
//! scheduling switch), and the mount does not ask for io_uring if it fails; a set-up that
//! fails after INIT is abandoned with a registration the kernel refuses ([`turn_off`]), which
//! sends the connection back to /dev/fuse; and any later failure of a ring (an entry the
//! kernel ends with an error while the connection lives, its session gone, a panic) is fatal:
//! `Fatal` commits and ends the daemon, as a crash would, and callers get ENOTCONN. Buffers
//! the kernel was given stay allocated until the process ends (it may write a request into
//! them until the connection is torn down). One hang is left: a reply the fuser session
//! cannot send (a large message refused for want of contiguous kernel memory) is lost, and
//! its caller waits, and so does the worker that passed the request on (one entry of its CPU
//! fewer); only requests passed on take that path, and their replies are small (a READ is
//! passed on only for another user on a mount without `allow_other`; docs/OPERATIONS.md).
//!
//! Unsafe code is allowed here (and only where marked `SAFETY`): the ring's SQEs point the
//! kernel at buffers this module owns, and the FUSE command layout is written byte by byte.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use nix::libc;

use crate::fuse_native::{Answered, Head, Native};

/// How often the watchdog looks at the ring threads at SCHED_IDLE (see `Worker::commit`): one
/// seen there twice in a row is put back, so a busy CPU can make a request wait one to two
/// of these.
const IDLE_BOUND: Duration = Duration::from_millis(2);
/// `FUSE_IO_URING_CMD_REGISTER` / `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` (uapi linux/fuse.h).
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// `struct fuse_uring_req_header`: in/out header (128), op header (128), `fuse_uring_ent_in_out` (32).
const HEADER_LEN: usize = 288;
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 256;
const IN_HEADER_LEN: usize = 40;
const OUT_HEADER_LEN: usize = 16;
/// Socket buffers: a request and its reply of the largest size fit.
const SOCKET_BUF: usize = 4 << 20;

/// What the main session learnt at INIT, for the sessions of each CPU to start from.
#[derive(Debug, Clone, Copy)]
pub struct Negotiated {
    pub major: u32,
    pub minor: u32,
    pub flags: u64,
    /// Largest request payload (`max_write`, or `max_pages` pages if more).
    pub max_payload: usize,
}

/// What ends the daemon when a ring fails while the connection lives (see the module doc);
/// it is given the reason and does not return.
pub type Fatal = Arc<dyn Fn(String) + Send + Sync>;

/// Requests served per ring, for `status`.
#[derive(Debug, Default)]
pub struct Stats {
    requests: Vec<AtomicU64>,
    native: AtomicU64,
}

impl Stats {
    /// Requests answered over each ring so far, by CPU.
    pub fn per_ring(&self) -> Vec<u64> {
        self.requests.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }

    /// Of them, the requests a ring thread answered itself (`fuse_native`), without its
    /// fuser session.
    pub fn answered_in_ring(&self) -> u64 {
        self.native.load(Ordering::Relaxed)
    }
}

/// The rings' threads; [`Rings::join`] waits for them once the connection has ended.
pub struct Rings {
    threads: Vec<JoinHandle<()>>,
    stats: Arc<Stats>,
    idle: Arc<Idle>,
    watchdog: Option<JoinHandle<()>>,
}

impl Rings {
    /// Registers a ring per possible CPU on `dev` (a descriptor of the mount's /dev/fuse
    /// connection, after its INIT): `workers` threads for each online CPU (one for another),
    /// each with an entry, answering with `native` what it knows and passing the rest to a
    /// session that `session` starts on the socket it is given (and whose returned closure
    /// waits for it). `Ok` once every CPU's ring has an entry registered; an error if one CPU
    /// has none, and the kernel then keeps to /dev/fuse (the threads that did start end with
    /// the connection).
    pub fn start<S>(
        dev: OwnedFd,
        neg: Negotiated,
        workers: usize,
        session: S,
        native: Option<Arc<Native>>,
        fatal: Fatal,
    ) -> (Rings, io::Result<()>)
    where
        S: Fn(OwnedFd) -> io::Result<Box<dyn FnOnce() + Send>> + Send + Sync + 'static,
    {
        // Threads inherit their creator's pin: what a pinned handler would start first (the
        // rayon pool the data path seals with) starts here, free to use every CPU.
        crate::sys::remember_cpus();
        rayon::broadcast(|_| ());
        let idle = Arc::new(Idle::default());
        let mut rings = Rings { threads: Vec::new(), stats: Default::default(), idle: idle.clone(), watchdog: None };
        // For the tests: a set-up that fails after INIT, as a thread that cannot start would.
        if std::env::var_os("ENVELOPEFS_TEST_BREAK_IO_URING").is_some() {
            return (rings, Err(io::Error::other("broken on purpose (ENVELOPEFS_TEST_BREAK_IO_URING)")));
        }
        let (cpus, online) = match (cpu_list("possible"), cpu_list("online")) {
            (Ok(p), Ok(o)) => (p, o),
            (Err(e), _) | (_, Err(e)) => return (rings, Err(e)),
        };
        let stats =
            Arc::new(Stats { requests: cpus.iter().map(|_| AtomicU64::new(0)).collect(), native: AtomicU64::new(0) });
        rings.stats = stats.clone();
        let (dev, session) = (Arc::new(dev), Arc::new(session));
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, &q) in cpus.iter().enumerate() {
            let threads = if online.contains(&q) { workers.max(1) } else { 1 };
            for _ in 0..threads {
                let (dev, session, tx, stats, fatal, idle, native) = (
                    dev.clone(),
                    session.clone(),
                    tx.clone(),
                    stats.clone(),
                    fatal.clone(),
                    idle.clone(),
                    native.clone(),
                );
                let spawned = std::thread::Builder::new().name(format!("uring-{q}")).spawn(move || {
                    let mut worker = match Worker::new(q, &dev, neg, &*session, native, idle) {
                        Ok(worker) => {
                            let _ = tx.send((i, Ok(())));
                            drop(tx);
                            worker
                        }
                        Err(e) => {
                            let _ = tx.send((i, Err(io::Error::new(e.kind(), format!("the ring of CPU {q}: {e}")))));
                            return;
                        }
                    };
                    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.serve(&stats, i)));
                    match served {
                        Ok(Ok(())) => worker.finish(),
                        Ok(Err(e)) => fatal(format!("the io_uring ring of CPU {q} failed: {e}")),
                        Err(_) => fatal(format!("the io_uring ring of CPU {q} panicked")),
                    }
                });
                match spawned {
                    Ok(t) => rings.threads.push(t),
                    Err(e) => return (rings, Err(e)),
                }
            }
        }
        drop(tx);
        // Once every CPU has an entry the kernel serves the mount over the rings for good:
        // a worker that failed after that is one entry fewer (logged), not a failure.
        let mut registered = vec![0usize; cpus.len()];
        let mut failed = None;
        for _ in 0..rings.threads.len() {
            match rx.recv() {
                Ok((i, Ok(()))) => registered[i] += 1,
                Ok((_, Err(e))) => failed = Some(e),
                Err(_) => failed = Some(io::Error::other("an io_uring thread ended early")),
            }
        }
        let result = match (registered.iter().all(|&n| n > 0), failed) {
            (true, Some(e)) => {
                tracing::warn!("io_uring: a worker did not start ({e}); its CPU's others serve");
                Ok(())
            }
            (true, None) => Ok(()),
            (false, e) => Err(e.unwrap_or_else(|| io::Error::other("a CPU's ring has no entry"))),
        };
        if result.is_ok() {
            let watching = idle.clone();
            // Without the watchdog the SCHED_IDLE commit is not bounded: not used.
            if let Ok(t) = std::thread::Builder::new().name("uring-idle".into()).spawn(move || watching.watch()) {
                rings.watchdog = Some(t);
                idle.enabled.store(!idle.foreign.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        (rings, result)
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Waits for every CPU's thread (they end when the connection does).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
        self.idle.stop.store(true, Ordering::Relaxed);
        {
            let _guard = self.idle.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.idle.wake.notify_all();
        }
        if let Some(t) = self.watchdog {
            let _ = t.join();
        }
    }
}

/// What a ring needs, tried before INIT asks the kernel for io_uring (after it, a failure
/// would hold every request of the mount): the CPU lists, a ring of 128-byte SQEs (io_uring
/// may be disabled, or refused by a seccomp policy), the sized socket pair (CAP_NET_ADMIN),
/// and leaving SCHED_IDLE again (CAP_SYS_NICE), tried on a thread of its own.
pub fn preflight() -> io::Result<()> {
    cpu_list("possible")?;
    cpu_list("online")?;
    IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(4).map_err(|e| {
        io::Error::new(e.kind(), format!("no io_uring here ({e}; see sysctl kernel.io_uring_disabled)"))
    })?;
    socket_pair().map_err(|e| io::Error::new(e.kind(), format!("cannot size its sockets ({e})")))?;
    let back = std::thread::spawn(|| set_policy(0, libc::SCHED_IDLE) && set_policy(0, libc::SCHED_OTHER)).join();
    if back.unwrap_or(false) {
        Ok(())
    } else {
        Err(io::Error::other("cannot leave SCHED_IDLE once in it (no CAP_SYS_NICE)"))
    }
}

/// Sends the connection of `dev` (after an INIT that accepted io_uring) back to /dev/fuse:
/// a registration the kernel refuses (a queue that does not exist) turns io_uring off for
/// it and releases the requests it held.
pub fn turn_off(dev: &OwnedFd) -> io::Result<()> {
    let mut ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(2)?;
    let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2];
    let sqe = command(dev.as_raw_fd(), CMD_REGISTER, 0, usize::from(u16::MAX), Some(iov.as_mut_ptr() as u64));
    // SAFETY: the iovecs (empty) outlive the submission, which completes within
    // `submit_and_wait` (a refused registration is answered at once).
    unsafe { ring.submission().push(&sqe) }.map_err(|_| io::Error::other("the ring is full"))?;
    ring.submit_and_wait(1)?;
    let res = ring.completion().next().map(|c| c.result());
    match res {
        Some(res) if res < 0 => Ok(()),
        other => Err(io::Error::other(format!("the kernel did not refuse it ({other:?})"))),
    }
}

/// The CPUs in `/sys/devices/system/cpu/{which}` (`possible`: the kernel keeps a queue for
/// each, and every one must be registered before it sends anything over the rings).
pub fn cpu_list(which: &str) -> io::Result<Vec<usize>> {
    let s = std::fs::read_to_string(format!("/sys/devices/system/cpu/{which}"))?;
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let bad = || io::Error::other(format!("cannot read the {which} CPUs ({s:?})"));
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<usize>().map_err(|_| bad())?..=b.parse().map_err(|_| bad())?),
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(out)
}

/// The SCHED_IDLE commit (`Worker::commit`) and its watchdog: a ring thread still at
/// SCHED_IDLE for the same commit at two of the watchdog's looks, [`IDLE_BOUND`] apart (its
/// CPU busy with other work), is put back to normal, so a busy CPU delays its requests by
/// one to two of them at most.
#[derive(Default)]
struct Idle {
    /// On once the watchdog runs; off if the policy cannot be put back (no CAP_SYS_NICE).
    enabled: AtomicBool,
    /// The daemon runs under another policy than SCHED_OTHER: the trick is not used.
    foreign: AtomicBool,
    /// Per ring thread: its tid, and the commit it is at SCHED_IDLE for (0: not).
    slots: Mutex<Vec<(i32, Arc<AtomicU64>)>>,
    commits: AtomicU64,
    parked: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Idle {
    /// A slot for the calling ring thread.
    fn slot(&self) -> Arc<AtomicU64> {
        let slot = Arc::new(AtomicU64::new(0));
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).push((nix::unistd::gettid().as_raw(), slot.clone()));
        // SAFETY: no arguments but the calling thread (0).
        if unsafe { libc::sched_getscheduler(0) } != libc::SCHED_OTHER {
            // Started under another policy (`chrt`): the trick would end it at SCHED_OTHER.
            self.foreign.store(true, Ordering::Relaxed);
        }
        slot
    }

    /// Every [`IDLE_BOUND`] while commits come (parked after a second without one): any ring
    /// thread at SCHED_IDLE for the same commit as last time goes back to normal.
    fn watch(&self) {
        let mut seen: HashMap<i32, u64> = HashMap::new();
        let (mut last, mut quiet) = (0, 0u32);
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(IDLE_BOUND);
            for (tid, slot) in self.slots.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let at = slot.load(Ordering::Relaxed);
                if at != 0 && seen.get(tid) == Some(&at) {
                    set_policy(*tid, libc::SCHED_OTHER);
                }
                seen.insert(*tid, at);
            }
            let now = self.commits.load(Ordering::Relaxed);
            quiet = if now == last { quiet + 1 } else { 0 };
            last = now;
            if quiet > 500 {
                let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
                self.parked.store(true, Ordering::SeqCst);
                // A commit that came after the count above (and so found `parked` still
                // false) ends the wait too.
                let _ = self.wake.wait_timeout_while(guard, Duration::from_secs(5), |_| {
                    self.parked.load(Ordering::SeqCst)
                        && !self.stop.load(Ordering::Relaxed)
                        && self.commits.load(Ordering::SeqCst) == last
                });
                self.parked.store(false, Ordering::SeqCst);
                quiet = 0;
            }
        }
    }

    /// A commit starts: the watchdog, if parked, watches again.
    fn commit_starts(&self, slot: &AtomicU64) {
        let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        slot.store(n, Ordering::Relaxed);
        if self.parked.swap(false, Ordering::SeqCst) {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.wake.notify_all();
        }
    }
}

/// One ring entry: the buffers the kernel writes a request into and reads the reply from.
/// Leaked once registered: the kernel holds their addresses until the connection ends.
struct Entry {
    header: [u8; HEADER_LEN],
    payload: Vec<u8>,
    iov: [libc::iovec; 2],
}

/// One thread of a CPU's ring: an entry of its own, registered through an io_uring of its
/// own, and the socket to its own fuser session. A request the kernel puts in the entry is
/// answered on this thread (by `native`, or by the session while this thread waits), so a
/// slow request holds up only its own entry: the kernel hands the next request of the CPU to
/// another thread's entry.
struct Worker {
    q: usize,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    dev: RawFd,
    entry: &'static mut Entry,
    socket: OwnedFd,
    /// Where the header of the session's reply is peeked at.
    reply: [u8; OUT_HEADER_LEN],
    session: Option<Box<dyn FnOnce() + Send>>,
    native: Option<Arc<Native>>,
    /// The registration's completion if it came with the submission (a request waiting).
    early: Option<i32>,
    idle: Arc<Idle>,
    idle_slot: Arc<AtomicU64>,
    _dev_keep: Arc<OwnedFd>,
}

impl Worker {
    fn new<S>(
        q: usize,
        dev: &Arc<OwnedFd>,
        neg: Negotiated,
        session: &S,
        native: Option<Arc<Native>>,
        idle: Arc<Idle>,
    ) -> io::Result<Worker>
    where
        S: Fn(OwnedFd) -> io::Result<Box<dyn FnOnce() + Send>> + ?Sized,
    {
        // Pinned, with the session's thread (it inherits it); a CPU that is not online
        // cannot be pinned to, and its ring is served from anywhere.
        let mut cpu = nix::sched::CpuSet::new();
        if cpu.set(q).and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu)).is_err() {
            tracing::debug!("io_uring: CPU {q} cannot be pinned to (offline?); its ring is served unpinned");
        }
        let (ours, theirs) = socket_pair()?;
        // The session's handshake: an INIT as the kernel sent it, its reply dropped.
        send_all(ours.as_raw_fd(), &[&init_message(neg)])?;
        let run = session(theirs)?; // its thread inherits this thread's CPU
        recv(ours.as_raw_fd(), &mut vec![0u8; 4096], 0)?;
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(4)?;
        let idle_slot = idle.slot();
        let e = Box::leak(Box::new(Entry {
            header: [0u8; HEADER_LEN],
            payload: vec![0u8; neg.max_payload],
            iov: [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2],
        }));
        e.iov[0] = libc::iovec { iov_base: e.header.as_mut_ptr().cast(), iov_len: HEADER_LEN };
        e.iov[1] = libc::iovec { iov_base: e.payload.as_mut_ptr().cast(), iov_len: e.payload.len() };
        let addr = e.iov.as_ptr() as u64;
        let mut worker = Worker {
            q,
            ring,
            dev: dev.as_raw_fd(),
            entry: e,
            socket: ours,
            reply: [0u8; OUT_HEADER_LEN],
            session: Some(run),
            native,
            early: None,
            idle,
            idle_slot,
            _dev_keep: dev.clone(),
        };
        worker.push(command(worker.dev, CMD_REGISTER, 0, q, Some(addr)))?;
        // A registration the kernel refuses (no io_uring on this connection, a buffer too
        // small) completes within the submit, with its error; one that succeeded completes
        // when a request arrives (kept for `serve`: the last thread to register opens them all).
        worker.ring.submit()?;
        let first = worker.ring.completion().next().map(|c| c.result());
        match first {
            // A refused registration turns io_uring off for the connection: /dev/fuse serves.
            Some(res) if res < 0 => {
                let e = io::Error::from_raw_os_error(-res);
                Err(io::Error::new(e.kind(), format!("the kernel refused its entry ({e})")))
            }
            early => {
                worker.early = early;
                Ok(worker)
            }
        }
    }

    fn push(&mut self, sqe: squeue::Entry128) -> io::Result<()> {
        // SAFETY: every buffer an SQE points to (the entry's header, payload and their
        // iovecs) is leaked: it outlives whatever the kernel does with it.
        let pushed = unsafe { self.ring.submission().push(&sqe) };
        pushed.map_err(|_| io::Error::other("its submission queue is full"))
    }

    /// The result of the next completion: the entry's next request (or the error that ends it).
    fn next(&mut self) -> io::Result<i32> {
        loop {
            if let Some(c) = self.ring.completion().next() {
                return Ok(c.result());
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Serves until the kernel ends the connection; an error is fatal (see the module doc).
    fn serve(&mut self, stats: &Stats, i: usize) -> io::Result<()> {
        let mut res = match self.early.take() {
            Some(res) => res,
            None => self.next()?,
        };
        loop {
            if res < 0 {
                // The connection ended: the kernel ends every entry so.
                if [libc::ENOTCONN, libc::ECANCELED, libc::ENODEV].contains(&-res) {
                    return Ok(());
                }
                let e = io::Error::from_raw_os_error(-res);
                return Err(io::Error::other(format!("the kernel ended its entry with: {e}")));
            }
            let head = Head::parse(&self.entry.header[..IN_HEADER_LEN]);
            let native = self.answer(&head)?;
            if native {
                stats.native.fetch_add(1, Ordering::Relaxed);
            }
            stats.requests[i].fetch_add(1, Ordering::Relaxed);
            self.commit(!native, !crate::fuse_native::in_background(head.opcode))?;
            res = self.next()?;
        }
    }

    /// Puts the reply to the entry's request (whose in-header is `head`) into it: from
    /// `native` if it answers the request (then `true`), else from the session. A request
    /// that does not fit the entry's layout is answered EIO.
    fn answer(&mut self, head: &Head) -> io::Result<bool> {
        let Entry { header, payload, .. } = &mut *self.entry;
        let len = u32::from_ne_bytes(header[0..4].try_into().unwrap()) as usize;
        let carried = u32::from_ne_bytes(header[ENT_IN_OUT + 16..ENT_IN_OUT + 20].try_into().unwrap()) as usize;
        let room = payload.len();
        let Some(op) = len.checked_sub(IN_HEADER_LEN + carried).filter(|&n| n <= OP_IN && carried <= room) else {
            tracing::error!("io_uring ring of CPU {}: a request of {len} bytes with {carried} of payload: EIO", self.q);
            put_reply(header, head.unique, Err(libc::EIO));
            return Ok(false);
        };
        if let Some(native) = &self.native {
            if let Some(answered) = native.answer(head, &header[OP_IN..OP_IN + op], payload, carried) {
                put_reply(header, head.unique, answered);
                return Ok(true);
            }
        }
        self.forward(head.unique, op, carried)?;
        Ok(false)
    }

    /// Passes the entry's request to the session, laid out as /dev/fuse has it (the
    /// in-header, the op header, the payload: `len` in the in-header counts all three), and
    /// reads its reply into the entry.
    fn forward(&mut self, unique: u64, op: usize, carried: usize) -> io::Result<()> {
        let fd = self.socket.as_raw_fd();
        let e = &mut *self.entry;
        let h = &e.header;
        send_all(fd, &[&h[..IN_HEADER_LEN], &h[OP_IN..OP_IN + op], &e.payload[..carried]])?;
        loop {
            // The reply's header, peeked at, says whose it is, and (MSG_TRUNC) its length.
            let n = recv(fd, &mut self.reply, libc::MSG_PEEK | libc::MSG_TRUNC)?;
            if n == 0 {
                return Err(io::Error::other("its session's socket ended (it closed)"));
            }
            let answers = n >= OUT_HEADER_LEN && u64::from_ne_bytes(self.reply[8..16].try_into().unwrap()) == unique;
            if !answers {
                tracing::warn!("io_uring ring of CPU {}: a reply to no request waiting: dropped", self.q);
                recv_into(fd, &mut [&mut self.reply[..]])?;
                continue;
            }
            let body = n - OUT_HEADER_LEN;
            if body > e.payload.len() {
                tracing::error!("io_uring ring of CPU {}: a reply of {n} bytes, more than an entry holds: EIO", self.q);
                recv_into(fd, &mut [&mut self.reply[..]])?;
                put_reply(&mut e.header, unique, Err(libc::EIO));
                return Ok(());
            }
            let (out, rest) = e.header.split_at_mut(OUT_HEADER_LEN);
            recv_into(fd, &mut [out, &mut e.payload[..body]])?;
            rest[ENT_IN_OUT - OUT_HEADER_LEN + 16..ENT_IN_OUT - OUT_HEADER_LEN + 20]
                .copy_from_slice(&(body as u32).to_ne_bytes());
            return Ok(());
        }
    }

    /// Commits the reply in the entry, which then waits for its next request; `passed_on`:
    /// the reply came from the session (whose thread may still be on its way to sleep);
    /// `waited_on`: a caller sleeps on it (not a request of the background, a RELEASE).
    fn commit(&mut self, passed_on: bool, waited_on: bool) -> io::Result<()> {
        let h = &self.entry.header;
        let commit_id = u64::from_ne_bytes(h[ENT_IN_OUT + 8..ENT_IN_OUT + 16].try_into().unwrap());
        self.push(command(self.dev, CMD_COMMIT_AND_FETCH, commit_id, self.q, None))?;
        // Nobody to hand the CPU to: the SCHED_IDLE dance below would only cost two switches.
        if !waited_on || !self.idle.enabled.load(Ordering::Relaxed) {
            return self.ring.submit().map(|_| ());
        }
        // The commit wakes the caller, which slept on this CPU. Were this thread an ordinary
        // one, the scheduler would see the CPU busy and move the caller to an idle CPU (a
        // migration and a cross-CPU wake-up per request: round trips 2.5x slower here); a
        // CPU running only SCHED_IDLE threads counts as idle, so the caller stays and
        // preempts this thread at once. For a reply of the session, the yield first lets its
        // thread reach its next read (asleep, it no longer keeps the CPU busy).
        // Back to normal right after; if other work keeps the CPU, the watchdog puts this
        // thread back within two IDLE_BOUNDs (serving at SCHED_IDLE would starve behind it).
        self.idle.commit_starts(&self.idle_slot);
        set_policy(0, libc::SCHED_IDLE);
        if passed_on {
            // SAFETY: sched_yield takes no arguments.
            unsafe { libc::sched_yield() };
        }
        let submitted = self.ring.submit();
        if !set_policy(0, libc::SCHED_OTHER) {
            self.idle.enabled.store(false, Ordering::Relaxed);
            tracing::warn!("io_uring: cannot leave SCHED_IDLE ({}); committing without it", io::Error::last_os_error());
        }
        self.idle_slot.store(0, Ordering::Relaxed);
        submitted.map(|_| ())
    }

    /// Ends the session of this thread (its socket closes) and waits for it.
    fn finish(&mut self) {
        let _ = nix::sys::socket::shutdown(self.socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(run) = self.session.take() {
            run();
        }
    }
}

/// A reply into entry header `h`: the `fuse_out_header` answering `unique` and the length of
/// the body already in the payload, or an errno and no body.
fn put_reply(h: &mut [u8], unique: u64, answered: Answered) {
    let (error, body) = match answered {
        Ok(n) => (0, n),
        Err(errno) => (-errno, 0),
    };
    h[0..4].copy_from_slice(&((OUT_HEADER_LEN + body) as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h[ENT_IN_OUT + 16..ENT_IN_OUT + 20].copy_from_slice(&(body as u32).to_ne_bytes());
}

/// Sets the scheduling policy of thread `tid` (0: the calling one); whether it took.
fn set_policy(tid: i32, policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration.
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

/// A FUSE ring command SQE: `cmd_op` with `struct fuse_uring_cmd_req` in the command area;
/// `iov` (a REGISTER's two iovecs) in `addr`, with `len` 2.
fn command(dev: RawFd, cmd_op: u32, commit_id: u64, qid: usize, iov: Option<u64>) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&(qid as u16).to_ne_bytes());
    let sqe = opcode::UringCmd80::new(types::Fd(dev), cmd_op).cmd(cmd).addr(iov).build();
    match iov {
        Some(_) => with_len(sqe, 2),
        None => sqe,
    }
}

/// `sqe` with its `len` field (bytes 24..28 of `struct io_uring_sqe`) set: the crate's
/// `UringCmd80` has no setter for it, and a REGISTER passes its iovec count there.
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: `Entry128` is `#[repr(C)]` around a 64-byte `io_uring_sqe` and 64 bytes of
    // command area (128 bytes, no padding, every bit pattern valid for both types).
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above, the same bytes back.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// An INIT request as /dev/fuse carries it, with what the kernel offered the main session.
fn init_message(neg: Negotiated) -> Vec<u8> {
    let mut m = Vec::with_capacity(IN_HEADER_LEN + 64);
    m.extend_from_slice(&((IN_HEADER_LEN + 64) as u32).to_ne_bytes()); // len
    m.extend_from_slice(&26u32.to_ne_bytes()); // FUSE_INIT
    m.extend_from_slice(&1u64.to_ne_bytes()); // unique
    m.extend_from_slice(&0u64.to_ne_bytes()); // nodeid
    m.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen, padding
    m.extend_from_slice(&neg.major.to_ne_bytes());
    m.extend_from_slice(&neg.minor.to_ne_bytes());
    m.extend_from_slice(&(1u32 << 20).to_ne_bytes()); // max_readahead
    m.extend_from_slice(&(neg.flags as u32).to_ne_bytes());
    m.extend_from_slice(&((neg.flags >> 32) as u32).to_ne_bytes());
    m.extend_from_slice(&[0u8; 44]);
    m
}

fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded: both descriptors are new and ours alone.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for fd in [&a, &b] {
        for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
            let size = SOCKET_BUF as libc::c_int;
            // SAFETY: a valid socket and a c_int option value of the stated size.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok((a, b))
}

/// Sends `parts` as one message (gathered by the kernel: no copy here first).
fn send_all<const N: usize>(fd: RawFd, parts: &[&[u8]; N]) -> io::Result<()> {
    let mut iov = parts.map(|p| libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() });
    let mut tries = 0;
    loop {
        // SAFETY: every iovec points into a slice of `parts`, alive and unchanged for the
        // call (the kernel only reads them); a zeroed msghdr is a valid empty one before its
        // iovec fields are set. SOCK_SEQPACKET: the message goes whole or not at all.
        let r = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = iov.len() as _;
            libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL)
        };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            // A large message needs a large contiguous allocation in the kernel: wait for
            // memory a while before giving up.
            Some(libc::ENOBUFS | libc::ENOMEM) if tries < 1000 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            _ => return Err(e),
        }
    }
}

/// Reads one message (already queued) into `parts`, in order; the rest of a longer one is
/// dropped.
fn recv_into<const N: usize>(fd: RawFd, parts: &mut [&mut [u8]; N]) -> io::Result<usize> {
    let mut iov = parts.each_mut().map(|p| libc::iovec { iov_base: p.as_mut_ptr().cast(), iov_len: p.len() });
    loop {
        // SAFETY: every iovec points into a slice of `parts`, borrowed mutably for the call;
        // a zeroed msghdr is a valid empty one before its iovec fields are set.
        let r = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = iov.len() as _;
            libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT)
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Waits for a message and reads it into `buf` (with `MSG_PEEK | MSG_TRUNC`: copies its start,
/// leaves it queued and returns its whole length).
fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid and writable for its length.
        let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_register_command_carries_its_queue_and_iovec_count() {
        let sqe = command(7, CMD_REGISTER, 0, 1, Some(0x1000));
        // SAFETY: as in `with_len`.
        let raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        assert_eq!(raw[0], io_uring::opcode::UringCmd80::CODE);
        assert_eq!(i32::from_ne_bytes(raw[4..8].try_into().unwrap()), 7, "fd");
        assert_eq!(u32::from_ne_bytes(raw[8..12].try_into().unwrap()), CMD_REGISTER, "cmd_op");
        assert_eq!(u64::from_ne_bytes(raw[16..24].try_into().unwrap()), 0x1000, "addr");
        assert_eq!(u32::from_ne_bytes(raw[24..28].try_into().unwrap()), 2, "len");
        assert_eq!(u16::from_ne_bytes(raw[48 + 16..48 + 18].try_into().unwrap()), 1, "qid");
        let c = command(7, CMD_COMMIT_AND_FETCH, 42, 0, None);
        // SAFETY: as above.
        let raw: [u8; 128] = unsafe { std::mem::transmute(c) };
        assert_eq!(u64::from_ne_bytes(raw[48 + 8..48 + 16].try_into().unwrap()), 42, "commit_id");
        assert_eq!(u32::from_ne_bytes(raw[24..28].try_into().unwrap()), 0, "len");
    }

    #[test]
    fn cpu_lists_are_read() {
        let (possible, online) = (cpu_list("possible").unwrap(), cpu_list("online").unwrap());
        assert!(!online.is_empty() && online.iter().all(|c| possible.contains(c)), "{possible:?} {online:?}");
    }
}
