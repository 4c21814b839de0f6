//! The discoverer's state machine: [`Cache::apply`] takes one batch of
//! [`StoreEvent`]s and the time, and returns the [`Effects`] to carry out
//! (the index to publish, the events to send, the records to reap, what to
//! count). It never awaits, spawns or reads a clock, so every rule of
//! discovery — listings swapped in whole, bad records skipped and counted,
//! heartbeat expiry on the observer's clock, empty-set protection, the
//! outage not counted against heartbeats, reaping — is tested synchronously
//! (kube-runtime's `reflector::store::Writer::apply_watcher_event` is the
//! model). The task around it is `follow.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::entry::{Entry, same_but_heartbeat};
use crate::conf::EmptyProtection;
use crate::index::{IndexWriter, Recency};
use crate::store::{Liveness, RawRecord, Scope, StoreEvent};
use crate::{DiscoveryEvent, Error, ServiceIndex, ServiceNode, SourceHealth};

/// What the cache is told once, at construction.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    /// Namespace and env followed (a record of another env is foreign).
    pub scope: Scope,
    /// The source's name in health and logs.
    pub source: String,
    /// Expiry window of heartbeat records that state none.
    pub default_window: Duration,
    /// What an empty listing in a fault window does.
    pub empty_protection: EmptyProtection,
    /// Silence after which the source is stale.
    pub max_silence: Option<Duration>,
    /// The reader offers a reaper.
    pub reaping: bool,
    /// Windows without a new stamp before a record is reaped.
    pub reap_after: u32,
    /// The reader reports progress ([`crate::store::StoreReader::max_silence`]):
    /// a heartbeat record is hidden (or reaped) only once the source
    /// confirmed the view after its deadline (see [`Cache::due`]).
    pub expiry_needs_confirmation: bool,
}

/// What one [`Cache::apply`] asks the task around it to do.
#[derive(Debug, Default)]
pub(super) struct Effects {
    /// Changes of the view, in order, for subscribers.
    pub events: Vec<DiscoveryEvent>,
    /// A new index to publish to readers.
    pub index: Option<Arc<ServiceIndex>>,
    /// A listing completed in this batch.
    pub became_ready: bool,
    /// The first stream error of the batch (reported to a waiting `watcher`).
    pub first_error: Option<Error>,
    /// The view changed or was confirmed by a listing (the snapshot file
    /// may need saving).
    pub view_changed: bool,
    /// Records long dead, to hand to the store's reaper.
    pub reaps: Vec<RawRecord>,
    /// The store confirmed the view in this batch.
    pub confirmed: bool,
    /// Bad writes skipped for the first time.
    pub skipped: u64,
    /// Errors the change stream reported.
    pub stream_errors: u64,
    /// Breaks of the change stream recovered from.
    pub resyncs: u64,
    /// Empty listings newly held back.
    pub empty_held: u64,
}

/// The discoverer's state: every record seen, the index built from the
/// visible ones, and the source's health.
pub(super) struct Cache {
    settings: Settings,
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
    /// When the store last confirmed the view.
    last_confirmed: Option<Instant>,
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
}

impl Cache {
    /// An empty cache, not ready.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            index: IndexWriter::default(),
            records: HashMap::new(),
            pending: None,
            batch: 0,
            ready: false,
            warned: HashSet::new(),
            skipped_writes: HashMap::new(),
            listing_malformed: HashSet::new(),
            degraded_since: None,
            last_confirmed: None,
            silence_noted: false,
            resyncs: 0,
            stream_errors: 0,
            last_error: None,
            from_snapshot: false,
            held_empty: None,
            after_fault: false,
            snapshot_error: None,
        }
    }

    /// Serves `records` from the snapshot file until the store answers: the
    /// cache is ready, and stale until the store's first listing.
    pub fn load_snapshot(&mut self, records: impl IntoIterator<Item = RawRecord>, now: Instant) -> Effects {
        let mut effects = Effects::default();
        for record in records {
            self.upsert(record, now, &mut effects);
        }
        effects.index = self.index.publish();
        self.ready = true;
        self.from_snapshot = true;
        effects
    }

    /// Notes why the snapshot file was not loaded or saved (`None`: it was).
    pub fn set_snapshot_error(&mut self, error: Option<String>) {
        self.snapshot_error = error;
    }

    /// The snapshot-file error noted last.
    pub fn snapshot_error(&self) -> Option<&str> {
        self.snapshot_error.as_deref()
    }

    /// Applies one batch of store events (an empty batch when a deadline
    /// passed) at `now`.
    pub fn apply(&mut self, batch: Vec<StoreEvent>, now: Instant) -> Effects {
        let mut effects = Effects::default();
        self.batch += 1;
        for event in batch {
            self.apply_event(event, now, &mut effects);
        }
        if let Some(since) = self.held_empty
            && let EmptyProtection::ConfirmFor(confirm) = self.settings.empty_protection
            && self.degraded_since.is_none()
            && now >= since + confirm
        {
            tracing::info!(source = %self.settings.source, after = ?confirm, "the store kept listing no node: applying the empty view");
            self.release_hold(&mut effects);
        }
        self.expire(now, &mut effects);
        effects.reaps = self.due_reaps(now);
        self.silence_noted = self.silent(now);
        if let Some(index) = self.index.publish() {
            effects.index = Some(index);
            effects.view_changed = true;
        }
        effects
    }

    fn apply_event(&mut self, event: StoreEvent, now: Instant, effects: &mut Effects) {
        match event {
            StoreEvent::Reset => {
                self.pending = Some(HashMap::new());
                self.listing_malformed.clear();
            }
            StoreEvent::Upsert(record) => {
                self.recover(now, effects);
                match self.pending.as_mut() {
                    Some(pending) => {
                        pending.insert(record.key.clone(), record);
                    }
                    None => {
                        self.confirm(now, effects);
                        // A node appeared: the store is not empty after all,
                        // and what it holds is the held listing plus this.
                        self.release_hold(effects);
                        self.upsert(record, now, effects);
                    }
                }
            }
            StoreEvent::Delete { key } => {
                self.recover(now, effects);
                match self.pending.as_mut() {
                    Some(pending) => {
                        pending.remove(&key);
                    }
                    None => {
                        self.confirm(now, effects);
                        self.delete(&key, effects);
                    }
                }
            }
            StoreEvent::Progress => {
                self.recover(now, effects);
                self.confirm(now, effects);
            }
            StoreEvent::Malformed { key, reason } => {
                let stamp = RawRecord::new(key.as_str(), reason.as_str()).stamp_digest();
                if self.pending.is_some() {
                    self.listing_malformed.insert(key.clone());
                }
                self.skip(&key, &reason, stamp, effects);
            }
            StoreEvent::Synced => {
                self.recover(now, effects);
                self.confirm(now, effects);
                self.apply_listing(now, effects);
                self.ready = true;
                self.from_snapshot = false;
                effects.became_ready = true;
                effects.view_changed = true;
            }
            StoreEvent::Error(error) => {
                if self.degraded_since.is_none() {
                    self.degraded_since = Some(now);
                }
                self.stream_errors += 1;
                effects.stream_errors += 1;
                self.last_error = Some(error.to_string());
                effects.first_error.get_or_insert(error);
            }
        }
    }

    /// A listing completed: swaps it in whole, or holds an empty one back.
    fn apply_listing(&mut self, now: Instant, effects: &mut Effects) {
        let listed_nothing = self.pending.as_ref().is_some_and(|p| p.is_empty());
        // Only a listing in a fault window is suspect: the first after a
        // break of the stream, one replacing a loaded snapshot, or one while
        // an empty answer is already held. On a healthy stream an empty
        // listing is the store's news (a Consul blocking answer after the
        // last instance left).
        let fault_window = self.after_fault || self.from_snapshot || self.held_empty.is_some();
        let protect = self.settings.empty_protection != EmptyProtection::Off && fault_window;
        if listed_nothing && protect && self.records.values().any(|e| e.visible) {
            // Empty-set protection: keep the last view until the empty
            // answer is confirmed (or forever, by the rule).
            self.pending = None;
            self.listing_malformed.clear();
            if self.held_empty.is_none() {
                self.held_empty = Some(now);
                effects.empty_held += 1;
                tracing::warn!(
                    source = %self.settings.source,
                    namespace = %self.settings.scope.namespace,
                    env = %self.settings.scope.env,
                    rule = ?self.settings.empty_protection,
                    "the store listed no node: keeping the last view until that is confirmed"
                );
            }
        } else if let Some(pending) = self.pending.take() {
            self.held_empty = None;
            self.after_fault = false;
            let malformed = std::mem::take(&mut self.listing_malformed);
            self.skipped_writes.retain(|k, _| pending.contains_key(k) || malformed.contains(k));
            let gone: Vec<Arc<str>> =
                self.records.keys().filter(|k| !pending.contains_key(k.as_ref())).cloned().collect();
            for key in gone {
                self.delete(&key, effects);
            }
            for (_, record) in pending {
                self.upsert(record, now, effects);
            }
        }
    }

    /// Leaves the degraded state: heartbeats could not be observed while the
    /// store was unreachable, so the outage does not count against them. For
    /// a reader that reports progress the outage began when the source last
    /// confirmed the view, not when the break was reported: a silently dead
    /// stream is noticed only later (up to the reader's `max_silence`), and
    /// heartbeats went unobserved since.
    fn recover(&mut self, now: Instant, effects: &mut Effects) {
        if let Some(since) = self.degraded_since.take() {
            let unobserved_since = match self.last_confirmed {
                Some(at) if self.settings.expiry_needs_confirmation => at.min(since),
                _ => since,
            };
            let outage = now.saturating_duration_since(unobserved_since);
            for entry in self.records.values_mut() {
                if entry.window.is_some() {
                    entry.last_seen += outage;
                }
            }
            self.resyncs += 1;
            effects.resyncs += 1;
            self.after_fault = true;
            // An empty listing held back is confirmed on a healthy stream only.
            if self.held_empty.is_some() {
                self.held_empty = Some(now);
            }
        }
    }

    /// The store showed that the view is current.
    fn confirm(&mut self, now: Instant, effects: &mut Effects) {
        self.last_confirmed = Some(now);
        effects.confirmed = true;
        self.silence_noted = false;
    }

    /// Applies an empty listing held back by empty-set protection.
    fn release_hold(&mut self, effects: &mut Effects) {
        if self.held_empty.take().is_some() {
            let keys: Vec<Arc<str>> = self.records.keys().cloned().collect();
            for key in keys {
                self.delete(&key, effects);
            }
        }
    }

    /// No confirmation for longer than the source's silence bound.
    fn silent(&self, now: Instant) -> bool {
        match (self.settings.max_silence, self.last_confirmed) {
            (Some(bound), Some(at)) => now.saturating_duration_since(at) > bound,
            _ => false,
        }
    }

    /// Counts a bad write once (a relist showing it again is not counted
    /// again) and warns once per key.
    fn skip(&mut self, key: &str, reason: &str, stamp: u64, effects: &mut Effects) {
        if self.skipped_writes.insert(key.to_owned(), stamp) == Some(stamp) {
            return;
        }
        effects.skipped += 1;
        if self.warned.insert(key.to_owned()) {
            let scope = &self.settings.scope;
            tracing::warn!(key, reason, namespace = %scope.namespace, env = %scope.env, "skipping record");
        }
    }

    /// A record that turned bad: whatever it was before leaves the index.
    fn reject(&mut self, key: &str, reason: &str, stamp: u64, effects: &mut Effects) {
        self.delete(key, effects);
        self.skip(key, reason, stamp, effects);
    }

    fn upsert(&mut self, record: RawRecord, now: Instant, effects: &mut Effects) {
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
            Err(e) => return self.reject(&record.key, &format!("not a service node: {e}"), stamp, effects),
        };
        // Discovered nodes carry the effective state: drained by the
        // instance or by an operator (in the record or beside it).
        node.drained_by_operator |= marked;
        node.draining |= node.drained_by_operator;
        if node.meta.env != self.settings.scope.env {
            let reason = format!("env `{}` is not `{}`", node.meta.env, self.settings.scope.env);
            return self.reject(&record.key, &reason, stamp, effects);
        }
        if node.meta.app_id.is_empty() {
            return self.reject(&record.key, "empty app_id", stamp, effects);
        }
        self.skipped_writes.remove(record.key.as_str());
        let (window, stated) = match record.liveness {
            Liveness::StoreManaged => (None, false),
            Liveness::Heartbeat { window } => match window.or(node.ttl.map(Duration::from_secs)) {
                Some(window) => (Some(window), !window.is_zero()),
                None => (Some(self.settings.default_window), false),
            },
        };
        let seen = renewed_at.unwrap_or(now);
        let key: Arc<str> = Arc::from(record.key.as_str());
        // Only a window the record states is good enough to delete it by:
        // hiding is undone by the next heartbeat, a delete is not.
        let reap = (self.settings.reaping && stated).then(|| Box::new(record));
        if let Some(entry) = self.records.get_mut(&key)
            && entry.visible
            && same_but_heartbeat(&entry.node, &node)
        {
            entry.stamp = stamp;
            entry.last_seen = seen;
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
        effects.events.push(super::up(Arc::clone(&node)));
        self.records.insert(key, Entry { stamp, node, window, last_seen: seen, visible: true, reap, marked });
    }

    fn delete(&mut self, key: &str, effects: &mut Effects) {
        self.skipped_writes.remove(key);
        if let Some(entry) = self.records.remove(key)
            && entry.visible
        {
            self.index.remove(key);
            effects.events.push(super::down(entry.node));
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
        now >= deadline
            && (!self.settings.expiry_needs_confirmation || self.last_confirmed.is_some_and(|at| at >= deadline))
    }

    /// Hides heartbeat records not renewed within their window (see [`Cache::due`]).
    fn expire(&mut self, now: Instant, effects: &mut Effects) {
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
                effects.events.push(super::down(Arc::clone(&entry.node)));
            }
        }
    }

    /// Heartbeat records long dead, each handed out once per observed stamp;
    /// none while the stream is broken or a listing is in progress (the
    /// records held then may already have been renewed), nor before the
    /// source confirmed the view after the reap time (see [`Cache::due`]).
    fn due_reaps(&mut self, now: Instant) -> Vec<RawRecord> {
        if !self.settings.reaping || self.degraded_since.is_some() || self.pending.is_some() {
            return Vec::new();
        }
        let after = self.settings.reap_after;
        let due: Vec<Arc<str>> = self
            .records
            .iter()
            .filter(|(_, e)| e.reap_at(after).is_some_and(|at| self.due(at, now)))
            .map(|(k, _)| Arc::clone(k))
            .collect();
        due.iter().filter_map(|k| self.records.get_mut(k)?.reap.take().map(|r| *r)).collect()
    }

    /// When [`Cache::apply`] must next run with no event (an expiry, a
    /// reap, the silence bound, a held empty listing's release), if ever.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        if self.degraded_since.is_some() {
            return None;
        }
        let silence = match (self.settings.max_silence, self.last_confirmed) {
            // Just past the bound, so that the wake-up finds the source silent.
            (Some(bound), Some(at)) if !self.silence_noted => Some(at + bound + Duration::from_millis(1)),
            _ => None,
        };
        let release = match (self.held_empty, self.settings.empty_protection) {
            (Some(since), EmptyProtection::ConfirmFor(confirm)) => Some(since + confirm),
            _ => None,
        };
        // A deadline that passed unconfirmed waits for the source's next
        // event (a progress report at the latest), not for a timer.
        let wakes = |at: &Instant| !self.settings.expiry_needs_confirmation || *at > now;
        let expiry = self.records.values().filter(|e| e.visible).filter_map(|e| e.window.map(|w| e.last_seen + w));
        // Reaps wait for a listing in progress to complete (not for a timer).
        let reap_after = self.settings.reap_after;
        let reaps = self.records.values().filter(|_| self.pending.is_none()).filter_map(|e| e.reap_at(reap_after));
        expiry.chain(reaps).filter(wakes).chain(silence).chain(release).min()
    }

    /// The source's health at `now` (see [`SourceHealth`]).
    pub fn health(&self, now: Instant) -> SourceHealth {
        let since_confirmed = self.last_confirmed.map(|at| now.saturating_duration_since(at));
        let stale = !self.ready
            || self.last_confirmed.is_none()
            || self.degraded_since.is_some()
            || self.from_snapshot
            || self.held_empty.is_some()
            || self.silent(now);
        SourceHealth {
            source: self.settings.source.clone(),
            ready: self.ready,
            stream_healthy: self.last_confirmed.is_some() && self.degraded_since.is_none(),
            since_confirmed,
            stale_after: self.settings.max_silence,
            stale,
            resyncs: self.resyncs,
            stream_errors: self.stream_errors,
            last_error: self.degraded_since.and(self.last_error.clone()),
            from_snapshot: self.from_snapshot,
            empty_held: self.held_empty.is_some(),
            snapshot_error: self.snapshot_error.clone(),
        }
    }

    /// The visible nodes by key, when the view is current enough to save to
    /// the snapshot file: never a view that is stale, held back, still the
    /// loaded snapshot or in the middle of a listing.
    pub fn saveable(&self) -> Option<Vec<(Arc<str>, Arc<ServiceNode>)>> {
        let current = self.ready
            && !self.from_snapshot
            && self.held_empty.is_none()
            && self.degraded_since.is_none()
            && self.pending.is_none();
        current.then(|| {
            self.records.iter().filter(|(_, e)| e.visible).map(|(k, e)| (Arc::clone(k), Arc::clone(&e.node))).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    //! The rules of discovery as a state machine: no runtime, explicit time.
    use super::*;
    use crate::{Meta, ServiceNode};

    const WINDOW: Duration = Duration::from_secs(10);

    fn settings(protection: EmptyProtection) -> Settings {
        Settings {
            scope: Scope::new("ns", "prod"),
            source: "test".to_owned(),
            default_window: WINDOW,
            empty_protection: protection,
            max_silence: None,
            reaping: false,
            reap_after: 3,
            expiry_needs_confirmation: false,
        }
    }

    fn record(app: &str, lease: i64, liveness: Liveness) -> RawRecord {
        let mut node = ServiceNode { lease_id: lease, ..Default::default() };
        node.meta = Meta::new("prod", app, "v1");
        node.methods.insert(format!("/{app}.S/M"), true);
        let mut record = RawRecord::new(format!("ns/prod/{app}/{lease}"), node.to_json().expect("encodes"));
        record.liveness = liveness;
        record
    }

    fn listing(records: Vec<RawRecord>) -> Vec<StoreEvent> {
        let mut events = vec![StoreEvent::Reset];
        events.extend(records.into_iter().map(StoreEvent::Upsert));
        events.push(StoreEvent::Synced);
        events
    }

    fn ups(effects: &Effects) -> Vec<String> {
        effects
            .events
            .iter()
            .filter_map(|e| match e {
                DiscoveryEvent::Up { key, .. } => Some(key.to_string()),
                _ => None,
            })
            .collect()
    }

    fn downs(effects: &Effects) -> Vec<String> {
        effects
            .events
            .iter()
            .filter_map(|e| match e {
                DiscoveryEvent::Down { key, .. } => Some(key.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_listing_is_swapped_in_whole_and_makes_the_cache_ready() {
        let mut cache = Cache::new(settings(EmptyProtection::Off));
        let t0 = Instant::now();
        let mut events = vec![StoreEvent::Reset, StoreEvent::Upsert(record("a", 1, Liveness::StoreManaged))];
        let partial = cache.apply(std::mem::take(&mut events), t0);
        assert!(partial.events.is_empty() && partial.index.is_none() && !partial.became_ready);
        let done = cache.apply(vec![StoreEvent::Synced], t0);
        assert!(done.became_ready);
        assert_eq!(ups(&done), ["a/1"]);
        let index = done.index.expect("published");
        assert_eq!(index.len(), 1);
        assert!(index.by_method("/a.S/M").is_some());
    }

    #[test]
    fn a_heartbeat_record_expires_after_its_window_on_the_observers_clock() {
        let mut cache = Cache::new(settings(EmptyProtection::Off));
        let t0 = Instant::now();
        cache.apply(listing(vec![record("a", 1, Liveness::Heartbeat { window: None })]), t0);
        assert_eq!(cache.next_deadline(t0), Some(t0 + WINDOW));
        assert!(downs(&cache.apply(Vec::new(), t0 + WINDOW - Duration::from_millis(1))).is_empty());
        assert_eq!(downs(&cache.apply(Vec::new(), t0 + WINDOW)), ["a/1"]);
    }

    #[test]
    fn an_outage_does_not_count_against_heartbeats() {
        let mut cache = Cache::new(settings(EmptyProtection::Off));
        let t0 = Instant::now();
        cache.apply(listing(vec![record("a", 1, Liveness::Heartbeat { window: None })]), t0);
        let broke = t0 + Duration::from_secs(1);
        let error = cache.apply(vec![StoreEvent::Error(Error::backend("test", "down"))], broke);
        assert_eq!(error.stream_errors, 1);
        assert!(error.first_error.is_some());
        // Long past the window while degraded: nothing is hidden.
        assert!(cache.next_deadline(broke + WINDOW * 3).is_none());
        assert!(downs(&cache.apply(Vec::new(), broke + WINDOW * 3)).is_empty());
        // Recovery moves the window by the outage.
        let back = broke + WINDOW * 3;
        assert_eq!(cache.apply(vec![StoreEvent::Progress], back).resyncs, 1);
        assert!(downs(&cache.apply(Vec::new(), back + Duration::from_secs(8))).is_empty());
        assert_eq!(downs(&cache.apply(Vec::new(), back + Duration::from_secs(9))), ["a/1"]);
    }

    #[test]
    fn an_empty_listing_after_a_fault_is_held_until_confirmed() {
        let confirm = Duration::from_secs(30);
        let mut cache = Cache::new(settings(EmptyProtection::ConfirmFor(confirm)));
        let t0 = Instant::now();
        cache.apply(listing(vec![record("a", 1, Liveness::StoreManaged)]), t0);
        cache.apply(vec![StoreEvent::Error(Error::backend("test", "down"))], t0);
        let relist = cache.apply(listing(Vec::new()), t0 + Duration::from_secs(1));
        assert_eq!(relist.empty_held, 1);
        assert!(relist.events.is_empty());
        assert!(cache.health(t0 + Duration::from_secs(1)).empty_held);
        let released = cache.apply(Vec::new(), t0 + Duration::from_secs(1) + confirm);
        assert_eq!(downs(&released), ["a/1"]);
        assert!(!cache.health(t0 + confirm * 2).empty_held);
    }

    #[test]
    fn an_empty_listing_on_a_healthy_stream_is_news() {
        let mut cache = Cache::new(settings(EmptyProtection::Always));
        let t0 = Instant::now();
        cache.apply(listing(vec![record("a", 1, Liveness::StoreManaged)]), t0);
        let relist = cache.apply(listing(Vec::new()), t0);
        assert_eq!(downs(&relist), ["a/1"]);
        assert_eq!(relist.empty_held, 0);
    }

    #[test]
    fn a_bad_write_is_skipped_and_counted_once() {
        let mut cache = Cache::new(settings(EmptyProtection::Off));
        let t0 = Instant::now();
        let bad = RawRecord::new("ns/prod/a/9", "{not json");
        let first = cache.apply(listing(vec![bad.clone(), record("a", 1, Liveness::StoreManaged)]), t0);
        assert_eq!(first.skipped, 1);
        assert_eq!(ups(&first), ["a/1"]);
        // A relist showing the same bad write again does not count it again.
        assert_eq!(cache.apply(listing(vec![bad, record("a", 1, Liveness::StoreManaged)]), t0).skipped, 0);
        let mut foreign = record("a", 2, Liveness::StoreManaged);
        foreign.value = foreign.value.replace("\"prod\"", "\"staging\"");
        assert_eq!(cache.apply(vec![StoreEvent::Upsert(foreign)], t0).skipped, 1);
    }

    #[test]
    fn a_long_dead_record_is_handed_to_the_reaper_once() {
        let mut cache = Cache::new(Settings { reaping: true, ..settings(EmptyProtection::Off) });
        let t0 = Instant::now();
        let stated = Liveness::Heartbeat { window: Some(WINDOW) };
        cache.apply(listing(vec![record("a", 1, stated)]), t0);
        assert!(cache.apply(Vec::new(), t0 + WINDOW * 2).reaps.is_empty());
        assert_eq!(cache.apply(Vec::new(), t0 + WINDOW * 3).reaps.len(), 1);
        assert!(cache.apply(Vec::new(), t0 + WINDOW * 4).reaps.is_empty());
    }

    #[test]
    fn a_loaded_snapshot_serves_stale_until_the_store_lists() {
        let mut cache = Cache::new(settings(EmptyProtection::ConfirmFor(Duration::from_secs(30))));
        let t0 = Instant::now();
        let loaded = cache.load_snapshot([record("a", 1, Liveness::StoreManaged)], t0);
        assert_eq!(loaded.index.expect("published").len(), 1);
        assert!(cache.health(t0).ready && cache.health(t0).stale && cache.health(t0).from_snapshot);
        assert!(cache.saveable().is_none(), "the loaded snapshot is not saved back");
        // The store's first listing replaces it, but an empty one is held.
        assert_eq!(cache.apply(listing(Vec::new()), t0).empty_held, 1);
        let listed = cache.apply(listing(vec![record("b", 2, Liveness::StoreManaged)]), t0);
        assert_eq!((ups(&listed), downs(&listed)), (vec!["b/2".to_owned()], vec!["a/1".to_owned()]));
        assert_eq!(cache.saveable().map(|nodes| nodes.len()), Some(1));
    }
}
