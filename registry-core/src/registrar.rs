//! [`Registrar`]: the one implementation of [`Register`], driving any
//! [`StoreWriter`] — validation, defaults, heartbeat cadence, retries with
//! hooks, reporting a lost registration (and giving up, when asked), and
//! re-creating a lost lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::conf::{AfterMaxRetry, validate_names};
use crate::register::{RetryHooks, RetryInfo};
use crate::store::{Scope, Store, StoreWriter};
use crate::telemetry;
use crate::{Error, Meta, Register, Result, ServiceConf, ServiceNode};

/// Shortest delay before the first keepalive retry.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(50);
/// Shortest attempt of a lease renewal (see `Registrar::renew_before`).
const MIN_RENEW_ATTEMPT: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Never installed.
    Idle,
    /// Installed; heartbeats run.
    Installed,
    /// Uninstalled; `sustain_lease` returns.
    Uninstalled,
}

struct State {
    node: Option<ServiceNode>,
    /// False after `LeaseExpired`, or before the first grant.
    lease_valid: bool,
    /// When the last grant or renewal that succeeded was sent: the lease
    /// lives at least one TTL from then.
    lease_refreshed_at: Option<Instant>,
    registered_at_ms: Option<i64>,
    /// Set by `drain`, cleared by `undrain`; applied to every write.
    draining: bool,
}

struct Inner {
    writer: Arc<dyn StoreWriter>,
    /// Logged on every call: backend, namespace, env, app.
    span: tracing::Span,
    labels: [(&'static str, String); 4],
    meta: Meta,
    conf: ServiceConf,
    state: tokio::sync::Mutex<State>,
    phase: watch::Sender<Phase>,
    hooks: Mutex<RetryHooks>,
    last_node: ArcSwapOption<ServiceNode>,
}

/// Registers one instance on any backend. Cheap to clone; clones share the instance.
///
/// ```
/// # async fn demo() -> registry_core::Result<()> {
/// use std::sync::Arc;
/// use registry_core::{memory::MemoryStore, GrpcServices, Meta, Register, Registrar, ServiceConf};
///
/// let store = MemoryStore::new();
/// let registrar = Registrar::new(&store, Meta::new("dev", "greeter", "v1"), ServiceConf::default())?;
/// let node = GrpcServices::new().service("hello.Greeter", ["SayHello"])?.into_node();
/// registrar.install(node).await?;
/// let keepalive = tokio::spawn({ let r = registrar.clone(); async move { r.sustain_lease().await } });
/// registrar.uninstall().await?;
/// keepalive.await.expect("joined")?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Registrar {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar").field("meta", &self.inner.meta).field("conf", &self.inner.conf).finish()
    }
}

impl Registrar {
    /// A registrar for the instance `meta` on `store`. Applies the
    /// configuration defaults and validates `meta` and `conf`, naming the
    /// first invalid field.
    pub fn new(store: &dyn Store, meta: Meta, conf: ServiceConf) -> Result<Self> {
        let conf = conf.bootstrap()?;
        let scope = Scope::new(conf.namespace.clone(), meta.env.clone());
        store.validate(&scope, Some(&meta.app_id))?;
        let writer = store.writer(&scope)?;
        Ok(Self::assemble(writer, meta, conf))
    }

    /// A registrar over an explicit writer (tests, decorators).
    pub fn from_writer(writer: Arc<dyn StoreWriter>, meta: Meta, conf: ServiceConf) -> Result<Self> {
        let conf = conf.bootstrap()?;
        validate_names(&conf.namespace, &meta.env, Some(&meta.app_id))?;
        Ok(Self::assemble(writer, meta, conf))
    }

    fn assemble(writer: Arc<dyn StoreWriter>, meta: Meta, conf: ServiceConf) -> Self {
        let (phase, _) = watch::channel(Phase::Idle);
        let backend = writer.kind();
        let span = tracing::info_span!("registrar", backend, namespace = %conf.namespace, env = %meta.env, app_id = %meta.app_id);
        let labels = [
            ("backend", backend.to_owned()),
            ("namespace", conf.namespace.clone()),
            ("env", meta.env.clone()),
            ("app_id", meta.app_id.clone()),
        ];
        Self {
            inner: Arc::new(Inner {
                writer,
                span,
                labels,
                meta,
                conf,
                state: tokio::sync::Mutex::new(State {
                    node: None,
                    lease_valid: false,
                    lease_refreshed_at: None,
                    registered_at_ms: None,
                    draining: false,
                }),
                phase,
                hooks: Mutex::new(RetryHooks::default()),
                last_node: ArcSwapOption::empty(),
            }),
        }
    }

    /// The effective configuration (defaults applied).
    pub fn conf(&self) -> &ServiceConf {
        &self.inner.conf
    }

    /// The instance identity.
    pub fn meta(&self) -> &Meta {
        &self.inner.meta
    }

    fn hooks(&self) -> RetryHooks {
        self.inner.hooks.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Runs a store call with a deadline, so a hung backend counts as a failure.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        limit: Duration,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        use tracing::Instrument;
        let span = tracing::debug_span!(parent: &self.inner.span, "store", operation);
        match tokio::time::timeout(limit, call).instrument(span).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout { backend: self.inner.writer.kind(), operation, after: limit }),
        }
    }

    /// Grants a fresh lease if needed and writes `node` (with the lease id
    /// set), each store call bounded by the TTL and by `deadline`.
    async fn write(&self, state: &mut State, node: &mut ServiceNode, deadline: Instant) -> Result<()> {
        let ttl = self.inner.conf.ttl;
        let limit = || ttl.min(deadline.saturating_duration_since(Instant::now()));
        for _ in 0..2 {
            if !state.lease_valid {
                let sent = Instant::now();
                node.lease_id = self.bounded("grant", limit(), self.inner.writer.grant(ttl)).await?;
                state.lease_valid = true;
                state.lease_refreshed_at = Some(sent);
            }
            match self.bounded("put", limit(), self.inner.writer.put(node, ttl)).await {
                Err(Error::LeaseExpired { .. }) => state.lease_valid = false,
                other => return other,
            }
        }
        Err(Error::LeaseExpired { backend: self.inner.writer.kind() })
    }

    /// Sets the draining mark and writes the node with it (if installed).
    async fn set_draining(&self, draining: bool) -> Result<()> {
        let mut state = self.inner.state.lock().await;
        state.draining = draining;
        let Some(mut node) = state.node.clone() else { return Ok(()) };
        if node.draining == draining {
            return Ok(());
        }
        node.draining = draining;
        stamp_heartbeat(&mut node);
        self.write(&mut state, &mut node, Instant::now() + self.inner.conf.ttl * 2).await?;
        tracing::info!(parent: &self.inner.span, lease_id = node.lease_id, draining, "drain state written");
        metrics::gauge!(telemetry::DRAINING, &self.inner.labels).set(if draining { 1.0 } else { 0.0 });
        self.inner.last_node.store(Some(Arc::new(node.clone())));
        state.node = Some(node);
        Ok(())
    }

    /// One heartbeat: renew, or re-create the record when its lease is gone.
    async fn heartbeat(&self) -> Result<()> {
        let mut state = self.inner.state.lock().await;
        let Some(mut node) = state.node.clone() else { return Ok(()) };
        stamp_heartbeat(&mut node);
        let ttl = self.inner.conf.ttl;
        if state.lease_valid {
            let sent = Instant::now();
            let lease_ends = state.lease_refreshed_at.map_or(sent, |at| at + ttl);
            match self.renew_before(&node, lease_ends.max(sent + ttl / 4)).await {
                Ok(()) => {
                    state.lease_refreshed_at = Some(sent);
                    state.node = Some(node);
                    return Ok(());
                }
                Err(Error::LeaseExpired { .. }) => {
                    tracing::info!(parent: &self.inner.span, lease_id = node.lease_id, "lease lost; registering again");
                    metrics::counter!(telemetry::REREGISTRATIONS, &self.inner.labels).increment(1);
                    state.lease_valid = false;
                }
                Err(e) => return Err(e),
            }
        }
        self.write(&mut state, &mut node, Instant::now() + self.inner.conf.ttl * 2).await?;
        self.inner.last_node.store(Some(Arc::new(node.clone())));
        state.node = Some(node);
        Ok(())
    }

    /// Renews the lease before `deadline` (when it runs out), in attempts
    /// that each get half the time left (at least [`MIN_RENEW_ATTEMPT`], at
    /// most what is left).
    ///
    /// One round trip can hang without failing (a silent member, a cut
    /// connection): waiting on it until the deadline would cost the lease.
    /// A timed-out attempt is dropped (the adapter drops its stream or
    /// request with it) and the next one starts at once on a fresh call,
    /// which a client balancing over several members may send elsewhere.
    /// Halving keeps the first attempt long enough for a slow but working
    /// store, and leaves time for several more before the lease is gone.
    /// Errors other than a timeout are returned at once: the keepalive's
    /// backoff paces those.
    async fn renew_before(&self, node: &ServiceNode, deadline: Instant) -> Result<()> {
        let ttl = self.inner.conf.ttl;
        let started = Instant::now();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = (left / 2).max(MIN_RENEW_ATTEMPT).min(left);
            match self.bounded("renew", attempt, self.inner.writer.renew(node, ttl)).await {
                Err(Error::Timeout { .. }) if left > attempt => {
                    tracing::debug!(parent: &self.inner.span, lease_id = node.lease_id, ?attempt, "renewal attempt timed out; trying again");
                }
                Err(Error::Timeout { backend, operation, .. }) => {
                    return Err(Error::Timeout { backend, operation, after: started.elapsed() });
                }
                other => return other,
            }
        }
    }

    /// Writes the node of an install, retrying transient failures (the
    /// backend restarting, failing over, a write conflict) until
    /// `conf.install_deadline`; any other error is returned at once.
    async fn write_install(&self, state: &mut State, node: &mut ServiceNode) -> Result<()> {
        let conf = &self.inner.conf;
        let deadline = Instant::now() + conf.install_deadline;
        let mut backoff = Backoff::new((conf.ttl / 20).max(MIN_RETRY_DELAY), conf.ttl / 4);
        let mut attempts: u32 = 0;
        // The last failure that was not a timeout: when the attempts end in
        // a timeout (a hung call, or the deadline cutting the last one short),
        // that says why the install failed; "time ran out" does not.
        let mut refused: Option<Error> = None;
        loop {
            attempts = attempts.saturating_add(1);
            stamp_heartbeat(node);
            let error = match self.write(state, node, deadline).await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_transient() => error,
                Err(error) => return Err(error),
            };
            let delay = backoff.next_delay();
            if Instant::now() + delay >= deadline {
                let error = match refused.take() {
                    Some(refusal) if matches!(error, Error::Timeout { .. }) => refusal,
                    _ => error,
                };
                tracing::warn!(parent: &self.inner.span, attempts, %error, "install failed until its deadline");
                return Err(error);
            }
            tracing::warn!(parent: &self.inner.span, attempts, %error, ?delay, "install failed; retrying");
            if !matches!(error, Error::Timeout { .. }) {
                refused = Some(error);
            }
            tokio::time::sleep(delay).await;
        }
    }
}

fn stamp_heartbeat(node: &mut ServiceNode) {
    node.run_date = crate::model::go_run_date(chrono::Local::now());
    node.renewed_at_ms = Some(chrono::Utc::now().timestamp_millis());
}

#[async_trait]
impl Register for Registrar {
    async fn install(&self, mut node: ServiceNode) -> Result<ServiceNode> {
        let conf = &self.inner.conf;
        node.meta = self.inner.meta.clone();
        node.kernel = conf.kernel.clone();
        node.network = conf.network.clone();
        node.weight = conf.weight;
        node.ttl = Some(conf.ttl.as_secs());
        // Only an operator sets that mark; the store keeps it (see `crate::operator`).
        node.drained_by_operator = false;
        let mut state = self.inner.state.lock().await;
        node.draining = state.draining;
        let registered = *state.registered_at_ms.get_or_insert_with(|| chrono::Utc::now().timestamp_millis());
        node.registered_at_ms = Some(registered);
        match &state.node {
            Some(previous) => node.lease_id = previous.lease_id,
            // No installed node holds a lease id to reuse (a first install,
            // or one that failed after its grant): grant one, never write
            // the caller's placeholder id.
            None => state.lease_valid = false,
        }
        self.write_install(&mut state, &mut node).await?;
        tracing::info!(parent: &self.inner.span, lease_id = node.lease_id, methods = node.methods.len(), "installed");
        metrics::gauge!(telemetry::REGISTERED, &self.inner.labels).set(1.0);
        metrics::gauge!(telemetry::DRAINING, &self.inner.labels).set(if node.draining { 1.0 } else { 0.0 });
        state.node = Some(node.clone());
        self.inner.last_node.store(Some(Arc::new(node.clone())));
        self.inner.phase.send_replace(Phase::Installed);
        Ok(node)
    }

    async fn sustain_lease(&self) -> Result<()> {
        let mut phase = self.inner.phase.subscribe();
        loop {
            match *phase.borrow_and_update() {
                Phase::Installed => break,
                Phase::Uninstalled => return Ok(()),
                Phase::Idle => {}
            }
            if phase.changed().await.is_err() {
                return Ok(());
            }
        }
        if !self.inner.writer.needs_heartbeats() {
            // Nothing to renew: the platform judges liveness. Wait for the uninstall.
            while phase.changed().await.is_ok() {
                if *phase.borrow_and_update() != Phase::Installed {
                    break;
                }
            }
            return Ok(());
        }
        let conf = &self.inner.conf;
        let cadence = conf.ttl / 2;
        let mut backoff = Backoff::new((conf.ttl / 20).max(MIN_RETRY_DELAY), conf.ttl / 4);
        let mut failures: u32 = 0;
        let mut delay = cadence;
        loop {
            tokio::select! {
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow_and_update() != Phase::Installed {
                        return Ok(());
                    }
                    continue;
                }
                _ = tokio::time::sleep(delay) => {}
            }
            match self.heartbeat().await {
                Ok(()) => {
                    metrics::counter!(telemetry::HEARTBEATS, &self.inner.labels).increment(1);
                    if self.inner.last_node.load().is_some() {
                        // Still installed (an uninstall may have raced this heartbeat).
                        metrics::gauge!(telemetry::REGISTERED, &self.inner.labels).set(1.0);
                    }
                    if failures > 0 {
                        tracing::info!(parent: &self.inner.span, failures, "keepalive recovered");
                        metrics::gauge!(telemetry::REGISTRATION_LOST, &self.inner.labels).set(0.0);
                        self.hooks().fire_after_recovery(failures);
                    }
                    failures = 0;
                    backoff.reset();
                    delay = cadence;
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    metrics::gauge!(telemetry::REGISTERED, &self.inner.labels).set(0.0);
                    let info = RetryInfo { attempt: failures, max_retry: conf.max_retry, error: &error };
                    if conf.max_retry > 0 && failures == conf.max_retry {
                        tracing::error!(parent: &self.inner.span, failures, %error, "registration lost");
                        metrics::counter!(telemetry::REGISTRATIONS_LOST, &self.inner.labels).increment(1);
                        metrics::gauge!(telemetry::REGISTRATION_LOST, &self.inner.labels).set(1.0);
                        self.hooks().fire_lost(&info);
                        if conf.after_max_retry == AfterMaxRetry::GiveUp {
                            tracing::error!(parent: &self.inner.span, failures, "keepalive gave up");
                            metrics::counter!(telemetry::GIVE_UPS, &self.inner.labels).increment(1);
                            self.hooks().fire_give_up(&info);
                            return Err(Error::GaveUp { attempts: failures, last: Box::new(error) });
                        }
                    }
                    tracing::warn!(parent: &self.inner.span, failures, %error, "keepalive failed; retrying");
                    metrics::counter!(telemetry::RETRIES, &self.inner.labels).increment(1);
                    self.hooks().fire_before_retry(&info);
                    delay = backoff.next_delay();
                }
            }
        }
    }

    async fn uninstall(&self) -> Result<()> {
        let mut state = self.inner.state.lock().await;
        if *self.inner.phase.borrow() != Phase::Idle {
            self.inner.phase.send_replace(Phase::Uninstalled);
        }
        state.lease_valid = false;
        self.inner.last_node.store(None);
        let Some(node) = state.node.take() else { return Ok(()) };
        metrics::gauge!(telemetry::REGISTERED, &self.inner.labels).set(0.0);
        metrics::gauge!(telemetry::REGISTRATION_LOST, &self.inner.labels).set(0.0);
        let result = self.bounded("remove", self.inner.conf.ttl, self.inner.writer.remove(&node)).await;
        tracing::info!(parent: &self.inner.span, lease_id = node.lease_id, ok = result.is_ok(), "uninstalled");
        result
    }

    async fn drain(&self) -> Result<()> {
        self.set_draining(true).await
    }

    async fn undrain(&self) -> Result<()> {
        self.set_draining(false).await
    }

    fn set_hooks(&self, hooks: RetryHooks) {
        if let Ok(mut slot) = self.inner.hooks.lock() {
            *slot = hooks;
        }
    }

    fn node(&self) -> Option<ServiceNode> {
        self.inner.last_node.load_full().map(|n| (*n).clone())
    }
}
