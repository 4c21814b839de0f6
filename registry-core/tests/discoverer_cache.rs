//! The discovery cache ([`Discoverer`]) fed by a scripted reader of our own
//! adapter trait, on paused tokio time: readiness, relists, bad records,
//! and heartbeat expiry that ignores writers' clocks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures panic

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use registry_core::store::{Liveness, RawRecord, Scope, StoreEvent, StoreReader};
use registry_core::{Discoverer, Discovery, DiscoveryEvent, Error, GrpcServices, Meta, ServiceNode};
use tokio::sync::mpsc;

/// A reader whose events the test sends by hand.
struct ScriptedReader {
    rx: Mutex<Option<mpsc::UnboundedReceiver<StoreEvent>>>,
}

impl StoreReader for ScriptedReader {
    fn events(&self) -> BoxStream<'static, StoreEvent> {
        let rx = self.rx.lock().unwrap().take().expect("events() called once");
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed()
    }
}

const WINDOW: Duration = Duration::from_secs(10);
const METHOD: &str = "/t.S/M";

fn discoverer() -> (Discoverer, mpsc::UnboundedSender<StoreEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let reader = Arc::new(ScriptedReader { rx: Mutex::new(Some(rx)) });
    (Discoverer::from_reader(reader, Scope::new("default", "prod"), WINDOW), tx)
}

fn node_json(lease: i64, renewed_at_ms: i64, run_date: &str) -> String {
    let mut node: ServiceNode = GrpcServices::new().service("t.S", ["M"]).expect("valid").into_node();
    node.meta = Meta::new("prod", "app", "v1");
    node.lease_id = lease;
    node.renewed_at_ms = Some(renewed_at_ms);
    node.run_date = run_date.to_owned();
    node.to_json().expect("encodes")
}

fn heartbeat(key: &str, lease: i64, beat: i64) -> StoreEvent {
    // The writer's clock is 9 hours ahead of ours and in another time zone: it must not matter.
    let skewed_ms = 4_102_444_800_000 + beat;
    StoreEvent::Upsert(
        RawRecord::new(key, node_json(lease, skewed_ms, "2099-12-31 23:59:59"))
            .with_stamp(beat.to_string())
            .with_liveness(Liveness::Heartbeat { window: None }),
    )
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn leases(d: &Discoverer) -> Vec<i64> {
    d.get_service(METHOD).map(|n| n.iter().map(|n| n.lease_id).collect()).unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn not_ready_until_the_first_listing_completes() {
    let (d, tx) = discoverer();
    let watching = tokio::spawn({
        let d = d.clone();
        async move { d.watcher().await }
    });
    settle().await;
    assert!(matches!(d.get_service(METHOD), Err(Error::NotReady)));
    tx.send(StoreEvent::Reset).unwrap();
    tx.send(heartbeat("a", 1, 1)).unwrap();
    settle().await;
    assert!(matches!(d.get_service(METHOD), Err(Error::NotReady)), "half a listing is not served");
    tx.send(StoreEvent::Synced).unwrap();
    watching.await.unwrap().expect("ready");
    assert_eq!(leases(&d), [1]);
}

#[tokio::test(start_paused = true)]
async fn first_listing_error_is_returned_and_retrying_continues() {
    let (d, tx) = discoverer();
    tx.send(StoreEvent::Error(Error::unavailable("scripted", "refused"))).unwrap();
    let err = d.watcher().await.expect_err("first listing failed");
    assert!(matches!(err, Error::BackendUnavailable { .. }), "{err:?}");
    tx.send(StoreEvent::Reset).unwrap();
    tx.send(StoreEvent::Synced).unwrap();
    tokio::time::timeout(Duration::from_secs(1), d.wait_ready()).await.expect("ready after retry");
    assert!(matches!(d.get_service(METHOD), Err(Error::MethodNotFound { .. })));
}

#[tokio::test(start_paused = true)]
async fn heartbeat_records_live_while_stamps_change_whatever_the_writer_clock_says() {
    let (d, tx) = discoverer();
    tx.send(StoreEvent::Reset).unwrap();
    tx.send(heartbeat("a", 1, 0)).unwrap();
    tx.send(StoreEvent::Synced).unwrap();
    d.watcher().await.expect("ready");
    for beat in 1..=6 {
        tokio::time::sleep(WINDOW / 2).await;
        tx.send(heartbeat("a", 1, beat)).unwrap();
        settle().await;
        assert_eq!(leases(&d), [1], "alive at beat {beat}");
    }
    // Heartbeats stop: hidden one window after the last one, not before.
    tokio::time::sleep(WINDOW - Duration::from_millis(100)).await;
    assert_eq!(leases(&d), [1], "still inside the window");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(d.get_service(METHOD), Err(Error::MethodNotFound { .. })), "expired");
    // A relist that shows the same dead write does not resurrect it.
    tx.send(StoreEvent::Reset).unwrap();
    tx.send(heartbeat("a", 1, 6)).unwrap();
    tx.send(StoreEvent::Synced).unwrap();
    settle().await;
    assert!(leases(&d).is_empty(), "an old stamp is not a sign of life");
    // A new heartbeat brings it back.
    tx.send(heartbeat("a", 1, 7)).unwrap();
    settle().await;
    assert_eq!(leases(&d), [1]);
}

#[tokio::test(start_paused = true)]
async fn expiry_pauses_while_the_store_is_unreachable() {
    let (d, tx) = discoverer();
    tx.send(StoreEvent::Reset).unwrap();
    tx.send(heartbeat("a", 1, 0)).unwrap();
    tx.send(StoreEvent::Synced).unwrap();
    d.watcher().await.expect("ready");
    tokio::time::sleep(WINDOW / 2).await;
    tx.send(StoreEvent::Error(Error::unavailable("scripted", "down"))).unwrap();
    tokio::time::sleep(WINDOW * 3).await;
    assert_eq!(leases(&d), [1], "last view kept during the outage");
    // Back: a relist with a fresh heartbeat.
    tx.send(StoreEvent::Reset).unwrap();
    tx.send(heartbeat("a", 1, 1)).unwrap();
    tx.send(StoreEvent::Synced).unwrap();
    settle().await;
    assert_eq!(leases(&d), [1]);
}

#[tokio::test(start_paused = true)]
async fn relist_removes_what_is_gone_and_emits_events() {
    let (d, tx) = discoverer();
    tx.send(StoreEvent::Reset).unwrap();
    tx.send(StoreEvent::Upsert(RawRecord::new("a", node_json(1, 0, "")))).unwrap();
    tx.send(StoreEvent::Upsert(RawRecord::new("b", node_json(2, 0, "")))).unwrap();
    tx.send(StoreEvent::Synced).unwrap();
    d.watcher().await.expect("ready");
    let mut events = d.events();
    let mut initial = Vec::new();
    for _ in 0..2 {
        match events.next().await {
            Some(DiscoveryEvent::Up { node, .. }) => initial.push(node.lease_id),
            other => panic!("expected Up, got {other:?}"),
        }
    }
    initial.sort_unstable();
    assert_eq!(initial, [1, 2]);
    tx.send(StoreEvent::Reset).unwrap();
    tx.send(StoreEvent::Upsert(RawRecord::new("b", node_json(2, 0, "")))).unwrap();
    tx.send(StoreEvent::Synced).unwrap();
    match events.next().await {
        Some(DiscoveryEvent::Down { node, .. }) => assert_eq!(node.lease_id, 1),
        other => panic!("expected Down, got {other:?}"),
    }
    assert_eq!(leases(&d), [2]);
}

#[tokio::test(start_paused = true)]
async fn malformed_and_foreign_records_are_counted_not_fatal() {
    let (d, tx) = discoverer();
    tx.send(StoreEvent::Reset).unwrap();
    tx.send(StoreEvent::Upsert(RawRecord::new("junk", "{oops"))).unwrap();
    let mut other_env: ServiceNode = serde_json::from_str(&node_json(9, 0, "")).unwrap();
    other_env.meta.env = "staging".into();
    tx.send(StoreEvent::Upsert(RawRecord::new("foreign", other_env.to_json().unwrap()))).unwrap();
    tx.send(StoreEvent::Malformed { key: "bad/key".into(), reason: "undecodable".into() }).unwrap();
    tx.send(StoreEvent::Upsert(RawRecord::new("good", node_json(1, 0, "")))).unwrap();
    tx.send(StoreEvent::Synced).unwrap();
    d.watcher().await.expect("ready");
    assert_eq!(leases(&d), [1]);
    assert_eq!(d.skipped(), 3);
    // A relist that shows the same bad writes again does not count them again.
    tx.send(StoreEvent::Reset).unwrap();
    tx.send(StoreEvent::Upsert(RawRecord::new("junk", "{oops"))).unwrap();
    tx.send(StoreEvent::Malformed { key: "bad/key".into(), reason: "undecodable".into() }).unwrap();
    tx.send(StoreEvent::Upsert(RawRecord::new("good", node_json(1, 0, "")))).unwrap();
    tx.send(StoreEvent::Synced).unwrap();
    settle().await;
    assert_eq!(d.skipped(), 3, "relisted bad writes are not recounted");
    assert_eq!(leases(&d), [1]);
    // A good record that turns bad disappears instead of lingering.
    tx.send(StoreEvent::Upsert(RawRecord::new("good", "not json"))).unwrap();
    settle().await;
    assert!(leases(&d).is_empty());
}
