//! The Kubernetes backend of `registry`: an adapter over
//! [`registry_core::store`] with three storage modes.
//!
//! | mode | record | liveness | change stream |
//! |---|---|---|---|
//! | [`Mode::Lease`] (default) | one `coordination.k8s.io/v1` Lease per instance (`lease.rs`) | `renewTime` + `leaseDurationSeconds`, judged skew-free by core | watch Leases by label selector |
//! | [`Mode::ConfigMap`] (the Go framework's ConfigMap layout) | one entry per instance in ConfigMap `ff-registry-<env>` (`configmap.rs`) | the entry is rewritten every TTL/2 | watch the ConfigMap |
//! | [`Mode::Pod`] (the Pod-label layout of go-micro's Kubernetes registry) | labels + an annotation on the registrar's own Pod (`pod.rs`) | the Pod is `Running`, not terminating and `Ready` ([`KubernetesConfig::readiness`]) | watch Pods by label selector |
//! | [`Mode::EndpointSlice`] | none per instance: the app's methods in an annotation of its Service (`endpointslice.rs`) | the endpoint is `ready` in the Service's EndpointSlices (the kubelet's readiness) | watch the env's Services and the namespace's EndpointSlices, joined |
//!
//! Readiness ([`KubernetesConfig::readiness`]): pod mode counts only `Ready`
//! Pods by default; lease and ConfigMap modes follow the registrar's
//! heartbeat and drain mark, and with `readiness=true` also hide the records
//! of Pods that are not `Ready` or are terminating (joined by Pod IP,
//! `ready.rs`; needs `list` + `watch` on `pods`).
//!
//! Every mode discovers through `kube::runtime::watcher` (`watch.rs`): an
//! initial list, then a watch, relisting on 410 Gone and backing off while
//! the API server is down (discovery keeps its last view meanwhile). Errors
//! map to core's typed errors in `error.rs`, which also holds the size limits
//! ([`MAX_CONFIGMAP_BYTES`], [`MAX_ANNOTATIONS_BYTES`]).
//!
//! Kubernetes keeps a crashed instance's ConfigMap entry or Lease. Core hides
//! it after one heartbeat window and, unless [`KubernetesConfig::reap`] is
//! off, a discoverer deletes it after [`KubernetesConfig::reap_after`]
//! windows without a heartbeat (the reader's `StoreReader::reaper`
//! capability, driven by core's expiry clock), always with a precondition
//! that cannot delete a live record: the entry's exact value (a JSON patch
//! `test`), the Lease's `resourceVersion`.
//!
//! The registry namespace (`ServiceConf::namespace`) is the Kubernetes
//! namespace, unless [`KubernetesConfig::namespace`] overrides it. Labels and
//! annotations live under [`DEFAULT_PREFIX`] (`registry.fireflycore.io`) unless
//! [`KubernetesConfig::prefix`] says otherwise (go-micro's Pod registry used `micro.mu`).
//! The minimal RBAC Role of each mode is in `deploy/rbac/<mode>.yaml`.
//!
//! # Tests
//!
//! `tests/conformance.rs` runs the shared conformance suite once per mode
//! against a real kube-apiserver + etcd started on loopback
//! (`registry_testenv::kube::KubeServer`; binaries from
//! `scripts/install-test-servers.sh`) — `endpointslice` mode needs a cluster
//! with controllers and a kubelet, so its suite runs through `KUBECONFIG` on
//! the real node (`tests/node.rs`) and is reported not applicable on the bare
//! API server, where `tests/endpointslice.rs` checks what the mode writes and
//! how it reads hand-written slices; `tests/rbac.rs` checks each mode with
//! exactly its Role; `tests/errors.rs` the typed errors; `tests/scale.rs`
//! (ignored by default) 2,000 Leases and 100 concurrent ConfigMap writers.
//! Against your own cluster (e.g. kind), every test works in fresh namespaces
//! it deletes afterwards:
//!
//! ```text
//! KUBECONFIG=$HOME/.kube/config cargo test -p registry-kubernetes --test conformance -- --skip outage_then_recovery
//! ```
//!
//! (`outage_then_recovery` stops and restarts kube-apiserver, which only the
//! local test server allows.)
//!
//! ```no_run
//! # async fn demo() -> registry_core::Result<()> {
//! use registry_core::{Discoverer, Meta, Registrar, ServiceConf};
//! use registry_kubernetes::{KubernetesConfig, KubernetesStore, Mode};
//!
//! let store = KubernetesStore::connect(KubernetesConfig::new(Mode::Lease)).await?;
//! let registrar = Registrar::new(&store, Meta::new("prod", "greeter", "v1"), ServiceConf::default())?;
//! let discoverer = Discoverer::new(&store, "prod", ServiceConf::default())?;
//! # Ok(()) }
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]
#![forbid(unsafe_code)]

mod config;
mod configmap;
mod encode;
mod endpointslice;
mod error;
mod lease;
mod operator;
mod pod;
mod ready;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client};
use registry_core::store::{BackendSpec, Reap, Scope, Store, StoreReader, StoreWriter};
use registry_core::{Error, Result};

pub use config::{AddressMode, ClusterSource, DEFAULT_CLUSTER_DOMAIN, DEFAULT_PREFIX, KubernetesConfig, Mode};
pub use encode::{Names, configmap_key, configmap_name, lease_name};
pub use endpointslice::{DEFAULT_PORT_NAME, Published, SERVICE_NAME_LABEL, instance_id};
pub use error::{MAX_ANNOTATIONS_BYTES, MAX_CONFIGMAP_BYTES};

use crate::configmap::{ConfigMapLayout, ConfigMapReaper, ConfigMapWriter, EntryBatch};
use crate::error::{Call, KIND};
use crate::lease::{LeaseLayout, LeaseReaper, LeaseWriter};
use crate::pod::{PodLayout, PodWriter};
use crate::watch::WatchReader;

/// How long [`KubernetesStore::connect`] waits for the API server to answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The Kubernetes backend. Cheap to clone; clones share the client.
#[derive(Clone)]
pub struct KubernetesStore {
    client: Client,
    config: Arc<KubernetesConfig>,
    names: Names,
    /// ConfigMap entry writers shared by this store's registrars, by namespace and name.
    batches: Arc<Mutex<Batches>>,
}

/// ConfigMap entry writers by (Kubernetes namespace, ConfigMap name).
type Batches = HashMap<(String, String), Arc<EntryBatch>>;

impl std::fmt::Debug for KubernetesStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesStore").field("config", &self.config).finish_non_exhaustive()
    }
}

impl KubernetesStore {
    /// Builds a client from `config` (kubeconfig, context, or in-cluster
    /// service account) and checks that the API server answers.
    ///
    /// Errors: `InvalidConfig` for a bad configuration or kubeconfig,
    /// `BackendUnavailable` when the API server cannot be reached within
    /// [`CONNECT_TIMEOUT`], `PermissionDenied` when it refuses the credentials.
    pub async fn connect(config: KubernetesConfig) -> Result<Self> {
        config.validate()?;
        let options = KubeConfigOptions { context: config.context.clone(), ..KubeConfigOptions::default() };
        let invalid = |e: &dyn std::fmt::Display| Error::invalid("kubernetes.kubeconfig", e.to_string());
        let client_config = match &config.cluster {
            ClusterSource::Infer if config.context.is_none() => kube::Config::infer().await.map_err(|e| invalid(&e))?,
            ClusterSource::Infer => kube::Config::from_kubeconfig(&options).await.map_err(|e| invalid(&e))?,
            ClusterSource::Kubeconfig(path) => {
                let kubeconfig = Kubeconfig::read_from(path).map_err(|e| invalid(&e))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| invalid(&e))?
            }
            ClusterSource::InCluster => kube::Config::incluster().map_err(|e| invalid(&e))?,
        };
        let client = Client::try_from(client_config).map_err(|e| error::map(e, Call::new("connect", "cluster", "")))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(error::map(e, Call::new("get", "version", ""))),
            Err(_) => {
                return Err(Error::unavailable(
                    KIND,
                    format!("the API server did not answer within {CONNECT_TIMEOUT:?}"),
                ));
            }
        }
        Self::from_client(client, config)
    }

    /// A store over an existing client (no round trip).
    pub fn from_client(client: Client, config: KubernetesConfig) -> Result<Self> {
        config.validate()?;
        let names = Names::new(config.prefix.clone());
        Ok(Self { client, config: Arc::new(config), names, batches: Arc::default() })
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The configuration.
    pub fn config(&self) -> &KubernetesConfig {
        &self.config
    }

    /// The same store, sharing the client, for a registrar running in Pod
    /// `pod_name` (a sidecar registering for another Pod, tests).
    pub fn with_pod_name(&self, pod_name: impl Into<String>) -> Self {
        let config = KubernetesConfig { pod_name: Some(pod_name.into()), ..(*self.config).clone() };
        Self {
            client: self.client.clone(),
            config: Arc::new(config),
            names: self.names.clone(),
            batches: Arc::clone(&self.batches),
        }
    }

    fn api<K>(&self, scope: &Scope) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), self.config.namespace_for(&scope.namespace))
    }

    /// The shared entry writer of the ConfigMap of `scope`.
    fn batch(&self, scope: &Scope) -> Result<Arc<EntryBatch>> {
        let namespace = self.config.namespace_for(&scope.namespace).to_owned();
        let name = encode::configmap_name(&scope.env);
        let mut batches = self.batches.lock().map_err(|_| Error::backend(KIND, "batch lock poisoned"))?;
        let batch = batches.entry((namespace, name.clone())).or_insert_with(|| {
            Arc::new(EntryBatch::new(
                self.api::<ConfigMap>(scope),
                name,
                &self.config.field_manager,
                self.config.max_conflict_retries,
            ))
        });
        Ok(Arc::clone(batch))
    }

    /// Declares app `app_id`'s methods on its Service for [`Mode::EndpointSlice`]
    /// discovery in `scope` (what `registryctl publish` does from a
    /// descriptor set): merges `methods` into the Service's method list,
    /// or replaces the list when `replace` is set, and writes `version`
    /// when given. The Service is [`KubernetesConfig::service`], else the
    /// app id; it must exist. Idempotent: a Service that already says all
    /// of it is not written.
    ///
    /// Errors: `InvalidConfig` when the Service is missing or labelled for
    /// another env or app, `TooLarge` past Kubernetes' 256 KiB of
    /// annotations, `Conflict` after [`KubernetesConfig::max_conflict_retries`]
    /// concurrent writes, `PermissionDenied` without `get` + `patch` on services.
    pub async fn publish(
        &self,
        scope: &Scope,
        app_id: &str,
        methods: &[String],
        version: Option<&str>,
        replace: bool,
    ) -> Result<Published> {
        self.validate(scope, Some(app_id))?;
        let service = self.service_name(app_id)?;
        let declaration = endpointslice::Declaration {
            env: &scope.env,
            app_id,
            methods: methods.iter().map(String::as_str).collect(),
            version,
            weight: None,
            replace,
        };
        let api = self.api::<Service>(scope);
        let c = &self.config;
        endpointslice::declare(&api, &self.names, &service, &declaration, &c.field_manager, c.max_conflict_retries)
            .await
    }

    /// The Service of app `app_id` in [`Mode::EndpointSlice`].
    fn service_name(&self, app_id: &str) -> Result<String> {
        if let Some(service) = &self.config.service {
            return Ok(service.clone());
        }
        let dns1035 = app_id.starts_with(|c: char| c.is_ascii_lowercase());
        encode::validate_dns_label("meta.app_id", app_id)
            .ok()
            .filter(|_| dns1035)
            .map(|_| app_id.to_owned())
            .ok_or_else(|| {
                Error::invalid(
                    "meta.app_id",
                    format!(
                        "`{app_id}` is not a Service name (lowercase letters, digits and `-`, starting with a letter, \
                         at most 63): set the Service with `service=` (KubernetesConfig::service)"
                    ),
                )
            })
    }

    /// The reaper of long-dead records, unless [`KubernetesConfig::reap`] is off.
    fn reaper(&self, reaper: impl FnOnce(u32) -> Arc<dyn Reap>) -> Option<Arc<dyn Reap>> {
        self.config.reap.then(|| reaper(self.config.reap_after))
    }
}

/// The Kubernetes backend: `kubernetes://[?mode=…]` (also `k8s://`) URLs
/// ([`KubernetesConfig::from_url`]).
pub const BACKEND: BackendSpec = BackendSpec {
    name: KIND,
    schemes: &["kubernetes", "k8s"],
    connect: |url| {
        Box::pin(async move {
            Ok(Arc::new(KubernetesStore::connect(url.parse::<KubernetesConfig>()?).await?) as Arc<dyn Store>)
        })
    },
};

impl Store for KubernetesStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    /// The API server's rules: the namespace a DNS label, env and app id label
    /// values (object names are derived from them); in pod mode the app id
    /// must also fit a label key.
    fn validate(&self, scope: &Scope, app_id: Option<&str>) -> Result<()> {
        let (field, namespace) = self.config.namespace_source(&scope.namespace);
        encode::validate_names(field, namespace, &scope.env, app_id)?;
        match (self.config.mode, app_id) {
            (Mode::Pod, Some(app_id)) => {
                self.names.selector_label(app_id)?;
            }
            (Mode::EndpointSlice, Some(app_id)) => {
                self.service_name(app_id)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn writer(&self, scope: &Scope) -> Result<Arc<dyn StoreWriter>> {
        let c = &self.config;
        let names = self.names.clone();
        let env = scope.env.clone();
        Ok(match c.mode {
            Mode::Lease => Arc::new(LeaseWriter::new(
                self.api::<Lease>(scope),
                self.api::<Pod>(scope),
                names,
                env,
                c.field_manager.clone(),
                c.pod_name.clone(),
            )),
            Mode::ConfigMap => Arc::new(ConfigMapWriter::new(
                self.api::<ConfigMap>(scope),
                self.batch(scope)?,
                names,
                env,
                c.field_manager.clone(),
                c.max_conflict_retries,
            )),
            Mode::Pod => {
                let pod_name = c.pod_name.clone().ok_or_else(|| {
                    Error::invalid(
                        "kubernetes.pod_name",
                        "pod mode registers on the registrar's own Pod: set POD_NAME (downward API) or KubernetesConfig::pod_name",
                    )
                })?;
                Arc::new(PodWriter::new(
                    self.api::<Pod>(scope),
                    names,
                    env,
                    pod_name,
                    c.field_manager.clone(),
                    c.max_conflict_retries,
                ))
            }
            Mode::EndpointSlice => Arc::new(endpointslice::SliceWriter::new(
                self.api::<Service>(scope),
                self.api::<Pod>(scope),
                names,
                env,
                c,
            )),
        })
    }

    fn operator(&self, scope: &Scope) -> Result<Arc<dyn registry_core::operator::Operator>> {
        use crate::operator::{KubeOperator, Objects};
        self.validate(scope, None)?;
        let objects = match self.config.mode {
            Mode::Lease => Objects::Leases(self.api(scope)),
            Mode::ConfigMap => Objects::ConfigMap(self.api(scope)),
            Mode::Pod => Objects::Pods(self.api(scope)),
            Mode::EndpointSlice => {
                return Err(Error::backend(
                    KIND,
                    "endpointslice mode has no per-instance record to mark: drain an instance by its readiness \
                     (the `registered` readiness gate, which `drain()` sets) or by deleting its Pod",
                ));
            }
        };
        let c = &self.config;
        Ok(Arc::new(KubeOperator::new(
            objects,
            self.names.clone(),
            scope.env.clone(),
            &c.field_manager,
            c.max_conflict_retries,
        )))
    }

    fn reader(&self, scope: &Scope) -> Result<Arc<dyn StoreReader>> {
        let selector = self.names.selector(&scope.env);
        let reader: Arc<dyn StoreReader> = match self.config.mode {
            Mode::Lease => {
                let api = self.api::<Lease>(scope);
                let reaper = self.reaper(|after| Arc::new(LeaseReaper::new(api.clone(), after)));
                let layout = LeaseLayout::new(self.names.clone());
                Arc::new(WatchReader::new(layout, api, watcher::Config::default().labels(&selector), reaper))
            }
            Mode::ConfigMap => {
                let api = self.api::<ConfigMap>(scope);
                let reaper = self.reaper(|after| Arc::new(ConfigMapReaper::new(api.clone(), &scope.env, after)));
                let layout = ConfigMapLayout::new(&scope.env, self.names.clone());
                // By name, not by label: a ConfigMap written by the Go framework carries no labels of ours.
                let fields = format!("metadata.name={}", layout.name());
                Arc::new(WatchReader::new(layout, api, watcher::Config::default().fields(&fields), reaper))
            }
            Mode::Pod => {
                let api = self.api::<Pod>(scope);
                Arc::new(WatchReader::new(
                    PodLayout::new(self.names.clone(), self.config.honours_readiness()),
                    api,
                    watcher::Config::default().labels(&selector),
                    None,
                ))
            }
            Mode::EndpointSlice => {
                let c = &self.config;
                let view = endpointslice::View::new(
                    self.names.clone(),
                    scope.env.clone(),
                    c.namespace_for(&scope.namespace).to_owned(),
                    c.address,
                    c.cluster_domain.clone(),
                );
                return Ok(Arc::new(endpointslice::SliceReader::new(view, self.api(scope), self.api(scope))));
            }
        };
        // Pod mode reads readiness from the Pods it watches; the others join with the namespace's Pods.
        if self.config.mode != Mode::Pod && self.config.honours_readiness() {
            return Ok(Arc::new(ready::ReadyFilter::new(reader, self.api::<Pod>(scope))));
        }
        Ok(reader)
    }
}
