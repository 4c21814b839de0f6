//! `registryctl list`, `get`, `watch`: look at what a backend holds.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use registry::{Discovery, DiscoveryEvent, ServiceConf, ServiceNode};

/// Where to look.
#[derive(Args, Debug, Clone)]
pub struct Scope {
    /// Backend URL (`memory://`, `etcd://host:2379`, `consul://host:8500`, `kubernetes://?mode=lease`).
    #[arg(long, env = "REGISTRY_URL")]
    url: String,
    /// Namespace.
    #[arg(long, default_value = registry::conf::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Environment.
    #[arg(long)]
    env: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Options of `registryctl get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    scope: Scope,
    /// gRPC method, `/pkg.Service/Method`.
    method: String,
}

async fn discover(scope: &Scope) -> anyhow::Result<std::sync::Arc<dyn Discovery>> {
    let registry = registry::connect(scope.url.as_str())
        .await
        .with_context(|| format!("connecting to {}", registry::options::redact(&scope.url)))?;
    let discovery = registry.discoverer(&scope.env, ServiceConf::default().with_namespace(&scope.namespace))?;
    tokio::time::timeout(Duration::from_secs(30), discovery.watcher())
        .await
        .context("no answer from the backend within 30 s")?
        .with_context(|| format!("listing {}", registry::options::redact(&scope.url)))?;
    Ok(discovery)
}

fn row(node: &ServiceNode) -> String {
    format!(
        "{:<24} {:<10} {:<22} {:>20} {:>4}",
        node.meta.app_id,
        node.meta.version,
        node.network.internal,
        node.lease_id,
        node.served_methods().count()
    )
}

fn print_nodes<'a>(nodes: impl Iterator<Item = &'a ServiceNode>, json: bool) -> anyhow::Result<()> {
    let nodes: Vec<&ServiceNode> = nodes.collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(());
    }
    println!("{:<24} {:<10} {:<22} {:>20} {:>4}", "APP", "VERSION", "INTERNAL", "LEASE", "METHODS");
    for node in nodes {
        println!("{}", row(node));
    }
    Ok(())
}

/// `registryctl list`: every live node, by app.
pub async fn list(scope: Scope) -> anyhow::Result<()> {
    let discovery = discover(&scope).await?;
    let snapshot = discovery.snapshot();
    let nodes = snapshot.all_nodes();
    print_nodes(nodes.iter().map(|n| &**n), scope.json)?;
    if !scope.json {
        println!("{} apps, {} nodes, {} methods", snapshot.apps().len(), snapshot.len(), snapshot.methods().len());
    }
    discovery.unwatch();
    Ok(())
}

/// `registryctl get <method>`: the nodes serving a method, newest first.
pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let discovery = discover(&args.scope).await?;
    let nodes = discovery.get_service(&args.method)?;
    print_nodes(nodes.iter().map(|n| &**n), args.scope.json)?;
    discovery.unwatch();
    Ok(())
}

/// `registryctl watch`: prints every change with a timestamp until Ctrl-C.
pub async fn watch(scope: Scope) -> anyhow::Result<()> {
    let discovery = discover(&scope).await?;
    let mut events = discovery.events();
    loop {
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = events.next() => event,
        };
        let Some(event) = event else { break };
        let now = chrono_like_now();
        match event {
            DiscoveryEvent::Up { node, .. } if scope.json => {
                println!("{}", serde_json::json!({"at": now, "event": "up", "node": &*node}))
            }
            DiscoveryEvent::Down { node, .. } if scope.json => {
                println!("{}", serde_json::json!({"at": now, "event": "down", "node": &*node}))
            }
            DiscoveryEvent::Up { node, .. } => println!("{now} UP   {}", row(&node)),
            DiscoveryEvent::Down { node, .. } => println!("{now} DOWN {}", row(&node)),
            _ => println!("{now} RESET"),
        }
    }
    discovery.unwatch();
    Ok(())
}

/// Seconds since the Unix epoch with milliseconds, UTC.
fn chrono_like_now() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", now.as_secs(), now.subsec_millis())
}
