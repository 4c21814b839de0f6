//! The pure derivation: the nodes of one env → the xDS resources one kind of
//! client gets ([`derive()`]), checked for consistency before anyone sees them.
//!
//! This is go-control-plane's snapshot pattern: an immutable [`Snapshot`]
//! per node kind, built in one function from the discovery view, so the
//! protocol layer ([`crate::server`]) only compares contents, versions and
//! nonces. Nothing here does I/O or needs a runtime.
//!
//! # The mapping (see `docs/xds.md` for the picture)
//! - **Cluster** per app (`<app_id>.<env>`): type EDS with the assignment
//!   over ADS, round robin. For Envoy the cluster also says HTTP/2 upstream
//!   (`envoy.extensions.upstreams.http.v3.HttpProtocolOptions`), or Envoy would
//!   speak HTTP/1.1 to gRPC servers.
//! - **ClusterLoadAssignment** per app: one endpoint per distinct
//!   `network.internal` address (an IP literal and a port; the first node
//!   with an address wins, serving ones first), `HEALTHY`, or `DRAINING` for
//!   a draining node. **One locality per instance**, priority 0, whose
//!   locality weight and endpoint weight are both the instance's weight:
//!   gRPC's round robin ignores endpoint weights but honours locality
//!   weights, Envoy honours endpoint weights, so the same assignment carries
//!   the weight to both. The locality's zone is the node's `network.sn`; its
//!   sub-zone is the address (gRPC refuses two localities that are equal).
//!   Weights are the node's `weight`, a weight ≤ 0 read as
//!   [`DEFAULT_WEIGHT`] (as `registry::balance` does), capped at
//!   [`MAX_WEIGHT`] so that sums stay within `u32`; never 0.
//! - **RouteConfiguration** per target ([`crate::names`]), one virtual host
//!   with `domains: ["*"]` (gRPC matches the authority including its port):
//!   - env target: a route per registered method (`path:
//!     "/pkg.Service/Method"`), sorted, to the cluster of the app that serves
//!     it, or weighted clusters (weight: the app's summed serving weight)
//!     when several apps serve it; then a prefix route per service
//!     (`"/pkg.Service/"`) whose methods all have the same destination, so an
//!     unregistered method of a known service reaches that service (and gets
//!     its `UNIMPLEMENTED`). A method nobody serves matches no route: gRPC
//!     fails the call `UNAVAILABLE`, Envoy answers 404.
//!   - app target: one catch-all route (prefix `/`) to the app's cluster:
//!     everything sent on an app's channel belongs to that app.
//! - **Listener**: gRPC gets an `api_listener` per target holding an
//!   HttpConnectionManager (routes over RDS via ADS, the router filter last
//!   and only). Envoy gets one socket listener named after the env target on
//!   the node's listen address ([`NodeKind::Envoy`]), the same
//!   HttpConnectionManager in its filter chain, and never an `api_listener`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Locality, SocketAddress, address,
    config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, route, route_action, route_match,
    weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;
use prost::Name;
use registry_core::{DEFAULT_WEIGHT, ServiceNode};

use crate::names::{self, Target};

/// Largest weight given to an endpoint or locality: a node's `weight` above
/// it is capped, so the sums gRPC and Envoy compute stay within `u32` for
/// thousands of instances.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// The router filter's name; gRPC demands it last in the filter list.
const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// The HttpConnectionManager network filter's name.
const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
/// The key of the upstream HTTP options in a cluster's protocol options.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The four resource types, in the order an update is sent on an ADS
/// stream: clusters before the assignments and routes that use them
/// (make-before-break; removals are held back by the server until the
/// routes no longer use them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    Endpoint,
    /// `envoy.config.listener.v3.Listener` (LDS).
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    Route,
}

impl ResourceType {
    /// Every type, in sending order.
    pub const ALL: [ResourceType; 4] =
        [ResourceType::Cluster, ResourceType::Endpoint, ResourceType::Listener, ResourceType::Route];

    /// The type URL clients name it by.
    pub fn type_url(self) -> String {
        match self {
            ResourceType::Cluster => Cluster::type_url(),
            ResourceType::Endpoint => ClusterLoadAssignment::type_url(),
            ResourceType::Listener => Listener::type_url(),
            ResourceType::Route => RouteConfiguration::type_url(),
        }
    }

    /// The type a type URL names, if it is one of the four.
    pub fn from_type_url(url: &str) -> Option<Self> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Index for per-type arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// True for the types whose State-of-the-World responses must carry
    /// every subscribed resource (a missing one is a deletion).
    pub fn full_state(self) -> bool {
        matches!(self, ResourceType::Listener | ResourceType::Cluster)
    }

    /// Short name for logs and metric labels (`cds`, `eds`, `lds`, `rds`).
    pub fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
        }
    }
}

/// What kind of client a node is, which decides the resources it gets.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// A proxyless gRPC client (grpc-go, grpc-java, grpcio, tonic-xds...):
    /// `api_listener`s, plain EDS clusters.
    Grpc,
    /// An Envoy proxy: one socket listener on `listen`, HTTP/2 clusters.
    Envoy {
        /// Where Envoy's listener for the env target listens.
        listen: SocketAddr,
    },
}

/// One resource, encoded once and shared by every stream that sends it.
#[derive(Debug, PartialEq)]
pub struct Resource {
    /// Its name.
    pub name: String,
    /// The encoded resource.
    pub any: Any,
    /// A digest of `any`, to tell cheaply whether a client already has it.
    pub digest: u64,
    /// Names of the resources of the next type it uses: the route
    /// configuration of a listener, the clusters of a route configuration.
    pub references: Vec<String>,
}

impl Resource {
    fn new<T: prost::Message + Name>(name: String, message: T, references: Vec<String>) -> Arc<Self> {
        let any = pack_any(message);
        let mut hasher = DefaultHasher::new();
        any.type_url.hash(&mut hasher);
        any.value.hash(&mut hasher);
        Arc::new(Resource { name, any, digest: hasher.finish(), references })
    }
}

/// A snapshot is not self-consistent: a resource uses one that is not there.
/// [`derive()`] never builds one; the check keeps it so.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name} uses {missing_kind} {missing}, which the snapshot lacks")]
pub struct ConsistencyError {
    /// The type of the resource that uses the missing one.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// The type of the missing resource.
    pub missing_kind: &'static str,
    /// The missing resource's name.
    pub missing: String,
}

/// A node left out of the assignments, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedNode {
    /// Its app.
    pub app_id: String,
    /// Its `network.internal` as written.
    pub address: String,
    /// Why it was left out.
    pub reason: &'static str,
}

/// The resources of one env for one kind of client: immutable, consistent.
#[derive(Debug)]
pub struct Snapshot {
    env: String,
    listeners: BTreeMap<String, (Listener, Arc<Resource>)>,
    routes: BTreeMap<String, Arc<Resource>>,
    clusters: BTreeMap<String, Arc<Resource>>,
    endpoints: BTreeMap<String, Arc<Resource>>,
    skipped: Vec<SkippedNode>,
}

impl Snapshot {
    /// The env it serves.
    pub fn env(&self) -> &str {
        &self.env
    }

    /// The resource of type `kind` a client asking for `name` gets, if any.
    ///
    /// A listener name may carry a port (`greeter.prod:50051`): the listener
    /// is then the target's, named as asked.
    pub fn resource(&self, kind: ResourceType, name: &str) -> Option<Arc<Resource>> {
        match kind {
            ResourceType::Listener => {
                if let Some((_, resource)) = self.listeners.get(name) {
                    return Some(Arc::clone(resource));
                }
                let target = names::parse_listener(name, &self.env)?;
                let (template, resource) = self.listeners.get(&target.name(&self.env))?;
                let mut listener = template.clone();
                listener.name = name.to_owned();
                Some(Resource::new(name.to_owned(), listener, resource.references.clone()))
            }
            ResourceType::Route => self.routes.get(name).cloned(),
            ResourceType::Cluster => self.clusters.get(name).cloned(),
            ResourceType::Endpoint => self.endpoints.get(name).cloned(),
        }
    }

    /// Every resource of type `kind` (what a wildcard subscription gets).
    pub fn all(&self, kind: ResourceType) -> Vec<Arc<Resource>> {
        match kind {
            ResourceType::Listener => self.listeners.values().map(|(_, r)| Arc::clone(r)).collect(),
            ResourceType::Route => self.routes.values().cloned().collect(),
            ResourceType::Cluster => self.clusters.values().cloned().collect(),
            ResourceType::Endpoint => self.endpoints.values().cloned().collect(),
        }
    }

    /// Names of every resource of type `kind`.
    pub fn names(&self, kind: ResourceType) -> Vec<String> {
        self.all(kind).iter().map(|r| r.name.clone()).collect()
    }

    /// Nodes left out of the assignments (no usable address, a duplicate).
    pub fn skipped(&self) -> &[SkippedNode] {
        &self.skipped
    }

    /// Checks that every listener's route configuration, every route's
    /// cluster and every cluster's assignment is in the snapshot.
    pub fn check(&self) -> Result<(), ConsistencyError> {
        let missing = |kind, name: &str, missing_kind, missing: &str| ConsistencyError {
            kind,
            name: name.to_owned(),
            missing_kind,
            missing: missing.to_owned(),
        };
        for (name, (_, listener)) in &self.listeners {
            for route in &listener.references {
                if !self.routes.contains_key(route) {
                    return Err(missing("listener", name, "route configuration", route));
                }
            }
        }
        for (name, route) in &self.routes {
            for cluster in &route.references {
                if !self.clusters.contains_key(cluster) {
                    return Err(missing("route configuration", name, "cluster", cluster));
                }
            }
        }
        for name in self.clusters.keys() {
            if !self.endpoints.contains_key(name) {
                return Err(missing("cluster", name, "cluster load assignment", name));
            }
        }
        Ok(())
    }
}

/// Where a call goes: app id → weight (one entry: a plain cluster).
type Destination = BTreeMap<String, u32>;

/// Builds the resources `kind` gets for the nodes of `env` (`nodes`: the
/// discovery view, e.g. [`ServiceIndex::all_nodes`](registry_core::ServiceIndex::all_nodes);
/// nodes of other envs are ignored), and checks them.
pub fn derive(nodes: &[Arc<ServiceNode>], env: &str, kind: &NodeKind) -> Result<Snapshot, ConsistencyError> {
    let mut by_app: BTreeMap<&str, Vec<&ServiceNode>> = BTreeMap::new();
    for node in nodes.iter().filter(|n| n.meta.env == env) {
        by_app.entry(node.meta.app_id.as_str()).or_default().push(node);
    }
    let mut snapshot = Snapshot {
        env: env.to_owned(),
        listeners: BTreeMap::new(),
        routes: BTreeMap::new(),
        clusters: BTreeMap::new(),
        endpoints: BTreeMap::new(),
        skipped: Vec::new(),
    };
    // method → app → summed weight of the app's serving nodes declaring it.
    let mut methods: BTreeMap<&str, Destination> = BTreeMap::new();
    for (app, app_nodes) in &mut by_app {
        if names::validate(&names::app_name(app, env)).is_err() {
            snapshot.skipped.extend(app_nodes.iter().map(|n| skipped(n, "the app id is not a valid target name")));
            continue;
        }
        // Serving first (stable: keeps discovery's newest-first order), so a
        // serving node wins an address it shares with a draining one.
        app_nodes.sort_by_key(|n| n.draining);
        let Some(assignment) = assignment(app, env, app_nodes, &mut snapshot.skipped) else { continue };
        let cluster_name = names::app_name(app, env);
        snapshot.endpoints.insert(cluster_name.clone(), Resource::new(cluster_name.clone(), assignment, Vec::new()));
        snapshot.clusters.insert(
            cluster_name.clone(),
            Resource::new(cluster_name.clone(), cluster(&cluster_name, kind), Vec::new()),
        );
        for node in app_nodes.iter() {
            let weight = if node.draining { 0 } else { weight_of(node) };
            for (method, _) in node.methods.iter().filter(|(m, served)| **served && is_method_path(m)) {
                let slot = methods.entry(method.as_str()).or_default().entry((*app).to_owned()).or_insert(0);
                *slot = slot.saturating_add(weight);
            }
        }
    }
    // A method only draining nodes declare still routes to their app (weight 1).
    for destination in methods.values_mut() {
        for weight in destination.values_mut() {
            *weight = (*weight).max(1);
        }
    }

    let env_target = Target::Env.name(env);
    snapshot.routes.insert(env_target.clone(), route_configuration(&env_target, env_routes(&methods, env)));
    for app in snapshot.clusters.keys() {
        let routes = vec![route_to(prefix_match("/"), &BTreeMap::from([(app.clone(), 1)]), |a| a.to_owned())];
        snapshot.routes.insert(app.clone(), route_configuration(app, routes));
    }
    match kind {
        NodeKind::Grpc => {
            for target in snapshot.routes.keys() {
                let listener = api_listener(target);
                let resource = Resource::new(target.clone(), listener.clone(), vec![target.clone()]);
                snapshot.listeners.insert(target.clone(), (listener, resource));
            }
        }
        NodeKind::Envoy { listen } => {
            let listener = socket_listener(&env_target, *listen);
            let resource = Resource::new(env_target.clone(), listener.clone(), vec![env_target.clone()]);
            snapshot.listeners.insert(env_target, (listener, resource));
        }
    }
    snapshot.check()?;
    Ok(snapshot)
}

fn skipped(node: &ServiceNode, reason: &'static str) -> SkippedNode {
    SkippedNode { app_id: node.meta.app_id.clone(), address: node.network.internal.clone(), reason }
}

/// `/pkg.Service/Method`: what a route can match exactly.
fn is_method_path(method: &str) -> bool {
    service_of(method).is_some()
}

/// `/pkg.Service/` of `/pkg.Service/Method`.
fn service_of(method: &str) -> Option<&str> {
    let rest = method.strip_prefix('/')?;
    let (service, name) = rest.split_once('/')?;
    if service.is_empty() || name.is_empty() || name.contains('/') {
        return None;
    }
    method.get(..service.len() + 2)
}

/// The node's weight for gRPC and Envoy: ≤ 0 reads as [`DEFAULT_WEIGHT`]; capped at [`MAX_WEIGHT`].
fn weight_of(node: &ServiceNode) -> u32 {
    let weight = if node.weight <= 0 { DEFAULT_WEIGHT } else { node.weight };
    u32::try_from(weight).unwrap_or(MAX_WEIGHT).clamp(1, MAX_WEIGHT)
}

fn assignment(
    app: &str,
    env: &str,
    nodes: &[&ServiceNode],
    skipped_nodes: &mut Vec<SkippedNode>,
) -> Option<ClusterLoadAssignment> {
    let mut seen = HashSet::new();
    let mut endpoints = Vec::with_capacity(nodes.len());
    for node in nodes {
        let Ok(address) = node.network.internal.parse::<SocketAddr>() else {
            skipped_nodes.push(skipped(node, "network.internal is not an IP address and port"));
            continue;
        };
        if address.port() == 0 {
            skipped_nodes.push(skipped(node, "network.internal has port 0"));
            continue;
        }
        if !seen.insert(address) {
            skipped_nodes.push(skipped(node, "another node of the app has the same address"));
            continue;
        }
        let weight = Some(UInt32Value { value: weight_of(node) });
        let health = if node.draining { HealthStatus::Draining } else { HealthStatus::Healthy };
        endpoints.push(LocalityLbEndpoints {
            locality: Some(Locality {
                region: String::new(),
                zone: node.network.sn.clone(),
                sub_zone: address.to_string(),
            }),
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket_address(address)),
                    ..Default::default()
                })),
                health_status: health as i32,
                load_balancing_weight: weight,
                ..Default::default()
            }],
            load_balancing_weight: weight,
            priority: 0,
            ..Default::default()
        });
    }
    if endpoints.is_empty() {
        return None;
    }
    Some(ClusterLoadAssignment { cluster_name: names::app_name(app, env), endpoints, ..Default::default() })
}

mod resources;
#[cfg(test)]
mod tests;

use resources::{
    api_listener, cluster, env_routes, prefix_match, route_configuration, route_to, socket_address, socket_listener,
};
