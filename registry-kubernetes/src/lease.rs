//! `lease` mode (the default): one `coordination.k8s.io/v1` Lease per instance.
//!
//! - name `<env>.<app slug>.<lease id>` ([`crate::encode::lease_name`]);
//! - labels `<prefix>/type=service`, `<prefix>/env=<env>`, `<prefix>/app=<app_id>`;
//! - annotation `<prefix>/node` = node JSON;
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

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};
use registry_core::store::{Liveness, RawRecord, StoreWriter};
use registry_core::{Error, Result, ServiceNode};
use tokio::sync::OnceCell;

use crate::encode::{Names, TYPE_SERVICE, lease_name};
use crate::error::{Call, KIND, is_not_found, map};
use crate::janitor::Target;
use crate::watch::{Item, Layout};

/// Kubernetes' limit on the total size of an object's annotations.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

const RESOURCE: &str = "leases";

/// Writes one instance's Lease.
pub struct LeaseWriter {
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
    pub fn new(
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
                what: "node JSON in a Lease annotation".into(),
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
pub struct LeaseLayout {
    api: Api<Lease>,
    names: Names,
}

impl LeaseLayout {
    /// Reads Leases through `api` (whose namespace is the scope's).
    pub fn new(api: Api<Lease>, names: Names) -> Self {
        Self { api, names }
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
        let mut record = RawRecord::new(key.clone(), value.clone()).with_liveness(Liveness::Heartbeat { window });
        record.stamp = stamp;
        let reap = window.map(|w| {
            (w, Target { object: key.clone(), key, value: String::new(), resource_version: lease.resource_version() })
        });
        vec![Item::Record { record, reap }]
    }

    fn reap(&self, target: Target) -> BoxFuture<'static, Result<()>> {
        let api = self.api.clone();
        Box::pin(async move {
            let params = DeleteParams {
                preconditions: Some(Preconditions { resource_version: target.resource_version.clone(), uid: None }),
                ..DeleteParams::default()
            };
            api.delete(&target.object, &params)
                .await
                .map(|_| ())
                .map_err(|e| map(e, Call::new("delete", RESOURCE, &target.object)))
        })
    }
}
