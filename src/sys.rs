//! Process hardening for the daemon: no core dumps and not dumpable, so key material in
//! memory cannot be read through a core file or by a same-user ptrace attach.
//!
//! Everything here goes through nix's safe wrappers; the crate keeps `#![deny(unsafe_code)]`.

use nix::sys::resource::{setrlimit, Resource};

/// Sets `RLIMIT_CORE` to 0 and `PR_SET_DUMPABLE` to 0. Failing is an error: a daemon
/// holding keys must not run dumpable.
pub fn harden_process() -> std::io::Result<()> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(std::io::Error::from)?;
    nix::sys::prctl::set_dumpable(false).map_err(std::io::Error::from)?;
    Ok(())
}
