//! Long-dead records are deleted by discoverers (core's expiry clock, this
//! backend's reapers), and never a live one: a crashed instance's Lease or
//! ConfigMap entry goes after `reap_after` heartbeat windows while a live
//! neighbour stays; a reap of a record renewed since core saw it fails its
//! precondition (the Lease's `resourceVersion`, the entry's exact value) and
//! deletes nothing.
// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use conformance::Runner;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use conformance::fixtures::{PROPAGATION, TTL, conf, eventually, meta, node, unique};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::ListParams;
use registry_core::store::{RawRecord, Scope, Store, StoreEvent};
use registry_core::{Discoverer, Discovery, Error, Register, Registrar, ServiceNode};
use registry_kubernetes::{DEFAULT_PREFIX, KubernetesConfig, KubernetesStore, Mode, Names, configmap_name};
use registry_testenv::free_port;
use registry_testenv::kube::KubeServer;
use tokio::task::JoinHandle;

/// Where one test's records live (each test runs its own server: a client
/// lives on the runtime of the test that made it).
struct Place {
    server: KubeServer,
    store: KubernetesStore,
    namespace: String,
    env: String,
}

impl Place {
    async fn new(server: KubeServer, mode: Mode) -> Self {
        let namespace = unique("reap");
        server.create_namespace(&namespace).await.unwrap();
        let store = support::store(&server, mode).await.unwrap();
        Self { server, store, namespace, env: unique("env") }
    }

    fn scope(&self) -> Scope {
        Scope::new(self.namespace.clone(), self.env.clone())
    }

    /// An installed instance of `app` with its keepalive running.
    async fn start(&self, app: &str) -> (Registrar, ServiceNode, JoinHandle<registry_core::Result<()>>) {
        let registrar = Registrar::new(&self.store, meta(&self.env, app), conf(&self.namespace)).unwrap();
        let installed = registrar.install(node("t.Reap", &["Call"])).await.unwrap();
        let keepalive = tokio::spawn({
            let r = registrar.clone();
            async move { r.sustain_lease().await }
        });
        (registrar, installed, keepalive)
    }

    /// Whether the store still holds the record of `node` (hidden or not).
    async fn holds(&self, node: &ServiceNode) -> bool {
        let client = self.server.client();
        match self.store.config().mode {
            Mode::ConfigMap => {
                let maps: Api<ConfigMap> = Api::namespaced(client, &self.namespace);
                let cm = maps.get_opt(&configmap_name(&self.env)).await.unwrap();
                let key = format!("{}.{}", node.meta.app_id, node.lease_id);
                cm.and_then(|cm| cm.data).is_some_and(|d| d.contains_key(&key))
            }
            _ => {
                let leases: Api<Lease> = Api::namespaced(client, &self.namespace);
                let names = Names::new(DEFAULT_PREFIX);
                let selector = format!("{}={}", names.app_label(), node.meta.app_id);
                let found = leases.list(&ListParams::default().labels(&selector)).await.unwrap();
                found.items.iter().any(|l| {
                    l.metadata.annotations.as_ref().and_then(|a| a.get(&names.node_annotation())).is_some_and(|v| {
                        ServiceNode::from_json(v).map(|n| n.lease_id == node.lease_id).unwrap_or(false)
                    })
                })
            }
        }
    }

    /// The records a fresh listing shows, as the reader reports them.
    async fn listed(&self) -> Vec<RawRecord> {
        let reader = self.store.reader(&self.scope()).unwrap();
        let mut events = reader.events();
        let mut records = Vec::new();
        loop {
            match tokio::time::timeout(PROPAGATION, events.next()).await.unwrap() {
                Some(StoreEvent::Upsert(record)) => records.push(record),
                Some(StoreEvent::Synced) => return records,
                Some(StoreEvent::Error(e)) => panic!("listing failed: {e}"),
                Some(_) => {}
                None => panic!("stream ended"),
            }
        }
    }

    /// The listed record of `node`.
    async fn record_of(&self, node: &ServiceNode) -> RawRecord {
        let records = self.listed().await;
        records
            .into_iter()
            .find(|r| ServiceNode::from_json(&r.value).is_ok_and(|n| n.lease_id == node.lease_id))
            .unwrap_or_else(|| panic!("no record of lease {}", node.lease_id))
    }
}

/// A crash leaves the record; a discoverer deletes it after `reap_after`
/// (3) windows without a heartbeat, not before the heartbeat could have
/// stopped, and leaves the live neighbour alone.
async fn crashed_instance_is_reaped(mode: Mode) {
    let server = support::server().await;
    let place = Place::new(server, mode).await;
    let discoverer = Discoverer::new(&place.store, &place.env, conf(&place.namespace)).unwrap();
    discoverer.watcher().await.unwrap();
    let (live, live_node, live_keepalive) = place.start("survivor").await;
    let (_dead, dead_node, dead_keepalive) = place.start("crashy").await;
    eventually(PROPAGATION, "both visible", || discoverer.apps().len() == 2).await.unwrap();

    dead_keepalive.abort();
    let crashed_at = Instant::now();
    let window = TTL;
    let limit = window * 3 + PROPAGATION;
    loop {
        if !place.holds(&dead_node).await {
            break;
        }
        assert!(crashed_at.elapsed() < limit, "{mode}: the dead record is still there after {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = crashed_at.elapsed();
    eprintln!("{mode}: dead record deleted {took:?} after the crash");
    // The last heartbeat was at most half a window before the crash.
    assert!(took >= window * 2, "{mode}: deleted after {took:?}, before 3 windows without a heartbeat");
    assert!(place.holds(&live_node).await, "{mode}: the live record was deleted");
    assert_eq!(discoverer.get_app("survivor").unwrap().len(), 1);
    assert!(!live_keepalive.is_finished(), "{mode}: the live keepalive ended");
    live.uninstall().await.unwrap();
    discoverer.unwatch();
}

async fn crashed_lease_is_reaped() -> anyhow::Result<()> {
    crashed_instance_is_reaped(Mode::Lease).await;
    Ok(())
}

async fn crashed_configmap_entry_is_reaped() -> anyhow::Result<()> {
    crashed_instance_is_reaped(Mode::ConfigMap).await;
    Ok(())
}

/// A reap of the version core saw, after the record was renewed, fails its
/// precondition (`Conflict`) and deletes nothing; a reap of the current
/// version deletes exactly that record, and reaping it again is harmless.
async fn reap_deletes_only_the_version_observed(mode: Mode) {
    let server = support::server().await;
    let place = Place::new(server, mode).await;
    let reaper = place.store.reader(&place.scope()).unwrap().reaper().expect("a reaper");
    let neighbour = Registrar::new(&place.store, meta(&place.env, "neighbour"), conf(&place.namespace)).unwrap();
    let neighbour_node = neighbour.install(node("t.Reap", &["Call"])).await.unwrap();
    let registrar = Registrar::new(&place.store, meta(&place.env, "target"), conf(&place.namespace)).unwrap();
    let node = registrar.install(node("t.Reap", &["Call"])).await.unwrap();
    let stale = place.record_of(&node).await;
    if mode == Mode::Lease {
        assert!(stale.version.is_some(), "a Lease record carries its resourceVersion");
    }

    // Renewed (installing again rewrites the same instance) after core looked.
    tokio::time::sleep(Duration::from_millis(20)).await;
    registrar.install(node.clone()).await.unwrap();
    match reaper.reap(&stale).await {
        Err(Error::Conflict { .. }) => {}
        other => panic!("{mode}: reaping a renewed record: expected Conflict, got {other:?}"),
    }
    assert!(place.holds(&node).await, "{mode}: a renewed record was deleted");

    let current = place.record_of(&node).await;
    reaper.reap(&current).await.unwrap();
    assert!(!place.holds(&node).await, "{mode}: the record observed is still there");
    assert!(place.holds(&neighbour_node).await, "{mode}: the neighbour went too");
    // Another discoverer reaping the same record a moment later.
    match reaper.reap(&current).await {
        Ok(()) | Err(Error::Conflict { .. }) => {}
        other => panic!("{mode}: reaping a record already gone: {other:?}"),
    }
}

async fn lease_reap_needs_the_observed_resource_version() -> anyhow::Result<()> {
    reap_deletes_only_the_version_observed(Mode::Lease).await;
    Ok(())
}

async fn configmap_reap_needs_the_observed_value() -> anyhow::Result<()> {
    reap_deletes_only_the_version_observed(Mode::ConfigMap).await;
    Ok(())
}

/// A client for a loopback port where nothing listens (no round trip is made).
async fn offline_client() -> (tempfile::TempDir, kube::Client) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: nowhere\n  cluster:\n    server: https://127.0.0.1:{}\n\
         users:\n- name: u\n  user:\n    token: t\n\
         contexts:\n- name: nowhere\n  context:\n    cluster: nowhere\n    user: u\ncurrent-context: nowhere\n",
        free_port()
    );
    std::fs::write(&path, text).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    (dir, kube::Client::try_from(config).unwrap())
}

async fn reap_false_and_pod_mode_offer_no_reaper() -> anyhow::Result<()> {
    let (_dir, client) = offline_client().await;
    let scope = Scope::new("default", "prod");
    for (mode, reap, expected) in [
        (Mode::Lease, true, true),
        (Mode::ConfigMap, true, true),
        (Mode::Lease, false, false),
        (Mode::ConfigMap, false, false),
        (Mode::Pod, true, false),
    ] {
        let config = KubernetesConfig::new(mode).with_reap(reap).with_pod_name(None);
        let store = KubernetesStore::from_client(client.clone(), config).unwrap();
        let reaper = store.reader(&scope).unwrap().reaper();
        assert_eq!(reaper.is_some(), expected, "{mode}, reap={reap}");
    }
    let url = url::Url::parse("kubernetes://?mode=configmap&reap=false").unwrap();
    let store = KubernetesStore::from_client(client, KubernetesConfig::from_url(&url).unwrap()).unwrap();
    assert!(store.reader(&scope).unwrap().reaper().is_none(), "reap=false in the URL");
    Ok(())
}

fn main() -> ExitCode {
    Runner::new()
        .test("crashed_lease_is_reaped", KubeServer::available(), crashed_lease_is_reaped)
        .test("crashed_configmap_entry_is_reaped", KubeServer::available(), crashed_configmap_entry_is_reaped)
        .test(
            "lease_reap_needs_the_observed_resource_version",
            KubeServer::available(),
            lease_reap_needs_the_observed_resource_version,
        )
        .test(
            "configmap_reap_needs_the_observed_value",
            KubeServer::available(),
            configmap_reap_needs_the_observed_value,
        )
        .test("reap_false_and_pod_mode_offer_no_reaper", Ok(()), reap_false_and_pod_mode_offer_no_reaper)
        .run()
}
