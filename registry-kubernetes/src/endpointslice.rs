//! `endpointslice` mode: instances are the endpoints Kubernetes keeps for a
//! Service, methods are declared once per app on the Service.
//!
//! **Discovery** watches two things in the namespace and joins them:
//!
//! - Services labelled `<prefix>/type=service,<prefix>/env=<env>`. Each is
//!   one app (`<prefix>/app`, else the Service's name) and carries the
//!   app-wide part of a node in annotations: `<prefix>/methods` (a JSON list
//!   of `/pkg.Service/Method` paths), `<prefix>/version`, `<prefix>/weight`
//!   and optionally `<prefix>/port` (the port's name or number).
//! - Every EndpointSlice with a `kubernetes.io/service-name` label. The
//!   slices of one Service are **merged** (a Service has several once it
//!   passes 100 endpoints, and two during a rebalancing; go-zero's resolver
//!   rebuilt its set from one slice and lost endpoints).
//!
//! An endpoint is a node while its `ready` condition holds (`nil` counts as
//! ready, the API's rule). One that is `serving` and `terminating` is a
//! draining node (discovery answers it only with `DrainingNodes::Last`); any
//! other is not a node. Its `address:port` is `network.internal` (the port
//! named by the `port` annotation, else the one named `grpc`, else the
//! slice's only port; a Service with several ports and none of these is
//! reported malformed), its zone `network.sn`, and its lease id a stable
//! hash of its Pod's UID ([`instance_id`]) — the id the registrar in that
//! Pod was granted, so an instance finds itself in discovery.
//!
//! With [`AddressMode::Service`] (`address=service`), each Service is one
//! node while it has a ready endpoint, addressed by its cluster DNS name and
//! port (`<svc>.<ns>.svc.<cluster domain>:<port>`): discovery answers which
//! Service serves a method and the mesh (Istio) balances.
//!
//! **Registration** writes no per-instance record. `install` merges the
//! node's methods into its Service's `methods` annotation (a union: an
//! instance never removes another version's methods; `registryctl publish
//! --replace` does) and writes `version` and `weight`, with the Service's
//! `resourceVersion` as precondition (409: re-read, retry with backoff),
//! never touching other annotations and skipping the write when nothing
//! changes. The Service must exist (it is a deployment's object, with its
//! selector and ports). `<prefix>/registered` is the instance's own
//! switch: when its Pod declares that condition type as a readiness gate,
//! install sets the condition `True` and uninstall or drain `False`, so the
//! kubelet takes the Pod out of every endpoint list — ours, kube-proxy's,
//! the mesh's. Liveness is Kubernetes': nothing is renewed
//! (`StoreWriter::needs_heartbeats` is false), a crash is seen when the
//! kubelet marks the endpoint not ready.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use registry_core::store::{RawRecord, StoreEvent, StoreReader, StoreWriter};
use registry_core::{DEFAULT_WEIGHT, Error, Meta, Methods, Network, Result, ServiceNode};

use crate::config::AddressMode;
use crate::encode::Names;
use crate::error::{Call, KIND, MAX_ANNOTATIONS_BYTES, is_conflict, is_not_found, map, map_watcher};
use crate::watch::{MAX_SILENCE, Source, probed, watch_objects};

const SERVICES: &str = "services";
const SLICES: &str = "endpointslices";
/// The label the EndpointSlice controller puts on a Service's slices.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The port name used when the Service names none in `<prefix>/port`.
pub const DEFAULT_PORT_NAME: &str = "grpc";

const CONFLICT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const CONFLICT_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// A Service's declaration is one object that every instance of an app may
/// write at once (a Deployment's Pods starting together with a new method
/// set): each 409 means another writer landed, so a writer keeps trying,
/// with short jittered pauses, up to this many times `max_conflict_retries`
/// (the caller's deadline — core bounds an install by the TTL — still holds).
const CONFLICT_ROUNDS: u32 = 3;

/// The lease id of an instance in `endpointslice` mode: a stable 63-bit hash
/// (FNV-1a) of its Pod's UID, never 0. The registrar in the Pod and every
/// discoverer compute the same id.
pub fn instance_id(uid: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in uid.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Masked to 63 bits, so the cast keeps the value and it is never negative.
    let id = (hash & (i64::MAX as u64)) as i64;
    if id == 0 { 1 } else { id }
}

/// What a Service says about its app.
#[derive(Clone, Debug)]
struct AppInfo {
    app_id: String,
    version: String,
    weight: i64,
    methods: Methods,
    /// `<prefix>/port`: a port name or number.
    port: Option<String>,
    uid: String,
    /// The Service's ports: (name, port).
    ports: Vec<(Option<String>, i32)>,
}

/// A Service of the env, read.
#[derive(Clone, Debug)]
enum Parsed {
    App(Box<AppInfo>),
    Malformed(String),
}

/// The annotation and label names of this mode.
impl Names {
    /// `<prefix>/methods`: the JSON list of an app's methods on its Service.
    pub fn methods_annotation(&self) -> String {
        format!("{}/methods", self.prefix())
    }

    /// `<prefix>/version`: the app's version on its Service.
    pub fn version_annotation(&self) -> String {
        format!("{}/version", self.prefix())
    }

    /// `<prefix>/weight`: the app's weight on its Service.
    pub fn weight_annotation(&self) -> String {
        format!("{}/weight", self.prefix())
    }

    /// `<prefix>/port`: which of the Service's ports serves gRPC (name or number).
    pub fn port_annotation(&self) -> String {
        format!("{}/port", self.prefix())
    }

    /// `<prefix>/registered`: the Pod condition (and readiness gate) an
    /// instance sets `True` on install and `False` on uninstall or drain.
    pub fn registered_condition(&self) -> String {
        format!("{}/registered", self.prefix())
    }
}

/// Reads the app a Service declares.
fn parse_service(names: &Names, service: &Service) -> Parsed {
    let annotations = service.annotations();
    let methods = match annotations.get(&names.methods_annotation()) {
        None => Methods::default(),
        Some(value) => match parse_methods(value) {
            Ok(methods) => methods,
            Err(reason) => {
                return Parsed::Malformed(format!("annotation `{}`: {reason}", names.methods_annotation()));
            }
        },
    };
    let weight = match annotations.get(&names.weight_annotation()) {
        None => DEFAULT_WEIGHT,
        Some(value) => match value.trim().parse::<i64>() {
            Ok(weight) => weight,
            Err(_) => {
                return Parsed::Malformed(format!(
                    "annotation `{}`: `{value}` is not an integer",
                    names.weight_annotation()
                ));
            }
        },
    };
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|ports| ports.iter().map(|p| (p.name.clone(), p.port)).collect())
        .unwrap_or_default();
    Parsed::App(Box::new(AppInfo {
        app_id: service.labels().get(&names.app_label()).cloned().unwrap_or_else(|| service.name_any()),
        version: annotations.get(&names.version_annotation()).cloned().unwrap_or_default(),
        weight,
        methods,
        port: annotations.get(&names.port_annotation()).map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()),
        uid: service.metadata.uid.clone().unwrap_or_default(),
        ports,
    }))
}

/// A `<prefix>/methods` value: a JSON list of method paths.
pub(crate) fn parse_methods(value: &str) -> std::result::Result<Methods, String> {
    let list: Vec<String> =
        serde_json::from_str(value).map_err(|e| format!("not a JSON list of method names ({e})"))?;
    if let Some(bad) = list.iter().find(|m| !m.starts_with('/')) {
        return Err(format!("`{bad}` is not a gRPC method path (`/pkg.Service/Method`)"));
    }
    Ok(list.into_iter().map(|m| (m, true)).collect())
}

/// The `<prefix>/methods` value of a method set: sorted, deduplicated.
pub(crate) fn methods_value<'a>(methods: impl IntoIterator<Item = &'a str>) -> Result<String> {
    let set: BTreeSet<&str> = methods.into_iter().collect();
    serde_json::to_string(&set).map_err(|e| Error::Encode { reason: e.to_string() })
}

/// How discovery in this mode addresses nodes, and where.
#[derive(Clone, Debug)]
pub(crate) struct View {
    names: Names,
    env: String,
    namespace: String,
    address: AddressMode,
    cluster_domain: String,
}

impl View {
    pub(crate) fn new(
        names: Names,
        env: String,
        namespace: String,
        address: AddressMode,
        cluster_domain: String,
    ) -> Self {
        Self { names, env, namespace, address, cluster_domain }
    }

    /// The node JSON of one instance (or Service) of `app`.
    fn node(&self, app: &AppInfo, lease_id: i64, internal: String, sn: String, draining: bool) -> Result<String> {
        let services: BTreeSet<&str> =
            app.methods.keys().filter_map(|m| m.trim_start_matches('/').split_once('/').map(|(s, _)| s)).collect();
        let node = ServiceNode {
            proto_count: i64::try_from(services.len()).unwrap_or(i64::MAX),
            lease_id,
            weight: app.weight,
            methods: app.methods.clone(),
            network: Network { sn, internal, external: String::new() },
            meta: Meta::new(self.env.clone(), app.app_id.clone(), app.version.clone()),
            draining,
            ..ServiceNode::default()
        };
        node.to_json()
    }

    /// The records of Service `service` (`app` read from it) over its slices.
    fn records(
        &self,
        service: &str,
        app: &AppInfo,
        slices: &[&EndpointSlice],
    ) -> std::result::Result<Vec<RawRecord>, String> {
        // key → (record, ready): an endpoint listed twice (two slices during a
        // rebalancing) counts once, ready over draining.
        let mut found: BTreeMap<String, (RawRecord, bool)> = BTreeMap::new();
        let mut any_ready = false;
        let mut any_draining = false;
        for slice in slices {
            if slice.address_type == "FQDN" {
                continue;
            }
            let Some(port) = pick_port(app, slice)? else { continue };
            for endpoint in &slice.endpoints {
                let Some(state) = state_of(endpoint) else { continue };
                let ready = state == EndpointState::Ready;
                any_ready |= ready;
                any_draining |= !ready;
                if self.address == AddressMode::Service {
                    continue;
                }
                let Some(ip) = endpoint.addresses.first() else { continue };
                let address = if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") };
                let key = format!("{service}/{address}");
                if found.get(&key).is_some_and(|(_, was_ready)| *was_ready || !ready) {
                    continue;
                }
                let uid = endpoint
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.uid.as_deref());
                let lease_id = instance_id(uid.unwrap_or(&key));
                let sn = endpoint.zone.clone().unwrap_or_default();
                let value = self.node(app, lease_id, address, sn, !ready).map_err(|e| e.to_string())?;
                found.insert(key.clone(), (RawRecord::new(key, value), ready));
            }
        }
        if self.address == AddressMode::Service {
            if !any_ready && !any_draining {
                return Ok(Vec::new());
            }
            let port = service_port(app)?;
            let internal = format!("{service}.{}.svc.{}:{port}", self.namespace, self.cluster_domain);
            let value = self
                .node(
                    app,
                    instance_id(if app.uid.is_empty() { service } else { &app.uid }),
                    internal,
                    String::new(),
                    !any_ready,
                )
                .map_err(|e| e.to_string())?;
            return Ok(vec![RawRecord::new(service.to_owned(), value)]);
        }
        Ok(found.into_values().map(|(record, _)| record).collect())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndpointState {
    Ready,
    Draining,
}

/// Ready (a node), serving and terminating (a draining node), or neither.
fn state_of(endpoint: &Endpoint) -> Option<EndpointState> {
    let conditions = endpoint.conditions.as_ref();
    // The API's rules: `ready` and `serving` nil mean true, `terminating` nil false.
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(true);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    if ready && !terminating {
        Some(EndpointState::Ready)
    } else if serving && terminating {
        Some(EndpointState::Draining)
    } else {
        None
    }
}

/// The endpoint port of a slice that serves gRPC (see the module docs);
/// `None` for a slice with no ports yet.
fn pick_port(app: &AppInfo, slice: &EndpointSlice) -> std::result::Result<Option<i32>, String> {
    let ports: Vec<(Option<&str>, i32)> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.as_deref().filter(|n| !n.is_empty()), p.port?)))
        .collect();
    if ports.is_empty() {
        return Ok(None);
    }
    let wanted = app.port.as_deref();
    if let Some(wanted) = wanted {
        if let Some((_, port)) = ports.iter().find(|(name, port)| *name == Some(wanted) || port.to_string() == wanted) {
            return Ok(Some(*port));
        }
        // The annotation may name the Service's port number; the slice has the target port.
        if let Some((name, _)) = app.ports.iter().find(|(_, port)| port.to_string() == wanted)
            && let Some((_, port)) = ports.iter().find(|(n, _)| n == &name.as_deref())
        {
            return Ok(Some(*port));
        }
        return Err(format!("no port `{wanted}` (annotation) among the endpoints' ports"));
    }
    if let Some((_, port)) = ports.iter().find(|(name, _)| *name == Some(DEFAULT_PORT_NAME)) {
        return Ok(Some(*port));
    }
    match ports.as_slice() {
        [(_, port)] => Ok(Some(*port)),
        _ => Err(format!(
            "several ports and none named `{DEFAULT_PORT_NAME}`: name the gRPC port in the port annotation"
        )),
    }
}

/// The Service's own port for [`AddressMode::Service`].
fn service_port(app: &AppInfo) -> std::result::Result<i32, String> {
    let by_name = |name: &str| app.ports.iter().find(|(n, _)| n.as_deref() == Some(name)).map(|(_, p)| *p);
    if let Some(wanted) = app.port.as_deref() {
        return by_name(wanted)
            .or_else(|| app.ports.iter().find(|(_, p)| p.to_string() == wanted).map(|(_, p)| *p))
            .ok_or_else(|| format!("the Service has no port `{wanted}` (annotation)"));
    }
    if let Some(port) = by_name(DEFAULT_PORT_NAME) {
        return Ok(port);
    }
    match app.ports.as_slice() {
        [(_, port)] => Ok(*port),
        [] => Err("the Service has no ports".to_owned()),
        _ => Err(format!(
            "several ports and none named `{DEFAULT_PORT_NAME}`: name the gRPC port in the port annotation"
        )),
    }
}

/// Discovery in `endpointslice` mode (see the module docs).
pub(crate) struct SliceReader {
    view: View,
    services: Api<Service>,
    slices: Api<EndpointSlice>,
}

impl SliceReader {
    pub(crate) fn new(view: View, services: Api<Service>, slices: Api<EndpointSlice>) -> Self {
        Self { view, services, slices }
    }
}

impl StoreReader for SliceReader {
    fn events(&self) -> BoxStream<'static, StoreEvent> {
        let join = Join::new(self.view.clone(), self.services.clone(), self.slices.clone());
        probed(join, self.services.clone().into_client())
    }

    fn max_silence(&self) -> Option<Duration> {
        Some(MAX_SILENCE)
    }
}

/// One input of the join.
pub(crate) enum Input {
    Service(Box<std::result::Result<Event<Service>, watcher::Error>>),
    Slice(Box<std::result::Result<Event<EndpointSlice>, watcher::Error>>),
}

/// Half of the join: one watched resource's objects.
struct Half<T> {
    objects: HashMap<String, T>,
    /// Objects gathered during a listing.
    pending: Option<HashMap<String, T>>,
    watching: bool,
}

impl<T> Default for Half<T> {
    fn default() -> Self {
        Self { objects: HashMap::new(), pending: None, watching: false }
    }
}

/// What changed in a [`Half`]: nothing, one object's name, or everything (a listing).
enum Touched {
    None,
    One(String),
    All,
}

impl<T> Half<T> {
    /// Applies an event, with `value` turning an object into what is kept.
    fn apply<K: kube::Resource>(&mut self, event: Event<K>, value: impl Fn(&K) -> T) -> Touched {
        match event {
            Event::Init => {
                self.pending = Some(HashMap::new());
                self.watching = false;
                Touched::None
            }
            Event::InitApply(object) => {
                self.pending.get_or_insert_with(HashMap::new).insert(object.name_any(), value(&object));
                Touched::None
            }
            Event::InitDone => {
                self.objects = self.pending.take().unwrap_or_default();
                self.watching = true;
                Touched::All
            }
            Event::Apply(object) => {
                let name = object.name_any();
                self.objects.insert(name.clone(), value(&object));
                Touched::One(name)
            }
            Event::Delete(object) => {
                let name = object.name_any();
                self.objects.remove(&name);
                Touched::One(name)
            }
        }
    }
}

/// The join of Services and EndpointSlices, diffed into store events.
pub(crate) struct Join {
    view: View,
    services_api: Api<Service>,
    slices_api: Api<EndpointSlice>,
    services: Half<Parsed>,
    /// Slice name → (its Service's name, the slice).
    slices: Half<(String, EndpointSlice)>,
    /// The first listing of both was reported (`Reset` … `Synced`).
    started: bool,
    /// What core was told: Service name → its records by key.
    shown: HashMap<String, BTreeMap<String, RawRecord>>,
    /// Service name → the reason it was last reported malformed.
    malformed: HashMap<String, String>,
}

impl Join {
    pub(crate) fn new(view: View, services_api: Api<Service>, slices_api: Api<EndpointSlice>) -> Self {
        Self {
            view,
            services_api,
            slices_api,
            services: Half::default(),
            slices: Half::default(),
            started: false,
            shown: HashMap::new(),
            malformed: HashMap::new(),
        }
    }

    /// Applies one input.
    pub(crate) fn input(&mut self, input: Input) -> Vec<StoreEvent> {
        match input {
            Input::Service(event) => match *event {
                Err(error) => vec![StoreEvent::Error(map_watcher(error, SERVICES))],
                Ok(event) => {
                    let names = self.view.names.clone();
                    match self.services.apply(event, |s| parse_service(&names, s)) {
                        Touched::None => Vec::new(),
                        Touched::One(name) => self.refresh(&[name]),
                        Touched::All => self.refresh_all(),
                    }
                }
            },
            Input::Slice(event) => match *event {
                Err(error) => vec![StoreEvent::Error(map_watcher(error, SLICES))],
                Ok(event) => {
                    let before = match &event {
                        Event::Apply(s) | Event::Delete(s) => {
                            self.slices.objects.get(&s.name_any()).map(|(service, _)| service.clone())
                        }
                        _ => None,
                    };
                    let service_of =
                        |s: &EndpointSlice| s.labels().get(SERVICE_NAME_LABEL).cloned().unwrap_or_default();
                    match self.slices.apply(event, |s| (service_of(s), s.clone())) {
                        Touched::None => Vec::new(),
                        Touched::All => self.refresh_all(),
                        Touched::One(slice) => {
                            let mut services: Vec<String> = before.into_iter().collect();
                            if let Some((service, _)) = self.slices.objects.get(&slice) {
                                services.push(service.clone());
                            }
                            services.dedup();
                            self.refresh(&services)
                        }
                    }
                }
            },
        }
    }

    fn both_watching(&self) -> bool {
        self.services.watching && self.slices.watching
    }

    /// Every Service, after a listing.
    fn refresh_all(&mut self) -> Vec<StoreEvent> {
        let mut names: BTreeSet<String> = self.services.objects.keys().cloned().collect();
        names.extend(self.shown.keys().cloned());
        names.extend(self.malformed.keys().cloned());
        let names: Vec<String> = names.into_iter().collect();
        self.refresh(&names)
    }

    /// Recomputes the records of `services` and reports the difference
    /// (everything, framed by `Reset` and `Synced`, the first time both
    /// halves have listed).
    fn refresh(&mut self, services: &[String]) -> Vec<StoreEvent> {
        if !self.started {
            if !self.both_watching() {
                return Vec::new();
            }
            self.started = true;
            let mut out = vec![StoreEvent::Reset];
            let mut all: Vec<String> = self.services.objects.keys().cloned().collect();
            all.sort();
            for service in all {
                out.extend(self.diff(&service));
            }
            out.push(StoreEvent::Synced);
            return out;
        }
        let mut out = Vec::new();
        for service in services {
            out.extend(self.diff(service));
        }
        out
    }

    /// The events that bring core's view of `service` up to date.
    fn diff(&mut self, service: &str) -> Vec<StoreEvent> {
        let (records, malformed) = match self.services.objects.get(service) {
            None => (Vec::new(), None),
            Some(Parsed::Malformed(reason)) => (Vec::new(), Some(reason.clone())),
            Some(Parsed::App(app)) => {
                let slices: Vec<&EndpointSlice> =
                    self.slices.objects.values().filter(|(s, _)| s == service).map(|(_, slice)| slice).collect();
                match self.view.records(service, app, &slices) {
                    Ok(records) => (records, None),
                    Err(reason) => (Vec::new(), Some(reason)),
                }
            }
        };
        let mut out = Vec::new();
        match malformed {
            Some(reason) => {
                if self.malformed.get(service) != Some(&reason) {
                    let key = format!("services/{service}");
                    out.push(StoreEvent::Malformed { key, reason: reason.clone() });
                    self.malformed.insert(service.to_owned(), reason);
                }
            }
            None => {
                self.malformed.remove(service);
            }
        }
        let current: BTreeMap<String, RawRecord> = records.into_iter().map(|r| (r.key.clone(), r)).collect();
        let previous = self.shown.remove(service).unwrap_or_default();
        for key in previous.keys().filter(|k| !current.contains_key(*k)) {
            out.push(StoreEvent::Delete { key: key.clone() });
        }
        for (key, record) in &current {
            if previous.get(key) != Some(record) {
                out.push(StoreEvent::Upsert(record.clone()));
            }
        }
        if !current.is_empty() {
            self.shown.insert(service.to_owned(), current);
        }
        out
    }
}

impl Source for Join {
    type Item = Input;

    fn resource(&self) -> &'static str {
        "services+endpointslices"
    }

    fn start(&mut self) -> BoxStream<'static, Input> {
        self.services.watching = false;
        self.slices.watching = false;
        let selector = self.view.names.selector(&self.view.env);
        let services = watch_objects(
            &self.services_api,
            &watcher::Config::default().labels(&selector).timeout(crate::watch::WATCH_TIMEOUT_SECS),
        )
        .map(|e| Input::Service(Box::new(e)));
        let slices = watch_objects(
            &self.slices_api,
            &watcher::Config::default().labels(SERVICE_NAME_LABEL).timeout(crate::watch::WATCH_TIMEOUT_SECS),
        )
        .map(|e| Input::Slice(Box::new(e)));
        stream::select(services, slices).boxed()
    }

    fn apply(&mut self, item: Input) -> Vec<StoreEvent> {
        self.input(item)
    }

    fn watching(&self) -> bool {
        self.started && self.both_watching()
    }
}

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

enum Attempt {
    Conflict,
    Failed(Error),
}

async fn declare_once(
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

async fn write_declaration(
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
struct OwnPod {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn service(annotations: serde_json::Value, ports: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "greeter", "uid": "svc-uid", "labels": {}, "annotations": annotations },
            "spec": { "ports": ports },
        }))
        .unwrap_or_default()
    }

    fn slice(name: &str, endpoints: serde_json::Value, ports: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { SERVICE_NAME_LABEL: "greeter" } },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn view(address: AddressMode) -> View {
        View::new(Names::new(crate::DEFAULT_PREFIX), "prod".into(), "ns".into(), address, "cluster.local".into())
    }

    fn app() -> AppInfo {
        let names = Names::new(crate::DEFAULT_PREFIX);
        let svc = service(
            serde_json::json!({ "registry.fireflycore.io/methods": "[\"/a.B/C\",\"/a.B/D\"]", "registry.fireflycore.io/version": "v2" }),
            serde_json::json!([{ "name": "grpc", "port": 80 }, { "name": "http", "port": 81 }]),
        );
        match parse_service(&names, &svc) {
            Parsed::App(app) => *app,
            Parsed::Malformed(reason) => panic!("{reason}"),
        }
    }

    fn endpoint(ip: &str, uid: &str, ready: bool, serving: bool, terminating: bool) -> serde_json::Value {
        serde_json::json!({
            "addresses": [ip],
            "conditions": { "ready": ready, "serving": serving, "terminating": terminating },
            "targetRef": { "kind": "Pod", "uid": uid, "name": uid },
            "zone": "z1",
        })
    }

    #[test]
    fn endpoints_of_every_slice_become_nodes() {
        let ports = serde_json::json!([{ "name": "http", "port": 8081 }, { "name": "grpc", "port": 9090 }]);
        let a = slice("a", serde_json::json!([endpoint("10.0.0.1", "u1", true, true, false)]), ports.clone());
        let b = slice(
            "b",
            serde_json::json!([
                endpoint("10.0.0.2", "u2", false, true, true),
                endpoint("10.0.0.3", "u3", false, false, false),
                // Listed twice (a rebalancing): counted once, ready wins.
                endpoint("10.0.0.1", "u1", false, true, true),
            ]),
            ports,
        );
        let records =
            view(AddressMode::Endpoint).records("greeter", &app(), &[&a, &b]).unwrap_or_else(|e| panic!("{e}"));
        let nodes: Vec<ServiceNode> =
            records.iter().map(|r| ServiceNode::from_json(&r.value).unwrap_or_else(|e| panic!("{e}"))).collect();
        assert_eq!(nodes.len(), 2, "{records:?}");
        assert_eq!(nodes[0].network.internal, "10.0.0.1:9090");
        assert!(!nodes[0].draining);
        assert_eq!(nodes[0].lease_id, instance_id("u1"));
        assert_eq!(nodes[0].network.sn, "z1");
        assert_eq!(nodes[0].meta.version, "v2");
        assert!(nodes[0].serves("/a.B/D"));
        assert_eq!(nodes[0].proto_count, 1);
        assert_eq!(nodes[1].network.internal, "10.0.0.2:9090");
        assert!(nodes[1].draining, "serving and terminating: draining");
    }

    #[test]
    fn service_address_mode_gives_one_node_per_service() {
        let a = slice(
            "a",
            serde_json::json!([endpoint("10.0.0.1", "u1", true, true, false)]),
            serde_json::json!([{ "name": "grpc", "port": 9090 }]),
        );
        let records = view(AddressMode::Service).records("greeter", &app(), &[&a]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(records.len(), 1);
        let node = ServiceNode::from_json(&records[0].value).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(node.network.internal, "greeter.ns.svc.cluster.local:80");
        let none = slice("a", serde_json::json!([]), serde_json::json!([{ "name": "grpc", "port": 9090 }]));
        assert!(view(AddressMode::Service).records("greeter", &app(), &[&none]).is_ok_and(|r| r.is_empty()));
    }

    #[test]
    fn bad_declarations_are_malformed() {
        let names = Names::new(crate::DEFAULT_PREFIX);
        for annotations in [
            serde_json::json!({ "registry.fireflycore.io/methods": "not json" }),
            serde_json::json!({ "registry.fireflycore.io/methods": "[\"no-slash\"]" }),
            serde_json::json!({ "registry.fireflycore.io/weight": "heavy" }),
        ] {
            assert!(matches!(
                parse_service(&names, &service(annotations, serde_json::json!([]))),
                Parsed::Malformed(_)
            ));
        }
        let two = slice(
            "a",
            serde_json::json!([endpoint("10.0.0.1", "u1", true, true, false)]),
            serde_json::json!([{ "name": "x", "port": 1 }, { "name": "y", "port": 2 }]),
        );
        let mut plain = app();
        plain.port = None;
        assert!(view(AddressMode::Endpoint).records("greeter", &plain, &[&two]).is_err());
        plain.port = Some("y".into());
        assert!(view(AddressMode::Endpoint).records("greeter", &plain, &[&two]).is_ok_and(|r| r.len() == 1));
    }

    #[test]
    fn instance_ids_are_stable_and_positive() {
        assert_eq!(instance_id("abc"), instance_id("abc"));
        assert_ne!(instance_id("abc"), instance_id("abd"));
        assert!(instance_id("") > 0);
    }
}
