//! Weighted balancing across two real tonic servers: a 3:1 weight split
//! sends 75 % ± 5 % of 4,000 calls to the heavier server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use registry::balance::{self, Selector};
use registry::{GrpcServices, Meta, Network, ServiceConf};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const CHECK: &str = "/grpc.health.v1.Health/Check";
const CALLS: u64 = 4_000;

/// A health server on a free loopback port that counts the calls it answers.
async fn start_server() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let served = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&served);
    let counted = tonic::service::interceptor::InterceptedService::new(health, move |req| {
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(req)
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(counted)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((addr, served))
}

#[tokio::test]
async fn three_to_one_weights_split_calls_three_to_one() -> anyhow::Result<()> {
    let registry = registry::connect("memory://weighted-balance").await?;
    let services = GrpcServices::new().service("grpc.health.v1.Health", ["Check"])?;
    let mut servers = Vec::new();
    for weight in [300, 100] {
        let (addr, served) = start_server().await?;
        let conf =
            ServiceConf::default().with_weight(weight).with_network(Network { internal: addr, ..Default::default() });
        let registrar = registry.registrar(Meta::new("dev", format!("health-{weight}"), "v1"), conf)?;
        registrar.install(services.clone().into_node()).await?;
        servers.push((registrar, served));
    }

    let discovery = registry.discoverer("dev", ServiceConf::default())?;
    discovery.watcher().await?;
    let (channel, _feeder) = balance::channel(Arc::clone(&discovery), Selector::Method(CHECK.into()), "http");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while channel.weights().len() < 2 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "balancer did not see both nodes: {channel:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut weights: Vec<i64> = channel.weights().into_values().collect();
    weights.sort();
    assert_eq!(weights, [100, 300], "weights come from the discovered nodes");

    let mut client = HealthClient::new(channel);
    for _ in 0..CALLS {
        client.check(HealthCheckRequest { service: String::new() }).await?;
    }
    let heavy = servers[0].1.load(Ordering::Relaxed);
    let light = servers[1].1.load(Ordering::Relaxed);
    println!(
        "weights 300:100 over {CALLS} calls: heavy={heavy} light={light} ({:.1} %)",
        heavy as f64 * 100.0 / CALLS as f64
    );
    assert_eq!(heavy + light, CALLS, "every call answered by one of the two");
    let share = heavy as f64 / CALLS as f64;
    assert!(
        (0.70..=0.80).contains(&share),
        "heavy server got {:.1} % of the calls, expected 75 % ± 5 %",
        share * 100.0
    );
    for (registrar, _) in &servers {
        registrar.uninstall().await?;
    }
    Ok(())
}
