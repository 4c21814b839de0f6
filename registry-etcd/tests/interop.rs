//! Interoperability with the Go framework on a real etcd: records written
//! the Go way are discovered, and records we write have the Go shape.

mod support;

use std::process::ExitCode;
use std::time::Duration;

use conformance::fixtures::{PROPAGATION, eventually, meta, method, node, unique};
use etcd_client::{GetOptions, PutOptions, Txn, TxnOp};
use registry_core::{Discoverer, Discovery, Register, Registrar};
use serde_json::Value;
use support::{Needs, Test, conf, local_etcd, raw_client, store};

/// A node exactly as the Go framework writes it (`json.Marshal` of its
/// `ServiceNode`), for `lease_id` and `env`.
fn go_node_json(lease_id: i64, env: &str, app_id: &str) -> String {
    format!(
        r#"{{"proto_count":1,"lease_id":{lease_id},"run_date":"2025-06-01 12:30:45","methods":{{"/user.UserService/GetProfile":true,"/user.UserService/Login":true}},"network":{{"sn":"default","internal":"10.0.0.7:9090","external":""}},"kernel":{{"language":"go","version":"v1.4.0"}},"meta":{{"env":"{env}","app_id":"{app_id}","version":"v1"}}}}"#
    )
}

/// Writes a Go-shaped node the Go way: a lease granted by etcd, key
/// `<namespace>/<env>/<app_id>/<lease_id>`, put with that lease. Returns the lease id.
async fn put_go_node(
    client: &mut etcd_client::Client,
    namespace: &str,
    env: &str,
    app_id: &str,
) -> anyhow::Result<i64> {
    let lease = client.lease_grant(10, None).await?.id();
    let key = format!("{namespace}/{env}/{app_id}/{lease}");
    client.put(key, go_node_json(lease, env, app_id), Some(PutOptions::new().with_lease(lease))).await?;
    Ok(lease)
}

fn lease_ids(discovery: &dyn Discovery, method: &str) -> Vec<i64> {
    let mut ids: Vec<i64> =
        discovery.get_service(method).map(|nodes| nodes.iter().map(|n| n.lease_id).collect()).unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// Go nodes written before discovery starts (listed) and after (watched)
/// are both served, with their fields intact.
async fn go_written_nodes_are_discovered() -> anyhow::Result<()> {
    let server = local_etcd().await?;
    let store = store(&server).await?;
    let mut client = raw_client(&server).await?;
    let (namespace, env) = (unique("ns"), unique("env"));
    let listed = put_go_node(&mut client, &namespace, &env, "user-service").await?;
    let discoverer = Discoverer::new(&store, &env, conf(&namespace))?;
    discoverer.watcher().await?;
    let login = "/user.UserService/Login";
    anyhow::ensure!(
        lease_ids(&discoverer, login) == [listed],
        "listed Go node not served: {:?}",
        lease_ids(&discoverer, login)
    );
    let watched = put_go_node(&mut client, &namespace, &env, "user-service").await?;
    let mut both = vec![listed, watched];
    both.sort_unstable();
    eventually(PROPAGATION, "watched Go node served", || lease_ids(&discoverer, login) == both).await?;
    let nodes = discoverer.get_service("/user.UserService/GetProfile")?;
    let node = nodes.iter().find(|n| n.lease_id == listed).ok_or_else(|| anyhow::anyhow!("listed node missing"))?;
    anyhow::ensure!(node.kernel.language == "go" && node.kernel.version == "v1.4.0", "kernel: {:?}", node.kernel);
    anyhow::ensure!(
        node.network.internal == "10.0.0.7:9090" && node.network.sn == "default",
        "network: {:?}",
        node.network
    );
    anyhow::ensure!(node.run_date == "2025-06-01 12:30:45", "run_date: {}", node.run_date);
    anyhow::ensure!(node.meta.app_id == "user-service" && node.meta.version == "v1", "meta: {:?}", node.meta);
    anyhow::ensure!(discoverer.skipped() == 0, "Go records were skipped");
    // The Go side's lease ends (process gone): the node disappears with its key.
    client.lease_revoke(watched).await?;
    eventually(PROPAGATION, "revoked Go node gone", || lease_ids(&discoverer, login) == [listed]).await?;
    discoverer.unwatch();
    Ok(())
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
    for field in ["proto_count", "lease_id", "run_date", "methods", "network", "kernel", "meta"] {
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

    registrar.uninstall().await?;
    let after = client.get(format!("{namespace}/{env}/"), Some(GetOptions::new().with_prefix())).await?;
    anyhow::ensure!(after.kvs().is_empty(), "record left after uninstall");
    let revoked = client.lease_time_to_live(installed.lease_id, None).await?;
    anyhow::ensure!(revoked.ttl() <= 0, "lease still alive after uninstall (ttl {})", revoked.ttl());
    Ok(())
}

/// Discovery of env `prod` lists `<namespace>/prod/` with the slash: a node
/// under `<namespace>/production/` is neither served nor even seen (not
/// counted as skipped), although it claims env `prod`.
async fn discovery_prefix_ends_with_a_slash() -> anyhow::Result<()> {
    let server = local_etcd().await?;
    let store = store(&server).await?;
    let mut client = raw_client(&server).await?;
    let namespace = unique("ns");
    let lease = client.lease_grant(10, None).await?.id();
    let key = format!("{namespace}/production/user-service/{lease}");
    client.put(key, go_node_json(lease, "prod", "user-service"), Some(PutOptions::new().with_lease(lease))).await?;
    let discoverer = Discoverer::new(&store, "prod", conf(&namespace))?;
    discoverer.watcher().await?;
    let lease2 = client.lease_grant(10, None).await?.id();
    let key2 = format!("{namespace}/production/user-service/{lease2}");
    client.put(key2, go_node_json(lease2, "prod", "user-service"), Some(PutOptions::new().with_lease(lease2))).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    anyhow::ensure!(lease_ids(&discoverer, "/user.UserService/Login").is_empty(), "env prod serves production's node");
    anyhow::ensure!(discoverer.skipped() == 0, "records of `production` reached the `prod` discoverer");
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
    let (namespace, env) = (unique("ns"), unique("env"));
    let lease = client.lease_grant(30, None).await?.id();
    let ids: Vec<i64> = (1..=FLEET).collect();
    // etcd allows 128 operations per transaction.
    for batch in ids.chunks(100) {
        let puts: Vec<TxnOp> = batch
            .iter()
            .map(|id| {
                let key = format!("{namespace}/{env}/fleet/{id}");
                TxnOp::put(key, go_node_json(*id, &env, "fleet"), Some(PutOptions::new().with_lease(lease)))
            })
            .collect();
        client.txn(Txn::new().and_then(puts)).await?;
    }
    let discoverer = Discoverer::new(&store, &env, conf(&namespace))?;
    discoverer.watcher().await?;
    let listed = discoverer.get_app("fleet")?.len();
    anyhow::ensure!(listed == ids.len(), "listed {listed} of {} nodes", ids.len());
    let late = FLEET + 1;
    client
        .put(
            format!("{namespace}/{env}/fleet/{late}"),
            go_node_json(late, &env, "fleet"),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    eventually(PROPAGATION, "node written after the listing", || {
        discoverer.get_app("fleet").map(|n| n.len()).unwrap_or_default() == ids.len() + 1
    })
    .await?;
    client.lease_revoke(lease).await?;
    eventually(PROPAGATION, "fleet gone with its lease", || discoverer.get_app("fleet").is_err()).await?;
    discoverer.unwatch();
    Ok(())
}

fn main() -> ExitCode {
    support::run(vec![
        Test {
            name: "go_written_nodes_are_discovered",
            needs: Needs::Etcd,
            run: || Box::pin(go_written_nodes_are_discovered()),
        },
        Test { name: "our_node_has_the_go_shape", needs: Needs::Etcd, run: || Box::pin(our_node_has_the_go_shape()) },
        Test {
            name: "discovery_prefix_ends_with_a_slash",
            needs: Needs::Etcd,
            run: || Box::pin(discovery_prefix_ends_with_a_slash()),
        },
        Test {
            name: "fleet_larger_than_a_listing_page_is_discovered_whole",
            needs: Needs::Etcd,
            run: || Box::pin(fleet_larger_than_a_listing_page_is_discovered_whole()),
        },
    ])
}
