//! [`ReadyFilter`]: lease and ConfigMap discovery that honours the Pods'
//! `Ready` condition ([`KubernetesConfig::readiness`](crate::KubernetesConfig::readiness)).
//!
//! Lease and ConfigMap records say nothing about readiness: an instance is
//! live while it heartbeats. With the option on, a discoverer also watches
//! the Pods of its namespace and hides every record whose advertised address
//! (`network.internal`, host part) is the IP of a Pod that is not `Ready` or
//! is terminating — what a Service does with its endpoints. The join is by
//! Pod IP because a ConfigMap entry names no Pod (and a Lease's owner is
//! optional); an address no Pod has, or one several Pods share
//! (`hostNetwork`), is never hidden. Hidden records are delivered to core as
//! deletions and, once the Pod is Ready again, as the latest upsert, so core's
//! own expiry, reaping and change events work unchanged.
//!
//! The Pod watch needs `list` and `watch` on `pods` in the namespace (the
//! commented rule in `deploy/rbac/lease.yaml` and `configmap.yaml`). Without
//! them the filter logs the permission error and hides nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use registry_core::ServiceNode;
use registry_core::store::{RawRecord, Reap, StoreEvent, StoreReader};

/// Wraps a lease or ConfigMap reader (see the module docs).
pub(crate) struct ReadyFilter {
    inner: Arc<dyn StoreReader>,
    pods: Api<Pod>,
}

impl ReadyFilter {
    /// Filters `inner`'s records by the readiness of the Pods in `pods`' namespace.
    pub(crate) fn new(inner: Arc<dyn StoreReader>, pods: Api<Pod>) -> Self {
        Self { inner, pods }
    }
}

/// One input of the join.
enum Input {
    Record(StoreEvent),
    Pod(Box<Result<Event<Pod>, watcher::Error>>),
}

impl StoreReader for ReadyFilter {
    fn events(&self) -> BoxStream<'static, StoreEvent> {
        let records = self.inner.events().map(Input::Record);
        let pods = watcher::watcher(self.pods.clone(), watcher::Config::default())
            .default_backoff()
            .map(|e| Input::Pod(Box::new(e)));
        let mut join = Join::default();
        stream::select(records, pods).flat_map(move |input| stream::iter(join.apply(input))).boxed()
    }

    fn reaper(&self) -> Option<Arc<dyn Reap>> {
        self.inner.reaper()
    }

    fn max_silence(&self) -> Option<std::time::Duration> {
        self.inner.max_silence()
    }
}

/// What one Pod says about its IP.
#[derive(Clone, Debug, PartialEq)]
struct PodState {
    ip: Option<String>,
    /// `Ready` and not terminating.
    serving: bool,
}

impl PodState {
    fn of(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
        Self {
            ip: status.and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty() && !host_network),
            serving: ready && pod.metadata.deletion_timestamp.is_none(),
        }
    }
}

/// The join's state: the inner records as last seen, which of them core
/// currently has, and the Pods by name.
#[derive(Default)]
struct Join {
    records: HashMap<String, RawRecord>,
    shown: HashSet<String>,
    pods: HashMap<String, PodState>,
    /// Pods gathered during a Pod relisting.
    pending: Option<HashMap<String, PodState>>,
    denied_logged: bool,
}

/// The host part of a `host:port` address (`[v6]:port` too).
fn host(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl Join {
    /// Whether a record may be shown: no single Pod with its IP is not serving.
    fn allowed(&self, record: &RawRecord) -> bool {
        let Ok(node) = ServiceNode::from_json(&record.value) else { return true };
        let ip = host(&node.network.internal);
        let mut owners = self.pods.values().filter(|p| p.ip.as_deref() == Some(ip));
        match (owners.next(), owners.next()) {
            (Some(pod), None) => pod.serving,
            _ => true,
        }
    }

    fn apply(&mut self, input: Input) -> Vec<StoreEvent> {
        match input {
            Input::Record(event) => self.record(event),
            Input::Pod(event) => match *event {
                Ok(event) => self.pod(event),
                Err(error) => self.pod_error(error),
            },
        }
    }

    /// Logs a Pod watch failure (the first permission error as a warning); the records are untouched.
    fn pod_error(&mut self, error: watcher::Error) -> Vec<StoreEvent> {
        let error = crate::error::map_watcher(error, "pods");
        if matches!(error, registry_core::Error::PermissionDenied { .. }) && !self.denied_logged {
            self.denied_logged = true;
            tracing::warn!(%error, "readiness: cannot list/watch Pods, so Pod readiness is not honoured (grant list + watch on pods)");
        } else {
            tracing::debug!(%error, "readiness: Pod watch failed; kube-runtime retries with backoff");
        }
        Vec::new()
    }

    fn record(&mut self, event: StoreEvent) -> Vec<StoreEvent> {
        match event {
            StoreEvent::Upsert(record) => {
                let key = record.key.clone();
                let allowed = self.allowed(&record);
                self.records.insert(key.clone(), record.clone());
                if allowed {
                    self.shown.insert(key);
                    vec![StoreEvent::Upsert(record)]
                } else if self.shown.remove(&key) {
                    vec![StoreEvent::Delete { key }]
                } else {
                    Vec::new()
                }
            }
            StoreEvent::Delete { key } => {
                self.records.remove(&key);
                if self.shown.remove(&key) { vec![StoreEvent::Delete { key }] } else { Vec::new() }
            }
            StoreEvent::Reset => {
                self.records.clear();
                self.shown.clear();
                vec![StoreEvent::Reset]
            }
            other => vec![other],
        }
    }

    fn pod(&mut self, event: Event<Pod>) -> Vec<StoreEvent> {
        match event {
            Event::Init => {
                self.pending = Some(HashMap::new());
                Vec::new()
            }
            Event::InitApply(pod) => {
                self.pending.get_or_insert_with(HashMap::new).insert(pod.name_any(), PodState::of(&pod));
                Vec::new()
            }
            Event::InitDone => {
                self.pods = self.pending.take().unwrap_or_default();
                self.reevaluate()
            }
            Event::Apply(pod) => {
                let state = PodState::of(&pod);
                if self.pods.get(&pod.name_any()) == Some(&state) {
                    return Vec::new();
                }
                self.pods.insert(pod.name_any(), state);
                self.reevaluate()
            }
            Event::Delete(pod) => {
                self.pods.remove(&pod.name_any());
                self.reevaluate()
            }
        }
    }

    /// Shows and hides records after a Pod change.
    fn reevaluate(&mut self) -> Vec<StoreEvent> {
        let mut out = Vec::new();
        let mut keys: Vec<&String> = self.records.keys().collect();
        keys.sort();
        for key in keys {
            let record = &self.records[key];
            let allowed = self.allowed(record);
            let shown = self.shown.contains(key);
            if allowed && !shown {
                out.push(StoreEvent::Upsert(record.clone()));
            } else if !allowed && shown {
                out.push(StoreEvent::Delete { key: key.clone() });
            }
        }
        for event in &out {
            match event {
                StoreEvent::Upsert(record) => {
                    self.shown.insert(record.key.clone());
                }
                StoreEvent::Delete { key } => {
                    self.shown.remove(key);
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, address: &str) -> RawRecord {
        let mut node = ServiceNode::default();
        node.network.internal = address.to_owned();
        RawRecord::new(key, node.to_json().unwrap_or_default())
    }

    fn pod(name: &str, ip: &str, ready: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name },
            "status": { "podIP": ip, "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }] },
        }))
        .unwrap_or_default()
    }

    fn pod_input(event: Event<Pod>) -> Input {
        Input::Pod(Box::new(Ok(event)))
    }

    fn kinds(events: &[StoreEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                StoreEvent::Upsert(r) => format!("up {}", r.key),
                StoreEvent::Delete { key } => format!("down {key}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_record_follows_its_pods_readiness() {
        let mut join = Join::default();
        assert_eq!(kinds(&join.apply(Input::Record(StoreEvent::Upsert(record("a", "10.0.0.1:80"))))), ["up a"]);
        assert!(kinds(&join.apply(pod_input(Event::Init))).is_empty());
        join.apply(pod_input(Event::InitApply(pod("p", "10.0.0.1", false))));
        assert_eq!(kinds(&join.apply(pod_input(Event::InitDone))), ["down a"]);
        // A heartbeat while not Ready stays hidden; Ready again shows the latest record.
        assert!(join.apply(Input::Record(StoreEvent::Upsert(record("a", "10.0.0.1:80")))).is_empty());
        assert_eq!(kinds(&join.apply(pod_input(Event::Apply(pod("p", "10.0.0.1", true))))), ["up a"]);
        // An address no Pod has is never hidden; a deleted record is not shown again.
        assert_eq!(kinds(&join.apply(Input::Record(StoreEvent::Upsert(record("b", "10.9.9.9:80"))))), ["up b"]);
        assert_eq!(kinds(&join.apply(Input::Record(StoreEvent::Delete { key: "a".into() }))), ["down a"]);
        assert!(join.apply(pod_input(Event::Apply(pod("p", "10.0.0.1", false)))).is_empty());
        // The one Pod with b's IP not Ready: hidden; a second Pod with that IP: ambiguous, shown.
        assert_eq!(kinds(&join.apply(pod_input(Event::Apply(pod("q", "10.9.9.9", false))))), ["down b"]);
        assert_eq!(kinds(&join.apply(pod_input(Event::Apply(pod("r", "10.9.9.9", false))))), ["up b"]);
        assert_eq!(host("[fd00::1]:80"), "fd00::1");
    }
}
