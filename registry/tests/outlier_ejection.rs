//! Failure awareness of the balanced channel on real tonic servers: an
//! instance whose server stopped while its registration stays live is
//! ejected (< 1 % of the calls after its ejection) and takes its share again
//! after it recovers; a rolling restart of every instance, with a call every
//! 5 ms throughout, fails no call.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{CHECK, CountingServer, check, counting_router, register};
use registry::balance::{ChannelBuilder, OutlierDetection, OutlierEvent, Selector};
use registry::serve::{self, ServeOptions};
use registry::{GrpcServices, Meta, ServiceConf};
use tonic_health::pb::health_client::HealthClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_with_a_live_registration_is_ejected_and_returns_after_recovery() -> anyhow::Result<()> {
    let registry = registry::connect("memory://outlier-ejection").await?;
    let mut servers = Vec::new();
    let mut registrars = Vec::new();
    for _ in 0..4 {
        let server = CountingServer::start().await?;
        registrars.push(register(&registry, "flaky", server.addr, 100).await?);
        servers.push(server);
    }
    let discovery = registry.discoverer("dev", ServiceConf::default())?;
    discovery.watcher().await?;
    let ejection = Duration::from_secs(3);
    let outliers = OutlierDetection::default()
        .with_consecutive_failures(3)
        .with_base_ejection_time(ejection)
        .with_max_ejection_time(ejection);
    let channel = ChannelBuilder::new(discovery, Selector::app("flaky")).outlier_detection(Some(outliers)).build();
    let mut events = channel.outlier_events();
    let mut client = HealthClient::new(channel.clone());
    for _ in 0..40 {
        check(&mut client).await?;
    }

    // The server stops; its registration stays live (heartbeats go on).
    let dead = servers.remove(0);
    let (dead_addr, dead_count) = (dead.addr, dead.counter());
    let stopped_at = tokio::time::Instant::now();
    dead.stop().await;
    let mut failed_before_ejection = 0;
    let ejected_key = loop {
        if let Err(status) = check(&mut client).await {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            failed_before_ejection += 1;
        }
        if let Ok(OutlierEvent::Ejected { key, .. }) = events.try_recv() {
            break key;
        }
        anyhow::ensure!(stopped_at.elapsed() < Duration::from_secs(5), "no ejection within 5 s");
    };
    println!("ejected after {:?} and {failed_before_ejection} failed calls", stopped_at.elapsed());
    assert_eq!(channel.ejected(), [Arc::clone(&ejected_key)]);

    const CALLS: u32 = 1_000;
    let mut failed = 0;
    for _ in 0..CALLS {
        if check(&mut client).await.is_err() {
            failed += 1;
        }
    }
    println!("after ejection: {failed} of {CALLS} calls reached the stopped server");
    assert!(f64::from(failed) < f64::from(CALLS) * 0.01, "{failed} of {CALLS} calls failed after the ejection");

    // It recovers on the same address and comes back after its ejection ends.
    let listener = tokio::net::TcpListener::bind(dead_addr).await?;
    let revived = CountingServer::counting_into(tonic::transport::Server::builder(), listener, dead_count).await?;
    let back = tokio::time::timeout(ejection * 3, async {
        loop {
            check(&mut client).await?;
            if channel.ejected().is_empty() {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    anyhow::ensure!(matches!(back, Ok(Ok(()))), "the recovered node did not return: {back:?}");
    let before = revived.served();
    for _ in 0..400 {
        check(&mut client).await?;
    }
    let share = revived.served() - before;
    println!("recovered node: {share} of 400 calls");
    assert!(share >= 60, "the recovered node takes its share again (100 of 400 expected), got {share}");
    for registrar in &registrars {
        registrar.uninstall().await?;
    }
    Ok(())
}

/// An instance run by `serve::serve` (graceful shutdown: drain, grace, uninstall, stop).
struct Instance {
    served: Arc<AtomicU64>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), serve::ServeError>>,
}

async fn start_instance(registry: &registry::Registry) -> anyhow::Result<Instance> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let conf = serve::advertise(ServiceConf::default(), &listener)?;
    let registrar = registry.registrar(Meta::new("dev", "rolling", "v1"), conf)?;
    let (reporter, served, router) = counting_router(tonic::transport::Server::builder());
    let node = GrpcServices::new().service("grpc.health.v1.Health", ["Check"])?.into_node();
    let options = ServeOptions::default().with_grace(Duration::from_millis(300)).with_health(reporter, [""]);
    let (shutdown, requested) = tokio::sync::oneshot::channel::<()>();
    let (started, is_started) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(serve::serve(
        router,
        listener,
        registrar,
        node,
        options,
        async {
            let _ = requested.await;
        },
        move |_| {
            let _ = started.send(());
        },
    ));
    is_started.await?;
    Ok(Instance { served, shutdown, task })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_a_call_every_5ms_fails_no_call() -> anyhow::Result<()> {
    let registry = registry::connect("memory://rolling-restart").await?;
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(start_instance(&registry).await?);
    }
    let discovery = registry.discoverer("dev", ServiceConf::default())?;
    discovery.watcher().await?;
    let channel = ChannelBuilder::new(discovery, Selector::method(CHECK)).build();

    let done = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let caller = tokio::spawn({
        let (done, ok, failed) = (Arc::clone(&done), Arc::clone(&ok), Arc::clone(&failed));
        let mut client = HealthClient::new(channel.clone());
        async move {
            let mut every = tokio::time::interval(Duration::from_millis(5));
            while !done.load(Ordering::Relaxed) {
                every.tick().await;
                match check(&mut client).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(status) => {
                        eprintln!("failed call: {status:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }
    });

    // Every instance is replaced, one at a time: the new one first, then
    // the old one shuts down gracefully.
    let mut replaced = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let new = start_instance(&registry).await?;
        let old = instances.remove(0);
        let _ = old.shutdown.send(());
        old.task.await??;
        replaced.push(old.served);
        instances.push(new);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    done.store(true, Ordering::Relaxed);
    caller.await?;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("rolling restart of 3 instances: {ok} calls succeeded, {failed} failed");
    assert_eq!(failed, 0, "no call fails during a rolling restart");
    assert!(ok >= 50, "the caller kept calling: {ok}");
    assert!(replaced.iter().all(|s| s.load(Ordering::Relaxed) > 0), "every old instance served before leaving");
    assert!(instances.iter().all(|i| i.served.load(Ordering::Relaxed) > 0), "every new instance serves");
    for instance in instances {
        let _ = instance.shutdown.send(());
        instance.task.await??;
    }
    Ok(())
}
