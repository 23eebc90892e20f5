//! Revocation while mounted: a mounted volume whose root is an HSM or KMS asks it again on a
//! schedule (`mount --recheck-root`, one call per interval, on a thread of its own, never on
//! the data path) whether it still vouches for the volume, and decides when the mount goes
//! dark.
//!
//! Owns the schedule and the decision, not the going dark itself (the daemon's `dark`
//! callback: `Volume::go_dark`, dropping the kernel's caches, the lazy unmount):
//! - the root answers: all is well, the next check one interval later;
//! - the root **refuses** (`KmsError::Rejected`: key gone, disabled, access denied): dark at
//!   once;
//! - the root is **unreachable** (`KmsError::Unavailable`: refused connection, timeout,
//!   throttling; each call already retried with backoff until the KMS timeout): the mount
//!   keeps serving until `--offline-grace` has passed since the root last answered, checking
//!   again every interval and at the grace's end, then goes dark. A root that answers again
//!   in time changes nothing.
//!
//! The unwrap at mount is check zero: a mount never starts from a cached answer, so the
//! first re-check comes one interval after it.
//!
//! Time is the boot clock (`CLOCK_BOOTTIME`), which runs on while the machine is
//! suspended: a laptop resumed days after its root was revoked checks at once, and its
//! grace, counted from the last answer, is long gone. A check that does not return (a hung
//! token) counts as a miss after the KMS timeout and five seconds more, so the grace holds
//! whatever the KMS does.

use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use crate::kms::KmsError;
use crate::{Error, Result};

/// What one check says: the root answered, or why not.
type Answer = std::result::Result<(), KmsError>;
/// The check itself, shared with the thread each call runs on.
type Check = Arc<dyn Fn() -> Answer + Send + Sync>;

/// How often a mount re-checks its root and how long it may go without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `None`: no re-checks (`--recheck-root 0`).
    pub interval: Option<Duration>,
    pub grace: Duration,
}

impl Policy {
    /// Bounds on what the command line may ask: a KMS call every second at most, and
    /// nothing past a year (a longer interval or grace is "off", which `0` says plainly).
    const SHORTEST: Duration = Duration::from_secs(1);
    const LONGEST: Duration = Duration::from_secs(365 * 86400);

    /// `interval` 0 turns re-checks off; otherwise it must be from 1 s to a year, and the
    /// grace at most a year.
    pub fn new(interval: Duration, grace: Duration) -> Result<Policy> {
        if !interval.is_zero() && !(Self::SHORTEST..=Self::LONGEST).contains(&interval) {
            return Err(Error::InvalidArgument(format!(
                "--recheck-root {} is out of range: 0 (off), or from 1s to 365d",
                show_duration(interval)
            )));
        }
        if grace > Self::LONGEST {
            return Err(Error::InvalidArgument(format!(
                "--offline-grace {} is out of range: at most 365d",
                show_duration(grace)
            )));
        }
        Ok(Policy { interval: (!interval.is_zero()).then_some(interval), grace })
    }
}

/// The boot clock: time since boot, suspended time included.
fn boot_clock() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    match clock_gettime(ClockId::CLOCK_BOOTTIME) {
        Ok(t) => Duration::new(t.tv_sec().max(0) as u64, t.tv_nsec().clamp(0, 999_999_999) as u32),
        // Linux has had CLOCK_BOOTTIME since 2.6.39; the monotonic clock is the next best.
        Err(_) => {
            static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            START.get_or_init(std::time::Instant::now).elapsed()
        }
    }
}

/// A duration as the command line takes it: a number with an optional unit `ms`, `s`
/// (the default), `m`, `h` or `d` (`90`, `90s`, `5m`, `1h`, `1.5h`, `500ms`).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad =
        || Error::InvalidArgument(format!("{text:?} is not a duration (a number with ms, s, m, h or d: 90s, 5m, 1h)"));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// `90s`, `5m`, `1h`: a duration the way `parse_duration` reads it.
pub fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Where a mount stands with its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The last check (or the mount) got an answer.
    Answering,
    /// Checks have failed to reach the root since `since` (the first miss).
    Unreachable { since: SystemTime, answer: String },
    /// The mount went dark at `at` (is going dark, until `done`): `refused` (revoked) or
    /// not (unreachable past the grace).
    Dark { at: SystemTime, refused: bool, answer: String, done: bool },
}

/// What one check's outcome means, given when the root last answered (pure: unit-tested).
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Check again after this long.
    Wait(Duration),
    /// Go dark, for this reason.
    Dark { refused: bool, why: String },
}

/// The decision after a check that ended at `now` with `outcome`, the root having last
/// answered at `last_ok` (both on the boot clock).
pub fn decide(policy: &Policy, interval: Duration, outcome: &Answer, last_ok: Duration, now: Duration) -> Decision {
    match outcome {
        Ok(()) => Decision::Wait(interval),
        Err(KmsError::Rejected(answer)) => {
            Decision::Dark { refused: true, why: format!("the root refused the re-check: {answer}") }
        }
        Err(KmsError::Unavailable(answer)) => {
            let end = last_ok + policy.grace;
            if now >= end {
                Decision::Dark {
                    refused: false,
                    why: format!(
                        "the root did not answer for longer than the offline grace ({}): {answer}",
                        show_duration(policy.grace)
                    ),
                }
            } else {
                Decision::Wait(interval.min(end - now))
            }
        }
    }
}

/// The watcher's state, shared with `status`.
#[derive(Debug)]
pub struct Monitor {
    policy: Policy,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Debug)]
struct State {
    health: Health,
    /// Checks made (not counting the mount's own unwrap), and how many failed to get an answer.
    checks: u64,
    misses: u64,
    last_ok: SystemTime,
    stop: bool,
}

impl Monitor {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `root_check` object of `status --json`.
    pub fn status_json(&self) -> serde_json::Value {
        let s = self.state();
        let unix = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut v = serde_json::json!({
            "interval_seconds": self.policy.interval.map(|d| d.as_secs_f64()),
            "offline_grace_seconds": self.policy.grace.as_secs_f64(),
            "checks": s.checks,
            "misses": s.misses,
            "last_answer_unix": unix(s.last_ok),
        });
        match &s.health {
            Health::Answering => v["state"] = "ok".into(),
            Health::Unreachable { since, answer } => {
                v["state"] = "unreachable".into();
                v["unreachable_since_unix"] = unix(*since).into();
                v["answer"] = answer.clone().into();
            }
            Health::Dark { at, refused, answer, done } => {
                v["state"] = if *done { "revoked" } else { "going dark" }.into();
                v["revoked_at_unix"] = unix(*at).into();
                v["cause"] = if *refused { "refused" } else { "unreachable past the grace" }.into();
                v["answer"] = answer.clone().into();
            }
        }
        v
    }
}

/// The re-check thread; stopped (and joined) on drop.
pub struct Watcher {
    monitor: Arc<Monitor>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// Starts checking with `check` every `policy.interval` (which must be set); calls `dark`
    /// once, with the reason, when the mount must go dark, and then stops.
    pub fn start(
        policy: Policy,
        check: impl Fn() -> Answer + Send + Sync + 'static,
        dark: impl FnOnce(&str) + Send + 'static,
    ) -> Result<Watcher> {
        Self::start_in(policy, None, check, dark)
    }

    /// [`Self::start`] for tenant `tenant` (its id): every line the thread logs names it.
    pub fn start_for_tenant(
        tenant: String,
        policy: Policy,
        check: impl Fn() -> Answer + Send + Sync + 'static,
        dark: impl FnOnce(&str) + Send + 'static,
    ) -> Result<Watcher> {
        Self::start_in(policy, Some(tenant), check, dark)
    }

    fn start_in(
        policy: Policy,
        tenant: Option<String>,
        check: impl Fn() -> Answer + Send + Sync + 'static,
        dark: impl FnOnce(&str) + Send + 'static,
    ) -> Result<Watcher> {
        let interval = policy.interval.ok_or_else(|| Error::InvalidArgument("no re-check interval".into()))?;
        let monitor = Arc::new(Monitor {
            policy,
            state: Mutex::new(State {
                health: Health::Answering,
                checks: 0,
                misses: 0,
                last_ok: SystemTime::now(),
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let m = monitor.clone();
        let thread = std::thread::Builder::new()
            .name("root-check".into())
            .spawn(move || {
                let _span = tenant.map(|id| tracing::warn_span!("tenant", id = %id).entered());
                run(&m, interval, Arc::new(check), dark)
            })
            .map_err(|e| Error::io("", "start the root re-check thread", e))?;
        Ok(Watcher { monitor, thread: Some(thread) })
    }

    pub fn monitor(&self) -> Arc<Monitor> {
        self.monitor.clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.monitor.state().stop = true;
        self.monitor.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One check on a thread of its own, so a call that never returns is a miss, not a hang.
/// `pending` keeps a call still under way: it is waited for again (no second call starts
/// beside it); an answer it gave meanwhile is used only if it is a refusal (a revocation
/// stays one), otherwise a fresh call asks again. Returns `None` if the watcher was stopped
/// while it waited.
fn checked(m: &Monitor, check: &Check, pending: &mut Option<mpsc::Receiver<Answer>>) -> Option<Answer> {
    let limit = crate::kms::timeout() + Duration::from_secs(5);
    let answer = match pending.take().map(|rx| (rx.try_recv(), rx)) {
        Some((Ok(r @ Err(KmsError::Rejected(_))), _)) => return Some(r),
        Some((Err(mpsc::TryRecvError::Empty), rx)) => rx,
        _ => match call(check) {
            Ok(rx) => rx,
            Err(e) => return Some(Err(KmsError::Unavailable(format!("cannot start the check: {e}")))),
        },
    };
    // Waited for in short slices: an unmount does not wait for a slow KMS.
    let deadline = boot_clock() + limit;
    loop {
        if m.state().stop {
            return None;
        }
        match answer.recv_timeout(Duration::from_millis(200)) {
            Ok(r) => return Some(r),
            Err(mpsc::RecvTimeoutError::Timeout) if boot_clock() < deadline => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                *pending = Some(answer);
                return Some(Err(KmsError::Unavailable(format!("no answer within {limit:.0?}"))));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Some(Err(KmsError::Unavailable("the check failed".into())))
            }
        }
    }
}

/// Starts one call of `check` on a thread of its own; its answer comes on the receiver.
fn call(check: &Check) -> std::io::Result<mpsc::Receiver<Answer>> {
    let (tx, rx) = mpsc::channel();
    let c = check.clone();
    std::thread::Builder::new().name("root-check-call".into()).spawn(move || {
        let _ = tx.send(c());
    })?;
    Ok(rx)
}

fn run(m: &Monitor, interval: Duration, check: Check, dark: impl FnOnce(&str)) {
    let mut last_ok = boot_clock();
    let mut due = last_ok + interval;
    let mut pending = None;
    loop {
        {
            // Short waits, each measured on the boot clock: a resume from suspend is seen
            // within a second.
            let mut s = m.state();
            while !s.stop && boot_clock() < due {
                let left = due.saturating_sub(boot_clock()).min(Duration::from_secs(1));
                s = m.wake.wait_timeout(s, left).unwrap_or_else(|p| p.into_inner()).0;
            }
            if s.stop {
                return;
            }
        }
        let Some(outcome) = checked(m, &check, &mut pending) else { return };
        let now = boot_clock();
        let decision = decide(&m.policy, interval, &outcome, last_ok, now);
        let mut s = m.state();
        if s.stop {
            return; // unmounted meanwhile: the unmount decides, not a late answer
        }
        s.checks += 1;
        match (&outcome, decision) {
            (Ok(()), Decision::Wait(w)) => {
                if let Health::Unreachable { since, .. } = &s.health {
                    let offline = since.elapsed().unwrap_or_default();
                    tracing::info!(target: "envelopefs::audit", event = "root-answering", "the root answers again (after {offline:.0?})");
                }
                s.health = Health::Answering;
                s.last_ok = SystemTime::now();
                last_ok = now;
                due = now + w;
            }
            (Err(e), Decision::Wait(w)) => {
                s.misses += 1;
                let since = match &s.health {
                    Health::Unreachable { since, .. } => *since,
                    _ => SystemTime::now(),
                };
                let left = (last_ok + m.policy.grace).saturating_sub(now);
                tracing::warn!(target: "envelopefs::audit", event = "root-unreachable", misses = s.misses,
                    "re-check of the root failed ({e}); serving on for at most {left:.0?} (the offline grace)");
                s.health = Health::Unreachable { since, answer: e.to_string() };
                due = now + w;
            }
            (_, Decision::Dark { refused, why }) => {
                if !refused {
                    s.misses += 1; // the last of the misses
                }
                tracing::error!(target: "envelopefs::audit", event = "root-revoked", "{why}: going dark");
                let at = SystemTime::now();
                s.health = Health::Dark { at, refused, answer: why.clone(), done: false };
                drop(s);
                dark(&why);
                // `status` says "revoked" once the mount is dark, "going dark" until then.
                m.state().health = Health::Dark { at, refused, answer: why, done: true };
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_or_say_why_not() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "m", "5 minutes", "-1", "1e400", "five", "1x"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(show_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(show_duration(Duration::from_secs(300)), "5m");
        assert_eq!(show_duration(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn a_refusal_darkens_at_once_and_a_silence_only_after_the_grace() {
        let p = Policy { interval: Some(Duration::from_secs(10)), grace: Duration::from_secs(60) };
        let i = Duration::from_secs(10);
        let t0 = Duration::from_secs(1000);
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(decide(&p, i, &Ok(()), t0, at(10)), Decision::Wait(i));
        let refused = decide(&p, i, &Err(KmsError::Rejected("NotFoundException".into())), t0, at(10));
        assert!(matches!(refused, Decision::Dark { refused: true, ref why } if why.contains("NotFoundException")));
        let down = Err(KmsError::Unavailable("connection refused".into()));
        assert_eq!(decide(&p, i, &down, t0, at(10)), Decision::Wait(i));
        // The last wait ends at the grace's end, not an interval after it.
        assert_eq!(decide(&p, i, &down, t0, at(55)), Decision::Wait(Duration::from_secs(5)));
        let over = decide(&p, i, &down, t0, at(60));
        assert!(matches!(over, Decision::Dark { refused: false, ref why } if why.contains("1m")));
        // No grace: the first miss darkens.
        let strict = Policy { grace: Duration::ZERO, ..p };
        assert!(matches!(decide(&strict, i, &down, t0, at(10)), Decision::Dark { refused: false, .. }));
    }

    /// A check that never returns (a hung token) is a miss once the KMS timeout and five
    /// seconds have passed, so the grace still ends the mount; and stopping the watcher does
    /// not wait for the hung call.
    #[test]
    fn a_check_that_never_returns_is_a_miss_and_the_grace_still_ends() {
        crate::kms::set_timeout(Duration::from_millis(1));
        let darkened = Arc::new(Mutex::new(Vec::<String>::new()));
        let d = darkened.clone();
        let p = Policy { interval: Some(Duration::from_millis(20)), grace: Duration::from_millis(100) };
        let w = Watcher::start(
            p,
            || {
                std::thread::sleep(Duration::from_secs(60));
                Ok(())
            },
            move |why| d.lock().unwrap().push(why.to_string()),
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while darkened.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let why = darkened.lock().unwrap().first().cloned().expect("dark after a hung check and the grace");
        assert!(why.contains("no answer within"), "{why}");
        assert_eq!(w.monitor().status_json()["cause"], "unreachable past the grace");
        let stopping = std::time::Instant::now();
        drop(w);
        assert!(stopping.elapsed() < Duration::from_secs(30), "stopping waited for the hung call");
    }

    /// The thread: answers keep it serving, a refusal calls `dark` once, and the checks are
    /// counted (one per interval).
    #[test]
    fn the_watcher_checks_each_interval_and_darkens_once() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let calls = Arc::new(AtomicU64::new(0));
        let darkened = Arc::new(Mutex::new(Vec::<String>::new()));
        let (c, d) = (calls.clone(), darkened.clone());
        let p = Policy { interval: Some(Duration::from_millis(20)), grace: Duration::from_secs(60) };
        assert!(Policy::new(Duration::from_millis(20), Duration::ZERO).is_err(), "the command line's floor is 1 s");
        assert!(Policy::new(Duration::from_secs(1), Duration::from_secs(400 * 86400)).is_err());
        assert_eq!(Policy::new(Duration::ZERO, Duration::ZERO).unwrap().interval, None);
        let w = Watcher::start(
            p,
            move || match c.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Ok(()),
                2 => Err(KmsError::Unavailable("timeout".into())),
                _ => Err(KmsError::Rejected("key gone".into())),
            },
            move |why| d.lock().unwrap().push(why.to_string()),
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while darkened.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        let v = w.monitor().status_json();
        assert_eq!(*darkened.lock().unwrap(), vec!["the root refused the re-check: key gone".to_string()]);
        assert_eq!(calls.load(Ordering::SeqCst), 4, "no check after going dark");
        assert_eq!((v["checks"].as_u64(), v["misses"].as_u64()), (Some(4), Some(1)));
        assert_eq!(v["state"], "revoked");
        assert_eq!(v["cause"], "refused");
    }
}
