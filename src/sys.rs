//! Process hardening: no core dumps, not dumpable, and memory that holds keys locked out of
//! swap, so key material cannot leave the process through a core file, a same-user ptrace
//! attach or the swap device. Also the process's CPUs, for threads started by a thread
//! pinned to one CPU (`fuse_uring`) to get them all back.
//!
//! Everything here goes through nix's safe wrappers; the crate keeps `#![deny(unsafe_code)]`
//! (its exceptions, each with a `SAFETY:` comment, are `sync_file_range`, `preadv2` and a
//! mapping for a readahead hint in `fs/backend.rs`, the rings of `fuse_uring.rs`
//! and a signal reset in `progress.rs`).

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::mman::{mlockall, MlockAllFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// `MCL_ONFAULT` (Linux 4.4+): lock pages as they are touched, instead of populating every
/// mapping (thread stacks, allocator arenas) up front. nix does not name it.
const MCL_ONFAULT: i32 = 4;

static LOCKED: AtomicBool = AtomicBool::new(false);

/// Sets `RLIMIT_CORE` to 0 and `PR_SET_DUMPABLE` to 0. Failing is an error: a daemon
/// holding keys must not run dumpable.
pub fn harden_process() -> std::io::Result<()> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(std::io::Error::from)?;
    nix::sys::prctl::set_dumpable(false).map_err(std::io::Error::from)?;
    Ok(())
}

/// Locks this process's memory, present and future, into RAM (`mlockall`), so no page that
/// holds a key (the KEK, cached DEK schedules, the name key) is ever written to swap, and
/// excludes every mapping from core dumps (`/proc/self/coredump_filter` = 0; dumps are
/// already off, this covers a later `gcore`). Locking needs `CAP_IPC_LOCK` (root) or an
/// unlimited `RLIMIT_MEMLOCK`; without them it is skipped with a warning (a limited lock
/// would make allocations fail once the limit is reached; `warn` says so on stderr).
/// Returns whether memory is locked.
pub fn lock_memory(warn: bool) -> bool {
    if let Err(e) = std::fs::write("/proc/self/coredump_filter", "0") {
        tracing::warn!("cannot clear coredump_filter: {e}");
    }
    let unlimited = matches!(getrlimit(Resource::RLIMIT_MEMLOCK), Ok((soft, _)) if soft == RLIM_INFINITY);
    if !(has_ipc_lock() || unlimited) {
        if !warn {
            return false;
        }
        tracing::warn!(
            "memory not locked (needs root or an unlimited RLIMIT_MEMLOCK): key pages could reach swap; \
             use encrypted swap or none"
        );
        return false;
    }
    let flags = MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE;
    let locked = mlockall(flags | MlockAllFlags::from_bits_retain(MCL_ONFAULT)).or_else(|_| mlockall(flags));
    match locked {
        Ok(()) => LOCKED.store(true, Ordering::SeqCst),
        Err(e) => tracing::warn!("mlockall failed ({e}): key pages could reach swap"),
    }
    LOCKED.load(Ordering::SeqCst)
}

/// Whether this process holds `CAP_IPC_LOCK` (root usually does; root in a container may
/// not), read from `/proc/self/status`.
pub fn has_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_string())))
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Whether [`lock_memory`] locked this process's memory.
pub fn memory_locked() -> bool {
    LOCKED.load(Ordering::SeqCst)
}

/// Tells a service manager that started this process (`Type=notify`: `$NOTIFY_SOCKET`) that
/// it is ready, the way sd_notify(3) does: a datagram `READY=1`. Nothing without one.
pub fn notify_ready() {
    let Some(to) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|sock| {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(to.as_os_str());
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(b"READY=1", &addr)
            }
            None => sock.send_to(b"READY=1", &to),
        }
    });
    if let Err(e) = sent {
        tracing::warn!("could not tell the service manager the mount is ready: {e}");
    }
}

static PROCESS_CPUS: std::sync::OnceLock<nix::sched::CpuSet> = std::sync::OnceLock::new();

/// Remembers the CPUs this process may run on, before any of its threads pins itself.
pub fn remember_cpus() {
    let _ = PROCESS_CPUS.get_or_init(|| {
        nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap_or_else(|_| nix::sched::CpuSet::new())
    });
}

/// Gives the calling thread all of the process's CPUs back: a thread started from a pinned
/// one (a request handler on an io_uring ring) inherits the pin otherwise.
pub fn unpin_thread() {
    if let Some(set) = PROCESS_CPUS.get() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), set);
    }
}
