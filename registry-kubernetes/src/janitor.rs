//! The janitor: deletes records whose heartbeat stopped long ago.
//!
//! Heartbeat-based records (ConfigMap entries, Leases) are never removed by
//! the API server, so a crashed instance leaves its record behind. Core hides
//! it after one heartbeat window; the janitor, running inside a discoverer's
//! event stream, deletes it after `janitor_after` windows (default 3) without
//! an observed change — always with a **precondition that cannot delete a
//! live record**: a ConfigMap entry is removed by a JSON patch whose `test`
//! operation compares the exact value first, a Lease is deleted with a
//! `resourceVersion` precondition. A heartbeat that lands in between changes
//! the value or version, and the delete fails harmlessly.
//!
//! Time is the discoverer's monotonic clock. While the watch is broken
//! (the API server is down) the janitor pauses, and the outage does not count
//! against anyone's heartbeat.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// What the janitor deletes, and the precondition that protects a live record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The Kubernetes object (ConfigMap or Lease name).
    pub object: String,
    /// The record key (ConfigMap data key; the Lease name again for Leases).
    pub key: String,
    /// Exact value last observed (ConfigMap entries).
    pub value: String,
    /// `resourceVersion` last observed (Leases).
    pub resource_version: Option<String>,
}

#[derive(Debug)]
struct Tracked {
    stamp: u64,
    changed_at: Instant,
    grace: Duration,
    target: Target,
}

/// Observed heartbeats, and which records are due for deletion.
#[derive(Debug, Default)]
pub struct Janitor {
    tracked: HashMap<String, Tracked>,
    paused_since: Option<Instant>,
}

impl Janitor {
    /// An empty janitor.
    pub fn new() -> Self {
        Self::default()
    }

    /// A record was seen with `stamp`; a changed stamp restarts its clock.
    pub fn observe(&mut self, key: &str, stamp: u64, grace: Duration, target: Target, now: Instant) {
        match self.tracked.get_mut(key) {
            Some(t) if t.stamp == stamp => {
                t.grace = grace;
                t.target = target;
            }
            _ => {
                self.tracked.insert(key.to_owned(), Tracked { stamp, changed_at: now, grace, target });
            }
        }
    }

    /// The record is gone (deleted, or no longer a heartbeat record).
    pub fn forget(&mut self, key: &str) {
        self.tracked.remove(key);
    }

    /// Keeps only the keys `keep` says to (after a relist).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.tracked.retain(|k, _| keep(k));
    }

    /// The change stream broke: stop judging.
    pub fn pause(&mut self, now: Instant) {
        self.paused_since.get_or_insert(now);
    }

    /// The change stream works again: the pause does not count against anyone.
    pub fn resume(&mut self, now: Instant) {
        if let Some(since) = self.paused_since.take() {
            let pause = now.saturating_duration_since(since);
            for t in self.tracked.values_mut() {
                t.changed_at += pause;
            }
        }
    }

    /// Records with no change for their grace period. Each is handed out
    /// once per grace period (a failed delete is retried a period later).
    pub fn due(&mut self, now: Instant) -> Vec<Target> {
        if self.paused_since.is_some() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for t in self.tracked.values_mut() {
            if now.saturating_duration_since(t.changed_at) >= t.grace {
                t.changed_at = now;
                out.push(t.target.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(key: &str) -> Target {
        Target { object: "o".into(), key: key.into(), value: "v".into(), resource_version: None }
    }

    #[tokio::test(start_paused = true)]
    async fn only_unchanged_records_become_due() {
        let mut j = Janitor::new();
        let g = Duration::from_secs(6);
        let t0 = Instant::now();
        j.observe("dead", 1, g, target("dead"), t0);
        j.observe("live", 1, g, target("live"), t0);
        j.observe("live", 2, g, target("live"), t0 + Duration::from_secs(5));
        assert!(j.due(t0 + Duration::from_secs(5)).is_empty());
        let due = j.due(t0 + Duration::from_secs(6));
        assert_eq!(due, vec![target("dead")]);
        // Not handed out again right away.
        assert!(j.due(t0 + Duration::from_secs(7)).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_does_not_count() {
        let mut j = Janitor::new();
        let t0 = Instant::now();
        j.observe("k", 1, Duration::from_secs(6), target("k"), t0);
        j.pause(t0 + Duration::from_secs(1));
        assert!(j.due(t0 + Duration::from_secs(10)).is_empty());
        j.resume(t0 + Duration::from_secs(10));
        assert!(j.due(t0 + Duration::from_secs(12)).is_empty());
        assert_eq!(j.due(t0 + Duration::from_secs(15)).len(), 1);
    }
}
