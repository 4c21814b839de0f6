//! Fixtures shared by the facade's tonic tests: real tonic servers on loopback.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use registry::{GrpcServices, Meta, Network, Register, ServiceConf};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The method every fixture server serves.
pub const CHECK: &str = "/grpc.health.v1.Health/Check";

/// A gRPC health server on a free loopback port that counts the calls it
/// answers; stopped (connections closed) by [`stop`](Self::stop) or when dropped.
pub struct CountingServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its health statuses.
    pub health: tonic_health::server::HealthReporter,
    served: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingServer {
    /// Starts one.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::on(listener).await
    }

    /// Starts one on `listener`.
    pub async fn on(listener: tokio::net::TcpListener) -> anyhow::Result<Self> {
        Self::with(tonic::transport::Server::builder(), listener).await
    }

    /// Starts one from `builder` (TLS, limits) on `listener`.
    pub async fn with(builder: tonic::transport::Server, listener: tokio::net::TcpListener) -> anyhow::Result<Self> {
        Self::counting_into(builder, listener, Arc::new(AtomicU64::new(0))).await
    }

    /// Starts one on `listener` that adds to `served` (a server restarted on the same port).
    pub async fn counting_into(
        builder: tonic::transport::Server,
        listener: tokio::net::TcpListener,
        served: Arc<AtomicU64>,
    ) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let (health, router) = counted_health(builder, Arc::clone(&served));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let _ = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self { addr, health, served, stop: Some(stop), task })
    }

    /// Calls answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// The counter, to carry over to a restarted server.
    pub fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.served)
    }

    /// Stops serving and closes its connections; the port is free again.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A router serving gRPC health on `builder`, counting the calls it
/// answers, with the health reporter and the count.
pub fn counting_router(
    builder: tonic::transport::Server,
) -> (tonic_health::server::HealthReporter, Arc<AtomicU64>, tonic::transport::server::Router) {
    let served = Arc::new(AtomicU64::new(0));
    let (reporter, router) = counted_health(builder, Arc::clone(&served));
    (reporter, served, router)
}

fn counted_health(
    mut builder: tonic::transport::Server,
    served: Arc<AtomicU64>,
) -> (tonic_health::server::HealthReporter, tonic::transport::server::Router) {
    let (reporter, health) = tonic_health::server::health_reporter();
    let counted = tonic::service::interceptor::InterceptedService::new(health, move |req| {
        served.fetch_add(1, Ordering::Relaxed);
        Ok(req)
    });
    (reporter, builder.add_service(counted))
}

/// Registers an instance of `app` (version `v1`) serving [`CHECK`] at `addr`
/// with `weight`, and keeps it alive.
pub async fn register(
    registry: &registry::Registry,
    app: &str,
    addr: impl ToString,
    weight: i64,
) -> anyhow::Result<Arc<dyn Register>> {
    let network = Network { internal: addr.to_string(), ..Default::default() };
    register_as(registry, Meta::new("dev", app, "v1"), network, weight).await
}

/// Registers an instance `meta` serving [`CHECK`] on `network` with
/// `weight`, and keeps it alive.
pub async fn register_as(
    registry: &registry::Registry,
    meta: Meta,
    network: Network,
    weight: i64,
) -> anyhow::Result<Arc<dyn Register>> {
    let conf = ServiceConf::default().with_weight(weight).with_network(network);
    let registrar = registry.registrar(meta, conf)?;
    registrar.install(GrpcServices::new().service("grpc.health.v1.Health", ["Check"])?.into_node()).await?;
    // Heartbeats, so a test longer than the TTL keeps its nodes (ends on uninstall).
    tokio::spawn({
        let registrar = Arc::clone(&registrar);
        async move { registrar.sustain_lease().await }
    });
    Ok(registrar)
}

/// One health check through `channel`.
pub async fn check<T>(client: &mut HealthClient<T>) -> Result<(), tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    client.check(HealthCheckRequest { service: String::new() }).await.map(|_| ())
}
