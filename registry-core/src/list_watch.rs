//! Core's list/watch state machine: turns a [`ListWatch`] store into the
//! [`StoreEvent`] stream a [`crate::Discoverer`] consumes.
//!
//! States: *list* (full listing, announced as `Reset … Synced`) → *watch from
//! the listing's revision* → on a broken stream, back off and *resume from the
//! last revision seen*; when the resume point is gone
//! ([`Error::ResumeLost`](crate::Error::ResumeLost)), *relist*. Backoff is
//! capped and reset by the first successful update, so a down backend is
//! polled gently, never in a busy loop. Errors are reported as
//! [`StoreEvent::Error`]; the discoverer keeps its last view meanwhile.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::store::{Change, ListWatch, Listing, StoreEvent, StoreReader, WatchUpdate};

/// First retry delay after a list/watch failure.
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between retries while a backend is down.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(5);

/// A [`StoreReader`] over any [`ListWatch`].
pub struct ListWatchReader {
    source: Arc<dyn ListWatch>,
    retry_initial: Duration,
    retry_max: Duration,
}

impl ListWatchReader {
    /// A reader with the default retry policy.
    pub fn new(source: Arc<dyn ListWatch>) -> Self {
        Self { source, retry_initial: DEFAULT_RETRY_INITIAL, retry_max: DEFAULT_RETRY_MAX }
    }

    /// Sets the retry policy (first delay, cap).
    pub fn with_retry(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial;
        self.retry_max = max;
        self
    }
}

impl StoreReader for ListWatchReader {
    fn events(&self) -> BoxStream<'static, StoreEvent> {
        let (tx, rx) = mpsc::channel(1024);
        let source = Arc::clone(&self.source);
        let backoff = Backoff::new(self.retry_initial, self.retry_max);
        tokio::spawn(drive(source, tx, backoff));
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }
}

/// Sends, or reports that the consumer is gone.
async fn emit(tx: &mpsc::Sender<StoreEvent>, event: StoreEvent) -> Result<(), Gone> {
    tx.send(event).await.map_err(|_| Gone)
}

struct Gone;

async fn emit_listing(tx: &mpsc::Sender<StoreEvent>, listing: Listing) -> Result<u64, Gone> {
    emit(tx, StoreEvent::Reset).await?;
    for record in listing.records {
        emit(tx, StoreEvent::Upsert(record)).await?;
    }
    emit(tx, StoreEvent::Synced).await?;
    Ok(listing.revision)
}

/// Sleeps `delay` unless the consumer goes away first.
async fn pause(tx: &mpsc::Sender<StoreEvent>, delay: Duration) -> Result<(), Gone> {
    tokio::select! {
        _ = tx.closed() => Err(Gone),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}

async fn drive(source: Arc<dyn ListWatch>, tx: mpsc::Sender<StoreEvent>, backoff: Backoff) {
    // `Err(Gone)` only means the discoverer dropped the stream: stop quietly.
    let _ = run(source, tx, backoff).await;
}

async fn run(source: Arc<dyn ListWatch>, tx: mpsc::Sender<StoreEvent>, mut backoff: Backoff) -> Result<(), Gone> {
    let kind = source.kind();
    let mut revision: Option<u64> = None;
    loop {
        let from = match revision {
            Some(r) => r,
            None => {
                let listed = tokio::select! {
                    _ = tx.closed() => return Err(Gone),
                    listed = source.list() => listed,
                };
                match listed {
                    Ok(listing) => {
                        backoff.reset();
                        let r = emit_listing(&tx, listing).await?;
                        revision = Some(r);
                        r
                    }
                    Err(e) => {
                        tracing::warn!(backend = kind, error = %e, "listing failed; retrying");
                        emit(&tx, StoreEvent::Error(e)).await?;
                        pause(&tx, backoff.next_delay()).await?;
                        continue;
                    }
                }
            }
        };
        let opened = tokio::select! {
            _ = tx.closed() => return Err(Gone),
            opened = source.watch(from) => opened,
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(e) => {
                if e.needs_relist() {
                    revision = None;
                }
                tracing::warn!(backend = kind, revision = from, error = %e, "watch failed; retrying");
                emit(&tx, StoreEvent::Error(e)).await?;
                pause(&tx, backoff.next_delay()).await?;
                continue;
            }
        };
        loop {
            let item = tokio::select! {
                _ = tx.closed() => return Err(Gone),
                item = stream.next() => item,
            };
            match item {
                Some(Ok(WatchUpdate::Changes { changes, revision: r })) => {
                    backoff.reset();
                    for change in changes {
                        let event = match change {
                            Change::Upsert(record) => StoreEvent::Upsert(record),
                            Change::Delete { key } => StoreEvent::Delete { key },
                        };
                        emit(&tx, event).await?;
                    }
                    revision = Some(r);
                }
                Some(Ok(WatchUpdate::Replace(listing))) => {
                    backoff.reset();
                    revision = Some(emit_listing(&tx, listing).await?);
                }
                Some(Err(e)) => {
                    if e.needs_relist() {
                        revision = None;
                    }
                    tracing::warn!(backend = kind, error = %e, "change stream broke; resuming");
                    emit(&tx, StoreEvent::Error(e)).await?;
                    break;
                }
                None => {
                    tracing::debug!(backend = kind, "change stream ended; resuming");
                    break;
                }
            }
        }
        pause(&tx, backoff.next_delay()).await?;
    }
}
