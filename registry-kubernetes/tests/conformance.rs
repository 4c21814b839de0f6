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
//!
//! `endpointslice` mode reads what the EndpointSlice controller keeps for
//! running Pods, so it runs only against a full cluster: `KUBECONFIG` and
//! [`POD_IMAGE_VAR`] set (`tests/node.rs` runs it so on the test node).
//! Every registrar gets a real Pod behind its app's Service, with the
//! `registered` readiness gate its install sets; on the bare API server the
//! suite is reported not applicable, with that reason.
// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::marker::PhantomData;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use conformance::fixtures::unique;
use conformance::{Backend, Capability, Runner, ServerUse, Unavailable};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use registry_core::store::{Scope, Store};
use registry_core::{Meta, Register, Registrar, ServiceConf, ServiceNode};
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
    fn store(&self) -> &dyn Store {
        &self.store
    }

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

    async fn remove_foreign(&self, scope: &Scope, name: &str) -> anyhow::Result<()> {
        let client = self.client();
        let ns = &scope.namespace;
        match M::MODE {
            Mode::Lease => {
                let leases: Api<Lease> = Api::namespaced(client, ns);
                leases.delete(&format!("{}.foreign.{name}", scope.env), &DeleteParams::default()).await?;
            }
            Mode::ConfigMap => {
                let maps: Api<ConfigMap> = Api::namespaced(client, ns);
                let cm = configmap_name(&scope.env);
                let prefix = format!("{name}.");
                let written: Vec<String> = maps
                    .get(&cm)
                    .await?
                    .data
                    .unwrap_or_default()
                    .into_keys()
                    .filter(|k| k.starts_with(&prefix))
                    .collect();
                anyhow::ensure!(!written.is_empty(), "no foreign entry {name} in ConfigMap {cm}");
                let nulls: serde_json::Map<String, serde_json::Value> =
                    written.into_iter().map(|k| (k, serde_json::Value::Null)).collect();
                let patch = serde_json::json!({ "data": nulls });
                maps.patch(&cm, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            }
            _ => {
                let pods: Api<Pod> = Api::namespaced(client, ns);
                let annotation = format!("{}/service-{name}", self.names.prefix());
                let selector = format!("{}={}", self.names.env_label(), scope.env);
                let mut removed = 0;
                for pod in pods.list(&ListParams::default().labels(&selector)).await? {
                    if pod.annotations().contains_key(&annotation) {
                        pods.delete(&pod.name_any(), &DeleteParams::default().grace_period(0)).await?;
                        removed += 1;
                    }
                }
                anyhow::ensure!(removed > 0, "no foreign Pod carries {annotation}");
            }
        }
        Ok(())
    }

    async fn release_namespace(&self, namespace: &str) -> anyhow::Result<()> {
        release(self.client(), namespace).await
    }

    async fn leftovers(&self, namespace: &str) -> anyhow::Result<Option<Vec<String>>> {
        leftovers_in(self.client(), namespace).await.map(Some)
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

/// An image the cluster runs with no command and no pull (its pause image),
/// for the Pods of the `endpointslice` suite.
const POD_IMAGE_VAR: &str = "REGISTRY_TEST_POD_IMAGE";

/// `endpointslice` mode on a full cluster: each registrar is a real Pod
/// behind its app's Service (see the module docs).
struct Slices {
    server: Arc<KubeServer>,
    store: KubernetesStore,
    names: Names,
    image: String,
}

#[async_trait]
impl Backend for Slices {
    fn store(&self) -> &dyn Store {
        &self.store
    }

    fn available() -> Result<(), Unavailable> {
        let image = std::env::var(POD_IMAGE_VAR).ok().filter(|v| !v.is_empty());
        if std::env::var_os("KUBECONFIG").is_none() || image.is_none() {
            return Err(Unavailable::NotApplicable(format!(
                "endpointslice mode reads the endpoints the EndpointSlice controller keeps for running Pods: \
                 it needs a cluster with controllers and a kubelet, not the bare API server; run with \
                 KUBECONFIG=<cluster> {POD_IMAGE_VAR}=<an image it runs without a pull, e.g. its pause image> \
                 (tests/node.rs does, on the test node)"
            )));
        }
        KubeServer::available()
    }

    fn dedicated_available() -> Result<(), Unavailable> {
        Err(Unavailable::NotApplicable(
            "the outage scenario stops the API server, and this mode's Pods need a full cluster, which the suite \
             cannot stop"
                .into(),
        ))
    }

    fn capability(capability: Capability) -> Result<(), String> {
        Err(match capability {
            Capability::InstanceRecords => {
                "a node is rebuilt from its endpoint and its Service: per-instance fields (kernel, registration \
                 time, the registrar's own address) are not stored"
            }
            Capability::InstanceMethods => "methods are declared per app on its Service, a union over its instances",
            Capability::DrainVisible => {
                "drain clears the instance's readiness gate, so it leaves the endpoints and discovery (only a \
                 terminating Pod's endpoint is a draining node)"
            }
            Capability::OperatorActions => "there is no per-instance record to carry an operator's mark",
            Capability::RawWrites => "there are no raw records: nodes are built from EndpointSlices and Services",
            _ => return Ok(()),
        }
        .to_owned())
    }

    async fn start(server: ServerUse) -> Result<Self, Unavailable> {
        if server == ServerUse::Dedicated {
            return Err(Self::dedicated_available().err().unwrap_or_else(|| Unavailable::NotApplicable(String::new())));
        }
        let image = std::env::var(POD_IMAGE_VAR).unwrap_or_default();
        let server = KubeServer::shared().await?;
        let store = support::store(&server, Mode::EndpointSlice)
            .await
            .map_err(|e| Unavailable::StartFailed { server: "kube-apiserver".into(), reason: e.to_string() })?;
        Ok(Self { server, store, names: Names::new(DEFAULT_PREFIX), image })
    }

    async fn prepare_namespace(&self, namespace: &str) -> anyhow::Result<()> {
        self.server.create_namespace(namespace).await
    }

    async fn registrar(&self, meta: Meta, conf: ServiceConf) -> registry_core::Result<Registrar> {
        // Names first: an invalid one is refused before anything is created.
        Registrar::new(&self.store, meta.clone(), conf.clone())?;
        let pod = unique("inst");
        let gate = self.names.registered_condition();
        self.server
            .endpoint_pod(&conf.namespace, &meta.app_id, &pod, &self.image, &gate)
            .await
            .map_err(|e| registry_core::Error::backend("kubernetes-test", format!("{e:#}")))?;
        Registrar::new(&self.store.with_pod_name(pod), meta, conf)
    }

    async fn put_foreign(&self, _scope: &Scope, _name: &str, _value: &str) -> anyhow::Result<()> {
        anyhow::bail!("endpointslice mode has no raw records")
    }

    async fn remove_foreign(&self, _scope: &Scope, _name: &str) -> anyhow::Result<()> {
        anyhow::bail!("endpointslice mode has no raw records")
    }

    async fn release_namespace(&self, namespace: &str) -> anyhow::Result<()> {
        release(self.server.client(), namespace).await
    }

    async fn leftovers(&self, namespace: &str) -> anyhow::Result<Option<Vec<String>>> {
        leftovers_in(self.server.client(), namespace).await.map(Some)
    }

    /// The instance's Pod goes away with no grace period, as when its node
    /// fails, a moment after the crash (as the Pod suite's kubelet does):
    /// the scenario first checks that the crash alone removed nothing.
    async fn crashed(&self, registrar: &Registrar) -> anyhow::Result<()> {
        let node = registrar.node().ok_or_else(|| anyhow::anyhow!("crashed registrar never installed"))?;
        let namespace = registrar.conf().namespace.clone();
        let pods: Api<Pod> = Api::namespaced(self.server.client(), &namespace);
        let pod = pods
            .list(&ListParams::default().labels(&format!("registry-test/app={}", node.meta.app_id)))
            .await?
            .into_iter()
            .find(|p| p.metadata.uid.as_deref().map(registry_kubernetes::instance_id) == Some(node.lease_id))
            .ok_or_else(|| anyhow::anyhow!("no Pod has lease {}", node.lease_id))?;
        let server = Arc::clone(&self.server);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Err(e) = server.delete_pod_now(&namespace, &pod.name_any()).await {
                tracing::error!("deleting the crashed instance's Pod failed: {e:#}");
            }
        });
        Ok(())
    }

    async fn stop_server(&self) -> anyhow::Result<()> {
        anyhow::bail!("not applicable")
    }

    async fn start_server(&self) -> anyhow::Result<()> {
        anyhow::bail!("not applicable")
    }
}

/// Deletes what a scenario's namespace holds of the kinds the suite writes
/// (the registrars' Pods — the test glue made them —, Leases, ConfigMaps,
/// Services, EndpointSlices), then the namespace itself, which
/// `prepare_namespace` created. Deleting the objects first matters on the
/// bare API server: with no namespace controller, a deleted namespace stays
/// `Terminating` with its contents.
async fn release(client: kube::Client, namespace: &str) -> anyhow::Result<()> {
    let now = DeleteParams::default().grace_period(0);
    let all = ListParams::default();
    Api::<Pod>::namespaced(client.clone(), namespace).delete_collection(&now, &all).await?;
    Api::<Lease>::namespaced(client.clone(), namespace).delete_collection(&now, &all).await?;
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .delete_collection(&now, &ListParams::default().fields("metadata.name!=kube-root-ca.crt"))
        .await?;
    Api::<Service>::namespaced(client.clone(), namespace).delete_collection(&now, &all).await?;
    Api::<EndpointSlice>::namespaced(client.clone(), namespace).delete_collection(&now, &all).await?;
    match Api::<Namespace>::all(client).delete(namespace, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The objects of the kinds the suite writes still in `namespace`, and the
/// namespace itself unless it is gone or being deleted.
async fn leftovers_in(client: kube::Client, namespace: &str) -> anyhow::Result<Vec<String>> {
    async fn names<K>(client: &kube::Client, namespace: &str, kind: &str) -> anyhow::Result<Vec<String>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let listed = Api::<K>::namespaced(client.clone(), namespace).list(&ListParams::default()).await?;
        Ok(listed
            .into_iter()
            .map(|o| o.name_any())
            .filter(|name| name != "kube-root-ca.crt")
            .map(|name| format!("{kind} {name}"))
            .collect())
    }
    let mut left = Vec::new();
    left.extend(names::<Pod>(&client, namespace, "pod").await?);
    left.extend(names::<Lease>(&client, namespace, "lease").await?);
    left.extend(names::<ConfigMap>(&client, namespace, "configmap").await?);
    left.extend(names::<Service>(&client, namespace, "service").await?);
    left.extend(names::<EndpointSlice>(&client, namespace, "endpointslice").await?);
    match Api::<Namespace>::all(client).get_opt(namespace).await? {
        Some(ns) if ns.metadata.deletion_timestamp.is_none() => left.push(format!("namespace {namespace}")),
        _ => {}
    }
    Ok(left)
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
        .suite::<Slices>("kubernetes-endpointslice")
        .run()
}
