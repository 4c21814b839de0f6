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
//! A watch whose connection dies silently (packets dropped, no reset) is
//! bounded by kube-runtime's own idle timeout: the watch call's server-side
//! timeout plus 5 s without an item ends the stream and the watcher watches
//! again from its resource version (a failure to reach the API server then
//! reaches discovery as an error). kube-runtime's default timeout is 290 s;
//! the reader sets [`WATCH_TIMEOUT_SECS`], so a silently dead watch is
//! replaced within 25 s, at the cost of one re-watch per 20 s per discoverer.
//!
//! Deleting long-dead records is core's job: the reader offers the mode's
//! reaper (ConfigMap entries and Leases, with their preconditions) through
//! `StoreReader::reaper`, and the discoverer calls it from its expiry clock.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt};
use registry_core::store::{RawRecord, Reap, StoreEvent, StoreReader};
use serde::de::DeserializeOwned;

/// Server-side timeout of one watch call, in seconds (see the module docs):
/// with kube-runtime's 5 s margin, the longest a silently dead watch goes
/// unnoticed.
pub(crate) const WATCH_TIMEOUT_SECS: u32 = 20;

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
        let mut state = Differ::new(Arc::clone(&self.layout));
        watcher::watcher(self.api.clone(), self.config.clone())
            .default_backoff()
            .flat_map(move |event| stream::iter(state.apply(event)))
            .boxed()
    }

    fn reaper(&self) -> Option<Arc<dyn Reap>> {
        self.reaper.clone()
    }
}

/// Turns watcher events into store events, remembering each object's keys.
struct Differ<L: Layout> {
    layout: Arc<L>,
    /// Object name → keys it produced.
    keys: HashMap<String, Vec<String>>,
    /// Keys gathered during an initial listing.
    pending: Option<HashMap<String, Vec<String>>>,
}

impl<L: Layout> Differ<L> {
    fn new(layout: Arc<L>) -> Self {
        Self { layout, keys: HashMap::new(), pending: None }
    }

    fn apply(&mut self, event: Result<Event<L::Object>, watcher::Error>) -> Vec<StoreEvent> {
        match event {
            Err(error) => {
                tracing::debug!(%error, resource = L::RESOURCE, "watch failed; kube-runtime retries with backoff");
                vec![StoreEvent::Error(crate::error::map_watcher(error, L::RESOURCE))]
            }
            Ok(event) => self.event(event),
        }
    }

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
