//! Staleness as a signal: what [`Discovery::health`](crate::Discovery::health)
//! reports, per source.
//!
//! A discoverer serves its last view whatever happens to its backend; these
//! figures say how much that view can be trusted right now:
//!
//! - **confirmed**: when the source last showed that the view is current — a
//!   change, a full listing, or a [`StoreEvent::Progress`](crate::store::StoreEvent::Progress)
//!   (etcd answers a progress request after 2 s of silence; the Consul reader
//!   probes its agent after 2 s without an answer);
//! - **stream healthy**: no error since the change stream last delivered;
//! - **resyncs**: how often the stream was re-established after a break;
//! - **stale**: the view may be behind the store — see [`SourceHealth::stale`].
//!
//! The same figures are exported as metrics (see [`crate::telemetry`]:
//! [`DISCOVERY_STALE`](crate::telemetry::DISCOVERY_STALE),
//! [`DISCOVERY_STREAM_HEALTHY`](crate::telemetry::DISCOVERY_STREAM_HEALTHY),
//! [`DISCOVERY_CONFIRMED_AT`](crate::telemetry::DISCOVERY_CONFIRMED_AT),
//! [`DISCOVERY_RESYNCS`](crate::telemetry::DISCOVERY_RESYNCS)), labelled
//! `namespace`, `env`, `source`.

use std::time::Duration;

/// The health of a discovery, one entry per source (a discoverer of one
/// store has one; [`crate::merged_discovery`] has one per merged discovery).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Each source's health.
    pub sources: Vec<SourceHealth>,
}

impl Health {
    /// True when any source is stale (see [`SourceHealth::stale`]).
    pub fn is_stale(&self) -> bool {
        self.sources.iter().any(|s| s.stale)
    }

    /// True when every source is current and its stream healthy.
    pub fn is_healthy(&self) -> bool {
        !self.sources.is_empty() && self.sources.iter().all(|s| !s.stale)
    }
}

/// The health of one source of a discovery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceHealth {
    /// The source: its backend's name (`etcd`, `consul`, `kubernetes`,
    /// `memory`), or `reader` for a discoverer over an explicit reader.
    pub source: String,
    /// A full listing has been applied (or a snapshot loaded, see
    /// [`from_snapshot`](Self::from_snapshot)).
    pub ready: bool,
    /// The change stream delivers: no error since it last did.
    pub stream_healthy: bool,
    /// Time since the source last confirmed the view (a change, a listing or
    /// a progress report); `None` before the first.
    pub since_confirmed: Option<Duration>,
    /// The silence after which the source counts as stale (the reader's
    /// stated bound, or [`DiscoveryOptions::stale_after`](crate::conf::DiscoveryOptions::stale_after));
    /// `None`: silence alone is not staleness.
    pub stale_after: Option<Duration>,
    /// The view may be behind the store: not ready, the stream is broken,
    /// silent for longer than [`stale_after`](Self::stale_after), served
    /// from a snapshot not yet confirmed, or an empty listing is held back.
    pub stale: bool,
    /// Times the change stream was re-established after a break (resumed or
    /// relisted).
    pub resyncs: u64,
    /// Errors the change stream reported.
    pub stream_errors: u64,
    /// The last error the change stream reported, while it is unhealthy.
    pub last_error: Option<String>,
    /// The view was loaded from the snapshot file and the backend has not
    /// answered since.
    pub from_snapshot: bool,
    /// An empty listing is held back by empty-set protection
    /// ([`EmptyProtection`](crate::conf::EmptyProtection)): the view shown is the last non-empty one.
    pub empty_held: bool,
    /// Why the snapshot file could not be loaded or saved, if it could not.
    pub snapshot_error: Option<String>,
}
