//! Fault scenarios on a real 3-member etcd cluster
//! ([`registry_testenv::etcd_cluster`]), through the real library: core's
//! `Registrar` and `Discoverer` over `EtcdStore`, with the library's default
//! client settings (connect 3 s, request 5 s, HTTP/2 keepalive 10 s + 5 s)
//! and the suite's TTL of 2 s.
//!
//! Each scenario looks up its method every 10 ms during the fault, counting
//! answered, failed and wrong answers, and prints one `FIGURES` line (time
//! to steady state, lookups, registrations lost). Faults are healed by
//! guards: members are killed with the cluster, partitions are nftables
//! tables deleted on drop (and by a watchdog after their bound).
//!
//! - `leader_killed_while_fifty_heartbeat`: the leader — made to be the
//!   member serving the discoverer's watch — is killed (SIGKILL) while 50
//!   instances heartbeat: no instance disappears from discovery, none is
//!   lost, the watch moves to another member.
//! - `partitioned_follower_serving_the_watch`,
//!   `partitioned_leader_serving_the_watch`: the member the discoverer's
//!   watch (and some keepalive streams) use — a follower, or the leader — is
//!   silently partitioned from clients and peers: no lookup fails, the
//!   discoverer sees a change made after the cut within
//!   [`WATCH_FAILOVER_BOUND`], and no registration is lost.
//! - `quorum_lost_longer_than_ttl`: two of three members are killed for
//!   [`QUORUM_DOWN_FOR`] (> TTL): discovery keeps its last view, retry
//!   hooks fire, every registration is back within one TTL of the quorum's
//!   return.
//! - `silent_watch_member_health` (issue 13, item 6): a discoverer whose
//!   only endpoint is one member; that member is silently partitioned:
//!   `health()` reports the source stale within [`STALE_BOUND`], and after
//!   the heal healthy again, with a change made during the cut.
//! - `restart_during_outage_serves_snapshot` (item 8): a discoverer saves
//!   its view to a snapshot file; every member is stopped; a new discoverer
//!   with that file serves the old view at once, marked stale, and catches
//!   up when the cluster is back. One started with a corrupted file reports
//!   it and serves the live view once the cluster is back.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance::fixtures::{TTL, conf, eventually, unique};
use registry_core::conf::DiscoveryOptions;
use registry_core::store::Store;
use registry_core::{Discoverer, Discovery};
use registry_etcd::{EtcdConfig, EtcdStore};
use registry_testenv::etcd_cluster::EtcdCluster;
use registry_testenv::faults::{
    self, FaultTest, Fleet, LookupLoop, Need, OBSERVE_AFTER, PARTITION_BOUND, Probe, SILENT_FOR, STALE_BOUND,
    TIMER_SLACK, leases_of, print_figures, secs,
};

/// The bound within which a discoverer whose watch's member is silently
/// partitioned sees a change again. The watch asks for progress after 2 s
/// of silence and gives up 5 s (the request timeout) later: 7 s after the
/// last message. The balanced channel picks members at random, so the
/// resumed watch may land on the silent member again and cost another
/// request timeout; by 15 s the HTTP/2 keepalive (10 s + 5 s) has dropped
/// the silent connection from the balancer. 20 s covers both, with slack.
const WATCH_FAILOVER_BOUND: Duration = Duration::from_secs(20);
/// How long two of three members stay down in the quorum scenario (> TTL).
const QUORUM_DOWN_FOR: Duration = Duration::from_secs(5);
/// How soon after the heal `health()` is healthy and the view correct: the
/// watch is retried with core's backoff (at most 5 s apart) and each try on
/// the silent member costs up to the request timeout (5 s).
const HEALTHY_AFTER_HEAL_BOUND: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    faults::run(vec![
        FaultTest::new(
            "leader_killed_while_fifty_heartbeat",
            &[Need::EtcdCluster],
            leader_killed_while_fifty_heartbeat,
        ),
        FaultTest::new("partitioned_follower_serving_the_watch", &[Need::EtcdCluster, Need::Partitions], || {
            partitioned_member_serving_the_watch(Role::Follower)
        }),
        FaultTest::new("partitioned_leader_serving_the_watch", &[Need::EtcdCluster, Need::Partitions], || {
            partitioned_member_serving_the_watch(Role::Leader)
        }),
        FaultTest::new("quorum_lost_longer_than_ttl", &[Need::EtcdCluster], quorum_lost_longer_than_ttl),
        FaultTest::new(
            "silent_watch_member_health",
            &[Need::EtcdCluster, Need::Partitions],
            silent_watch_member_health,
        ),
        FaultTest::new(
            "restart_during_outage_serves_snapshot",
            &[Need::EtcdCluster],
            restart_during_outage_serves_snapshot,
        ),
    ])
}

/// The library's default client settings over `endpoints`.
async fn store(endpoints: Vec<String>) -> anyhow::Result<EtcdStore> {
    Ok(EtcdStore::connect(EtcdConfig::new(endpoints)).await?)
}

/// Instances whose current record is not in etcd (read through `client`)
/// or not in `discovery`, or whose keepalive ended.
async fn lost(fleet: &Fleet, client: &mut etcd_client::Client, discovery: &dyn Discovery) -> anyhow::Result<usize> {
    let prefix = format!("{}/{}/fleet/", fleet.namespace, fleet.env);
    // A member that just rejoined may answer "request timed out" or
    // "leader changed" for a moment: ask again.
    let started = Instant::now();
    let listing = loop {
        match client.get(prefix.clone(), Some(etcd_client::GetOptions::new().with_prefix())).await {
            Ok(listing) => break listing,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                tracing::debug!(%e, "reading the fleet's records failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let stored: BTreeSet<i64> =
        listing.kvs().iter().filter_map(|kv| kv.key_str().ok()?.rsplit('/').next()?.parse().ok()).collect();
    let seen: BTreeSet<i64> = leases_of(discovery, &Fleet::method()).into_iter().collect();
    Ok(fleet
        .instances
        .iter()
        .filter(|i| {
            let lease = i.lease();
            i.keepalive.is_finished() || !stored.contains(&lease) || !seen.contains(&lease)
        })
        .count())
}

/// A fleet of `count` instances over `clients` stores of the library's defaults.
async fn fleet(cluster: &EtcdCluster, count: usize, clients: usize) -> anyhow::Result<Arc<Fleet>> {
    let mut stores = Vec::new();
    for _ in 0..clients {
        stores.push(store(cluster.endpoints()).await?);
    }
    let stores: Vec<&dyn Store> = stores.iter().map(|s| s as &dyn Store).collect();
    Ok(Arc::new(Fleet::start(&stores, count, &unique("ns"), &unique("env")).await?))
}

/// Registers the probe through `endpoints` (retrying while the cluster fails over).
async fn probe(endpoints: Vec<String>, fleet: &Fleet) -> anyhow::Result<Probe> {
    let store = store(endpoints).await?;
    Probe::register(&store, &fleet.namespace, &fleet.env, Duration::from_secs(30)).await
}

/// A discoverer of the fleet's env over its own store.
async fn discoverer(cluster: &EtcdCluster, fleet: &Fleet) -> anyhow::Result<Arc<Discoverer>> {
    let store = store(cluster.endpoints()).await?;
    let discoverer = Discoverer::new(&store, &fleet.env, conf(&fleet.namespace))?;
    discoverer.watcher().await?;
    Ok(Arc::new(discoverer))
}

/// Index of the one member with an open watch stream (the discoverer's).
async fn watch_member(cluster: &EtcdCluster) -> anyhow::Result<usize> {
    let start = Instant::now();
    loop {
        let mut serving = Vec::new();
        for i in 0..cluster.len() {
            if cluster.watch_streams(i).await.unwrap_or(0) > 0 {
                serving.push(i);
            }
        }
        if let [one] = serving[..] {
            return Ok(one);
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "watch streams on members {serving:?}, not one");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Scenario 1: the leader, which also serves the discoverer's watch, is
/// killed while 50 instances heartbeat.
async fn leader_killed_while_fifty_heartbeat() -> anyhow::Result<()> {
    let mut cluster = EtcdCluster::start().await?;
    let fleet = fleet(&cluster, 50, 5).await?;
    let disc = discoverer(&cluster, &fleet).await?;
    let m = Fleet::method();
    eventually(Duration::from_secs(10), "all 50 visible", || fleet.exactly_in(&*disc)).await?;
    let watching = watch_member(&cluster).await?;
    cluster.move_leader(watching).await?;
    let lookups = LookupLoop::start(disc.clone(), &m, fleet.judge());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = lookups.take();
    anyhow::ensure!(before.bad() == 0, "lookups wrong before the fault: {before:?}");

    let killed = cluster.kill_leader().await?;
    anyhow::ensure!(killed == watching, "killed m{killed}, the watch is on m{watching}");
    let fault_at = Instant::now();
    let survivors: Vec<String> = (0..cluster.len()).filter(|&i| i != killed).map(|i| cluster.endpoint(i)).collect();
    let probe = probe(survivors, &fleet).await?;
    let written = fault_at.elapsed();
    let seen = eventually(Duration::from_secs(30), "a registration made after the kill is discovered", || {
        probe.visible(&*disc)
    })
    .await?;
    let steady = fault_at.elapsed();
    let new_leader = cluster.wait_leader(Duration::from_secs(10)).await?;
    let election = fault_at.elapsed();
    tokio::time::sleep(OBSERVE_AFTER).await;
    let during = lookups.stop().await;
    let mut watchers = Vec::new();
    for i in (0..cluster.len()).filter(|&i| i != killed) {
        watchers.push((i, cluster.watch_streams(i).await.unwrap_or(0)));
    }
    let survivors: Vec<String> = (0..cluster.len()).filter(|&i| i != killed).map(|i| cluster.endpoint(i)).collect();
    let mut client = etcd_client::Client::connect(survivors, None).await?;
    let lost = lost(&fleet, &mut client, &*disc).await?;
    let reregistered = fleet.reregistered();
    let correct_after = during.last_bad.map_or(Duration::ZERO, |t| t.saturating_duration_since(fault_at));
    print_figures(
        "etcd.leader_killed",
        &[
            ("instances", "50".into()),
            ("new_leader_known_after", secs(election)),
            ("probe_written_after", secs(written)),
            ("steady_after", secs(steady)),
            ("probe_seen_after_write", secs(seen)),
            ("correct_after", secs(correct_after)),
            ("lookups_answered", during.answered.to_string()),
            ("lookups_failed", during.failed.to_string()),
            ("lookups_wrong", during.wrong.to_string()),
            ("fewest_nodes", during.fewest.to_string()),
            ("keepalive_retries", fleet.retries().to_string()),
            ("reregistered", reregistered.to_string()),
            ("lost", lost.to_string()),
        ],
    );
    anyhow::ensure!(new_leader != killed, "no new leader");
    anyhow::ensure!(
        watchers.iter().any(|&(_, n)| n > 0),
        "the discoverer's watch is on no surviving member: {watchers:?}"
    );
    anyhow::ensure!(during.failed == 0 && during.wrong == 0, "an instance left discovery during the fault: {during:?}");
    anyhow::ensure!(lost == 0, "{lost} registrations lost");
    anyhow::ensure!(reregistered == 0, "{reregistered} instances lost their lease and registered again");
    probe.stop().await;
    if let Ok(fleet) = Arc::try_unwrap(fleet) {
        fleet.stop().await;
    }
    Ok(())
}

/// What the partitioned member is.
#[derive(Clone, Copy, Debug)]
enum Role {
    Follower,
    Leader,
}

/// Scenario 2: the member serving the discoverer's watch (a follower, or
/// the leader) is silently partitioned from clients and peers.
async fn partitioned_member_serving_the_watch(role: Role) -> anyhow::Result<()> {
    let mut cluster = EtcdCluster::start().await?;
    let fleet = fleet(&cluster, 10, 5).await?;
    let disc = discoverer(&cluster, &fleet).await?;
    let m = Fleet::method();
    eventually(Duration::from_secs(10), "all 10 visible", || fleet.exactly_in(&*disc)).await?;
    let watching = watch_member(&cluster).await?;
    match role {
        Role::Leader => cluster.move_leader(watching).await?,
        Role::Follower => {
            if cluster.wait_leader(Duration::from_secs(10)).await? == watching {
                cluster.move_leader((watching + 1) % cluster.len()).await?;
            }
        }
    }
    let lookups = LookupLoop::start(disc.clone(), &m, fleet.judge());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = lookups.take();
    anyhow::ensure!(before.bad() == 0, "lookups wrong before the fault: {before:?}");

    let partition = cluster.partition(watching, PARTITION_BOUND)?;
    let fault_at = Instant::now();
    let healthy: Vec<String> = (0..cluster.len()).filter(|&i| i != watching).map(|i| cluster.endpoint(i)).collect();
    let probe = probe(healthy, &fleet).await?;
    let written = fault_at.elapsed();
    let seen =
        eventually(PARTITION_BOUND - Duration::from_secs(5), "the probe is discovered during the partition", || {
            probe.visible(&*disc)
        })
        .await;
    let failover = fault_at.elapsed();
    tokio::time::sleep(OBSERVE_AFTER).await;
    let during = lookups.take();
    let lasted = partition.heal()?;
    tokio::time::sleep(OBSERVE_AFTER).await;
    cluster.wait_healthy(Duration::from_secs(30)).await?;
    let after = lookups.stop().await;
    let mut client = etcd_client::Client::connect(cluster.endpoints(), None).await?;
    let lost = lost(&fleet, &mut client, &*disc).await?;
    let reregistered = fleet.reregistered();
    let scenario = match role {
        Role::Follower => "etcd.follower_partitioned",
        Role::Leader => "etcd.leader_partitioned",
    };
    print_figures(
        scenario,
        &[
            ("instances", "10".into()),
            ("partitioned", format!("m{watching}")),
            ("probe_written_after", secs(written)),
            ("watch_failover_after", if seen.is_ok() { secs(failover) } else { "never".into() }),
            ("bound", secs(WATCH_FAILOVER_BOUND)),
            ("partition_lasted", secs(lasted)),
            ("lookups_answered", during.answered.to_string()),
            ("lookups_failed", during.failed.to_string()),
            ("lookups_wrong", during.wrong.to_string()),
            ("lookups_wrong_after_heal", after.bad().to_string()),
            ("keepalive_retries", fleet.retries().to_string()),
            ("reregistered", reregistered.to_string()),
            ("lost", lost.to_string()),
        ],
    );
    seen.map_err(|e| anyhow::anyhow!("the watch hung silently: {e}"))?;
    anyhow::ensure!(
        failover <= WATCH_FAILOVER_BOUND,
        "the discoverer saw a change {failover:?} after the partition, bound {WATCH_FAILOVER_BOUND:?}"
    );
    anyhow::ensure!(during.failed == 0, "discovery failed lookups during the partition: {during:?}");
    anyhow::ensure!(reregistered == 0, "{reregistered} instances lost their lease and registered again");
    anyhow::ensure!(during.wrong == 0, "discovery showed a wrong set during the partition: {during:?}");
    anyhow::ensure!(lost == 0, "{lost} registrations lost");
    probe.stop().await;
    if let Ok(fleet) = Arc::try_unwrap(fleet) {
        fleet.stop().await;
    }
    Ok(())
}

/// Scenario 3: two of three members down for longer than the TTL.
async fn quorum_lost_longer_than_ttl() -> anyhow::Result<()> {
    let mut cluster = EtcdCluster::start().await?;
    let fleet = fleet(&cluster, 10, 5).await?;
    let disc = discoverer(&cluster, &fleet).await?;
    let m = Fleet::method();
    eventually(Duration::from_secs(10), "all 10 visible", || fleet.exactly_in(&*disc)).await?;
    let lookups = LookupLoop::start(disc.clone(), &m, fleet.judge());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = lookups.take();
    anyhow::ensure!(before.bad() == 0, "lookups wrong before the fault: {before:?}");

    let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
    let other = (leader + 1) % cluster.len();
    cluster.kill(leader);
    cluster.kill(other);
    let down_at = Instant::now();
    tokio::time::sleep(QUORUM_DOWN_FOR).await;
    let during = lookups.take();
    let retried = fleet.retried();

    cluster.revive(leader)?;
    cluster.revive(other)?;
    cluster.wait_healthy(Duration::from_secs(30)).await?;
    let back_at = Instant::now();
    let restart_took = back_at - down_at - QUORUM_DOWN_FOR;
    let all_back = eventually(TTL * 3, "every keepalive recovered", || {
        fleet.instances.iter().all(|i| i.hooks.recovered_at().is_some_and(|t| t >= down_at))
    })
    .await;
    let slowest = fleet
        .instances
        .iter()
        .filter_map(|i| i.hooks.recovered_at())
        .map(|t| t.saturating_duration_since(back_at))
        .max()
        .unwrap_or_default();
    let seen = eventually(TTL * 3, "discovery shows every current registration", || fleet.exactly_in(&*disc)).await;
    let discovery_correct = back_at.elapsed();
    let probe = probe(cluster.endpoints(), &fleet).await?;
    let written = back_at.elapsed();
    let resumed =
        eventually(Duration::from_secs(20), "a registration made after the quorum's return is discovered", || {
            probe.visible(&*disc)
        })
        .await;
    let watch_resumed = back_at.elapsed();
    tokio::time::sleep(OBSERVE_AFTER).await;
    let after = lookups.stop().await;
    let mut client = etcd_client::Client::connect(cluster.endpoints(), None).await?;
    let lost = lost(&fleet, &mut client, &*disc).await?;
    let gave_up = fleet.gave_up();
    print_figures(
        "etcd.quorum_lost",
        &[
            ("instances", "10".into()),
            ("down_for", secs(QUORUM_DOWN_FOR)),
            ("quorum_back_after_restart", secs(restart_took)),
            ("keepalives_back_after", secs(slowest)),
            ("discovery_correct_after", secs(discovery_correct)),
            ("probe_written_after", secs(written)),
            ("watch_resumed_after", if resumed.is_ok() { secs(watch_resumed) } else { "never".into() }),
            ("lookups_answered", during.answered.to_string()),
            ("lookups_failed", during.failed.to_string()),
            ("lookups_wrong", during.wrong.to_string()),
            ("lookups_bad_after", after.bad().to_string()),
            ("instances_retried", retried.to_string()),
            ("reregistered", fleet.reregistered().to_string()),
            ("gave_up", gave_up.to_string()),
            ("lost", lost.to_string()),
        ],
    );
    anyhow::ensure!(during.failed == 0, "discovery emptied during the outage: {during:?}");
    anyhow::ensure!(during.wrong == 0, "discovery changed its view during the outage: {during:?}");
    anyhow::ensure!(
        retried == fleet.instances.len(),
        "retry hooks fired for {retried} of {} instances",
        fleet.instances.len()
    );
    all_back?;
    anyhow::ensure!(slowest <= TTL, "a registration came back {slowest:?} after the quorum, more than one TTL");
    seen?;
    resumed?;
    anyhow::ensure!(lost == 0, "{lost} registrations lost");
    probe.stop().await;
    if let Ok(fleet) = Arc::try_unwrap(fleet) {
        fleet.stop().await;
    }
    Ok(())
}

/// Item 6: the only member a discoverer talks to goes silent.
async fn silent_watch_member_health() -> anyhow::Result<()> {
    let cluster = EtcdCluster::start().await?;
    let fleet = fleet(&cluster, 5, 1).await?;
    let only = 0;
    let reading = store(vec![cluster.endpoint(only)]).await?;
    let disc = Arc::new(Discoverer::new(&reading, &fleet.env, conf(&fleet.namespace))?);
    disc.watcher().await?;
    eventually(Duration::from_secs(10), "the fleet is discovered", || fleet.exactly_in(&*disc)).await?;
    eventually(Duration::from_secs(5), "health is current", || disc.health().is_healthy()).await?;
    let before = disc.health();

    let partition = cluster.partition(only, PARTITION_BOUND)?;
    let cut_at = Instant::now();
    let healthy: Vec<String> = (0..cluster.len()).filter(|&i| i != only).map(|i| cluster.endpoint(i)).collect();
    let probe = probe(healthy, &fleet).await?;
    let detected = eventually(STALE_BOUND + Duration::from_secs(10), "health reports the source stale", || {
        disc.health().is_stale()
    })
    .await
    .map(|_| cut_at.elapsed());
    let during = disc.health();
    let view_kept = fleet.leases().iter().all(|l| leases_of(&*disc, &Fleet::method()).contains(l));
    tokio::time::sleep(SILENT_FOR.saturating_sub(cut_at.elapsed())).await;
    partition.heal()?;
    let healed_at = Instant::now();
    let healthy_again =
        eventually(HEALTHY_AFTER_HEAL_BOUND + Duration::from_secs(20), "health is current after the heal", || {
            disc.health().is_healthy()
        })
        .await
        .map(|_| healed_at.elapsed());
    let correct =
        eventually(HEALTHY_AFTER_HEAL_BOUND + Duration::from_secs(20), "the change made during the cut", || {
            probe.visible(&*disc) && fleet.exactly_in(&*disc)
        })
        .await
        .map(|_| healed_at.elapsed());
    let after = disc.health();
    let source = |h: &registry_core::Health| h.sources.first().cloned().unwrap_or_default();
    print_figures(
        "etcd.silent_watch_member_health",
        &[
            ("stale_detected_after", detected.as_ref().map_or("never".into(), |d| secs(*d))),
            ("stale_bound", secs(STALE_BOUND)),
            ("healthy_after_heal", healthy_again.as_ref().map_or("never".into(), |d| secs(*d))),
            ("correct_after_heal", correct.as_ref().map_or("never".into(), |d| secs(*d))),
            ("resyncs", source(&after).resyncs.to_string()),
            ("stream_errors", source(&after).stream_errors.to_string()),
        ],
    );
    anyhow::ensure!(!before.is_stale(), "stale before the fault: {before:?}");
    let detected = detected?;
    anyhow::ensure!(
        detected <= STALE_BOUND + TIMER_SLACK,
        "stale only {detected:?} after the cut (bound {STALE_BOUND:?} + {TIMER_SLACK:?}): {during:?}"
    );
    anyhow::ensure!(view_kept, "the last view was not kept during the cut");
    let healthy_again = healthy_again?;
    anyhow::ensure!(healthy_again <= HEALTHY_AFTER_HEAL_BOUND, "healthy {healthy_again:?} after the heal");
    correct?;
    anyhow::ensure!(source(&after).resyncs >= 1, "no resync counted: {after:?}");
    probe.stop().await;
    disc.unwatch();
    if let Ok(fleet) = Arc::try_unwrap(fleet) {
        fleet.stop().await;
    }
    Ok(())
}

/// Item 8: a gateway restarts while every member is down.
async fn restart_during_outage_serves_snapshot() -> anyhow::Result<()> {
    let mut cluster = EtcdCluster::start().await?;
    let fleet = fleet(&cluster, 3, 1).await?;
    let dir = cluster.dir().join("gateway");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("discovery.json");
    let corrupted = dir.join("corrupted.json");
    std::fs::write(&corrupted, b"{\"format\":\"registry-discovery-snapshot\",\"version\":1,\"records\":[{\"ke")?;
    let with_snapshot =
        |path: &std::path::Path| conf(&fleet.namespace).with_discovery(DiscoveryOptions::default().with_snapshot(path));
    {
        let s = store(cluster.endpoints()).await?;
        let first = Discoverer::new(&s, &fleet.env, with_snapshot(&path))?;
        first.watcher().await?;
        eventually(Duration::from_secs(10), "the fleet is discovered", || fleet.exactly_in(&first)).await?;
        eventually(Duration::from_secs(5), "the snapshot holds the fleet", || {
            std::fs::read_to_string(&path).is_ok_and(|t| fleet.leases().iter().all(|l| t.contains(&l.to_string())))
        })
        .await?;
        first.unwatch();
    }
    let saved = fleet.leases();
    for i in 0..cluster.len() {
        cluster.stop(i);
    }
    let down_at = Instant::now();
    // The gateway restarts: a new store and discoverer, the cluster unreachable.
    let s = store(cluster.endpoints()).await?;
    let restarted = Discoverer::new(&s, &fleet.env, with_snapshot(&path))?;
    let ready = tokio::time::timeout(Duration::from_secs(2), restarted.watcher()).await;
    let served: BTreeSet<i64> = leases_of(&restarted, &Fleet::method()).into_iter().collect();
    let during = restarted.health().sources.first().cloned().unwrap_or_default();
    let bad = Discoverer::new(&s, &fleet.env, with_snapshot(&corrupted))?;
    let bad_health = bad.health().sources.first().cloned().unwrap_or_default();
    let bad_started = tokio::time::timeout(Duration::from_secs(1), bad.watcher()).await;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(down_at.elapsed())).await;
    let still = restarted.health().sources.first().cloned().unwrap_or_default();
    for i in 0..cluster.len() {
        cluster.revive(i)?;
    }
    let back_at = Instant::now();
    let caught_up = eventually(Duration::from_secs(30), "the restarted discoverer follows the cluster", || {
        let h = restarted.health();
        h.is_healthy() && !h.sources[0].from_snapshot && fleet.exactly_in(&restarted)
    })
    .await
    .map(|_| back_at.elapsed());
    let bad_live =
        eventually(Duration::from_secs(30), "the discoverer with the corrupted file follows the cluster", || {
            fleet.exactly_in(&bad)
        })
        .await;
    print_figures(
        "etcd.restart_during_outage_serves_snapshot",
        &[
            ("served_from_snapshot", served.len().to_string()),
            ("caught_up_after_cluster_back", caught_up.as_ref().map_or("never".into(), |d| secs(*d))),
        ],
    );
    anyhow::ensure!(matches!(ready, Ok(Ok(()))), "watcher() did not return ready from the snapshot: {ready:?}");
    anyhow::ensure!(served == saved, "served {served:?} from the snapshot, saved {saved:?}");
    anyhow::ensure!(during.from_snapshot && during.stale, "not marked stale from the snapshot: {during:?}");
    anyhow::ensure!(still.from_snapshot && still.stale && !still.stream_healthy, "{still:?}");
    anyhow::ensure!(
        bad_health.snapshot_error.as_deref().is_some_and(|e| e.contains("corrupted")) && !bad_health.ready,
        "corrupted file not reported: {bad_health:?}"
    );
    anyhow::ensure!(!matches!(bad_started, Ok(Ok(()))), "ready without a listing or a snapshot");
    caught_up?;
    bad_live?;
    restarted.unwatch();
    bad.unwatch();
    if let Ok(fleet) = Arc::try_unwrap(fleet) {
        fleet.stop().await;
    }
    Ok(())
}
