//! Progress of long commands (`rotate --kek`, `upgrade`, `fsck`, a directory made a tenant):
//! on a terminal a bar (indicatif) with what is done and to do, the rate and the time left;
//! `--progress-json`, one JSON object per line on stderr for scripts; nothing when stderr is
//! not a terminal or with `--quiet`. And what a resumable command says when it is
//! interrupted (Ctrl-C, SIGTERM): how to resume it.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Off,
    Bar,
    Json,
}

static STYLE: AtomicU8 = AtomicU8::new(0);

/// Sets the style for this process from the command line: `--quiet` wins, then
/// `--progress-json`; else a bar when stderr is a terminal.
pub fn configure(quiet: bool, json: bool) {
    let style = match (quiet, json) {
        (true, _) => Style::Off,
        (false, true) => Style::Json,
        _ if std::io::stderr().is_terminal() => Style::Bar,
        _ => Style::Off,
    };
    STYLE.store(style as u8, Ordering::Relaxed);
}

fn style() -> Style {
    match STYLE.load(Ordering::Relaxed) {
        1 => Style::Bar,
        2 => Style::Json,
        _ => Style::Off,
    }
}

/// The progress of one command, stage by stage.
pub struct Progress {
    op: &'static str,
    stage: String,
    total: Option<u64>,
    done: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Option<Instant>,
}

impl Progress {
    /// Progress of command `op` (its name in the JSON stream).
    pub fn new(op: &'static str) -> Self {
        Progress { op, stage: String::new(), total: None, done: 0, bar: None, started: Instant::now(), last_line: None }
    }

    /// A new stage: `what` is done to `total` items (`None`: not known beforehand).
    pub fn stage(&mut self, what: &str, total: Option<u64>) {
        self.end_stage();
        (self.stage, self.total, self.done, self.started, self.last_line) =
            (what.to_string(), total, 0, Instant::now(), None);
        if style() == Style::Bar {
            let bar = match total {
                Some(n) => ProgressBar::new(n).with_style(
                    ProgressStyle::with_template("{msg} [{bar:30}] {human_pos}/{human_len} ({eta} left)")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{spinner} {msg}: {human_pos}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                ),
            };
            bar.set_message(what.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            self.bar = Some(bar);
        }
    }

    /// Items per second so far (none in the first moments: too few to tell).
    fn rate(&self) -> Option<f64> {
        let secs = self.started.elapsed().as_secs_f64();
        (secs >= 0.2).then(|| self.done as f64 / secs)
    }

    /// `done` items of this stage are done.
    pub fn set(&mut self, done: u64) {
        self.done = done;
        match style() {
            Style::Bar => {
                if let Some(b) = &self.bar {
                    b.set_position(done);
                    if self.last_line.is_none_or(|t| t.elapsed() >= Duration::from_millis(250)) {
                        let rate = self.rate().map(|r| format!(", {r:.0}/s")).unwrap_or_default();
                        b.set_message(format!("{}{rate}", self.stage));
                        self.last_line = Some(Instant::now());
                    }
                }
            }
            Style::Json if self.last_line.is_none_or(|t| t.elapsed() >= Duration::from_millis(250)) => {
                self.line(false);
            }
            _ => {}
        }
    }

    /// One more item done.
    pub fn inc(&mut self) {
        self.set(self.done + 1);
    }

    fn line(&mut self, finished: bool) {
        let rate = self.rate().filter(|r| *r > 0.0);
        let left = self.total.zip(rate).map(|(t, r)| (t.saturating_sub(self.done) as f64 / r).round());
        let v = serde_json::json!({
            "op": self.op, "stage": self.stage, "done": self.done, "total": self.total,
            "per_second": rate.map(|r| r.round()), "seconds_left": left, "finished": finished,
        });
        let _ = writeln!(std::io::stderr(), "{v}");
        self.last_line = Some(Instant::now());
    }

    fn end_stage(&mut self) {
        if self.stage.is_empty() {
            return;
        }
        match style() {
            Style::Bar => {
                if let Some(b) = self.bar.take() {
                    b.finish();
                }
            }
            Style::Json => self.line(true),
            Style::Off => {}
        }
        self.stage.clear();
    }

    /// The command is done: the last stage ends.
    pub fn finish(mut self) {
        self.end_stage();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.abandon();
        }
    }
}

/// From here on, Ctrl-C (SIGINT) or SIGTERM ends this command at once with `message` on
/// stderr (how to resume it), killed by that signal (a shell shows 130 or 143). For commands that a crash at any point
/// leaves resumable: nothing of theirs needs to be unwound. The signals are blocked in this
/// thread and so in every thread started after it, and one thread waits for them: call it
/// before the work starts its threads.
pub fn resumable_on_interrupt(message: &str) {
    use nix::sys::signal::{SigSet, Signal};
    static ONCE: OnceLock<()> = OnceLock::new();
    if ONCE.set(()).is_err() {
        return;
    }
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if signals.thread_block().is_err() {
        return;
    }
    let message = message.to_string();
    let waiting = std::thread::Builder::new().name("interrupt".into()).spawn(move || {
        if let Ok(sig) = signals.wait() {
            // A prompt cut short leaves the terminal as it found it (echo on).
            if let Ok(mut t) = nix::sys::termios::tcgetattr(std::io::stdin()) {
                t.local_flags |= nix::sys::termios::LocalFlags::ECHO;
                let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &t);
            }
            let _ = writeln!(std::io::stderr(), "\ninterrupted: {message}");
            end_by(sig);
        }
    });
    if waiting.is_err() {
        let _ = signals.thread_unblock();
    }
}

/// Ends the process by `sig`, as if it had not been caught (a shell running a script then
/// stops there, as after any Ctrl-C): its default action restored, unblocked, raised.
#[allow(unsafe_code)]
fn end_by(sig: nix::sys::signal::Signal) -> ! {
    use nix::sys::signal::{SigHandler, SigSet};
    // SAFETY: SIG_DFL installs no handler code; the process ends right after.
    let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
    let mut only = SigSet::empty();
    only.add(sig);
    let _ = only.thread_unblock();
    let _ = nix::sys::signal::raise(sig);
    std::process::exit(128 + sig as i32) // (not reached: the signal ends the process)
}
