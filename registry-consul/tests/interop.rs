//! Interoperability with the Go framework on a real Consul agent, driven by
//! what was captured from the Go framework itself
//! (`conformance/interop/go-framework/consul-*.json`): the captured service,
//! registered through the agent API exactly as the Go writer registered it,
//! is discovered with every field; what we register is read by the Go
//! reader's rules from the agent's real health answer; and the size at which
//! a Rust node stops being visible to Go readers is measured.
// Test code: failed expectations panic.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use conformance::Runner;
use conformance::fixtures::{PROPAGATION, conf, eventually, leases_for, meta, method, unique};
use conformance::interop::{
    CONSUL_HEALTH_SERVICE, GoServiceNode, consul_agent_services, go_consul_read, same_fields, usable_by_go,
};
use registry_consul::{ConsulConfig, ConsulStore, META_VALUE_LIMIT};
use registry_core::store::Scope;
use registry_core::{Discoverer, Discovery, GrpcServices, Network, Register, Registrar, ServiceNode};
use registry_testenv::consul::{self, ConsulServer};
use serde_json::Value;

/// The agent (the user's, when `CONSUL_HTTP_ADDR` names one): for tests
/// whose names are unique.
async fn agent() -> ConsulServer {
    ConsulServer::start().await.expect("consul agent starts")
}

/// An agent of the test's own, whatever `CONSUL_HTTP_ADDR` says: for tests
/// that register the captured, fixed names (`shop-prod`).
async fn local_agent() -> ConsulServer {
    ConsulServer::start_local().await.expect("local consul agent starts")
}

async fn store(server: &ConsulServer) -> ConsulStore {
    let mut config = ConsulConfig::new(server.address());
    if let Some(token) = server.token() {
        config = config.with_token(token);
    }
    ConsulStore::connect(config).await.expect("connected")
}

/// A request that must answer 200; the body.
async fn ok(server: &ConsulServer, verb: &str, path: &str, body: Option<&str>) -> String {
    let (status, answer) = server.request(verb, path, body).await.expect("request");
    assert_eq!(status, 200, "{verb} {path}: {answer}");
    answer
}

/// The real `GET /v1/health/service/<ns>-<env>?passing=1` answer, as the Go reader asks it.
async fn health(server: &ConsulServer, scope: &Scope) -> Value {
    let path = format!("/v1/health/service/{}?passing=1", ConsulStore::service_name(scope));
    serde_json::from_str(&ok(server, "GET", &path, None).await).expect("json")
}

/// The passing entry of `service_id` in the health answer, once it is there.
async fn passing_entry(server: &ConsulServer, scope: &Scope, service_id: &str) -> Value {
    let started = Instant::now();
    loop {
        let answer = health(server, scope).await;
        if let Some(entry) = answer.as_array().and_then(|a| a.iter().find(|e| e["Service"]["ID"] == service_id)) {
            return entry.clone();
        }
        assert!(started.elapsed() < PROPAGATION, "{service_id} not passing after {PROPAGATION:?}: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The captured Go service (`GET /v1/agent/services`): its ID and definition.
fn captured_service() -> (String, Value) {
    let services = consul_agent_services();
    assert_eq!(services.len(), 1, "one captured service");
    services.into_iter().next().expect("one")
}

/// The captured node, as a Go reader decodes the captured meta `node`.
fn captured_go_node() -> (String, GoServiceNode) {
    let (_, service) = captured_service();
    let json = service["Meta"]["node"].as_str().expect("captured meta node").to_owned();
    let go = GoServiceNode::decode(&json).expect("the captured node decodes");
    (json, go)
}

/// Registers the captured service through the agent API exactly as the Go
/// writer did: its ID, Name, Tags, Meta (with `node`), `Address`
/// `host:port` and `Port` 0, and a TTL check `service:<id>`, passed with
/// output `ok`. Returns the service ID.
async fn register_captured(server: &ConsulServer) -> String {
    let (id, service) = captured_service();
    let check_id = format!("service:{id}");
    let registration = serde_json::json!({
        "ID": id,
        "Name": service["Service"],
        "Tags": service["Tags"],
        "Meta": service["Meta"],
        "Address": service["Address"],
        "Port": service["Port"],
        "Check": { "CheckID": check_id, "TTL": "10s", "DeregisterCriticalServiceAfter": "1m" },
    });
    assert_eq!(registration["Address"], "10.1.2.5:9001");
    assert_eq!(registration["Port"], 0);
    ok(server, "PUT", "/v1/agent/service/register", Some(&registration.to_string())).await;
    ok(server, "PUT", &format!("/v1/agent/check/pass/{check_id}?note=ok"), None).await;
    id
}

/// Checks that `discoverer` serves the captured Go node, and only it, with every field.
fn serves_the_captured_node(discoverer: &Discoverer) {
    let (_, go) = captured_go_node();
    assert_eq!(go.weight, 50, "the captured weight");
    let methods = go.methods.clone().expect("captured methods");
    assert_eq!(methods.len(), 3);
    for m in methods.keys() {
        assert_eq!(leases_for(discoverer, m), [go.lease_id], "{m}");
    }
    let nodes = discoverer.get_app("orders").expect("orders listed");
    assert_eq!(nodes.len(), 1);
    same_fields(&nodes[0], &go).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(nodes[0].weight, 50);
    assert_eq!(nodes[0].network.internal, "10.1.2.5:9001");
    assert_eq!(discoverer.apps().len(), 1, "{:?}", discoverer.apps());
    assert_eq!(discoverer.skipped(), 0, "records skipped");
}

/// The captured Go service, registered as the Go writer registered it on an
/// agent of our own, is discovered — by a discoverer watching before it was
/// registered and by one listing after — with every field (weight 50), and
/// the agent's health answer is the captured one as far as a Go reader can
/// tell. Deregistered, it disappears.
async fn captured_go_service_is_discovered() -> anyhow::Result<()> {
    let server = local_agent().await;
    let store = store(&server).await;
    let scope = Scope::new("shop", "prod");
    let watching = Discoverer::new(&store, "prod", conf("shop")).expect("discoverer");
    watching.watcher().await.expect("watching");

    let id = register_captured(&server).await;
    let entry = passing_entry(&server, &scope, &id).await;

    // The real answer is the captured one where the Go reader looks.
    let captured: Value = serde_json::from_str(CONSUL_HEALTH_SERVICE).expect("json");
    for field in ["ID", "Service", "Tags", "Address", "Port", "Meta"] {
        assert_eq!(entry["Service"][field], captured[0]["Service"][field], "Service.{field}");
    }
    let real = go_consul_read(&health(&server, &scope).await, "prod");
    assert_eq!(real, go_consul_read(&captured, "prod"), "the Go reader reads the same node");
    let (json, go) = captured_go_node();
    assert_eq!(real, [go]);
    println!("captured Go node: meta `node` is {} bytes (limit {META_VALUE_LIMIT})", json.len());
    assert_eq!(json.len(), 385);

    let create = "/shop.v1.Orders/Create";
    eventually(PROPAGATION, "watched Go service served", || !leases_for(&watching, create).is_empty())
        .await
        .expect("watched");
    serves_the_captured_node(&watching);
    let listing = Discoverer::new(&store, "prod", conf("shop")).expect("discoverer");
    listing.watcher().await.expect("listed");
    serves_the_captured_node(&listing);
    listing.unwatch();

    // Another env under the same Consul agent does not see it.
    let staging = Discoverer::new(&store, "staging", conf("shop")).expect("discoverer");
    staging.watcher().await.expect("listed");
    assert!(staging.apps().is_empty() && staging.skipped() == 0);
    staging.unwatch();

    ok(&server, "PUT", &format!("/v1/agent/service/deregister/{id}"), None).await;
    eventually(PROPAGATION, "Go service gone", || leases_for(&watching, create).is_empty()).await.expect("gone");
    watching.unwatch();
    Ok(())
}

/// The configuration of the Rust nodes below: the captured Go node's
/// address (so sizes compare with the captured node's), TTL 2 s.
fn rust_conf(namespace: &str) -> registry_core::ServiceConf {
    let network = Network { sn: String::new(), internal: "10.1.2.5:9001".into(), external: "127.0.0.1".into() };
    conf(namespace).with_network(network)
}

/// A node of the captured shape with `methods` of `shop.v1.Orders`.
fn orders_node<S: AsRef<str>>(methods: &[S]) -> ServiceNode {
    GrpcServices::new()
        .service("shop.v1.Orders", methods.iter().map(AsRef::as_ref))
        .expect("valid method names")
        .into_node()
}

/// The Go reader's view of our instance `lease_id` in the real health answer, if any.
async fn go_sees(server: &ConsulServer, scope: &Scope, lease_id: i64) -> Option<GoServiceNode> {
    go_consul_read(&health(server, scope).await, &scope.env).into_iter().find(|n| n.lease_id == lease_id)
}

/// A Rust node with the captured node's three methods is read by the Go
/// reader's rules from the agent's real health answer, with every field and
/// the Go JSON byte for byte in meta `node`.
async fn rust_node_is_seen_by_the_go_reader() -> anyhow::Result<()> {
    let server = agent().await;
    let store = store(&server).await;
    let namespace = unique("shop");
    let scope = Scope::new(namespace.clone(), "prod");
    let registrar = Registrar::new(&store, meta("prod", "orders"), rust_conf(&namespace)).expect("registrar");
    let installed = registrar.install(orders_node(&["Create", "Get", "List"])).await.expect("installed");
    let go_json = installed.to_go_json().expect("go json");
    let (captured_json, _) = captured_go_node();
    println!(
        "Rust node with 3 methods: Go JSON {} bytes (captured Go node: {} bytes; limit {META_VALUE_LIMIT})",
        go_json.len(),
        captured_json.len()
    );

    let service_id = ConsulStore::service_id(&scope, "orders", installed.lease_id);
    let entry = passing_entry(&server, &scope, &service_id).await;
    assert_eq!(entry["Service"]["Meta"]["node"], go_json.as_str(), "meta node is the Go JSON");
    assert_eq!(entry["Service"]["Meta"]["env"], "prod");
    assert_eq!(entry["Service"]["Tags"], serde_json::json!(["orders", "v1"]));

    let answer = health(&server, &scope).await;
    let seen = go_consul_read(&answer, "prod");
    assert_eq!(seen.len(), 1, "the Go reader sees {seen:?}");
    let go = &seen[0];
    usable_by_go(go).unwrap_or_else(|e| panic!("{e}"));
    same_fields(&installed, go).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(go.weight, 100);
    assert_eq!(go.lease_id, installed.lease_id);
    let methods: BTreeMap<String, bool> =
        ["Create", "Get", "List"].iter().map(|m| (method("shop.v1.Orders", m), true)).collect();
    assert_eq!(go.methods.as_ref(), Some(&methods));
    assert_eq!(go.meta.as_ref().map(|m| (m.env.as_str(), m.app_id.as_str())), Some(("prod", "orders")));
    assert!(go_consul_read(&answer, "staging").is_empty(), "a Go reader of another env sees it");

    registrar.uninstall().await.expect("uninstalled");
    Ok(())
}

/// The largest number of methods named `/shop.v1.Orders/MethodNN` a Rust
/// node (env `prod`, app `orders`, the captured address) can have while a Go
/// reader still sees it, found on the real agent; every larger node is
/// absent from meta `node` (so from the Go reader) and still discovered by Rust.
async fn largest_node_a_go_reader_sees() -> anyhow::Result<()> {
    let server = agent().await;
    let store = store(&server).await;
    let namespace = unique("shop");
    let scope = Scope::new(namespace.clone(), "prod");
    let discoverer = Discoverer::new(&store, "prod", rust_conf(&namespace)).expect("discoverer");
    discoverer.watcher().await.expect("watching");

    let mut largest_seen = 0;
    let mut first_unseen = None;
    for n in 1..=12_usize {
        let names: Vec<String> = (1..=n).map(|i| format!("Method{i:02}")).collect();
        let registrar = Registrar::new(&store, meta("prod", "orders"), rust_conf(&namespace)).expect("registrar");
        let installed = registrar.install(orders_node(&names)).await.expect("installed");
        let size = installed.to_go_json().expect("go json").len();

        // Rust discovers it, whatever its size.
        let last = method("shop.v1.Orders", &names[n - 1]);
        eventually(PROPAGATION, &format!("{n} methods: Rust discovers"), || {
            leases_for(&discoverer, &last) == [installed.lease_id]
        })
        .await
        .expect("discovered by Rust");
        assert_eq!(discoverer.get_app("orders").expect("listed")[0].methods.len(), n);

        let service_id = ConsulStore::service_id(&scope, "orders", installed.lease_id);
        let entry = passing_entry(&server, &scope, &service_id).await;
        let in_meta = entry["Service"]["Meta"].get("node").is_some();
        let go = go_sees(&server, &scope, installed.lease_id).await;
        println!(
            "{n:2} methods: Go JSON {size} bytes, meta `node` {}, Go reader {}",
            if in_meta { "written" } else { "absent" },
            if go.is_some() { "sees it" } else { "does not see it" }
        );
        assert_eq!(in_meta, size <= META_VALUE_LIMIT, "{n} methods, {size} bytes");
        assert_eq!(go.is_some(), in_meta, "{n} methods");
        if let Some(go) = go {
            same_fields(&installed, &go).unwrap_or_else(|e| panic!("{e}"));
            assert!(first_unseen.is_none(), "{n} methods seen after {first_unseen:?} was not");
            largest_seen = n;
        } else {
            first_unseen.get_or_insert(n);
        }

        registrar.uninstall().await.expect("uninstalled");
        eventually(PROPAGATION, "uninstalled", || leases_for(&discoverer, &last).is_empty()).await.expect("gone");
    }
    assert!(largest_seen > 0 && first_unseen.is_some(), "the loop must cross the limit");
    println!(
        "largest node a Go reader sees: {largest_seen} methods named /shop.v1.Orders/MethodNN \
         (env prod, app orders, version v1, internal 10.1.2.5:9001)"
    );
    assert_eq!(discoverer.skipped(), 0);
    discoverer.unwatch();
    Ok(())
}

/// Go names (namespace `shop_v2`, env `Prod`, app `Orders_X`) round-trip
/// through our registrar and discoverer on an agent of our own, and the Go
/// reader sees the node.
async fn go_names_round_trip() -> anyhow::Result<()> {
    let server = local_agent().await;
    let store = store(&server).await;
    let (namespace, env, app) = ("shop_v2", "Prod", "Orders_X");
    let scope = Scope::new(namespace, env);
    let discoverer = Discoverer::new(&store, env, conf(namespace)).expect("discoverer");
    discoverer.watcher().await.expect("watching");
    let registrar = Registrar::new(&store, meta(env, app), conf(namespace)).expect("registrar");
    let installed = registrar.install(orders_node(&["Create", "Get", "List"])).await.expect("installed");
    let create = method("shop.v1.Orders", "Create");
    eventually(PROPAGATION, "served", || leases_for(&discoverer, &create) == [installed.lease_id])
        .await
        .expect("served");
    let found = discoverer.get_app(app).expect("listed");
    assert_eq!(*found[0], installed);
    assert_eq!(ConsulStore::service_name(&scope), "shop_v2-Prod");
    let service_id = ConsulStore::service_id(&scope, app, installed.lease_id);
    passing_entry(&server, &scope, &service_id).await;
    let go = go_sees(&server, &scope, installed.lease_id).await.expect("the Go reader sees it");
    same_fields(&installed, &go).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(discoverer.skipped(), 0);
    registrar.uninstall().await.expect("uninstalled");
    eventually(PROPAGATION, "gone", || leases_for(&discoverer, &create).is_empty()).await.expect("gone");
    discoverer.unwatch();
    Ok(())
}

fn main() -> ExitCode {
    Runner::new()
        .test("captured_go_service_is_discovered", consul::local_available(), captured_go_service_is_discovered)
        .test("rust_node_is_seen_by_the_go_reader", consul::available(), rust_node_is_seen_by_the_go_reader)
        .test("largest_node_a_go_reader_sees", consul::available(), largest_node_a_go_reader_sees)
        .test("go_names_round_trip", consul::local_available(), go_names_round_trip)
        .run()
}
