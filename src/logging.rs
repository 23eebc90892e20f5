//! Logging: human-readable events on stderr (filtered by `RUST_LOG`, default warnings), and
//! the audit log — every event of target `envelopefs::audit` (KMS calls) appended as one
//! JSON object per line to the file `--audit-log` / `ENVELOPEFS_AUDIT_LOG` names. Neither
//! ever carries key material: only ids, purposes, outcomes and durations are recorded.
//! File contents are never logged; plaintext names appear only in error messages (which must
//! name the file): fuser's per-request debug log, which prints every name looked up, is held
//! at `info` unless `ENVELOPEFS_LOG_REQUESTS=1` asks for it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub const AUDIT_TARGET: &str = "envelopefs::audit";

/// Installs the subscriber; `audit_log` (opened for appending, mode 0600) receives the audit
/// events.
pub fn init(audit_log: Option<&Path>) -> std::io::Result<()> {
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(stderr_filter());
    let audit = match audit_log {
        Some(p) => Some(AuditLayer(Mutex::new(OpenOptions::new().create(true).append(true).mode(0o600).open(p)?))),
        None => None,
    };
    tracing_subscriber::registry().with(stderr).with(audit).init();
    Ok(())
}

fn stderr_filter() -> EnvFilter {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "envelopefs=warn".into());
    match std::env::var("ENVELOPEFS_LOG_REQUESTS").as_deref() {
        Ok("1") => filter,
        _ => filter.add_directive("fuser::request=info".parse().expect("a valid directive")),
    }
}

struct AuditLayer(Mutex<File>);

struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl<S: Subscriber> Layer<S> for AuditLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != AUDIT_TARGET || *event.metadata().level() > tracing::Level::INFO {
            return;
        }
        let mut fields = JsonFields(Map::new());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        fields.0.insert("time".into(), format!("{}.{:03}", now.as_secs(), now.subsec_millis()).into());
        fields.0.insert("pid".into(), std::process::id().into());
        event.record(&mut fields);
        let line = Value::Object(fields.0).to_string();
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(f, "{line}");
    }
}
