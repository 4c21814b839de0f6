//! One record as the cache holds it, and what counts as a heartbeat.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::ServiceNode;
use crate::store::RawRecord;

/// A record the cache has seen: its node, its liveness and what to reap.
pub(super) struct Entry {
    /// Digest of the write last observed ([`RawRecord::stamp_digest`]).
    pub stamp: u64,
    /// The node as published.
    pub node: Arc<ServiceNode>,
    /// Heartbeat window; `None` for store-managed records.
    pub window: Option<Duration>,
    /// When the observer last saw a new write (moved on by an outage).
    pub last_seen: Instant,
    /// In the index (not expired).
    pub visible: bool,
    /// The record as last observed, to hand to the reaper once it is long
    /// dead; `None` when it is not to be reaped (no reaper, store-managed, a
    /// window the record does not state) or was handed out for this stamp.
    /// Boxed: most entries never hold one, and the cache is per node.
    pub reap: Option<Box<RawRecord>>,
    /// The operator's mark the store reported beside the record
    /// ([`RawRecord::drained_by_operator`]).
    pub marked: bool,
}

impl Entry {
    /// When the record counts as long dead, if it is to be reaped.
    pub fn reap_at(&self, after: u32) -> Option<Instant> {
        self.reap.as_ref()?;
        self.last_seen.checked_add(self.window?.checked_mul(after)?)
    }
}

/// True when two nodes differ only in heartbeat fields.
pub(super) fn same_but_heartbeat(a: &ServiceNode, b: &ServiceNode) -> bool {
    a.proto_count == b.proto_count
        && a.lease_id == b.lease_id
        && a.methods == b.methods
        && a.network == b.network
        && a.kernel == b.kernel
        && a.meta == b.meta
        && a.registered_at_ms == b.registered_at_ms
        && a.ttl == b.ttl
        && a.weight == b.weight
        && a.draining == b.draining
        && a.drained_by_operator == b.drained_by_operator
}
