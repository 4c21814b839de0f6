//! Active health checking (grpc.health.v1, gRFC A17) on real tonic servers:
//! a node whose server says NOT_SERVING while its registration stays live
//! gets no calls (only the probes), and gets its share again once it says
//! SERVING.

mod common;

use std::time::Duration;

use common::{CountingServer, check, register};
use registry::ServiceConf;
use registry::balance::{ChannelBuilder, HealthCheck, Selector, WeightedChannel};
use tonic_health::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const PROBED: &str = "probe.Target";
const INTERVAL: Duration = Duration::from_millis(100);

/// Calls `n` times; per server, the calls it answered meanwhile and an
/// upper bound of the probes it answered in that time.
async fn burst(channel: &WeightedChannel, servers: &[CountingServer], n: u32) -> anyhow::Result<(Vec<u64>, u64)> {
    let before: Vec<u64> = servers.iter().map(CountingServer::served).collect();
    let started = tokio::time::Instant::now();
    let mut client = HealthClient::new(channel.clone());
    for _ in 0..n {
        check(&mut client).await?;
    }
    let probes = u64::try_from(started.elapsed().as_millis() / INTERVAL.as_millis())? + 2;
    Ok((servers.iter().zip(before).map(|(s, b)| s.served() - b).collect(), probes))
}

#[tokio::test]
async fn a_not_serving_node_gets_no_calls_and_returns_when_serving() -> anyhow::Result<()> {
    let registry = registry::connect("memory://health-check").await?;
    let servers = [CountingServer::start().await?, CountingServer::start().await?];
    let mut registrars = Vec::new();
    for server in &servers {
        server.health.set_service_status(PROBED, ServingStatus::Serving).await;
        registrars.push(register(&registry, "checked", server.addr, 100).await?);
    }
    let discovery = registry.discoverer("dev", ServiceConf::default())?;
    discovery.watcher().await?;
    let checks =
        HealthCheck::default().with_service(PROBED).with_interval(INTERVAL).with_timeout(Duration::from_secs(1));
    let channel = ChannelBuilder::new(discovery, Selector::app("checked")).health_check(Some(checks)).build();

    servers[0].health.set_service_status(PROBED, ServingStatus::NotServing).await;
    tokio::time::sleep(INTERVAL * 3).await;
    let (served, probes) = burst(&channel, &servers, 200).await?;
    println!("first server NOT_SERVING: {served:?} (probes at most {probes})");
    assert!(served[0] <= probes, "a NOT_SERVING node gets only probes: {served:?}, probes ≤ {probes}");
    assert!(served[1] >= 200, "the serving node takes every call: {served:?}");

    servers[0].health.set_service_status(PROBED, ServingStatus::Serving).await;
    tokio::time::sleep(INTERVAL * 3).await;
    let (served, probes) = burst(&channel, &servers, 200).await?;
    println!("both SERVING: {served:?}");
    assert!(served[0] >= 100 && served[0] <= 100 + probes, "it takes its share again: {served:?}");
    for registrar in registrars {
        registrar.uninstall().await?;
    }
    Ok(())
}
