//! The discovery index: method → nodes and app → nodes, serving nodes
//! newest registration first, then draining ones newest first.
//!
//! [`ServiceIndex`] is an immutable snapshot; readers load it from an
//! `ArcSwap` without locks and get [`Nodes`] — a shared slice of shared
//! nodes — without copying node data. A lookup is one probe of a flat hash
//! map. [`IndexWriter`] is owned by the one task that applies changes and
//! publishes a new snapshot per batch.
//!
//! # Publishing in proportion to the change
//!
//! Copying the two maps of a snapshot to publish the next one costs time in
//! proportion to the whole fleet. Instead the writer keeps two snapshots:
//! the current one and the one it replaced. Once readers have let go of the
//! replaced one (the `ArcSwap` no longer points at it and `Arc::try_unwrap`
//! proves nobody else holds it), the writer brings it up to date in place —
//! the entries the previous batch changed, then the entries this batch
//! changes — and publishes it. So a batch costs a few hash-map writes per
//! changed entry, whatever the size of the index, and lookups stay as fast
//! as a plain hash map: no persistent structure sits on the read path. When
//! someone still holds the replaced snapshot (a long-lived
//! [`Discovery::snapshot`](crate::Discovery::snapshot)), the writer copies
//! the current one instead, as it always did.
//!
//! Which entries a batch changes is computed from the writer's own state per
//! changed app: the app's list, and its methods. A method served by every
//! node of one app (the usual case) shares that app's list; a method served
//! by some nodes of an app (a rolling upgrade) or by several apps gets a list
//! of its own.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use crate::ServiceNode;
use crate::model::Methods;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Nodes answered by discovery: serving nodes newest registration first,
/// then draining ones ([`ServiceNode::draining`]) newest first. Cloning is
/// one reference-count increment; the nodes themselves are shared.
///
/// [`serving`](Nodes::serving) is the serving part as `Nodes` of its own
/// (the same allocation, a shorter view): what
/// [`Discovery::get_service`](crate::Discovery::get_service) answers by
/// default.
#[derive(Clone, Debug, Default)]
pub struct Nodes {
    all: Arc<[Arc<ServiceNode>]>,
    /// Nodes in this view: `all[..len]` (`u32`: the map entries stay 24 bytes).
    len: u32,
    /// Serving nodes: `all[..serving]` (`serving <= len`).
    serving: u32,
}

impl Deref for Nodes {
    type Target = [Arc<ServiceNode>];
    #[inline]
    fn deref(&self) -> &Self::Target {
        self.all.get(..self.len as usize).unwrap_or_default()
    }
}

impl Nodes {
    /// `nodes` ordered serving first (the index keeps them so).
    fn from_vec(nodes: Vec<Arc<ServiceNode>>) -> Self {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let serving = count(nodes.partition_point(|n| !n.draining));
        let len = count(nodes.len());
        Nodes { all: nodes.into(), len, serving }
    }

    /// The serving nodes only (newest first), without copying: the same
    /// allocation, a shorter view.
    #[inline]
    pub fn serving(&self) -> Nodes {
        Nodes { all: Arc::clone(&self.all), len: self.serving, serving: self.serving }
    }

    /// How many of these nodes are serving (the rest, after them, are draining).
    #[inline]
    pub fn serving_count(&self) -> usize {
        self.serving as usize
    }

    /// The draining nodes (after the serving ones), newest first.
    pub fn draining(&self) -> &[Arc<ServiceNode>] {
        self.get(self.serving as usize..).unwrap_or_default()
    }

    /// True when both are the same view of the same allocation (no change
    /// between snapshots).
    pub fn ptr_eq(&self, other: &Nodes) -> bool {
        Arc::ptr_eq(&self.all, &other.all) && self.len == other.len
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
    /// A copy of the maps (entries shared): the writer's fallback.
    fn copy(&self) -> Self {
        Self { by_method: self.by_method.clone(), by_app: self.by_app.clone(), node_count: self.node_count }
    }

    /// Nodes serving `method` (all apps that serve it): serving ones newest
    /// first, then draining ones ([`Nodes::serving`] is the first part).
    #[inline]
    pub fn by_method(&self, method: &str) -> Option<&Nodes> {
        self.by_method.get(method)
    }

    /// Nodes of `app_id`: serving ones newest first, then draining ones.
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

    /// Every node, grouped by app (apps sorted), serving nodes newest first
    /// then draining ones within an app.
    pub fn all_nodes(&self) -> Vec<Arc<ServiceNode>> {
        let mut apps: Vec<(&Arc<str>, &Nodes)> = self.by_app.iter().collect();
        apps.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = Vec::with_capacity(self.node_count);
        for (_, nodes) in apps {
            out.extend(nodes.iter().cloned());
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

/// Entries one batch wrote (`None`: removed), to replay on the other snapshot.
#[derive(Default)]
struct Changes {
    methods: Vec<(Arc<str>, Option<Nodes>)>,
    apps: Vec<(Arc<str>, Option<Nodes>)>,
}

fn write(map: &mut FastMap<Arc<str>, Nodes>, key: &Arc<str>, value: &Option<Nodes>) {
    match value {
        Some(nodes) => match map.get_mut(&**key) {
            Some(slot) => *slot = nodes.clone(),
            None => {
                map.insert(Arc::clone(key), nodes.clone());
            }
        },
        None => {
            map.remove(&**key);
        }
    }
}

impl Changes {
    fn replay(&self, index: &mut ServiceIndex) {
        for (key, value) in &self.apps {
            write(&mut index.by_app, key, value);
        }
        for (key, value) in &self.methods {
            write(&mut index.by_method, key, value);
        }
    }
}

/// A record key as [`IndexWriter::upsert`] takes it: text, or the `Arc<str>`
/// the caller already holds, which the index then shares instead of copying.
pub trait RecordKey {
    /// The key's text.
    fn as_str(&self) -> &str;
    /// The key as an `Arc<str>` (the same allocation when it is one).
    fn into_arc(self) -> Arc<str>;
}

impl RecordKey for &str {
    fn as_str(&self) -> &str {
        self
    }
    fn into_arc(self) -> Arc<str> {
        Arc::from(self)
    }
}

impl RecordKey for &String {
    fn as_str(&self) -> &str {
        self
    }
    fn into_arc(self) -> Arc<str> {
        Arc::from(self.as_str())
    }
}

impl RecordKey for Arc<str> {
    fn as_str(&self) -> &str {
        self
    }
    fn into_arc(self) -> Arc<str> {
        self
    }
}

impl RecordKey for &Arc<str> {
    fn as_str(&self) -> &str {
        self
    }
    fn into_arc(self) -> Arc<str> {
        Arc::clone(self)
    }
}

struct Slot {
    recency: Recency,
    node: Arc<ServiceNode>,
}

#[derive(Default)]
struct App {
    /// Record keys, newest first: ordered by (`Reverse(recency)`, key).
    keys: Vec<Arc<str>>,
    /// The distinct method sets of its nodes, as last published.
    published: Vec<Methods>,
    /// Listed in `IndexWriter::dirty`.
    dirty: bool,
}

/// Where a node goes in a list: serving before draining, then newest first.
type Rank = (bool, Reverse<Recency>);

fn rank(node: &ServiceNode, recency: Recency) -> Rank {
    (node.draining, Reverse(recency))
}

/// Where `key` with `rank` is (`Ok`) or goes (`Err`) in an app's keys.
fn position(slots: &FastMap<Arc<str>, Slot>, keys: &[Arc<str>], at: Rank, key: &str) -> Result<usize, usize> {
    keys.binary_search_by(|k| {
        let r = if **k == *key { at } else { slots.get(k).map_or(at, |s| rank(&s.node, s.recency)) };
        (r, &**k).cmp(&(at, key))
    })
}

fn serves(methods: &Methods, method: &str) -> bool {
    methods.get(method).copied().unwrap_or(false)
}

/// The single writer of the index. Apply upserts and removals by record key,
/// then [`publish`](Self::publish) a snapshot.
#[derive(Default)]
pub struct IndexWriter {
    /// record key → node and its place in the order
    slots: FastMap<Arc<str>, Slot>,
    /// app id → its nodes' order and published methods
    apps: FastMap<Arc<str>, App>,
    /// Apps changed since the last publish.
    dirty: Vec<Arc<str>>,
    current: Arc<ServiceIndex>,
    /// The snapshot `current` replaced, and the changes it lacks.
    spare: Option<(Arc<ServiceIndex>, Changes)>,
    /// Publishes that recycled the spare (tests check the fast path runs).
    #[cfg(test)]
    recycled: usize,
}

impl IndexWriter {
    // Used by the unit tests and, through the `testing` feature, the bench.
    #[cfg(any(test, feature = "testing"))]
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    // Used by the unit tests and, through the `testing` feature, the bench.
    #[cfg(any(test, feature = "testing"))]
    /// The node stored under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Arc<ServiceNode>> {
        self.slots.get(key).map(|s| &s.node)
    }

    /// The recency the node under `key` was given.
    pub fn recency(&self, key: &str) -> Option<Recency> {
        self.slots.get(key).map(|s| s.recency)
    }

    // Used by the unit tests and, through the `testing` feature, the bench.
    #[cfg(any(test, feature = "testing"))]
    /// Record keys currently in the index.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.slots.keys()
    }

    /// Inserts or replaces the node under `key` with the given recency, and
    /// returns it as stored. Its `methods` map is shared with another node of
    /// the same app when they are equal. A `key` given as `&Arc<str>` is
    /// shared, not copied.
    pub fn upsert(&mut self, key: impl RecordKey, mut node: ServiceNode, recency: Recency) -> Arc<ServiceNode> {
        let key = match self.remove_entry(key.as_str()) {
            Some((stored, _)) => stored,
            None => key.into_arc(),
        };
        if let Some(app) = self.apps.get(node.meta.app_id.as_str()) {
            // Compare each distinct set once (an app's nodes usually share one).
            let mut compared: Vec<&Methods> = Vec::new();
            for k in &app.keys {
                let Some(slot) = self.slots.get(k) else { continue };
                let methods = &slot.node.methods;
                if compared.iter().any(|c| c.ptr_eq(methods)) {
                    continue;
                }
                if *methods == node.methods {
                    node.methods = methods.clone();
                    break;
                }
                compared.push(methods);
            }
        }
        let node = Arc::new(node);
        let id: Arc<str> = match self.apps.get_key_value(node.meta.app_id.as_str()) {
            Some((id, _)) => Arc::clone(id),
            None => {
                let id: Arc<str> = Arc::from(node.meta.app_id.as_str());
                self.apps.insert(Arc::clone(&id), App::default());
                id
            }
        };
        if let Some(app) = self.apps.get_mut(&id) {
            let (Ok(at) | Err(at)) = position(&self.slots, &app.keys, rank(&node, recency), &key);
            app.keys.insert(at, Arc::clone(&key));
            if !app.dirty {
                app.dirty = true;
                self.dirty.push(id);
            }
        }
        self.slots.insert(key, Slot { recency, node: Arc::clone(&node) });
        node
    }

    /// Removes the node under `key`, returning it.
    pub fn remove(&mut self, key: &str) -> Option<Arc<ServiceNode>> {
        self.remove_entry(key).map(|(_, slot)| slot.node)
    }

    fn remove_entry(&mut self, key: &str) -> Option<(Arc<str>, Slot)> {
        let slot = self.slots.get(key)?;
        if let Some((id, _)) = self.apps.get_key_value(slot.node.meta.app_id.as_str()) {
            let id = Arc::clone(id);
            if let Some(app) = self.apps.get_mut(&id) {
                let at = match position(&self.slots, &app.keys, rank(&slot.node, slot.recency), key) {
                    Ok(at) => Some(at),
                    Err(_) => app.keys.iter().position(|k| **k == *key),
                };
                if let Some(at) = at {
                    app.keys.remove(at);
                }
                if !app.dirty {
                    app.dirty = true;
                    self.dirty.push(id);
                }
            }
        }
        self.slots.remove_entry(key)
    }

    // Used by the unit tests and, through the `testing` feature, the bench.
    #[cfg(any(test, feature = "testing"))]
    /// The latest published snapshot.
    pub fn current(&self) -> Arc<ServiceIndex> {
        Arc::clone(&self.current)
    }

    /// Publishes a snapshot with every change since the last one, or `None`
    /// when nothing changed.
    ///
    /// Cost: the entries this batch and the previous one changed — for each
    /// changed app, its list and the entries of the methods it serves or
    /// served — when the snapshot published before the current one is no
    /// longer held by anyone (the usual case: it is recycled in place);
    /// otherwise a copy of the current snapshot's maps first.
    pub fn publish(&mut self) -> Option<Arc<ServiceIndex>> {
        if self.dirty.is_empty() {
            return None;
        }
        let recycled = self.spare.take().and_then(|(spare, behind)| {
            Arc::try_unwrap(spare).ok().map(|mut index| {
                behind.replay(&mut index);
                index
            })
        });
        #[cfg(test)]
        if recycled.is_some() {
            self.recycled += 1;
        }
        let mut next = recycled.unwrap_or_else(|| self.current.copy());
        let mut changes = Changes::default();
        for id in std::mem::take(&mut self.dirty) {
            self.publish_app(&id, &mut next, &mut changes);
        }
        next.node_count = self.slots.len();
        let next = Arc::new(next);
        let replaced = std::mem::replace(&mut self.current, Arc::clone(&next));
        self.spare = Some((replaced, changes));
        Some(next)
    }

    /// Writes the entries of app `id` into `next`: its list, and the methods
    /// it serves now or served at the last publish.
    fn publish_app(&mut self, id: &Arc<str>, next: &mut ServiceIndex, changes: &mut Changes) {
        let Some(app) = self.apps.get_mut(id) else { return };
        app.dirty = false;
        let old_sets = std::mem::take(&mut app.published);
        let mut list = Vec::with_capacity(app.keys.len());
        let mut sets: Vec<(Methods, usize)> = Vec::new();
        for k in &app.keys {
            let Some(slot) = self.slots.get(k) else { continue };
            list.push(Arc::clone(&slot.node));
            let methods = &slot.node.methods;
            match sets.iter_mut().find(|(s, _)| s.ptr_eq(methods) || s == methods) {
                Some((_, n)) => *n += 1,
                None => sets.push((methods.clone(), 1)),
            }
        }
        app.published = sets.iter().map(|(s, _)| s.clone()).collect();
        if app.keys.capacity() > 2 * app.keys.len() + 4 {
            app.keys.shrink_to_fit();
        }
        let total = list.len();
        let list = (total > 0).then(|| Nodes::from_vec(list));
        let old_list = self.current.by_app.get(&**id);
        write(&mut next.by_app, id, &list);
        changes.apps.push((Arc::clone(id), list.clone()));
        // Every method served before or now, each once.
        let all: Vec<&Methods> = old_sets.iter().chain(sets.iter().map(|(s, _)| s)).collect();
        for (i, set) in all.iter().enumerate() {
            let earlier = &all[..i];
            if earlier.iter().any(|e| e.ptr_eq(set)) {
                continue;
            }
            for (method, on) in set.iter() {
                if !*on || earlier.iter().any(|e| serves(e, method)) {
                    continue;
                }
                let here = sets.iter().filter(|(s, _)| serves(s, method)).map(|(_, n)| n).sum();
                let app = Served { id, here, total, list: list.as_ref(), old_list };
                self.update_method(method, &app, next, changes);
            }
        }
        if total == 0 {
            self.apps.remove(id);
        }
    }

    /// Brings the entry of `method` in `next` up to date after a change of
    /// `app`.
    fn update_method(&self, method: &str, app: &Served<'_>, next: &mut ServiceIndex, changes: &mut Changes) {
        let current = next.by_method.get_key_value(method);
        let key = current.map_or_else(|| Arc::from(method), |(k, _)| Arc::clone(k));
        // Other apps serving it, as of their last publish: none when the
        // entry is this app's previous list, else those its nodes belong to.
        let mut others: Vec<Arc<str>> = Vec::new();
        if let Some((_, entry)) = current
            && !app.old_list.is_some_and(|old| old.ptr_eq(entry))
        {
            for node in entry.iter() {
                let other = node.meta.app_id.as_str();
                if other != &**app.id
                    && !others.iter().any(|o| &**o == other)
                    && let Some((other, _)) = self.apps.get_key_value(other)
                {
                    others.push(Arc::clone(other));
                }
            }
        }
        let value = if others.is_empty() {
            match app.here {
                0 => None,
                here if here == app.total => app.list.cloned(),
                _ => Some(self.nodes_serving(method, std::slice::from_ref(app.id))),
            }
        } else if app.here == 0 && others.len() == 1 {
            let other = &others[0];
            let (serving, of) = self.apps.get(other).map_or((0, 0), |a| {
                let serving = a
                    .keys
                    .iter()
                    .filter(|k| self.slots.get(*k).is_some_and(|s| serves(&s.node.methods, method)))
                    .count();
                (serving, a.keys.len())
            });
            match serving {
                0 => None,
                // All of them: share that app's list as it stands in `next`
                // (if it changes later in this batch, its own update revisits this entry).
                _ if serving == of => next.by_app.get(&**other).cloned(),
                _ => Some(self.nodes_serving(method, &others)),
            }
        } else {
            if app.here > 0 {
                others.push(Arc::clone(app.id));
            }
            Some(self.nodes_serving(method, &others))
        };
        let unchanged = match (&value, current) {
            (Some(new), Some((_, old))) => new.ptr_eq(old),
            (None, None) => true,
            _ => false,
        };
        if !unchanged {
            write(&mut next.by_method, &key, &value);
            changes.methods.push((key, value));
        }
    }

    /// Nodes of `apps` serving `method`, serving before draining, newest
    /// first (apps in id order among equally recent nodes).
    fn nodes_serving(&self, method: &str, apps: &[Arc<str>]) -> Nodes {
        let mut apps = apps.to_vec();
        apps.sort();
        let mut picked: Vec<(Rank, Arc<ServiceNode>)> = Vec::new();
        for app in &apps {
            let Some(app) = self.apps.get(app) else { continue };
            for k in &app.keys {
                if let Some(slot) = self.slots.get(k)
                    && serves(&slot.node.methods, method)
                {
                    picked.push((rank(&slot.node, slot.recency), Arc::clone(&slot.node)));
                }
            }
        }
        if apps.len() > 1 {
            picked.sort_by_key(|p| p.0);
        }
        Nodes::from_vec(picked.into_iter().map(|(_, n)| n).collect())
    }
}

/// A changed app as one of its methods' entries sees it.
struct Served<'a> {
    id: &'a Arc<str>,
    /// Its nodes serving the method.
    here: usize,
    /// All its nodes.
    total: usize,
    /// Its new list (`None`: no nodes left).
    list: Option<&'a Nodes>,
    /// Its list in the current snapshot.
    old_list: Option<&'a Nodes>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Meta;
    use std::collections::BTreeMap;

    fn node(app: &str, lease: i64, methods: &[&str]) -> ServiceNode {
        drained(app, lease, methods, false)
    }

    fn drained(app: &str, lease: i64, methods: &[&str], draining: bool) -> ServiceNode {
        ServiceNode {
            draining,
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
    fn draining_nodes_come_after_serving_ones_and_move_back() {
        let mut w = IndexWriter::new();
        let at = |b| Recency { seen_batch: b, ..Default::default() };
        w.upsert("a/1", node("a", 1, &["/s.S/M"]), at(1));
        w.upsert("a/2", drained("a", 2, &["/s.S/M"], true), at(2));
        w.upsert("a/3", node("a", 3, &["/s.S/M"]), at(3));
        let idx = w.publish().expect("changed");
        let m = idx.by_method("/s.S/M").expect("present");
        assert_eq!(leases(Some(m)), [3, 1, 2], "serving newest first, then draining");
        assert_eq!(m.serving_count(), 2);
        assert_eq!(leases(Some(&m.serving())), [3, 1]);
        assert_eq!(m.draining().iter().map(|n| n.lease_id).collect::<Vec<_>>(), [2]);
        assert!(m.serving().ptr_eq(&m.serving()) && !m.serving().ptr_eq(m), "a view is its own list");
        // Undrained, it takes its place by recency again; drained, it moves back.
        w.upsert("a/2", node("a", 2, &["/s.S/M"]), at(2));
        w.upsert("a/3", drained("a", 3, &["/s.S/M"], true), at(3));
        let idx = w.publish().expect("changed");
        let m = idx.by_method("/s.S/M").expect("present");
        assert_eq!(leases(Some(m)), [2, 1, 3]);
        assert_eq!(leases(Some(&m.serving())), [2, 1]);
        w.upsert("a/1", drained("a", 1, &["/s.S/M"], true), at(1));
        w.upsert("a/2", drained("a", 2, &["/s.S/M"], true), at(2));
        let idx = w.publish().expect("changed");
        let m = idx.by_method("/s.S/M").expect("present");
        assert_eq!(leases(Some(m)), [3, 2, 1]);
        assert!(m.serving().is_empty());
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
    /// Random upserts and removals over apps sharing methods, checked after
    /// each publish against a from-scratch computation; earlier snapshots
    /// must not change.
    #[test]
    fn matches_a_rebuild_from_scratch_under_random_changes() {
        let methods = ["/s.S/A", "/s.S/B", "/s.S/C", "/t.T/A", "/t.T/B"];
        let mut w = IndexWriter::new();
        // key → (app, recency, lease, draining)
        type Model = (String, Recency, i64, bool);
        let mut model: BTreeMap<String, Model> = BTreeMap::new();
        // (entry, leases in order, how many serve)
        type Listing = Vec<(String, Vec<i64>, usize)>;
        let mut kept: Vec<(Arc<ServiceIndex>, Listing)> = Vec::new();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut lease = 0;
        for step in 0..4000u64 {
            let r = next();
            let key = format!("k{}", r % 40);
            if r % 5 == 0 {
                assert_eq!(w.remove(&key).is_some(), model.remove(&key).is_some());
            } else {
                lease += 1;
                let app = format!("app{}", (r >> 8) % 4);
                // Mostly the app's own methods (all or some of them), sometimes
                // a random set of methods other apps serve too.
                let served: Vec<String> = if (r >> 16) % 4 == 0 {
                    methods.iter().filter(|_| next() % 3 != 0).map(|m| m.to_string()).collect()
                } else {
                    (0..(r >> 20) % 3 + 1).map(|i| format!("/{app}.S/M{i}")).collect()
                };
                let served: Vec<&str> = served.iter().map(String::as_str).collect();
                let recency = Recency { seen_batch: (r >> 24) % 3, registered_at_ms: 0, lease_id: lease };
                let draining = (r >> 32) % 4 == 0;
                w.upsert(key.as_str(), drained(&app, lease, &served, draining), recency);
                model.insert(key, (app, recency, lease, draining));
            }
            if step % 7 != 0 {
                continue;
            }
            let Some(idx) = w.publish() else { continue };
            let mut want: Listing = Vec::new();
            let mut apps: Vec<&String> = model.values().map(|(a, _, _, _)| a).collect();
            apps.sort();
            apps.dedup();
            let ordered = |app: &str| {
                let mut v: Vec<(&String, &Model)> = model.iter().filter(|(_, e)| e.0 == app).collect();
                v.sort_by(|a, b| (a.1.3, Reverse(a.1.1), a.0).cmp(&(b.1.3, Reverse(b.1.1), b.0)));
                v
            };
            for app in &apps {
                let nodes = ordered(app);
                let serving = nodes.iter().filter(|(_, e)| !e.3).count();
                want.push((format!("app {app}"), nodes.iter().map(|(_, e)| e.2).collect(), serving));
            }
            let mut all_methods: Vec<String> = methods.iter().map(|m| m.to_string()).collect();
            all_methods.extend((0..4).flat_map(|a| (0..3).map(move |i| format!("/app{a}.S/M{i}"))));
            all_methods.sort();
            for m in &all_methods {
                let mut picked = Vec::new();
                for app in &apps {
                    for (k, e) in ordered(app) {
                        if w.get(k).is_some_and(|n| n.serves(m)) {
                            picked.push(((e.3, Reverse(e.1)), e.2));
                        }
                    }
                }
                picked.sort_by_key(|p| p.0);
                if !picked.is_empty() {
                    let serving = picked.iter().filter(|p| !p.0.0).count();
                    want.push((format!("method {m}"), picked.into_iter().map(|p| p.1).collect(), serving));
                }
            }
            let got = |idx: &ServiceIndex| {
                let mut got = Vec::new();
                let entry = |name: String, nodes: Option<&Nodes>| {
                    let serving = nodes.map_or(0, |n| n.serving_count());
                    if let Some(n) = nodes {
                        assert_eq!(leases(Some(&n.serving())), leases(Some(n))[..serving], "{name}: serving view");
                        assert!(n.serving().iter().all(|x| !x.draining) && n.draining().iter().all(|x| x.draining));
                    }
                    (name, leases(nodes), serving)
                };
                for app in idx.apps() {
                    got.push(entry(format!("app {app}"), idx.by_app(&app)));
                }
                for m in idx.methods() {
                    got.push(entry(format!("method {m}"), idx.by_method(&m)));
                }
                got
            };
            assert_eq!(got(&idx), want, "step {step}");
            assert_eq!(idx.len(), model.len());
            // Hold some snapshots (the writer must then copy), let go of others
            // (it recycles them).
            if step % 3 == 0 {
                kept.push((idx, want));
            }
            for (old, want) in &kept {
                assert_eq!(&got(old), want, "an earlier snapshot changed");
            }
            if kept.len() > 20 {
                kept.remove(0);
            }
        }
        assert!(w.recycled > 100, "recycled {} times", w.recycled);
    }
}
