//! Metric names (through the `metrics` facade: install any recorder, e.g. a
//! Prometheus exporter, to collect them). Labels: `backend`, `namespace`,
//! `env`, `app_id` where they apply.

/// Counter: heartbeats sent successfully.
pub const HEARTBEATS: &str = "registry_heartbeats_total";
/// Counter: keepalive failures that were retried.
pub const RETRIES: &str = "registry_keepalive_retries_total";
/// Counter: keepalives that gave up after `max_retry` failures.
pub const GIVE_UPS: &str = "registry_keepalive_give_ups_total";
/// Counter: registrations written again after their lease was lost.
pub const REREGISTRATIONS: &str = "registry_reregistrations_total";
/// Gauge: live nodes in a discoverer's cache.
pub const CACHE_NODES: &str = "registry_cache_nodes";
/// Counter: records skipped as malformed or foreign.
pub const SKIPPED: &str = "registry_skipped_records_total";
/// Histogram (seconds): writer heartbeat time → seen by discovery. Uses the
/// writer's clock, so it is only as good as clock sync; expiry never uses it.
pub const PROPAGATION_LAG: &str = "registry_propagation_lag_seconds";
/// Counter: change-stream errors seen by discovery.
pub const STREAM_ERRORS: &str = "registry_stream_errors_total";
/// Counter: deletions of long-dead heartbeat records attempted by discovery
/// (through a store's [`Reap`](crate::store::Reap) capability), labelled
/// `outcome`: [`REAP_DELETED`], [`REAP_RENEWED`] or [`REAP_FAILED`].
pub const REAPS: &str = "registry_reaps_total";
/// `outcome` of a reap: the record is gone.
pub const REAP_DELETED: &str = "deleted";
/// `outcome` of a reap: the store's precondition failed, the record changed
/// (renewed) after it was judged dead; nothing was deleted.
pub const REAP_RENEWED: &str = "renewed";
/// `outcome` of a reap: the delete failed (permission, unavailable, timeout).
pub const REAP_FAILED: &str = "failed";
/// Gauge: 1 while a discovery source is stale (see
/// [`SourceHealth::stale`](crate::SourceHealth::stale)), else 0. Labels
/// `namespace`, `env`, `source`.
pub const DISCOVERY_STALE: &str = "registry_discovery_stale";
/// Gauge: 1 while a discovery source's change stream is healthy, else 0.
pub const DISCOVERY_STREAM_HEALTHY: &str = "registry_discovery_stream_healthy";
/// Gauge (Unix seconds): when a discovery source last confirmed its view (a
/// change, a listing or a progress report); `time() - value` is its age.
pub const DISCOVERY_CONFIRMED_AT: &str = "registry_discovery_last_confirmed_timestamp_seconds";
/// Counter: breaks of a discovery source's change stream recovered from
/// (resumed or relisted).
pub const DISCOVERY_RESYNCS: &str = "registry_discovery_resyncs_total";
/// Counter: empty listings held back by empty-set protection (see
/// [`EmptyProtection`](crate::conf::EmptyProtection)).
pub const DISCOVERY_EMPTY_HELD: &str = "registry_discovery_empty_listings_held_total";
