//! Lookups allocate nothing, and the cache stays within its memory budget.
//! (Counts and bytes, not time: timing lives in `benches/`.)
//!
//! The memory figures (printed; docs/performance.md, "Index"):
//! `cargo test -p registry-core --release --test lookup_allocations -- --nocapture`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures panic

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use registry_core::store::{RawRecord, Scope, StoreEvent, StoreReader};
use registry_core::testing::fleet_node;
use registry_core::{Discoverer, Discovery};

/// A method no fleet node serves; the late change adds it.
const LATE_METHOD: &str = "/late.Svc/Method";

/// Lists a fixed fleet once, then (optionally, a little later, so that it is
/// a batch of its own) changes one node, then stays quiet.
struct FleetReader {
    apps: usize,
    nodes: usize,
    late_change: bool,
}

impl StoreReader for FleetReader {
    fn events(&self) -> BoxStream<'static, StoreEvent> {
        let mut events = vec![StoreEvent::Reset];
        for a in 0..self.apps {
            for n in 0..self.nodes {
                let json = fleet_node(a, n, 10).to_json().expect("encodes");
                events.push(StoreEvent::Upsert(RawRecord::new(format!("k/{a}/{n}"), json)));
            }
        }
        events.push(StoreEvent::Synced);
        let late = self.late_change.then(|| {
            let mut node = fleet_node(0, 0, 10);
            node.methods.insert(LATE_METHOD, true);
            StoreEvent::Upsert(RawRecord::new("k/0/0", node.to_json().expect("encodes")))
        });
        let late = futures::stream::iter(late).then(|event| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            event
        });
        futures::stream::iter(events).chain(late).chain(futures::stream::pending()).boxed()
    }
}

#[tokio::test]
async fn get_service_does_not_allocate() {
    let d = Discoverer::from_reader(
        Arc::new(FleetReader { apps: 100, nodes: 10, late_change: false }),
        Scope::new("default", "bench"),
        Duration::from_secs(10),
    );
    d.watcher().await.expect("ready");
    let method = "/fleet.App42/Method7";
    assert_eq!(d.get_service(method).expect("found").len(), 10);
    let info = allocation_counter::measure(|| {
        for _ in 0..1000 {
            let nodes = d.get_service(method).expect("found");
            std::hint::black_box(&nodes);
        }
    });
    assert_eq!(info.count_total, 0, "lookups allocated {} times", info.count_total);
}

/// Bytes held by a whole discoverer (index, records, snapshots, event buffer,
/// and the runtime its task runs on) following `apps` × 10 nodes × 10 methods,
/// in steady state: after a change past the initial listing, so that both
/// snapshots the index keeps are full.
fn discoverer_bytes(apps: usize) -> u64 {
    let mut kept = None;
    let info = allocation_counter::measure(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let d = Discoverer::from_reader(
            Arc::new(FleetReader { apps, nodes: 10, late_change: apps > 0 }),
            Scope::new("default", "bench"),
            Duration::from_secs(10),
        );
        rt.block_on(async {
            d.watcher().await.expect("ready");
            while apps > 0 && d.get_service(LATE_METHOD).is_err() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        kept = Some((rt, d));
    });
    drop(kept);
    info.bytes_current as u64
}

#[test]
fn cache_memory_per_node_with_ten_methods_is_under_1_kib() {
    let empty = discoverer_bytes(0);
    println!("cache memory: empty discoverer {empty} bytes");
    for apps in [100, 1000] {
        let nodes = apps as u64 * 10;
        let whole = discoverer_bytes(apps);
        let per_node = whole as f64 / nodes as f64;
        let marginal = (whole - empty) as f64 / nodes as f64;
        println!(
            "cache memory: {nodes} nodes: {per_node:.0} bytes per node (whole discoverer), \
             {marginal:.0} bytes per node beyond an empty one (10 methods)"
        );
        assert!(marginal <= 1024.0, "{marginal:.0} bytes per node beyond an empty discoverer at {nodes} nodes");
        if nodes >= 10_000 {
            assert!(per_node <= 1024.0, "{per_node:.0} bytes per node at {nodes} nodes");
        }
    }
}
