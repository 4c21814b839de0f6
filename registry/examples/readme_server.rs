//! The README's server snippet, compiled as written (`tests/readme.rs`
//! checks that the README shows exactly this file below this header).
//! Run: `REGISTRY_URL=etcd://127.0.0.1:2379 cargo run -p grpc-registry --features tonic-server,etcd --example readme_server`

use registry::serve::{self, ServeOptions};
use registry::{GrpcServices, Meta, ServiceConf};
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REGISTRY_URL")?; // e.g. etcd://127.0.0.1:2379
    let registry = registry::connect(&url).await?;

    // Bind first: the node advertises this listener's IP and port. Bound to
    // 0.0.0.0, name the host peers dial: ServiceConf::with_network(Network {
    // internal: pod_ip, ..Default::default() }) before `advertise`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
    let conf = serve::advertise(ServiceConf::default(), &listener)?;
    let registrar = registry.registrar(Meta::new("prod", "greeter", "v1"), conf)?;

    // Your services go beside health: .add_service(GreeterServer::new(MyGreeter))
    // and .named::<GreeterServer<MyGreeter>>(["SayHello"]).
    let (health, health_service) = tonic_health::server::health_reporter();
    let router = tonic::transport::Server::builder().add_service(health_service);
    let node = GrpcServices::new().named::<HealthServer<HealthService>>(["Check", "Watch"])?.into_node();

    // Installed once listening, kept alive, health in step; on SIGTERM or
    // ctrl-c: drain, grace period, uninstall, stop.
    let options = ServeOptions::default().with_health(health, ["grpc.health.v1.Health"]);
    serve::serve(router, listener, registrar, node, options, serve::shutdown_signal(), |_| {}).await?;
    Ok(())
}
