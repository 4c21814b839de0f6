//! Lookup and update costs of the discovery index at 1,000 apps × 10 nodes ×
//! 10 methods. Run: `cargo bench -p registry-core --bench index`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use futures::StreamExt;
use futures::stream::BoxStream;
use registry_core::fixture::{fleet_index, fleet_node};
use registry_core::index::Recency;
use registry_core::store::{RawRecord, Scope, StoreEvent, StoreReader};
use registry_core::{Discoverer, Discovery};

const APPS: usize = 1000;
const NODES: usize = 10;
const METHODS: usize = 10;

struct Fleet;

impl StoreReader for Fleet {
    fn events(&self) -> BoxStream<'static, StoreEvent> {
        let mut events = vec![StoreEvent::Reset];
        for a in 0..APPS {
            for n in 0..NODES {
                let json = fleet_node(a, n, METHODS).to_json().unwrap();
                events.push(StoreEvent::Upsert(RawRecord::new(format!("k/{a}/{n}"), json)));
            }
        }
        events.push(StoreEvent::Synced);
        futures::stream::iter(events).chain(futures::stream::pending()).boxed()
    }
}

fn lookup(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d =
        Discoverer::from_reader(Arc::new(Fleet), Scope::new("default", "bench"), std::time::Duration::from_secs(10));
    rt.block_on(d.watcher()).unwrap();
    let method = "/fleet.App517/Method7";
    assert_eq!(d.get_service(method).unwrap().len(), NODES);
    c.bench_function("get_service (1000 apps x 10 nodes x 10 methods)", |b| {
        b.iter(|| black_box(d.get_service(black_box(method)).unwrap()))
    });
    c.bench_function("get_service miss", |b| b.iter(|| black_box(d.get_service(black_box("/nope.Svc/M")).is_err())));
}

fn apply_one_change(c: &mut Criterion) {
    let mut writer = fleet_index(APPS, NODES, METHODS);
    let mut flip = false;
    c.bench_function("apply one node change + publish (10,000-node index)", |b| {
        b.iter(|| {
            flip = !flip;
            let mut node = fleet_node(517, 3, METHODS);
            if flip {
                node.methods.insert("/fleet.App517/Extra", true);
            }
            let recency = Recency::of(&node, 1);
            writer.upsert("bench/app-517/3", node, recency);
            black_box(writer.publish())
        })
    });
}

criterion_group!(benches, lookup, apply_one_change);
criterion_main!(benches);
