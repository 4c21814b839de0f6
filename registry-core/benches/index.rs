//! Lookup and update costs of the discovery index at 1,000, 10,000 and
//! 100,000 nodes (apps × 10 nodes × 10 methods).
//!
//! Run: `cargo bench -p registry-core --bench index -- --warm-up-time 1 --measurement-time 3`
//! (add a filter such as `10000` to run one size). Results: docs/performance.md, "Index".
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use futures::StreamExt;
use futures::stream::BoxStream;
use registry_core::store::{RawRecord, Scope, StoreEvent, StoreReader};
use registry_core::testing::{Recency, fleet_index, fleet_node};
use registry_core::{Discoverer, Discovery};

const NODES: usize = 10;
const METHODS: usize = 10;
/// Fleet sizes in nodes.
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

struct Fleet {
    apps: usize,
}

impl StoreReader for Fleet {
    fn events(&self) -> BoxStream<'static, StoreEvent> {
        let mut events = vec![StoreEvent::Reset];
        for a in 0..self.apps {
            for n in 0..NODES {
                let json = fleet_node(a, n, METHODS).to_json().unwrap();
                events.push(StoreEvent::Upsert(RawRecord::new(format!("k/{a}/{n}"), json)));
            }
        }
        events.push(StoreEvent::Synced);
        futures::stream::iter(events).chain(futures::stream::pending()).boxed()
    }
}

/// `get_service` through a ready discoverer (snapshot load, lookup, clone of
/// the answer), for a method in the middle of the fleet.
fn lookup(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("get_service");
    for size in SIZES {
        let apps = size / NODES;
        let d = Discoverer::from_reader(
            Arc::new(Fleet { apps }),
            Scope::new("default", "bench"),
            std::time::Duration::from_secs(10),
        );
        rt.block_on(d.watcher()).unwrap();
        let method = format!("/fleet.App{}/Method7", apps / 2 + 17);
        assert_eq!(d.get_service(&method).unwrap().len(), NODES);
        group.bench_with_input(BenchmarkId::new("hit", size), &method, |b, method| {
            b.iter(|| black_box(d.get_service(black_box(method)).unwrap()))
        });
    }
    group.finish();
}

/// One node change applied to an index of `size` nodes and a snapshot
/// published (what the discoverer does per batch), two kinds of change:
/// - `methods`: node 3 of one app alternately gains and loses a method no
///   other node serves (the method gets and loses a list of its own);
/// - `restart`: node 3 of one app alternately re-registers as a new instance
///   (new lease, newest first) and as the old one, same methods;
/// - `held`: as `restart`, while readers hold the last two snapshots (the
///   writer cannot recycle the older one and copies the maps: the fallback).
///
/// Timed: `upsert` + `publish`, including dropping the superseded snapshot
/// (as the discoverer does once readers let go of it); building the node (the
/// discoverer parses it from JSON before) is not.
fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish one change");
    for size in SIZES {
        let apps = size / NODES;
        let app = apps / 2 + 17;
        let key = format!("bench/app-{app}/3");
        let mut writer = fleet_index(apps, NODES, METHODS);
        let mut flip = false;
        group.bench_function(BenchmarkId::new("methods", size), |b| {
            b.iter_batched(
                || {
                    flip = !flip;
                    let mut node = fleet_node(app, 3, METHODS);
                    if flip {
                        node.methods.insert(format!("/fleet.App{app}/Extra"), true);
                    }
                    let recency = Recency::of(&node, 0);
                    (node, recency)
                },
                |(node, recency)| {
                    writer.upsert(&key, node, recency);
                    black_box(writer.publish());
                },
                BatchSize::SmallInput,
            )
        });
        let mut flip = false;
        group.bench_function(BenchmarkId::new("restart", size), |b| {
            b.iter_batched(
                || {
                    flip = !flip;
                    let mut node = fleet_node(app, 3, METHODS);
                    let mut recency = Recency::of(&node, 0);
                    if flip {
                        node.lease_id += 500_000;
                        recency = Recency::of(&node, 1);
                    }
                    (node, recency)
                },
                |(node, recency)| {
                    writer.upsert(&key, node, recency);
                    black_box(writer.publish());
                },
                BatchSize::SmallInput,
            )
        });
        // The fallback: a reader still holds the snapshot the writer would
        // recycle (here, the last two published), so it copies the maps.
        let mut held = std::collections::VecDeque::new();
        let mut flip = false;
        group.bench_function(BenchmarkId::new("held", size), |b| {
            b.iter_batched(
                || {
                    flip = !flip;
                    let mut node = fleet_node(app, 3, METHODS);
                    let mut recency = Recency::of(&node, 0);
                    if flip {
                        node.lease_id += 500_000;
                        recency = Recency::of(&node, 1);
                    }
                    (node, recency)
                },
                |(node, recency)| {
                    writer.upsert(&key, node, recency);
                    held.push_back(writer.publish());
                    if held.len() > 2 {
                        drop(held.pop_front());
                    }
                },
                BatchSize::SmallInput,
            )
        });
        drop(held);
        let idx = writer.current();
        assert_eq!(idx.len(), size);
        assert_eq!(idx.by_app(&format!("app-{app}")).unwrap().len(), NODES);
    }
    group.finish();
}

criterion_group!(benches, lookup, update);
criterion_main!(benches);
