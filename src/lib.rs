//! envelopefs: an encrypted file system built on envelope encryption.
//!
//! Module map (see `docs/ARCHITECTURE.md` for the dependency rule):
//! - [`crypto`], [`format`]: leaves — primitives and on-disk bytes.
//! - [`kms`]: root keys (the `Kms` trait and its backends).
//! - [`keys`]: the key hierarchy; the only holder of unwrapped KEKs, DEKs and the name key.
//! - [`store`]: the sidecar metadata store; sees wrapped keys only.
//! - [`fs`]: filesystem semantics on top of keys, format and storage; no FUSE.
//! - [`secret`]: where passphrases come from (file, command, terminal).
//! - [`fuse`], [`fuse_uring`], [`fuse_native`]: the FUSE transports (/dev/fuse through fuser;
//!   io_uring rings per CPU, whose threads answer everyday requests themselves).
//! - [`revocation`]: when a mount whose root is revoked (or unreachable too long) goes dark.
#![deny(unsafe_code)]

pub mod anchor;
pub mod confine;
pub mod control;
pub mod crypto;
pub mod daemon;
mod durable;
pub mod error;
pub mod format;
pub mod fs;
pub mod fuse;
pub mod fuse_native;
pub mod fuse_uring;
pub mod keys;
pub mod kms;
pub mod logging;
pub mod mount_sys;
pub mod mountinfo;
pub mod packaging;
pub mod progress;
pub mod revocation;
pub mod secret;
pub mod status_view;
pub mod store;
pub mod sys;
pub mod tenant;

pub use error::{Error, Result};
