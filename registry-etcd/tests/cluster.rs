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

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance::fixtures::{TTL, conf, eventually, unique};
use registry_core::store::Store;
use registry_core::{Discoverer, Discovery};
use registry_etcd::{EtcdConfig, EtcdStore};
use registry_testenv::etcd_cluster::EtcdCluster;
use registry_testenv::faults::{self, FaultTest, Fleet, LookupLoop, Need, Probe, leases_of, print_figures, secs};

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
/// Longest a partition may last before its watchdog heals it.
const PARTITION_BOUND: Duration = Duration::from_secs(60);
/// How long a scenario watches after the fault for late disappearances
/// (a lease that expired during the fault shows as a DELETE up to a TTL later).
const OBSERVE_AFTER: Duration = Duration::from_secs(4);

fn main() -> ExitCode {
    faults::run(vec![
        FaultTest {
            name: "leader_killed_while_fifty_heartbeat",
            needs: &[Need::EtcdCluster],
            run: || Box::pin(leader_killed_while_fifty_heartbeat()),
        },
        FaultTest {
            name: "partitioned_follower_serving_the_watch",
            needs: &[Need::EtcdCluster, Need::Partitions],
            run: || Box::pin(partitioned_member_serving_the_watch(Role::Follower)),
        },
        FaultTest {
            name: "partitioned_leader_serving_the_watch",
            needs: &[Need::EtcdCluster, Need::Partitions],
            run: || Box::pin(partitioned_member_serving_the_watch(Role::Leader)),
        },
        FaultTest {
            name: "quorum_lost_longer_than_ttl",
            needs: &[Need::EtcdCluster],
            run: || Box::pin(quorum_lost_longer_than_ttl()),
        },
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
