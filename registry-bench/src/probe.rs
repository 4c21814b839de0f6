//! The probes, with the fleet live: install→visible and uninstall→gone of a
//! probe instance seen by a discoverer in the bench process, its crash
//! expiry, and the lookup latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use futures::stream::BoxStream;
use hdrhistogram::Histogram;
use registry::{Discovery, DiscoveryEvent, Meta, Registry, ServiceConf};

use crate::row::Row;
use crate::target::Target;
use crate::{BenchArgs, ENV, conf, node, observe};

const PROBE_APP: &str = "probe";
/// TTL of the probe instances (propagation and crash expiry), whatever the fleet's.
const PROBE_TTL: Duration = Duration::from_secs(2);
const VISIBLE_WITHIN: Duration = Duration::from_secs(30);

/// Install→visible and uninstall→gone of a probe instance, its crash expiry
/// and the lookup latency, all with the fleet live; into `row`.
pub async fn probe(
    args: &BenchArgs,
    target: &Target,
    writer_side: &Registry,
    reader_side: &Registry,
    namespace: &str,
    fleet_conf: &ServiceConf,
    row: &mut Row,
) -> anyhow::Result<()> {
    let probe_conf = conf(namespace, PROBE_TTL);
    let discovery = reader_side.discoverer(ENV, fleet_conf.clone())?;
    discovery.watcher().await.context("starting discovery")?;
    let mut events = discovery.events();
    let mut installs = Histogram::<u64>::new(3)?;
    let mut uninstalls = Histogram::<u64>::new(3)?;
    let mut both = Histogram::<u64>::new(3)?;
    let probe = target.registrar(writer_side, Meta::new(ENV, PROBE_APP, "v1"), probe_conf.clone()).await?.registrar;
    for _ in 0..args.samples {
        let start = Instant::now();
        let installed = probe.install(node("probe.Svc", "Ping")).await?;
        wait_for(&mut events, &*discovery, installed.lease_id, true).await?;
        let took = micros(start.elapsed());
        installs.record(took)?;
        both.record(took)?;
        let start = Instant::now();
        probe.uninstall().await?;
        wait_for(&mut events, &*discovery, installed.lease_id, false).await?;
        let took = micros(start.elapsed());
        uninstalls.record(took)?;
        both.record(took)?;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    row.install_p50_ms = ms(installs.value_at_quantile(0.5));
    row.install_p99_ms = ms(installs.value_at_quantile(0.99));
    row.uninstall_p50_ms = ms(uninstalls.value_at_quantile(0.5));
    row.uninstall_p99_ms = ms(uninstalls.value_at_quantile(0.99));
    row.propagation_p99_ms = ms(both.value_at_quantile(0.99));

    // Crash expiry: keepalive stops without uninstall.
    let crashy_instance = target.registrar(writer_side, Meta::new(ENV, PROBE_APP, "v1"), probe_conf.clone()).await?;
    let crashy = Arc::clone(&crashy_instance.registrar);
    let installed = crashy.install(node("probe.Svc", "Ping")).await?;
    let keepalive = tokio::spawn({
        let r = Arc::clone(&crashy);
        async move { r.sustain_lease().await }
    });
    wait_for(&mut events, &*discovery, installed.lease_id, true).await?;
    tokio::time::sleep(PROBE_TTL).await;
    keepalive.abort();
    let crashed = Instant::now();
    target.crashed(&crashy_instance).await?;
    wait_for(&mut events, &*discovery, installed.lease_id, false).await?;
    row.expiry_ms = crashed.elapsed().as_secs_f64() * 1e3;

    // Lookup: median over rounds of a tight loop.
    row.lookup_ns = lookup_median_ns(&*discovery, "/fleet.Svc/M7")?;
    drop(events);
    discovery.unwatch();
    Ok(())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Whether the probe's instance `lease` is in the discovery's view.
fn probe_present(discovery: &dyn Discovery, lease: i64) -> bool {
    discovery.get_app(PROBE_APP).is_ok_and(|nodes| nodes.iter().any(|n| n.lease_id == lease))
}

/// Waits for the probe's `Up` (or `Down`) event; after a `Reset` (the
/// subscriber fell behind) the view itself answers.
async fn wait_for(
    events: &mut BoxStream<'static, DiscoveryEvent>,
    discovery: &dyn Discovery,
    lease: i64,
    up: bool,
) -> anyhow::Result<()> {
    let found = tokio::time::timeout(VISIBLE_WITHIN, async {
        while let Some(event) = events.next().await {
            match (&event, up) {
                (DiscoveryEvent::Up { node, .. }, true) | (DiscoveryEvent::Down { node, .. }, false)
                    if node.lease_id == lease && node.meta.app_id == PROBE_APP =>
                {
                    return true;
                }
                (DiscoveryEvent::Reset, _) if probe_present(discovery, lease) == up => return true,
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
    if discovery.get_service(method).is_err() {
        return Ok(f64::NAN);
    }
    const CALLS: u32 = 200_000;
    let rounds: Vec<f64> = (0..11)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..CALLS {
                std::hint::black_box(discovery.get_service(std::hint::black_box(method)).ok());
            }
            start.elapsed().as_nanos() as f64 / f64::from(CALLS)
        })
        .collect();
    Ok(observe::median(&rounds))
}
