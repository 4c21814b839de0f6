//! Registration in this mode: declaring an app's methods on its Service
//! ([`declare`]) and the instance's readiness gate ([`SliceWriter`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use registry_core::store::StoreWriter;
use registry_core::{Error, Result, ServiceNode};

use super::*;
use crate::encode::Names;
use crate::error::{Call, KIND, MAX_ANNOTATIONS_BYTES, is_conflict, is_not_found, map};

/// What a write to a Service's annotations did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// The Service written.
    pub service: String,
    /// The method set now on the Service.
    pub methods: usize,
    /// Whether anything changed (false: the Service already said all of it).
    pub changed: bool,
}

/// What to write onto a Service.
pub(crate) struct Declaration<'a> {
    pub(crate) env: &'a str,
    pub(crate) app_id: &'a str,
    pub(crate) methods: Vec<&'a str>,
    pub(crate) version: Option<&'a str>,
    pub(crate) weight: Option<i64>,
    /// Replace the method set instead of merging into it.
    pub(crate) replace: bool,
}

/// Writes an app's declaration onto its Service (see the module docs).
pub(crate) async fn declare(
    api: &Api<Service>,
    names: &Names,
    service: &str,
    declaration: &Declaration<'_>,
    field_manager: &str,
    max_attempts: u32,
) -> Result<Published> {
    let backoff = ExponentialBuilder::new()
        .with_min_delay(CONFLICT_BACKOFF_MIN)
        .with_max_delay(CONFLICT_BACKOFF_MAX)
        .with_jitter()
        .with_max_times(usize::try_from(max_attempts.max(1) * CONFLICT_ROUNDS - 1).unwrap_or(usize::MAX));
    let attempt = || declare_once(api, names, service, declaration, field_manager);
    let result = attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e| matches!(e, Attempt::Conflict))
        .notify(|_, delay| tracing::debug!(service, ?delay, "Service write met a conflict; retrying after a backoff"))
        .await;
    match result {
        Ok(published) => Ok(published),
        Err(Attempt::Conflict) => {
            let attempts = max_attempts.max(1) * CONFLICT_ROUNDS;
            Err(Error::Conflict { backend: KIND, what: format!("Service `{service}`"), attempts })
        }
        Err(Attempt::Failed(error)) => Err(error),
    }
}

pub(super) enum Attempt {
    Conflict,
    Failed(Error),
}

pub(super) async fn declare_once(
    api: &Api<Service>,
    names: &Names,
    name: &str,
    declaration: &Declaration<'_>,
    field_manager: &str,
) -> std::result::Result<Published, Attempt> {
    let fail = Attempt::Failed;
    let service =
        api.get_opt(name).await.map_err(|e| fail(map(e, Call::new("get", SERVICES, name))))?.ok_or_else(|| {
            fail(Error::invalid(
                "kubernetes.service",
                format!(
                    "Service `{name}` not found: endpointslice mode discovers the endpoints of an existing Service; \
                     create it (selector and ports) or set `service=` to its name"
                ),
            ))
        })?;
    let labels = service.labels();
    for (label, want) in [(names.env_label(), declaration.env), (names.app_label(), declaration.app_id)] {
        if let Some(other) = labels.get(&label).filter(|v| v.as_str() != want) {
            return Err(fail(Error::invalid(
                if label == names.env_label() { "meta.env" } else { "meta.app_id" },
                format!(
                    "Service `{name}` is labelled `{label}={other}`, not `{want}`: one Service serves one app in one env"
                ),
            )));
        }
    }
    let methods_key = names.methods_annotation();
    let existing: Vec<String> = match service.annotations().get(&methods_key) {
        Some(value) if !declaration.replace => parse_methods(value)
            .map_err(|reason| {
                fail(Error::invalid(
                    "kubernetes.service",
                    format!(
                        "Service `{name}` annotation `{methods_key}`: {reason}; fix or replace it (`registryctl publish --replace`)"
                    ),
                ))
            })?
            .keys()
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    let value =
        methods_value(existing.iter().map(String::as_str).chain(declaration.methods.iter().copied())).map_err(fail)?;
    write_declaration(api, names, &service, name, declaration, value, field_manager).await
}

pub(super) async fn write_declaration(
    api: &Api<Service>,
    names: &Names,
    service: &Service,
    name: &str,
    declaration: &Declaration<'_>,
    methods: String,
    field_manager: &str,
) -> std::result::Result<Published, Attempt> {
    let mut wanted: BTreeMap<String, String> = BTreeMap::from([(names.methods_annotation(), methods.clone())]);
    if let Some(version) = declaration.version {
        wanted.insert(names.version_annotation(), version.to_owned());
    }
    if let Some(weight) = declaration.weight {
        wanted.insert(names.weight_annotation(), weight.to_string());
    }
    let labels: BTreeMap<String, &str> = BTreeMap::from([
        (names.type_label(), crate::encode::TYPE_SERVICE),
        (names.env_label(), declaration.env),
        (names.app_label(), declaration.app_id),
    ]);
    let count = parse_methods(&methods).map(|m| m.len()).unwrap_or(0);
    let annotations = service.annotations();
    let current_labels = service.labels();
    let unchanged = wanted.iter().all(|(k, v)| annotations.get(k) == Some(v))
        && labels.iter().all(|(k, v)| current_labels.get(k).map(String::as_str) == Some(*v));
    if unchanged {
        return Ok(Published { service: name.to_owned(), methods: count, changed: false });
    }
    let others: usize =
        annotations.iter().filter(|(k, _)| !wanted.contains_key(*k)).map(|(k, v)| k.len() + v.len()).sum();
    let size = others + wanted.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    if size > MAX_ANNOTATIONS_BYTES {
        return Err(Attempt::Failed(Error::TooLarge {
            what: format!("annotations of Service `{name}` (Kubernetes' 256 KiB limit)"),
            size,
            limit: MAX_ANNOTATIONS_BYTES,
        }));
    }
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": service.resource_version(),
            "labels": labels,
            "annotations": wanted,
        }
    });
    let params = PatchParams { field_manager: Some(field_manager.to_owned()), ..PatchParams::default() };
    match api.patch(name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => Ok(Published { service: name.to_owned(), methods: count, changed: true }),
        Err(e) if is_conflict(&e) => Err(Attempt::Conflict),
        Err(e) => Err(Attempt::Failed(map(e, Call::new("patch", SERVICES, name)))),
    }
}

/// What the registrar learnt about its own Pod.
#[derive(Clone, Debug, Default)]
pub(super) struct OwnPod {
    /// The Pod declares the `<prefix>/registered` readiness gate.
    gated: bool,
}

/// Registration in `endpointslice` mode (see the module docs).
pub(crate) struct SliceWriter {
    services: Api<Service>,
    pods: Api<Pod>,
    names: Names,
    env: String,
    service: Option<String>,
    pod_name: Option<String>,
    field_manager: String,
    max_attempts: u32,
    own: Mutex<Option<OwnPod>>,
}

impl SliceWriter {
    /// A writer for env `env` with the Service, Pod and retry settings of `config`.
    pub(crate) fn new(
        services: Api<Service>,
        pods: Api<Pod>,
        names: Names,
        env: String,
        config: &crate::KubernetesConfig,
    ) -> Self {
        Self {
            services,
            pods,
            names,
            env,
            service: config.service.clone(),
            pod_name: config.pod_name.clone(),
            field_manager: config.field_manager.clone(),
            max_attempts: config.max_conflict_retries.max(1),
            own: Mutex::new(None),
        }
    }

    fn gated(&self) -> bool {
        self.own.lock().ok().and_then(|o| o.as_ref().map(|o| o.gated)).unwrap_or(false)
    }

    /// Sets the `<prefix>/registered` condition of the registrar's Pod (when it has that readiness gate).
    async fn set_registered(&self, registered: bool) -> Result<()> {
        let (Some(pod), true) = (&self.pod_name, self.gated()) else { return Ok(()) };
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
        let patch = serde_json::json!({
            "status": { "conditions": [{
                "type": self.names.registered_condition(),
                "status": if registered { "True" } else { "False" },
                "reason": if registered { "Registered" } else { "Deregistered" },
                "lastTransitionTime": now,
            }] }
        });
        let params = PatchParams { field_manager: Some(self.field_manager.clone()), ..PatchParams::default() };
        match self.pods.patch_status(pod, &params, &Patch::Strategic(&patch)).await {
            Ok(_) => Ok(()),
            // The Pod is gone: so is its endpoint.
            Err(e) if is_not_found(&e) && !registered => Ok(()),
            Err(e) => Err(map(e, Call::new("patch", "pods/status", pod))),
        }
    }
}

#[async_trait]
impl StoreWriter for SliceWriter {
    fn kind(&self) -> &'static str {
        KIND
    }

    /// The hash of the registrar's Pod's UID ([`instance_id`]), the id
    /// discovery gives its endpoint; without a Pod (none named, or the named
    /// one does not exist: not running in a Pod), a process-unique id. An
    /// error reading the Pod (`get pods` refused, API unreachable) fails the
    /// install: the registrar must know whether its Pod declares the
    /// `registered` readiness gate.
    async fn grant(&self, _ttl: Duration) -> Result<i64> {
        let Some(name) = &self.pod_name else { return Ok(registry_core::store::next_instance_id()) };
        match self.pods.get_opt(name).await {
            Ok(Some(pod)) => {
                let gate = self.names.registered_condition();
                let gated = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.readiness_gates.as_ref())
                    .is_some_and(|gates| gates.iter().any(|g| g.condition_type == gate));
                if let Ok(mut own) = self.own.lock() {
                    *own = Some(OwnPod { gated });
                }
                Ok(pod.metadata.uid.as_deref().map(instance_id).unwrap_or_else(registry_core::store::next_instance_id))
            }
            Ok(None) => {
                tracing::warn!(pod = %name, "own Pod not found; the lease id will not match the endpoint's");
                Ok(registry_core::store::next_instance_id())
            }
            // Not a warning and a made-up id: without its own Pod the registrar
            // cannot tell whether the Pod waits on the `registered` readiness
            // gate, and a gated Pod would then never become Ready (a rollout
            // stuck with no error). Refused `get pods` is an RBAC mistake: say so.
            Err(e) => Err(map(e, Call::new("get", "pods", name))),
        }
    }

    async fn put(&self, node: &ServiceNode, _ttl: Duration) -> Result<()> {
        let service = self.service.clone().unwrap_or_else(|| node.meta.app_id.clone());
        let declaration = Declaration {
            env: &self.env,
            app_id: &node.meta.app_id,
            methods: node.served_methods().collect(),
            version: Some(&node.meta.version),
            weight: Some(node.weight),
            replace: false,
        };
        declare(&self.services, &self.names, &service, &declaration, &self.field_manager, self.max_attempts).await?;
        self.set_registered(!node.draining).await
    }

    async fn renew(&self, _node: &ServiceNode, _ttl: Duration) -> Result<()> {
        Ok(())
    }

    /// Leaves the Service's declaration (the app's other instances share
    /// it); takes the Pod out of the endpoints when it has the readiness gate.
    async fn remove(&self, _node: &ServiceNode) -> Result<()> {
        self.set_registered(false).await
    }

    fn needs_heartbeats(&self) -> bool {
        false
    }
}
