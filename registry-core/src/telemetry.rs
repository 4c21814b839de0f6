//! Metric names (through the `metrics` facade: install any recorder, e.g. a
//! Prometheus exporter, to collect them). Labels: `backend`, `namespace`,
//! `env`, `app_id` where they apply. What each one means and the alerts to
//! set on them: `docs/operations.md`.
//!
//! With `metrics-exporter-prometheus`, one line serves them all:
//!
//! ```text
//! metrics_exporter_prometheus::PrometheusBuilder::new().with_http_listener(([127, 0, 0, 1], 9464)).install()?;
//! registry_core::telemetry::describe(); // HELP lines and units, optional
//! ```

/// Counter: heartbeats sent successfully.
pub const HEARTBEATS: &str = "registry_heartbeats_total";
/// Counter: keepalive failures that were retried.
pub const RETRIES: &str = "registry_keepalive_retries_total";
/// Counter: keepalives that gave up after `max_retry` failures (only with
/// [`AfterMaxRetry::GiveUp`](crate::conf::AfterMaxRetry::GiveUp)).
pub const GIVE_UPS: &str = "registry_keepalive_give_ups_total";
/// Counter: registrations reported lost: `max_retry` consecutive keepalive
/// failures (counted once per run of failures).
pub const REGISTRATIONS_LOST: &str = "registry_registrations_lost_total";
/// Gauge: 1 from the moment a registration is reported lost until a
/// heartbeat succeeds again (or `uninstall`), else 0.
pub const REGISTRATION_LOST: &str = "registry_registration_lost";
/// Counter: registrations written again after their lease was lost.
pub const REREGISTRATIONS: &str = "registry_reregistrations_total";
/// Gauge: 1 while the instance's registration is written and its last
/// heartbeat succeeded; 0 while the keepalive retries, after it gave up,
/// and after `uninstall`. Labels `backend`, `namespace`, `env`, `app_id`.
pub const REGISTERED: &str = "registry_registration_up";
/// Gauge: 1 while the instance marked itself draining
/// ([`Register::drain`](crate::Register::drain)), else 0.
pub const DRAINING: &str = "registry_registration_draining";
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

/// Registers a description (Prometheus `HELP`) and unit for every metric
/// above with the installed recorder. Optional: the metrics are emitted
/// either way; call it once after installing the recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HEARTBEATS, "Heartbeats sent successfully by a registrar.");
    describe_counter!(RETRIES, "Keepalive failures that were retried.");
    describe_counter!(GIVE_UPS, "Keepalives that gave up after max_retry consecutive failures.");
    describe_counter!(
        REGISTRATIONS_LOST,
        "Registrations reported lost after max_retry consecutive keepalive failures."
    );
    describe_gauge!(
        REGISTRATION_LOST,
        "1 while the registration is reported lost (max_retry failures, not recovered), else 0."
    );
    describe_counter!(REREGISTRATIONS, "Registrations written again after their lease was lost.");
    describe_gauge!(REGISTERED, "1 while the registration is written and its last heartbeat succeeded, else 0.");
    describe_gauge!(DRAINING, "1 while the instance marked itself draining, else 0.");
    describe_gauge!(CACHE_NODES, Unit::Count, "Live nodes in a discoverer's cache.");
    describe_counter!(SKIPPED, "Records skipped by discovery as malformed or foreign.");
    describe_histogram!(
        PROPAGATION_LAG,
        Unit::Seconds,
        "Writer's heartbeat time to discovery seeing it (writer's clock)."
    );
    describe_counter!(STREAM_ERRORS, "Change-stream errors seen by discovery.");
    describe_counter!(REAPS, "Deletions of long-dead heartbeat records attempted by discovery, by outcome.");
    describe_gauge!(DISCOVERY_STALE, "1 while a discovery source is stale (serving an unconfirmed view), else 0.");
    describe_gauge!(DISCOVERY_STREAM_HEALTHY, "1 while a discovery source's change stream is healthy, else 0.");
    describe_gauge!(DISCOVERY_CONFIRMED_AT, Unit::Seconds, "Unix time a discovery source last confirmed its view.");
    describe_counter!(DISCOVERY_RESYNCS, "Breaks of a discovery source's change stream recovered from.");
    describe_counter!(DISCOVERY_EMPTY_HELD, "Empty listings held back by empty-set protection.");
}
