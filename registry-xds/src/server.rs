//! The ADS server (State of the World): one stream per client, every
//! resource type over it.
//!
//! Written on `envoy-types`' generated service because no maintained xDS
//! server crate is on tonic 0.14. The resources come from
//! [`crate::snapshot`]; this layer only decides, per stream and type, what to
//! send and when, by comparing contents, versions and nonces:
//!
//! - **Versions** are per type: the generation of the discovery view the
//!   content was derived from. A type is sent again only when what this
//!   client subscribed to changed (an endpoint change resends EDS, nothing
//!   else).
//! - **Nonces**: a new one per response. A request whose `response_nonce` is
//!   not the last one sent for its type is stale and ignored (xDS protocol,
//!   "ACK and NACK semantics").
//! - **ACK** (the last nonce, no `error_detail`): the client runs that
//!   version. **NACK** (the last nonce and an `error_detail`): logged,
//!   counted ([`NACKS`]) with the client's message, kept in the client's
//!   state ([`ClientState`]); the rejected content is not sent again — only
//!   a later change of the view produces a new response (go-control-plane's
//!   cache re-sends the rejected version at once, in a loop).
//! - **SotW**: LDS and CDS responses carry every subscribed resource that
//!   exists (a missing one is a deletion, so an unknown name is answered as
//!   absent at once); RDS and EDS responses carry the resources that changed.
//!   A subscribed name that does not exist is remembered and sent when it
//!   appears. A first request with no names (or `*`) on LDS or CDS is a
//!   wildcard subscription (Envoy's).
//! - **Make-before-break**: a change is sent CDS, EDS, LDS, RDS in that
//!   order, so a cluster exists before a route uses it; a cluster that the
//!   routes this client last ACKed still use stays in its CDS responses
//!   until the client ACKs routes that no longer use it.
//! - **Faults**: nothing is answered before the discoverer's first full view
//!   (a restarted control plane never serves an empty view it has not
//!   seen), and the view is the discoverer's: its empty-set protection and
//!   staleness carry through. A derivation that fails its consistency check
//!   is never sent: the last good snapshot stays.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use futures::{FutureExt, Stream, StreamExt};
use registry_core::{Discovery, ServiceNode};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};

pub use crate::clients::{ClientState, Nack, TypeState};
use crate::snapshot::{self, NodeKind, Resource, ResourceType, Snapshot};

/// Counter: NACKs received, labelled `type` (`lds`, `rds`, `cds`, `eds`).
pub const NACKS: &str = "registry_xds_nacks_total";
/// Counter: responses sent, labelled `type`.
pub const RESPONSES: &str = "registry_xds_responses_total";
/// Counter: requests ignored because their nonce was stale, labelled `type`.
pub const STALE_REQUESTS: &str = "registry_xds_stale_requests_total";
/// Gauge: open ADS streams.
pub const STREAMS: &str = "registry_xds_streams";
/// Gauge: generation of the discovery view the server serves.
pub const GENERATION: &str = "registry_xds_view_generation";
/// Counter: derivations refused by the consistency check (never sent).
pub const INCONSISTENT: &str = "registry_xds_inconsistent_snapshots_total";

/// Node metadata key that says what kind of client a node is: `"envoy"` or
/// `"grpc"`. Without it, a node whose `user_agent_name` is `envoy` (Envoy
/// always sets it) is Envoy, every other node a proxyless gRPC client.
pub const KIND_METADATA: &str = "registry.xds.kind";
/// Node metadata key with the `ip:port` Envoy's socket listener listens on
/// ([`DEFAULT_ENVOY_LISTEN`] without it).
pub const LISTEN_METADATA: &str = "registry.xds.listen";
/// Where an Envoy node's listener listens when its metadata does not say.
pub const DEFAULT_ENVOY_LISTEN: &str = "127.0.0.1:10000";

/// Errors building or running the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`XdsServer::new`] was called outside a tokio runtime.
    #[error("the xDS server needs a tokio runtime to follow discovery")]
    NoRuntime,
    /// The gRPC server failed.
    #[error("the xDS gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The discovery view at one moment.
struct View {
    generation: u64,
    nodes: Vec<Arc<ServiceNode>>,
}

struct Inner {
    env: String,
    view: watch::Receiver<Option<Arc<View>>>,
    /// Snapshots derived for the current generation, per node kind.
    snapshots: Mutex<HashMap<NodeKind, (u64, Arc<Snapshot>)>>,
    clients: Mutex<BTreeMap<u64, Arc<Mutex<ClientState>>>>,
    next_stream: AtomicU64,
    next_nonce: AtomicU64,
    follower: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind: keep serving.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    /// The snapshot for `kind` of the current view; `None` before the first view.
    fn snapshot(&self, kind: &NodeKind) -> Option<Arc<Snapshot>> {
        let view = self.view.borrow().clone()?;
        let mut snapshots = lock(&self.snapshots);
        if let Some((generation, snapshot)) = snapshots.get(kind)
            && *generation == view.generation
        {
            return Some(Arc::clone(snapshot));
        }
        match snapshot::derive(&view.nodes, &self.env, kind) {
            Ok(snapshot) => {
                for skipped in snapshot.skipped() {
                    tracing::debug!(
                        app_id = skipped.app_id,
                        address = skipped.address,
                        reason = skipped.reason,
                        "node left out of the assignment"
                    );
                }
                let snapshot = Arc::new(snapshot);
                snapshots.insert(kind.clone(), (view.generation, Arc::clone(&snapshot)));
                Some(snapshot)
            }
            Err(error) => {
                metrics::counter!(INCONSISTENT).increment(1);
                tracing::error!(%error, generation = view.generation, "derived xDS snapshot is inconsistent; keeping the last good one");
                let (_, last) = snapshots.get(kind)?;
                Some(Arc::clone(last))
            }
        }
    }

    fn generation(&self) -> Option<u64> {
        self.view.borrow().as_ref().map(|v| v.generation)
    }
}

/// An ADS server over a [`Discovery`] view of one env.
///
/// Add [`XdsServer::service`] to your own tonic server, or run
/// [`XdsServer::serve`]. Clones share one server.
#[derive(Clone)]
pub struct XdsServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for XdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsServer").field("env", &self.inner.env).field("generation", &self.inner.generation()).finish()
    }
}

impl XdsServer {
    /// A server for the env `env` of `discovery` (a started discoverer of
    /// that env: `registry_core::Discoverer` or anything implementing the
    /// trait, `merged_discovery` included). Starts following its events on
    /// the current tokio runtime; streams are answered once its first full
    /// listing is in.
    pub fn new(discovery: Arc<dyn Discovery>, env: impl Into<String>) -> Result<Self, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (publish, view) = watch::channel(None);
        let follower = runtime.spawn(follow(discovery, publish));
        Ok(Self {
            inner: Arc::new(Inner {
                env: env.into(),
                view,
                snapshots: Mutex::new(HashMap::new()),
                clients: Mutex::new(BTreeMap::new()),
                next_stream: AtomicU64::new(1),
                next_nonce: AtomicU64::new(1),
                follower,
            }),
        })
    }

    /// The env served.
    pub fn env(&self) -> &str {
        &self.inner.env
    }

    /// The tonic service to add to a server (`Server::builder().add_service(..)`).
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<XdsServer> {
        AggregatedDiscoveryServiceServer::new(self.clone())
    }

    /// Serves ADS on `addr` until `shutdown` completes.
    pub async fn serve(&self, addr: SocketAddr, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        tonic::transport::Server::builder().add_service(self.service()).serve_with_shutdown(addr, shutdown).await?;
        Ok(())
    }

    /// Serves ADS on an already bound listener until `shutdown` completes.
    pub async fn serve_with_listener(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        // No Nagle: a push is one small frame the client must see at once.
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }

    /// The generation of the discovery view served (`None` before the first
    /// full listing): it is the version of every resource derived from it.
    pub fn generation(&self) -> Option<u64> {
        self.inner.generation()
    }

    /// Waits until the first full view is in.
    pub async fn wait_ready(&self) {
        let mut view = self.inner.view.clone();
        // An error means the follower ended, which only happens with the server.
        let _ = view.wait_for(Option::is_some).await;
    }

    /// The snapshot a node of `kind` gets now (`None` before the first view).
    pub fn snapshot(&self, kind: &NodeKind) -> Option<Arc<Snapshot>> {
        self.inner.snapshot(kind)
    }

    /// The state of every connected client.
    pub fn clients(&self) -> Vec<ClientState> {
        lock(&self.inner.clients).values().map(|c| lock(c).clone()).collect()
    }
}

/// Follows `discovery`'s events and publishes a new view per batch of them.
async fn follow(discovery: Arc<dyn Discovery>, publish: watch::Sender<Option<Arc<View>>>) {
    let mut events = discovery.events();
    discovery.wait_ready().await;
    let mut generation = 0;
    let mut last = None;
    loop {
        let index = discovery.snapshot();
        if last.as_ref().is_none_or(|l| !Arc::ptr_eq(l, &index)) {
            generation += 1;
            metrics::gauge!(GENERATION).set(generation as f64);
            let view = View { generation, nodes: index.all_nodes() };
            last = Some(index);
            if publish.send(Some(Arc::new(view))).is_err() {
                return;
            }
        }
        if events.next().await.is_none() {
            // Discovery stopped following (unwatch): its last view stays
            // served, as discovery keeps serving it.
            publish.closed().await;
            return;
        }
        // Coalesce what is already queued: one view per batch of events.
        while let Some(Some(_)) = events.next().now_or_never() {}
    }
}

/// Reads the node's kind from its metadata and user agent (see [`KIND_METADATA`]).
pub fn node_kind(node: &Node) -> Result<NodeKind, Status> {
    let field = |key: &str| {
        node.metadata.as_ref().and_then(|m| m.fields.get(key)).and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.as_str()),
            _ => None,
        })
    };
    let envoy = match field(KIND_METADATA) {
        Some("envoy") => true,
        Some("grpc") => false,
        Some(other) => {
            return Err(Status::invalid_argument(format!(
                "node metadata {KIND_METADATA} is {other:?}; expected \"envoy\" or \"grpc\""
            )));
        }
        None => node.user_agent_name == "envoy",
    };
    if !envoy {
        return Ok(NodeKind::Grpc);
    }
    let listen = field(LISTEN_METADATA).unwrap_or(DEFAULT_ENVOY_LISTEN);
    let listen = listen.parse::<SocketAddr>().map_err(|_| {
        Status::invalid_argument(format!("node metadata {LISTEN_METADATA} is {listen:?}; expected an ip:port"))
    })?;
    Ok(NodeKind::Envoy { listen })
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let requests = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let stream = inner.next_stream.fetch_add(1, Ordering::Relaxed);
            metrics::gauge!(STREAMS).increment(1.0);
            let outcome = run_stream(&inner, stream, requests, &tx).await;
            lock(&inner.clients).remove(&stream);
            metrics::gauge!(STREAMS).decrement(1.0);
            match outcome {
                Ok(()) => tracing::debug!(stream, "ADS stream ended"),
                Err(status) => {
                    tracing::info!(stream, %status, "ADS stream failed");
                    let _ = tx.send(Err(status)).await;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented("this control plane speaks State-of-the-World ADS only"))
    }
}

/// What one stream knows of one type.
#[derive(Default)]
struct Subscription {
    /// The client has asked for this type.
    requested: bool,
    /// The client has named resources (so an empty list now means none, not all).
    explicit: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    nonce: String,
    version: String,
    /// What the client got from the last response, by name.
    sent: BTreeMap<String, Arc<Resource>>,
    /// What the client last ACKed, by name.
    acked: BTreeMap<String, Arc<Resource>>,
}

struct StreamState<'a> {
    inner: &'a Inner,
    kind: NodeKind,
    types: [Subscription; 4],
    client: Arc<Mutex<ClientState>>,
    tx: &'a mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

async fn run_stream(
    inner: &Inner,
    stream: u64,
    mut requests: Streaming<DiscoveryRequest>,
    tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
) -> Result<(), Status> {
    let Some(first) = requests.message().await? else { return Ok(()) };
    let node = first.node.clone().unwrap_or_default();
    let kind = node_kind(&node)?;
    let client = Arc::new(Mutex::new(ClientState {
        stream,
        node_id: node.id.clone(),
        kind: if matches!(kind, NodeKind::Grpc) { "grpc" } else { "envoy" },
        user_agent: node.user_agent_name.clone(),
        types: ResourceType::ALL.map(|t| (t, TypeState::default())),
    }));
    lock(&inner.clients).insert(stream, Arc::clone(&client));
    tracing::info!(stream, node_id = node.id, kind = ?kind, user_agent = node.user_agent_name, "ADS stream opened");
    // A restarted control plane answers nothing before its first full view.
    let mut view = inner.view.clone();
    if view.wait_for(Option::is_some).await.is_err() {
        return Err(Status::unavailable("the xDS server is shutting down"));
    }
    view.borrow_and_update();
    let mut state = StreamState { inner, kind, types: Default::default(), client, tx };
    state.handle(first).await?;
    loop {
        tokio::select! {
            request = requests.message() => match request? {
                Some(request) => state.handle(request).await?,
                None => return Ok(()),
            },
            changed = view.changed() => {
                if changed.is_err() {
                    return Err(Status::unavailable("the xDS server is shutting down"));
                }
                view.borrow_and_update();
                for kind in ResourceType::ALL {
                    state.sync(kind, false).await?;
                }
            }
        }
    }
}

impl StreamState<'_> {
    fn update_client(&self, kind: ResourceType, f: impl FnOnce(&mut TypeState)) {
        f(&mut lock(&self.client).types[kind.index()].1);
    }

    async fn handle(&mut self, request: DiscoveryRequest) -> Result<(), Status> {
        let Some(kind) = ResourceType::from_type_url(&request.type_url) else {
            tracing::debug!(type_url = request.type_url, "request for a type this server does not serve; ignored");
            return Ok(());
        };
        let index = kind.index();
        if !request.response_nonce.is_empty() && request.response_nonce != self.types[index].nonce {
            metrics::counter!(STALE_REQUESTS, "type" => kind.short()).increment(1);
            tracing::debug!(r#type = kind.short(), nonce = request.response_nonce, "stale nonce; request ignored");
            return Ok(());
        }
        let mut routes_acked = false;
        if !request.response_nonce.is_empty() {
            if let Some(detail) = &request.error_detail {
                let nack = Nack {
                    version: self.types[index].version.clone(),
                    message: detail.message.clone(),
                    at: SystemTime::now(),
                };
                metrics::counter!(NACKS, "type" => kind.short()).increment(1);
                tracing::warn!(
                    r#type = kind.short(),
                    version = nack.version,
                    error = nack.message,
                    "client rejected (NACK) a response; keeping its last good version"
                );
                self.update_client(kind, |t| {
                    t.nacks += 1;
                    t.last_nack = Some(nack);
                });
            } else {
                let sub = &mut self.types[index];
                sub.acked = sub.sent.clone();
                routes_acked = kind == ResourceType::Route;
                let version = request.version_info.clone();
                self.update_client(kind, |t| t.acked_version = version);
            }
        }
        let sub = &mut self.types[index];
        let wildcard = request.resource_names.iter().any(|n| n == "*")
            || (request.resource_names.is_empty() && kind.full_state() && !sub.explicit);
        let names: BTreeSet<String> = request.resource_names.into_iter().filter(|n| n != "*").collect();
        let changed = !sub.requested || wildcard != sub.wildcard || names != sub.names;
        sub.requested = true;
        sub.explicit |= !names.is_empty();
        sub.wildcard = wildcard;
        sub.names = names;
        if changed {
            let (names, wildcard) = (sub.names.iter().cloned().collect(), sub.wildcard);
            self.update_client(kind, |t| {
                t.subscribed = names;
                t.wildcard = wildcard;
            });
        }
        self.sync(kind, changed).await?;
        if routes_acked {
            self.sync(ResourceType::Cluster, false).await?;
        }
        Ok(())
    }

    /// What the client should have of `kind` now.
    fn wanted(&self, kind: ResourceType, snapshot: &Snapshot) -> BTreeMap<String, Arc<Resource>> {
        let sub = &self.types[kind.index()];
        let mut wanted: BTreeMap<String, Arc<Resource>> = BTreeMap::new();
        if sub.wildcard {
            wanted.extend(snapshot.all(kind).into_iter().map(|r| (r.name.clone(), r)));
        }
        for name in &sub.names {
            if let Some(resource) = snapshot.resource(kind, name) {
                wanted.insert(name.clone(), resource);
            }
        }
        if kind == ResourceType::Cluster {
            // Break after make: clusters the ACKed routes still use stay.
            let routes = &self.types[ResourceType::Route.index()].acked;
            for cluster in routes.values().flat_map(|r| r.references.iter()) {
                if wanted.contains_key(cluster) || !(sub.wildcard || sub.names.contains(cluster)) {
                    continue;
                }
                if let Some(previous) = sub.sent.get(cluster) {
                    wanted.insert(cluster.clone(), Arc::clone(previous));
                }
            }
        }
        wanted
    }

    /// Sends `kind` if what the client should have differs from what it
    /// got, or if `force` (its subscription changed: it awaits an answer).
    async fn sync(&mut self, kind: ResourceType, force: bool) -> Result<(), Status> {
        if !self.types[kind.index()].requested {
            return Ok(());
        }
        let Some(snapshot) = self.inner.snapshot(&self.kind) else { return Ok(()) };
        let generation = self.inner.generation().unwrap_or_default();
        let wanted = self.wanted(kind, &snapshot);
        let sub = &mut self.types[kind.index()];
        let same = |a: &Arc<Resource>, b: &Arc<Resource>| Arc::ptr_eq(a, b) || a.digest == b.digest;
        let unchanged = wanted.len() == sub.sent.len()
            && wanted.iter().zip(&sub.sent).all(|((an, a), (bn, b))| an == bn && same(a, b));
        if unchanged && !force {
            return Ok(());
        }
        let resources: Vec<_> = if kind.full_state() {
            wanted.values().map(|r| r.any.clone()).collect()
        } else {
            wanted
                .iter()
                .filter(|(name, r)| sub.sent.get(*name).is_none_or(|s| !same(s, r)))
                .map(|(_, r)| r.any.clone())
                .collect()
        };
        if resources.is_empty() && !kind.full_state() && !force {
            // Only removals: RDS and EDS responses do not delete, so there
            // is nothing to tell (a name that comes back is sent again).
            sub.sent = wanted;
            return Ok(());
        }
        let nonce = self.inner.next_nonce.fetch_add(1, Ordering::Relaxed).to_string();
        let version = generation.to_string();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources,
            type_url: kind.type_url(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        sub.nonce = nonce;
        sub.version = version.clone();
        sub.sent = wanted;
        self.update_client(kind, |t| {
            t.sent_version = version;
            t.responses += 1;
        });
        metrics::counter!(RESPONSES, "type" => kind.short()).increment(1);
        self.tx.send(Ok(response)).await.map_err(|_| Status::cancelled("the client went away"))
    }
}
