//! `pod` mode (the Pod-label layout of go-micro's Kubernetes registry): the registration lives on the registrar's own Pod.
//!
//! - labels `<prefix>/type=service`, `<prefix>/env=<env>` and
//!   `<prefix>/selector-<app_id>=service`;
//! - annotation `<prefix>/service-<app_id>` = node JSON;
//! - patched with a JSON merge patch carrying the Pod's `resourceVersion` as
//!   precondition (409 → re-read and retry), after checking that the Pod is
//!   not registered in another env and that the annotations stay under
//!   Kubernetes' 256 KiB limit;
//! - `uninstall` removes exactly this app's label and annotation (merge patch
//!   with `null`s), leaving every other label and annotation alone;
//! - an app id whose label key cannot be encoded (the name part
//!   `selector-<app_id>` is longer than 63 characters) is `InvalidConfig`.
//!
//! Liveness is the Pod itself: discovery watches Pods by label selector and
//! counts only Pods in phase `Running`, not being deleted (a terminating Pod
//! leaves at once, while its grace period runs) and — unless
//! [`KubernetesConfig::readiness`](crate::KubernetesConfig::readiness) is
//! off — `Ready` (a failing readiness probe, or a container that died and is
//! restarting, takes the Pod out until it is Ready again); a Pod that stops
//! counting deletes its records. A heartbeat reads the Pod and reports
//! `LeaseExpired` when the annotation is gone (core writes it again).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use registry_core::store::{RawRecord, StoreWriter};
use registry_core::{Error, Result, ServiceNode};

use crate::encode::{Names, TYPE_SERVICE};
use crate::error::{Call, KIND, MAX_ANNOTATIONS_BYTES, is_conflict, is_not_found, map};
use crate::watch::{Item, Layout};

const RESOURCE: &str = "pods";

/// Writes one app's registration onto the registrar's Pod.
pub(crate) struct PodWriter {
    api: Api<Pod>,
    names: Names,
    env: String,
    pod_name: String,
    field_manager: String,
    max_attempts: u32,
}

impl PodWriter {
    /// A writer for env `env` on Pod `pod_name` in `api`'s namespace.
    pub(crate) fn new(
        api: Api<Pod>,
        names: Names,
        env: String,
        pod_name: String,
        field_manager: String,
        max_conflict_retries: u32,
    ) -> Self {
        Self { api, names, env, pod_name, field_manager, max_attempts: max_conflict_retries.max(1) }
    }

    fn params(&self) -> PatchParams {
        PatchParams { field_manager: Some(self.field_manager.clone()), ..PatchParams::default() }
    }

    fn missing_pod(&self) -> Error {
        Error::invalid(
            "kubernetes.pod_name",
            format!("Pod `{}` not found (pod mode registers on the registrar's own Pod; set POD_NAME)", self.pod_name),
        )
    }
}

#[async_trait]
impl StoreWriter for PodWriter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn grant(&self, _ttl: Duration) -> Result<i64> {
        Ok(registry_core::store::next_instance_id())
    }

    async fn put(&self, node: &ServiceNode, _ttl: Duration) -> Result<()> {
        let app = &node.meta.app_id;
        let selector = self.names.selector_label(app)?;
        let annotation = self.names.service_annotation(app)?;
        let value = node.to_json()?;
        for _ in 0..self.max_attempts {
            let pod = self
                .api
                .get_opt(&self.pod_name)
                .await
                .map_err(|e| map(e, Call::new("get", RESOURCE, &self.pod_name)))?
                .ok_or_else(|| self.missing_pod())?;
            if let Some(other) = pod.labels().get(&self.names.env_label()).filter(|e| **e != self.env) {
                return Err(Error::invalid(
                    "meta.env",
                    format!("Pod `{}` is already registered in env `{other}`; one Pod serves one env", self.pod_name),
                ));
            }
            let others: usize =
                pod.annotations().iter().filter(|(k, _)| **k != annotation).map(|(k, v)| k.len() + v.len()).sum();
            let size = others + annotation.len() + value.len();
            if size > MAX_ANNOTATIONS_BYTES {
                return Err(Error::TooLarge {
                    what: format!("annotations of Pod `{}` (Kubernetes' 256 KiB limit)", self.pod_name),
                    size,
                    limit: MAX_ANNOTATIONS_BYTES,
                });
            }
            let patch = serde_json::json!({
                "metadata": {
                    "resourceVersion": pod.resource_version(),
                    "labels": BTreeMap::from([
                        (self.names.type_label(), TYPE_SERVICE),
                        (self.names.env_label(), self.env.as_str()),
                        (selector.clone(), TYPE_SERVICE),
                    ]),
                    "annotations": { annotation.as_str(): value },
                }
            });
            match self.api.patch(&self.pod_name, &self.params(), &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(()),
                Err(e) if is_conflict(&e) => continue,
                Err(e) if is_not_found(&e) => return Err(self.missing_pod()),
                Err(e) => return Err(map(e, Call::new("patch", RESOURCE, &self.pod_name))),
            }
        }
        Err(Error::Conflict { backend: KIND, what: format!("Pod `{}`", self.pod_name), attempts: self.max_attempts })
    }

    async fn renew(&self, node: &ServiceNode, _ttl: Duration) -> Result<()> {
        let annotation = self.names.service_annotation(&node.meta.app_id)?;
        let pod =
            self.api.get_opt(&self.pod_name).await.map_err(|e| map(e, Call::new("get", RESOURCE, &self.pod_name)))?;
        match pod {
            Some(pod) if pod.annotations().contains_key(&annotation) => Ok(()),
            _ => Err(Error::LeaseExpired { backend: KIND }),
        }
    }

    async fn remove(&self, node: &ServiceNode) -> Result<()> {
        let app = &node.meta.app_id;
        let patch = serde_json::json!({
            "metadata": {
                "labels": { self.names.selector_label(app)?: null },
                "annotations": {
                    self.names.service_annotation(app)?: null,
                    // An operator's drain mark of this registration goes with it.
                    self.names.pod_drained_annotation(app)?: null,
                },
            }
        });
        match self.api.patch(&self.pod_name, &self.params(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map(e, Call::new("patch", RESOURCE, &self.pod_name))),
        }
    }
}

/// The registrations on Running (and Ready) Pods as records (key `<pod>/<app_id>`).
pub(crate) struct PodLayout {
    names: Names,
    readiness: bool,
}

impl PodLayout {
    /// Reads `<prefix>/service-*` annotations; `readiness`: only of Ready Pods.
    pub(crate) fn new(names: Names, readiness: bool) -> Self {
        Self { names, readiness }
    }

    /// True when the Pod counts: phase `Running`, not being deleted and,
    /// with readiness on, not reporting `Ready` other than `True`.
    fn counts(&self, pod: &Pod) -> bool {
        let status = pod.status.as_ref();
        let running =
            pod.metadata.deletion_timestamp.is_none() && status.and_then(|s| s.phase.as_deref()) == Some("Running");
        running && (!self.readiness || ready(pod))
    }
}

/// The Pod's `Ready` condition is `True`, or the Pod reports none (status
/// written without a kubelet).
fn ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    match conditions.into_iter().flatten().find(|c| c.type_ == "Ready") {
        Some(condition) => condition.status == "True",
        None => true,
    }
}

/// The `lease_id` of a node JSON.
fn lease_id_of(node: &str) -> Option<i64> {
    serde_json::from_str::<serde_json::Value>(node).ok()?.get("lease_id")?.as_i64()
}

impl Layout for PodLayout {
    type Object = Pod;
    const RESOURCE: &'static str = RESOURCE;

    fn items(&self, pod: &Pod) -> Vec<Item> {
        if !self.counts(pod) {
            return Vec::new();
        }
        let name = pod.name_any();
        let annotations = pod.annotations();
        annotations
            .iter()
            .filter_map(|(key, value)| {
                let app = self.names.app_of_service_annotation(key)?;
                // An operator's mark names the lease id it drains (`crate::operator`).
                let marked = self
                    .names
                    .pod_drained_annotation(app)
                    .ok()
                    .and_then(|k| annotations.get(&k))
                    .is_some_and(|mark| lease_id_of(value).is_some_and(|lease| mark == &lease.to_string()));
                let record = RawRecord::new(format!("{name}/{app}"), value.clone()).with_drained_by_operator(marked);
                Some(Item::Record(record))
            })
            .collect()
    }
}
