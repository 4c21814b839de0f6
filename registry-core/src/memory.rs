//! The embedded in-memory backend: process-local, shareable between any
//! number of registrars and discoverers in one process, with real TTL leases
//! (a record whose lease is not renewed within its TTL is deleted, and
//! watchers see the deletion) and an etcd-like revisioned change history.
//!
//! It is the default backend of the `registry` facade (`memory://`) and of
//! the quickstart, and it runs the whole conformance suite.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[cfg(feature = "testing")]
mod faults;

use crate::list_watch::ListWatchReader;
use crate::operator::Operator;
use crate::store::{
    BackendSpec, Change, ListWatch, Listing, RawRecord, Scope, Store, StoreReader, StoreWriter, WatchUpdate,
};
use crate::{Error, Result, ServiceNode};

const KIND: &str = "memory";
/// Largest record accepted (etcd's default request limit, so that what works
/// on the embedded backend also fits etcd).
pub const MAX_RECORD_BYTES: usize = 1536 * 1024;
/// Changes kept for watchers to resume from.
pub const DEFAULT_HISTORY: usize = 10_000;

#[derive(Clone, Debug)]
struct Record {
    value: String,
    mod_revision: u64,
}

#[derive(Clone, Debug)]
struct HistoryItem {
    revision: u64,
    key: String,
    /// `None` for a deletion.
    value: Option<String>,
}

struct Lease {
    deadline: Instant,
    keys: Vec<String>,
}

struct State {
    records: BTreeMap<String, Record>,
    leases: HashMap<i64, Lease>,
    revision: u64,
    history: VecDeque<HistoryItem>,
    history_cap: usize,
}

impl State {
    fn bump(&mut self, key: String, value: Option<String>) -> u64 {
        self.revision += 1;
        if self.history.len() == self.history_cap {
            self.history.pop_front();
        }
        self.history.push_back(HistoryItem { revision: self.revision, key, value });
        self.revision
    }

    fn delete_key(&mut self, key: &str) -> bool {
        if self.records.remove(key).is_some() {
            self.bump(key.to_owned(), None);
            true
        } else {
            false
        }
    }

    fn revoke(&mut self, lease: i64) {
        if let Some(lease) = self.leases.remove(&lease) {
            for key in lease.keys {
                self.delete_key(&key);
            }
        }
    }

    fn live_lease(&mut self, lease: i64, now: Instant) -> Option<&mut Lease> {
        self.leases.get_mut(&lease).filter(|l| l.deadline > now)
    }
}

struct Shared {
    state: Mutex<State>,
    /// Latest revision, for watchers and for waking the reaper.
    revision: watch::Sender<u64>,
    reaper: Mutex<Option<JoinHandle<()>>>,
    /// False during a simulated outage.
    reachable: AtomicBool,
}

/// An in-memory registry. Clones share the same data.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A new, empty registry.
    pub fn new() -> Self {
        Self::with_history(DEFAULT_HISTORY)
    }

    /// A registry that keeps only `changes` changes for watchers to resume
    /// from (older resume points get `ResumeLost`, like etcd compaction).
    pub fn with_history(changes: usize) -> Self {
        let (revision, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    records: BTreeMap::new(),
                    leases: HashMap::new(),
                    revision: 0,
                    history: VecDeque::new(),
                    history_cap: changes.max(1),
                }),
                revision,
                reaper: Mutex::new(None),
                reachable: AtomicBool::new(true),
            }),
        }
    }

    /// The store a `memory://[name]` URL names: the process-wide one for no
    /// name, else one per name, shared by every URL with that name.
    pub fn named(name: &str) -> Result<Self> {
        static NAMED: OnceLock<Mutex<HashMap<String, MemoryStore>>> = OnceLock::new();
        if name.is_empty() {
            return Ok(Self::global());
        }
        let mut named =
            NAMED.get_or_init(Default::default).lock().map_err(|_| Error::backend(KIND, "lock poisoned"))?;
        Ok(named.entry(name.to_owned()).or_default().clone())
    }

    /// The store of a `memory://[name]` URL (see [`MemoryStore::named`]).
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url.split_once("://").map(|(_, rest)| rest).ok_or_else(|| Error::invalid("url", "no scheme"))?;
        let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
        crate::options::UrlOptions::from_query(query).finish()?;
        Self::named(name.trim_end_matches('/'))
    }

    /// The process-wide registry that `memory://` URLs share.
    pub fn global() -> Self {
        static GLOBAL: OnceLock<MemoryStore> = OnceLock::new();
        GLOBAL.get_or_init(MemoryStore::new).clone()
    }

    fn check_reachable(&self) -> Result<()> {
        if self.shared.reachable.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Error::unavailable(KIND, "memory store is unreachable (simulated outage)"))
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.check_reachable()?;
        self.shared.state.lock().map_err(|_| Error::backend(KIND, "state lock poisoned"))
    }

    /// Starts (or restarts, after its runtime went away) the task that deletes expired leases.
    fn ensure_reaper(&self) {
        let Ok(mut reaper) = self.shared.reaper.lock() else { return };
        if reaper.as_ref().is_none_or(|h| h.is_finished()) {
            *reaper = Some(tokio::spawn(reap(Arc::downgrade(&self.shared))));
        }
    }
}

/// Deletes the keys of leases whose deadline passed, waking at the next deadline or on any change.
async fn reap(shared: Weak<Shared>) {
    loop {
        let (next, mut changes) = {
            let Some(shared) = shared.upgrade() else { return };
            let now = Instant::now();
            let Ok(mut state) = shared.state.lock() else { return };
            let expired: Vec<i64> = state.leases.iter().filter(|(_, l)| l.deadline <= now).map(|(id, _)| *id).collect();
            for id in expired {
                state.revoke(id);
            }
            let revision = state.revision;
            let next = state.leases.values().map(|l| l.deadline).min();
            drop(state);
            shared.revision.send_if_modified(|r| {
                let changed = *r != revision;
                *r = revision;
                changed
            });
            (next, shared.revision.subscribe())
        };
        changes.mark_unchanged();
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = changes.changed() => {}
                }
            }
            None => {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The embedded backend: `memory://` (the process-wide store) or `memory://name`.
pub const BACKEND: BackendSpec = BackendSpec {
    name: KIND,
    schemes: &["memory"],
    connect: |url| Box::pin(async move { Ok(Arc::new(MemoryStore::from_url(&url)?) as Arc<dyn Store>) }),
};

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn writer(&self, scope: &Scope) -> Result<Arc<dyn StoreWriter>> {
        Ok(Arc::new(MemoryWriter { store: self.clone(), scope: scope.clone() }))
    }

    fn reader(&self, scope: &Scope) -> Result<Arc<dyn StoreReader>> {
        let source = Arc::new(MemoryReader { store: self.clone(), prefix: scope.key_prefix() });
        Ok(Arc::new(ListWatchReader::new(source)))
    }

    fn operator(&self, scope: &Scope) -> Result<Arc<dyn Operator>> {
        Ok(Arc::new(MemoryOperator { store: self.clone(), scope: scope.clone() }))
    }
}

/// Operator marks in the record's JSON (`drained_by_operator`), written
/// under the store's lock: the record as it is now, never a stale copy.
struct MemoryOperator {
    store: MemoryStore,
    scope: Scope,
}

#[async_trait]
impl Operator for MemoryOperator {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn set_drained(&self, app_id: &str, lease_id: i64, drained: bool) -> Result<()> {
        let key = self.scope.record_key(app_id, lease_id);
        let mut state = self.store.lock()?;
        let Some(record) = state.records.get(&key) else {
            return Err(Error::InstanceNotFound { app_id: app_id.to_owned(), lease_id });
        };
        if crate::operator::is_marked(&record.value) == drained {
            return Ok(());
        }
        let value = crate::operator::set_mark(&record.value, drained)?;
        let revision = state.bump(key.clone(), Some(value.clone()));
        state.records.insert(key, Record { value, mod_revision: revision });
        drop(state);
        self.store.shared.revision.send_replace(revision);
        Ok(())
    }
}

struct MemoryWriter {
    store: MemoryStore,
    scope: Scope,
}

impl MemoryWriter {
    fn key(&self, node: &ServiceNode) -> String {
        self.scope.record_key(&node.meta.app_id, node.lease_id)
    }
}

#[async_trait]
impl StoreWriter for MemoryWriter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn grant(&self, ttl: Duration) -> Result<i64> {
        let id = crate::store::next_instance_id();
        self.store.lock()?.leases.insert(id, Lease { deadline: Instant::now() + ttl, keys: Vec::new() });
        self.store.ensure_reaper();
        // Wake the reaper so it sees the new deadline.
        self.store.shared.revision.send_modify(|_| {});
        Ok(id)
    }

    async fn put(&self, node: &ServiceNode, _ttl: Duration) -> Result<()> {
        let mut value = node.to_json()?;
        if value.len() > MAX_RECORD_BYTES {
            return Err(Error::TooLarge { what: "node JSON".into(), size: value.len(), limit: MAX_RECORD_BYTES });
        }
        let key = self.key(node);
        let mut state = self.store.lock()?;
        // An operator's mark on the record stays (see `crate::operator`).
        if !node.drained_by_operator && state.records.get(&key).is_some_and(|r| crate::operator::is_marked(&r.value)) {
            value = ServiceNode { drained_by_operator: true, ..node.clone() }.to_json()?;
        }
        let lease = state.live_lease(node.lease_id, Instant::now()).ok_or(Error::LeaseExpired { backend: KIND })?;
        if !lease.keys.contains(&key) {
            lease.keys.push(key.clone());
        }
        let revision = state.bump(key.clone(), Some(value.clone()));
        state.records.insert(key, Record { value, mod_revision: revision });
        drop(state);
        self.store.shared.revision.send_replace(revision);
        Ok(())
    }

    async fn renew(&self, node: &ServiceNode, ttl: Duration) -> Result<()> {
        let mut state = self.store.lock()?;
        let lease = state.live_lease(node.lease_id, Instant::now()).ok_or(Error::LeaseExpired { backend: KIND })?;
        lease.deadline = Instant::now() + ttl;
        drop(state);
        self.store.shared.revision.send_modify(|_| {});
        Ok(())
    }

    async fn remove(&self, node: &ServiceNode) -> Result<()> {
        let mut state = self.store.lock()?;
        let key = self.key(node);
        state.delete_key(&key);
        state.revoke(node.lease_id);
        let revision = state.revision;
        drop(state);
        self.store.shared.revision.send_replace(revision);
        Ok(())
    }
}

struct MemoryReader {
    store: MemoryStore,
    prefix: String,
}

impl MemoryReader {
    fn record(key: &str, value: &str, revision: u64) -> RawRecord {
        RawRecord::new(key, value).with_stamp(revision.to_string())
    }
}

#[async_trait]
impl ListWatch for MemoryReader {
    fn kind(&self) -> &'static str {
        KIND
    }

    type Resume = u64;

    async fn list(&self) -> Result<Listing<u64>> {
        let state = self.store.lock()?;
        let records = state
            .records
            .range(self.prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&self.prefix))
            .map(|(k, r)| Self::record(k, &r.value, r.mod_revision))
            .collect();
        Ok(Listing::new(records, state.revision))
    }

    async fn watch(&self, revision: u64) -> Result<BoxStream<'static, Result<WatchUpdate<u64>>>> {
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        let notify = store.shared.revision.subscribe();
        let stream = futures::stream::unfold((store, prefix, notify, revision, false), |state| async move {
            let (store, prefix, mut notify, mut cursor, failed) = state;
            if failed {
                return None;
            }
            loop {
                if let Err(e) = store.check_reachable() {
                    return Some((Err(e), (store, prefix, notify, cursor, true)));
                }
                let collected = {
                    let Ok(state) = store.shared.state.lock() else {
                        return Some((
                            Err(Error::backend(KIND, "state lock poisoned")),
                            (store, prefix, notify, cursor, true),
                        ));
                    };
                    let oldest = state.history.front().map_or(state.revision + 1, |h| h.revision);
                    if cursor < state.revision && oldest > cursor + 1 {
                        let lost = Error::ResumeLost { backend: KIND, revision: cursor };
                        drop(state);
                        return Some((Err(lost), (store, prefix, notify, cursor, true)));
                    }
                    let changes: Vec<Change> = state
                        .history
                        .iter()
                        .filter(|h| h.revision > cursor && h.key.starts_with(&prefix))
                        .map(|h| match &h.value {
                            Some(v) => Change::Upsert(MemoryReader::record(&h.key, v, h.revision)),
                            None => Change::Delete { key: h.key.clone() },
                        })
                        .collect();
                    let latest = state.revision;
                    (changes, latest)
                };
                let (changes, latest) = collected;
                let advanced = latest > cursor;
                cursor = latest;
                if !changes.is_empty() {
                    let update = WatchUpdate::Changes { changes, resume: cursor };
                    return Some((Ok(update), (store, prefix, notify, cursor, false)));
                }
                if !advanced && notify.changed().await.is_err() {
                    return None;
                }
            }
        });
        Ok(stream.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Discoverer, Discovery, Meta, Register, Registrar, ServiceConf};

    fn conf() -> ServiceConf {
        ServiceConf::default().with_ttl_floor(Duration::from_secs(2)).with_ttl(Duration::from_secs(2))
    }

    fn node(method: &str) -> ServiceNode {
        crate::GrpcServices::new().service("t.S", [method]).expect("valid").into_node()
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expires_without_renewal() {
        let store = MemoryStore::new();
        let registrar = Registrar::new(&store, Meta::new("dev", "app", "v1"), conf()).expect("valid");
        let discoverer = Discoverer::new(&store, "dev", conf()).expect("valid");
        discoverer.watcher().await.expect("ready");
        registrar.install(node("M")).await.expect("installed");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(discoverer.get_service("/t.S/M").expect("found").len(), 1);
        // No sustain_lease: the lease runs out after one TTL.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(matches!(discoverer.get_service("/t.S/M"), Err(Error::MethodNotFound { .. })));
    }

    #[tokio::test]
    async fn oversized_node_is_refused() {
        let store = MemoryStore::new();
        let registrar = Registrar::new(&store, Meta::new("dev", "app", "v1"), conf()).expect("valid");
        let methods: Vec<String> = (0..100_000).map(|i| format!("Method{i}")).collect();
        let big = crate::GrpcServices::new().service("t.S", &methods).expect("valid").into_node();
        let err = registrar.install(big).await.expect_err("too large");
        assert!(matches!(err, Error::TooLarge { limit: MAX_RECORD_BYTES, .. }), "{err:?}");
    }

    #[tokio::test]
    async fn watch_from_a_compacted_revision_is_resume_lost() {
        let store = MemoryStore::with_history(2);
        for i in 0..5 {
            store.put_raw(&format!("default/dev/a/{i}"), "{}").expect("put");
        }
        let reader = MemoryReader { store, prefix: "default/dev/".into() };
        let mut stream = reader.watch(1).await.expect("opened");
        let first = stream.next().await.expect("an item");
        assert!(matches!(first, Err(Error::ResumeLost { revision: 1, .. })), "{first:?}");
    }
}
