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

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt};
use registry_core::store::{RawRecord, StoreEvent, StoreReader};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::janitor::{Janitor, Target};

/// How often the janitor looks for long-expired records.
const JANITOR_TICK: Duration = Duration::from_secs(1);

/// What one object yields.
#[derive(Debug)]
pub enum Item {
    /// A record, and, for heartbeat records, what the janitor needs.
    Record {
        /// The record.
        record: RawRecord,
        /// Heartbeat window and deletion target; `None`: never reaped.
        reap: Option<(Duration, Target)>,
    },
    /// An entry that is not one of ours in a shape we understand.
    Malformed {
        /// The store's key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// How a storage mode lays records out in Kubernetes objects.
pub trait Layout: Send + Sync + 'static {
    /// The watched object type.
    type Object: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static;

    /// Resource name for errors (`leases`, `configmaps`, `pods`).
    const RESOURCE: &'static str;

    /// The records in `object`.
    fn items(&self, object: &Self::Object) -> Vec<Item>;

    /// Deletes a long-expired record, with a precondition that fails if it changed.
    fn reap(&self, target: Target) -> BoxFuture<'static, registry_core::Result<()>>;
}

/// A [`StoreReader`] over kube-runtime's watcher.
pub struct WatchReader<L: Layout> {
    layout: Arc<L>,
    api: Api<L::Object>,
    config: watcher::Config,
    janitor: Option<u32>,
}

impl<L: Layout> WatchReader<L> {
    /// Watches the objects `config` selects through `api`; `janitor_after`
    /// turns the janitor on (grace = that many heartbeat windows).
    pub fn new(layout: L, api: Api<L::Object>, config: watcher::Config, janitor_after: Option<u32>) -> Self {
        Self { layout: Arc::new(layout), api, config, janitor: janitor_after }
    }
}

enum Input<K> {
    Watch(Result<Event<K>, watcher::Error>),
    Tick,
}

impl<L: Layout> StoreReader for WatchReader<L> {
    fn events(&self) -> BoxStream<'static, StoreEvent> {
        let watch = watcher::watcher(self.api.clone(), self.config.clone()).default_backoff().map(Input::Watch);
        let ticks = match self.janitor {
            Some(_) => stream::unfold((), |()| async {
                tokio::time::sleep(JANITOR_TICK).await;
                Some((Input::Tick, ()))
            })
            .boxed(),
            None => stream::pending().boxed(),
        };
        let mut state = Differ::new(Arc::clone(&self.layout), self.janitor);
        stream::select(watch, ticks).flat_map(move |input| stream::iter(state.apply(input))).boxed()
    }
}

/// Turns watcher events into store events, remembering each object's keys.
struct Differ<L: Layout> {
    layout: Arc<L>,
    /// Object name → keys it produced.
    keys: HashMap<String, Vec<String>>,
    /// Keys gathered during an initial listing.
    pending: Option<HashMap<String, Vec<String>>>,
    janitor: Option<(Janitor, u32)>,
}

impl<L: Layout> Differ<L> {
    fn new(layout: Arc<L>, janitor_after: Option<u32>) -> Self {
        Self { layout, keys: HashMap::new(), pending: None, janitor: janitor_after.map(|n| (Janitor::new(), n)) }
    }

    fn apply(&mut self, input: Input<L::Object>) -> Vec<StoreEvent> {
        let now = Instant::now();
        match input {
            Input::Tick => {
                self.reap(now);
                Vec::new()
            }
            Input::Watch(Err(error)) => {
                if let Some((janitor, _)) = &mut self.janitor {
                    janitor.pause(now);
                }
                tracing::debug!(%error, resource = L::RESOURCE, "watch failed; kube-runtime retries with backoff");
                vec![StoreEvent::Error(crate::error::map_watcher(error, L::RESOURCE))]
            }
            Input::Watch(Ok(event)) => {
                if let Some((janitor, _)) = &mut self.janitor {
                    janitor.resume(now);
                }
                self.event(event, now)
            }
        }
    }

    fn event(&mut self, event: Event<L::Object>, now: Instant) -> Vec<StoreEvent> {
        match event {
            Event::Init => {
                self.pending = Some(HashMap::new());
                vec![StoreEvent::Reset]
            }
            Event::InitApply(object) => {
                let name = object.name_any();
                let (out, keys) = self.records(&object, now);
                self.pending.get_or_insert_with(HashMap::new).insert(name, keys);
                out
            }
            Event::InitDone => {
                self.keys = self.pending.take().unwrap_or_default();
                if let Some((janitor, _)) = &mut self.janitor {
                    let live: HashSet<&str> = self.keys.values().flatten().map(String::as_str).collect();
                    janitor.retain(|k| live.contains(k));
                }
                vec![StoreEvent::Synced]
            }
            Event::Apply(object) => {
                let name = object.name_any();
                let (mut out, keys) = self.records(&object, now);
                let previous = self.keys.insert(name, keys.clone()).unwrap_or_default();
                self.deleted(previous.into_iter().filter(|k| !keys.contains(k)), &mut out);
                out
            }
            Event::Delete(object) => {
                let previous = self.keys.remove(&object.name_any()).unwrap_or_default();
                let mut out = Vec::new();
                self.deleted(previous.into_iter(), &mut out);
                out
            }
        }
    }

    fn deleted(&mut self, keys: impl Iterator<Item = String>, out: &mut Vec<StoreEvent>) {
        for key in keys {
            if let Some((janitor, _)) = &mut self.janitor {
                janitor.forget(&key);
            }
            out.push(StoreEvent::Delete { key });
        }
    }

    /// Store events for the records of `object`, and their keys.
    fn records(&mut self, object: &L::Object, now: Instant) -> (Vec<StoreEvent>, Vec<String>) {
        let mut out = Vec::new();
        let mut keys = Vec::new();
        for item in self.layout.items(object) {
            match item {
                Item::Record { record, reap } => {
                    if let Some((janitor, after)) = &mut self.janitor {
                        match reap {
                            Some((window, target)) => {
                                janitor.observe(&record.key, record.stamp_digest(), window * *after, target, now)
                            }
                            None => janitor.forget(&record.key),
                        }
                    }
                    keys.push(record.key.clone());
                    out.push(StoreEvent::Upsert(record));
                }
                Item::Malformed { key, reason } => out.push(StoreEvent::Malformed { key, reason }),
            }
        }
        (out, keys)
    }

    fn reap(&mut self, now: Instant) {
        let Some((janitor, _)) = &mut self.janitor else { return };
        for target in janitor.due(now) {
            let layout = Arc::clone(&self.layout);
            tracing::info!(object = %target.object, key = %target.key, resource = L::RESOURCE, "janitor: deleting long-expired record");
            tokio::spawn(async move {
                let key = target.key.clone();
                if let Err(error) = layout.reap(target).await {
                    tracing::debug!(%key, %error, "janitor: record not deleted (changed, gone, or not permitted)");
                }
            });
        }
    }
}
