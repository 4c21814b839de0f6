//! Reaping: the discoverer hands long-dead heartbeat records to the store's
//! [`Reap`] capability, judged on its own monotonic clock (paused tokio
//! time), never while the stream is broken, once per observed stamp.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures panic

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use registry_core::store::{Liveness, RawRecord, Reap, Scope, StoreEvent, StoreReader};
use registry_core::{Discoverer, Discovery, Error, GrpcServices, Meta, Result, ServiceNode};
use tokio::sync::mpsc;

/// The heartbeat window every record states (a Lease's `leaseDurationSeconds`).
const WINDOW: Duration = Duration::from_secs(10);
/// The discoverer's own TTL, for records that state no window.
const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
const REAP_AFTER: u32 = 3;

/// Remembers what it was asked to delete and answers with `answer`.
struct RecordingReaper {
    calls: Mutex<Vec<RawRecord>>,
    answer: fn() -> Result<()>,
}

#[async_trait]
impl Reap for RecordingReaper {
    fn reap_after(&self) -> u32 {
        REAP_AFTER
    }

    async fn reap(&self, record: &RawRecord) -> Result<()> {
        self.calls.lock().unwrap().push(record.clone());
        (self.answer)()
    }
}

/// A reader whose events the test sends by hand, offering `reaper`.
struct ScriptedReader {
    rx: Mutex<Option<mpsc::UnboundedReceiver<StoreEvent>>>,
    reaper: Option<Arc<RecordingReaper>>,
}

impl StoreReader for ScriptedReader {
    fn events(&self) -> BoxStream<'static, StoreEvent> {
        let rx = self.rx.lock().unwrap().take().expect("events() called once");
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed()
    }

    fn reaper(&self) -> Option<Arc<dyn Reap>> {
        self.reaper.clone().map(|r| r as Arc<dyn Reap>)
    }
}

struct Fixture {
    discoverer: Discoverer,
    tx: mpsc::UnboundedSender<StoreEvent>,
    reaper: Arc<RecordingReaper>,
}

impl Fixture {
    /// A watching discoverer over a reader with a reaper answering `answer`,
    /// after a first listing of `records`.
    async fn start(answer: fn() -> Result<()>, records: Vec<RawRecord>) -> Self {
        Self::start_with(Some(answer), records).await
    }

    async fn start_with(answer: Option<fn() -> Result<()>>, records: Vec<RawRecord>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let reaper = Arc::new(RecordingReaper { calls: Mutex::new(Vec::new()), answer: answer.unwrap_or(gone) });
        let reader = ScriptedReader { rx: Mutex::new(Some(rx)), reaper: answer.map(|_| Arc::clone(&reaper)) };
        let discoverer = Discoverer::from_reader(Arc::new(reader), Scope::new("default", "prod"), DEFAULT_WINDOW);
        tx.send(StoreEvent::Reset).unwrap();
        for record in records {
            tx.send(StoreEvent::Upsert(record)).unwrap();
        }
        tx.send(StoreEvent::Synced).unwrap();
        discoverer.watcher().await.unwrap();
        Self { discoverer, tx, reaper }
    }

    fn send(&self, event: StoreEvent) {
        self.tx.send(event).unwrap();
    }

    /// Keys handed to the reaper so far, in order.
    fn reaped(&self) -> Vec<String> {
        self.reaper.calls.lock().unwrap().iter().map(|r| r.key.clone()).collect()
    }

    fn reaped_records(&self) -> Vec<RawRecord> {
        self.reaper.calls.lock().unwrap().clone()
    }
}

fn gone() -> Result<()> {
    Ok(())
}

fn renewed_meanwhile() -> Result<()> {
    Err(Error::Conflict { backend: "test", what: "record".into(), attempts: 1 })
}

fn refused() -> Result<()> {
    Err(Error::PermissionDenied { backend: "test", message: "cannot delete".into() })
}

fn node_json(lease: i64, ttl: Option<u64>) -> String {
    let mut node: ServiceNode = GrpcServices::new().service("t.S", ["M"]).expect("valid").into_node();
    node.meta = Meta::new("prod", "app", "v1");
    node.lease_id = lease;
    node.ttl = ttl;
    node.to_json().expect("encodes")
}

/// A heartbeat record of lease `lease` stamped `beat`, stating its window
/// like a Lease does, at store version `version`.
fn lease(key: &str, lease: i64, beat: u64, version: &str) -> RawRecord {
    RawRecord::new(key, node_json(lease, None))
        .with_stamp(beat.to_string())
        .with_version(version)
        .with_liveness(Liveness::Heartbeat { window: Some(WINDOW) })
}

async fn advance(by: Duration) {
    tokio::time::sleep(by).await;
    // Let the follow task and the reap tasks run.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_record_is_reaped_after_reap_after_windows() {
    let f = Fixture::start(gone, vec![lease("dead", 1, 1, "v1")]).await;
    advance(WINDOW + Duration::from_secs(1)).await;
    assert!(f.discoverer.get_app("app").is_err(), "hidden after one window");
    advance(WINDOW * REAP_AFTER - WINDOW - Duration::from_secs(2)).await;
    assert!(f.reaped().is_empty(), "not reaped before {REAP_AFTER} windows");
    advance(Duration::from_secs(2)).await;
    assert_eq!(f.reaped_records(), vec![lease("dead", 1, 1, "v1")], "the exact record last observed");
}

#[tokio::test(start_paused = true)]
async fn a_renewed_record_is_never_reaped() {
    let f = Fixture::start(gone, vec![lease("live", 1, 0, "v0")]).await;
    for beat in 1..=20 {
        advance(WINDOW / 2).await;
        f.send(StoreEvent::Upsert(lease("live", 1, beat, &format!("v{beat}"))));
    }
    advance(Duration::from_secs(1)).await;
    assert!(f.reaped().is_empty(), "{:?}", f.reaped());
    assert_eq!(f.discoverer.get_app("app").unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_record_is_handed_out_once_per_observed_stamp() {
    let f = Fixture::start(refused, vec![lease("stuck", 1, 1, "v1")]).await;
    advance(WINDOW * REAP_AFTER * 5).await;
    assert_eq!(f.reaped(), ["stuck"], "a failed delete is not retried for the same stamp");
    // The same write seen again (a relist) is no new stamp.
    f.send(StoreEvent::Reset);
    f.send(StoreEvent::Upsert(lease("stuck", 1, 1, "v1")));
    f.send(StoreEvent::Synced);
    advance(WINDOW * REAP_AFTER * 2).await;
    assert_eq!(f.reaped(), ["stuck"]);
    // A new stamp restarts the clock, and the record can be reaped again.
    f.send(StoreEvent::Upsert(lease("stuck", 1, 2, "v2")));
    advance(WINDOW * REAP_AFTER + Duration::from_secs(1)).await;
    assert_eq!(f.reaped(), ["stuck", "stuck"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_precondition_is_harmless_and_the_renewal_counts() {
    let f = Fixture::start(renewed_meanwhile, vec![lease("raced", 1, 1, "v1")]).await;
    advance(WINDOW * REAP_AFTER + Duration::from_secs(1)).await;
    assert_eq!(f.reaped(), ["raced"]);
    // The renewal that beat the delete arrives: the record is back and not reaped again.
    f.send(StoreEvent::Upsert(lease("raced", 1, 2, "v2")));
    advance(Duration::from_secs(1)).await;
    assert_eq!(f.discoverer.get_app("app").unwrap().len(), 1);
    assert_eq!(f.reaped(), ["raced"]);
}

#[tokio::test(start_paused = true)]
async fn the_precondition_follows_the_latest_version_of_an_unchanged_stamp() {
    let f = Fixture::start(gone, vec![lease("k", 1, 1, "v1")]).await;
    advance(WINDOW).await;
    // The object was touched (same heartbeat stamp, new resourceVersion): no sign of life.
    f.send(StoreEvent::Upsert(lease("k", 1, 1, "v2")));
    advance(WINDOW * REAP_AFTER - WINDOW + Duration::from_secs(1)).await;
    let reaped = f.reaped_records();
    assert_eq!(reaped.len(), 1, "the clock was not restarted");
    assert_eq!(reaped[0].version.as_deref(), Some("v2"));
}

#[tokio::test(start_paused = true)]
async fn nothing_is_reaped_while_the_stream_is_broken_and_the_outage_does_not_count() {
    let f = Fixture::start(gone, vec![lease("k", 1, 1, "v1")]).await;
    advance(WINDOW).await;
    f.send(StoreEvent::Error(Error::unavailable("test", "connection refused")));
    advance(WINDOW * REAP_AFTER * 5).await;
    f.send(StoreEvent::Error(Error::unavailable("test", "still refused")));
    advance(WINDOW * REAP_AFTER * 5).await;
    assert!(f.reaped().is_empty(), "reaped during an outage");
    // Back: a relist shows the same write. The outage does not count, so
    // REAP_AFTER - 1 windows are left.
    f.send(StoreEvent::Reset);
    advance(Duration::from_secs(1)).await;
    f.send(StoreEvent::Upsert(lease("k", 1, 1, "v1")));
    advance(Duration::from_secs(1)).await;
    assert!(f.reaped().is_empty(), "reaped while a listing was in progress");
    f.send(StoreEvent::Synced);
    advance(WINDOW * (REAP_AFTER - 1) - Duration::from_secs(2)).await;
    assert!(f.reaped().is_empty(), "the outage counted against the record");
    advance(Duration::from_secs(2)).await;
    assert_eq!(f.reaped(), ["k"]);
}

#[tokio::test(start_paused = true)]
async fn only_records_that_state_their_window_are_reaped() {
    let own_ttl = RawRecord::new("ttl", node_json(1, Some(10))).with_liveness(Liveness::Heartbeat { window: None });
    let guessed = RawRecord::new("guessed", node_json(2, None)).with_liveness(Liveness::Heartbeat { window: None });
    let managed = RawRecord::new("managed", node_json(3, None));
    let f = Fixture::start(gone, vec![own_ttl, guessed, managed]).await;
    advance(WINDOW * REAP_AFTER * 4).await;
    assert_eq!(f.reaped(), ["ttl"]);
    let live: Vec<i64> = f.discoverer.get_app("app").unwrap().iter().map(|n| n.lease_id).collect();
    assert_eq!(live, [3], "the guessed-window record is hidden, just not deleted");
}

#[tokio::test(start_paused = true)]
async fn without_a_reaper_dead_records_are_only_hidden() {
    let f = Fixture::start_with(None, vec![lease("dead", 1, 1, "v1")]).await;
    advance(WINDOW * REAP_AFTER * 4).await;
    assert!(f.reaped().is_empty());
    assert!(f.discoverer.get_app("app").is_err());
}

#[tokio::test(start_paused = true)]
async fn a_deleted_record_is_not_reaped() {
    let f = Fixture::start(gone, vec![lease("k", 1, 1, "v1")]).await;
    advance(WINDOW * 2).await;
    f.send(StoreEvent::Delete { key: "k".into() });
    advance(WINDOW * REAP_AFTER * 2).await;
    assert!(f.reaped().is_empty());
}
