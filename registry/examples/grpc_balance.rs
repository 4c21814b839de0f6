//! Two real tonic servers registered on the embedded backend; a client
//! balances across them through discovery, and stops sending to one after it
//! uninstalls.
//!
//! Run: `cargo run -p grpc-registry --features tonic --example grpc_balance`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use registry::balance::{self, Selector};
use registry::{GrpcServices, Meta, Network, ServiceConf};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const CHECK: &str = "/grpc.health.v1.Health/Check";

/// Starts a health server on a free port; counts the requests it answers.
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

async fn call(client: &mut HealthClient<balance::WeightedChannel>, n: usize) -> anyhow::Result<()> {
    for _ in 0..n {
        client.check(HealthCheckRequest { service: String::new() }).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let registry = registry::connect("memory://grpc-balance").await?;
    let services = GrpcServices::new().service("grpc.health.v1.Health", ["Check", "Watch"])?;

    let mut servers = Vec::new();
    for name in ["a", "b"] {
        let (addr, served) = start_server().await?;
        let conf = ServiceConf::default().with_network(Network { internal: addr.clone(), ..Default::default() });
        let registrar = registry.registrar(Meta::new("dev", "health-demo", "v1"), conf)?;
        registrar.install(services.clone().into_node()).await?;
        println!("server {name} listening on {addr}, registered");
        servers.push((name, registrar, served));
    }

    let discovery = registry.discoverer("dev", ServiceConf::default())?;
    discovery.watcher().await?;
    let channel = balance::channel(Arc::clone(&discovery), Selector::method(CHECK), "http");
    // The channel starts from discovery's current view: no wait before the first call.
    let mut client = HealthClient::new(channel);

    call(&mut client, 40).await?;
    let counts = |servers: &[(&str, _, Arc<AtomicU64>)]| -> Vec<u64> {
        servers.iter().map(|(_, _, s)| s.load(Ordering::Relaxed)).collect()
    };
    let before = counts(&servers);
    println!("40 calls balanced across both: a={} b={}", before[0], before[1]);
    anyhow::ensure!(before.iter().all(|&n| n > 0), "both servers should have answered");

    servers[0].1.uninstall().await?;
    println!("server a uninstalled");
    tokio::time::sleep(Duration::from_millis(300)).await;
    call(&mut client, 40).await?;
    let after = counts(&servers);
    println!("40 more calls: a={} (+{}) b={} (+{})", after[0], after[0] - before[0], after[1], after[1] - before[1]);
    anyhow::ensure!(after[0] == before[0], "server a still received calls after uninstalling");
    anyhow::ensure!(after[1] >= before[1] + 40, "server b should have answered every new call");
    println!("ok: discovery steered traffic away from the uninstalled server");
    servers[1].1.uninstall().await?;
    Ok(())
}
