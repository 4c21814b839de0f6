//! Interoperability with the Go framework on a real etcd, driven by the
//! records captured from the Go framework itself
//! (`conformance/interop/go-framework/etcd-records.json`): those records,
//! written raw under their exact keys with the Go writer's lease, are
//! discovered with every field intact; records we write decode with the Go
//! reader's rules. Every test runs on an etcd of its own (the captured keys
//! are fixed, so never on a user's cluster).

mod support;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use conformance::Runner;
use conformance::fixtures::{PROPAGATION, eventually, meta, method, node, unique};
use conformance::interop::{EtcdRecord, GoServiceNode, etcd_records, go_etcd_read, same_fields, usable_by_go};
use etcd_client::{GetOptions, LeaseGrantOptions, PutOptions, Txn, TxnOp};
use registry_core::{Discoverer, Discovery, Register, Registrar};
use registry_testenv::etcd::local_available;
use serde_json::Value;
use support::{conf, local_etcd, raw_client, store};

/// TTL of the leases standing in for the Go writer's (long enough for a test).
const GO_LEASE_TTL: i64 = 30;

/// The lease id a captured key ends with (`<namespace>/<env>/<app_id>/<lease_id>`).
fn lease_of(key: &str) -> anyhow::Result<i64> {
    let lease = key.rsplit('/').next().unwrap_or_default();
    lease.parse().map_err(|e| anyhow::anyhow!("key {key} does not end with a lease id: {e}"))
}

/// The captured record under `key`.
fn captured(key: &str) -> anyhow::Result<EtcdRecord> {
    etcd_records().into_iter().find(|r| r.key == key).ok_or_else(|| anyhow::anyhow!("no captured record {key}"))
}

/// Writes a captured record as the Go writer did: the lease its key names
/// (granted with that very id), then the value, byte for byte, under the
/// exact key with that lease. Returns the lease id.
async fn put_captured(client: &mut etcd_client::Client, record: &EtcdRecord) -> anyhow::Result<i64> {
    let lease = lease_of(&record.key)?;
    let granted = client.lease_grant(GO_LEASE_TTL, Some(LeaseGrantOptions::new().with_id(lease))).await?;
    anyhow::ensure!(granted.id() == lease, "etcd granted lease {} instead of {lease}", granted.id());
    client.put(record.key.as_str(), record.value.as_str(), Some(PutOptions::new().with_lease(lease))).await?;
    Ok(lease)
}

/// A captured record's value with another `lease_id` (and the rest as captured).
fn captured_value_with_lease(record: &EtcdRecord, lease_id: i64) -> anyhow::Result<String> {
    let mut value: Value = serde_json::from_str(&record.value)?;
    value["lease_id"] = Value::from(lease_id);
    Ok(value.to_string())
}

fn lease_ids(discovery: &dyn Discovery, method: &str) -> Vec<i64> {
    let mut ids: Vec<i64> =
        discovery.get_service(method).map(|nodes| nodes.iter().map(|n| n.lease_id).collect()).unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// The scopes of the captured records, with the apps each holds.
const SCOPES: [(&str, &str); 2] = [("shop", "prod"), ("shop_v2", "Prod")];

/// Checks that `discoverer` (of `namespace`/`env`) serves exactly the
/// captured records of its scope, each with every field as the Go reader
/// decodes it: a node with methods under each of them and nowhere else, a
/// node without (`methods: null`) by its app only; nothing skipped.
fn serves_the_captured_records(discoverer: &Discoverer, namespace: &str, env: &str) -> anyhow::Result<()> {
    let records = etcd_records();
    let expected: Vec<(&EtcdRecord, GoServiceNode)> = records
        .iter()
        .filter(|r| r.key.starts_with(&format!("{namespace}/{env}/")))
        .map(|r| GoServiceNode::decode(&r.value).map(|go| (r, go)))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow::anyhow!("a captured record does not decode"))?;
    anyhow::ensure!(!expected.is_empty(), "no captured record in {namespace}/{env}");
    let mut apps: Vec<String> =
        expected.iter().filter_map(|(_, go)| go.meta.as_ref().map(|m| m.app_id.clone())).collect();
    apps.sort();
    let served: Vec<String> = discoverer.apps().iter().map(|a| a.to_string()).collect();
    anyhow::ensure!(served == apps, "{namespace}/{env}: apps {served:?}, captured {apps:?}");
    let snapshot = discoverer.snapshot();
    for (record, go) in &expected {
        let app = go.meta.as_ref().map(|m| m.app_id.as_str()).unwrap_or_default();
        let nodes = discoverer.get_app(app)?;
        anyhow::ensure!(nodes.len() == 1, "{}: {} nodes of app {app}", record.key, nodes.len());
        let node = &nodes[0];
        same_fields(node, go).map_err(|e| anyhow::anyhow!("{}: {e}", record.key))?;
        let methods = go.methods.clone().unwrap_or_default();
        for method in methods.keys() {
            let ids = lease_ids(discoverer, method);
            anyhow::ensure!(ids == [go.lease_id], "{method} served by {ids:?}, captured {}", go.lease_id);
        }
        // No method outside the captured set leads to this node.
        for method in snapshot.methods() {
            let serving = snapshot.by_method(&method).map(|n| n.iter().any(|n| n.lease_id == go.lease_id));
            anyhow::ensure!(
                methods.contains_key(&*method) || serving != Some(true),
                "{}: served under {method}, which it does not declare",
                record.key
            );
        }
    }
    anyhow::ensure!(discoverer.skipped() == 0, "{namespace}/{env}: {} records skipped", discoverer.skipped());
    Ok(())
}

/// The captured values themselves: the fields the tests below rely on are
/// what the Go writer really wrote (weight 50 and 0, `methods: null`).
fn captured_values_are_as_described() -> anyhow::Result<()> {
    let decode = |key: &str| -> anyhow::Result<GoServiceNode> {
        GoServiceNode::decode(&captured(key)?.value).ok_or_else(|| anyhow::anyhow!("{key} does not decode"))
    };
    let orders = decode("shop/prod/orders/8109190794186803717")?;
    let bare = decode("shop/prod/bare/8109190794186803720")?;
    let go_names = decode("shop_v2/Prod/Orders_X/8109190794186803723")?;
    anyhow::ensure!(orders.weight == 50 && orders.methods.as_ref().map(BTreeMap::len) == Some(3), "{orders:?}");
    anyhow::ensure!(bare.weight == 0 && bare.methods.is_none(), "{bare:?}");
    anyhow::ensure!(go_names.weight == 0 && go_names.meta.as_ref().map(|m| m.env.as_str()) == Some("Prod"));
    for go in [&orders, &bare, &go_names] {
        let network = go.network.clone().unwrap_or_default();
        anyhow::ensure!(network.sn == "firefly-main-network" && network.external == "127.0.0.1", "{network:?}");
        anyhow::ensure!(go.kernel.as_ref().map(|k| k.language.as_str()) == Some("Golang"), "{:?}", go.kernel);
        anyhow::ensure!(go.run_date == "2026-11-25 00:33:49" && go.proto_count == 1, "{go:?}");
    }
    Ok(())
}

/// Every captured record written before discovery starts is listed, for
/// both captured scopes (`shop`/`prod` and the Go names `shop_v2`/`Prod`),
/// with every field as captured.
async fn captured_go_records_are_listed() -> anyhow::Result<()> {
    captured_values_are_as_described()?;
    let server = local_etcd().await?;
    let store = store(&server).await?;
    let mut client = raw_client(&server).await?;
    for record in etcd_records() {
        put_captured(&mut client, &record).await?;
    }
    for (namespace, env) in SCOPES {
        let discoverer = Discoverer::new(&store, env, conf(namespace))?;
        discoverer.watcher().await?;
        serves_the_captured_records(&discoverer, namespace, env)?;
        let bare = discoverer.get_app("bare").ok();
        if (namespace, env) == ("shop", "prod") {
            let bare = bare.ok_or_else(|| anyhow::anyhow!("the bare node (methods: null) is not listed"))?;
            anyhow::ensure!(bare[0].methods.is_empty() && bare[0].served_methods().next().is_none(), "{:?}", bare[0]);
            anyhow::ensure!(bare[0].weight == 0, "weight 0 is kept as written, got {}", bare[0].weight);
        }
        discoverer.unwatch();
    }
    Ok(())
}

/// Captured records written after discovery started are picked up by the
/// watch with every field; when the Go process's lease ends, its node goes.
async fn captured_go_records_are_watched() -> anyhow::Result<()> {
    let server = local_etcd().await?;
    let store = store(&server).await?;
    let mut client = raw_client(&server).await?;
    let mut discoverers = Vec::new();
    for (namespace, env) in SCOPES {
        let discoverer = Discoverer::new(&store, env, conf(namespace))?;
        discoverer.watcher().await?;
        anyhow::ensure!(discoverer.apps().is_empty(), "{namespace}/{env} is not empty before the writes");
        discoverers.push((namespace, env, discoverer));
    }
    for record in etcd_records() {
        put_captured(&mut client, &record).await?;
    }
    for (namespace, env, discoverer) in &discoverers {
        let want = etcd_records().iter().filter(|r| r.key.starts_with(&format!("{namespace}/{env}/"))).count();
        eventually(PROPAGATION, &format!("{namespace}/{env}: watched records served"), || {
            discoverer.snapshot().len() == want
        })
        .await?;
        serves_the_captured_records(discoverer, namespace, env)?;
    }
    // The Go `orders` process is gone: its lease ends, the node disappears with its key.
    let orders = captured("shop/prod/orders/8109190794186803717")?;
    client.lease_revoke(lease_of(&orders.key)?).await?;
    let shop = &discoverers[0].2;
    eventually(PROPAGATION, "revoked Go node gone", || shop.get_app("orders").is_err()).await?;
    anyhow::ensure!(shop.get_app("bare").is_ok(), "the other Go node went too");
    for (_, _, discoverer) in &discoverers {
        anyhow::ensure!(discoverer.skipped() == 0, "records skipped");
        discoverer.unwatch();
    }
    Ok(())
}

/// What a Go reader of `namespace`/`env` sees on `client`: every key and
/// value under the Go prefix, decoded with the Go rules.
async fn go_reads(client: &mut etcd_client::Client, namespace: &str, env: &str) -> anyhow::Result<Vec<GoServiceNode>> {
    let listing = client.get(format!("{namespace}/{env}"), Some(GetOptions::new().with_prefix())).await?;
    let mut records = Vec::new();
    for kv in listing.kvs() {
        records.push((kv.key_str()?.to_owned(), kv.value_str()?.to_owned()));
    }
    Ok(go_etcd_read(records.iter().map(|(k, v)| (k.as_str(), v.as_str())), namespace, env))
}

/// A node we register is stored exactly where and how the Go framework
/// expects it: key `<namespace>/<env>/<app_id>/<lease_id>` bound to the etcd
/// lease `lease_id` (TTL = the configured TTL), value with the Go JSON keys.
async fn our_node_has_the_go_shape() -> anyhow::Result<()> {
    let server = local_etcd().await?;
    let store = store(&server).await?;
    let mut client = raw_client(&server).await?;
    let namespace = unique("ns");
    let env = unique("env");
    let registrar = Registrar::new(&store, meta(&env, "greeter"), conf(&namespace))?;
    let installed = registrar.install(node("hello.Greeter", &["SayHello", "SayBye"])).await?;

    let listing = client.get(format!("{namespace}/{env}/"), Some(GetOptions::new().with_prefix())).await?;
    anyhow::ensure!(listing.kvs().len() == 1, "expected one record, found {}", listing.kvs().len());
    let kv = &listing.kvs()[0];
    let key = kv.key_str()?;
    anyhow::ensure!(key == format!("{namespace}/{env}/greeter/{}", installed.lease_id), "key {key}");
    anyhow::ensure!(
        kv.lease() == installed.lease_id,
        "record bound to lease {} not {}",
        kv.lease(),
        installed.lease_id
    );
    let ttl = client.lease_time_to_live(installed.lease_id, None).await?;
    anyhow::ensure!(ttl.granted_ttl() == 2, "granted TTL {} s, configured 2 s", ttl.granted_ttl());

    let value: Value = serde_json::from_slice(kv.value())?;
    for field in ["proto_count", "lease_id", "weight", "run_date", "methods", "network", "kernel", "meta"] {
        anyhow::ensure!(value.get(field).is_some(), "Go field `{field}` missing in {value}");
    }
    anyhow::ensure!(value["lease_id"].as_i64() == Some(installed.lease_id), "lease_id {}", value["lease_id"]);
    anyhow::ensure!(value["proto_count"].is_i64(), "proto_count {}", value["proto_count"]);
    let run_date = value["run_date"].as_str().unwrap_or_default();
    let go_layout = run_date.len() == 19
        && run_date.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == ' ',
            13 | 16 => c == ':',
            _ => c.is_ascii_digit(),
        });
    anyhow::ensure!(go_layout, "run_date `{run_date}` is not YYYY-MM-DD HH:MM:SS");
    let methods = value["methods"].as_object().ok_or_else(|| anyhow::anyhow!("methods is not an object"))?;
    anyhow::ensure!(
        methods.get(&method("hello.Greeter", "SayHello")) == Some(&Value::Bool(true))
            && methods.get(&method("hello.Greeter", "SayBye")) == Some(&Value::Bool(true))
            && methods.len() == 2,
        "methods {methods:?}"
    );
    for (object, fields) in [
        ("network", &["sn", "internal", "external"][..]),
        ("kernel", &["language", "version"]),
        ("meta", &["env", "app_id", "version"]),
    ] {
        for field in fields {
            anyhow::ensure!(value[object][field].is_string(), "{object}.{field} missing or not a string in {value}");
        }
    }
    anyhow::ensure!(
        value["meta"]["env"] == env.as_str() && value["meta"]["app_id"] == "greeter",
        "meta {}",
        value["meta"]
    );
    anyhow::ensure!(value["kernel"]["language"] == "rust", "kernel {}", value["kernel"]);

    // A Go reader of this namespace and env (prefix without the slash, Go
    // types) sees exactly this node, with everything it needs.
    let go = go_reads(&mut client, &namespace, &env).await?;
    anyhow::ensure!(go.len() == 1, "a Go reader sees {} nodes: {go:?}", go.len());
    usable_by_go(&go[0])?;
    same_fields(&installed, &go[0])?;
    anyhow::ensure!(go[0].weight == 100, "weight {}", go[0].weight);
    anyhow::ensure!(go[0].methods.as_ref().map(BTreeMap::len) == Some(2), "methods {:?}", go[0].methods);

    registrar.uninstall().await?;
    let after = client.get(format!("{namespace}/{env}/"), Some(GetOptions::new().with_prefix())).await?;
    anyhow::ensure!(after.kvs().is_empty(), "record left after uninstall");
    let revoked = client.lease_time_to_live(installed.lease_id, None).await?;
    anyhow::ensure!(revoked.ttl() <= 0, "lease still alive after uninstall (ttl {})", revoked.ttl());
    Ok(())
}

/// Discovery of env `prod` lists `shop/prod/` with the slash: the captured
/// Go node written under `shop/production/` is neither served nor even seen
/// (not counted as skipped), although it claims env `prod` — whereas the Go
/// reader, whose prefix has no slash, does see it.
async fn discovery_prefix_ends_with_a_slash() -> anyhow::Result<()> {
    let server = local_etcd().await?;
    let store = store(&server).await?;
    let mut client = raw_client(&server).await?;
    let orders = captured("shop/prod/orders/8109190794186803717")?;
    async fn put_under_production(client: &mut etcd_client::Client, orders: &EtcdRecord) -> anyhow::Result<()> {
        let lease = client.lease_grant(GO_LEASE_TTL, None).await?.id();
        let key = format!("shop/production/orders/{lease}");
        client.put(key, captured_value_with_lease(orders, lease)?, Some(PutOptions::new().with_lease(lease))).await?;
        Ok(())
    }
    put_under_production(&mut client, &orders).await?;
    let discoverer = Discoverer::new(&store, "prod", conf("shop"))?;
    discoverer.watcher().await?;
    put_under_production(&mut client, &orders).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    anyhow::ensure!(lease_ids(&discoverer, "/shop.v1.Orders/Create").is_empty(), "env prod serves production's node");
    anyhow::ensure!(discoverer.skipped() == 0, "records of `production` reached the `prod` discoverer");
    let go = go_reads(&mut client, "shop", "prod").await?;
    anyhow::ensure!(go.len() == 2, "the Go reader's prefix has no slash: it sees production's {} nodes", go.len());
    discoverer.unwatch();
    Ok(())
}

/// A fleet larger than one listing page (500 keys) is listed whole, from
/// one consistent revision, and then followed by watch.
async fn fleet_larger_than_a_listing_page_is_discovered_whole() -> anyhow::Result<()> {
    const FLEET: i64 = 1_100;
    let server = local_etcd().await?;
    let store = store(&server).await?;
    let mut client = raw_client(&server).await?;
    let orders = captured("shop/prod/orders/8109190794186803717")?;
    let lease = client.lease_grant(30, None).await?.id();
    let ids: Vec<i64> = (1..=FLEET).collect();
    // etcd allows 128 operations per transaction.
    for batch in ids.chunks(100) {
        let mut puts = Vec::with_capacity(batch.len());
        for id in batch {
            let value = captured_value_with_lease(&orders, *id)?;
            puts.push(TxnOp::put(format!("shop/prod/orders/{id}"), value, Some(PutOptions::new().with_lease(lease))));
        }
        client.txn(Txn::new().and_then(puts)).await?;
    }
    let discoverer = Discoverer::new(&store, "prod", conf("shop"))?;
    discoverer.watcher().await?;
    let listed = discoverer.get_app("orders")?.len();
    anyhow::ensure!(listed == ids.len(), "listed {listed} of {} nodes", ids.len());
    let late = FLEET + 1;
    let value = captured_value_with_lease(&orders, late)?;
    client.put(format!("shop/prod/orders/{late}"), value, Some(PutOptions::new().with_lease(lease))).await?;
    eventually(PROPAGATION, "node written after the listing", || {
        discoverer.get_app("orders").map(|n| n.len()).unwrap_or_default() == ids.len() + 1
    })
    .await?;
    anyhow::ensure!(discoverer.skipped() == 0, "fleet records skipped");
    client.lease_revoke(lease).await?;
    eventually(PROPAGATION, "fleet gone with its lease", || discoverer.get_app("orders").is_err()).await?;
    discoverer.unwatch();
    Ok(())
}

/// Names the Go framework accepts (namespace `shop_v2`, env `Prod`, app
/// `Orders_X`) round-trip through our registrar and discoverer, next to the
/// captured Go node of the same app; a Go reader sees both.
async fn go_names_round_trip() -> anyhow::Result<()> {
    let server = local_etcd().await?;
    let store = store(&server).await?;
    let mut client = raw_client(&server).await?;
    let (namespace, env, app) = ("shop_v2", "Prod", "Orders_X");
    let discoverer = Discoverer::new(&store, env, conf(namespace))?;
    discoverer.watcher().await?;
    let registrar = Registrar::new(&store, meta(env, app), conf(namespace))?;
    let installed = registrar.install(node("shop.v1.Orders", &["Create", "Get", "List"])).await?;
    let go_record = captured("shop_v2/Prod/Orders_X/8109190794186803723")?;
    let go_lease = put_captured(&mut client, &go_record).await?;
    let create = method("shop.v1.Orders", "Create");
    let mut both = vec![installed.lease_id, go_lease];
    both.sort_unstable();
    eventually(PROPAGATION, "ours and the Go node served", || lease_ids(&discoverer, &create) == both).await?;
    let ours = discoverer.get_app(app)?.iter().find(|n| n.lease_id == installed.lease_id).cloned();
    let ours = ours.ok_or_else(|| anyhow::anyhow!("our node missing"))?;
    anyhow::ensure!(*ours == installed, "discovered {ours:?}, installed {installed:?}");
    let key = format!("{namespace}/{env}/{app}/{}", installed.lease_id);
    anyhow::ensure!(client.get(key.as_str(), None).await?.kvs().len() == 1, "no record under {key}");
    let go = go_reads(&mut client, namespace, env).await?;
    anyhow::ensure!(go.len() == 2, "a Go reader sees {} nodes", go.len());
    anyhow::ensure!(discoverer.skipped() == 0, "records skipped");
    registrar.uninstall().await?;
    eventually(PROPAGATION, "ours gone", || lease_ids(&discoverer, &create) == [go_lease]).await?;
    discoverer.unwatch();
    Ok(())
}

fn main() -> ExitCode {
    Runner::new()
        .test("captured_go_records_are_listed", local_available(), captured_go_records_are_listed)
        .test("captured_go_records_are_watched", local_available(), captured_go_records_are_watched)
        .test("go_names_round_trip", local_available(), go_names_round_trip)
        .test("our_node_has_the_go_shape", local_available(), our_node_has_the_go_shape)
        .test("discovery_prefix_ends_with_a_slash", local_available(), discovery_prefix_ends_with_a_slash)
        .test(
            "fleet_larger_than_a_listing_page_is_discovered_whole",
            local_available(),
            fleet_larger_than_a_listing_page_is_discovered_whole,
        )
        .run()
}
