//! [`Discoverer`]: the one implementation of [`Discovery`], fed by any
//! [`StoreReader`].
//!
//! - `cache.rs`: the state machine. It applies [`StoreEvent`]s in batches
//!   (parsing, skipping bad records, judging heartbeat expiry on the
//!   observer's monotonic clock, empty-set protection, reaping deadlines)
//!   and returns what to do; it does no I/O and is tested without a runtime.
//! - `follow.rs`: the one task that owns the cache, feeds it the store's
//!   events and timers, and carries out its effects: publishes an immutable
//!   [`ServiceIndex`] per batch through an `ArcSwap` (readers never take a
//!   lock), fans out [`DiscoveryEvent`]s, signals readiness.
//! - `reap.rs`: hands long-dead heartbeat records to the store's [`Reap`]
//!   capability, a few at a time.
//! - `saver.rs`: the last-known-good snapshot file ([`crate::snapshot`]).
//! - `report.rs`: the source's health ([`Discovery::health`]) as metrics and
//!   logs.
//!
//! [`StoreEvent`]: crate::store::StoreEvent
//! [`Reap`]: crate::store::Reap

mod cache;
mod entry;
mod follow;
mod reap;
mod report;
mod saver;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use self::cache::{Cache, Settings};
use crate::conf::DiscoveryOptions;
use crate::store::{DEFAULT_REAP_AFTER, Reap, Scope, Store, StoreReader};
use crate::{Discovery, DiscoveryEvent, Error, Health, Nodes, Result, ServiceConf, ServiceIndex, ServiceNode};

/// How many events a slow subscriber may fall behind before it gets a `Reset`.
const EVENT_BUFFER: usize = 4096;

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
    /// Wakes the snapshot saver when the view changed.
    save_signal: watch::Sender<u64>,
    scope: Scope,
    index: ArcSwap<ServiceIndex>,
    status: watch::Sender<Status>,
    events: broadcast::Sender<DiscoveryEvent>,
    task: Mutex<Option<JoinHandle<()>>>,
    cache: Mutex<Cache>,
    /// (stale, stream healthy) as last exported (`report.rs`).
    reported_health: Mutex<Option<(bool, bool)>>,
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
    /// [`SourceHealth::snapshot_error`](crate::SourceHealth::snapshot_error) and the discoverer starts empty.
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
        let include_draining = options.draining_nodes == crate::DrainingNodes::Last;
        let (save_signal, _) = watch::channel(0);
        let cache = Cache::new(Settings {
            scope: scope.clone(),
            source: source.to_owned(),
            default_window,
            empty_protection: options.empty_protection,
            max_silence: options.stale_after.or_else(|| reader.max_silence()),
            reaping: reaper.is_some(),
            reap_after: reaper.as_ref().map_or(DEFAULT_REAP_AFTER, |r| r.reap_after()).max(1),
            // Readers that report progress are checked: silence on them is
            // a dead stream until they say otherwise.
            expiry_needs_confirmation: reader.max_silence().is_some(),
        });
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
                save_signal,
                scope,
                index: ArcSwap::from_pointee(ServiceIndex::default()),
                status,
                events,
                task: Mutex::new(None),
                cache: Mutex::new(cache),
                reported_health: Mutex::new(None),
                skipped: AtomicU64::new(0),
                include_draining: AtomicBool::new(include_draining),
            }),
        };
        discoverer.load_snapshot();
        discoverer
    }

    /// Loads the snapshot file, if one is configured (see [`Self::from_reader_with`]).
    fn load_snapshot(&self) {
        if saver::load(&self.inner).is_some() {
            self.inner.status.send_modify(|status| status.ready = true);
            report::update_health_metrics(&self.inner);
        }
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
                *task = Some(tokio::spawn(follow::follow(Arc::clone(&self.inner)).instrument(span)));
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
        Health { sources: vec![report::source_health(&self.inner)] }
    }
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
