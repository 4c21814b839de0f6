//! Lookups allocate nothing, and the cache stays within its memory budget.
//! (Counts and bytes, not time: timing lives in `benches/`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures panic

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use registry_core::fixture::fleet_node;
use registry_core::store::{RawRecord, Scope, StoreEvent, StoreReader};
use registry_core::{Discoverer, Discovery};

/// Lists a fixed fleet once, then stays quiet.
struct FleetReader {
    apps: usize,
    nodes: usize,
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
        futures::stream::iter(events).chain(futures::stream::pending()).boxed()
    }
}

#[tokio::test]
async fn get_service_does_not_allocate() {
    let d = Discoverer::from_reader(
        Arc::new(FleetReader { apps: 100, nodes: 10 }),
        Scope::new("default", "bench"),
        std::time::Duration::from_secs(10),
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

#[test]
fn cache_memory_per_node_with_ten_methods_is_under_1_5_kib() {
    let (apps, nodes) = (100, 10);
    let mut kept = None;
    // The whole discoverer (index, records, snapshot), on a runtime built
    // inside the measurement so that its task's allocations are counted too.
    let info = allocation_counter::measure(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let d = Discoverer::from_reader(
            Arc::new(FleetReader { apps, nodes }),
            Scope::new("default", "bench"),
            std::time::Duration::from_secs(10),
        );
        rt.block_on(d.watcher()).expect("ready");
        kept = Some((rt, d));
    });
    let per_node = info.bytes_current as f64 / (apps * nodes) as f64;
    println!("cache memory: {per_node:.0} bytes per node (whole discoverer, 10 methods, {} nodes)", apps * nodes);
    assert!(per_node <= 1536.0, "{per_node:.0} bytes per node");
    drop(kept);
}
