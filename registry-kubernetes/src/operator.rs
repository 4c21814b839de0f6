//! Operator drain marks on Kubernetes, each beside the record in a field the
//! instance never writes, each written as a JSON merge patch carrying the
//! object's `resourceVersion` (409 Conflict: read again and retry):
//!
//! - `lease`: annotation `<prefix>/drained-by-operator: "true"` on the
//!   instance's Lease (deleted with the Lease);
//! - `configmap`: annotation `<prefix>/drained-by-operator` on the ConfigMap,
//!   a JSON list of the marked entry keys (keys whose entry is gone are
//!   dropped at the next operator write);
//! - `pod`: annotation `<prefix>/drained-<app_id>` on the Pod, whose value is
//!   the marked registration's lease id (a new registration on the same Pod
//!   is not marked; the instance's uninstall removes it).
//!
//! The writes use the field manager `<field_manager>-operator`.

use std::collections::BTreeSet;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use registry_core::operator::Operator;
use registry_core::{Error, Result};

use crate::Mode;
use crate::configmap::drained_keys;
use crate::encode::{Names, configmap_key, configmap_name, lease_name};
use crate::error::{Call, KIND, is_conflict, is_not_found, map};

/// Where the scope's records are.
pub(crate) enum Objects {
    Leases(Api<Lease>),
    ConfigMap(Api<ConfigMap>),
    Pods(Api<Pod>),
}

/// Operator actions on the records of one scope.
pub(crate) struct KubeOperator {
    objects: Objects,
    names: Names,
    env: String,
    params: PatchParams,
    max_attempts: u32,
}

impl KubeOperator {
    pub(crate) fn new(objects: Objects, names: Names, env: String, field_manager: &str, max_attempts: u32) -> Self {
        let params = PatchParams { field_manager: Some(format!("{field_manager}-operator")), ..PatchParams::default() };
        Self { objects, names, env, params, max_attempts: max_attempts.max(1) }
    }

    /// The mode these objects belong to (for messages).
    fn mode(&self) -> Mode {
        match self.objects {
            Objects::Leases(_) => Mode::Lease,
            Objects::ConfigMap(_) => Mode::ConfigMap,
            Objects::Pods(_) => Mode::Pod,
        }
    }
}

/// The merge patch of one annotation (`None` removes it) with `version` as precondition.
fn annotation_patch(version: Option<String>, key: &str, value: Option<String>) -> serde_json::Value {
    serde_json::json!({ "metadata": { "resourceVersion": version, "annotations": { key: value } } })
}

/// What one attempt found.
enum Step {
    Done,
    Retry,
}

impl KubeOperator {
    async fn patch<K>(&self, api: &Api<K>, resource: &'static str, name: &str, patch: serde_json::Value) -> Result<Step>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        match api.patch(name, &self.params, &Patch::Merge(&patch)).await {
            Ok(_) => Ok(Step::Done),
            Err(e) if is_conflict(&e) => Ok(Step::Retry),
            Err(e) if is_not_found(&e) => Ok(Step::Retry),
            Err(e) => Err(map(e, Call::new("patch", resource, name))),
        }
    }

    async fn lease(&self, api: &Api<Lease>, app_id: &str, lease_id: i64, drained: bool) -> Result<Option<Step>> {
        let name = lease_name(&self.env, app_id, lease_id);
        let Some(lease) = api.get_opt(&name).await.map_err(|e| map(e, Call::new("get", "leases", &name)))? else {
            return Ok(None);
        };
        if lease.labels().get(&self.names.app_label()).map(String::as_str) != Some(app_id) {
            return Ok(None);
        }
        let key = self.names.drained_annotation();
        if lease.annotations().get(&key).is_some_and(|v| v == "true") == drained {
            return Ok(Some(Step::Done));
        }
        let patch = annotation_patch(lease.resource_version(), &key, drained.then(|| "true".to_owned()));
        self.patch(api, "leases", &name, patch).await.map(Some)
    }

    async fn configmap(
        &self,
        api: &Api<ConfigMap>,
        app_id: &str,
        lease_id: i64,
        drained: bool,
    ) -> Result<Option<Step>> {
        let name = configmap_name(&self.env);
        let entry = configmap_key(app_id, lease_id)?;
        let Some(cm) = api.get_opt(&name).await.map_err(|e| map(e, Call::new("get", "configmaps", &name)))? else {
            return Ok(None);
        };
        let data = cm.data.clone().unwrap_or_default();
        if !data.contains_key(&entry) {
            return Ok(None);
        }
        let before = drained_keys(&cm, &self.names);
        let mut after: BTreeSet<String> = before.iter().filter(|k| data.contains_key(*k)).cloned().collect();
        if drained {
            after.insert(entry);
        } else {
            after.remove(&entry);
        }
        if after == before {
            return Ok(Some(Step::Done));
        }
        let value = if after.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&after).map_err(|e| Error::Encode { reason: e.to_string() })?)
        };
        let patch = annotation_patch(cm.resource_version(), &self.names.drained_annotation(), value);
        self.patch(api, "configmaps", &name, patch).await.map(Some)
    }

    async fn pod(&self, api: &Api<Pod>, app_id: &str, lease_id: i64, drained: bool) -> Result<Option<Step>> {
        let selector = format!("{},{}=service", self.names.selector(&self.env), self.names.selector_label(app_id)?);
        let pods = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| map(e, Call::new("list", "pods", &selector)))?;
        let service = self.names.service_annotation(app_id)?;
        let lease_of = |pod: &Pod| {
            let node = pod.annotations().get(&service)?;
            serde_json::from_str::<serde_json::Value>(node).ok()?.get("lease_id")?.as_i64()
        };
        let Some(pod) = pods.items.into_iter().find(|p| lease_of(p) == Some(lease_id)) else { return Ok(None) };
        let key = self.names.pod_drained_annotation(app_id)?;
        let mark = lease_id.to_string();
        if (pod.annotations().get(&key) == Some(&mark)) == drained {
            return Ok(Some(Step::Done));
        }
        let name = pod.name_any();
        let patch = annotation_patch(pod.resource_version(), &key, drained.then_some(mark));
        self.patch(api, "pods", &name, patch).await.map(Some)
    }
}

#[async_trait]
impl Operator for KubeOperator {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn set_drained(&self, app_id: &str, lease_id: i64, drained: bool) -> Result<()> {
        for _ in 0..self.max_attempts {
            let step = match &self.objects {
                Objects::Leases(api) => self.lease(api, app_id, lease_id, drained).await?,
                Objects::ConfigMap(api) => self.configmap(api, app_id, lease_id, drained).await?,
                Objects::Pods(api) => self.pod(api, app_id, lease_id, drained).await?,
            };
            match step {
                None => return Err(Error::InstanceNotFound { app_id: app_id.to_owned(), lease_id }),
                Some(Step::Done) => {
                    tracing::info!(app_id, lease_id, drained, mode = ?self.mode(), "operator mark written");
                    return Ok(());
                }
                Some(Step::Retry) => {}
            }
        }
        Err(Error::Conflict {
            backend: KIND,
            what: format!("the {:?}-mode record of {app_id}/{lease_id}", self.mode()),
            attempts: self.max_attempts,
        })
    }
}
