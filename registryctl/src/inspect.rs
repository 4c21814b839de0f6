//! `registryctl list`, `get`, `watch`: look at what a backend holds.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use comfy_table::{CellAlignment, Table};
use futures::StreamExt;
use registry::{Discovery, DiscoveryEvent, Health, ServiceConf, ServiceNode, SourceHealth};

/// Where to look (also what `drain`/`undrain` act on).
#[derive(Args, Debug, Clone)]
pub struct Scope {
    /// Backend URL (`memory://`, `etcd://host:2379`, `consul://host:8500`, `kubernetes://?mode=lease`).
    #[arg(long, env = "REGISTRY_URL")]
    pub(crate) url: String,
    /// Namespace.
    #[arg(long, default_value = registry_core::conf::DEFAULT_NAMESPACE)]
    pub(crate) namespace: String,
    /// Environment.
    #[arg(long)]
    pub(crate) env: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
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
    discover_with(scope, registry::DrainingNodes::Exclude).await
}

async fn discover_with(
    scope: &Scope,
    draining: registry::DrainingNodes,
) -> anyhow::Result<std::sync::Arc<dyn Discovery>> {
    Ok(open(scope, draining).await?.1)
}

/// Connects to the scope's backend and returns it with a discoverer of the
/// scope whose first listing is in (within 30 s).
pub(crate) async fn open(
    scope: &Scope,
    draining: registry::DrainingNodes,
) -> anyhow::Result<(registry::Registry, std::sync::Arc<dyn Discovery>)> {
    let registry = registry::connect(scope.url.as_str())
        .await
        .with_context(|| format!("connecting to {}", registry_core::options::redact(&scope.url)))?;
    let options = registry::DiscoveryOptions::default().with_draining_nodes(draining);
    let conf = ServiceConf::default().with_namespace(&scope.namespace).with_discovery(options);
    let discovery = registry.discoverer(&scope.env, conf)?;
    tokio::time::timeout(Duration::from_secs(30), discovery.watcher())
        .await
        .context("no answer from the backend within 30 s")?
        .with_context(|| format!("listing {}", registry_core::options::redact(&scope.url)))?;
    Ok((registry, discovery))
}

/// `serving`, `draining` (the instance drains itself) or `drained-by-operator`.
fn state(node: &ServiceNode) -> &'static str {
    match (node.drained_by_operator, node.draining) {
        (true, _) => "drained-by-operator",
        (false, true) => "draining",
        (false, false) => "serving",
    }
}

/// The columns of a node: app, version, internal address, lease, methods, state.
fn cells(node: &ServiceNode) -> [String; 6] {
    [
        node.meta.app_id.clone(),
        node.meta.version.clone(),
        node.network.internal.clone(),
        node.lease_id.to_string(),
        node.served_methods().count().to_string(),
        state(node).to_owned(),
    ]
}

/// The nodes as a table whose columns fit the longest value.
fn table<'a>(nodes: impl Iterator<Item = &'a ServiceNode>) -> Table {
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(["APP", "VERSION", "INTERNAL", "LEASE", "METHODS", "STATE"]);
    for node in nodes {
        table.add_row(cells(node));
    }
    for numeric in [3, 4] {
        if let Some(column) = table.column_mut(numeric) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

fn print_nodes<'a>(nodes: impl Iterator<Item = &'a ServiceNode>, json: bool) -> anyhow::Result<()> {
    if json {
        let nodes: Vec<&ServiceNode> = nodes.collect();
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(());
    }
    println!("{}", table(nodes));
    Ok(())
}

/// One line per source: `source etcd: current (confirmed 0.4 s ago), stream healthy, 0 resyncs`.
fn health_lines(health: &Health) -> Vec<String> {
    health.sources.iter().map(health_line).collect()
}

fn health_line(s: &SourceHealth) -> String {
    let state = if s.stale { "STALE" } else { "current" };
    let confirmed =
        s.since_confirmed.map_or("never confirmed".to_owned(), |d| format!("confirmed {:.1} s ago", d.as_secs_f64()));
    let mut line = format!(
        "source {}: {state} ({confirmed}), stream {}, {} resyncs, {} stream errors",
        s.source,
        if s.stream_healthy { "healthy" } else { "broken" },
        s.resyncs,
        s.stream_errors
    );
    if s.from_snapshot {
        line.push_str(", serving the snapshot");
    }
    if s.empty_held {
        line.push_str(", empty listing held back");
    }
    if let Some(error) = &s.last_error {
        line.push_str(&format!(", last error: {error}"));
    }
    if let Some(error) = &s.snapshot_error {
        line.push_str(&format!(", snapshot: {error}"));
    }
    line
}

fn health_json(health: &Health) -> serde_json::Value {
    serde_json::Value::Array(
        health
            .sources
            .iter()
            .map(|s| {
                serde_json::json!({
                    "source": s.source,
                    "stale": s.stale,
                    "ready": s.ready,
                    "stream_healthy": s.stream_healthy,
                    "since_confirmed_s": s.since_confirmed.map(|d| d.as_secs_f64()),
                    "stale_after_s": s.stale_after.map(|d| d.as_secs_f64()),
                    "resyncs": s.resyncs,
                    "stream_errors": s.stream_errors,
                    "last_error": s.last_error,
                    "from_snapshot": s.from_snapshot,
                    "empty_held": s.empty_held,
                    "snapshot_error": s.snapshot_error,
                })
            })
            .collect(),
    )
}

/// `registryctl list`: every live node, by app, then the health of each source.
pub async fn list(scope: Scope) -> anyhow::Result<()> {
    let discovery = discover(&scope).await?;
    let snapshot = discovery.snapshot();
    let nodes = snapshot.all_nodes();
    if scope.json {
        let nodes: Vec<&ServiceNode> = nodes.iter().map(|n| &**n).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"nodes": nodes, "health": health_json(&discovery.health())})
            )?
        );
    } else {
        print_nodes(nodes.iter().map(|n| &**n), false)?;
        println!("{} apps, {} nodes, {} methods", snapshot.apps().len(), snapshot.len(), snapshot.methods().len());
        for line in health_lines(&discovery.health()) {
            println!("{line}");
        }
    }
    discovery.unwatch();
    Ok(())
}

/// `registryctl get <method>`: the nodes serving a method, newest first,
/// draining ones last (STATE says which; `get_service` callers do not get them).
pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let discovery = discover_with(&args.scope, registry::DrainingNodes::Last).await?;
    let nodes = discovery.get_service(&args.method)?;
    print_nodes(nodes.iter().map(|n| &**n), args.scope.json)?;
    discovery.unwatch();
    Ok(())
}

/// `registryctl watch`: prints every change with a timestamp until Ctrl-C,
/// and a `HEALTH` line per source when it starts and whenever a source turns
/// stale or current again (checked every second).
pub async fn watch(scope: Scope) -> anyhow::Result<()> {
    let discovery = discover(&scope).await?;
    let mut events = discovery.events();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut shown: Option<Vec<(bool, bool, bool, bool)>> = None;
    loop {
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                let health = discovery.health();
                let state: Vec<_> =
                    health.sources.iter().map(|s| (s.stale, s.stream_healthy, s.from_snapshot, s.empty_held)).collect();
                if shown.as_ref() != Some(&state) {
                    let now = timestamp();
                    if scope.json {
                        println!("{}", serde_json::json!({"at": now, "event": "health", "health": health_json(&health)}));
                    } else {
                        for line in health_lines(&health) {
                            println!("{now} HEALTH {line}");
                        }
                    }
                    shown = Some(state);
                }
                continue;
            }
            event = events.next() => event,
        };
        let Some(event) = event else { break };
        let now = timestamp();
        match event {
            DiscoveryEvent::Up { node, .. } if scope.json => {
                println!("{}", serde_json::json!({"at": now, "event": "up", "node": &*node}))
            }
            DiscoveryEvent::Down { node, .. } if scope.json => {
                println!("{}", serde_json::json!({"at": now, "event": "down", "node": &*node}))
            }
            DiscoveryEvent::Up { node, .. } => println!("{now} UP {}", cells(&node).join(" ")),
            DiscoveryEvent::Down { node, .. } => println!("{now} DOWN {}", cells(&node).join(" ")),
            _ => println!("{now} RESET"),
        }
    }
    discovery.unwatch();
    Ok(())
}

/// Now, UTC, in RFC 3339 with milliseconds (`2026-12-07T14:20:01.123Z`).
fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
