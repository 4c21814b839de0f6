//! Weighted balancing across two real tonic servers: a 3:1 weight split
//! sends exactly 3 of every 4 calls to the heavier server.

mod common;

use std::sync::Arc;

use common::{CHECK, CountingServer, check, register};
use registry::ServiceConf;
use registry::balance::{self, Selector};
use tonic_health::pb::health_client::HealthClient;

const CALLS: u64 = 4_000;

#[tokio::test]
async fn three_to_one_weights_split_calls_three_to_one() -> anyhow::Result<()> {
    let registry = registry::connect("memory://weighted-balance").await?;
    let heavy = CountingServer::start().await?;
    let light = CountingServer::start().await?;
    let registrars = [
        register(&registry, "health-300", heavy.addr, 300).await?,
        register(&registry, "health-100", light.addr, 100).await?,
    ];

    let discovery = registry.discoverer("dev", ServiceConf::default())?;
    discovery.watcher().await?;
    let channel = balance::channel(Arc::clone(&discovery), Selector::method(CHECK), "http");
    let mut weights: Vec<i64> = channel.weights().into_values().collect();
    weights.sort();
    assert_eq!(weights, [100, 300], "weights come from the discovered nodes, present from the start");

    let mut client = HealthClient::new(channel);
    for _ in 0..CALLS {
        check(&mut client).await?;
    }
    let (heavy, light) = (heavy.served(), light.served());
    println!(
        "weights 300:100 over {CALLS} calls: heavy={heavy} light={light} ({:.1} %)",
        heavy as f64 * 100.0 / CALLS as f64
    );
    assert_eq!((heavy, light), (3_000, 1_000), "smooth weighted round robin is exact over the window");
    for registrar in &registrars {
        registrar.uninstall().await?;
    }
    Ok(())
}
