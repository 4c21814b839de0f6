//! The [`Register`] trait and its retry hooks.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{Error, Result, ServiceNode};

/// Registers one service instance and keeps it alive.
///
/// Semantics every backend honours (proved by the conformance suite):
/// - [`install`](Register::install) fills `meta`, `kernel`, `network`,
///   `lease_id` and `run_date` from the registrar's configuration and writes
///   the node; calling it again updates the same instance (same lease id).
/// - [`sustain_lease`](Register::sustain_lease) heartbeats every TTL/2 until
///   [`uninstall`](Register::uninstall). A renewal must land before the
///   lease runs out (one TTL after the last one sent): a round trip that
///   hangs is abandoned and tried again on a fresh call, in attempts of half
///   the time left. On backend failure it retries with a
///   capped backoff (at most TTL/4 apart), calling [`RetryHooks::before_retry`]
///   before each retry and [`RetryHooks::after_recovery`] once it succeeds
///   again. After `max_retry` consecutive failures it reports the
///   registration lost ([`RetryHooks::on_lost`], a metric, an error log) and
///   by default keeps retrying, so the instance comes back on its own;
///   with [`AfterMaxRetry::GiveUp`](crate::conf::AfterMaxRetry::GiveUp) it
///   then calls [`RetryHooks::on_give_up`] and returns [`Error::GaveUp`].
///   If the record was lost meanwhile (lease expired during an outage) it is
///   written again, so a registration is back within one TTL after the
///   backend recovers.
/// - [`uninstall`](Register::uninstall) stops the heartbeat and removes the
///   record; it is idempotent and harmless before `install`.
/// - [`drain`](Register::drain) keeps the instance registered but marks its
///   record draining: discovery events report it, `registry::balance` sends
///   it no new calls. Graceful shutdown is drain → grace period → uninstall →
///   stop the server. [`undrain`](Register::undrain) takes it back.
///
/// The trait is object-safe: `Arc<dyn Register>` is what
/// `registry::connect` returns.
#[async_trait]
pub trait Register: Send + Sync {
    /// Writes (or updates) this instance's node and returns the node as stored.
    async fn install(&self, node: ServiceNode) -> Result<ServiceNode>;

    /// Keeps the instance alive until [`uninstall`](Register::uninstall);
    /// waits for the first `install` if called before it. Returns `Ok(())`
    /// after `uninstall`, or [`Error::GaveUp`]. Run it on its own task.
    async fn sustain_lease(&self) -> Result<()>;

    /// Stops the heartbeat and removes the record. Idempotent.
    async fn uninstall(&self) -> Result<()>;

    /// Marks the instance draining (written at once; kept by later installs
    /// and heartbeats). Before `install`, the first install writes it draining.
    async fn drain(&self) -> Result<()>;

    /// Marks the instance serving again.
    async fn undrain(&self) -> Result<()>;

    /// Replaces the retry hooks.
    fn set_hooks(&self, hooks: RetryHooks);

    /// The node as last written, if installed.
    fn node(&self) -> Option<ServiceNode>;
}

/// What a hook is told about a failing keepalive.
#[derive(Debug)]
pub struct RetryInfo<'a> {
    /// Consecutive failures so far (1 for the first).
    pub attempt: u32,
    /// The configured limit (`0` = none).
    pub max_retry: u32,
    /// The failure.
    pub error: &'a Error,
}

type Hook = Arc<dyn Fn(&RetryInfo<'_>) + Send + Sync>;
type RecoveryHook = Arc<dyn Fn(u32) + Send + Sync>;

/// Callbacks around keepalive failures (the Go framework's `RetryBefore` /
/// `RetryAfter`, plus registration lost and give-up). Hooks run on the
/// keepalive task: keep them short.
#[derive(Clone, Default)]
pub struct RetryHooks {
    before_retry: Option<Hook>,
    after_recovery: Option<RecoveryHook>,
    lost: Option<Hook>,
    give_up: Option<Hook>,
}

impl std::fmt::Debug for RetryHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryHooks")
            .field("before_retry", &self.before_retry.is_some())
            .field("after_recovery", &self.after_recovery.is_some())
            .field("lost", &self.lost.is_some())
            .field("give_up", &self.give_up.is_some())
            .finish()
    }
}

impl RetryHooks {
    /// No hooks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Called after each failure, before the retry is scheduled.
    pub fn before_retry(mut self, f: impl Fn(&RetryInfo<'_>) + Send + Sync + 'static) -> Self {
        self.before_retry = Some(Arc::new(f));
        self
    }

    /// Called once the keepalive succeeds again, with the number of failures it recovered from.
    pub fn after_recovery(mut self, f: impl Fn(u32) + Send + Sync + 'static) -> Self {
        self.after_recovery = Some(Arc::new(f));
        self
    }

    /// Called once when `max_retry` consecutive failures are reached: the
    /// registration is lost (its record has expired, or soon will). The
    /// keepalive goes on retrying unless configured to give up; a later
    /// success calls [`after_recovery`](Self::after_recovery), and a new run
    /// of `max_retry` failures calls this again.
    pub fn on_lost(mut self, f: impl Fn(&RetryInfo<'_>) + Send + Sync + 'static) -> Self {
        self.lost = Some(Arc::new(f));
        self
    }

    /// Called when the keepalive gives up ([`AfterMaxRetry::GiveUp`](crate::conf::AfterMaxRetry::GiveUp),
    /// after [`on_lost`](Self::on_lost)), before `sustain_lease` returns.
    pub fn on_give_up(mut self, f: impl Fn(&RetryInfo<'_>) + Send + Sync + 'static) -> Self {
        self.give_up = Some(Arc::new(f));
        self
    }

    pub(crate) fn fire_before_retry(&self, info: &RetryInfo<'_>) {
        if let Some(f) = &self.before_retry {
            f(info);
        }
    }

    pub(crate) fn fire_after_recovery(&self, failures: u32) {
        if let Some(f) = &self.after_recovery {
            f(failures);
        }
    }

    pub(crate) fn fire_lost(&self, info: &RetryInfo<'_>) {
        if let Some(f) = &self.lost {
            f(info);
        }
    }

    pub(crate) fn fire_give_up(&self, info: &RetryInfo<'_>) {
        if let Some(f) = &self.give_up {
            f(info);
        }
    }
}
