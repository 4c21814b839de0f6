//! The discovery index: method → nodes and app → nodes, newest registration
//! first.
//!
//! [`ServiceIndex`] is an immutable snapshot; readers load it from an
//! `ArcSwap` without locks and get [`Nodes`] — a shared slice of shared
//! nodes — without copying node data. [`IndexWriter`] is owned by the one
//! task that applies changes; it recomputes only the apps and methods a batch
//! touched and publishes a new snapshot per batch.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Deref;
use std::sync::Arc;

use crate::ServiceNode;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// One app's nodes, newest first, keyed by (recency, record key).
type AppNodes = BTreeMap<(Reverse<Recency>, Arc<str>), Arc<ServiceNode>>;

/// Nodes answered by discovery, newest registration first. Cloning is one
/// reference-count increment; the nodes themselves are shared.
#[derive(Clone, Debug, Default)]
pub struct Nodes(Arc<[Arc<ServiceNode>]>);

impl Deref for Nodes {
    type Target = [Arc<ServiceNode>];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Nodes {
    fn from_vec(nodes: Vec<Arc<ServiceNode>>) -> Self {
        Nodes(nodes.into())
    }

    /// True when both share the same allocation (no change between snapshots).
    pub fn ptr_eq(&self, other: &Nodes) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// How recent a registration is; larger is newer.
///
/// `seen_batch` is the discoverer's own observation order (the batch in which
/// it first saw the instance; the initial listing is batch 0), so ordering
/// never depends on writers' clocks for instances that appear while it runs.
/// Within one batch (a fresh listing) the writer's `registered_at_ms`, then the
/// lease id, break ties.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Recency {
    /// Batch in which the discoverer first observed the instance.
    pub seen_batch: u64,
    /// The writer's `registered_at_ms` (0 when absent).
    pub registered_at_ms: i64,
    /// The node's lease id.
    pub lease_id: i64,
}

impl Recency {
    /// Recency of `node` first seen in `seen_batch`.
    pub fn of(node: &ServiceNode, seen_batch: u64) -> Self {
        Self { seen_batch, registered_at_ms: node.registered_at_ms.unwrap_or(0), lease_id: node.lease_id }
    }
}

/// An immutable snapshot of everything discovery knows.
#[derive(Debug, Default)]
pub struct ServiceIndex {
    by_method: FastMap<Arc<str>, Nodes>,
    by_app: FastMap<Arc<str>, Nodes>,
    node_count: usize,
}

impl ServiceIndex {
    /// Nodes serving `method`, newest first (all apps that serve it).
    #[inline]
    pub fn by_method(&self, method: &str) -> Option<&Nodes> {
        self.by_method.get(method)
    }

    /// Nodes of `app_id`, newest first.
    #[inline]
    pub fn by_app(&self, app_id: &str) -> Option<&Nodes> {
        self.by_app.get(app_id)
    }

    /// App ids, sorted.
    pub fn apps(&self) -> Vec<Arc<str>> {
        let mut apps: Vec<Arc<str>> = self.by_app.keys().cloned().collect();
        apps.sort();
        apps
    }

    /// Methods, sorted.
    pub fn methods(&self) -> Vec<Arc<str>> {
        let mut methods: Vec<Arc<str>> = self.by_method.keys().cloned().collect();
        methods.sort();
        methods
    }

    /// Every node, grouped by app (apps sorted), newest first within an app.
    pub fn all_nodes(&self) -> Vec<Arc<ServiceNode>> {
        let mut out = Vec::with_capacity(self.node_count);
        for app in self.apps() {
            if let Some(nodes) = self.by_app.get(&app) {
                out.extend(nodes.iter().cloned());
            }
        }
        out
    }

    /// Number of live nodes.
    pub fn len(&self) -> usize {
        self.node_count
    }

    /// True when no node is live.
    pub fn is_empty(&self) -> bool {
        self.node_count == 0
    }
}

struct Slot {
    app: Arc<str>,
    recency: Recency,
    node: Arc<ServiceNode>,
}

/// The single writer of the index. Apply upserts and removals by record key,
/// then [`publish`](Self::publish) a snapshot.
#[derive(Default)]
pub struct IndexWriter {
    slots: FastMap<Arc<str>, Slot>,
    /// app → (newest first) → node
    apps: FastMap<Arc<str>, AppNodes>,
    /// app → methods it serves (union over its nodes), as last published
    app_methods: FastMap<Arc<str>, BTreeSet<Arc<str>>>,
    /// method → apps serving it (sorted; almost always one, so a Vec, not a tree)
    method_apps: FastMap<Arc<str>, Vec<Arc<str>>>,
    dirty_apps: HashSet<Arc<str>>,
    current: Arc<ServiceIndex>,
}

impl IndexWriter {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// The node stored under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Arc<ServiceNode>> {
        self.slots.get(key).map(|s| &s.node)
    }

    /// The recency the node under `key` was given.
    pub fn recency(&self, key: &str) -> Option<Recency> {
        self.slots.get(key).map(|s| s.recency)
    }

    /// Record keys currently in the index.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.slots.keys()
    }

    /// Inserts or replaces the node under `key` with the given recency, and
    /// returns it as stored. Its `methods` map is shared with another node of
    /// the same app when they are equal.
    pub fn upsert(&mut self, key: &str, mut node: ServiceNode, recency: Recency) -> Arc<ServiceNode> {
        self.remove(key);
        if let Some(same) = self
            .apps
            .get(node.meta.app_id.as_str())
            .and_then(|nodes| nodes.values().find(|n| n.methods == node.methods))
        {
            node.methods = same.methods.clone();
        }
        let node = Arc::new(node);
        let key: Arc<str> = Arc::from(key);
        let app: Arc<str> = Arc::from(node.meta.app_id.as_str());
        self.apps.entry(Arc::clone(&app)).or_default().insert((Reverse(recency), Arc::clone(&key)), Arc::clone(&node));
        self.dirty_apps.insert(Arc::clone(&app));
        self.slots.insert(key, Slot { app, recency, node: Arc::clone(&node) });
        node
    }

    /// Removes the node under `key`, returning it.
    pub fn remove(&mut self, key: &str) -> Option<Arc<ServiceNode>> {
        let (key, slot) = self.slots.remove_entry(key)?;
        if let Some(nodes) = self.apps.get_mut(&slot.app) {
            nodes.remove(&(Reverse(slot.recency), key));
            if nodes.is_empty() {
                self.apps.remove(&slot.app);
            }
        }
        self.dirty_apps.insert(slot.app);
        Some(slot.node)
    }

    /// The latest published snapshot.
    pub fn current(&self) -> Arc<ServiceIndex> {
        Arc::clone(&self.current)
    }

    /// Publishes a snapshot with every change since the last one, or `None`
    /// when nothing changed. Cost: a shallow copy of the maps plus the
    /// touched apps and their methods.
    pub fn publish(&mut self) -> Option<Arc<ServiceIndex>> {
        if self.dirty_apps.is_empty() {
            return None;
        }
        let mut by_app = self.current.by_app.clone();
        let mut by_method = self.current.by_method.clone();
        let mut dirty_methods: BTreeSet<Arc<str>> = BTreeSet::new();
        for app in std::mem::take(&mut self.dirty_apps) {
            let old_methods = self.app_methods.remove(&app).unwrap_or_default();
            let new_methods: BTreeSet<Arc<str>> = match self.apps.get(&app) {
                Some(nodes) => {
                    by_app.insert(Arc::clone(&app), Nodes::from_vec(nodes.values().cloned().collect()));
                    let mut set = BTreeSet::new();
                    for node in nodes.values() {
                        for m in node.served_methods() {
                            if !set.contains(m) {
                                set.insert(Arc::from(m));
                            }
                        }
                    }
                    set
                }
                None => {
                    by_app.remove(&app);
                    BTreeSet::new()
                }
            };
            for m in old_methods.difference(&new_methods) {
                if let Some(apps) = self.method_apps.get_mut(m) {
                    if let Ok(at) = apps.binary_search(&app) {
                        apps.remove(at);
                    }
                    if apps.is_empty() {
                        self.method_apps.remove(m);
                    }
                }
            }
            for m in &new_methods {
                let apps = self.method_apps.entry(Arc::clone(m)).or_default();
                if let Err(at) = apps.binary_search(&app) {
                    apps.insert(at, Arc::clone(&app));
                }
            }
            dirty_methods.extend(old_methods);
            dirty_methods.extend(new_methods.iter().cloned());
            if !new_methods.is_empty() {
                self.app_methods.insert(app, new_methods);
            }
        }
        for method in dirty_methods {
            match self.method_apps.get(&method) {
                None => {
                    by_method.remove(&method);
                }
                Some(apps) => {
                    let nodes = self.providers(&method, apps, &by_app);
                    by_method.insert(method, nodes);
                }
            }
        }
        let node_count = self.slots.len();
        self.current = Arc::new(ServiceIndex { by_method, by_app, node_count });
        Some(Arc::clone(&self.current))
    }

    /// Nodes serving `method` across `apps`, newest first; shares the app's
    /// list when one app serves it on every node (the common case).
    fn providers(&self, method: &str, apps: &[Arc<str>], by_app: &FastMap<Arc<str>, Nodes>) -> Nodes {
        if apps.len() == 1
            && let Some(app_nodes) = apps.first().and_then(|a| by_app.get(a))
            && app_nodes.iter().all(|n| n.serves(method))
        {
            return app_nodes.clone();
        }
        let mut picked: Vec<(Reverse<Recency>, Arc<ServiceNode>)> = Vec::new();
        for app in apps {
            if let Some(nodes) = self.apps.get(app) {
                for ((recency, _), node) in nodes {
                    if node.serves(method) {
                        picked.push((*recency, Arc::clone(node)));
                    }
                }
            }
        }
        picked.sort_by_key(|a| a.0);
        Nodes::from_vec(picked.into_iter().map(|(_, n)| n).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Meta;

    fn node(app: &str, lease: i64, methods: &[&str]) -> ServiceNode {
        ServiceNode {
            lease_id: lease,
            meta: Meta::new("prod", app, "v1"),
            methods: methods.iter().map(|m| (m.to_string(), true)).collect(),
            ..Default::default()
        }
    }

    fn leases(nodes: Option<&Nodes>) -> Vec<i64> {
        nodes.map(|n| n.iter().map(|n| n.lease_id).collect()).unwrap_or_default()
    }

    #[test]
    fn newest_registration_first() {
        let mut w = IndexWriter::new();
        w.upsert("a/1", node("a", 1, &["/s.S/M"]), Recency { seen_batch: 1, ..Default::default() });
        w.upsert("a/2", node("a", 2, &["/s.S/M"]), Recency { seen_batch: 2, ..Default::default() });
        let idx = w.publish().expect("changed");
        assert_eq!(leases(idx.by_method("/s.S/M")), [2, 1]);
        assert_eq!(leases(idx.by_app("a")), [2, 1]);
        assert_eq!(idx.len(), 2);
    }

    #[test]
    fn method_follows_nodes() {
        let mut w = IndexWriter::new();
        w.upsert("a/1", node("a", 1, &["/s.S/Old"]), Recency::default());
        w.publish();
        w.upsert("a/1", node("a", 1, &["/s.S/New"]), Recency::default());
        let idx = w.publish().expect("changed");
        assert!(idx.by_method("/s.S/Old").is_none());
        assert_eq!(leases(idx.by_method("/s.S/New")), [1]);
        w.remove("a/1");
        let idx = w.publish().expect("changed");
        assert!(idx.by_method("/s.S/New").is_none());
        assert!(idx.by_app("a").is_none());
        assert!(idx.is_empty());
    }

    #[test]
    fn only_nodes_that_serve_a_method_are_returned() {
        let mut w = IndexWriter::new();
        w.upsert("a/1", node("a", 1, &["/s.S/M", "/s.S/Extra"]), Recency { seen_batch: 1, ..Default::default() });
        w.upsert("a/2", node("a", 2, &["/s.S/M"]), Recency { seen_batch: 2, ..Default::default() });
        let idx = w.publish().expect("changed");
        assert_eq!(leases(idx.by_method("/s.S/Extra")), [1]);
        assert_eq!(leases(idx.by_method("/s.S/M")), [2, 1]);
        // The common case shares the app's list instead of allocating a copy.
        assert!(idx.by_method("/s.S/M").expect("present").ptr_eq(idx.by_app("a").expect("present")));
    }

    #[test]
    fn a_method_served_by_two_apps_lists_both_newest_first() {
        let mut w = IndexWriter::new();
        w.upsert("a/1", node("a", 1, &["/s.S/M"]), Recency { seen_batch: 1, ..Default::default() });
        w.upsert("b/2", node("b", 2, &["/s.S/M"]), Recency { seen_batch: 2, ..Default::default() });
        let idx = w.publish().expect("changed");
        assert_eq!(leases(idx.by_method("/s.S/M")), [2, 1]);
        assert_eq!(idx.apps().len(), 2);
    }

    #[test]
    fn equal_method_sets_of_one_app_are_stored_once() {
        let mut w = IndexWriter::new();
        let a = w.upsert("a/1", node("a", 1, &["/s.S/M", "/s.S/N"]), Recency::default());
        let b = w.upsert("a/2", node("a", 2, &["/s.S/M", "/s.S/N"]), Recency::default());
        let c = w.upsert("b/3", node("b", 3, &["/s.S/M", "/s.S/N"]), Recency::default());
        assert!(a.methods.ptr_eq(&b.methods));
        assert!(!a.methods.ptr_eq(&c.methods), "only within one app");
    }

    #[test]
    fn untouched_apps_keep_their_lists() {
        let mut w = IndexWriter::new();
        w.upsert("a/1", node("a", 1, &["/a.A/M"]), Recency::default());
        w.upsert("b/1", node("b", 1, &["/b.B/M"]), Recency::default());
        let before = w.publish().expect("changed");
        w.upsert("b/2", node("b", 2, &["/b.B/M"]), Recency::default());
        let after = w.publish().expect("changed");
        assert!(before.by_app("a").expect("a").ptr_eq(after.by_app("a").expect("a")));
        assert!(w.publish().is_none(), "nothing changed since");
    }
}
