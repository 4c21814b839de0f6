//! The first hour with a balanced channel, on real tonic servers: the first
//! call right after discovery is ready reaches a node, a call made while no
//! node exists waits for one, and no node at all is gRPC `UNAVAILABLE`
//! naming the selector.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{CHECK, CountingServer, check, register};
use registry::ServiceConf;
use registry::balance::{ChannelBuilder, Selector};
use tonic_health::pb::health_client::HealthClient;

async fn discovery(registry: &registry::Registry) -> anyhow::Result<Arc<dyn registry::Discovery>> {
    let discovery = registry.discoverer("dev", ServiceConf::default())?;
    discovery.watcher().await?;
    Ok(discovery)
}

#[tokio::test]
async fn first_call_after_watcher_reaches_a_node() -> anyhow::Result<()> {
    let registry = registry::connect("memory://first-call").await?;
    let servers = [CountingServer::start().await?, CountingServer::start().await?];
    let mut registrars = Vec::new();
    for server in &servers {
        registrars.push(register(&registry, "greeter", server.addr, 100).await?);
    }
    let discovery = discovery(&registry).await?;
    // No sleep, no wait: the channel starts from discovery's current view.
    let channel = ChannelBuilder::new(discovery, Selector::method(CHECK)).wait_for_nodes(Duration::ZERO).build();
    assert_eq!(channel.weights().len(), 2, "both nodes are in rotation as soon as the channel exists");
    let mut client = HealthClient::new(channel);
    check(&mut client).await?;
    check(&mut client).await?;
    assert_eq!(servers.iter().map(CountingServer::served).collect::<Vec<_>>(), [1, 1]);
    for registrar in registrars {
        registrar.uninstall().await?;
    }
    Ok(())
}

#[tokio::test]
async fn no_node_is_unavailable_naming_the_selector() -> anyhow::Result<()> {
    let registry = registry::connect("memory://no-node").await?;
    let discovery = discovery(&registry).await?;
    let channel = ChannelBuilder::new(discovery, Selector::method("/nobody.Serves/This"))
        .wait_for_nodes(Duration::from_millis(200))
        .build();
    let started = tokio::time::Instant::now();
    let status = check(&mut HealthClient::new(channel.clone())).await.expect_err("no node serves it");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("method `/nobody.Serves/This`"), "{status:?}");
    assert!(started.elapsed() >= Duration::from_millis(200), "the call waited for a node first");

    let err = channel.ready().await.expect_err("still no node");
    assert_eq!((err.selector, err.waited), (Selector::method("/nobody.Serves/This"), Duration::from_millis(200)));
    Ok(())
}

#[tokio::test]
async fn a_call_made_before_any_node_waits_for_one() -> anyhow::Result<()> {
    let registry = registry::connect("memory://waits-for-node").await?;
    let discovery = discovery(&registry).await?;
    let channel = ChannelBuilder::new(discovery, Selector::app("late")).wait_for_nodes(Duration::from_secs(10)).build();
    let ready = tokio::spawn({
        let channel = channel.clone();
        async move { channel.ready().await }
    });
    let call = tokio::spawn(async move { check(&mut HealthClient::new(channel)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!call.is_finished(), "the call waits while no node exists");

    let server = CountingServer::start().await?;
    let registrar = register(&registry, "late", server.addr, 100).await?;
    tokio::time::timeout(Duration::from_secs(5), call).await???;
    tokio::time::timeout(Duration::from_secs(5), ready).await???;
    assert_eq!(server.served(), 1);
    registrar.uninstall().await?;
    Ok(())
}

#[tokio::test]
async fn a_node_without_a_port_is_left_out() -> anyhow::Result<()> {
    let registry = registry::connect("memory://no-port").await?;
    let server = CountingServer::start().await?;
    let portless = register(&registry, "greeter", "127.0.0.1", 100).await?;
    let good = register(&registry, "greeter", server.addr, 100).await?;
    let discovery = discovery(&registry).await?;
    let channel = ChannelBuilder::new(discovery, Selector::app("greeter")).build();
    assert_eq!(channel.weights().len(), 1, "only the node with a port: {channel:?}");
    let mut client = HealthClient::new(channel);
    for _ in 0..4 {
        check(&mut client).await?;
    }
    assert_eq!(server.served(), 4);
    portless.uninstall().await?;
    good.uninstall().await?;
    Ok(())
}

#[tokio::test]
async fn pick_names_the_next_node_and_advances_the_rotation() -> anyhow::Result<()> {
    let registry = registry::connect("memory://pick").await?;
    let heavy = register(&registry, "picked", "127.0.0.1:20001", 300).await?;
    let light = register(&registry, "picked", "127.0.0.1:20002", 100).await?;
    let channel = ChannelBuilder::new(discovery(&registry).await?, Selector::app("picked")).build();
    let mut picked = Vec::new();
    for _ in 0..8 {
        picked.push(channel.pick().map(|node| node.network.internal.clone()).unwrap_or_default());
    }
    let to_heavy = picked.iter().filter(|a| *a == "127.0.0.1:20001").count();
    assert_eq!(to_heavy, 6, "3 of every 4 picks go to the 300-weight node: {picked:?}");
    heavy.uninstall().await?;
    light.uninstall().await?;
    Ok(())
}
