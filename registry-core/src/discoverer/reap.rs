//! Reaping: long-dead heartbeat records the cache hands out are deleted
//! through the store's [`Reap`](crate::store::Reap) capability, a few at a
//! time (a fleet that crashed at once must not turn into a burst of
//! thousands of deletes), each outcome counted.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Inner;
use crate::store::RawRecord;
use crate::{Error, telemetry};

/// How many reaps one discoverer runs at once.
pub(super) const CONCURRENCY: usize = 4;
/// Deadline of one reap.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Hands each record in `due` to the store's reaper, at most
/// [`CONCURRENCY`] at once, in tasks of `reaps`.
pub(super) fn spawn(inner: &Inner, due: Vec<RawRecord>, permits: &Arc<Semaphore>, reaps: &mut JoinSet<()>) {
    let Some(reaper) = &inner.reaper else { return };
    for record in due {
        let reaper = Arc::clone(reaper);
        let permits = Arc::clone(permits);
        let [namespace, env] = inner.labels.clone();
        reaps.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else { return };
            let key = record.key.as_str();
            let outcome = match tokio::time::timeout(TIMEOUT, reaper.reap(&record)).await {
                Ok(Ok(())) => {
                    tracing::info!(key, "deleted a long-dead heartbeat record");
                    telemetry::REAP_DELETED
                }
                Ok(Err(Error::Conflict { .. })) => {
                    tracing::debug!(key, "long-dead record changed before its deletion: kept");
                    telemetry::REAP_RENEWED
                }
                Ok(Err(error)) => {
                    tracing::debug!(key, %error, "deleting a long-dead record failed");
                    telemetry::REAP_FAILED
                }
                Err(_) => {
                    tracing::debug!(key, after = ?TIMEOUT, "deleting a long-dead record timed out");
                    telemetry::REAP_FAILED
                }
            };
            let labels = [namespace, env, ("outcome", outcome.to_owned())];
            metrics::counter!(telemetry::REAPS, &labels).increment(1);
        });
    }
}
