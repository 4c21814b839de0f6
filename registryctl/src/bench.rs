//! `registryctl bench`: propagation, crash expiry and lookup latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use futures::stream::BoxStream;
use hdrhistogram::Histogram;
use registry::{Discovery, DiscoveryEvent, GrpcServices, Meta, ServiceConf, ServiceNode};

use crate::servers;
use registry::options::redact;

/// Options of `registryctl bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Backend: memory, etcd, consul, kubernetes-lease, kubernetes-configmap, kubernetes-pod.
    #[arg(long, default_value = "memory")]
    backend: String,
    /// Connect to this URL instead of starting a local server.
    #[arg(long)]
    url: Option<String>,
    /// Live instances in the env while measuring (background fleet).
    #[arg(long, default_value_t = 100)]
    instances: usize,
    /// Propagation samples (each: one install and one uninstall).
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// TTL in seconds (the floor is lowered to allow 2).
    #[arg(long, default_value_t = 2)]
    ttl: u64,
}

const PROBE_APP: &str = "probe";
const VISIBLE_WITHIN: Duration = Duration::from_secs(30);

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.samples >= 1, "--samples must be at least 1");
    let target = servers::resolve(&args.backend, args.url.clone()).await?;
    let writer_side = registry::connect(target.url.as_str()).await.context("connecting the registrar side")?;
    let reader_side = registry::connect(target.url.as_str()).await.context("connecting the discoverer side")?;
    let namespace = format!(
        "bench-{:x}-{}",
        std::process::id(),
        std::time::UNIX_EPOCH.elapsed().map(|d| d.as_secs() % 100_000).unwrap_or(0)
    );
    let env = "bench";
    let ttl = Duration::from_secs(args.ttl);
    let conf = ServiceConf::default().with_namespace(&namespace).with_ttl_floor(Duration::from_secs(2)).with_ttl(ttl);
    target.prepare_namespace(&namespace).await?;

    eprintln!("bench: backend={} url={} namespace={namespace}", args.backend, redact(&target.url));
    let mut fleet = Vec::new();
    for i in 0..args.instances {
        let r = target
            .registrar(&writer_side, Meta::new(env, format!("fleet-{}", i % 50), "v1"), conf.clone())
            .await?
            .registrar;
        r.install(node("fleet.Svc", &format!("M{}", i % 50))).await.context("installing the fleet")?;
        let keepalive = tokio::spawn({
            let r = Arc::clone(&r);
            async move { r.sustain_lease().await }
        });
        fleet.push((r, keepalive));
    }
    let discovery = reader_side.discoverer(env, conf.clone())?;
    discovery.watcher().await.context("starting discovery")?;
    let mut events = discovery.events();

    // Propagation: install → Up seen by the other side; uninstall → Down seen.
    let mut hist = Histogram::<u64>::new(3)?;
    let probe = target.registrar(&writer_side, Meta::new(env, PROBE_APP, "v1"), conf.clone()).await?.registrar;
    for _ in 0..args.samples {
        let start = Instant::now();
        let installed = probe.install(node("probe.Svc", "Ping")).await?;
        wait_for(&mut events, installed.lease_id, true).await?;
        hist.record(micros(start.elapsed()))?;
        let start = Instant::now();
        probe.uninstall().await?;
        wait_for(&mut events, installed.lease_id, false).await?;
        hist.record(micros(start.elapsed()))?;
    }

    // Crash expiry: keepalive stops without uninstall.
    let crashy_instance = target.registrar(&writer_side, Meta::new(env, PROBE_APP, "v1"), conf.clone()).await?;
    let crashy = Arc::clone(&crashy_instance.registrar);
    let installed = crashy.install(node("probe.Svc", "Ping")).await?;
    let keepalive = tokio::spawn({
        let r = Arc::clone(&crashy);
        async move { r.sustain_lease().await }
    });
    wait_for(&mut events, installed.lease_id, true).await?;
    tokio::time::sleep(ttl).await;
    keepalive.abort();
    let crashed = Instant::now();
    target.crashed(&crashy_instance).await?;
    wait_for(&mut events, installed.lease_id, false).await?;
    let expiry = crashed.elapsed();

    // Lookup: median over rounds of a tight loop.
    let method = "/fleet.Svc/M7";
    let lookup_ns = if args.instances > 7 { lookup_median_ns(&*discovery, method)? } else { f64::NAN };

    for (r, keepalive) in fleet {
        let _ = r.uninstall().await;
        let _ = keepalive.await;
    }
    discovery.unwatch();
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "backend={} instances={} propagation_p50_ms={:.2} propagation_p99_ms={:.2} expiry_ms={} lookup_ns={:.1}",
        args.backend,
        args.instances,
        ms(hist.value_at_quantile(0.5)),
        ms(hist.value_at_quantile(0.99)),
        expiry.as_millis(),
        lookup_ns
    );
    Ok(())
}

fn node(svc: &str, method: &str) -> ServiceNode {
    GrpcServices::new().service(svc, [method]).map(|g| g.into_node()).unwrap_or_default()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Waits for the probe's `Up` (or `Down`) event.
async fn wait_for(events: &mut BoxStream<'static, DiscoveryEvent>, lease: i64, up: bool) -> anyhow::Result<()> {
    let found = tokio::time::timeout(VISIBLE_WITHIN, async {
        while let Some(event) = events.next().await {
            match (&event, up) {
                (DiscoveryEvent::Up { node, .. }, true) | (DiscoveryEvent::Down { node, .. }, false)
                    if node.lease_id == lease && node.meta.app_id == PROBE_APP =>
                {
                    return true;
                }
                _ => {}
            }
        }
        false
    })
    .await;
    anyhow::ensure!(
        matches!(found, Ok(true)),
        "probe lease {lease} not seen {} within {VISIBLE_WITHIN:?}",
        if up { "up" } else { "down" }
    );
    Ok(())
}

fn lookup_median_ns(discovery: &dyn Discovery, method: &str) -> anyhow::Result<f64> {
    discovery.get_service(method).context("lookup target missing")?;
    const CALLS: u32 = 200_000;
    let mut rounds: Vec<f64> = (0..11)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..CALLS {
                std::hint::black_box(discovery.get_service(std::hint::black_box(method)).ok());
            }
            start.elapsed().as_nanos() as f64 / f64::from(CALLS)
        })
        .collect();
    rounds.sort_by(|a, b| a.total_cmp(b));
    Ok(rounds[rounds.len() / 2])
}
