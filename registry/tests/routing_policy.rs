//! Routing policies on real tonic servers: a version subset, a 95/5 canary
//! split exact over 4,000 calls, zone preference that keeps calls in the
//! caller's zone while it is healthy and spills over when it is not, and
//! slow start's ramp (the measured curve is printed).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{CountingServer, check, register_as};
use registry::balance::{
    CanarySplit, ChannelBuilder, OutlierDetection, Selector, SlowStart, VersionSubset, WeightedChannel, ZonePreference,
};
use registry::{Discovery, Meta, Network, Register, ServiceConf};
use tonic_health::pb::health_client::HealthClient;

/// One running server and its registration.
struct Node {
    server: CountingServer,
    registrar: Arc<dyn Register>,
}

/// A server of `app` at `version` in `zone`, registered.
async fn node(registry: &registry::Registry, app: &str, version: &str, zone: &str) -> anyhow::Result<Node> {
    let server = CountingServer::start().await?;
    let network = Network { internal: server.addr.to_string(), sn: zone.into(), ..Default::default() };
    let registrar = register_as(registry, Meta::new("dev", app, version), network, 100).await?;
    Ok(Node { server, registrar })
}

async fn discovery(registry: &registry::Registry) -> anyhow::Result<Arc<dyn Discovery>> {
    let discovery = registry.discoverer("dev", ServiceConf::default())?;
    discovery.watcher().await?;
    Ok(discovery)
}

async fn calls(channel: &WeightedChannel, n: u32) -> anyhow::Result<()> {
    let mut client = HealthClient::new(channel.clone());
    for _ in 0..n {
        check(&mut client).await?;
    }
    Ok(())
}

fn served(nodes: &[Node]) -> Vec<u64> {
    nodes.iter().map(|n| n.server.served()).collect()
}

async fn uninstall(nodes: &[Node]) -> anyhow::Result<()> {
    for node in nodes {
        node.registrar.uninstall().await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_version_subset_sends_only_to_that_version() -> anyhow::Result<()> {
    let registry = registry::connect("memory://policy-version").await?;
    let nodes = [
        node(&registry, "shop", "v1", "").await?,
        node(&registry, "shop", "v1", "").await?,
        node(&registry, "shop", "v2", "").await?,
    ];
    let discovery = discovery(&registry).await?;
    let v2 =
        ChannelBuilder::new(Arc::clone(&discovery), Selector::app("shop")).policy(VersionSubset::new("v2")).build();
    calls(&v2, 100).await?;
    assert_eq!(served(&nodes), [0, 0, 100]);

    let v3 = ChannelBuilder::new(discovery, Selector::app("shop"))
        .policy(VersionSubset::new("v3"))
        .wait_for_nodes(Duration::ZERO)
        .build();
    let status = check(&mut HealthClient::new(v3)).await.expect_err("no v3 node");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    uninstall(&nodes).await
}

#[tokio::test]
async fn a_95_5_canary_split_is_exact_over_4000_calls() -> anyhow::Result<()> {
    let registry = registry::connect("memory://policy-canary").await?;
    let nodes = [
        node(&registry, "shop", "v1", "").await?,
        node(&registry, "shop", "v1", "").await?,
        node(&registry, "shop", "v2", "").await?,
    ];
    let channel = ChannelBuilder::new(discovery(&registry).await?, Selector::app("shop"))
        .policy(CanarySplit::new("v2", 5))
        .build();
    calls(&channel, 4_000).await?;
    let counts = served(&nodes);
    println!("canary 5 % of 4000 calls: v1 {} + {}, v2 {}", counts[0], counts[1], counts[2]);
    assert!(counts[2].abs_diff(200) <= 40, "v2 got {} of 4000, expected 200 ± 40 (± 1 %)", counts[2]);
    assert_eq!(counts, [1_900, 1_900, 200], "smooth weighted round robin makes it exact");
    uninstall(&nodes).await
}

#[tokio::test]
async fn zone_preference_keeps_calls_in_zone_and_spills_over_when_the_zone_fails() -> anyhow::Result<()> {
    let registry = registry::connect("memory://policy-zone").await?;
    let mut nodes = vec![
        node(&registry, "shop", "v1", "zone-a").await?,
        node(&registry, "shop", "v1", "zone-a").await?,
        node(&registry, "shop", "v1", "zone-b").await?,
        node(&registry, "shop", "v1", "zone-b").await?,
    ];
    let outliers =
        OutlierDetection::default().with_consecutive_failures(2).with_base_ejection_time(Duration::from_secs(60));
    let channel = ChannelBuilder::new(discovery(&registry).await?, Selector::app("shop"))
        .outlier_detection(Some(outliers))
        .policy(ZonePreference::new("zone-a"))
        .build();
    calls(&channel, 200).await?;
    assert_eq!(served(&nodes), [100, 100, 0, 0], "a healthy zone keeps every call");

    // Zone a's servers stop; their registrations stay live. Once they are
    // ejected, fewer than 50 % of the zone is healthy: calls spill over.
    let mut stopped = Vec::new();
    for _ in 0..2 {
        let Node { server, registrar } = nodes.remove(0);
        server.stop().await;
        stopped.push(registrar);
    }
    let mut client = HealthClient::new(channel.clone());
    let mut failed = 0;
    while channel.ejected().len() < 2 {
        if check(&mut client).await.is_err() {
            failed += 1;
        }
        anyhow::ensure!(failed <= 10, "zone a was not ejected after {failed} failed calls");
    }
    calls(&channel, 200).await?;
    println!("zone a down: {failed} failed calls before both were ejected, then zone b served {:?}", served(&nodes));
    assert_eq!(served(&nodes).iter().sum::<u64>(), 200, "every call after the ejections went to zone b");
    for registrar in &stopped {
        registrar.uninstall().await?;
    }
    uninstall(&nodes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_new_nodes_share_over_its_window() -> anyhow::Result<()> {
    let registry = registry::connect("memory://policy-slow-start").await?;
    let mut nodes = vec![node(&registry, "shop", "v1", "").await?, node(&registry, "shop", "v1", "").await?];
    let window = Duration::from_secs(2);
    let channel = ChannelBuilder::new(discovery(&registry).await?, Selector::app("shop"))
        .policy(SlowStart::new(window).with_min_percent(10))
        .build();
    nodes.push(node(&registry, "shop", "v1", "").await?);
    let joined = tokio::time::Instant::now();
    let mut client = HealthClient::new(channel.clone());
    let bucket = Duration::from_millis(250);
    let mut curve = Vec::new();
    while joined.elapsed() < window + bucket * 2 {
        let (start, before) = (tokio::time::Instant::now(), served(&nodes));
        while start.elapsed() < bucket {
            check(&mut client).await?;
        }
        let delta: Vec<u64> = served(&nodes).iter().zip(&before).map(|(a, b)| a - b).collect();
        let total: u64 = delta.iter().sum();
        curve.push((joined.elapsed(), delta[2] as f64 / total.max(1) as f64));
    }
    let shown: Vec<String> =
        curve.iter().map(|(at, share)| format!("{:.2}s {:.0} %", at.as_secs_f64(), share * 100.0)).collect();
    println!("slow start over {window:?}, the new node's share per {bucket:?}: {}", shown.join(", "));
    let (first, last) = (curve[0].1, curve[curve.len() - 1].1);
    assert!(first < 0.15, "a new node starts small: {first:.3}");
    assert!((0.30..=0.36).contains(&last), "after the window it gets its full third: {last:.3}");
    let middle = curve.iter().find(|(at, _)| *at >= window / 2).map_or(0.0, |(_, share)| *share);
    assert!(middle > first && middle < last, "the share grows through the window: {shown:?}");
    uninstall(&nodes).await
}
