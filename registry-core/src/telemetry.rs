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
