//! The control socket of a mounted volume and the `status` report.
//!
//! A mount daemon listens on `RUNTIME/<volume id>.sock` (mode 0600 in a 0700 directory,
//! so only the mounting user can talk to it); `RUNTIME` is [`runtime_dir`]. One request per connection: a line of JSON (`{"op":"status"}`, with
//! arguments as further fields), one line of JSON back (`{"error": ..., "exit_code": ...}`
//! on failure). The socket carries no key material.
//!
//! The runtime directory also holds each volume's wrapped per-boot scratch key
//! (`<volume id>.scratch`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::format::{hex, VolumeHeader};
use crate::fs::Volume;
use crate::{Error, Result};

/// `ENVELOPEFS_RUNTIME_DIR`; else, for root, `/run/envelopefs` where `/run` is a tmpfs (as
/// systemd makes it), for other users `$XDG_RUNTIME_DIR/envelopefs` where that is in memory;
/// else `/dev/shm/envelopefs-UID`. The wrapped scratch key kept here must never reach a disk.
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ENVELOPEFS_RUNTIME_DIR") {
        return PathBuf::from(d);
    }
    let uid = nix::unistd::geteuid();
    let base = match uid.is_root() {
        true => Some(PathBuf::from("/run")),
        false => std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
    };
    match base {
        Some(b) if crate::confine::in_memory(&b) => b.join("envelopefs"),
        _ => PathBuf::from(format!("/dev/shm/envelopefs-{}", uid.as_raw())),
    }
}

pub fn socket_path(volume_id: &[u8; 16]) -> PathBuf {
    runtime_dir().join(format!("{}.sock", hex(volume_id)))
}

/// The log of a volume's detached mount daemon (warnings and errors, such as integrity
/// errors with the file and cause; more with `RUST_LOG`).
pub fn log_path(volume_id: &[u8; 16]) -> PathBuf {
    runtime_dir().join(format!("{}.log", hex(volume_id)))
}

/// Where the wrapped per-boot scratch key of a volume lives.
pub fn scratch_path(volume_id: &[u8; 16]) -> PathBuf {
    runtime_dir().join(format!("{}.scratch", hex(volume_id)))
}

/// Creates the runtime directory (mode 0700) if it is missing, and checks it: a real
/// directory (not a symlink), owned by this user, open to nobody else. The control socket,
/// the daemon log and the wrapped scratch key live there.
pub fn ensure_runtime_dir() -> Result<PathBuf> {
    let dir = runtime_dir();
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| Error::io(&dir, "create", e))?;
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| Error::io(&dir, "stat", e))?;
    crate::confine::check_kind(&meta, crate::confine::Expect::Dir, &dir)?;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid || meta.mode() & 0o077 != 0 {
        return Err(Error::InvalidArgument(format!(
            "runtime directory {}: must be owned by uid {euid} with mode 0700 (it is uid {}, mode {:o}): \
             fix it, or set ENVELOPEFS_RUNTIME_DIR to such a directory",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(dir)
}

/// The listening socket. Dropping it (at unmount) stops its thread — and so drops the
/// handler and everything it holds, such as the volume and its keys — and removes the socket.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.path); // wake the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts answering requests on `path`: `handle(op, request)` returns the reply
/// (`{"error": ...}` for operations it does not know).
pub fn serve(
    path: &Path,
    handle: impl Fn(&str, &Value, &mut dyn FnMut(Value)) -> Value + Send + 'static,
) -> Result<ControlServer> {
    ensure_runtime_dir()?;
    if UnixStream::connect(path).is_ok() {
        // A live daemon answers there: another volume with the same id (a copied header).
        return Err(Error::Busy {
            path: path.to_path_buf(),
            reason: "another mounted volume answers on this control socket (same volume id)".into(),
        });
    }
    let _ = std::fs::remove_file(path); // a stale socket of a killed daemon
    let listener = UnixListener::bind(path).map_err(|e| Error::io(path, "bind control socket", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| Error::io(path, "chmod", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_seen = stop.clone();
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                if stop_seen.load(Ordering::SeqCst) {
                    break;
                }
                let _ = answer(conn, &handle);
            }
        })
        .map_err(|e| Error::io(path, "spawn control thread", e))?;
    Ok(ControlServer { path: path.to_path_buf(), stop, thread: Some(thread) })
}

/// The largest request accepted (a list of paths for `shred --file` or `--rekey`).
const MAX_REQUEST: u64 = 1 << 20;

/// Answers one connection: only from this user or root (the socket's mode says the same,
/// but its directory may be shared), one line of at most [`MAX_REQUEST`] bytes within 5 s.
fn answer(conn: UnixStream, handle: &impl Fn(&str, &Value, &mut dyn FnMut(Value)) -> Value) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let peer = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)?;
    let me = nix::unistd::geteuid().as_raw();
    let mut w = &conn;
    if peer.uid() != me && peer.uid() != 0 {
        tracing::warn!(uid = peer.uid(), pid = peer.pid(), "control request from another user refused");
        return writeln!(w, "{}", json!({"error": "permission denied: not the mounting user or root", "exit_code": 1}));
    }
    let mut line = String::new();
    std::io::Read::take(BufReader::new(&conn), MAX_REQUEST).read_line(&mut line)?;
    let request = serde_json::from_str::<Value>(&line).unwrap_or(Value::Null);
    // A long operation's progress goes first, a line `{"progress": ...}` each (best effort:
    // a client that went away stops nothing).
    let mut progress = |v: Value| {
        let mut w = &conn;
        let _ = writeln!(w, "{}", json!({ "progress": v }));
    };
    let reply = match request["op"].as_str() {
        Some(op) => handle(op, &request, &mut progress),
        None => json!({"error": "bad request"}),
    };
    writeln!(w, "{reply}")
}

/// Sends `request` (`{"op": ..., args}`) to the daemon behind `path`; `None` if no daemon
/// answers there.
pub fn query(path: &Path, request: &Value) -> Option<Value> {
    query_with_progress(path, request, &mut |_| {})
}

/// [`query`], with each progress report of a long operation handed to `progress` as it
/// comes.
pub fn query_with_progress(path: &Path, request: &Value, progress: &mut dyn FnMut(&Value)) -> Option<Value> {
    let conn = UnixStream::connect(path).ok()?;
    // Long operations (a rotation) answer when done.
    conn.set_read_timeout(Some(Duration::from_secs(3600))).ok()?;
    let mut w = &conn;
    writeln!(w, "{request}").ok()?;
    let mut lines = BufReader::new(&conn);
    loop {
        let mut line = String::new();
        lines.read_line(&mut line).ok()?;
        let v: Value = serde_json::from_str(&line).ok()?;
        match v.get("progress") {
            Some(p) => progress(p),
            None => return Some(v),
        }
    }
}

/// The fields every status report has, mounted or not.
pub fn base_status(cipherdir: &Path, h: &VolumeHeader, files: u64, wrapped_deks: u64, kek_since: Option<u64>) -> Value {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    json!({
        "kek_age_seconds": kek_since.map(|t| now.saturating_sub(t)),
        "cipherdir": cipherdir.display().to_string(),
        "mounted": false,
        "format_version": 1,
        "volume_format": if h.features & crate::format::FEATURE_PAGES != 0 { 2 } else { 1 },
        "volume_id": hex(&h.volume_id),
        "cipher": h.cipher.name(),
        "extent_size": h.extent_size(),
        "kms_uri": h.kms_uri,
        "kek_id": hex(&h.kek_id),
        "kek_generation": h.kek_generation,
        "shredded": h.is_shredded(),
        "files": files,
        "wrapped_deks": wrapped_deks,
    })
}

/// A request to the daemon of the volume in `cipherdir`: it answers only if that is the
/// volume it serves (a header copied from another volume leads to that volume's socket).
pub fn request_for(cipherdir: &Path, op: &str) -> Value {
    let dir = std::fs::canonicalize(cipherdir).unwrap_or_else(|_| cipherdir.to_path_buf());
    json!({ "op": op, "cipherdir": dir.to_string_lossy() })
}

/// Whether `request` names the volume in `cipherdir` (canonical), as [`request_for`] does.
pub fn names_volume(request: &Value, cipherdir: &Path) -> bool {
    request["cipherdir"].as_str().and_then(|d| std::fs::canonicalize(d).ok()).is_some_and(|d| d == cipherdir)
}

/// The status of the volume in `cipherdir`: from its daemon if mounted, else from disk.
pub fn status(cipherdir: &Path) -> Result<Value> {
    let header = Volume::read_header(cipherdir)?;
    if let Some(v) = query(&socket_path(&header.volume_id), &request_for(cipherdir, "status")) {
        if v["error"].is_null() {
            return Ok(v);
        }
    }
    let info = Volume::info(cipherdir)?;
    let mut v = base_status(cipherdir, &info.header, info.files, info.extents, info.kek_since);
    v["scratch"] = scratch_json(&info.scratch, None);
    Ok(v)
}

/// The `scratch` part of a status report: the directories and whether their key is loaded
/// (mounted), or recorded in this boot's runtime directory (unmounted).
pub fn scratch_json(s: &crate::fs::ScratchState, loaded: Option<bool>) -> Value {
    let key = match (loaded, s.key_id) {
        (_, None) => "none",
        (Some(true), Some(_)) => "loaded",
        (Some(false), Some(_)) => "not loaded",
        (None, Some(_)) => "kept for a remount in this boot (or stale)",
    };
    json!({
        "dirs": s.dirs.iter().map(|d| format!("/{}", d.display())).collect::<Vec<_>>(),
        "key": key,
    })
}

/// Turns a daemon's reply into a result.
pub fn reply_result(v: Value) -> Result<Value> {
    match v["error"].as_str() {
        Some(err) => Err(Error::Daemon { code: v["exit_code"].as_u64().unwrap_or(1) as u8, message: err.to_string() }),
        None => Ok(v),
    }
}

/// A failed operation as a reply.
pub fn error_reply(e: &Error) -> Value {
    json!({ "error": e.to_string(), "exit_code": e.exit_code() })
}
