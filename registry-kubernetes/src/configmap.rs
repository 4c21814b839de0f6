//! `configmap` mode (the Go framework's ConfigMap layout): one ConfigMap `ff-registry-<env>` per env,
//! one data entry per instance.
//!
//! - key `<app_id>.<lease_id>` ([`crate::encode::configmap_key`]; the seed's
//!   `<app_id>/<lease_id>` is rejected by a real API server), value = node JSON;
//! - writes are JSON **merge patches of the single key**: the API server
//!   applies them under its own optimistic-concurrency loop on the latest
//!   object, so concurrent writers never drop each other's entries and never
//!   conflict (100 concurrent installs all land). The only read-modify-write
//!   is the create race (two writers creating the ConfigMap at once: the loser
//!   gets 409 AlreadyExists and patches instead), retried up to
//!   `max_conflict_retries` times, then `Conflict`;
//! - writers of one process that share a [`crate::KubernetesStore`]
//!   **coalesce** their entry writes per ConfigMap (`EntryBatch`): while one
//!   merge patch is in flight, the entries queued behind it go out together in
//!   the next one. Every write of one ConfigMap is serialised by the API server
//!   (each is a full rewrite of the object, and concurrent ones conflict and are
//!   retried inside the server), so 50 registrars of one process installing at
//!   once cost two or three writes instead of fifty;
//! - when the API server gives up on its own retries and answers 409 Conflict
//!   (many processes writing one ConfigMap at once), the entry write is
//!   retried after a backoff with jitter ([`CONFLICT_BACKOFF_MIN`], doubling
//!   up to [`CONFLICT_BACKOFF_MAX`]), up to `max_conflict_retries` times, so
//!   a hundred processes installing or uninstalling at once spread out
//!   instead of retrying in lockstep;
//! - before a write would push the ConfigMap past Kubernetes' 1 MiB limit
//!   (the sum of the values' lengths, keys not counted: the rule the API
//!   server validates, measured — a ConfigMap whose keys and values add up to
//!   1,054,720 bytes is accepted while its values stay under 1 MiB) it
//!   is refused with `TooLarge` naming the ConfigMap; the API server's own
//!   validation (422 "Too long") backs the check up under races and maps to
//!   `TooLarge` too;
//! - a heartbeat rewrites the entry with the fresh node (new `run_date` and
//!   `renewed_at_ms`): there is no server-side TTL, so a crashed instance's
//!   entry stays until a discoverer reaps it ([`ConfigMapReaper`], called by
//!   core once the entry is long dead): a JSON patch `test` of the exact value
//!   core last observed, then `remove` — a heartbeat in between changes the
//!   value, and the patch fails harmlessly.
//!
//! An operator's drain mark lives beside the entries, in the ConfigMap's
//! annotation `<prefix>/drained-by-operator` (a JSON list of entry keys,
//! written with the ConfigMap's `resourceVersion` as precondition,
//! [`crate::operator`]): the owner's merge patches of its entry never touch it.
//!
//! Discovery watches the one ConfigMap (field selector `metadata.name`, so
//! ConfigMaps written by the Go framework without our labels are seen too)
//! and diffs its entries ([`crate::watch`]); liveness is `Heartbeat` with the
//! node's own `ttl` as window and the value as stamp (an entry without `ttl`,
//! as the Go framework writes them, is hidden by the discoverer's TTL but
//! never reaped).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use registry_core::store::{Liveness, RawRecord, Reap, StoreWriter};
use registry_core::{Error, Result, ServiceNode};
use tokio::sync::oneshot;

use crate::encode::{Names, configmap_key, configmap_name, parse_configmap_key, pointer_segment};
use crate::error::{Call, KIND, MAX_CONFIGMAP_BYTES, is_conflict, is_not_found, map, status_code};
use crate::watch::{Item, Layout};

const RESOURCE: &str = "configmaps";
/// First delay before an entry write retries after a 409 Conflict.
pub(crate) const CONFLICT_BACKOFF_MIN: Duration = Duration::from_millis(20);
/// Longest delay between an entry write's conflict retries.
pub(crate) const CONFLICT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The size Kubernetes counts for a ConfigMap's data: the values' lengths
/// (`data` and `binaryData`); keys do not count.
fn data_size(cm: &ConfigMap) -> usize {
    let data: usize = cm.data.iter().flatten().map(|(_, v)| v.len()).sum();
    let binary: usize = cm.binary_data.iter().flatten().map(|(_, v)| v.0.len()).sum();
    data + binary
}

/// Why a coalesced entry write failed.
#[derive(Debug)]
pub(crate) enum EntryError {
    /// The ConfigMap does not exist.
    NotFound,
    /// Anything else, mapped.
    Other(Error),
}

type Answer = std::result::Result<(), EntryError>;

struct Queued {
    key: String,
    value: Option<String>,
    answer: oneshot::Sender<Answer>,
}

/// Coalesces the entry writes of one process to one ConfigMap: one merge
/// patch in flight at a time, carrying every entry queued behind the last one.
pub(crate) struct EntryBatch {
    api: Api<ConfigMap>,
    name: String,
    params: PatchParams,
    /// Attempts of one merge patch that meets 409 Conflicts.
    max_attempts: u32,
    queue: Mutex<Vec<Queued>>,
    flush: tokio::sync::Mutex<()>,
}

impl EntryBatch {
    /// A batch for ConfigMap `name` in `api`'s namespace; a patch meeting
    /// conflicts is tried up to `max_conflict_retries` times.
    pub(crate) fn new(api: Api<ConfigMap>, name: String, field_manager: &str, max_conflict_retries: u32) -> Self {
        let params = PatchParams { field_manager: Some(field_manager.to_owned()), ..PatchParams::default() };
        Self {
            api,
            name,
            params,
            max_attempts: max_conflict_retries.max(1),
            queue: Mutex::new(Vec::new()),
            flush: tokio::sync::Mutex::new(()),
        }
    }

    fn enqueue(&self, key: &str, value: Option<&str>) -> oneshot::Receiver<Answer> {
        let (answer, receiver) = oneshot::channel();
        let item = Queued { key: key.to_owned(), value: value.map(str::to_owned), answer };
        if let Ok(mut queue) = self.queue.lock() {
            queue.push(item);
        }
        receiver
    }

    /// Sets `data[key] = value` (removes it for `None`), possibly together
    /// with other queued entries. Cancellation-safe: an entry whose flusher
    /// was cancelled is queued again.
    pub(crate) async fn write(&self, key: &str, value: Option<&str>) -> Answer {
        let mut receiver = self.enqueue(key, value);
        loop {
            let _turn = self.flush.lock().await;
            match receiver.try_recv() {
                Ok(answer) => return answer,
                Err(oneshot::error::TryRecvError::Closed) => receiver = self.enqueue(key, value),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch = self.queue.lock().map(|mut q| std::mem::take(&mut *q)).unwrap_or_default();
            self.send(batch).await;
            if let Ok(answer) = receiver.try_recv() {
                return answer;
            }
        }
    }

    async fn patch(&self, entries: &[&Queued]) -> Answer {
        let data: serde_json::Map<String, serde_json::Value> =
            entries.iter().map(|q| (q.key.clone(), q.value.clone().into())).collect();
        let patch = serde_json::json!({ "data": data });
        let backoff = ExponentialBuilder::new()
            .with_min_delay(CONFLICT_BACKOFF_MIN)
            .with_max_delay(CONFLICT_BACKOFF_MAX)
            .with_jitter()
            .with_max_times(usize::try_from(self.max_attempts - 1).unwrap_or(usize::MAX));
        let patch = Patch::Merge(&patch);
        let attempt = || self.api.patch(&self.name, &self.params, &patch);
        let patched = attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(is_conflict)
            .notify(|_, delay| {
                tracing::debug!(configmap = %self.name, ?delay, "entry write met a conflict; retrying after a backoff");
            })
            .await;
        match patched {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(EntryError::NotFound),
            Err(e) => Err(EntryError::Other(map(e, Call::new("patch", RESOURCE, &self.name)))),
        }
    }

    async fn send(&self, batch: Vec<Queued>) {
        if batch.is_empty() {
            return;
        }
        // Later writes of a key win within a batch.
        let refs: Vec<&Queued> = batch.iter().collect();
        let answer = self.patch(&refs).await;
        if batch.len() > 1 && matches!(answer, Err(EntryError::Other(Error::TooLarge { .. }))) {
            // Together too large: find out which entries fit on their own.
            for item in batch {
                let answer = self.patch(&[&item]).await;
                let _ = item.answer.send(answer);
            }
            return;
        }
        for item in batch {
            let copy = match &answer {
                Ok(()) => Ok(()),
                Err(EntryError::NotFound) => Err(EntryError::NotFound),
                Err(EntryError::Other(e)) => Err(EntryError::Other(e.duplicate())),
            };
            // A waiter that gave up (timed out) does not need its answer.
            let _ = item.answer.send(copy);
        }
    }
}

/// Writes one instance's entry in `ff-registry-<env>`.
pub(crate) struct ConfigMapWriter {
    api: Api<ConfigMap>,
    batch: Arc<EntryBatch>,
    names: Names,
    env: String,
    name: String,
    field_manager: String,
    max_attempts: u32,
}

impl ConfigMapWriter {
    /// A writer for env `env`, in `api`'s namespace, writing entries through `batch`.
    pub(crate) fn new(
        api: Api<ConfigMap>,
        batch: Arc<EntryBatch>,
        names: Names,
        env: String,
        field_manager: String,
        max_conflict_retries: u32,
    ) -> Self {
        let name = configmap_name(&env);
        Self { api, batch, names, env, name, field_manager, max_attempts: max_conflict_retries.max(1) }
    }

    fn too_large(&self, size: usize) -> Error {
        Error::TooLarge {
            what: format!(
                "ConfigMap `{}` in namespace `{}` (Kubernetes' 1 MiB limit; use lease mode for large fleets)",
                self.name,
                self.api_namespace()
            ),
            size,
            limit: MAX_CONFIGMAP_BYTES,
        }
    }

    fn api_namespace(&self) -> String {
        // `Api` does not expose its namespace; the resource URL ends in `/namespaces/<ns>/configmaps`.
        let url = self.api.resource_url();
        url.split('/').skip_while(|s| *s != "namespaces").nth(1).unwrap_or_default().to_owned()
    }

    fn new_configmap(&self, key: &str, value: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(BTreeMap::from([
                    (self.names.env_label(), self.env.clone()),
                    ("app.kubernetes.io/managed-by".to_owned(), "registry".to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(key.to_owned(), value.to_owned())])),
            ..ConfigMap::default()
        }
    }
}

#[async_trait]
impl StoreWriter for ConfigMapWriter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn grant(&self, _ttl: Duration) -> Result<i64> {
        Ok(registry_core::store::next_instance_id())
    }

    async fn put(&self, node: &ServiceNode, _ttl: Duration) -> Result<()> {
        let key = configmap_key(&node.meta.app_id, node.lease_id)?;
        let value = node.to_json()?;
        if value.len() > MAX_CONFIGMAP_BYTES {
            return Err(self.too_large(value.len()));
        }
        for _ in 0..self.max_attempts {
            let current =
                self.api.get_opt(&self.name).await.map_err(|e| map(e, Call::new("get", RESOURCE, &self.name)))?;
            match current {
                None => {
                    let cm = self.new_configmap(&key, &value);
                    let params =
                        PostParams { field_manager: Some(self.field_manager.clone()), ..PostParams::default() };
                    match self.api.create(&params, &cm).await {
                        Ok(_) => return Ok(()),
                        // Another writer created it first: patch into theirs.
                        Err(e) if is_conflict(&e) => continue,
                        Err(e) => return Err(map(e, Call::new("create", RESOURCE, &self.name))),
                    }
                }
                Some(cm) => {
                    let old = cm.data.as_ref().and_then(|d| d.get(&key)).map_or(0, String::len);
                    let size = data_size(&cm) - old + value.len();
                    if size > MAX_CONFIGMAP_BYTES {
                        return Err(self.too_large(size));
                    }
                    match self.batch.write(&key, Some(&value)).await {
                        Ok(()) => return Ok(()),
                        // Deleted since the read: create it again.
                        Err(EntryError::NotFound) | Err(EntryError::Other(Error::Conflict { .. })) => continue,
                        Err(EntryError::Other(Error::TooLarge { .. })) => return Err(self.too_large(size)),
                        Err(EntryError::Other(e)) => return Err(e),
                    }
                }
            }
        }
        Err(Error::Conflict { backend: KIND, what: format!("ConfigMap `{}`", self.name), attempts: self.max_attempts })
    }

    async fn renew(&self, node: &ServiceNode, _ttl: Duration) -> Result<()> {
        let key = configmap_key(&node.meta.app_id, node.lease_id)?;
        let value = node.to_json()?;
        match self.batch.write(&key, Some(&value)).await {
            Ok(()) => Ok(()),
            Err(EntryError::NotFound) => Err(Error::LeaseExpired { backend: KIND }),
            Err(EntryError::Other(e)) => Err(e),
        }
    }

    async fn remove(&self, node: &ServiceNode) -> Result<()> {
        let key = configmap_key(&node.meta.app_id, node.lease_id)?;
        match self.batch.write(&key, None).await {
            Ok(()) | Err(EntryError::NotFound) => Ok(()),
            Err(EntryError::Other(e)) => Err(e),
        }
    }
}

/// The entries of `ff-registry-<env>` as records.
pub(crate) struct ConfigMapLayout {
    name: String,
    names: Names,
}

/// The entry keys an operator marked drained: the annotation
/// `<prefix>/drained-by-operator` on the ConfigMap, a JSON list of keys
/// (anything else reads as none).
pub(crate) fn drained_keys(cm: &ConfigMap, names: &Names) -> std::collections::BTreeSet<String> {
    cm.annotations()
        .get(&names.drained_annotation())
        .and_then(|v| serde_json::from_str::<std::collections::BTreeSet<String>>(v).ok())
        .unwrap_or_default()
}

impl ConfigMapLayout {
    /// Reads `ff-registry-<env>` (and the operator's marks under `names`' prefix).
    pub(crate) fn new(env: &str, names: Names) -> Self {
        Self { name: configmap_name(env), names }
    }

    /// The watched ConfigMap's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl Layout for ConfigMapLayout {
    type Object = ConfigMap;
    const RESOURCE: &'static str = RESOURCE;

    fn items(&self, cm: &ConfigMap) -> Vec<Item> {
        if cm.name_any() != self.name {
            return Vec::new();
        }
        let mut items = Vec::new();
        let drained = drained_keys(cm, &self.names);
        for (key, value) in cm.data.iter().flatten() {
            if let Err(reason) = parse_configmap_key(key) {
                items.push(Item::Malformed { key: key.clone(), reason });
                continue;
            }
            // The value is the stamp, and the exact value a reap tests for.
            let record = RawRecord::new(key.clone(), value.clone())
                .with_liveness(Liveness::Heartbeat { window: None })
                .with_drained_by_operator(drained.contains(key));
            items.push(Item::Record(record));
        }
        for key in cm.binary_data.iter().flatten().map(|(k, _)| k) {
            items.push(Item::Malformed { key: key.clone(), reason: "binaryData entry".into() });
        }
        items
    }
}

/// Deletes long-dead entries of `ff-registry-<env>`: a JSON patch whose
/// `test` operation compares the exact value core last observed before the
/// `remove`, so a renewed entry is never deleted.
pub(crate) struct ConfigMapReaper {
    api: Api<ConfigMap>,
    name: String,
    after: u32,
}

impl ConfigMapReaper {
    /// Reaps entries of `ff-registry-<env>` in `api`'s namespace after `after`
    /// heartbeat windows without a change.
    pub(crate) fn new(api: Api<ConfigMap>, env: &str, after: u32) -> Self {
        Self { api, name: configmap_name(env), after }
    }
}

#[async_trait]
impl Reap for ConfigMapReaper {
    fn reap_after(&self) -> u32 {
        self.after
    }

    async fn reap(&self, record: &RawRecord) -> Result<()> {
        let path = format!("/data/{}", pointer_segment(&record.key));
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            { "op": "test", "path": path, "value": record.value },
            { "op": "remove", "path": path },
        ]))
        .map_err(|e| Error::Encode { reason: e.to_string() })?;
        match self.api.patch(&self.name, &PatchParams::default(), &Patch::Json::<()>(patch)).await {
            Ok(_) => Ok(()),
            // The whole ConfigMap is gone, and the entry with it.
            Err(e) if is_not_found(&e) => Ok(()),
            // The `test` failed: the entry was renewed (or removed) since core saw it.
            Err(e) if status_code(&e) == Some(422) => Err(Error::Conflict {
                backend: KIND,
                what: format!("ConfigMap `{}` entry `{}`", self.name, record.key),
                attempts: 1,
            }),
            Err(e) => Err(map(e, Call::new("patch", RESOURCE, &self.name))),
        }
    }
}
