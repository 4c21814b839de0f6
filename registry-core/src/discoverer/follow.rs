//! The follow task: the one owner of the [`Cache`]. It feeds the cache the
//! store's events in batches (a burst costs one published index) and wakes
//! it at its deadlines, then carries out the [`Effects`]: publishes the
//! index, counts, signals the snapshot saver, records propagation lag, sends
//! events, wakes a waiting `watcher`, and hands due records to the reaper.

use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::cache::Effects;
use super::{Inner, reap, report, saver};
use crate::store::StoreEvent;
use crate::{DiscoveryEvent, telemetry};

/// Most events applied as one batch.
const MAX_BATCH: usize = 4096;

/// Follows the store until the stream ends or the task is aborted (unwatch).
/// Reaps and the snapshot saver run in tasks it owns: stopping it stops them.
pub(super) async fn follow(inner: Arc<Inner>) {
    let mut stream = inner.reader.events();
    let mut reaps = JoinSet::new();
    // Tasks that live as long as this one (dropping the set aborts them).
    let mut helpers = JoinSet::new();
    if inner.options.snapshot.is_some() {
        // Subscribed before any event is applied, so no change is missed.
        helpers.spawn(saver::save_snapshots(Arc::clone(&inner), inner.save_signal.subscribe()));
    }
    let permits = Arc::new(Semaphore::new(reap::CONCURRENCY));
    loop {
        while reaps.try_join_next().is_some() {}
        let deadline = inner.cache.lock().ok().and_then(|cache| cache.next_deadline(Instant::now()));
        let first = match deadline {
            Some(at) => tokio::select! {
                event = stream.next() => event,
                _ = tokio::time::sleep_until(at) => {
                    apply(&inner, Vec::new(), &permits, &mut reaps);
                    continue;
                }
            },
            None => stream.next().await,
        };
        let Some(first) = first else {
            tracing::warn!(namespace = %inner.scope.namespace, env = %inner.scope.env, "store event stream ended");
            return;
        };
        // Drain what is already queued so one index covers the whole burst.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match stream.next().now_or_never() {
                Some(Some(event)) => batch.push(event),
                _ => break,
            }
        }
        apply(&inner, batch, &permits, &mut reaps);
    }
}

/// Applies one batch to the cache and carries out what it returned.
fn apply(inner: &Inner, batch: Vec<StoreEvent>, permits: &Arc<Semaphore>, reaps: &mut JoinSet<()>) {
    let effects = match inner.cache.lock() {
        Ok(mut cache) => cache.apply(batch, Instant::now()),
        Err(_) => return,
    };
    let due = carry_out(inner, effects);
    reap::spawn(inner, due, permits, reaps);
}

/// Carries out everything but the reaps, which it returns.
fn carry_out(inner: &Inner, effects: Effects) -> Vec<crate::store::RawRecord> {
    let Effects {
        events,
        index,
        became_ready,
        first_error,
        view_changed,
        reaps,
        confirmed,
        skipped,
        stream_errors,
        resyncs,
        empty_held,
    } = effects;
    count(inner, skipped, stream_errors, resyncs, empty_held);
    if let Some(index) = index {
        metrics::gauge!(telemetry::CACHE_NODES, &inner.labels).set(index.len() as f64);
        inner.index.store(index);
    }
    if confirmed {
        let unix = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        metrics::gauge!(telemetry::DISCOVERY_CONFIRMED_AT, &inner.health_labels).set(unix);
    }
    if view_changed && inner.options.snapshot.is_some() {
        inner.save_signal.send_modify(|n| *n = n.wrapping_add(1));
    }
    report::update_health_metrics(inner);
    record_lag(inner, &events);
    for event in events {
        // No subscriber is not an error.
        let _ = inner.events.send(event);
    }
    inner.status.send_if_modified(|status| {
        let mut changed = false;
        if became_ready && !status.ready {
            status.ready = true;
            changed = true;
        }
        if let Some(error) = first_error
            && !status.ready
        {
            status.error_seq += 1;
            status.error = Some(Arc::new(error));
            changed = true;
        }
        changed
    });
    reaps
}

fn count(inner: &Inner, skipped: u64, stream_errors: u64, resyncs: u64, empty_held: u64) {
    if skipped > 0 {
        inner.skipped.fetch_add(skipped, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(telemetry::SKIPPED, &inner.labels).increment(skipped);
    }
    if stream_errors > 0 {
        metrics::counter!(telemetry::STREAM_ERRORS, &inner.labels).increment(stream_errors);
    }
    if resyncs > 0 {
        metrics::counter!(telemetry::DISCOVERY_RESYNCS, &inner.health_labels).increment(resyncs);
    }
    if empty_held > 0 {
        metrics::counter!(telemetry::DISCOVERY_EMPTY_HELD, &inner.health_labels).increment(empty_held);
    }
}

/// Writer's heartbeat time → now, for each node that came up (the writer's
/// clock: a metric only, never used for expiry).
fn record_lag(inner: &Inner, events: &[DiscoveryEvent]) {
    let now_ms = chrono::Utc::now().timestamp_millis();
    for event in events {
        if let DiscoveryEvent::Up { node, .. } = event
            && let Some(renewed) = node.renewed_at_ms
        {
            let lag = (now_ms - renewed).max(0) as f64 / 1000.0;
            metrics::histogram!(telemetry::PROPAGATION_LAG, &inner.labels).record(lag);
        }
    }
}
