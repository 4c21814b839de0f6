//! The etcd → Kubernetes runbook (docs/migrate-etcd-to-kubernetes.md) on a
//! real etcd and a real kube-apiserver, while a checker calls `get_service`
//! every 10 ms and must never find the method missing.
#![cfg(all(feature = "etcd", feature = "kubernetes"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use conformance::Runner;
use registry::{Discovery, FanoutRegistrar, GrpcServices, Meta, Network, Register, ServiceConf, merged_discovery};
use registry_testenv::etcd::EtcdServer;
use registry_testenv::kube::KubeServer;

const METHOD: &str = "/shop.v1.Orders/Get";

fn conf(namespace: &str, addr: &str) -> ServiceConf {
    ServiceConf::default()
        .with_namespace(namespace)
        .with_ttl_floor(Duration::from_secs(2))
        .with_ttl(Duration::from_secs(2))
        .with_network(Network { internal: addr.into(), ..Default::default() })
}

struct Running {
    registrar: Arc<dyn Register>,
    keepalive: tokio::task::JoinHandle<registry::Result<()>>,
}

async fn run(registrar: Arc<dyn Register>) -> Running {
    let node = GrpcServices::new().service("shop.v1.Orders", ["Get"]).unwrap().into_node();
    registrar.install(node).await.expect("installed");
    let keepalive = tokio::spawn({
        let r = Arc::clone(&registrar);
        async move { r.sustain_lease().await }
    });
    Running { registrar, keepalive }
}

async fn stop(r: Running) {
    r.registrar.uninstall().await.expect("uninstalled");
    r.keepalive.await.expect("joined").expect("keepalive ended cleanly");
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not true after 10 s");
}

fn count(d: &dyn Discovery) -> usize {
    d.get_service(METHOD).map(|n| n.len()).unwrap_or(0)
}

async fn fleet_moves_from_etcd_to_kubernetes_without_a_missed_lookup() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await.expect("etcd");
    let kube = KubeServer::start().await.expect("kube-apiserver");
    let namespace = format!("migrate-{:x}", std::process::id());
    kube.create_namespace(&namespace).await.expect("namespace");
    let env = "prod";
    let from = registry::connect(format!("etcd://{}", etcd.endpoints().join(","))).await.expect("etcd");
    let to = registry::connect(format!("kubernetes://?mode=lease&kubeconfig={}", kube.kubeconfig().display()))
        .await
        .expect("kubernetes");
    let meta = || Meta::new(env, "orders", "v1");
    let addrs = ["10.1.0.1:9000", "10.1.0.2:9000", "10.1.0.3:9000"];

    // Before: the fleet registers on etcd only; the gateway discovers from etcd.
    let mut fleet = Vec::new();
    for addr in addrs {
        fleet.push(run(from.registrar(meta(), conf(&namespace, addr)).unwrap()).await);
    }
    let etcd_only = from.discoverer(env, conf(&namespace, "")).unwrap();
    etcd_only.watcher().await.unwrap();
    eventually("fleet visible on etcd", || count(&*etcd_only) == 3).await;

    // The checker: one lookup every 10 ms through whatever discovery the gateway uses now.
    let gateway: Arc<ArcSwap<Arc<dyn Discovery>>> = Arc::new(ArcSwap::from_pointee(Arc::clone(&etcd_only)));
    let (checks, misses, done) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let checker = tokio::spawn({
        let (gateway, checks, misses, done) =
            (Arc::clone(&gateway), Arc::clone(&checks), Arc::clone(&misses), Arc::clone(&done));
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !done.load(Ordering::SeqCst) {
                tick.tick().await;
                checks.fetch_add(1, Ordering::SeqCst);
                if count(&***gateway.load()) == 0 {
                    misses.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    });

    // Step 2 first for the gateway: merged discovery over etcd and Kubernetes.
    let merged: Arc<dyn Discovery> = Arc::new(
        merged_discovery(
            vec![
                from.discoverer(env, conf(&namespace, "")).unwrap(),
                to.discoverer(env, conf(&namespace, "")).unwrap(),
            ],
            namespace.clone(),
            env,
            Duration::from_secs(2),
        )
        .unwrap(),
    );
    merged.watcher().await.unwrap();
    eventually("merged view has the fleet", || count(&*merged) == 3).await;
    gateway.store(Arc::new(Arc::clone(&merged)));

    // Step 1: instance by instance, a new process registers on both; the old one leaves.
    let mut dual = Vec::new();
    for (old, addr) in fleet.drain(..).zip(addrs) {
        let both: Arc<dyn Register> = Arc::new(
            FanoutRegistrar::new(vec![
                from.registrar(meta(), conf(&namespace, addr)).unwrap(),
                to.registrar(meta(), conf(&namespace, addr)).unwrap(),
            ])
            .unwrap(),
        );
        dual.push(run(both).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop(old).await;
    }
    let kube_only = to.discoverer(env, conf(&namespace, "")).unwrap();
    kube_only.watcher().await.unwrap();
    eventually("fleet visible on Kubernetes", || count(&*kube_only) == 3).await;

    // Step 3: the gateway discovers from Kubernetes only.
    gateway.store(Arc::new(Arc::clone(&kube_only)));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Step 4: instances drop etcd (new processes on Kubernetes only replace the dual ones).
    let mut final_fleet = Vec::new();
    for (old, addr) in dual.drain(..).zip(addrs) {
        final_fleet.push(run(to.registrar(meta(), conf(&namespace, addr)).unwrap()).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop(old).await;
    }
    eventually("etcd is empty", || count(&*etcd_only) == 0).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // longer than a TTL: nothing expires wrongly
    assert_eq!(count(&*kube_only), 3, "the whole fleet is on Kubernetes");

    done.store(true, Ordering::SeqCst);
    checker.await.unwrap();
    let (checks, misses) = (checks.load(Ordering::SeqCst), misses.load(Ordering::SeqCst));
    println!("migration: {checks} lookups every 10 ms, {misses} missed");
    assert!(checks > 300, "the checker ran ({checks} lookups)");
    assert_eq!(misses, 0, "{misses} of {checks} lookups found the method missing");
    for r in final_fleet {
        stop(r).await;
    }
    Ok(())
}

fn main() -> ExitCode {
    Runner::new()
        .test(
            "fleet_moves_from_etcd_to_kubernetes_without_a_missed_lookup",
            KubeServer::available().and(registry_testenv::etcd::available()),
            fleet_moves_from_etcd_to_kubernetes_without_a_missed_lookup,
        )
        .run()
}
