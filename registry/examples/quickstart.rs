//! Quickstart: two instances of a demo app on the embedded backend,
//! discovered by method; one leaves and discovery follows.
//!
//! Run: `cargo run -p grpc-registry --example quickstart`

use std::time::Duration;

use registry::{GrpcServices, Meta, ServiceConf};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // 1. Connect. "memory://" is the embedded backend; the same code runs on
    //    "etcd://127.0.0.1:2379", "consul://127.0.0.1:8500" or "kubernetes://?mode=lease".
    let registry = registry::connect("memory://").await?;
    println!("1. connected to the {} backend", registry.kind());

    // 2. Describe what the service serves: gRPC service names and methods.
    let services = GrpcServices::new()
        .service("shop.v1.Orders", ["Create", "Get"])?
        .service("grpc.health.v1.Health", ["Check"])?;
    let methods: Vec<String> = services.methods().collect();
    println!("2. the demo app `orders` serves {} methods: {}", methods.len(), methods.join(", "));

    // 3. Register two instances and keep them alive (heartbeat every TTL/2).
    let conf = ServiceConf::default();
    let mut instances = Vec::new();
    for (i, addr) in ["10.0.0.1:9000", "10.0.0.2:9000"].into_iter().enumerate() {
        let conf = conf.clone().with_network(registry::Network { internal: addr.into(), ..Default::default() });
        let registrar = registry.registrar(Meta::new("dev", "orders", "v1"), conf)?;
        let node = registrar.install(services.clone().into_node()).await?;
        let keepalive = tokio::spawn({
            let r = registrar.clone();
            async move { r.sustain_lease().await }
        });
        println!("3. installed instance {} of `orders` at {addr} (lease {})", i + 1, node.lease_id);
        instances.push((registrar, keepalive));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // 4. A gateway discovers by method, from its local cache.
    let discovery = registry.discoverer("dev", conf)?;
    discovery.watcher().await?;
    let nodes = discovery.get_service("/shop.v1.Orders/Get")?;
    println!("4. /shop.v1.Orders/Get is served by {} nodes (newest first):", nodes.len());
    for n in nodes.iter() {
        println!("     {} {} lease={}", n.meta.app_id, n.network.internal, n.lease_id);
    }

    // 5. One instance leaves; discovery follows.
    let (leaving, keepalive) = instances.remove(0);
    leaving.uninstall().await?;
    keepalive.await??;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let nodes = discovery.get_service("/shop.v1.Orders/Get")?;
    println!("5. after one uninstall, {} node remains: {}", nodes.len(), nodes[0].network.internal);

    // 6. The last one leaves: the method is no longer served.
    for (registrar, keepalive) in instances {
        registrar.uninstall().await?;
        keepalive.await??;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    match discovery.get_service("/shop.v1.Orders/Get") {
        Err(e) => println!("6. after the last uninstall: {e}"),
        Ok(nodes) => anyhow::bail!("still {} nodes", nodes.len()),
    }
    discovery.unwatch();
    Ok(())
}
