//! Core's list/watch state machine: turns a [`ListWatch`] store into the
//! [`StoreEvent`] stream a [`crate::Discoverer`] consumes.
//!
//! States: *list* (full listing, announced as `Reset … Synced`) → *watch from
//! the listing's resume point* → on a broken stream, back off and *resume from
//! the last point seen*; when the resume point is gone
//! ([`Error::ResumeLost`]), *relist*. Backoff is
//! capped and reset by the first successful update, so a down backend is
//! polled gently, never in a busy loop. Errors are reported as
//! [`StoreEvent::Error`]; the discoverer keeps its last view meanwhile.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

use crate::Error;
use crate::backoff::Backoff;
use crate::store::{Change, ListWatch, Listing, StoreEvent, StoreReader, WatchUpdate};

/// First retry delay after a list/watch failure.
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between retries while a backend is down.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(5);
/// Longest a full listing may take before it counts as failed and is retried
/// (a silently dead connection must not stall discovery forever).
pub const DEFAULT_LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// A [`StoreReader`] over any [`ListWatch`].
pub struct ListWatchReader<L> {
    source: Arc<L>,
    policy: Policy,
}

#[derive(Clone, Copy)]
struct Policy {
    retry_initial: Duration,
    retry_max: Duration,
    list_timeout: Duration,
}

impl<L: ListWatch> ListWatchReader<L> {
    /// A reader with the default retry policy and list deadline.
    pub fn new(source: Arc<L>) -> Self {
        Self {
            source,
            policy: Policy {
                retry_initial: DEFAULT_RETRY_INITIAL,
                retry_max: DEFAULT_RETRY_MAX,
                list_timeout: DEFAULT_LIST_TIMEOUT,
            },
        }
    }

    /// Sets the retry policy (first delay, cap).
    pub fn with_retry(mut self, initial: Duration, max: Duration) -> Self {
        self.policy.retry_initial = initial;
        self.policy.retry_max = max;
        self
    }

    /// Sets the deadline of one full listing.
    pub fn with_list_timeout(mut self, timeout: Duration) -> Self {
        self.policy.list_timeout = timeout;
        self
    }
}

impl<L: ListWatch> StoreReader for ListWatchReader<L> {
    fn events(&self) -> BoxStream<'static, StoreEvent> {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(drive(Arc::clone(&self.source), tx, self.policy));
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }

    fn max_silence(&self) -> Option<Duration> {
        self.source.max_silence()
    }
}

/// Sends, or reports that the consumer is gone.
async fn emit(tx: &mpsc::Sender<StoreEvent>, event: StoreEvent) -> Result<(), Gone> {
    tx.send(event).await.map_err(|_| Gone)
}

struct Gone;

async fn emit_listing<R>(tx: &mpsc::Sender<StoreEvent>, listing: Listing<R>) -> Result<R, Gone> {
    emit(tx, StoreEvent::Reset).await?;
    for record in listing.records {
        emit(tx, StoreEvent::Upsert(record)).await?;
    }
    for entry in listing.malformed {
        emit(tx, StoreEvent::Malformed { key: entry.key, reason: entry.reason }).await?;
    }
    emit(tx, StoreEvent::Synced).await?;
    Ok(listing.resume)
}

/// Sleeps `delay` unless the consumer goes away first.
async fn pause(tx: &mpsc::Sender<StoreEvent>, delay: Duration) -> Result<(), Gone> {
    tokio::select! {
        _ = tx.closed() => Err(Gone),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}

async fn drive<L: ListWatch>(source: Arc<L>, tx: mpsc::Sender<StoreEvent>, policy: Policy) {
    // `Err(Gone)` only means the discoverer dropped the stream: stop quietly.
    let _ = run(source, tx, policy).await;
}

async fn run<L: ListWatch>(source: Arc<L>, tx: mpsc::Sender<StoreEvent>, policy: Policy) -> Result<(), Gone> {
    let kind = source.kind();
    let mut backoff = Backoff::new(policy.retry_initial, policy.retry_max);
    let mut resume: Option<L::Resume> = None;
    loop {
        let from = match resume.clone() {
            Some(r) => r,
            None => {
                let listed = tokio::select! {
                    _ = tx.closed() => return Err(Gone),
                    listed = tokio::time::timeout(policy.list_timeout, source.list()) => {
                        listed.unwrap_or_else(|_| Err(Error::Timeout { backend: kind, operation: "list", after: policy.list_timeout }))
                    }
                };
                match listed {
                    Ok(listing) => {
                        backoff.reset();
                        let r = emit_listing(&tx, listing).await?;
                        resume = Some(r.clone());
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
            opened = source.watch(from.clone()) => opened,
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(e) => {
                if e.needs_relist() {
                    resume = None;
                }
                tracing::warn!(backend = kind, resume = ?from, error = %e, "watch failed; retrying");
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
                Some(Ok(WatchUpdate::Changes { changes, resume: r })) => {
                    backoff.reset();
                    for change in changes {
                        let event = match change {
                            Change::Upsert(record) => StoreEvent::Upsert(record),
                            Change::Delete { key } => StoreEvent::Delete { key },
                            Change::Malformed(entry) => StoreEvent::Malformed { key: entry.key, reason: entry.reason },
                        };
                        emit(&tx, event).await?;
                    }
                    resume = Some(r);
                }
                Some(Ok(WatchUpdate::Replace(listing))) => {
                    backoff.reset();
                    resume = Some(emit_listing(&tx, listing).await?);
                }
                Some(Ok(WatchUpdate::Progress)) => {
                    backoff.reset();
                    emit(&tx, StoreEvent::Progress).await?;
                }
                Some(Err(e)) => {
                    if e.needs_relist() {
                        resume = None;
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
