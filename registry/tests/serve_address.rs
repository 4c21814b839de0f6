//! `serve` advertises where it listens: the listener's address through
//! `serve::advertise`, and a refusal (typed, naming `network.internal`)
//! instead of a registration peers would call on the wrong port.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{CHECK, check, counting_router};
use futures::StreamExt;
use registry::balance::{ChannelBuilder, Selector};
use registry::serve::{self, ServeError, ServeOptions};
use registry::{DiscoveryEvent, GrpcServices, Meta, Network, ServiceConf};
use tonic_health::pb::health_client::HealthClient;

fn node() -> registry::Result<registry::ServiceNode> {
    Ok(GrpcServices::new().service("grpc.health.v1.Health", ["Check"])?.into_node())
}

#[tokio::test]
async fn advertise_takes_the_listeners_ip_and_port() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let conf = serve::advertise(ServiceConf::default(), &listener)?;
    assert_eq!(conf.network.internal, listener.local_addr()?.to_string());
    Ok(())
}

#[tokio::test]
async fn advertise_keeps_a_configured_host_with_the_listeners_port() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
    let port = listener.local_addr()?.port();
    for (configured, expected) in [
        ("10.1.2.3", format!("10.1.2.3:{port}")),
        ("10.1.2.3:80", format!("10.1.2.3:{port}")),
        ("greeter.prod.svc", format!("greeter.prod.svc:{port}")),
        ("fd00::7", format!("[fd00::7]:{port}")),
    ] {
        let conf = ServiceConf::default().with_network(Network { internal: configured.into(), ..Default::default() });
        assert_eq!(serve::advertise(conf, &listener)?.network.internal, expected, "from `{configured}`");
    }
    Ok(())
}

#[tokio::test]
async fn advertise_refuses_every_interface_without_a_host() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
    let err = serve::advertise(ServiceConf::default(), &listener).expect_err("which host is unknown");
    assert!(matches!(err, ServeError::Address { .. }), "{err:?}");
    assert!(err.to_string().contains("network.internal"), "{err}");
    let err: registry::Error = err.into();
    assert!(matches!(err, registry::Error::InvalidConfig { field: "network.internal", .. }), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn serve_refuses_an_address_without_a_port_and_never_shows_it_serving() -> anyhow::Result<()> {
    let registry = registry::connect("memory://serve-no-port").await?;
    let discovery = registry.discoverer("dev", ServiceConf::default())?;
    discovery.watcher().await?;
    let mut events = discovery.events();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    // What the README's first reader wrote: the host's IP, no port.
    let conf = ServiceConf::default().with_network(Network { internal: "127.0.0.1".into(), ..Default::default() });
    let registrar = registry.registrar(Meta::new("dev", "portless", "v1"), conf)?;
    let (_, _, router) = counting_router(tonic::transport::Server::builder());
    let result =
        serve::serve(router, listener, registrar, node()?, ServeOptions::default(), std::future::pending(), |_| {})
            .await;
    let err = result.expect_err("an address without a port is refused");
    assert!(matches!(err, ServeError::Address { .. }), "{err:?}");
    assert!(err.to_string().contains("`127.0.0.1`, which has no port"), "{err}");

    // Discovery saw the node only draining, then gone: no peer could pick it.
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        let mut seen = Vec::new();
        while let Some(event) = events.next().await {
            match event {
                DiscoveryEvent::Up { node, .. } => seen.push(if node.draining { "up draining" } else { "up serving" }),
                DiscoveryEvent::Down { .. } => {
                    seen.push("down");
                    return seen;
                }
                _ => seen.push("reset"),
            }
        }
        seen
    })
    .await?;
    assert_eq!(seen, ["up draining", "down"]);
    assert!(discovery.get_app("portless").is_err());
    Ok(())
}

#[tokio::test]
async fn served_node_is_called_on_the_listeners_address() -> anyhow::Result<()> {
    let registry = registry::connect("memory://serve-advertise").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let conf = serve::advertise(ServiceConf::default(), &listener)?;
    let registrar = registry.registrar(Meta::new("dev", "greeter", "v1"), conf)?;
    let (_, served, router) = counting_router(tonic::transport::Server::builder());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (started, is_started) = tokio::sync::oneshot::channel();
    let options = ServeOptions::default().with_grace(Duration::from_millis(50));
    let server = tokio::spawn(serve::serve(
        router,
        listener,
        registrar,
        node()?,
        options,
        async {
            let _ = stopped.await;
        },
        move |_| {
            let _ = started.send(());
        },
    ));
    is_started.await?;

    let discovery = registry.discoverer("dev", ServiceConf::default())?;
    discovery.watcher().await?;
    let nodes = discovery.get_service(CHECK)?;
    assert_eq!(nodes[0].network.internal, addr.to_string());
    let channel = ChannelBuilder::new(Arc::clone(&discovery), Selector::method(CHECK)).build();
    check(&mut HealthClient::new(channel)).await?;
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 1);

    let _ = stop.send(());
    server.await??;
    Ok(())
}

/// `serve(...).await?` in a function returning `registry::Result`.
#[allow(dead_code)]
async fn serve_in_a_registry_result_function(listener: tokio::net::TcpListener) -> registry::Result<()> {
    let registry = registry::connect("memory://").await?;
    let conf = serve::advertise(ServiceConf::default(), &listener)?;
    let registrar = registry.registrar(Meta::new("dev", "greeter", "v1"), conf)?;
    let (_, _, router) = counting_router(tonic::transport::Server::builder());
    serve::serve(router, listener, registrar, node()?, ServeOptions::default(), serve::shutdown_signal(), |_| {})
        .await?;
    Ok(())
}
