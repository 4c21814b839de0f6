//! [`WatchReader`]: kube-runtime's `watcher` turned into core's
//! [`StoreEvent`]s, for every storage mode.
//!
//! The watcher does list + watch, relists on 410 Gone, and retries with
//! kube-runtime's default backoff while the API server is down; its events
//! map one to one: `Init` → `Reset`, `InitApply` → records, `InitDone` →
//! `Synced`, errors → `StoreEvent::Error` (the stream goes on, discovery keeps
//! its last view).
//!
//! One Kubernetes object can hold several records (a ConfigMap holds one
//! entry per instance, a Pod one annotation per app), so each mode's
//! [`Layout`] turns an object into records, and this module **diffs** an
//! object's records against the keys it last produced: an `Apply` yields an
//! `Upsert` per current record and a `Delete` per vanished key, a `Delete`
//! of the object deletes all its keys. (Core additionally ignores upserts
//! whose stamp did not change, so re-sending the unchanged entries of a
//! ConfigMap is cheap.)
//!
//! # A silent API server
//!
//! A watch whose connection dies silently (packets dropped, no reset)
//! delivers nothing, and Lease and ConfigMap records are judged by their
//! heartbeats on the discoverer's clock, so silence must not pass for
//! instances that stopped heartbeating. Two checks:
//!
//! - **Liveness probe** (this reader): after [`PROBE_AFTER`] without a
//!   watcher event the reader asks the API server `GET /version` (the
//!   client's own `apiserver_version`), bounded by [`PROBE_TIMEOUT`]. An
//!   answer — any HTTP answer, even a refusal — while the watcher is
//!   watching is reported as `StoreEvent::Progress` (the view is current as
//!   far as the server can tell); no answer is a `StoreEvent::Error`, so
//!   discovery marks the source stale and stops judging heartbeats
//!   ([`MAX_SILENCE`] = 7 s after the last event at most). While the server
//!   stays unreachable the reader probes every [`RECHECK_EVERY`] (each probe
//!   bounded by the same second, on a fresh connection); the first
//!   answer restarts the watcher (a fresh list over a working connection
//!   instead of waiting for TCP to retransmit on the dead one), and discovery
//!   resyncs from that listing.
//! - **kube-runtime's idle timeout**: the watch call's server-side timeout
//!   plus 5 s without an item ends the stream and the watcher watches again
//!   from its resource version — for one dead watch connection while the
//!   server answers on others. kube-runtime's default timeout is 290 s; the
//!   reader sets [`WATCH_TIMEOUT_SECS`] (20 s: 25 s in all), at the cost of one re-watch
//!   per 20 s per discoverer.
//!
//! The probe costs one `GET /version` per discoverer per 2 s of silence; a
//! namespace whose instances heartbeat every TTL/2 keeps the watch busy.
//!
//! Deleting long-dead records is core's job: the reader offers the mode's
//! reaper (ConfigMap entries and Leases, with their preconditions) through
//! `StoreReader::reaper`, and the discoverer calls it from its expiry clock.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use registry_core::Error;
use registry_core::store::{RawRecord, Reap, StoreEvent, StoreReader};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::error::KIND;

/// Server-side timeout of one watch call, in seconds (see the module docs):
/// with kube-runtime's 5 s margin, the longest a silently dead watch goes
/// unnoticed.
pub(crate) const WATCH_TIMEOUT_SECS: u32 = 20;

/// Silence of the watcher after which the reader probes the API server.
pub(crate) const PROBE_AFTER: Duration = Duration::from_secs(2);
/// How long a probe may take before the server counts as unreachable.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Probe period (and timeout) while the server is unreachable.
pub(crate) const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// The longest a healthy stream stays silent: it reports an event, a
/// progress or an error at least this often.
pub(crate) const MAX_SILENCE: Duration = PROBE_AFTER.saturating_add(PROBE_TIMEOUT);

/// What one object yields.
#[derive(Debug)]
pub(crate) enum Item {
    /// A record.
    Record(RawRecord),
    /// An entry that is not one of ours in a shape we understand.
    Malformed {
        /// The store's key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// How a storage mode lays records out in Kubernetes objects.
pub(crate) trait Layout: Send + Sync + 'static {
    /// The watched object type.
    type Object: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static;

    /// Resource name for errors (`leases`, `configmaps`, `pods`).
    const RESOURCE: &'static str;

    /// The records in `object`.
    fn items(&self, object: &Self::Object) -> Vec<Item>;
}

/// A [`StoreReader`] over kube-runtime's watcher.
pub(crate) struct WatchReader<L: Layout> {
    layout: Arc<L>,
    api: Api<L::Object>,
    config: watcher::Config,
    reaper: Option<Arc<dyn Reap>>,
}

impl<L: Layout> WatchReader<L> {
    /// Watches the objects `config` selects through `api`; `reaper` deletes
    /// the records core judges long dead (`None`: they are only hidden).
    pub(crate) fn new(layout: L, api: Api<L::Object>, config: watcher::Config, reaper: Option<Arc<dyn Reap>>) -> Self {
        Self { layout: Arc::new(layout), api, config: config.timeout(WATCH_TIMEOUT_SECS), reaper }
    }
}

impl<L: Layout> StoreReader for WatchReader<L> {
    fn events(&self) -> BoxStream<'static, StoreEvent> {
        let differ = Differ::new(Arc::clone(&self.layout), self.api.clone(), self.config.clone());
        probed(differ, self.api.clone().into_client())
    }

    fn reaper(&self) -> Option<Arc<dyn Reap>> {
        self.reaper.clone()
    }

    fn max_silence(&self) -> Option<Duration> {
        Some(MAX_SILENCE)
    }
}

/// What the liveness probe watches over: one or more kube-runtime watchers
/// whose events a mode turns into store events.
pub(crate) trait Source: Send + 'static {
    /// One item of the source's stream.
    type Item: Send + 'static;

    /// Resource name(s) for logs.
    fn resource(&self) -> &'static str;

    /// A fresh stream: the watchers started anew (they list first).
    fn start(&mut self) -> BoxStream<'static, Self::Item>;

    /// The store events for one item (`StoreEvent::Error` for a failed call).
    fn apply(&mut self, item: Self::Item) -> Vec<StoreEvent>;

    /// The source has listed and is watching (a probe's answer then
    /// confirms the view).
    fn watching(&self) -> bool;
}

/// The store events of `source`, with the liveness probe of the module docs
/// over `client`.
pub(crate) fn probed<S: Source>(source: S, client: Client) -> BoxStream<'static, StoreEvent> {
    let watch = Probed { source, client, stream: None, unreachable: false, last_heard: Instant::now() };
    stream::unfold(watch, |mut watch| async move {
        let events = watch.next().await;
        Some((stream::iter(events), watch))
    })
    .flatten()
    .boxed()
}

/// A source with the liveness probe (see the module docs).
struct Probed<S: Source> {
    source: S,
    client: Client,
    /// Created on first use and again after the server was unreachable.
    stream: Option<BoxStream<'static, S::Item>>,
    /// The last probe got no answer.
    unreachable: bool,
    /// When the source last delivered or a probe last ended.
    last_heard: Instant,
}

impl<S: Source> Probed<S> {
    /// The next store events (never empty).
    async fn next(&mut self) -> Vec<StoreEvent> {
        loop {
            let wait = if self.unreachable { RECHECK_EVERY } else { PROBE_AFTER };
            let probe_at = self.last_heard + wait;
            let source = &mut self.source;
            let stream = self.stream.get_or_insert_with(|| source.start());
            tokio::select! {
                item = stream.next() => {
                    self.last_heard = Instant::now();
                    let Some(item) = item else {
                        // The watchers never end; if they did, start them again.
                        self.stream = None;
                        continue;
                    };
                    let out = self.source.apply(item);
                    if !out.iter().any(|e| matches!(e, StoreEvent::Error(_))) {
                        self.unreachable = false;
                    }
                    if !out.is_empty() {
                        return out;
                    }
                }
                _ = tokio::time::sleep_until(probe_at) => {
                    if let Some(out) = self.probe().await {
                        return out;
                    }
                }
            }
        }
    }

    /// Asks the API server whether it answers; what to report, if anything.
    async fn probe(&mut self) -> Option<Vec<StoreEvent>> {
        let limit = if self.unreachable { RECHECK_EVERY } else { PROBE_TIMEOUT };
        let started = Instant::now();
        let answer = tokio::time::timeout(limit, self.client.apiserver_version()).await;
        // While unreachable, one probe a second from start to start: a
        // probe that timed out is followed at once by a fresh one (a new
        // connection), so a heal is seen within about a second.
        self.last_heard = if self.unreachable { started } else { Instant::now() };
        let failure = match answer {
            // A refusal is an answer: the server is there.
            Ok(Ok(_)) | Ok(Err(kube::Error::Api(_))) => None,
            Ok(Err(e)) => Some(crate::error::map(e, crate::error::Call::new("get", "version", ""))),
            Err(_) => Some(Error::Timeout { backend: KIND, operation: "probe", after: limit }),
        };
        let resource = self.source.resource();
        match failure {
            Some(error) if self.unreachable => {
                tracing::debug!(%error, resource, "the API server is still unreachable");
                None
            }
            Some(error) => {
                tracing::warn!(%error, resource, "the watch is silent and the API server does not answer");
                self.unreachable = true;
                Some(vec![StoreEvent::Error(error)])
            }
            None if self.unreachable => {
                // Reachable again: list afresh rather than wait for the
                // connections of the old watchers to come back.
                tracing::info!(resource, "the API server answers again; listing afresh");
                self.unreachable = false;
                self.stream = None;
                None
            }
            None if self.source.watching() => Some(vec![StoreEvent::Progress]),
            None => None,
        }
    }
}

/// kube-runtime's watcher over `api` with the default backoff.
pub(crate) fn watch_objects<K>(
    api: &Api<K>,
    config: &watcher::Config,
) -> BoxStream<'static, Result<Event<K>, watcher::Error>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher::watcher(api.clone(), config.clone()).default_backoff().boxed()
}

/// Turns watcher events into store events, remembering each object's keys.
struct Differ<L: Layout> {
    layout: Arc<L>,
    api: Api<L::Object>,
    config: watcher::Config,
    /// The watcher has listed and watches (`InitDone` seen, no `Init` since).
    watching: bool,
    /// Object name → keys it produced.
    keys: HashMap<String, Vec<String>>,
    /// Keys gathered during an initial listing.
    pending: Option<HashMap<String, Vec<String>>>,
}

impl<L: Layout> Differ<L> {
    fn new(layout: Arc<L>, api: Api<L::Object>, config: watcher::Config) -> Self {
        Self { layout, api, config, watching: false, keys: HashMap::new(), pending: None }
    }
}

impl<L: Layout> Source for Differ<L> {
    type Item = Result<Event<L::Object>, watcher::Error>;

    fn resource(&self) -> &'static str {
        L::RESOURCE
    }

    fn start(&mut self) -> BoxStream<'static, Self::Item> {
        self.watching = false;
        watch_objects(&self.api, &self.config)
    }

    fn watching(&self) -> bool {
        self.watching
    }

    fn apply(&mut self, event: Self::Item) -> Vec<StoreEvent> {
        match &event {
            Ok(Event::Init) => self.watching = false,
            Ok(Event::InitDone) => self.watching = true,
            _ => {}
        }
        match event {
            Err(error) => {
                tracing::debug!(%error, resource = L::RESOURCE, "watch failed; kube-runtime retries with backoff");
                vec![StoreEvent::Error(crate::error::map_watcher(error, L::RESOURCE))]
            }
            Ok(event) => self.event(event),
        }
    }
}

impl<L: Layout> Differ<L> {
    fn event(&mut self, event: Event<L::Object>) -> Vec<StoreEvent> {
        match event {
            Event::Init => {
                self.pending = Some(HashMap::new());
                vec![StoreEvent::Reset]
            }
            Event::InitApply(object) => {
                let name = object.name_any();
                let (out, keys) = self.records(&object);
                self.pending.get_or_insert_with(HashMap::new).insert(name, keys);
                out
            }
            Event::InitDone => {
                self.keys = self.pending.take().unwrap_or_default();
                vec![StoreEvent::Synced]
            }
            Event::Apply(object) => {
                let name = object.name_any();
                let (mut out, keys) = self.records(&object);
                let previous = self.keys.insert(name, keys.clone()).unwrap_or_default();
                out.extend(previous.into_iter().filter(|k| !keys.contains(k)).map(|key| StoreEvent::Delete { key }));
                out
            }
            Event::Delete(object) => {
                let previous = self.keys.remove(&object.name_any()).unwrap_or_default();
                previous.into_iter().map(|key| StoreEvent::Delete { key }).collect()
            }
        }
    }

    /// Store events for the records of `object`, and their keys.
    fn records(&self, object: &L::Object) -> (Vec<StoreEvent>, Vec<String>) {
        let mut out = Vec::new();
        let mut keys = Vec::new();
        for item in self.layout.items(object) {
            match item {
                Item::Record(record) => {
                    keys.push(record.key.clone());
                    out.push(StoreEvent::Upsert(record));
                }
                Item::Malformed { key, reason } => out.push(StoreEvent::Malformed { key, reason }),
            }
        }
        (out, keys)
    }
}
