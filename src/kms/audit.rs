//! Every KMS call goes through [`Audited`]: it is logged (tracing target `envelopefs::audit`:
//! operation, root key id, volume id, tenant (the label of a tenant's root), purpose (`kek`, `scratch`, or `anchor` for a volume's
//! anchor kept beside the root), outcome, duration — never key material),
//! counted (for `status`), and retried with backoff while the KMS is unavailable, until the
//! KMS timeout (default 10 s, `--kms-timeout`) runs out. A refusal is final at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Kms, KmsContext, KmsError, Purpose};
use crate::crypto::Key256;
use crate::format::hex;

static TIMEOUT_MS: AtomicU64 = AtomicU64::new(10_000);

/// Sets how long a KMS may stay unreachable before an operation fails.
pub fn set_timeout(t: Duration) {
    TIMEOUT_MS.store(t.as_millis().max(1) as u64, Ordering::Relaxed);
}

pub fn timeout() -> Duration {
    Duration::from_millis(TIMEOUT_MS.load(Ordering::Relaxed))
}

/// What a KMS call is about, as the audit log names it.
#[derive(Clone, Copy)]
enum About<'a> {
    /// A key wrapped or unwrapped (its volume, purpose and boot).
    Key(&'a KmsContext),
    /// A volume's anchor kept beside the root (purpose `anchor`).
    Anchor(&'a [u8; 16]),
    /// The root itself.
    Root,
}

/// A KMS with audit log, call counts and retries.
#[derive(Debug)]
pub struct Audited {
    inner: Box<dyn Kms>,
    wraps: AtomicU64,
    unwraps: AtomicU64,
    rechecks: AtomicU64,
    /// The tenant this root is for (its label), named in every record of its calls.
    tenant: String,
}

impl Audited {
    pub fn new(inner: Box<dyn Kms>) -> Self {
        Audited {
            inner,
            wraps: AtomicU64::new(0),
            unwraps: AtomicU64::new(0),
            rechecks: AtomicU64::new(0),
            tenant: String::new(),
        }
    }

    /// This root as tenant `label`'s: its calls' records say so (`tenant`).
    pub fn for_tenant(mut self, label: &str) -> Self {
        self.tenant = label.to_string();
        self
    }

    /// Re-check calls so far (`Kms::recheck`: one per interval while the root answers).
    pub fn rechecks(&self) -> u64 {
        self.rechecks.load(Ordering::Relaxed)
    }

    /// (wrap calls, unwrap calls) so far.
    pub fn calls(&self) -> (u64, u64) {
        (self.wraps.load(Ordering::Relaxed), self.unwraps.load(Ordering::Relaxed))
    }

    fn call<T>(
        &self,
        op: &'static str,
        about: About<'_>,
        f: impl Fn() -> std::result::Result<T, KmsError>,
    ) -> std::result::Result<T, KmsError> {
        let started = Instant::now();
        let deadline = started + timeout();
        let mut backoff = Duration::from_millis(50);
        let mut attempts = 0u32;
        let result = loop {
            attempts += 1;
            match f() {
                Err(KmsError::Unavailable(r)) if Instant::now() + backoff < deadline => {
                    tracing::debug!(target: "envelopefs::audit", op, attempt = attempts, reason = %r, "KMS unavailable; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(KmsError::Unavailable(r)) if attempts > 1 => {
                    break Err(KmsError::Unavailable(format!(
                        "{r} (gave up after {attempts} attempts in {:.1?})",
                        started.elapsed()
                    )))
                }
                other => break other,
            }
        };
        let (purpose, volume) = match about {
            About::Key(c) => (c.purpose.name(), hex(&c.volume_id)),
            About::Anchor(v) => ("anchor", hex(v)),
            About::Root => ("-", String::new()),
        };
        let boot = match about {
            About::Key(KmsContext { purpose: Purpose::Scratch { boot_id }, .. }) => hex(boot_id),
            _ => String::new(),
        };
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        tracing::info!(
            target: "envelopefs::audit",
            op,
            kms = self.inner.uri(),
            key_id = %self.inner.key_id(),
            volume,
            tenant = self.tenant.as_str(),
            purpose,
            boot,
            outcome,
            attempts,
            duration_us = started.elapsed().as_micros() as u64,
            "kms call"
        );
        result
    }
}

impl Kms for Audited {
    fn uri(&self) -> &str {
        self.inner.uri()
    }

    fn key_id(&self) -> String {
        self.inner.key_id()
    }

    fn wrap(&self, key: &Key256, ctx: &KmsContext) -> std::result::Result<Vec<u8>, KmsError> {
        self.wraps.fetch_add(1, Ordering::Relaxed);
        self.call("wrap", About::Key(ctx), || self.inner.wrap(key, ctx))
    }

    fn unwrap(&self, wrapped: &[u8], ctx: &KmsContext) -> std::result::Result<Key256, KmsError> {
        self.unwraps.fetch_add(1, Ordering::Relaxed);
        self.call("unwrap", About::Key(ctx), || self.inner.unwrap(wrapped, ctx))
    }

    fn recheck(&self, wrapped: &[u8], ctx: &KmsContext) -> std::result::Result<(), KmsError> {
        self.rechecks.fetch_add(1, Ordering::Relaxed);
        self.call("recheck", About::Key(ctx), || self.inner.recheck(wrapped, ctx))
    }

    fn disconnect(&self) {
        self.inner.disconnect();
    }

    fn destroy_root(&self, delete_after_days: Option<u32>) -> std::result::Result<Option<String>, KmsError> {
        self.call("destroy-root", About::Root, || self.inner.destroy_root(delete_after_days))
    }

    fn keeps_anchors(&self) -> bool {
        self.inner.keeps_anchors()
    }

    fn read_anchor(&self, volume_id: &[u8; 16]) -> std::result::Result<Option<Vec<u8>>, KmsError> {
        self.call("read-anchor", About::Anchor(volume_id), || self.inner.read_anchor(volume_id))
    }

    fn write_anchor(&self, volume_id: &[u8; 16], text: &[u8]) -> std::result::Result<(), KmsError> {
        self.call("write-anchor", About::Anchor(volume_id), || self.inner.write_anchor(volume_id, text))
    }

    fn forget_anchor(&self, volume_id: &[u8; 16]) -> std::result::Result<bool, KmsError> {
        self.call("forget-anchor", About::Anchor(volume_id), || self.inner.forget_anchor(volume_id))
    }
}
