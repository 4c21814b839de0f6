//! `DiscoverNodes` feeds the ecosystem's balancers with real calls: tower's
//! `p2c::Balance` and tonic's `Channel::balance_channel` spread calls over
//! the discovered servers and stop calling one that uninstalls.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{CHECK, CountingServer, check, register};
use futures::StreamExt;
use registry::balance::{DiscoverNodes, Selector};
use registry::{Register, ServiceConf};
use tonic::transport::{Channel, Endpoint, channel};
use tonic_health::pb::health_client::HealthClient;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PendingRequests};

const CALLS: u64 = 300;

async fn fleet(registry: &registry::Registry) -> anyhow::Result<(Vec<CountingServer>, Vec<Arc<dyn Register>>)> {
    let (mut servers, mut registrars) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let server = CountingServer::start().await?;
        registrars.push(register(registry, "greeter", server.addr, 100).await?);
        servers.push(server);
    }
    Ok((servers, registrars))
}

fn counts(servers: &[CountingServer]) -> Vec<u64> {
    servers.iter().map(CountingServer::served).collect()
}

/// Calls until `leaving` gets no more: a removal reaches the balancer
/// through the stream, asynchronously.
async fn calls_after_removal<T>(client: &mut HealthClient<T>, servers: &[CountingServer]) -> anyhow::Result<Vec<u64>>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = counts(servers);
    for _ in 0..CALLS {
        check(client).await?;
    }
    Ok(counts(servers).iter().zip(&before).map(|(after, before)| after - before).collect())
}

#[tokio::test]
async fn tower_p2c_balances_real_calls_over_discovered_nodes() -> anyhow::Result<()> {
    let registry = registry::connect("memory://tower-p2c").await?;
    let (servers, registrars) = fleet(&registry).await?;
    let discovery = registry.discoverer("dev", ServiceConf::default())?;
    discovery.watcher().await?;

    let services = DiscoverNodes::new(&*discovery, Selector::method(CHECK)).map_service(|node| {
        let channel = Endpoint::from_shared(format!("http://{}", node.network.internal))?.connect_lazy();
        Ok::<_, tonic::transport::Error>(PendingRequests::new(channel, CompleteOnResponse::default()))
    });
    let balance = tower::balance::p2c::Balance::new(services);
    let mut client = HealthClient::new(tower::buffer::Buffer::new(balance, 64));
    for _ in 0..CALLS {
        check(&mut client).await?;
    }
    let spread = counts(&servers);
    println!("p2c over 3 discovered nodes, {CALLS} calls: {spread:?}");
    assert_eq!(spread.iter().sum::<u64>(), CALLS);
    assert!(spread.iter().all(|&n| n >= CALLS / 10), "every node gets a share: {spread:?}");

    registrars[0].uninstall().await?;
    let after = calls_after_removal(&mut client, &servers).await?;
    println!("after the first uninstalls: {after:?}");
    assert_eq!(after[0], 0, "the uninstalled node gets no calls: {after:?}");
    for registrar in &registrars[1..] {
        registrar.uninstall().await?;
    }
    Ok(())
}

#[tokio::test]
async fn tonic_balance_channel_fed_from_the_stream_balances_real_calls() -> anyhow::Result<()> {
    let registry = registry::connect("memory://tonic-balance-channel").await?;
    let (servers, registrars) = fleet(&registry).await?;
    let discovery = registry.discoverer("dev", ServiceConf::default())?;
    discovery.watcher().await?;

    let (balanced, changes) = Channel::balance_channel::<Arc<str>>(64);
    let mut nodes = DiscoverNodes::new(&*discovery, Selector::app("greeter"));
    let feeder = tokio::spawn(async move {
        while let Some(Ok(change)) = nodes.next().await {
            let change = match change {
                Change::Insert(key, node) => match Endpoint::from_shared(format!("http://{}", node.network.internal)) {
                    Ok(endpoint) => channel::Change::Insert(key, endpoint),
                    Err(_) => continue,
                },
                Change::Remove(key) => channel::Change::Remove(key),
            };
            if changes.send(change).await.is_err() {
                return;
            }
        }
    });
    let mut client = HealthClient::new(balanced);
    for _ in 0..CALLS {
        check(&mut client).await?;
    }
    let spread = counts(&servers);
    println!("tonic balance_channel over 3 discovered nodes, {CALLS} calls: {spread:?}");
    assert_eq!(spread.iter().sum::<u64>(), CALLS);
    assert!(spread.iter().all(|&n| n >= CALLS / 10), "every node gets a share: {spread:?}");

    registrars[0].uninstall().await?;
    let after = calls_after_removal(&mut client, &servers).await?;
    assert_eq!(after[0], 0, "the uninstalled node gets no calls: {after:?}");
    feeder.abort();
    for registrar in &registrars[1..] {
        registrar.uninstall().await?;
    }
    Ok(())
}
