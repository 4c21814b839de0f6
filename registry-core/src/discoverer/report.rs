//! The source's health as [`Discovery::health`](crate::Discovery::health)
//! answers it, and as gauges and a log line when it changes.

use tokio::time::Instant;

use super::Inner;
use crate::{SourceHealth, telemetry};

/// The health of the discoverer's one source, now.
pub(super) fn source_health(inner: &Inner) -> SourceHealth {
    match inner.cache.lock() {
        Ok(cache) => cache.health(Instant::now()),
        Err(_) => SourceHealth { source: inner.source.clone(), stale: true, ..SourceHealth::default() },
    }
}

/// Sets the health gauges, and logs a change between stale and current,
/// when they changed.
pub(super) fn update_health_metrics(inner: &Inner) {
    let health = source_health(inner);
    let state = (health.stale, health.stream_healthy);
    {
        let Ok(mut reported) = inner.reported_health.lock() else { return };
        let before = reported.replace(state);
        if before == Some(state) {
            return;
        }
        let was_stale = before.map(|(stale, _)| stale);
        if health.stale && was_stale == Some(false) {
            tracing::warn!(
                source = %inner.source,
                namespace = %inner.scope.namespace,
                env = %inner.scope.env,
                stream_healthy = health.stream_healthy,
                since_confirmed = ?health.since_confirmed,
                error = health.last_error.as_deref().unwrap_or(""),
                "discovery is stale: serving its last view"
            );
        } else if !health.stale && was_stale == Some(true) {
            tracing::info!(source = %inner.source, namespace = %inner.scope.namespace, env = %inner.scope.env, "discovery is current again");
        }
    }
    let gauge = |on: bool| if on { 1.0 } else { 0.0 };
    metrics::gauge!(telemetry::DISCOVERY_STALE, &inner.health_labels).set(gauge(health.stale));
    metrics::gauge!(telemetry::DISCOVERY_STREAM_HEALTHY, &inner.health_labels).set(gauge(health.stream_healthy));
}
