//! [`Discoverer`]: the one implementation of [`Discovery`], fed by any
//! [`StoreReader`].
//!
//! One task owns the cache state: it applies [`StoreEvent`]s in batches
//! (parsing, skipping bad records, judging heartbeat expiry on its own
//! monotonic clock), publishes an immutable [`ServiceIndex`] snapshot per
//! batch through an `ArcSwap`, and fans out [`DiscoveryEvent`]s. Readers
//! never take a lock.
//!
//! The same task keeps the source's health ([`Discovery::health`]): when the
//! store last confirmed the view, whether the change stream is healthy, how
//! often it was re-established; it holds back an empty listing that would
//! empty a non-empty view ([`EmptyProtection`]), and, with a snapshot path,
//! starts from the last-known-good view on disk and keeps that file current
//! ([`crate::snapshot`]).
//!
//! The same clock drives reaping: when the reader offers a [`Reap`]
//! capability, a heartbeat record long dead is handed to it (see [`Reap`]
//! for the rules), from tasks owned by the follow task, a few at a time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::{Semaphore, broadcast, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::conf::{DiscoveryOptions, EmptyProtection};
use crate::index::{IndexWriter, Recency};
use crate::snapshot::{self, SnapshotError};
use crate::store::{DEFAULT_REAP_AFTER, Liveness, RawRecord, Reap, Scope, Store, StoreEvent, StoreReader};
use crate::telemetry;
use crate::{
    Discovery, DiscoveryEvent, Error, Health, Nodes, Result, ServiceConf, ServiceIndex, ServiceNode, SourceHealth,
};

/// How many events a slow subscriber may fall behind before it gets a `Reset`.
const EVENT_BUFFER: usize = 4096;
/// How many reaps one discoverer runs at once (a fleet that crashed at once
/// must not turn into a burst of thousands of deletes).
const REAP_CONCURRENCY: usize = 4;
/// Deadline of one reap.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Default)]
struct Status {
    ready: bool,
    /// Errors seen before the first listing completed, newest last.
    error_seq: u64,
    error: Option<Arc<Error>>,
}

struct Inner {
    reader: Arc<dyn StoreReader>,
    reaper: Option<Arc<dyn Reap>>,
    labels: [(&'static str, String); 2],
    /// `namespace`, `env`, `source`: the health metrics' labels.
    health_labels: [(&'static str, String); 3],
    source: String,
    options: DiscoveryOptions,
    /// Silence after which the source is stale.
    max_silence: Option<Duration>,
    /// Wakes the snapshot saver when the view changed.
    save_signal: watch::Sender<u64>,
    scope: Scope,
    default_window: Duration,
    index: ArcSwap<ServiceIndex>,
    status: watch::Sender<Status>,
    events: broadcast::Sender<DiscoveryEvent>,
    task: Mutex<Option<JoinHandle<()>>>,
    cache: Mutex<Cache>,
    skipped: AtomicU64,
    /// `get_service` answers draining nodes after the serving ones
    /// ([`crate::DrainingNodes::Last`]); read with one relaxed load per lookup.
    include_draining: AtomicBool,
}

/// Discovers nodes in one namespace and env on any backend. Cheap to clone;
/// clones share the cache.
#[derive(Clone)]
pub struct Discoverer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Discoverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discoverer").field("scope", &self.inner.scope).finish()
    }
}

impl Discoverer {
    /// A discoverer of `env` in `conf.namespace` on `store`. `conf.ttl` is
    /// the expiry window for heartbeat records that do not state their own;
    /// `conf.discovery` sets empty-set protection, the snapshot file and
    /// staleness ([`DiscoveryOptions`]).
    pub fn new(store: &dyn Store, env: &str, conf: ServiceConf) -> Result<Self> {
        let conf = conf.bootstrap()?;
        let scope = Scope::new(conf.namespace.clone(), env);
        store.validate(&scope, None)?;
        let reader = store.reader(&scope)?;
        Ok(Self::from_reader_with(reader, scope, conf.ttl, store.kind(), conf.discovery))
    }

    /// A discoverer over an explicit reader (tests, decorators), with the
    /// default [`DiscoveryOptions`]; its source is named `reader`.
    ///
    /// When the reader offers a [`Reap`] capability ([`StoreReader::reaper`]),
    /// the discoverer also deletes long-dead heartbeat records through it.
    pub fn from_reader(reader: Arc<dyn StoreReader>, scope: Scope, default_window: Duration) -> Self {
        Self::from_reader_with(reader, scope, default_window, "reader", DiscoveryOptions::default())
    }

    /// A discoverer over an explicit reader whose source is named `source`
    /// (in [`Discovery::health`], metrics and the snapshot file), with `options`.
    ///
    /// With a snapshot path in `options`, the snapshot is loaded here: when
    /// it loads, the discoverer is ready at once and serves it, marked stale,
    /// until the store answers; when it does not (missing, corrupted,
    /// foreign), the error is logged and shown in
    /// [`SourceHealth::snapshot_error`] and the discoverer starts empty.
    pub fn from_reader_with(
        reader: Arc<dyn StoreReader>,
        scope: Scope,
        default_window: Duration,
        source: &str,
        options: DiscoveryOptions,
    ) -> Self {
        let (status, _) = watch::channel(Status::default());
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let reaper = reader.reaper();
        let max_silence = options.stale_after.or_else(|| reader.max_silence());
        let include_draining = options.draining_nodes == crate::DrainingNodes::Last;
        let (save_signal, _) = watch::channel(0);
        let cache = Cache {
            // Readers that report progress are checked: silence on them is
            // a dead stream until they say otherwise.
            expiry_needs_confirmation: reader.max_silence().is_some(),
            reaping: reaper.is_some(),
            reap_after: reaper.as_ref().map_or(DEFAULT_REAP_AFTER, |r| r.reap_after()).max(1),
            ..Cache::default()
        };
        let discoverer = Self {
            inner: Arc::new(Inner {
                reader,
                reaper,
                labels: [("namespace", scope.namespace.clone()), ("env", scope.env.clone())],
                health_labels: [
                    ("namespace", scope.namespace.clone()),
                    ("env", scope.env.clone()),
                    ("source", source.to_owned()),
                ],
                source: source.to_owned(),
                options,
                max_silence,
                save_signal,
                scope,
                default_window,
                index: ArcSwap::from_pointee(ServiceIndex::default()),
                status,
                events,
                task: Mutex::new(None),
                cache: Mutex::new(cache),
                skipped: AtomicU64::new(0),
                include_draining: AtomicBool::new(include_draining),
            }),
        };
        discoverer.load_snapshot();
        discoverer
    }

    /// Loads the snapshot file, if one is configured (see [`Self::from_reader_with`]).
    fn load_snapshot(&self) {
        let inner = &self.inner;
        let Some(path) = inner.options.snapshot.as_deref() else { return };
        let loaded = snapshot::load(path, &inner.source, &inner.scope);
        let Ok(mut cache) = inner.cache.lock() else { return };
        let snapshot = match loaded {
            Ok(snapshot) => snapshot,
            Err(SnapshotError::Missing { .. }) => {
                tracing::debug!(path = %path.display(), "no discovery snapshot yet");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "ignoring the discovery snapshot");
                cache.snapshot_error = Some(error.to_string());
                return;
            }
        };
        let mut out = Vec::new();
        for record in snapshot.records {
            match record.node.to_json() {
                Ok(json) => cache.upsert(inner, RawRecord::new(record.key, json), &mut out),
                Err(error) => tracing::debug!(key = record.key, %error, "snapshot record not re-encodable; skipped"),
            }
        }
        if let Some(index) = cache.index.publish() {
            inner.index.store(index);
        }
        cache.ready = true;
        cache.from_snapshot = true;
        let nodes = out.len();
        drop(cache);
        tracing::info!(path = %path.display(), nodes, saved_at_ms = snapshot.saved_at_ms, "serving the discovery snapshot until the store answers");
        inner.status.send_modify(|status| status.ready = true);
        update_health_metrics(inner);
    }

    /// Sets whether [`Discovery::get_service`] answers draining nodes (after
    /// the serving ones) or never (the default); takes effect at the next
    /// lookup, for every clone of this discoverer.
    pub fn set_draining_nodes(&self, policy: crate::DrainingNodes) {
        self.inner.include_draining.store(policy == crate::DrainingNodes::Last, Ordering::Relaxed);
    }

    /// Whether [`Discovery::get_service`] answers draining nodes.
    pub fn draining_nodes(&self) -> crate::DrainingNodes {
        if self.inner.include_draining.load(Ordering::Relaxed) {
            crate::DrainingNodes::Last
        } else {
            crate::DrainingNodes::Exclude
        }
    }

    /// Namespace and env this discoverer follows.
    pub fn scope(&self) -> &Scope {
        &self.inner.scope
    }

    fn is_ready(&self) -> bool {
        self.inner.status.borrow().ready
    }
}

#[async_trait]
impl Discovery for Discoverer {
    #[inline]
    fn get_service(&self, method: &str) -> Result<Nodes> {
        let index = self.inner.index.load();
        match index.by_method(method) {
            // Serving first, draining last: the serving part is a view of
            // the same allocation, so either answer is one `Arc` clone.
            Some(nodes) if self.inner.include_draining.load(Ordering::Relaxed) => Ok(nodes.clone()),
            Some(nodes) if nodes.serving_count() > 0 => Ok(nodes.serving()),
            Some(nodes) => Err(Error::AllDraining { method: method.to_owned(), draining: nodes.len() }),
            None if !self.is_ready() => Err(Error::NotReady),
            None => Err(Error::MethodNotFound { method: method.to_owned() }),
        }
    }

    fn get_app(&self, app_id: &str) -> Result<Nodes> {
        let index = self.inner.index.load();
        match index.by_app(app_id) {
            Some(nodes) => Ok(nodes.clone()),
            None if !self.is_ready() => Err(Error::NotReady),
            None => Err(Error::NodeNotFound { app_id: app_id.to_owned() }),
        }
    }

    fn apps(&self) -> Vec<Arc<str>> {
        self.inner.index.load().apps()
    }

    fn snapshot(&self) -> Arc<ServiceIndex> {
        self.inner.index.load_full()
    }

    async fn watcher(&self) -> Result<()> {
        let mut status = self.inner.status.subscribe();
        let seen_errors = status.borrow_and_update().error_seq;
        {
            let mut task = self.inner.task.lock().map_err(|_| Error::backend("discovery", "task lock poisoned"))?;
            if task.as_ref().is_none_or(|t| t.is_finished()) {
                use tracing::Instrument;
                let span = tracing::info_span!(
                    "discovery",
                    namespace = %self.inner.scope.namespace,
                    env = %self.inner.scope.env
                );
                *task = Some(tokio::spawn(follow(Arc::clone(&self.inner)).instrument(span)));
            }
        }
        loop {
            {
                let now = status.borrow_and_update();
                if now.ready {
                    return Ok(());
                }
                if now.error_seq > seen_errors
                    && let Some(error) = &now.error
                {
                    return Err(error.duplicate());
                }
            }
            if status.changed().await.is_err() {
                return Err(Error::NotReady);
            }
        }
    }

    async fn wait_ready(&self) {
        let mut status = self.inner.status.subscribe();
        // The sender lives as long as `self`, so `wait_for` only ends on readiness.
        let _ = status.wait_for(|s| s.ready).await;
    }

    fn unwatch(&self) {
        if let Ok(mut task) = self.inner.task.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
    }

    fn events(&self) -> BoxStream<'static, DiscoveryEvent> {
        let rx = self.inner.events.subscribe();
        let initial = current_ups(&self.inner.index.load());
        let inner = Arc::clone(&self.inner);
        futures::stream::unfold((rx, initial, inner), |(mut rx, mut queue, inner)| async move {
            loop {
                if let Some(event) = queue.pop_front() {
                    return Some((event, (rx, queue, inner)));
                }
                match rx.recv().await {
                    Ok(event) => return Some((event, (rx, queue, inner))),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        queue.push_back(DiscoveryEvent::Reset);
                        queue.extend(current_ups(&inner.index.load()));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }

    fn skipped(&self) -> u64 {
        self.inner.skipped.load(Ordering::Relaxed)
    }

    fn health(&self) -> Health {
        if let Some(sources) = self.inner.reader.sources_health() {
            return Health { sources };
        }
        Health { sources: vec![source_health(&self.inner)] }
    }
}

/// The health of the discoverer's one source, now.
fn source_health(inner: &Inner) -> SourceHealth {
    let Ok(cache) = inner.cache.lock() else {
        return SourceHealth { source: inner.source.clone(), stale: true, ..SourceHealth::default() };
    };
    let now = Instant::now();
    let since_confirmed = cache.last_confirmed.map(|at| now.saturating_duration_since(at));
    let stream_healthy = cache.last_confirmed.is_some() && cache.degraded_since.is_none();
    SourceHealth {
        source: inner.source.clone(),
        ready: cache.ready,
        stream_healthy,
        since_confirmed,
        stale_after: inner.max_silence,
        stale: cache.is_stale(inner, now),
        resyncs: cache.resyncs,
        stream_errors: cache.stream_errors,
        last_error: cache.degraded_since.and(cache.last_error.clone()),
        from_snapshot: cache.from_snapshot,
        empty_held: cache.held_empty.is_some(),
        snapshot_error: cache.snapshot_error.clone(),
    }
}

/// Sets the health gauges when they changed.
fn update_health_metrics(inner: &Inner) {
    let health = source_health(inner);
    let Ok(mut cache) = inner.cache.lock() else { return };
    let state = (health.stale, health.stream_healthy);
    if cache.reported_health == Some(state) {
        return;
    }
    if health.stale && cache.reported_health.is_some_and(|(stale, _)| !stale) {
        tracing::warn!(
            source = %inner.source,
            namespace = %inner.scope.namespace,
            env = %inner.scope.env,
            stream_healthy = health.stream_healthy,
            since_confirmed = ?health.since_confirmed,
            error = health.last_error.as_deref().unwrap_or(""),
            "discovery is stale: serving its last view"
        );
    } else if !health.stale && cache.reported_health.is_some_and(|(stale, _)| stale) {
        tracing::info!(source = %inner.source, namespace = %inner.scope.namespace, env = %inner.scope.env, "discovery is current again");
    }
    cache.reported_health = Some(state);
    drop(cache);
    metrics::gauge!(telemetry::DISCOVERY_STALE, &inner.health_labels).set(if health.stale { 1.0 } else { 0.0 });
    metrics::gauge!(telemetry::DISCOVERY_STREAM_HEALTHY, &inner.health_labels).set(if health.stream_healthy {
        1.0
    } else {
        0.0
    });
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut task) = self.task.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
    }
}

fn current_ups(index: &ServiceIndex) -> VecDeque<DiscoveryEvent> {
    index.all_nodes().into_iter().map(up).collect()
}

/// `app_id/lease_id`: identifies an instance within one backend (lease ids
/// are per backend). Across backends use [`crate::cross_backend_identity`].
pub fn app_lease_key(node: &ServiceNode) -> Arc<str> {
    Arc::from(format!("{}/{}", node.meta.app_id, node.lease_id))
}

fn up(node: Arc<ServiceNode>) -> DiscoveryEvent {
    DiscoveryEvent::Up { key: app_lease_key(&node), node }
}

fn down(node: Arc<ServiceNode>) -> DiscoveryEvent {
    DiscoveryEvent::Down { key: app_lease_key(&node), node }
}

/// The follow task: applies store events in batches, expires heartbeat
/// records and reaps long-dead ones. Reaps run in tasks it owns: stopping it
/// (unwatch) stops them.
async fn follow(inner: Arc<Inner>) {
    let mut stream = inner.reader.events();
    let mut reaps = JoinSet::new();
    // Tasks that live as long as this one (dropping the set aborts them).
    let mut helpers = JoinSet::new();
    if inner.options.snapshot.is_some() {
        // Subscribed before any event is applied, so no change is missed.
        helpers.spawn(save_snapshots(Arc::clone(&inner), inner.save_signal.subscribe()));
    }
    let permits = Arc::new(Semaphore::new(REAP_CONCURRENCY));
    loop {
        while reaps.try_join_next().is_some() {}
        let deadline = inner.cache.lock().ok().and_then(|c| c.next_deadline(&inner));
        let first = match deadline {
            Some(at) => tokio::select! {
                event = stream.next() => event,
                _ = tokio::time::sleep_until(at) => {
                    let due = apply_batch(&inner, Vec::new());
                    spawn_reaps(&inner, due, &permits, &mut reaps);
                    continue;
                }
            },
            None => stream.next().await,
        };
        let Some(first) = first else {
            tracing::warn!(namespace = %inner.scope.namespace, env = %inner.scope.env, "store event stream ended");
            return;
        };
        // Drain what is already queued so one snapshot covers the whole burst.
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match stream.next().now_or_never() {
                Some(Some(event)) => batch.push(event),
                _ => break,
            }
        }
        let due = apply_batch(&inner, batch);
        spawn_reaps(&inner, due, &permits, &mut reaps);
    }
}

/// Hands each record in `due` to the store's reaper, at most
/// [`REAP_CONCURRENCY`] at once, and counts the outcome.
fn spawn_reaps(inner: &Inner, due: Vec<RawRecord>, permits: &Arc<Semaphore>, reaps: &mut JoinSet<()>) {
    let Some(reaper) = &inner.reaper else { return };
    for record in due {
        let reaper = Arc::clone(reaper);
        let permits = Arc::clone(permits);
        let [namespace, env] = inner.labels.clone();
        reaps.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else { return };
            let key = record.key.as_str();
            let outcome = match tokio::time::timeout(REAP_TIMEOUT, reaper.reap(&record)).await {
                Ok(Ok(())) => {
                    tracing::info!(key, "deleted a long-dead heartbeat record");
                    telemetry::REAP_DELETED
                }
                Ok(Err(Error::Conflict { .. })) => {
                    tracing::debug!(key, "long-dead record changed before its deletion: kept");
                    telemetry::REAP_RENEWED
                }
                Ok(Err(error)) => {
                    tracing::debug!(key, %error, "deleting a long-dead record failed");
                    telemetry::REAP_FAILED
                }
                Err(_) => {
                    tracing::debug!(key, after = ?REAP_TIMEOUT, "deleting a long-dead record timed out");
                    telemetry::REAP_FAILED
                }
            };
            let labels = [namespace, env, ("outcome", outcome.to_owned())];
            metrics::counter!(telemetry::REAPS, &labels).increment(1);
        });
    }
}

/// Applies one batch of store events and publishes the result; returns the
/// records now due for reaping.
fn apply_batch(inner: &Inner, batch: Vec<StoreEvent>) -> Vec<RawRecord> {
    let Ok(mut cache) = inner.cache.lock() else { return Vec::new() };
    let mut out = Vec::new();
    let mut became_ready = false;
    let mut first_error = None;
    let mut view_changed = false;
    cache.batch += 1;
    for event in batch {
        match event {
            StoreEvent::Reset => {
                cache.pending = Some(HashMap::new());
                cache.listing_malformed.clear();
            }
            StoreEvent::Upsert(record) => {
                cache.recover(inner);
                match cache.pending.as_mut() {
                    Some(pending) => {
                        pending.insert(record.key.clone(), record);
                    }
                    None => {
                        cache.confirm();
                        // A node appeared: the store is not empty after all,
                        // and what it holds is the held listing plus this.
                        cache.release_hold(&mut out);
                        cache.upsert(inner, record, &mut out);
                    }
                }
            }
            StoreEvent::Delete { key } => {
                cache.recover(inner);
                match cache.pending.as_mut() {
                    Some(pending) => {
                        pending.remove(&key);
                    }
                    None => {
                        cache.confirm();
                        cache.delete(&key, &mut out);
                    }
                }
            }
            StoreEvent::Progress => {
                cache.recover(inner);
                cache.confirm();
            }
            StoreEvent::Malformed { key, reason } => {
                let stamp = RawRecord::new(key.as_str(), reason.as_str()).stamp_digest();
                if cache.pending.is_some() {
                    cache.listing_malformed.insert(key.clone());
                }
                cache.skip(inner, &key, &reason, stamp);
            }
            StoreEvent::Synced => {
                cache.recover(inner);
                cache.confirm();
                let listed_nothing = cache.pending.as_ref().is_some_and(|p| p.is_empty());
                // Only a listing in a fault window is suspect: the first
                // after a break of the stream, one replacing a loaded
                // snapshot, or one while an empty answer is already held. On
                // a healthy stream an empty listing is the store's news (a
                // Consul blocking answer after the last instance left).
                let fault_window = cache.after_fault || cache.from_snapshot || cache.held_empty.is_some();
                let protect = inner.options.empty_protection != EmptyProtection::Off && fault_window;
                if listed_nothing && protect && cache.records.values().any(|e| e.visible) {
                    // Empty-set protection: keep the last view until the
                    // empty answer is confirmed (or forever, by the rule).
                    cache.pending = None;
                    cache.listing_malformed.clear();
                    if cache.held_empty.is_none() {
                        cache.held_empty = Some(Instant::now());
                        metrics::counter!(telemetry::DISCOVERY_EMPTY_HELD, &inner.health_labels).increment(1);
                        tracing::warn!(
                            source = %inner.source,
                            namespace = %inner.scope.namespace,
                            env = %inner.scope.env,
                            rule = ?inner.options.empty_protection,
                            "the store listed no node: keeping the last view until that is confirmed"
                        );
                    }
                } else if let Some(pending) = cache.pending.take() {
                    cache.held_empty = None;
                    cache.after_fault = false;
                    let malformed = std::mem::take(&mut cache.listing_malformed);
                    cache.skipped_writes.retain(|k, _| pending.contains_key(k) || malformed.contains(k));
                    let gone: Vec<Arc<str>> =
                        cache.records.keys().filter(|k| !pending.contains_key(k.as_ref())).cloned().collect();
                    for key in gone {
                        cache.delete(&key, &mut out);
                    }
                    for (_, record) in pending {
                        cache.upsert(inner, record, &mut out);
                    }
                }
                cache.ready = true;
                cache.from_snapshot = false;
                became_ready = true;
                view_changed = true;
            }
            StoreEvent::Error(error) => {
                metrics::counter!(telemetry::STREAM_ERRORS, &inner.labels).increment(1);
                if cache.degraded_since.is_none() {
                    cache.degraded_since = Some(Instant::now());
                }
                cache.stream_errors += 1;
                cache.last_error = Some(error.to_string());
                first_error.get_or_insert(error);
            }
        }
    }
    let now = Instant::now();
    if let Some(since) = cache.held_empty
        && let EmptyProtection::ConfirmFor(confirm) = inner.options.empty_protection
        && cache.degraded_since.is_none()
        && now >= since + confirm
    {
        tracing::info!(source = %inner.source, after = ?confirm, "the store kept listing no node: applying the empty view");
        cache.release_hold(&mut out);
    }
    cache.expire(now, &mut out);
    let due = cache.due_reaps(now);
    cache.silence_noted = cache.silent(inner, now);
    if let Some(snapshot) = cache.index.publish() {
        metrics::gauge!(telemetry::CACHE_NODES, &inner.labels).set(snapshot.len() as f64);
        inner.index.store(snapshot);
        view_changed = true;
    }
    if cache.confirmed_now {
        cache.confirmed_now = false;
        let unix = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        metrics::gauge!(telemetry::DISCOVERY_CONFIRMED_AT, &inner.health_labels).set(unix);
    }
    drop(cache);
    if view_changed && inner.options.snapshot.is_some() {
        inner.save_signal.send_modify(|n| *n = n.wrapping_add(1));
    }
    update_health_metrics(inner);
    let now_ms = chrono::Utc::now().timestamp_millis();
    for event in &out {
        if let DiscoveryEvent::Up { node, .. } = event
            && let Some(renewed) = node.renewed_at_ms
        {
            let lag = (now_ms - renewed).max(0) as f64 / 1000.0;
            metrics::histogram!(telemetry::PROPAGATION_LAG, &inner.labels).record(lag);
        }
    }
    for event in out {
        // No subscriber is not an error.
        let _ = inner.events.send(event);
    }
    inner.status.send_if_modified(|status| {
        let mut changed = false;
        if became_ready && !status.ready {
            status.ready = true;
            changed = true;
        }
        if let Some(error) = first_error
            && !status.ready
        {
            status.error_seq += 1;
            status.error = Some(Arc::new(error));
            changed = true;
        }
        changed
    });
    due
}

struct Entry {
    stamp: u64,
    node: Arc<ServiceNode>,
    /// Heartbeat window; `None` for store-managed records.
    window: Option<Duration>,
    last_seen: Instant,
    visible: bool,
    /// The record as last observed, to hand to the reaper once it is long
    /// dead; `None` when it is not to be reaped (no reaper, store-managed, a
    /// window the record does not state) or was handed out for this stamp.
    /// Boxed: most entries never hold one, and the cache is per node.
    reap: Option<Box<RawRecord>>,
    /// The operator's mark the store reported beside the record
    /// ([`RawRecord::drained_by_operator`]).
    marked: bool,
}

impl Entry {
    /// When the record counts as long dead, if it is to be reaped.
    fn reap_at(&self, after: u32) -> Option<Instant> {
        self.reap.as_ref()?;
        self.last_seen.checked_add(self.window?.checked_mul(after)?)
    }
}

#[derive(Default)]
struct Cache {
    index: IndexWriter,
    records: HashMap<Arc<str>, Entry>,
    pending: Option<HashMap<String, RawRecord>>,
    batch: u64,
    /// The first listing has been applied.
    ready: bool,
    warned: HashSet<String>,
    /// Keys whose current write was skipped, with its stamp.
    skipped_writes: HashMap<String, u64>,
    /// Keys reported malformed during the listing in progress.
    listing_malformed: HashSet<String>,
    degraded_since: Option<Instant>,
    /// The reader offers a reaper.
    reaping: bool,
    /// Windows without a new stamp before a record is reaped.
    reap_after: u32,
    /// When the store last confirmed the view.
    last_confirmed: Option<Instant>,
    /// A confirmation in this batch (for the timestamp gauge).
    confirmed_now: bool,
    /// The source was found silent for longer than its bound (so the
    /// silence deadline is not armed again until the next confirmation).
    silence_noted: bool,
    /// Breaks of the change stream recovered from.
    resyncs: u64,
    /// Errors the change stream reported.
    stream_errors: u64,
    last_error: Option<String>,
    /// The view came from the snapshot file and the store has not listed since.
    from_snapshot: bool,
    /// Since when an empty listing is held back (restarted when the stream recovers).
    held_empty: Option<Instant>,
    /// The stream broke and no listing has been applied since: the next
    /// listing is in the fault window empty-set protection guards.
    after_fault: bool,
    snapshot_error: Option<String>,
    /// (stale, stream healthy) as last exported.
    reported_health: Option<(bool, bool)>,
    /// The reader reports progress ([`StoreReader::max_silence`]): a
    /// heartbeat record is hidden (or reaped) only once the source confirmed
    /// the view after its deadline (see [`Cache::due`]).
    expiry_needs_confirmation: bool,
}

/// True when two nodes differ only in heartbeat fields.
fn same_but_heartbeat(a: &ServiceNode, b: &ServiceNode) -> bool {
    a.proto_count == b.proto_count
        && a.lease_id == b.lease_id
        && a.methods == b.methods
        && a.network == b.network
        && a.kernel == b.kernel
        && a.meta == b.meta
        && a.registered_at_ms == b.registered_at_ms
        && a.ttl == b.ttl
        && a.weight == b.weight
        && a.draining == b.draining
        && a.drained_by_operator == b.drained_by_operator
}

impl Cache {
    /// Leaves the degraded state: heartbeats could not be observed while the
    /// store was unreachable, so the outage does not count against them. For
    /// a reader that reports progress the outage began when the source last
    /// confirmed the view, not when the break was reported: a silently dead
    /// stream is noticed only later (up to the reader's `max_silence`), and
    /// heartbeats went unobserved since.
    fn recover(&mut self, inner: &Inner) {
        if let Some(since) = self.degraded_since.take() {
            let unobserved_since = match self.last_confirmed {
                Some(at) if self.expiry_needs_confirmation => at.min(since),
                _ => since,
            };
            let outage = unobserved_since.elapsed();
            for entry in self.records.values_mut() {
                if entry.window.is_some() {
                    entry.last_seen += outage;
                }
            }
            self.resyncs += 1;
            self.after_fault = true;
            metrics::counter!(telemetry::DISCOVERY_RESYNCS, &inner.health_labels).increment(1);
            // An empty listing held back is confirmed on a healthy stream only.
            if self.held_empty.is_some() {
                self.held_empty = Some(Instant::now());
            }
        }
    }

    /// The store showed that the view is current.
    fn confirm(&mut self) {
        self.last_confirmed = Some(Instant::now());
        self.confirmed_now = true;
        self.silence_noted = false;
    }

    /// Applies an empty listing held back by empty-set protection.
    fn release_hold(&mut self, out: &mut Vec<DiscoveryEvent>) {
        if self.held_empty.take().is_some() {
            let keys: Vec<Arc<str>> = self.records.keys().cloned().collect();
            for key in keys {
                self.delete(&key, out);
            }
        }
    }

    /// No confirmation for longer than the source's silence bound.
    fn silent(&self, inner: &Inner, now: Instant) -> bool {
        match (inner.max_silence, self.last_confirmed) {
            (Some(bound), Some(at)) => now.saturating_duration_since(at) > bound,
            _ => false,
        }
    }

    /// See [`SourceHealth::stale`].
    fn is_stale(&self, inner: &Inner, now: Instant) -> bool {
        !self.ready
            || self.last_confirmed.is_none()
            || self.degraded_since.is_some()
            || self.from_snapshot
            || self.held_empty.is_some()
            || self.silent(inner, now)
    }

    /// Counts a bad write once (a relist showing it again is not counted
    /// again) and warns once per key.
    fn skip(&mut self, inner: &Inner, key: &str, reason: &str, stamp: u64) {
        if self.skipped_writes.insert(key.to_owned(), stamp) == Some(stamp) {
            return;
        }
        inner.skipped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(telemetry::SKIPPED, &inner.labels).increment(1);
        if self.warned.insert(key.to_owned()) {
            tracing::warn!(key, reason, namespace = %inner.scope.namespace, env = %inner.scope.env, "skipping record");
        }
    }

    /// A record that turned bad: whatever it was before leaves the index.
    fn reject(&mut self, inner: &Inner, key: &str, reason: &str, stamp: u64, out: &mut Vec<DiscoveryEvent>) {
        self.delete(key, out);
        self.skip(inner, key, reason, stamp);
    }

    fn upsert(&mut self, inner: &Inner, record: RawRecord, out: &mut Vec<DiscoveryEvent>) {
        let stamp = record.stamp_digest();
        let marked = record.drained_by_operator;
        // When only the operator's mark changed: when the record was last renewed.
        let mut renewed_at = None;
        if let Some(entry) = self.records.get_mut(record.key.as_str())
            && entry.stamp == stamp
        {
            if entry.visible && entry.marked != marked {
                // The operator's mark changed beside the record: a change to
                // show, but not a sign of life.
                renewed_at = Some(entry.last_seen);
            } else {
                // Same write seen again (a relist, or another change of the object
                // holding it): not a sign of life; but a reap deletes the version
                // last observed.
                if let Some(reap) = entry.reap.as_mut() {
                    **reap = record;
                }
                return;
            }
        }
        if self.skipped_writes.get(record.key.as_str()) == Some(&stamp) {
            // A bad write seen again: already counted.
            return;
        }
        let mut node = match ServiceNode::from_json(&record.value) {
            Ok(node) => node,
            Err(e) => return self.reject(inner, &record.key, &format!("not a service node: {e}"), stamp, out),
        };
        // Discovered nodes carry the effective state: drained by the
        // instance or by an operator (in the record or beside it).
        node.drained_by_operator |= marked;
        node.draining |= node.drained_by_operator;
        if node.meta.env != inner.scope.env {
            let reason = format!("env `{}` is not `{}`", node.meta.env, inner.scope.env);
            return self.reject(inner, &record.key, &reason, stamp, out);
        }
        if node.meta.app_id.is_empty() {
            return self.reject(inner, &record.key, "empty app_id", stamp, out);
        }
        self.skipped_writes.remove(record.key.as_str());
        let (window, stated) = match record.liveness {
            Liveness::StoreManaged => (None, false),
            Liveness::Heartbeat { window } => match window.or(node.ttl.map(Duration::from_secs)) {
                Some(window) => (Some(window), !window.is_zero()),
                None => (Some(inner.default_window), false),
            },
        };
        let now = renewed_at.unwrap_or_else(Instant::now);
        let key: Arc<str> = Arc::from(record.key.as_str());
        // Only a window the record states is good enough to delete it by:
        // hiding is undone by the next heartbeat, a delete is not.
        let reap = (self.reaping && stated).then(|| Box::new(record));
        if let Some(entry) = self.records.get_mut(&key)
            && entry.visible
            && same_but_heartbeat(&entry.node, &node)
        {
            entry.stamp = stamp;
            entry.last_seen = now;
            entry.window = window;
            entry.reap = reap;
            return;
        }
        let recency = match (self.records.get(&key), self.index.recency(&key)) {
            // An update of a live instance keeps its place in the order.
            (Some(entry), Some(recency)) if entry.visible && entry.node.lease_id == node.lease_id => recency,
            // The first listing is batch 0 for everyone; later arrivals get their batch.
            _ => Recency::of(&node, if self.ready { self.batch } else { 0 }),
        };
        let node = self.index.upsert(&key, node, recency);
        out.push(up(Arc::clone(&node)));
        self.records.insert(key, Entry { stamp, node, window, last_seen: now, visible: true, reap, marked });
    }

    fn delete(&mut self, key: &str, out: &mut Vec<DiscoveryEvent>) {
        self.skipped_writes.remove(key);
        if let Some(entry) = self.records.remove(key)
            && entry.visible
        {
            self.index.remove(key);
            out.push(down(entry.node));
        }
    }

    /// True when a heartbeat record's `deadline` (end of its window, or its
    /// reap time) may be acted on: it has passed and, for a reader that
    /// reports progress, the source confirmed the view after it. A silently
    /// dead stream delivers no heartbeats either; until the source confirms
    /// (a change, a listing, a progress report) or reports the break, the
    /// missing heartbeats may be stuck in it, so nothing is hidden. The hide
    /// comes at most the reader's progress period late.
    fn due(&self, deadline: Instant, now: Instant) -> bool {
        now >= deadline && (!self.expiry_needs_confirmation || self.last_confirmed.is_some_and(|at| at >= deadline))
    }

    /// Hides heartbeat records not renewed within their window (see [`Cache::due`]).
    fn expire(&mut self, now: Instant, out: &mut Vec<DiscoveryEvent>) {
        if self.degraded_since.is_some() {
            return;
        }
        let expired: Vec<Arc<str>> = self
            .records
            .iter()
            .filter(|(_, e)| e.visible && e.window.is_some_and(|w| self.due(e.last_seen + w, now)))
            .map(|(k, _)| Arc::clone(k))
            .collect();
        for key in expired {
            if let Some(entry) = self.records.get_mut(&key) {
                entry.visible = false;
                self.index.remove(&key);
                out.push(down(Arc::clone(&entry.node)));
            }
        }
    }

    /// Heartbeat records long dead, each handed out once per observed stamp;
    /// none while the stream is broken or a listing is in progress (the
    /// records held then may already have been renewed), nor before the
    /// source confirmed the view after the reap time (see [`Cache::due`]).
    fn due_reaps(&mut self, now: Instant) -> Vec<RawRecord> {
        if !self.reaping || self.degraded_since.is_some() || self.pending.is_some() {
            return Vec::new();
        }
        let after = self.reap_after;
        let due: Vec<Arc<str>> = self
            .records
            .iter()
            .filter(|(_, e)| e.reap_at(after).is_some_and(|at| self.due(at, now)))
            .map(|(k, _)| Arc::clone(k))
            .collect();
        due.iter().filter_map(|k| self.records.get_mut(k)?.reap.take().map(|r| *r)).collect()
    }

    fn next_deadline(&self, inner: &Inner) -> Option<Instant> {
        if self.degraded_since.is_some() {
            return None;
        }
        let silence = match (inner.max_silence, self.last_confirmed) {
            // Just past the bound, so that the wake-up finds the source silent.
            (Some(bound), Some(at)) if !self.silence_noted => Some(at + bound + Duration::from_millis(1)),
            _ => None,
        };
        let release = match (self.held_empty, inner.options.empty_protection) {
            (Some(since), EmptyProtection::ConfirmFor(confirm)) => Some(since + confirm),
            _ => None,
        };
        // A deadline that passed unconfirmed waits for the source's next
        // event (a progress report at the latest), not for a timer.
        let now = Instant::now();
        let wakes = |at: &Instant| !self.expiry_needs_confirmation || *at > now;
        let expiry = self.records.values().filter(|e| e.visible).filter_map(|e| e.window.map(|w| e.last_seen + w));
        // Reaps wait for a listing in progress to complete (not for a timer).
        let reaps = self.records.values().filter(|_| self.pending.is_none()).filter_map(|e| e.reap_at(self.reap_after));
        expiry.chain(reaps).filter(wakes).chain(silence).chain(release).min()
    }
}

/// Saves the view to the snapshot file whenever it changed (at most once per
/// [`snapshot::SAVE_EVERY`]), while it is current: never a view that is
/// stale, held back or still the loaded snapshot.
async fn save_snapshots(inner: Arc<Inner>, mut changed: watch::Receiver<u64>) {
    let Some(path) = inner.options.snapshot.clone() else { return };
    loop {
        if changed.changed().await.is_err() {
            return;
        }
        let pending = {
            let Ok(cache) = inner.cache.lock() else { return };
            let current = cache.ready
                && !cache.from_snapshot
                && cache.held_empty.is_none()
                && cache.degraded_since.is_none()
                && cache.pending.is_none();
            current.then(|| snapshot::Pending {
                records: cache
                    .records
                    .iter()
                    .filter(|(_, e)| e.visible)
                    .map(|(k, e)| (Arc::clone(k), Arc::clone(&e.node)))
                    .collect(),
            })
        };
        if let Some(pending) = pending {
            let (source, scope, target) = (inner.source.clone(), inner.scope.clone(), path.clone());
            let saved =
                tokio::task::spawn_blocking(move || snapshot::save(&target, &pending.into_snapshot(&source, &scope)))
                    .await;
            let error = match saved {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(error) => Some(format!("snapshot writer failed: {error}")),
            };
            if let Ok(mut cache) = inner.cache.lock() {
                if let Some(error) = &error
                    && cache.snapshot_error.as_deref() != Some(error)
                {
                    tracing::warn!(%error, "saving the discovery snapshot failed");
                }
                cache.snapshot_error = error;
            }
        }
        tokio::time::sleep(snapshot::SAVE_EVERY).await;
    }
}
