//! Passive outlier ejection: nodes whose calls fail in a row are taken out
//! of rotation for a backoff period.
//!
//! The semantics are Envoy's *consecutive gateway failure* outlier detection
//! and the consecutive-failure part of gRPC's outlier detection (gRFC A50):
//! - a **failure** is a call that could not reach the node (the transport
//!   failed: connection refused or reset, TLS refused, timeout) or that the
//!   node answered with gRPC `UNAVAILABLE` in its response headers (a
//!   trailers-only answer, how servers and proxies report it); any other
//!   answer is a success and resets the node's count;
//! - `consecutive_failures` failures in a row **eject** the node for
//!   `base_ejection_time × times ejected`, capped at `max_ejection_time`
//!   (Envoy's `base_ejection_time` and `max_ejection_time`); after that it
//!   takes calls again, and a success there brings its multiplier back to 1;
//! - never more than `max_ejection_percent` of the nodes are ejected at
//!   once, and never all of them (where Envoy ejects at least one host
//!   whatever the share, we keep at least one in rotation: with one node
//!   left, failing fast against it is no worse than having none);
//! - what we leave out of A50: its success-rate ejection (statistics over an
//!   interval, meaningful only with much traffic) and the failure-percentage
//!   algorithm; ejection is judged per call as it completes, not on an
//!   interval timer.
//!
//! Every ejection and return is a [`OutlierEvent`] (a `tracing` event too)
//! and counted in the metrics `registry_balance_ejections_total` and
//! `registry_balance_ejected_nodes` (labelled by `selector`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Outlier ejection settings ([module docs](self) for the semantics).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutlierDetection {
    /// Failures in a row that eject a node (default 5, Envoy's default).
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th lasts n times as long (default 30 s).
    pub base_ejection_time: Duration,
    /// The longest ejection (default 300 s).
    pub max_ejection_time: Duration,
    /// The largest share of the nodes ejected at once, in percent (default 50).
    pub max_ejection_percent: u8,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

impl OutlierDetection {
    /// Sets the failures in a row that eject a node (at least 1).
    pub fn with_consecutive_failures(mut self, failures: u32) -> Self {
        self.consecutive_failures = failures.max(1);
        self
    }

    /// Sets the first ejection's length.
    pub fn with_base_ejection_time(mut self, time: Duration) -> Self {
        self.base_ejection_time = time;
        self
    }

    /// Sets the longest ejection.
    pub fn with_max_ejection_time(mut self, time: Duration) -> Self {
        self.max_ejection_time = time;
        self
    }

    /// Sets the largest share of nodes ejected at once (percent, at most 100).
    pub fn with_max_ejection_percent(mut self, percent: u8) -> Self {
        self.max_ejection_percent = percent.min(100);
        self
    }
}

/// An ejection or a return, as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutlierEvent {
    /// The node failed `failures` calls in a row and takes no calls for `duration`.
    Ejected {
        /// The node's discovery key.
        key: Arc<str>,
        /// Consecutive failures that ejected it.
        failures: u32,
        /// How long it is out.
        duration: Duration,
    },
    /// The node's ejection ended; it takes calls again.
    Returned {
        /// The node's discovery key.
        key: Arc<str>,
    },
}

#[derive(Default)]
struct NodeRecord {
    consecutive: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

/// The outlier state of one channel's nodes.
pub(crate) struct Ejector {
    config: OutlierDetection,
    nodes: HashMap<Arc<str>, NodeRecord>,
}

impl Ejector {
    pub(crate) fn new(config: OutlierDetection) -> Self {
        Self { config, nodes: HashMap::new() }
    }

    /// Ends the ejections that are over; the returned nodes.
    pub(crate) fn release(&mut self, now: Instant) -> Vec<OutlierEvent> {
        let mut events = Vec::new();
        for (key, record) in &mut self.nodes {
            if record.ejected_until.is_some_and(|until| until <= now) {
                record.ejected_until = None;
                record.consecutive = 0;
                events.push(OutlierEvent::Returned { key: Arc::clone(key) });
            }
        }
        events
    }

    /// True while `key` is ejected (call [`release`](Self::release) first).
    pub(crate) fn is_ejected(&self, key: &str) -> bool {
        self.nodes.get(key).is_some_and(|r| r.ejected_until.is_some())
    }

    /// Number of nodes ejected now.
    pub(crate) fn ejected(&self) -> usize {
        self.nodes.values().filter(|r| r.ejected_until.is_some()).count()
    }

    /// Records a call's outcome on `key`, among `nodes` nodes in the set;
    /// the ejection it causes, if any.
    pub(crate) fn record(&mut self, key: &Arc<str>, failed: bool, nodes: usize, now: Instant) -> Option<OutlierEvent> {
        let ejected = self.ejected();
        let config = &self.config;
        let record = self.nodes.entry(Arc::clone(key)).or_default();
        if record.ejected_until.is_some() {
            // A call picked before the ejection finished after it.
            return None;
        }
        if !failed {
            record.consecutive = 0;
            record.times_ejected = 0;
            return None;
        }
        record.consecutive += 1;
        if record.consecutive < config.consecutive_failures {
            return None;
        }
        let allowed = (nodes * usize::from(config.max_ejection_percent) / 100).min(nodes.saturating_sub(1));
        if ejected >= allowed {
            return None;
        }
        record.times_ejected += 1;
        let duration = config.base_ejection_time.saturating_mul(record.times_ejected).min(config.max_ejection_time);
        record.ejected_until = Some(now + duration);
        let failures = record.consecutive;
        record.consecutive = 0;
        Some(OutlierEvent::Ejected { key: Arc::clone(key), failures, duration })
    }

    /// Forgets a node that left the set.
    pub(crate) fn forget(&mut self, key: &str) {
        self.nodes.remove(key);
    }

    /// Forgets every node.
    pub(crate) fn clear(&mut self) {
        self.nodes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OutlierDetection {
        OutlierDetection::default()
            .with_consecutive_failures(3)
            .with_base_ejection_time(Duration::from_secs(10))
            .with_max_ejection_time(Duration::from_secs(25))
    }

    fn key(k: &str) -> Arc<str> {
        Arc::from(k)
    }

    #[test]
    fn consecutive_failures_eject_for_a_growing_capped_time() {
        let mut ejector = Ejector::new(config());
        let (a, now) = (key("a"), Instant::now());
        assert_eq!(ejector.record(&a, true, 4, now), None);
        assert_eq!(ejector.record(&a, false, 4, now), None, "a success resets the count");
        assert_eq!(ejector.record(&a, true, 4, now), None);
        assert_eq!(ejector.record(&a, true, 4, now), None);
        let ejected = ejector.record(&a, true, 4, now);
        assert_eq!(
            ejected,
            Some(OutlierEvent::Ejected { key: a.clone(), failures: 3, duration: Duration::from_secs(10) })
        );
        assert!(ejector.is_ejected("a"));
        assert!(ejector.release(now + Duration::from_secs(9)).is_empty());
        let back = now + Duration::from_secs(10);
        assert_eq!(ejector.release(back), [OutlierEvent::Returned { key: a.clone() }]);
        assert!(!ejector.is_ejected("a"));
        for _ in 0..2 {
            assert_eq!(ejector.record(&a, true, 4, back), None);
        }
        let again = ejector.record(&a, true, 4, back);
        assert!(matches!(again, Some(OutlierEvent::Ejected { duration, .. }) if duration == Duration::from_secs(20)));
        ejector.release(back + Duration::from_secs(20));
        for _ in 0..3 {
            ejector.record(&a, true, 4, back + Duration::from_secs(20));
        }
        assert!(ejector.is_ejected("a"), "third ejection: 30 s capped at 25 s");
        assert_eq!(ejector.release(back + Duration::from_secs(44)), []);
        assert_eq!(ejector.release(back + Duration::from_secs(45)).len(), 1);
    }

    #[test]
    fn never_more_than_the_share_nor_every_node() {
        let mut ejector = Ejector::new(config().with_max_ejection_percent(50));
        let now = Instant::now();
        let fail = |ejector: &mut Ejector, k: &Arc<str>, nodes| {
            (0..3).filter_map(|_| ejector.record(k, true, nodes, now)).count()
        };
        assert_eq!(fail(&mut ejector, &key("a"), 4), 1);
        assert_eq!(fail(&mut ejector, &key("b"), 4), 1);
        assert_eq!(fail(&mut ejector, &key("c"), 4), 0, "50 % of 4 are out already");
        let mut alone = Ejector::new(config().with_max_ejection_percent(100));
        assert_eq!(fail(&mut alone, &key("only"), 1), 0, "the last node stays");
    }
}
