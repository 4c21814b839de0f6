//! The conformance suite on a real kube-apiserver, once per storage mode.
//!
//! Runs against a local etcd + kube-apiserver started by
//! [`KubeServer`] (binaries from `scripts/install-test-servers.sh`), or the
//! cluster `KUBECONFIG` names. The three modes share one server; the outage
//! scenario gets a server of its own per mode and stops/restarts its
//! kube-apiserver.
//!
//! There is no kubelet: in `pod` and `lease` mode every registrar gets a Pod
//! of its own, created here and moved to `Running` through the status
//! subresource; a crash (pod mode) moves it to `Failed`.
// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::marker::PhantomData;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use conformance::fixtures::unique;
use conformance::{Backend, Runner, ServerUse, Unavailable};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use registry_core::store::{Scope, Store};
use registry_core::{Discoverer, Meta, Register, Registrar, ServiceConf, ServiceNode};
use registry_kubernetes::{DEFAULT_PREFIX, KubernetesStore, Mode, Names, configmap_name};
use registry_testenv::kube::KubeServer;

/// A storage mode, as a type.
trait StorageMode: Send + Sync + 'static {
    const MODE: Mode;
}

struct LeaseMode;
struct ConfigMapMode;
struct PodMode;

impl StorageMode for LeaseMode {
    const MODE: Mode = Mode::Lease;
}
impl StorageMode for ConfigMapMode {
    const MODE: Mode = Mode::ConfigMap;
}
impl StorageMode for PodMode {
    const MODE: Mode = Mode::Pod;
}

/// The Kubernetes backend in mode `M` on a test server.
struct Kube<M: StorageMode> {
    server: Arc<KubeServer>,
    store: KubernetesStore,
    names: Names,
    _mode: PhantomData<fn() -> M>,
}

impl<M: StorageMode> Kube<M> {
    fn client(&self) -> kube::Client {
        self.server.client()
    }

    /// Lease and pod mode: every registrar runs in a Pod of its own.
    fn wants_pod() -> bool {
        matches!(M::MODE, Mode::Lease | Mode::Pod)
    }

    /// The Pod of a registrar, found by its app label and the lease id in its annotation.
    async fn pod_of(&self, namespace: &str, node: &ServiceNode) -> anyhow::Result<String> {
        let pods: Api<Pod> = Api::namespaced(self.client(), namespace);
        let selector = format!("{}=service", self.names.selector_label(&node.meta.app_id)?);
        let annotation = self.names.service_annotation(&node.meta.app_id)?;
        for pod in pods.list(&ListParams::default().labels(&selector)).await? {
            let lease =
                pod.annotations().get(&annotation).and_then(|v| ServiceNode::from_json(v).ok()).map(|n| n.lease_id);
            if lease == Some(node.lease_id) {
                return Ok(pod.name_any());
            }
        }
        anyhow::bail!("no Pod carries lease {} of app {}", node.lease_id, node.meta.app_id)
    }
}

#[async_trait]
impl<M: StorageMode> Backend for Kube<M> {
    fn available() -> Result<(), Unavailable> {
        KubeServer::available()
    }

    fn dedicated_available() -> Result<(), Unavailable> {
        registry_testenv::binary("kube-apiserver").map(|_| ())
    }

    async fn start(server: ServerUse) -> Result<Self, Unavailable> {
        let server = match server {
            ServerUse::Shared => KubeServer::shared().await?,
            // The outage scenario stops kube-apiserver: always a local one of its own.
            ServerUse::Dedicated => Arc::new(KubeServer::start_local().await?),
        };
        let store = support::store(&server, M::MODE)
            .await
            .map_err(|e| Unavailable::StartFailed { server: "kube-apiserver".into(), reason: e.to_string() })?;
        Ok(Self { server, store, names: Names::new(DEFAULT_PREFIX), _mode: PhantomData })
    }

    async fn prepare_namespace(&self, namespace: &str) -> anyhow::Result<()> {
        self.server.create_namespace(namespace).await
    }

    async fn registrar(&self, meta: Meta, conf: ServiceConf) -> registry_core::Result<Registrar> {
        if !Self::wants_pod() {
            return Registrar::new(&self.store, meta, conf);
        }
        let pod = unique("pod");
        self.server
            .running_pod(&conf.namespace, &pod)
            .await
            .map_err(|e| registry_core::Error::backend("kubernetes-test", format!("{e:#}")))?;
        Registrar::new(&self.store.with_pod_name(pod), meta, conf)
    }

    async fn discoverer(&self, env: &str, conf: ServiceConf) -> registry_core::Result<Discoverer> {
        Discoverer::new(&self.store, env, conf)
    }

    async fn operator(
        &self,
        scope: &Scope,
    ) -> registry_core::Result<std::sync::Arc<dyn registry_core::operator::Operator>> {
        self.store.operator(scope)
    }

    async fn put_foreign(&self, scope: &Scope, name: &str, value: &str) -> anyhow::Result<()> {
        let client = self.client();
        let ns = &scope.namespace;
        match M::MODE {
            Mode::Lease => {
                let leases: Api<Lease> = Api::namespaced(client, ns);
                let lease: Lease = serde_json::from_value(serde_json::json!({
                    "metadata": {
                        "name": format!("{}.foreign.{name}", scope.env),
                        "labels": { self.names.type_label(): "service", self.names.env_label(): scope.env },
                        "annotations": { self.names.node_annotation(): value },
                    },
                    "spec": { "holderIdentity": "someone-else", "leaseDurationSeconds": 3600,
                              "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now()) },
                }))?;
                leases.create(&PostParams::default(), &lease).await?;
            }
            Mode::ConfigMap => {
                let maps: Api<ConfigMap> = Api::namespaced(client, ns);
                let cm = configmap_name(&scope.env);
                // A valid key (so the value is what gets judged), as another writer would make it.
                let key = format!("{name}.{}", rand_id());
                let patch = serde_json::json!({ "data": { key.as_str(): value } });
                match maps.patch(&cm, &PatchParams::default(), &Patch::Merge(&patch)).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        let created: ConfigMap = serde_json::from_value(serde_json::json!({
                            "metadata": { "name": cm }, "data": { key: value }
                        }))?;
                        maps.create(&PostParams::default(), &created).await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            _ => {
                let pod = unique("foreign");
                let labels =
                    serde_json::json!({ self.names.type_label(): "service", self.names.env_label(): scope.env });
                let annotations = serde_json::json!({ format!("{}/service-{name}", self.names.prefix()): value });
                self.server.create_pod(ns, &pod, labels, annotations).await?;
                self.server.set_pod_phase(ns, &pod, "Running").await?;
            }
        }
        Ok(())
    }

    async fn crashed(&self, registrar: &Registrar) -> anyhow::Result<()> {
        if M::MODE != Mode::Pod {
            return Ok(());
        }
        let node = registrar.node().ok_or_else(|| anyhow::anyhow!("crashed registrar never installed"))?;
        let namespace = registrar.conf().namespace.clone();
        let pod = self.pod_of(&namespace, &node).await?;
        let server = Arc::clone(&self.server);
        // What the kubelet does a moment after the container died: the Pod stops running.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Err(e) = server.set_pod_phase(&namespace, &pod, "Failed").await {
                tracing::error!("marking the crashed Pod failed: {e:#}");
            }
        });
        Ok(())
    }

    async fn stop_server(&self) -> anyhow::Result<()> {
        self.server.stop()
    }

    async fn start_server(&self) -> anyhow::Result<()> {
        self.server.restart().await
    }
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() >> 1
}

fn main() -> ExitCode {
    Runner::new()
        .suite::<Kube<LeaseMode>>("kubernetes-lease")
        .suite::<Kube<ConfigMapMode>>("kubernetes-configmap")
        .suite::<Kube<PodMode>>("kubernetes-pod")
        .run()
}
