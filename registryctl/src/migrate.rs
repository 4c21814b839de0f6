//! `registryctl migrate`: mirror live nodes from one backend to another.
//!
//! Every node the source discovers is registered on the target by a
//! registrar of this process, kept alive while the source node lives, and
//! uninstalled when the source node goes (or when this command stops). It
//! never touches target entries it did not create.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use registry::{DiscoveryEvent, Register, Registry, ServiceConf, ServiceNode};
use tokio::task::JoinHandle;

use registry::options::redact;

/// Options of `registryctl migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Source backend URL (e.g. `etcd://10.0.0.5:2379`).
    #[arg(long)]
    from: String,
    /// Target backend URL (e.g. `kubernetes://?mode=lease`).
    #[arg(long)]
    to: String,
    /// Namespace (the same on both sides).
    #[arg(long, default_value = registry::conf::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Environment to mirror.
    #[arg(long)]
    env: String,
    /// TTL of the mirrored registrations, seconds.
    #[arg(long, default_value_t = 10)]
    ttl: u64,
    /// Copy the current set once and exit (copies then expire after one TTL unless renewed).
    #[arg(long)]
    once: bool,
}

struct Mirror {
    registrar: Arc<dyn Register>,
    keepalive: Option<JoinHandle<registry::Result<()>>>,
}

#[derive(Default)]
struct Tally {
    mirrored: u64,
    updated: u64,
    removed: u64,
    failed: u64,
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let source =
        registry::connect(args.from.as_str()).await.with_context(|| format!("connecting to {}", redact(&args.from)))?;
    let target =
        registry::connect(args.to.as_str()).await.with_context(|| format!("connecting to {}", redact(&args.to)))?;
    let conf = ServiceConf::default().with_namespace(&args.namespace).with_ttl(Duration::from_secs(args.ttl));
    let discovery = source.discoverer(&args.env, conf.clone())?;
    discovery.watcher().await.with_context(|| format!("listing {}", redact(&args.from)))?;

    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut mirrors: HashMap<Arc<str>, Mirror> = HashMap::new();
    let mut tally = Tally::default();

    if args.once {
        for node in discovery.snapshot().all_nodes() {
            let key = registry::app_lease_key(&node);
            mirror(&target, &conf, &mut mirrors, &mut tally, key, &node, false).await;
        }
        bar.finish_and_clear();
        println!(
            "copied {} nodes ({} failed) from {} to {} once",
            tally.mirrored,
            tally.failed,
            redact(&args.from),
            redact(&args.to)
        );
        return Ok(());
    }

    let mut events = discovery.events();
    loop {
        bar.set_message(format!(
            "mirroring {} → {}: {} live, {} mirrored, {} updated, {} removed, {} failed",
            redact(&args.from),
            redact(&args.to),
            mirrors.len(),
            tally.mirrored,
            tally.updated,
            tally.removed,
            tally.failed
        ));
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = events.next() => event,
        };
        match event {
            Some(DiscoveryEvent::Up { key, node }) => {
                mirror(&target, &conf, &mut mirrors, &mut tally, key, &node, true).await;
            }
            Some(DiscoveryEvent::Down { key, .. }) => {
                if let Some(m) = mirrors.remove(&key) {
                    stop(m).await;
                    tally.removed += 1;
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    bar.finish_and_clear();
    let live = mirrors.len();
    for (_, m) in mirrors.drain() {
        stop(m).await;
    }
    discovery.unwatch();
    println!(
        "stopped: {} mirrored, {} updated, {} removed, {} failed; {live} mirrors uninstalled on exit",
        tally.mirrored, tally.updated, tally.removed, tally.failed
    );
    Ok(())
}

async fn mirror(
    target: &Registry,
    conf: &ServiceConf,
    mirrors: &mut HashMap<Arc<str>, Mirror>,
    tally: &mut Tally,
    key: Arc<str>,
    node: &ServiceNode,
    keep_alive: bool,
) {
    if let Some(existing) = mirrors.get(&key) {
        match existing.registrar.install(node.clone()).await {
            Ok(_) => tally.updated += 1,
            Err(e) => {
                tally.failed += 1;
                tracing::warn!(%key, error = %e, "updating a mirror failed");
            }
        }
        return;
    }
    let conf = conf.clone().with_network(node.network.clone()).with_kernel(node.kernel.clone());
    let registrar = match target.registrar(node.meta.clone(), conf) {
        Ok(r) => r,
        Err(e) => {
            tally.failed += 1;
            eprintln!("skipping {key}: {e}");
            return;
        }
    };
    if let Err(e) = registrar.install(node.clone()).await {
        tally.failed += 1;
        eprintln!("mirroring {key} failed: {e}");
        return;
    }
    tally.mirrored += 1;
    let keepalive = keep_alive.then(|| {
        let r = Arc::clone(&registrar);
        tokio::spawn(async move { r.sustain_lease().await })
    });
    mirrors.insert(key, Mirror { registrar, keepalive });
}

async fn stop(m: Mirror) {
    if let Err(e) = m.registrar.uninstall().await {
        eprintln!("uninstalling a mirror failed: {e}");
    }
    if let Some(k) = m.keepalive {
        let _ = k.await;
    }
}
