//! Names the Go framework accepts — namespace `shop_v2`, env `Prod`, app
//! `Orders_X` (underscore, upper case; captured from the Go framework in
//! `conformance/interop/go-framework/`) — round-trip through a registrar and a
//! discoverer on the embedded backend.
// Test code: failed expectations panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use registry_core::memory::MemoryStore;
use registry_core::{Discoverer, Discovery, Error, GrpcServices, Meta, Register, Registrar, ServiceConf};

fn conf(namespace: &str) -> ServiceConf {
    let ttl = Duration::from_secs(2);
    ServiceConf::default().with_namespace(namespace).with_ttl_floor(ttl).with_ttl(ttl)
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(5), "{what}: not true after 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn go_names_round_trip_on_memory() {
    let store = MemoryStore::new();
    let (namespace, env, app) = ("shop_v2", "Prod", "Orders_X");
    let discoverer = Discoverer::new(&store, env, conf(namespace)).expect("discoverer");
    discoverer.watcher().await.expect("watching");
    let registrar = Registrar::new(&store, Meta::new(env, app, "v1"), conf(namespace)).expect("registrar");
    let node = GrpcServices::new().service("shop.v1.Orders", ["Create", "Get", "List"]).expect("valid").into_node();
    let installed = registrar.install(node).await.expect("installed");
    let create = "/shop.v1.Orders/Create";
    until("served", || discoverer.get_service(create).is_ok_and(|n| n.len() == 1)).await;
    let found = discoverer.get_service(create).expect("served");
    assert_eq!(*found[0], installed);
    assert_eq!(found[0].meta, Meta::new("Prod", "Orders_X", "v1"));
    assert_eq!(discoverer.apps().iter().map(|a| a.to_string()).collect::<Vec<_>>(), ["Orders_X"]);

    // Names are exact: `prod`/`orders_x` are other scopes and apps.
    let lower = Discoverer::new(&store, "prod", conf(namespace)).expect("discoverer");
    lower.watcher().await.expect("watching");
    assert!(lower.apps().is_empty());
    assert!(matches!(discoverer.get_app("orders_x"), Err(Error::NodeNotFound { .. })));
    assert_eq!(discoverer.skipped() + lower.skipped(), 0);

    registrar.uninstall().await.expect("uninstalled");
    until("gone", || discoverer.get_service(create).is_err()).await;
    discoverer.unwatch();
    lower.unwatch();
}
