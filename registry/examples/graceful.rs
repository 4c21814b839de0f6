//! A tonic service with graceful shutdown: it registers once it listens,
//! keeps its gRPC health in step with its registration, and on SIGTERM or
//! ctrl-c drains, waits the grace period, uninstalls and stops.
//!
//! Run: `cargo run -p grpc-registry --features tonic-server --example graceful`
//! (`-- --once` shuts itself down after two seconds instead of waiting for a signal).

use std::time::Duration;

use registry::serve::{self, ServeOptions};
use registry::{GrpcServices, Meta, Network, ServiceConf};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let once = std::env::args().any(|a| a == "--once");
    let registry = registry::connect("memory://graceful-example").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();

    let (reporter, health) = tonic_health::server::health_reporter();
    let router = tonic::transport::Server::builder().add_service(health);
    let conf = ServiceConf::default().with_network(Network { internal: addr.clone(), ..Default::default() });
    let registrar = registry.registrar(Meta::new("dev", "greeter", "v1"), conf)?;
    let node = GrpcServices::new().service("grpc.health.v1.Health", ["Check", "Watch"])?.into_node();
    let options = ServeOptions::default().with_grace(Duration::from_secs(1)).with_health(reporter, ["greeter"]);

    let shutdown = async move {
        if once {
            tokio::time::sleep(Duration::from_secs(2)).await;
        } else {
            serve::shutdown_signal().await;
        }
        println!("shutdown requested: draining, then uninstalling");
    };
    serve::serve(router, listener, registrar, node, options, shutdown, |serving| {
        println!("greeter listening on {addr}, registered; SIGTERM or ctrl-c to stop");
        let mut state = serving.registration();
        tokio::spawn(async move {
            while state.changed().await.is_ok() {
                println!("registration: {:?}", *state.borrow());
            }
        });
    })
    .await?;
    println!("stopped cleanly");
    Ok(())
}
