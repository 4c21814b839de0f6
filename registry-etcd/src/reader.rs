//! Reading a scope: a paged listing at one revision, then a watch of the
//! prefix from the next revision; the resume point is the etcd revision.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{EventType, GetOptions, KeyValue, KvClient, WatchClient, WatchOptions, WatchResponse, WatchStream};
use futures::StreamExt;
use futures::stream::BoxStream;
use registry_core::store::{Change, ListWatch, Listing, RawRecord, WatchUpdate};
use registry_core::{Error, Result};

use crate::error::{Call, KIND, watch_canceled};

/// Keys fetched per page of a listing (pages share one revision).
const LIST_PAGE: i64 = 500;

/// How long an open watch may deliver nothing before it is asked for a
/// progress report (a `progress_request`, which a live member answers at
/// once). No answer within the request timeout after that ends the watch
/// with [`Error::Timeout`], and core resumes it from its last revision — on
/// another member when this one went silent. So a watch whose member is cut
/// off without a reset is noticed within this plus the request timeout (7 s
/// with the defaults), where the HTTP/2 keepalive alone takes its interval
/// plus its timeout (15 s).
pub const WATCH_PROGRESS_AFTER: Duration = Duration::from_secs(2);

/// Lists and watches one scope's prefix.
pub(crate) struct EtcdReader {
    kv: KvClient,
    watch: WatchClient,
    prefix: String,
    timeout: Duration,
}

impl EtcdReader {
    pub(crate) fn new(kv: KvClient, watch: WatchClient, prefix: String, timeout: Duration) -> Self {
        Self { kv, watch, prefix, timeout }
    }

    /// A denied read names the prefix the discoverer needs to read.
    fn needing_read(&self, error: Error) -> Error {
        crate::error::needing(error, || format!("read permission on the key prefix `{}`", self.prefix))
    }
}

fn record(kv: &KeyValue) -> RawRecord {
    // Non-UTF-8 bytes cannot be a node: the lossy text fails to parse and
    // core skips and counts the record.
    RawRecord::new(String::from_utf8_lossy(kv.key()), String::from_utf8_lossy(kv.value()))
        .with_stamp(kv.mod_revision().to_string())
}

fn to_revision(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: everything from the prefix on.
    vec![0]
}

#[async_trait]
impl ListWatch for EtcdReader {
    fn kind(&self) -> &'static str {
        KIND
    }

    type Resume = u64;

    async fn list(&self) -> Result<Listing<u64>> {
        let call = Call::new("list", self.timeout);
        let end = prefix_end(self.prefix.as_bytes());
        let mut kv = self.kv.clone();
        let mut records = Vec::new();
        let mut from = self.prefix.as_bytes().to_vec();
        // Every page is read at the first page's revision, so the listing is
        // one consistent snapshot and watching from its revision misses nothing.
        let mut revision: Option<i64> = None;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(LIST_PAGE);
            if let Some(r) = revision {
                options = options.with_revision(r);
            }
            let page = call.run(kv.get(from.clone(), Some(options))).await.map_err(|e| self.needing_read(e))?;
            let at = *revision.get_or_insert_with(|| page.header().map_or(0, |h| h.revision()));
            records.extend(page.kvs().iter().map(record));
            match page.kvs().last() {
                Some(last) if page.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(Listing::new(records, to_revision(at))),
            }
        }
    }

    async fn watch(&self, revision: u64) -> Result<BoxStream<'static, Result<WatchUpdate<u64>>>> {
        let call = Call::new("watch", self.timeout);
        let start = i64::try_from(revision.saturating_add(1)).unwrap_or(i64::MAX);
        let options = WatchOptions::new().with_prefix().with_start_revision(start).with_prev_key();
        let mut client = self.watch.clone();
        let mut stream =
            call.run(client.watch(self.prefix.clone(), Some(options))).await.map_err(|e| self.needing_read(e))?;
        // The first answer says whether the watch exists (or why not: a
        // compacted start revision, refused credentials, no leader).
        let first = call.run(stream.message()).await.map_err(|e| self.needing_read(e))?;
        let mut open_watch = OpenWatch { stream, revision, timeout: self.timeout, done: false };
        let first = match first {
            Some(response) => open_watch.translate(&response),
            None => return Err(Error::unavailable(KIND, "watch stream closed before it was created")),
        };
        let head = Some(Ok(first.map_err(|e| self.needing_read(e))?));
        let rest = futures::stream::unfold(open_watch, |mut open_watch| async move {
            let item = open_watch.next().await?;
            Some((item, open_watch))
        });
        Ok(futures::stream::iter(head).chain(rest).boxed())
    }

    /// A healthy watch reports within [`WATCH_PROGRESS_AFTER`] of silence
    /// (a live member answers the progress request at once); one silent for
    /// that plus the request timeout is ended by the reader itself.
    fn max_silence(&self) -> Option<Duration> {
        Some(WATCH_PROGRESS_AFTER + self.timeout)
    }
}

/// An open watch and the revision it has delivered up to.
struct OpenWatch {
    stream: WatchStream,
    revision: u64,
    timeout: Duration,
    done: bool,
}

impl OpenWatch {
    /// The next update. A stream silent for [`WATCH_PROGRESS_AFTER`] is
    /// asked for progress; one still silent a request timeout later ends
    /// with [`Error::Timeout`].
    async fn next(&mut self) -> Option<Result<WatchUpdate<u64>>> {
        if self.done {
            return None;
        }
        let mut asked: Option<tokio::time::Instant> = None;
        loop {
            let wait = asked.map_or(WATCH_PROGRESS_AFTER, |at| self.timeout.saturating_sub(at.elapsed()));
            let message = match tokio::time::timeout(wait, self.stream.message()).await {
                Ok(message) => message,
                Err(_) if asked.is_none() => {
                    let ask = Call::new("watch progress request", self.timeout);
                    if let Err(e) = ask.run(self.stream.request_progress()).await {
                        self.done = true;
                        return Some(Err(e));
                    }
                    asked = Some(tokio::time::Instant::now());
                    continue;
                }
                Err(_) => {
                    self.done = true;
                    let silent = WATCH_PROGRESS_AFTER + self.timeout;
                    tracing::warn!(revision = self.revision, ?silent, "watch silent; ending it to resume elsewhere");
                    return Some(Err(Call::new("watch (no progress report)", silent).timed_out()));
                }
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => return None,
                Err(e) => {
                    self.done = true;
                    return Some(Err(Call::new("watch", self.timeout).map(e)));
                }
            };
            return Some(self.translate(&response));
        }
    }

    fn translate(&mut self, response: &WatchResponse) -> Result<WatchUpdate<u64>> {
        if response.canceled() || response.compact_revision() > 0 {
            self.done = true;
            return Err(watch_canceled(response.cancel_reason(), response.compact_revision(), self.revision));
        }
        let changes: Vec<Change> = response
            .events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                Some(match event.event_type() {
                    EventType::Put => Change::Upsert(record(kv)),
                    EventType::Delete => Change::Delete { key: String::from_utf8_lossy(kv.key()).into_owned() },
                })
            })
            .collect();
        // Resume after the last event delivered. Responses without events
        // (the `created` answer) carry the store's current revision in their
        // header, which may be ahead of events still to come: never resume
        // from it.
        let Some(revision) =
            response.events().iter().filter_map(|e| e.kv()).map(|kv| to_revision(kv.mod_revision())).max()
        else {
            // The watch's `created` answer or a progress report: the member
            // is alive and the watch current — a confirmation for discovery.
            return Ok(WatchUpdate::Progress);
        };
        self.revision = self.revision.max(revision);
        Ok(WatchUpdate::Changes { changes, resume: self.revision })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"ns/dev/"), b"ns/dev0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
