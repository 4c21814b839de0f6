//! Issue 13, scenario 5: the API server is silently partitioned — packets
//! dropped, not refused, the process still running — for longer than the
//! TTL, while instances heartbeat and a discoverer watches.
//!
//! Each test starts a kube-apiserver of its own on a loopback address of its
//! own, under a group id of its own
//! ([`KubeServer::start_partitionable`]), and cuts it off from everyone (its
//! clients and its etcd) with a [`Partition`](registry_testenv::partition::Partition)
//! guard, healed on drop and by a watchdog after its bound. Through the real
//! library (core's `Registrar` and `Discoverer` over `KubernetesStore`, the
//! suite's TTL of 2 s):
//!
//! - discovery keeps its last view during the cut — a lookup every 10 ms is
//!   answered with exactly the fleet, never emptied;
//! - `health()` reports the source stale within [`STALE_BOUND`];
//! - after the heal every registration is back within one TTL, discovery
//!   follows changes again (a registration made after the heal is seen) and
//!   is healthy; no registration is lost.
//!
//! One test per storage mode that keeps records in objects the API server
//! holds (`lease`, `configmap`; pod mode's records are the Pods themselves).
//! Each prints one `FIGURES` line (see `scripts/cluster-figures.sh`).
// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance::Runner;
use conformance::fixtures::{TTL, conf, eventually, unique};
use registry_core::store::Store;
use registry_core::{Discoverer, Discovery};
use registry_kubernetes::{KubernetesStore, Mode};
use registry_testenv::faults::{
    Fleet, LookupLoop, OBSERVE_AFTER, PARTITION_BOUND, Probe, STALE_BOUND, TIMER_SLACK, print_figures, secs,
};
use registry_testenv::kube::KubeServer;

/// How long the API server stays silent: longer than the TTL (2 s) and
/// than the stale bound, so both are measured inside the cut.
const CUT_FOR: Duration = Duration::from_secs(15);
/// How soon after the heal discovery is healthy and follows changes again.
const CORRECT_AFTER_HEAL_BOUND: Duration = Duration::from_secs(10);
/// Instances in the fleet.
const INSTANCES: usize = 10;

fn main() -> ExitCode {
    let available = KubeServer::partitionable_available;
    Runner::new()
        .test("apiserver_partitioned_lease", available(), || apiserver_partitioned(Mode::Lease))
        .test("apiserver_partitioned_configmap", available(), || apiserver_partitioned(Mode::ConfigMap))
        .run()
}

/// A store in `mode` on `server` with the library's defaults.
async fn store(server: &KubeServer, mode: Mode) -> anyhow::Result<KubernetesStore> {
    Ok(support::store(server, mode).await?)
}

async fn apiserver_partitioned(mode: Mode) -> anyhow::Result<()> {
    let server = KubeServer::start_partitionable().await?;
    let namespace = unique("part");
    server.create_namespace(&namespace).await?;
    let env = unique("env");
    // Two registering processes and one discovering, each its own client.
    let writers = [store(&server, mode).await?, store(&server, mode).await?];
    let writers: Vec<&dyn Store> = writers.iter().map(|s| s as &dyn Store).collect();
    let fleet = Arc::new(Fleet::start(&writers, INSTANCES, &namespace, &env).await?);
    let reading = store(&server, mode).await?;
    let disc = Arc::new(Discoverer::new(&reading, &env, conf(&namespace))?);
    disc.watcher().await?;
    eventually(Duration::from_secs(10), "the fleet is discovered", || fleet.exactly_in(&*disc)).await?;
    eventually(Duration::from_secs(5), "health is current", || disc.health().is_healthy()).await?;
    let lookups = LookupLoop::start(disc.clone(), &Fleet::method(), fleet.judge());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = lookups.take();
    anyhow::ensure!(before.bad() == 0, "lookups wrong before the fault: {before:?}");

    let partition = server.partition(PARTITION_BOUND)?;
    let cut_at = Instant::now();
    let detected = eventually(CUT_FOR, "health reports the source stale", || disc.health().is_stale())
        .await
        .map(|_| cut_at.elapsed());
    let stale_health = disc.health();
    tokio::time::sleep(CUT_FOR.saturating_sub(cut_at.elapsed())).await;
    let during = lookups.take();
    let retried = fleet.retried();
    let lasted = partition.heal()?;
    let healed_at = Instant::now();

    let keepalives = eventually(TTL * 5, "every keepalive recovered", || {
        fleet.instances.iter().all(|i| i.hooks.recovered_at().is_some_and(|t| t >= healed_at))
    })
    .await;
    let slowest = fleet
        .instances
        .iter()
        .filter_map(|i| i.hooks.recovered_at())
        .map(|t| t.saturating_duration_since(healed_at))
        .max()
        .unwrap_or_default();
    let healthy =
        eventually(CORRECT_AFTER_HEAL_BOUND + Duration::from_secs(30), "health is current after the heal", || {
            disc.health().is_healthy()
        })
        .await
        .map(|_| healed_at.elapsed());
    let probe = Probe::register(writers[0], &namespace, &env, Duration::from_secs(30)).await?;
    let probe_written = healed_at.elapsed();
    let correct = eventually(
        CORRECT_AFTER_HEAL_BOUND + Duration::from_secs(30),
        "discovery shows the fleet and a registration made after the heal",
        || probe.visible(&*disc) && fleet.exactly_in(&*disc),
    )
    .await
    .map(|_| healed_at.elapsed());
    tokio::time::sleep(OBSERVE_AFTER).await;
    let after = lookups.stop().await;
    // What the API server holds now, as a discoverer started afresh sees it.
    let fresh_store = store(&server, mode).await?;
    let fresh = Discoverer::new(&fresh_store, &env, conf(&namespace))?;
    fresh.watcher().await?;
    let lost = fleet.missing_from(&fresh) + fleet.keepalives_ended();
    let source = disc.health().sources.first().cloned().unwrap_or_default();
    let scenario = format!("kubernetes.apiserver_partitioned_{}", mode.as_str());
    print_figures(
        &scenario,
        &[
            ("instances", INSTANCES.to_string()),
            ("cut_for", secs(lasted)),
            ("stale_detected_after", detected.as_ref().map_or("never".into(), |d| secs(*d))),
            ("stale_bound", secs(STALE_BOUND)),
            ("keepalives_back_after_heal", if keepalives.is_ok() { secs(slowest) } else { "never".into() }),
            ("healthy_after_heal", healthy.as_ref().map_or("never".into(), |d| secs(*d))),
            ("probe_written_after_heal", secs(probe_written)),
            ("correct_after_heal", correct.as_ref().map_or("never".into(), |d| secs(*d))),
            ("lookups_answered", during.answered.to_string()),
            ("lookups_failed", during.failed.to_string()),
            ("lookups_wrong", during.wrong.to_string()),
            ("fewest_nodes", during.fewest.to_string()),
            ("lookups_bad_after_heal", after.bad().to_string()),
            ("instances_retried", retried.to_string()),
            ("reregistered", fleet.reregistered().to_string()),
            ("resyncs", source.resyncs.to_string()),
            ("stream_errors", source.stream_errors.to_string()),
            ("lost", lost.to_string()),
        ],
    );
    anyhow::ensure!(
        during.failed == 0 && during.wrong == 0,
        "discovery did not keep its last view during the cut: {during:?}"
    );
    let detected = detected.map_err(|e| anyhow::anyhow!("{e}: {stale_health:?}"))?;
    anyhow::ensure!(
        detected <= STALE_BOUND + TIMER_SLACK,
        "stale only {detected:?} after the cut (bound {STALE_BOUND:?} + {TIMER_SLACK:?}): {stale_health:?}"
    );
    anyhow::ensure!(retried == INSTANCES, "retry hooks fired for {retried} of {INSTANCES} instances");
    keepalives?;
    anyhow::ensure!(slowest <= TTL, "a registration came back {slowest:?} after the heal, more than one TTL");
    let healthy = healthy?;
    anyhow::ensure!(healthy <= CORRECT_AFTER_HEAL_BOUND + TIMER_SLACK, "healthy {healthy:?} after the heal");
    let correct = correct?;
    anyhow::ensure!(correct <= CORRECT_AFTER_HEAL_BOUND + TIMER_SLACK, "correct {correct:?} after the heal");
    anyhow::ensure!(after.bad() == 0, "lookups wrong after the heal: {after:?}");
    anyhow::ensure!(source.resyncs >= 1, "no resync counted: {source:?}");
    anyhow::ensure!(fleet.reregistered() == 0, "{} instances registered again", fleet.reregistered());
    anyhow::ensure!(lost == 0, "{lost} registrations lost");
    probe.stop().await;
    disc.unwatch();
    fresh.unwatch();
    if let Ok(fleet) = Arc::try_unwrap(fleet) {
        fleet.stop().await;
    }
    Ok(())
}
