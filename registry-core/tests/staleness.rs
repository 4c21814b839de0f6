//! Staleness, empty-set protection and the last-known-good snapshot, on a
//! discoverer over a mocked [`StoreReader`] (mockall) whose events the test
//! sends by hand. Timing runs on paused tokio time, except where the
//! snapshot file is written (a blocking task).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures panic

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use mockall::mock;
use registry_core::conf::{DiscoveryOptions, EmptyProtection};
use registry_core::store::{RawRecord, Scope, StoreEvent, StoreReader};
use registry_core::{Discoverer, Discovery, Error, GrpcServices, Meta, SourceHealth, merged_discovery};
use tokio::sync::mpsc;

mock! {
    Reader {}
    impl StoreReader for Reader {
        fn events(&self) -> BoxStream<'static, StoreEvent>;
        fn max_silence(&self) -> Option<Duration>;
    }
}

const METHOD: &str = "/t.S/M";
const WINDOW: Duration = Duration::from_secs(10);

fn scope() -> Scope {
    Scope::new("ns", "dev")
}

/// A reader that hands out the events the test sends, and states `silence`.
fn reader(silence: Option<Duration>) -> (MockReader, mpsc::UnboundedSender<StoreEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut reader = MockReader::new();
    reader.expect_events().return_once(move || tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed());
    reader.expect_max_silence().return_const(silence);
    (reader, tx)
}

fn record(app: &str, lease: i64) -> RawRecord {
    let mut node = GrpcServices::new().service("t.S", ["M"]).expect("valid").into_node();
    node.meta = Meta::new("dev", app, "v1");
    node.lease_id = lease;
    node.network.internal = format!("10.0.0.{lease}:1");
    RawRecord::new(format!("ns/dev/{app}/{lease}"), node.to_json().expect("json"))
}

fn listing(tx: &mpsc::UnboundedSender<StoreEvent>, records: &[RawRecord]) {
    tx.send(StoreEvent::Reset).unwrap();
    for r in records {
        tx.send(StoreEvent::Upsert(r.clone())).unwrap();
    }
    tx.send(StoreEvent::Synced).unwrap();
}

/// The stream breaks and relists `records`: the fault window empty-set
/// protection guards.
fn relisting(tx: &mpsc::UnboundedSender<StoreEvent>, records: &[RawRecord]) {
    tx.send(StoreEvent::Error(Error::unavailable("mock", "connection reset"))).unwrap();
    listing(tx, records);
}

fn leases(d: &Discoverer) -> Vec<i64> {
    let mut l: Vec<i64> = d.get_service(METHOD).map(|n| n.iter().map(|n| n.lease_id).collect()).unwrap_or_default();
    l.sort_unstable();
    l
}

fn one(d: &dyn Discovery) -> SourceHealth {
    let health = d.health();
    assert_eq!(health.sources.len(), 1, "{health:?}");
    health.sources[0].clone()
}

/// Lets the discoverer's task apply what was sent (paused time advances only
/// when every task is idle).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}

fn discoverer(reader: MockReader, options: DiscoveryOptions) -> Discoverer {
    Discoverer::from_reader_with(Arc::new(reader), scope(), WINDOW, "mock", options)
}

#[tokio::test(start_paused = true)]
async fn health_follows_listing_errors_and_progress() {
    let (mock, tx) = reader(Some(Duration::from_secs(7)));
    let d = discoverer(mock, DiscoveryOptions::default());
    let h = one(&d);
    assert!(h.stale && !h.ready && !h.stream_healthy && h.since_confirmed.is_none(), "{h:?}");
    assert_eq!(h.source, "mock");
    assert_eq!(h.stale_after, Some(Duration::from_secs(7)));

    listing(&tx, &[record("a", 1)]);
    d.watcher().await.expect("ready");
    settle().await;
    let h = one(&d);
    assert!(h.ready && h.stream_healthy && !h.stale, "{h:?}");
    assert!(h.since_confirmed.expect("confirmed") < Duration::from_secs(1));
    assert!(d.health().is_healthy());

    tx.send(StoreEvent::Error(Error::unavailable("mock", "connection reset"))).unwrap();
    settle().await;
    let h = one(&d);
    assert!(h.stale && !h.stream_healthy && h.stream_errors == 1, "{h:?}");
    assert!(h.last_error.as_deref().is_some_and(|e| e.contains("connection reset")), "{h:?}");
    assert_eq!(leases(&d), [1], "the last view is served meanwhile");

    // The stream is back: a progress report (nothing changed) confirms it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    tx.send(StoreEvent::Progress).unwrap();
    settle().await;
    let h = one(&d);
    assert!(!h.stale && h.stream_healthy && h.resyncs == 1 && h.last_error.is_none(), "{h:?}");
}

#[tokio::test(start_paused = true)]
async fn a_source_silent_past_its_bound_is_stale_until_it_reports() {
    let (mock, tx) = reader(Some(Duration::from_secs(7)));
    let d = discoverer(mock, DiscoveryOptions::default());
    listing(&tx, &[record("a", 1)]);
    d.watcher().await.expect("ready");
    settle().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!one(&d).stale, "within the bound");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let h = one(&d);
    assert!(h.stale && h.stream_healthy, "silent past the bound, no error: stale, stream not known broken: {h:?}");
    assert!(h.since_confirmed.expect("confirmed") > Duration::from_secs(7));
    tx.send(StoreEvent::Progress).unwrap();
    settle().await;
    assert!(!one(&d).stale);
    // The option overrides the reader's bound.
    let (mock, tx) = reader(None);
    let d = discoverer(mock, DiscoveryOptions::default().with_stale_after(Duration::from_secs(2)));
    listing(&tx, &[record("a", 1)]);
    d.watcher().await.expect("ready");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(one(&d).stale);
}

#[tokio::test(start_paused = true)]
async fn without_a_stated_bound_silence_is_not_staleness() {
    let (mock, tx) = reader(None);
    let d = discoverer(mock, DiscoveryOptions::default());
    listing(&tx, &[record("a", 1)]);
    d.watcher().await.expect("ready");
    tokio::time::sleep(Duration::from_secs(600)).await;
    let h = one(&d);
    assert!(!h.stale && h.stale_after.is_none(), "{h:?}");
}

#[tokio::test(start_paused = true)]
async fn an_empty_listing_is_held_until_confirmed_on_a_healthy_stream() {
    let (mock, tx) = reader(Some(Duration::from_secs(7)));
    let rule = EmptyProtection::ConfirmFor(Duration::from_secs(30));
    let d = discoverer(mock, DiscoveryOptions::default().with_empty_protection(rule));
    listing(&tx, &[record("a", 1), record("a", 2)]);
    d.watcher().await.expect("ready");
    settle().await;

    relisting(&tx, &[]);
    settle().await;
    assert_eq!(leases(&d), [1, 2], "an empty listing does not empty the view");
    let h = one(&d);
    assert!(h.empty_held && h.stale, "{h:?}");

    // A break restarts the confirmation clock: 20 s in, the stream breaks for 20 s.
    tokio::time::sleep(Duration::from_secs(20)).await;
    tx.send(StoreEvent::Error(Error::unavailable("mock", "down"))).unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(leases(&d), [1, 2], "not released while the stream is broken");
    listing(&tx, &[]);
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(leases(&d), [1, 2], "25 s of a healthy stream is not 30");
    tx.send(StoreEvent::Progress).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(leases(&d).is_empty(), "confirmed empty for 30 s: applied");
    let h = one(&d);
    assert!(!h.empty_held && !h.stale, "{h:?}");
}

#[tokio::test(start_paused = true)]
async fn an_empty_listing_on_a_healthy_stream_is_news_and_applies_at_once() {
    // A Consul blocking answer after the last instance deregistered: the
    // stream never broke, so the listing is not in a fault window.
    let (mock, tx) = reader(Some(Duration::from_secs(7)));
    let d = discoverer(mock, DiscoveryOptions::default().with_empty_protection(EmptyProtection::Always));
    listing(&tx, &[record("a", 1), record("a", 2)]);
    d.watcher().await.expect("ready");
    settle().await;
    listing(&tx, &[]);
    settle().await;
    assert!(leases(&d).is_empty(), "applied at once");
    let h = one(&d);
    assert!(!h.empty_held && !h.stale, "{h:?}");
    // After a break and a non-empty relist, the window is closed again.
    relisting(&tx, &[record("a", 3)]);
    settle().await;
    listing(&tx, &[]);
    settle().await;
    assert!(leases(&d).is_empty(), "the window closed with the applied relist");
}

#[tokio::test(start_paused = true)]
async fn a_node_appearing_ends_the_hold_with_the_stores_view() {
    let (mock, tx) = reader(None);
    let d = discoverer(mock, DiscoveryOptions::default());
    listing(&tx, &[record("a", 1), record("a", 2)]);
    d.watcher().await.expect("ready");
    relisting(&tx, &[]);
    settle().await;
    assert_eq!(leases(&d), [1, 2]);
    tx.send(StoreEvent::Upsert(record("a", 3))).unwrap();
    settle().await;
    assert_eq!(leases(&d), [3], "the store holds the empty listing plus the new node");
    assert!(!one(&d).empty_held);
    // A non-empty listing applies at once, as always.
    listing(&tx, &[record("a", 4)]);
    settle().await;
    assert_eq!(leases(&d), [4]);
}

#[tokio::test(start_paused = true)]
async fn always_never_lets_a_listing_empty_the_view_and_off_does() {
    let (mock, tx) = reader(None);
    let d = discoverer(mock, DiscoveryOptions::default().with_empty_protection(EmptyProtection::Always));
    listing(&tx, &[record("a", 1)]);
    d.watcher().await.expect("ready");
    relisting(&tx, &[]);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(leases(&d), [1]);
    assert!(one(&d).empty_held);
    // Nodes still leave one by one.
    tx.send(StoreEvent::Delete { key: "ns/dev/a/1".into() }).unwrap();
    settle().await;
    assert!(leases(&d).is_empty());

    let (mock, tx) = reader(None);
    let d = discoverer(mock, DiscoveryOptions::default().with_empty_protection(EmptyProtection::Off));
    listing(&tx, &[record("a", 1)]);
    d.watcher().await.expect("ready");
    listing(&tx, &[]);
    settle().await;
    assert!(leases(&d).is_empty());
    assert!(!one(&d).empty_held);
}

#[tokio::test(start_paused = true)]
async fn a_first_empty_listing_is_not_held() {
    let (mock, tx) = reader(None);
    let d = discoverer(mock, DiscoveryOptions::default());
    listing(&tx, &[]);
    d.watcher().await.expect("ready");
    let h = one(&d);
    assert!(!h.empty_held && !h.stale, "{h:?}");
}

#[tokio::test(start_paused = true)]
async fn merged_discovery_reports_each_source() {
    let (r1, tx1) = reader(Some(Duration::from_secs(7)));
    let (r2, tx2) = reader(None);
    let d1 = Arc::new(Discoverer::from_reader_with(Arc::new(r1), scope(), WINDOW, "old", DiscoveryOptions::default()));
    let d2 = Arc::new(Discoverer::from_reader_with(Arc::new(r2), scope(), WINDOW, "new", DiscoveryOptions::default()));
    listing(&tx1, &[record("a", 1)]);
    listing(&tx2, &[record("b", 2)]);
    let merged = merged_discovery(vec![d1, d2], "ns", "dev", WINDOW).expect("valid");
    merged.watcher().await.expect("ready");
    settle().await;
    tx2.send(StoreEvent::Error(Error::unavailable("mock", "down"))).unwrap();
    settle().await;
    let health = merged.health();
    let names: Vec<&str> = health.sources.iter().map(|s| s.source.as_str()).collect();
    assert_eq!(names, ["old", "new"]);
    assert!(!health.sources[0].stale && health.sources[1].stale, "{health:?}");
    assert!(health.is_stale() && !health.is_healthy());
}

// ------------------------------------------------------------ snapshots

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("registry-staleness-{}", registry_core::store::next_instance_id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn a_restart_serves_the_snapshot_marked_stale_until_the_store_answers() {
    let path = temp_path("view.json");
    let options = DiscoveryOptions::default().with_snapshot(&path);
    {
        let (mock, tx) = reader(None);
        let d = discoverer(mock, options.clone());
        listing(&tx, &[record("a", 1), record("a", 2)]);
        d.watcher().await.expect("ready");
        wait_for("the snapshot is written", || path.exists()).await;
        d.unwatch();
    }
    // Restarted while the store is unreachable.
    let (mock, tx) = reader(None);
    let d = discoverer(mock, options.clone());
    d.watcher().await.expect("ready from the snapshot");
    assert_eq!(leases(&d), [1, 2]);
    let h = one(&d);
    assert!(h.from_snapshot && h.stale && h.ready && h.snapshot_error.is_none(), "{h:?}");
    tx.send(StoreEvent::Error(Error::unavailable("mock", "refused"))).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(leases(&d), [1, 2], "an error keeps the snapshot's view");
    assert!(one(&d).from_snapshot);
    // The store answers: its listing replaces the snapshot's view.
    listing(&tx, &[record("a", 2), record("a", 3)]);
    wait_for("the store's view", || leases(&d) == [2, 3]).await;
    let h = one(&d);
    assert!(!h.from_snapshot && !h.stale, "{h:?}");
    // And the file follows the live view.
    wait_for("the snapshot holds the live view", || {
        let snap = registry_core::snapshot::load(&path, "mock", &scope()).expect("loads");
        let mut keys: Vec<String> = snap.records.iter().map(|r| r.key.clone()).collect();
        keys.sort();
        keys == ["ns/dev/a/2", "ns/dev/a/3"]
    })
    .await;
}

#[tokio::test]
async fn corrupted_or_foreign_snapshots_are_reported_and_ignored() {
    for (name, content) in [
        ("truncated", "{\"format\":\"registry-discovery-snapshot\",\"version\":1,\"reco".to_owned()),
        ("binary", "\u{0}\u{1}garbage".to_owned()),
        ("other program", "{\"listen\": \":8080\"}".to_owned()),
        ("other version", "{\"format\":\"registry-discovery-snapshot\",\"version\":7}".to_owned()),
    ] {
        let path = temp_path("view.json");
        std::fs::write(&path, &content).unwrap();
        let (mock, tx) = reader(None);
        let d = discoverer(mock, DiscoveryOptions::default().with_snapshot(&path));
        let h = one(&d);
        assert!(h.snapshot_error.is_some() && !h.ready && !h.from_snapshot, "{name}: {h:?}");
        assert!(matches!(d.get_service(METHOD), Err(Error::NotReady)), "{name}");
        // The live view works as without a snapshot, and replaces the bad file.
        listing(&tx, &[record("a", 1)]);
        d.watcher().await.expect("ready");
        assert_eq!(leases(&d), [1], "{name}");
        wait_for("the bad file is replaced", || {
            registry_core::snapshot::load(&path, "mock", &scope()).is_ok_and(|s| s.records.len() == 1)
        })
        .await;
    }
    // Another discoverer's snapshot (another env) is foreign.
    let path = temp_path("view.json");
    let snap = registry_core::snapshot::Snapshot::new("mock", &Scope::new("ns", "prod"), Vec::new());
    registry_core::snapshot::save(&path, &snap).unwrap();
    let (mock, _tx) = reader(None);
    let d = discoverer(mock, DiscoveryOptions::default().with_snapshot(&path));
    let h = one(&d);
    assert!(h.snapshot_error.as_deref().is_some_and(|e| e.contains("foreign")), "{h:?}");
}

#[tokio::test]
async fn a_stale_or_held_view_is_never_saved_over_a_good_snapshot() {
    let path = temp_path("view.json");
    let options = DiscoveryOptions::default().with_snapshot(&path).with_empty_protection(EmptyProtection::Always);
    let (mock, tx) = reader(None);
    let d = discoverer(mock, options);
    listing(&tx, &[record("a", 1)]);
    d.watcher().await.expect("ready");
    wait_for("the snapshot is written", || path.exists()).await;
    let saved = std::fs::read(&path).unwrap();
    relisting(&tx, &[]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(std::fs::read(&path).unwrap(), saved, "the held view is not saved");
    assert_eq!(leases(&d), [1]);
}

/// A heartbeat record (Kubernetes Lease or ConfigMap entry) with a 2 s window.
fn heartbeat(app: &str, lease: i64) -> RawRecord {
    record(app, lease).with_liveness(registry_core::store::Liveness::Heartbeat { window: Some(Duration::from_secs(2)) })
}

#[tokio::test(start_paused = true)]
async fn a_silent_stream_hides_no_heartbeat_record_until_the_source_confirms() {
    // A reader that reports progress: its silence may be a dead stream.
    let (mock, tx) = reader(Some(Duration::from_secs(7)));
    let d = discoverer(mock, DiscoveryOptions::default());
    listing(&tx, &[heartbeat("a", 1)]);
    d.watcher().await.expect("ready");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(leases(&d), [1], "hidden on silence, before the source confirmed the missing heartbeats");
    // The source confirms the view: the heartbeat is missing from the store.
    tx.send(StoreEvent::Progress).unwrap();
    settle().await;
    assert!(leases(&d).is_empty(), "not hidden after the confirmation");
}

#[tokio::test(start_paused = true)]
async fn a_reader_without_progress_hides_heartbeat_records_at_their_window() {
    let (mock, tx) = reader(None);
    let d = discoverer(mock, DiscoveryOptions::default());
    listing(&tx, &[heartbeat("a", 1)]);
    d.watcher().await.expect("ready");
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert_eq!(leases(&d), [1]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(leases(&d).is_empty(), "not hidden at the end of its window");
}

#[tokio::test(start_paused = true)]
async fn a_silent_outage_counts_from_the_last_confirmation() {
    let (mock, tx) = reader(Some(Duration::from_secs(7)));
    let d = discoverer(mock, DiscoveryOptions::default());
    listing(&tx, &[heartbeat("a", 1)]);
    d.watcher().await.expect("ready");
    // Silent for 7 s (heartbeats stuck in a dead stream), then the break is reported.
    tokio::time::sleep(Duration::from_secs(7)).await;
    tx.send(StoreEvent::Error(Error::unavailable("mock", "no answer"))).unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(leases(&d), [1], "hidden during the outage");
    // Back: the relisting still shows the last heartbeat seen (the instance
    // renews a moment later). The whole 15 s went unobserved, so the record
    // has its window again, not a window minus the 7 s of silence.
    listing(&tx, &[heartbeat("a", 1)]);
    settle().await;
    assert_eq!(leases(&d), [1], "hidden right after the outage");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tx.send(StoreEvent::Progress).unwrap();
    settle().await;
    assert_eq!(leases(&d), [1], "hidden within its window after the outage");
    // No renewal within the window after the outage: a dead instance after all.
    tokio::time::sleep(Duration::from_secs(1)).await;
    tx.send(StoreEvent::Progress).unwrap();
    settle().await;
    assert!(leases(&d).is_empty(), "a dead record outlived its window after the outage");
}
