//! Metrics of a service in one line: the registry's counters, gauges and
//! histograms (`registry::telemetry`, listed with their alerts in
//! `docs/operations.md`) served for Prometheus at `/metrics`.
//!
//! Run: `cargo run -p grpc-registry --example metrics` (serves a free loopback
//! port while it runs; `METRICS_ADDR=127.0.0.1:9464` for a fixed one). It registers an
//! instance that heartbeats, discovers it, drains it, scrapes its own
//! endpoint and prints the registry's lines, then exits.

use std::time::Duration;

use registry::{GrpcServices, Meta, ServiceConf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = match std::env::var("METRICS_ADDR") {
        Ok(addr) => addr.parse()?,
        // A free port on loopback.
        Err(_) => std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?,
    };

    // The one line: a Prometheus endpoint for everything the library emits.
    metrics_exporter_prometheus::PrometheusBuilder::new().with_http_listener(addr).install()?;
    // Optional: HELP lines and units.
    registry::telemetry::describe();

    let registry = registry::connect("memory://").await?;
    let conf = ServiceConf::default()
        .with_namespace("shop")
        .with_ttl_floor(Duration::from_secs(2))
        .with_ttl(Duration::from_secs(2));
    let registrar = registry.registrar(Meta::new("prod", "orders", "v1"), conf.clone())?;
    registrar.install(GrpcServices::new().service("shop.v1.Orders", ["Get"])?.into_node()).await?;
    let keepalive = tokio::spawn({
        let r = registrar.clone();
        async move { r.sustain_lease().await }
    });
    let discovery = registry.discoverer("prod", conf)?;
    discovery.watcher().await?;
    registrar.drain().await?;
    tokio::time::sleep(Duration::from_millis(2500)).await; // a couple of heartbeats

    let body = scrape(&addr.to_string()).await?;
    println!("GET http://{addr}/metrics (registry lines):");
    for line in body.lines().filter(|l| l.starts_with("registry_")) {
        println!("  {line}");
    }
    for name in ["registry_registration_up", "registry_heartbeats_total", "registry_cache_nodes"] {
        anyhow::ensure!(body.contains(name), "{name} missing from the scrape");
    }

    registrar.uninstall().await?;
    keepalive.await??;
    Ok(())
}

/// GET `/metrics` over plain HTTP/1.0.
async fn scrape(addr: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}
