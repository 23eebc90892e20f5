//! Mounting as a service: pre-flight checks, the daemon that serves a mount, the parent that
//! waits until the mount is ready, signal handling, and unmounting.
//!
//! `envelopefs mount` (without `--foreground`) re-runs itself as a detached child, hands it
//! the passphrase through a pipe (never argv), and returns only when the child reports
//! "ready" or an error on its status pipe.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{SigSet, Signal};

use crate::control;
use crate::format::VolumeHeader;
use crate::fs::{InodeFs, Volume};
use crate::fuse::{MountConfig, Mounted};
use crate::kms::{self, Audited, Kms};
use crate::revocation::Watcher;
use crate::secret::{Passphrase, Secrets};
use crate::{Error, Result};

mod tenants;

/// Held by the daemon for as long as it serves a volume: one mount per volume.
const LOCK_FILE: &str = ".envelopefs.lock";

#[derive(Debug, Clone)]
pub struct MountRequest {
    pub cipherdir: PathBuf,
    pub mountpoint: PathBuf,
    pub read_only: bool,
    pub allow_other: bool,
    pub threads: usize,
    /// `--io-uring`: serve requests over io_uring rings, one per CPU, where the kernel allows.
    pub io_uring: bool,
    /// Scratch directories (paths inside the volume; `/` for `--ephemeral`).
    pub scratch: Vec<PathBuf>,
    /// How often an HSM or KMS root is re-checked, and the offline grace.
    pub recheck: crate::revocation::Policy,
    /// Passphrases of tenants whose root is an embedded keystore of their own.
    pub tenant_passfiles: Vec<crate::tenant::TenantPassfile>,
    /// `--idle`: unmount after this long without a request while no file is open.
    pub idle: Option<Duration>,
}

/// Checks what can be checked before asking for a passphrase; returns the request with
/// canonical paths.
pub fn preflight(req: &MountRequest) -> Result<MountRequest> {
    Volume::read_live_header(&req.cipherdir)?;
    let mnt = &req.mountpoint;
    let meta = std::fs::metadata(mnt)
        .map_err(|_| Error::Mountpoint { path: mnt.clone(), reason: "mountpoint does not exist".into() })?;
    if !meta.is_dir() {
        return Err(Error::Mountpoint { path: mnt.clone(), reason: "mountpoint is not a directory".into() });
    }
    let mountpoint = mnt.canonicalize().map_err(|e| Error::io(mnt, "resolve", e))?;
    if let Some(src) = mount_source(&mountpoint) {
        return Err(Error::Mountpoint {
            path: mountpoint,
            reason: format!("mountpoint is busy: {} is already mounted there", src.display()),
        });
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(Error::Fuse(
            "/dev/fuse is missing: load the fuse module (modprobe fuse) or give the container --device /dev/fuse"
                .into(),
        ));
    }
    let cipherdir = req.cipherdir.canonicalize().map_err(|e| Error::io(&req.cipherdir, "resolve", e))?;
    Ok(MountRequest { cipherdir, mountpoint, ..req.clone() })
}

/// Takes the volume's lock (held by a mount daemon or a rotation), or says who holds it.
pub fn lock_volume(cipherdir: &Path) -> Result<Flock<File>> {
    let path = cipherdir.join(LOCK_FILE);
    // Never through a planted symlink or FIFO (it would truncate nothing, but could block or
    // create a file elsewhere).
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(crate::confine::untrusted_flags())
        .open(&path)
        .map_err(|e| Error::io(&path, "open lock file", e))?;
    crate::confine::check_kind(
        &file.metadata().map_err(|e| Error::io(&path, "stat", e))?,
        crate::confine::Expect::File,
        &path,
    )?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| Error::Mountpoint {
        path: cipherdir.to_path_buf(),
        reason: "volume is already mounted (another envelopefs process holds it)".into(),
    })
}

/// Serves the mount until it is unmounted (by `umount`, `fusermount3 -u`, SIGTERM, SIGINT
/// or SIGHUP). `ready` is called once the mount is usable.
pub fn serve(req: &MountRequest, secrets: Box<dyn Secrets>, ready: impl FnOnce()) -> Result<()> {
    // Signals are blocked before any thread exists, so only the signal thread receives them.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().map_err(|e| Error::io("", "block signals", e.into()))?;
    crate::sys::harden_process().map_err(|e| Error::io("", "harden process", e))?;
    crate::sys::lock_memory(true);

    let _lock = lock_volume(&req.cipherdir)?;
    let header = Volume::read_live_header(&req.cipherdir)?;
    let kms = std::sync::Arc::new(kms::open(&header.kms_uri, &req.cipherdir, secrets.as_ref())?);
    let vol = Arc::new(Volume::open_with_kms(&req.cipherdir, header.clone(), kms.as_ref())?);
    vol.files_removed()?; // a volume whose files were removed behind its back is not served
    crate::tenant::check_scratch(&vol, &req.scratch)?;
    // Each tenant's root is asked once, now (a tenant that cannot be opened is dark; the
    // rest is served): a KMS that is down shows at mount, never on the data path.
    let pins = tenants::TenantPins { outer_uri: header.kms_uri.clone(), mount: secrets.as_ref() };
    let tenant_secrets = crate::tenant::TenantSecrets::new(&pins, &req.tenant_passfiles, false);
    let opened = crate::tenant::open_all(&vol, &tenant_secrets, req.read_only)?;
    drop(secrets); // the passphrase is not kept for the life of the mount
    let scratch_file = control::scratch_path(&header.volume_id);
    control::ensure_runtime_dir()?;
    let setup = vol.setup_scratch(kms.as_ref(), &req.scratch, &scratch_file, req.read_only)?;
    if setup.stale_removed > 0 {
        tracing::info!(entries = setup.stale_removed, "removed stale scratch of an earlier boot");
    }
    if !req.read_only {
        vol.begin_writing("mount")?;
    }
    let keep_scratch = Arc::new(AtomicBool::new(req.read_only));
    let chown_new = nix::unistd::geteuid().is_root();
    let mut inode_fs = InodeFs::new(vol.clone(), req.read_only, chown_new)?;
    let parts = tenants::add_to(&mut inode_fs, opened);
    if req.idle.is_some() {
        inode_fs.track_idle();
    }
    let fs = Arc::new(inode_fs);
    let cfg = MountConfig {
        read_only: req.read_only,
        allow_other: req.allow_other,
        fsname: req.cipherdir.display().to_string(),
        threads: req.threads,
        io_uring: req.io_uring,
    };
    let mut mounted = Mounted::new(fs.clone(), &req.mountpoint, &cfg).map_err(|e| fuse_error(&req.mountpoint, e))?;
    // Set once a dark mount is detached and its caches dropped: only then may SIGTERM end it.
    let detached = Arc::new(AtomicBool::new(false));
    let watcher = watch_root(req, &header, &kms, &fs, mounted.invalidator(), detached.clone());
    let monitor = watcher.as_ref().map(Watcher::monitor);
    let served = Arc::new(tenants::watch(req.recheck, req.read_only, parts, &fs, &mounted.invalidator()));
    let control = control_server(
        req,
        &header,
        Ctl { vol: vol.clone(), kms, fs: fs.clone(), cached: mounted.invalidator(), transport: mounted.transport() },
        keep_scratch.clone(),
        monitor,
        served.clone(),
    );
    if let Some(idle) = req.idle {
        watch_idle(idle, fs.clone(), mounted.idle_unmounter(&req.mountpoint));
    }
    let mut unmount = mounted.unmounter();
    // Not the volume itself: its last holder commits it at the end, which must be `serve`.
    let dark = vol.dark_reason();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let Ok(sig) = signals.wait() else { return };
            if dark.get().is_some() {
                // Nothing to commit, no key left: a dark mount that files still hold open ends
                // now (their requests get ENOTCONN from here on), once it is detached and the
                // kernel's caches are dropped (a few seconds at most, else anyway).
                let until = Instant::now() + Duration::from_secs(10);
                while !detached.load(Ordering::SeqCst) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                tracing::info!("{sig:?}: the mount is dark; exiting");
                std::process::exit(i32::from(Error::REVOKED_EXIT));
            }
            tracing::info!("{sig:?}: unmounting");
            if let Err(e) = unmount() {
                tracing::error!("unmount after {sig:?} failed: {e}");
            }
        })
        .map_err(|e| Error::io("", "spawn signal thread", e))?;
    tracing::info!(cipherdir = %req.cipherdir.display(), mountpoint = %req.mountpoint.display(), "mounted");
    ready();
    let served_fuse = mounted.run().map_err(|e| Error::Fuse(e.to_string()));
    // No re-check once unmounted (a going dark under way finishes first).
    drop(watcher);
    // The control thread holds the tenants (for status) and the volume: it goes first.
    drop(control);
    let served = close_tenants(served);
    if let Some(why) = vol.dark() {
        let e = Error::Revoked { path: req.cipherdir.clone(), reason: why.to_string() };
        drop((fs, vol));
        // A tenant volume still held somewhere keeps reaching its files through its pinned
        // descriptor: that is never closed under it (the process ends soon anyway).
        for (tenant, held) in served {
            drop(tenant);
            std::mem::forget(held);
        }
        tracing::info!("unmounted after going dark");
        return Err(e);
    }
    // Scratch dies with the mount unless `umount --keep-scratch` asked otherwise (or the
    // mount was read-only).
    let destroyed = if keep_scratch.load(Ordering::SeqCst) { Ok(0) } else { vol.destroy_scratch(&scratch_file) };
    // With the control thread stopped, dropping the file system and then our reference drops
    // each volume, which zeroizes every key and closes (checkpoints) the store.
    drop(fs);
    for (vol, held) in served {
        if close(vol) {
            drop(held);
        } else {
            std::mem::forget(held); // see above
        }
    }
    close(vol);
    served_fuse?;
    let destroyed = destroyed?;
    tracing::info!(scratch_entries_destroyed = destroyed, "unmounted; keys zeroized");
    Ok(())
}

/// Stops the tenants' re-checks and returns their volumes, for closing once the file system
/// (which holds them too) is dropped.
fn close_tenants(served: Arc<Vec<tenants::Served>>) -> Vec<(Arc<Volume>, crate::tenant::Held)> {
    let mut served = served;
    let deadline = Instant::now() + Duration::from_secs(10);
    let list = loop {
        match Arc::try_unwrap(served) {
            Ok(list) => break list,
            Err(again) if Instant::now() < deadline => {
                served = again;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return Vec::new(),
        }
    };
    list.into_iter()
        .filter_map(|s| {
            drop(s.watcher);
            match s.tenant.state {
                crate::tenant::TenantState::Open { vol, held, .. } => Some((vol, held)),
                crate::tenant::TenantState::Closed(_) => None,
            }
        })
        .collect()
}

/// Drops the volume here, so that its last commit and the clearing of its mount marker
/// happen before the daemon exits: waits (up to 10 s) for any other thread still holding it
/// for a moment.
fn close(vol: Arc<Volume>) -> bool {
    let mut vol = vol;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Arc::try_unwrap(vol) {
            Ok(v) => {
                drop(v);
                return true;
            }
            Err(again) if Instant::now() < deadline => {
                vol = again;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => {
                tracing::error!(
                    "the volume is still in use at exit: its last commit is left to the next mount's recovery"
                );
                return false;
            }
        }
    }
}

/// `mount --idle`: unmounts once no request came for `idle` and no file is open, as
/// `umount` would (refused while a process works inside it: tried again later); the
/// daemon then ends as after any unmount (scratch destroyed, everything committed). A dark
/// mount is the revocation's to end, not this.
fn watch_idle(idle: Duration, fs: Arc<InodeFs>, mut unmount: impl FnMut() -> std::io::Result<()> + Send + 'static) {
    tracing::info!("unmounting after {} without a request (--idle)", crate::revocation::show_duration(idle));
    let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let dark = fs.volume_arc().dark_reason();
    let spawned = std::thread::Builder::new().name("idle".into()).spawn(move || {
        let mut refused = false;
        loop {
            std::thread::sleep(every);
            if dark.get().is_some() {
                return;
            }
            if fs.idle_for().is_some_and(|quiet| quiet >= idle) {
                match unmount() {
                    Ok(()) => {
                        tracing::info!(target: "envelopefs::audit", event = "idle-unmount",
                            "no request for {}: unmounted", crate::revocation::show_duration(idle));
                        return;
                    }
                    Err(e) if !refused => {
                        refused = true;
                        tracing::info!("idle, but the unmount was refused ({e}); trying again while it stays idle");
                    }
                    Err(_) => {}
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!("no idle unmount: {e}");
    }
}

/// Starts re-checking the volume's root (`crate::revocation`), unless it is the embedded
/// keystore (nothing outside the host to ask) or re-checks are off. Going dark: the kernel
/// writes back what it holds dirty and drops its cached pages of every file (while the keys
/// can still take the writes), the volume commits what it accepted and drops its keys and
/// scratch (`Volume::go_dark`), the kernel's caches are dropped once more, and the mount is
/// detached (`fusermount3 -u -z`: it goes once nothing holds it open, every request
/// meanwhile failing with EKEYREVOKED; the session's own unmounter would refuse a busy mount).
fn watch_root(
    req: &MountRequest,
    header: &VolumeHeader,
    kms: &Arc<Audited>,
    fs: &Arc<InodeFs>,
    cached: crate::fuse::Invalidator,
    detached: Arc<AtomicBool>,
) -> Option<Watcher> {
    if matches!(kms::KmsUri::parse(&header.kms_uri), Ok(kms::KmsUri::Local(_))) {
        tracing::info!("the root is the embedded keystore: nothing to re-check while mounted");
        return None;
    }
    let Some(every) = req.recheck.interval else {
        tracing::warn!("re-checks of the root are off (--recheck-root 0): a revoked root darkens this mount only at its next mount");
        return None;
    };
    tracing::info!(
        "re-checking the root every {} (offline grace {})",
        crate::revocation::show_duration(every),
        crate::revocation::show_duration(req.recheck.grace)
    );
    // Weak: a check call that hangs (on its own thread) must not keep the volume from being
    // committed and closed at unmount.
    let (vol, k) = (Arc::downgrade(&fs.volume_arc()), kms.clone());
    let check = move || {
        let Some(vol) = vol.upgrade() else { return Ok(()) };
        // The header this mount authenticated (a KEK rotation through this daemon updates
        // it), never the one on disk now: CIPHERDIR cannot steer the check.
        let h = vol.header();
        if vol.root_changed().unwrap_or(false) {
            tracing::warn!("the header on disk names another wrapped KEK (`rotate --root` beside this mount?): this mount keeps checking the root it was opened with; remount to check the new one");
        }
        drop(vol);
        k.recheck(&h.wrapped_kek, &kms::KmsContext::kek(h.volume_id, h.kek_generation))
    };
    let (fs, read_only, mountpoint, root) = (fs.clone(), req.read_only, req.mountpoint.clone(), kms.clone());
    let scratch_file = control::scratch_path(&header.volume_id);
    let dark = move |why: &str| {
        cached.drop_cached(&fs.inodes());
        if let Some(report) = fs.volume().go_dark(why, &scratch_file, read_only) {
            for e in &report.not_committed {
                tracing::error!("not committed before going dark: {e}");
            }
            match report.scratch {
                Some(Ok(n)) => tracing::info!(scratch_entries_destroyed = n, "scratch destroyed"),
                Some(Err(e)) => tracing::error!("destroying the scratch failed: {e}"),
                None => {}
            }
        }
        // Every tenant with it: the mount goes away, and no key of it stays behind.
        for t in fs.tenant_volumes() {
            tenants::darken(&t, why, read_only);
        }
        fs.forget_listings();
        let dropped = cached.drop_cached(&fs.inodes());
        tracing::info!(target: "envelopefs::audit", event = "dark", inodes_dropped = dropped,
            "keys zeroized; every request now fails with EKEYREVOKED; detaching the mount");
        if let Err(e) = unmount_lazy(&mountpoint) {
            tracing::error!("detaching the mount failed: {e}");
        }
        detached.store(true, Ordering::SeqCst);
        // Last, and on a thread nobody waits for: a hung token holds its session, and this
        // would wait for it.
        let _ = std::thread::Builder::new().name("root-logout".into()).spawn(move || root.disconnect());
    };
    match Watcher::start(req.recheck, check, dark) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!("no re-checks of the root: {e}");
            None
        }
    }
}

/// The lock that lets one rotation or shred run at a time, unless the volume went dark
/// (meanwhile, too: the command was let in before).
fn one_at_a_time<'a>(lock: &'a std::sync::Mutex<()>, vol: &Volume) -> Result<std::sync::MutexGuard<'a, ()>> {
    let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
    match vol.dark_error() {
        Some(e) => Err(e),
        None => Ok(guard),
    }
}

/// Starts the control socket; a mount without one still works (status then reads the disk).
/// What the control server acts on: the volume, its root, the file system and the kernel's
/// caches of it.
struct Ctl {
    vol: Arc<Volume>,
    kms: Arc<Audited>,
    fs: Arc<InodeFs>,
    cached: crate::fuse::Invalidator,
    transport: crate::fuse::Transport,
}

fn control_server(
    req: &MountRequest,
    header: &VolumeHeader,
    ctl: Ctl,
    keep_scratch: Arc<AtomicBool>,
    monitor: Option<Arc<crate::revocation::Monitor>>,
    served: Arc<Vec<tenants::Served>>,
) -> Option<control::ControlServer> {
    let Ctl { vol, kms, fs, cached, transport } = ctl;
    let read_only = req.read_only;
    let (cipherdir, mountpoint) = (req.cipherdir.clone(), req.mountpoint.clone());
    let started = std::time::Instant::now();
    // One rotation or shred at a time (going dark waits for neither: a revoked KEK's
    // rotation fails on its own, refused by the key ring and the store).
    let rotation = std::sync::Mutex::new(());
    let status_vol = vol.clone();
    let served_ops = served.clone();
    let status = move |kms: &Audited| {
        let stats = status_vol.live_stats();
        let (files, deks, since) =
            stats.as_ref().map(|s| (s.files, s.wrapped_deks, s.kek_since)).unwrap_or((0, 0, None));
        let mut v = control::base_status(&cipherdir, &status_vol.header(), files, deks, since);
        let (wraps, unwraps) = kms.calls();
        // A dark mount is detached: its daemon stays only for the files still open on it.
        v["mounted"] = status_vol.dark().is_none().into();
        v["mountpoint"] = mountpoint.display().to_string().into();
        v["pid"] = std::process::id().into();
        v["log"] = control::log_path(&status_vol.header().volume_id).display().to_string().into();
        v["memory_locked"] = crate::sys::memory_locked().into();
        v["transport"] = transport.status_json();
        v["mounted_seconds"] = started.elapsed().as_secs().into();
        v["kms_calls"] = serde_json::json!({ "wrap": wraps, "unwrap": unwraps, "recheck": kms.rechecks() });
        v["root_check"] = match &monitor {
            Some(m) => m.status_json(),
            None => serde_json::json!({ "state": "off" }),
        };
        v["root_rotated_since_mount"] = status_vol.root_changed().unwrap_or(false).into();
        v["tenants"] = tenants::status_json(&served);
        let scratch = status_vol.scratch_state();
        let loaded = scratch.key_id.is_some();
        v["scratch"] = control::scratch_json(&scratch, Some(loaded));
        if let Ok(s) = stats {
            let lookups = s.cache.hits + s.cache.misses;
            v["open_files"] = s.open_files.into();
            v["dek_cache"] = serde_json::json!({
                "entries": s.cache.entries,
                "hits": s.cache.hits,
                "misses": s.cache.misses,
                "hit_rate": if lookups == 0 { 0.0 } else { s.cache.hits as f64 / lookups as f64 },
            });
        }
        v
    };
    let scratch_file = control::scratch_path(&header.volume_id);
    let dark_vol = vol.clone();
    let own = std::fs::canonicalize(&req.cipherdir).unwrap_or_else(|_| req.cipherdir.clone());
    let dispatch = move |op: &str, request: &serde_json::Value, emit: &mut dyn FnMut(serde_json::Value)| match op {
        "status" => status(&kms),
        "shred-tenant" | "rotate-kek" if read_only && request["tenant"].is_string() => {
            control::error_reply(&Error::InvalidArgument("the volume is mounted read-only".into()))
        }
        "shred-tenant" => {
            let dir = Path::new(request["tenant"].as_str().unwrap_or_default());
            let done =
                one_at_a_time(&rotation, &vol).and_then(|_one| tenants::shred(&vol, &served_ops, &fs, &cached, dir));
            match done {
                Ok(t) => serde_json::json!({ "id": crate::format::hex(&t.id), "label": t.label, "root": t.root }),
                Err(e) => control::error_reply(&e),
            }
        }
        "rotate-kek" if request["tenant"].is_string() => {
            let dir = Path::new(request["tenant"].as_str().unwrap_or_default());
            let rotated = tenants::named(&vol, &served_ops, dir).and_then(|(tvol, tkms)| {
                let _one_at_a_time = one_at_a_time(&rotation, tvol)?;
                let old = crate::format::hex(&tvol.header().kek_id);
                let h = tvol.rotate_kek(tkms, &mut |_, _, _| {})?;
                Ok(serde_json::json!({
                    "old_kek_id": old,
                    "kek_id": crate::format::hex(&h.kek_id),
                    "left": tvol.rotation_left(),
                }))
            });
            rotated.unwrap_or_else(|e| control::error_reply(&e))
        }
        "rotate-kek" => {
            let _one_at_a_time = match one_at_a_time(&rotation, &vol) {
                Ok(guard) => guard,
                Err(e) => return control::error_reply(&e),
            };
            let old = crate::format::hex(&vol.header().kek_id);
            let mut logged = 0;
            let mut sent: Option<(crate::fs::RotationStep, Instant)> = None;
            let mut progress = |step, done: u64, total: u64| {
                // Names count files only (the walk passes directories too, and its total grows
                // with `done` past them): only the DEKs have a last step to show at once.
                let last = step == crate::fs::RotationStep::Deks && done == total;
                // The daemon's log shows a long rotation move on (about every 10%).
                if done >= logged + total.max(10) / 10 || last {
                    logged = done;
                    tracing::info!(?step, done, total, "rotate --kek");
                }
                // The command that asked sees it too (its progress display).
                if sent.is_none_or(|(s, at)| s != step || at.elapsed() >= Duration::from_millis(200) || last) {
                    sent = Some((step, Instant::now()));
                    let stage = match step {
                        crate::fs::RotationStep::Deks => "deks",
                        crate::fs::RotationStep::Names => "names",
                    };
                    emit(serde_json::json!({ "stage": stage, "done": done, "total": total }));
                }
            };
            match vol.rotate_kek(kms.as_ref(), &mut progress) {
                Ok(h) => serde_json::json!({
                    "old_kek_id": old,
                    "kek_id": crate::format::hex(&h.kek_id),
                    "left": vol.rotation_left(),
                }),
                Err(e) => control::error_reply(&e),
            }
        }
        "rekey" => {
            let paths = request["paths"].as_array().cloned().unwrap_or_default();
            let mut done = Vec::new();
            // As a request through the mount would: going dark waits for it, and it starts
            // on no dark volume.
            let _op = match vol.op() {
                Ok(guard) => guard,
                Err(e) => return control::error_reply(&e),
            };
            for (i, p) in paths.iter().filter_map(|p| p.as_str()).enumerate() {
                emit(serde_json::json!({ "stage": "rekey", "done": i, "total": paths.len() }));
                match tenants::rekey(&vol, &served_ops, Path::new(p)) {
                    Ok(bytes) => done.push(serde_json::json!({ "path": p, "bytes": bytes })),
                    Err(e) => {
                        let mut reply = control::error_reply(&e);
                        reply["done"] = done.into();
                        return reply;
                    }
                }
            }
            serde_json::json!({ "done": done })
        }
        "shred-check" => {
            let paths: Vec<PathBuf> = request["paths"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str())
                .map(PathBuf::from)
                .collect();
            match vol.shred_check(&paths) {
                Ok(ids) => serde_json::json!({ "ids": ids.iter().map(|i| crate::format::hex(i)).collect::<Vec<_>>() }),
                Err(e) => control::error_reply(&e),
            }
        }
        "shred-finish" => {
            let _one_at_a_time = match one_at_a_time(&rotation, &vol) {
                Ok(guard) => guard,
                Err(e) => return control::error_reply(&e),
            };
            let ids: Option<Vec<[u8; 16]>> = request["ids"]
                .as_array()
                .map(|a| a.iter().map(|i| i.as_str().and_then(crate::format::unhex16)).collect())
                .unwrap_or(None);
            let names = request["names"].as_u64().unwrap_or(0) as usize;
            match ids {
                Some(ids) => match vol.shred_finish(&ids, names, kms.as_ref()) {
                    Ok(r) => {
                        serde_json::json!({
                            "files": r.files,
                            "names": r.names,
                            "kek_id": crate::format::hex(&r.kek_id),
                            "left": vol.rotation_left(),
                        })
                    }
                    Err(e) => control::error_reply(&e),
                },
                None => serde_json::json!({ "error": "shred-finish needs \"ids\": file ids in hex" }),
            }
        }
        "keep-scratch" => {
            keep_scratch.store(true, Ordering::SeqCst);
            serde_json::json!({ "keep_scratch": true })
        }
        "shred-volume" => {
            // No rotation may write a fresh header after this.
            let _one_at_a_time = match one_at_a_time(&rotation, &vol) {
                Ok(guard) => guard,
                Err(e) => return control::error_reply(&e),
            };
            vol.keys().drop_scratch();
            // Its tenants are shredded with it: dark first, so they write nothing after.
            for t in fs.tenant_volumes() {
                tenants::darken(&t, "the volume was shredded", read_only);
            }
            let days = request["delete_root_after"].as_u64().map(|d| d as u32);
            let destroy = request["destroy_root"].as_bool().unwrap_or(false);
            match Volume::shred_volume(vol.cipherdir(), &scratch_file, Some(kms.as_ref()), destroy, days) {
                Ok(r) => serde_json::json!({
                    "root_destroyed": r.root_destroyed,
                    "root_kept": r.root_kept,
                    "tenants": r.tenants,
                    "tenants_failed": r.tenants_failed,
                }),
                Err(e) => control::error_reply(&e),
            }
        }
        other => serde_json::json!({ "error": format!("unknown operation {other:?}") }),
    };
    // Every request names the volume it means: a header given this volume's id leads to
    // this socket, and must not make this daemon act on its behalf.
    let handle = move |op: &str, request: &serde_json::Value, emit: &mut dyn FnMut(serde_json::Value)| {
        if !control::names_volume(request, &own) {
            return serde_json::json!({
                "error": format!("this daemon serves {}, not the volume the request names", own.display()),
                "exit_code": 19,
            });
        }
        match dark_vol.dark_error() {
            Some(e) if op != "status" => control::error_reply(&e),
            _ => dispatch(op, request, emit),
        }
    };
    match control::serve(&control::socket_path(&header.volume_id), handle) {
        Ok(server) => Some(server),
        Err(e) => {
            tracing::warn!("no control socket ({e}); status will read the disk");
            None
        }
    }
}

fn fuse_error(mnt: &Path, e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(16) => Error::Mountpoint { path: mnt.into(), reason: "mountpoint is busy".into() },
        Some(2) | Some(19) => Error::Fuse(format!("cannot mount ({e}): is fuse3 installed and /dev/fuse usable?")),
        _ => Error::Fuse(format!("mounting {} failed: {e}", mnt.display())),
    }
}

/// The daemon side of the status pipe: one line, "ready" or "error CODE MESSAGE".
pub struct StatusPipe(File);

impl StatusPipe {
    pub fn new(f: File) -> Self {
        StatusPipe(f)
    }

    pub fn ready(mut self) {
        let _ = self.0.write_all(b"ready\n");
    }

    pub fn failed(mut self, e: &Error) {
        let msg = e.to_string().replace('\n', " ");
        let _ = writeln!(self.0, "error {} {msg}", e.exit_code());
    }
}

/// Reads the secret (passphrase or PIN) the parent wrote to our stdin; none for roots that
/// need none (their credentials come from the environment).
pub fn secret_from_stdin() -> Result<Box<dyn Secrets>> {
    let mut buf = zeroize::Zeroizing::new(Vec::new());
    std::io::stdin().read_to_end(&mut buf).map_err(|e| Error::Passphrase(format!("reading from the parent: {e}")))?;
    if buf.is_empty() {
        return Ok(Box::new(crate::secret::PassSource::default()));
    }
    Ok(Box::new(Passphrase::new(buf.to_vec())?))
}

/// Starts the daemon (`exe` with `args`, its log appended to `log`), hands it `pass`, and
/// waits for its status line.
pub fn spawn_daemon(exe: &Path, args: &[OsString], pass: Option<&Passphrase>, log: &Path) -> Result<()> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(crate::confine::untrusted_flags())
        .open(log)
        .map_err(|e| Error::io(log, "open daemon log", e))?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map_err(|e| Error::io(exe, "start daemon", e))?;
    {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        if let Some(p) = pass {
            stdin.write_all(p.expose()).map_err(|e| Error::io(exe, "hand over passphrase", e))?;
        }
    }
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).map_err(|e| Error::io(exe, "read daemon status", e))?;
    let line = line.trim_end();
    if line == "ready" {
        return Ok(());
    }
    let _ = child.wait();
    match line.strip_prefix("error ").and_then(|r| r.split_once(' ')) {
        Some((code, msg)) => Err(Error::Daemon { code: code.parse().unwrap_or(1), message: msg.to_string() }),
        None => Err(Error::Fuse("the mount daemon exited before the mount was ready".into())),
    }
}

/// The source of the FUSE mount on top at `mountpoint` (for envelopefs: CIPHERDIR), if
/// there is one.
pub fn mount_source(mountpoint: &Path) -> Option<PathBuf> {
    crate::mountinfo::fuse_at(mountpoint).map(|m| m.source)
}

/// Detaches `mountpoint` now (`fusermount3 -u -z`); its daemon exits when the last open
/// file on it is closed.
pub fn unmount_lazy(mountpoint: &Path) -> Result<()> {
    fusermount(mountpoint, true)?.map_err(|reason| Error::Mountpoint { path: mountpoint.into(), reason })
}

/// `fusermount3 -u`, its refusal's message as the error.
fn fusermount(mountpoint: &Path, lazy: bool) -> Result<std::result::Result<(), String>> {
    crate::mount_sys::fusermount_unmount(mountpoint, lazy)
        .map_err(|e| Error::Fuse(format!("cannot run fusermount3 (is fuse3 installed?): {e}")))
}

/// Unmounts `mountpoint` and waits (up to `wait`) for its daemon to commit and exit.
pub fn unmount(mountpoint: &Path, wait: Duration) -> Result<()> {
    let mnt = mountpoint.canonicalize().map_err(|_| Error::NotMounted(mountpoint.into()))?;
    let source = mount_source(&mnt)
        .filter(|src| src.join(crate::fs::HEADER_FILE).exists())
        .ok_or_else(|| Error::NotMounted(mnt.clone()))?;
    if let Err(msg) = fusermount(&mnt, false)? {
        let reason = if msg.contains("busy") { format!("mountpoint is busy (files are open): {msg}") } else { msg };
        return Err(Error::Mountpoint { path: mnt, reason });
    }
    // The daemon holds the volume lock until it has committed and zeroized its keys.
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Ok(f) =
            OpenOptions::new().write(true).custom_flags(crate::confine::untrusted_flags()).open(source.join(LOCK_FILE))
        {
            if Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok() {
                return Ok(());
            }
        } else {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Error::Fuse(format!("{} was unmounted but its daemon is still running after {wait:?}", mnt.display())))
}
