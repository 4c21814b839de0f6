//! `registryctl migrate`: mirror live nodes from one backend to another.
//!
//! Every node the source discovers is registered on the target by a
//! registrar of this process, kept alive while the source node lives, and
//! uninstalled when the source node goes (or when this command stops). It
//! never touches target entries it did not create.
//!
//! A draining source node is mirrored draining: the mirror's registrar
//! carries the mark (the instance's own, or an operator's) as its own, so
//! callers of the target stop sending to it just as callers of the source do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use registry::{DiscoveryEvent, Register, Registry, ServiceConf, ServiceNode};
use tokio::task::JoinHandle;

use registry_core::options::redact;

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
    #[arg(long, default_value = registry_core::conf::DEFAULT_NAMESPACE)]
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
            let key = registry_core::app_lease_key(&node);
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
        let updated = async {
            mirror_mark(&*existing.registrar, node).await?;
            existing.registrar.install(node.clone()).await
        };
        match updated.await {
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
    // Set before the first install, so that it writes the mark at once.
    let installed = async {
        mirror_mark(&*registrar, node).await?;
        registrar.install(node.clone()).await
    };
    if let Err(e) = installed.await {
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

/// Gives the mirror the source node's draining mark (the instance's own or
/// an operator's): `install` keeps the registrar's own mark, not the node's.
async fn mirror_mark(registrar: &dyn Register, node: &ServiceNode) -> registry::Result<()> {
    if node.draining || node.drained_by_operator { registrar.drain().await } else { registrar.undrain().await }
}

async fn stop(m: Mirror) {
    if let Err(e) = m.registrar.uninstall().await {
        eprintln!("uninstalling a mirror failed: {e}");
    }
    if let Some(k) = m.keepalive {
        let _ = k.await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: failures panic

    use super::*;
    use registry::{GrpcServices, Meta};

    /// The target's view of `env` once it holds `count` nodes.
    async fn target_nodes(target: &Registry, conf: &ServiceConf, env: &str) -> Vec<ServiceNode> {
        let discovery = target.discoverer(env, conf.clone()).expect("discoverer");
        discovery.watcher().await.expect("listed");
        let nodes = discovery.snapshot().all_nodes().into_iter().map(|n| (*n).clone()).collect();
        discovery.unwatch();
        nodes
    }

    /// A draining source node is mirrored draining, and serving again when
    /// the source undrains (issue 26: the mirror was always serving).
    #[tokio::test]
    async fn the_draining_mark_is_mirrored() {
        let target = registry::connect("memory://migrate-mark-target").await.expect("target");
        let conf = ServiceConf::default().with_namespace("mig").with_ttl(Duration::from_secs(10));
        let mut node = GrpcServices::new().service("t.Mirror", ["Call"]).expect("valid").into_node();
        node.meta = Meta::new("prod", "mirrored", "v1");
        node.lease_id = 41;
        node.draining = true;
        let key: Arc<str> = Arc::from("mirrored/41");
        let (mut mirrors, mut tally) = (HashMap::new(), Tally::default());
        mirror(&target, &conf, &mut mirrors, &mut tally, Arc::clone(&key), &node, false).await;
        assert_eq!((tally.mirrored, tally.failed), (1, 0));
        let seen = target_nodes(&target, &conf, "prod").await;
        assert_eq!(seen.iter().map(|n| n.draining).collect::<Vec<_>>(), [true], "mirrored draining");

        node.draining = false;
        mirror(&target, &conf, &mut mirrors, &mut tally, Arc::clone(&key), &node, false).await;
        let seen = target_nodes(&target, &conf, "prod").await;
        assert_eq!(seen.iter().map(|n| n.draining).collect::<Vec<_>>(), [false], "undrained on the source");

        node.drained_by_operator = true;
        mirror(&target, &conf, &mut mirrors, &mut tally, Arc::clone(&key), &node, false).await;
        let seen = target_nodes(&target, &conf, "prod").await;
        assert_eq!(seen.iter().map(|n| n.draining).collect::<Vec<_>>(), [true], "an operator's drain mirrored");
        assert_eq!(tally.failed, 0);
        for (_, m) in mirrors.drain() {
            stop(m).await;
        }
    }
}
