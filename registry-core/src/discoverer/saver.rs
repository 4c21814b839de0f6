//! The last-known-good snapshot file ([`crate::snapshot`]): loaded into the
//! cache at construction, and saved whenever the view changed while it is
//! current.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Inner;
use crate::snapshot::{self, SnapshotError};
use crate::store::RawRecord;

/// Loads the configured snapshot file into the cache and publishes it;
/// returns how many nodes it holds, or `None` when there is none to serve
/// (no path, no file yet, or a file that is not a snapshot of this scope:
/// logged and noted in the health).
pub(super) fn load(inner: &Inner) -> Option<usize> {
    let path = inner.options.snapshot.as_deref()?;
    let loaded = snapshot::load(path, &inner.source, &inner.scope);
    let mut cache = inner.cache.lock().ok()?;
    let snapshot = match loaded {
        Ok(snapshot) => snapshot,
        Err(SnapshotError::Missing { .. }) => {
            tracing::debug!(path = %path.display(), "no discovery snapshot yet");
            return None;
        }
        Err(error) => {
            tracing::warn!(%error, "ignoring the discovery snapshot");
            cache.set_snapshot_error(Some(error.to_string()));
            return None;
        }
    };
    let records = snapshot.records.into_iter().filter_map(|record| match record.node.to_json() {
        Ok(json) => Some(RawRecord::new(record.key, json)),
        Err(error) => {
            tracing::debug!(key = record.key, %error, "snapshot record not re-encodable; skipped");
            None
        }
    });
    let effects = cache.load_snapshot(records, Instant::now());
    let nodes = effects.events.len();
    if let Some(index) = effects.index {
        inner.index.store(index);
    }
    tracing::info!(path = %path.display(), nodes, saved_at_ms = snapshot.saved_at_ms, "serving the discovery snapshot until the store answers");
    Some(nodes)
}

/// Saves the view to the snapshot file whenever it changed (at most once per
/// [`snapshot::SAVE_EVERY`]), while it is current: never a view that is
/// stale, held back or still the loaded snapshot.
pub(super) async fn save_snapshots(inner: Arc<Inner>, mut changed: watch::Receiver<u64>) {
    let Some(path) = inner.options.snapshot.clone() else { return };
    loop {
        if changed.changed().await.is_err() {
            return;
        }
        let saveable = match inner.cache.lock() {
            Ok(cache) => cache.saveable(),
            Err(_) => return,
        };
        if let Some(records) = saveable {
            let pending = snapshot::Pending { records };
            let (source, scope, target) = (inner.source.clone(), inner.scope.clone(), path.clone());
            let saved =
                tokio::task::spawn_blocking(move || snapshot::save(&target, &pending.into_snapshot(&source, &scope)))
                    .await;
            let error = match saved {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(error) => Some(format!("snapshot writer failed: {error}")),
            };
            if let Ok(mut cache) = inner.cache.lock() {
                if let Some(error) = &error
                    && cache.snapshot_error() != Some(error.as_str())
                {
                    tracing::warn!(%error, "saving the discovery snapshot failed");
                }
                cache.set_snapshot_error(error);
            }
        }
        tokio::time::sleep(snapshot::SAVE_EVERY).await;
    }
}
