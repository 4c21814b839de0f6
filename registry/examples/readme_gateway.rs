//! The README's gateway snippet, compiled as written (`tests/readme.rs`
//! checks that the README shows exactly this file below this header).
//! Run: `REGISTRY_URL=etcd://127.0.0.1:2379 cargo run -p grpc-registry --features tonic-server,etcd --example readme_gateway`

use registry::ServiceConf;
use registry::balance::{ChannelBuilder, Selector};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REGISTRY_URL")?;
    let registry = registry::connect(&url).await?;
    let discovery = registry.discoverer("prod", ServiceConf::default())?;
    discovery.watcher().await?;

    // Calls go to the nodes that serve the method, in proportion to their
    // weight. A call made while none is discovered waits for one (5 s by
    // default), then fails with UNAVAILABLE naming the method.
    let channel = ChannelBuilder::new(discovery, Selector::method("/grpc.health.v1.Health/Check")).build();
    channel.ready().await?;
    let mut client = HealthClient::new(channel); // your GreeterClient::new(channel)
    let reply = client.check(HealthCheckRequest { service: String::new() }).await?;
    println!("greeter is {:?}", reply.into_inner().status());
    Ok(())
}
