//! Graceful shutdown with real tonic servers: a client calling in a loop
//! through weighted balancing sees zero failed calls while one of two
//! servers shuts down (drain → grace → uninstall → stop), and that server's
//! gRPC health turns NOT_SERVING before it stops.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use registry::balance::{self, Selector};
use registry::serve::{self, Registration, ServeOptions};
use registry::{GrpcServices, Meta, Network, ServiceConf};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use common::CHECK;

struct Server {
    served: Arc<AtomicU64>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), serve::ServeError>>,
    registration: tokio::sync::watch::Receiver<Registration>,
    addr: String,
}

/// A health server registered through `serve::serve`, counting the calls it answers.
async fn start(registry: &registry::Registry, name: &str) -> anyhow::Result<Server> {
    start_with(registry, name, ServiceConf::default()).await
}

async fn start_with(registry: &registry::Registry, name: &str, conf: ServiceConf) -> anyhow::Result<Server> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (reporter, served, router) = common::counting_router(tonic::transport::Server::builder());
    let conf = conf.with_network(Network { internal: addr.clone(), ..Default::default() });
    let registrar = registry.registrar(Meta::new("dev", name, "v1"), conf)?;
    let node = GrpcServices::new().service("grpc.health.v1.Health", ["Check"])?.into_node();
    let options = ServeOptions::default().with_grace(Duration::from_millis(500)).with_health(reporter, [""]);
    let (shutdown, requested) = tokio::sync::oneshot::channel::<()>();
    let (started, registration) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(serve::serve(
        router,
        listener,
        registrar,
        node,
        options,
        async {
            let _ = requested.await;
        },
        move |serving| {
            let _ = started.send(serving.registration());
        },
    ));
    let registration = registration.await?;
    Ok(Server { served, shutdown, task, registration, addr })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_a_client_calls_fails_no_call() -> anyhow::Result<()> {
    let registry = registry::connect("memory://graceful-shutdown").await?;
    let leaving = start(&registry, "leaving").await?;
    let staying = start(&registry, "staying").await?;

    let discovery = registry.discoverer("dev", ServiceConf::default())?;
    discovery.watcher().await?;
    let channel = balance::channel(Arc::clone(&discovery), Selector::method(CHECK), "http");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while channel.weights().len() < 2 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "balancer did not see both servers");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The client calls in a loop for the whole shutdown.
    let done = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let caller = tokio::spawn({
        let (done, ok, failed) = (Arc::clone(&done), Arc::clone(&ok), Arc::clone(&failed));
        let mut client = HealthClient::new(channel.clone());
        async move {
            while !done.load(Ordering::Relaxed) {
                match client.check(HealthCheckRequest { service: String::new() }).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(status) => {
                        eprintln!("call failed: {status}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    anyhow::ensure!(leaving.served.load(Ordering::Relaxed) > 0, "the leaving server got no calls before shutdown");

    // Its own health client sees NOT_SERVING during the grace period.
    let direct_channel = tonic::transport::Endpoint::from_shared(format!("http://{}", leaving.addr))?.connect().await?;
    let mut direct = HealthClient::new(direct_channel);
    let mut registration = leaving.registration.clone();
    let _ = leaving.shutdown.send(());
    registration.wait_for(|r| *r == Registration::Draining).await?;
    let status = direct.check(HealthCheckRequest { service: String::new() }).await?.into_inner().status;
    anyhow::ensure!(status == ServingStatus::NotServing as i32, "health while draining: {status}");
    leaving.task.await??;
    let left_at = leaving.served.load(Ordering::Relaxed);

    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, Ordering::Relaxed);
    caller.await?;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "graceful shutdown: {ok} calls answered, {failed} failed; leaving server answered {left_at}, staying {}",
        staying.served.load(Ordering::Relaxed)
    );
    anyhow::ensure!(failed == 0, "{failed} calls failed during the shutdown");
    anyhow::ensure!(leaving.served.load(Ordering::Relaxed) == left_at, "the stopped server answered more calls");
    anyhow::ensure!(staying.served.load(Ordering::Relaxed) > 0, "the staying server answered nothing");
    let _ = staying.shutdown.send(());
    staying.task.await??;
    Ok(())
}

/// The backend down for longer than `max_retry` keepalive failures: `serve`
/// reports the registration lost (health `NOT_SERVING`) while the keepalive
/// goes on retrying, and registered again once the backend is back — no
/// reinstall needed, nothing given up (issue 26).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_registration_is_reported_and_comes_back() -> anyhow::Result<()> {
    let registry = registry::connect("memory://serve-lost-registration").await?;
    let store = registry_core::memory::MemoryStore::named("serve-lost-registration")?;
    let conf = ServiceConf::default()
        .with_ttl_floor(Duration::from_secs(2))
        .with_ttl(Duration::from_secs(2))
        .with_max_retry(3);
    let server = start_with(&registry, "flaky", conf).await?;
    let direct_channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))?.connect().await?;
    let mut direct = HealthClient::new(direct_channel);
    let mut registration = server.registration.clone();
    registration.wait_for(|r| *r == Registration::Registered).await?;

    store.set_reachable(false);
    tokio::time::timeout(Duration::from_secs(10), registration.wait_for(|r| *r == Registration::Lost)).await??;
    let status = direct.check(HealthCheckRequest { service: String::new() }).await?.into_inner().status;
    anyhow::ensure!(status == ServingStatus::NotServing as i32, "health while lost: {status}");

    store.set_reachable(true);
    tokio::time::timeout(Duration::from_secs(10), registration.wait_for(|r| *r == Registration::Registered)).await??;
    // Health is set from the hooks on tasks of their own: poll for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let status = direct.check(HealthCheckRequest { service: String::new() }).await?.into_inner().status;
        if status == ServingStatus::Serving as i32 {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "health after recovery: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And stays so: no late NOT_SERVING from a retry of the outage.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = direct.check(HealthCheckRequest { service: String::new() }).await?.into_inner().status;
    anyhow::ensure!(status == ServingStatus::Serving as i32, "health after recovery went back to {status}");
    let _ = server.shutdown.send(());
    server.task.await??;
    Ok(())
}
