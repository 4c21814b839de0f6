//! Node size on a real agent: the full node JSON lives in KV, so a 500-method
//! node round-trips; a node small enough for Consul's 512-byte meta limit is
//! also readable from the `node` meta alone (the Go framework's reader).
//! Nodes written by the Go framework itself: `tests/interop.rs`.
// Test code: failed expectations panic.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;
use std::time::Duration;

use conformance::Runner;
use conformance::fixtures::{PROPAGATION, conf, eventually, leases_for, meta, method, unique};
use registry_consul::{ConsulConfig, ConsulStore, KV_VALUE_LIMIT, META_VALUE_LIMIT};
use registry_core::store::Scope;
use registry_core::{Discoverer, Discovery, Error, GrpcServices, Register, Registrar, ServiceNode};
use registry_testenv::consul::{self, ConsulServer};

/// The agent (the user's, when `CONSUL_HTTP_ADDR` names one).
async fn agent() -> ConsulServer {
    ConsulServer::start().await.expect("consul agent starts")
}

async fn store(server: &ConsulServer) -> ConsulStore {
    let mut config = ConsulConfig::new(server.address());
    if let Some(token) = server.token() {
        config = config.with_token(token);
    }
    ConsulStore::connect(config).await.expect("connected")
}

fn methods(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("Method{i:04}")).collect()
}

/// A GET that must answer 200, as JSON.
async fn get_json(server: &ConsulServer, path: &str) -> serde_json::Value {
    let (status, body) = server.request("GET", path, None).await.expect("request");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("json")
}

/// The passing instance `service_id` as the health API shows it.
async fn health_entry(server: &ConsulServer, scope: &Scope, service_id: &str) -> serde_json::Value {
    let path = format!("/v1/health/service/{}?passing=true", ConsulStore::service_name(scope));
    let entries = get_json(server, &path).await;
    entries
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["Service"]["ID"] == service_id)
        .cloned()
        .unwrap_or_else(|| panic!("{service_id} not passing in {entries}"))
}

async fn five_hundred_method_node_round_trips() -> anyhow::Result<()> {
    let server = agent().await;
    let store = store(&server).await;
    let (namespace, env) = (unique("ns"), unique("env"));
    let registrar = Registrar::new(&store, meta(&env, "big"), conf(&namespace)).expect("registrar");
    let discoverer = Discoverer::new(&store, &env, conf(&namespace)).expect("discoverer");
    discoverer.watcher().await.expect("watching");

    let names = methods(500);
    let node = GrpcServices::new().service("big.Svc", &names).expect("valid").into_node();
    let installed = registrar.install(node).await.expect("installed");
    let json = installed.to_json().expect("json");
    assert!(json.len() > META_VALUE_LIMIT * 20, "the node should be far beyond the meta limit: {} bytes", json.len());

    for name in [&names[0], &names[250], &names[499]] {
        let m = method("big.Svc", name);
        eventually(PROPAGATION, &format!("{m} visible"), || leases_for(&discoverer, &m) == [installed.lease_id])
            .await
            .expect("visible");
    }
    let found = discoverer.get_service(&method("big.Svc", &names[499])).expect("found");
    assert_eq!(found[0].methods, installed.methods);
    assert_eq!(found[0].methods.len(), 500);
    assert_eq!(found[0].meta, installed.meta);

    // The service has no `node` meta (too large); KV holds the full JSON.
    let scope = Scope::new(namespace.clone(), env.clone());
    let service_id = ConsulStore::service_id(&scope, "big", installed.lease_id);
    let entry = health_entry(&server, &scope, &service_id).await;
    assert!(entry["Service"]["Meta"].get("node").is_none(), "node meta present on a large node");
    assert_eq!(entry["Service"]["Meta"]["app_id"], "big");
    let key = scope.record_key("big", installed.lease_id);
    let (status, raw) = server.request("GET", &format!("/v1/kv/{key}?raw"), None).await.expect("kv read");
    assert_eq!(status, 200);
    assert_eq!(ServiceNode::from_json(&raw).expect("node JSON in KV").methods, installed.methods);

    registrar.uninstall().await.expect("uninstalled");
    discoverer.unwatch();
    Ok(())
}

async fn small_node_is_readable_from_node_meta_alone() -> anyhow::Result<()> {
    let server = agent().await;
    let store = store(&server).await;
    let (namespace, env) = (unique("ns"), unique("env"));
    let registrar = Registrar::new(&store, meta(&env, "tiny"), conf(&namespace)).expect("registrar");
    let node = GrpcServices::new().service("t.Tiny", ["Ping"]).expect("valid").into_node();
    let installed = registrar.install(node).await.expect("installed");
    assert!(installed.to_json().expect("json").len() <= META_VALUE_LIMIT);

    // The Go framework's reader: health API, service meta `node`, parsed.
    let scope = Scope::new(namespace.clone(), env.clone());
    let service_id = ConsulStore::service_id(&scope, "tiny", installed.lease_id);
    let entry = health_entry(&server, &scope, &service_id).await;
    let service = &entry["Service"];
    assert_eq!(service["Service"], ConsulStore::service_name(&scope));
    assert_eq!(service["Tags"], serde_json::json!(["tiny", "v1"]));
    assert_eq!(service["Meta"]["app_id"], "tiny");
    assert_eq!(service["Meta"]["env"], env.as_str());
    assert_eq!(service["Meta"]["version"], "v1");
    let from_meta = ServiceNode::from_json(service["Meta"]["node"].as_str().expect("node meta")).expect("parses");
    assert_eq!(from_meta.lease_id, installed.lease_id);
    assert_eq!(from_meta.methods, installed.methods);
    assert_eq!(from_meta.meta, installed.meta);
    assert_eq!(from_meta.network, installed.network);

    registrar.uninstall().await.expect("uninstalled");
    Ok(())
}

async fn node_larger_than_a_kv_value_is_refused() -> anyhow::Result<()> {
    let server = agent().await;
    let store = store(&server).await;
    let (namespace, env) = (unique("ns"), unique("env"));
    let registrar = Registrar::new(&store, meta(&env, "huge"), conf(&namespace)).expect("registrar");
    let names: Vec<String> = (0..25_000).map(|i| format!("AVeryLongMethodName{i:06}")).collect();
    let node = GrpcServices::new().service("huge.Svc", &names).expect("valid").into_node();
    let err = tokio::time::timeout(Duration::from_secs(10), registrar.install(node))
        .await
        .expect("answers")
        .expect_err("refused");
    assert!(matches!(err, Error::TooLarge { limit: KV_VALUE_LIMIT, .. }), "{err:?}");
    Ok(())
}

fn main() -> ExitCode {
    Runner::new()
        .test("five_hundred_method_node_round_trips", consul::available(), five_hundred_method_node_round_trips)
        .test(
            "small_node_is_readable_from_node_meta_alone",
            consul::available(),
            small_node_is_readable_from_node_meta_alone,
        )
        .test("node_larger_than_a_kv_value_is_refused", consul::available(), node_larger_than_a_kv_value_is_refused)
        .run()
}
