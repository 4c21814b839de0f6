//! `lease` mode (the default): one `coordination.k8s.io/v1` Lease per instance.
//!
//! - name `<env>.<app slug>.<lease id>` ([`crate::encode::lease_name`]);
//! - labels `<prefix>/type=service`, `<prefix>/env=<env>`, `<prefix>/app=<app_id>`;
//! - annotation `<prefix>/node` = node JSON; an operator's drain mark is the
//!   annotation `<prefix>/drained-by-operator: "true"` ([`crate::operator`]),
//!   which the owner's apply and heartbeat patches never touch;
//! - `spec.holderIdentity` = the Pod name (or `<app_id>/<lease_id>`),
//!   `spec.leaseDurationSeconds` = TTL, `spec.renewTime` refreshed every TTL/2;
//! - an ownerReference to the registrar's Pod when its name is known and the
//!   Pod exists, so Kubernetes garbage-collects the Lease with the Pod.
//!
//! Every instance writes only its own object: no write contention, which is
//! what lets this mode carry large fleets. `put` is a server-side apply
//! (create or update in one request); a heartbeat is a merge patch of
//! `renewTime` (404 → `LeaseExpired`, and core re-creates the Lease).
//!
//! Discovery watches Leases by the label selector `<prefix>/type=service,<prefix>/env=<env>`;
//! a record's liveness is `Heartbeat { window: leaseDurationSeconds }` with
//! `renewTime` as stamp, judged on the discoverer's own clock (skew-free).
//! The record carries the Lease's `resourceVersion`: a Lease long dead is
//! deleted by a discoverer ([`LeaseReaper`], called by core) with that
//! version as precondition, so a Lease renewed in the meantime is kept.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};
use registry_core::store::{Liveness, RawRecord, Reap, StoreWriter};
use registry_core::{Error, Result, ServiceNode};
use tokio::sync::OnceCell;

use crate::encode::{Names, TYPE_SERVICE, lease_name};
use crate::error::{Call, KIND, MAX_ANNOTATIONS_BYTES, is_not_found, map};
use crate::watch::{Item, Layout};

const RESOURCE: &str = "leases";

/// Writes one instance's Lease.
pub(crate) struct LeaseWriter {
    api: Api<Lease>,
    pods: Api<Pod>,
    names: Names,
    env: String,
    field_manager: String,
    pod_name: Option<String>,
    owner: OnceCell<Option<OwnerReference>>,
}

impl LeaseWriter {
    /// A writer in `env`, with Leases in `api`'s namespace and the Pod looked up in `pods`.
    pub(crate) fn new(
        api: Api<Lease>,
        pods: Api<Pod>,
        names: Names,
        env: String,
        field_manager: String,
        pod_name: Option<String>,
    ) -> Self {
        Self { api, pods, names, env, field_manager, pod_name, owner: OnceCell::new() }
    }

    /// The ownerReference to the registrar's Pod, looked up once. A missing
    /// Pod, or no permission to read it, means no owner (logged); an
    /// unreachable server is an error (the caller retries).
    async fn owner(&self) -> Result<Option<OwnerReference>> {
        let Some(pod_name) = &self.pod_name else { return Ok(None) };
        self.owner
            .get_or_try_init(|| async {
                match self.pods.get_opt(pod_name).await {
                    Ok(Some(pod)) => Ok(pod.metadata.uid.clone().map(|uid| OwnerReference {
                        api_version: "v1".into(),
                        kind: "Pod".into(),
                        name: pod.name_any(),
                        uid,
                        controller: None,
                        block_owner_deletion: None,
                    })),
                    Ok(None) => {
                        tracing::debug!(pod = %pod_name, "no such Pod: the Lease gets no ownerReference");
                        Ok(None)
                    }
                    Err(e) => match map(e, Call::new("get", "pods", pod_name)) {
                        Error::PermissionDenied { message, .. } => {
                            tracing::warn!(pod = %pod_name, %message, "cannot read the own Pod: the Lease gets no ownerReference");
                            Ok(None)
                        }
                        other => Err(other),
                    },
                }
            })
            .await
            .cloned()
    }

    fn holder(&self, node: &ServiceNode) -> String {
        self.pod_name.clone().unwrap_or_else(|| format!("{}/{}", node.meta.app_id, node.lease_id))
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn ttl_seconds(ttl: Duration) -> i32 {
    i32::try_from(ttl.as_secs()).unwrap_or(i32::MAX).max(1)
}

#[async_trait]
impl StoreWriter for LeaseWriter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn grant(&self, _ttl: Duration) -> Result<i64> {
        Ok(registry_core::store::next_instance_id())
    }

    async fn put(&self, node: &ServiceNode, ttl: Duration) -> Result<()> {
        let value = node.to_json()?;
        let annotation = self.names.node_annotation();
        let size = annotation.len() + value.len();
        if size > MAX_ANNOTATIONS_BYTES {
            return Err(Error::TooLarge {
                what: "node JSON in a Lease annotation (Kubernetes' 256 KiB limit on an object's annotations)".into(),
                size,
                limit: MAX_ANNOTATIONS_BYTES,
            });
        }
        let name = lease_name(&self.env, &node.meta.app_id, node.lease_id);
        let owner = self.owner().await?;
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([
                    (self.names.type_label(), TYPE_SERVICE.to_owned()),
                    (self.names.env_label(), self.env.clone()),
                    (self.names.app_label(), node.meta.app_id.clone()),
                ])),
                annotations: Some(BTreeMap::from([(annotation, value)])),
                owner_references: owner.map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.holder(node)),
                lease_duration_seconds: Some(ttl_seconds(ttl)),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                ..LeaseSpec::default()
            }),
        };
        let params = PatchParams::apply(&self.field_manager).force();
        self.api
            .patch(&name, &params, &Patch::Apply(&lease))
            .await
            .map_err(|e| map(e, Call::new("patch", RESOURCE, &name)))?;
        Ok(())
    }

    async fn renew(&self, node: &ServiceNode, ttl: Duration) -> Result<()> {
        let name = lease_name(&self.env, &node.meta.app_id, node.lease_id);
        let patch = serde_json::json!({
            "spec": { "renewTime": now(), "leaseDurationSeconds": ttl_seconds(ttl) }
        });
        let params = PatchParams { field_manager: Some(self.field_manager.clone()), ..PatchParams::default() };
        match self.api.patch(&name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(Error::LeaseExpired { backend: KIND }),
            Err(e) => Err(map(e, Call::new("patch", RESOURCE, &name))),
        }
    }

    async fn remove(&self, node: &ServiceNode) -> Result<()> {
        let name = lease_name(&self.env, &node.meta.app_id, node.lease_id);
        match self.api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map(e, Call::new("delete", RESOURCE, &name))),
        }
    }
}

/// Leases as records.
pub(crate) struct LeaseLayout {
    names: Names,
}

impl LeaseLayout {
    /// Reads the `<prefix>/node` annotation of Leases.
    pub(crate) fn new(names: Names) -> Self {
        Self { names }
    }
}

impl Layout for LeaseLayout {
    type Object = Lease;
    const RESOURCE: &'static str = RESOURCE;

    fn items(&self, lease: &Lease) -> Vec<Item> {
        let key = lease.name_any();
        let Some(value) = lease.annotations().get(&self.names.node_annotation()) else {
            let reason = format!("Lease has no `{}` annotation", self.names.node_annotation());
            return vec![Item::Malformed { key, reason }];
        };
        let spec = lease.spec.as_ref();
        let window = spec
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let stamp = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0.to_string());
        // An operator's mark is beside the node, in an annotation the owner never writes.
        let marked = lease.annotations().get(&self.names.drained_annotation()).is_some_and(|v| v == "true");
        let mut record = RawRecord::new(key, value.clone())
            .with_liveness(Liveness::Heartbeat { window })
            .with_drained_by_operator(marked);
        record.stamp = stamp;
        record.version = lease.resource_version();
        vec![Item::Record(record)]
    }
}

/// Deletes long-dead Leases, with the `resourceVersion` core last observed
/// as precondition: a Lease renewed since is kept (409 Conflict).
pub(crate) struct LeaseReaper {
    api: Api<Lease>,
    after: u32,
}

impl LeaseReaper {
    /// Reaps Leases in `api`'s namespace after `after` heartbeat windows without a renewal.
    pub(crate) fn new(api: Api<Lease>, after: u32) -> Self {
        Self { api, after }
    }
}

#[async_trait]
impl Reap for LeaseReaper {
    fn reap_after(&self) -> u32 {
        self.after
    }

    async fn reap(&self, record: &RawRecord) -> Result<()> {
        let name = &record.key;
        // Without a version there is no precondition, and no delete.
        let Some(version) = record.version.clone() else {
            return Err(Error::backend(KIND, format!("Lease `{name}` has no resourceVersion: not deleted")));
        };
        let params = DeleteParams {
            preconditions: Some(Preconditions { resource_version: Some(version), uid: None }),
            ..DeleteParams::default()
        };
        match self.api.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // 409: the precondition failed, the Lease was renewed.
            Err(e) => Err(map(e, Call::new("delete", RESOURCE, name))),
        }
    }
}
