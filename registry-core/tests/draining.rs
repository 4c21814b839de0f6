//! `get_service` and draining nodes: excluded by default, last on request,
//! `AllDraining` when nothing else serves, no allocation either way; the
//! embedded store's operator mark survives the instance's own writes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures panic

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use registry_core::memory::MemoryStore;
use registry_core::store::{RawRecord, Scope, Store, StoreEvent, StoreReader};
use registry_core::testing::fleet_node;
use registry_core::{
    Discoverer, Discovery, DrainingNodes, Error, GrpcServices, Meta, Register, Registrar, ServiceConf,
};

/// One app of 10 nodes serving `/fleet.App0/Method*`; nodes 3 and 7 draining
/// (node 7 drained by an operator, beside the record).
struct Fleet;

impl StoreReader for Fleet {
    fn events(&self) -> BoxStream<'static, StoreEvent> {
        let mut events = vec![StoreEvent::Reset];
        for n in 0..10 {
            let mut node = fleet_node(0, n, 10);
            node.draining = n == 3;
            let record = RawRecord::new(format!("k/0/{n}"), node.to_json().unwrap()).with_drained_by_operator(n == 7);
            events.push(StoreEvent::Upsert(record));
        }
        events.push(StoreEvent::Synced);
        futures::stream::iter(events).chain(futures::stream::pending()).boxed()
    }
}

fn leases(nodes: &[Arc<registry_core::ServiceNode>]) -> Vec<i64> {
    nodes.iter().map(|n| n.lease_id).collect()
}

#[tokio::test]
async fn draining_nodes_are_excluded_by_default_and_last_on_request_without_allocating() {
    let d = Discoverer::from_reader(Arc::new(Fleet), Scope::new("default", "bench"), Duration::from_secs(10));
    d.watcher().await.unwrap();
    let method = "/fleet.App0/Method4";
    assert_eq!(d.draining_nodes(), DrainingNodes::Exclude);
    let serving = d.get_service(method).unwrap();
    assert_eq!(serving.len(), 8);
    assert!(serving.iter().all(|n| !n.draining), "no draining node by default");
    // Newest first (registered_at_ms = lease id in the fixture).
    let want: Vec<i64> = (0..10).rev().filter(|n| *n != 3 && *n != 7).collect();
    assert_eq!(leases(&serving), want);

    let app = d.get_app("app-0").unwrap();
    assert_eq!(app.len(), 10, "get_app lists every node");
    assert_eq!(leases(app.draining()), [7, 3], "draining ones last, newest first");
    let seven = &app.draining()[0];
    assert!(seven.draining && seven.drained_by_operator, "the mark beside the record shows in the node");

    let exclude = allocation_counter::measure(|| {
        for _ in 0..1000 {
            std::hint::black_box(d.get_service(method).unwrap());
        }
    });
    d.set_draining_nodes(DrainingNodes::Last);
    let all = d.get_service(method).unwrap();
    assert_eq!(leases(&all[..8]), want);
    assert_eq!(leases(&all[8..]), [7, 3]);
    assert_eq!(all.serving_count(), 8);
    let last = allocation_counter::measure(|| {
        for _ in 0..1000 {
            std::hint::black_box(d.get_service(method).unwrap());
        }
    });
    assert_eq!((exclude.count_total, last.count_total), (0, 0), "lookups allocated");
}

fn conf() -> ServiceConf {
    ServiceConf::default()
        .with_namespace("drain")
        .with_ttl_floor(Duration::from_secs(2))
        .with_ttl(Duration::from_secs(2))
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn every_node_draining_is_all_draining_and_last_still_answers_them() {
    let store = MemoryStore::new();
    let r = Registrar::new(&store, Meta::new("prod", "solo", "v1"), conf()).unwrap();
    let node = GrpcServices::new().service("s.Solo", ["Call"]).unwrap().into_node();
    let installed = r.install(node).await.unwrap();
    let d = Discoverer::new(&store, "prod", conf()).unwrap();
    d.watcher().await.unwrap();
    let m = "/s.Solo/Call";
    assert_eq!(leases(&d.get_service(m).unwrap()), [installed.lease_id]);
    r.drain().await.unwrap();
    eventually("drain seen", || matches!(d.get_service(m), Err(Error::AllDraining { draining: 1, .. }))).await;
    d.set_draining_nodes(DrainingNodes::Last);
    let nodes = d.get_service(m).unwrap();
    assert!(nodes.len() == 1 && nodes[0].draining);
    assert!(matches!(d.get_service("/s.Solo/Nope"), Err(Error::MethodNotFound { .. })));
    r.uninstall().await.unwrap();
}

/// The operator's mark (kept in the record on this store) survives the
/// instance's installs, drains, undrains and heartbeats; only the operator clears it.
#[tokio::test]
async fn operator_mark_survives_the_owner_writes_on_the_embedded_store() {
    let store = MemoryStore::new();
    let r = Registrar::new(&store, Meta::new("prod", "held", "v1"), conf()).unwrap();
    let node = || GrpcServices::new().service("s.Held", ["Call"]).unwrap().into_node();
    let installed = r.install(node()).await.unwrap();
    let keepalive = tokio::spawn({
        let r = r.clone();
        async move { r.sustain_lease().await }
    });
    let d = Discoverer::new(&store, "prod", conf()).unwrap();
    d.watcher().await.unwrap();
    let op = store.operator(&Scope::new("drain", "prod")).unwrap();
    let marked = || d.get_app("held").ok().map(|n| (n[0].draining, n[0].drained_by_operator));
    op.set_drained("held", installed.lease_id, true).await.unwrap();
    eventually("operator mark", || marked() == Some((true, true))).await;
    r.install(node()).await.unwrap();
    r.drain().await.unwrap();
    r.undrain().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await; // past a TTL of heartbeats
    assert_eq!(marked(), Some((true, true)), "the owner's writes kept the mark");
    op.set_drained("held", installed.lease_id, false).await.unwrap();
    eventually("mark cleared", || marked() == Some((false, false))).await;
    let missing = op.set_drained("held", installed.lease_id + 1, true).await;
    assert!(matches!(missing, Err(Error::InstanceNotFound { .. })), "{missing:?}");
    r.uninstall().await.unwrap();
    keepalive.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_option_is_read_from_the_conf() {
    let store = MemoryStore::new();
    let options = registry_core::DiscoveryOptions::default().with_draining_nodes(DrainingNodes::Last);
    let d = Discoverer::new(&store, "prod", conf().with_discovery(options)).unwrap();
    assert_eq!(d.draining_nodes(), DrainingNodes::Last);
    assert_eq!(Discoverer::new(&store, "prod", conf()).unwrap().draining_nodes(), DrainingNodes::Exclude);
}
