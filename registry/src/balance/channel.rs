//! [`WeightedChannel`]: a tonic transport over the discovered nodes, built by
//! [`ChannelBuilder`].

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use registry_core::{Discovery, DiscoveryEvent, ServiceNode};
use tokio::sync::{broadcast, watch};
use tonic::body::Body;
use tonic::codegen::{Service, StdError, http};
use tonic::transport::{Channel, Endpoint};

use super::Selector;
use super::eject::{Ejector, OutlierDetection, OutlierEvent};
use super::picker::{Picker, effective_weight};
use super::policy::{Candidate, Policy};

/// How long a call waits for a matching node when none is discovered
/// (discovery starting, every instance restarting) before it fails with
/// `UNAVAILABLE`, unless [`ChannelBuilder::wait_for_nodes`] says otherwise.
pub const DEFAULT_WAIT_FOR_NODES: Duration = Duration::from_secs(5);

/// No discovered node matched the selector within the wait.
///
/// A call through a [`WeightedChannel`] reports it as gRPC `UNAVAILABLE`
/// (a transient condition: retry policies retry it) with this text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no discovered node for {selector} (waited {waited:?})")]
#[non_exhaustive]
pub struct NoNodes {
    /// What the channel selects.
    pub selector: Selector,
    /// How long it waited for a node.
    pub waited: Duration,
}

impl From<NoNodes> for tonic::Status {
    fn from(no_nodes: NoNodes) -> Self {
        tonic::Status::unavailable(no_nodes.to_string())
    }
}

/// Turns a node's endpoint (its `scheme://network.internal` address) into the
/// endpoint to connect with.
type EndpointTemplate = dyn Fn(Endpoint) -> Result<Endpoint, tonic::transport::Error> + Send + Sync;

/// Builds a [`WeightedChannel`]: what to select, how to reach each node, how
/// long a call waits for one.
///
/// ```no_run
/// # async fn demo(discovery: std::sync::Arc<dyn registry::Discovery>) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use registry::balance::{ChannelBuilder, Selector};
///
/// let channel = ChannelBuilder::new(discovery, Selector::method("/helloworld.Greeter/SayHello"))
///     .endpoint(|e| Ok(e.connect_timeout(Duration::from_secs(1)).timeout(Duration::from_secs(3))))
///     .wait_for_nodes(Duration::from_secs(2))
///     .build();
/// channel.ready().await?; // at least one node is discovered
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build`"]
pub struct ChannelBuilder {
    discovery: Arc<dyn Discovery>,
    selector: Selector,
    scheme: String,
    template: Option<Arc<EndpointTemplate>>,
    wait: Duration,
    outliers: Option<OutlierDetection>,
    policies: Vec<Arc<dyn Policy>>,
    #[cfg(feature = "health-check")]
    health_check: Option<super::HealthCheck>,
}

impl std::fmt::Debug for ChannelBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelBuilder")
            .field("selector", &self.selector)
            .field("scheme", &self.scheme)
            .field("template", &self.template.is_some())
            .field("wait", &self.wait)
            .field("outliers", &self.outliers)
            .field("policies", &self.policies)
            .finish()
    }
}

impl ChannelBuilder {
    /// A channel over the nodes `selector` picks from `discovery`, over
    /// plain HTTP/2 (`http`), waiting [`DEFAULT_WAIT_FOR_NODES`] for a node,
    /// ejecting outliers with [`OutlierDetection::default`].
    pub fn new(discovery: Arc<dyn Discovery>, selector: Selector) -> Self {
        Self {
            discovery,
            selector,
            scheme: "http".to_owned(),
            template: None,
            wait: DEFAULT_WAIT_FOR_NODES,
            outliers: Some(OutlierDetection::default()),
            policies: Vec::new(),
            #[cfg(feature = "health-check")]
            health_check: None,
        }
    }

    /// Active health checking through `grpc.health.v1` ([`super::health_check`]):
    /// `Some(settings)` to turn it on (off by default).
    #[cfg(feature = "health-check")]
    #[cfg_attr(docsrs, doc(cfg(feature = "health-check")))]
    pub fn health_check(mut self, health_check: Option<super::HealthCheck>) -> Self {
        self.health_check = health_check;
        self
    }

    /// Adds a routing policy ([`super::policy`]): version subset, canary
    /// split, zone preference, slow start, or your own. Policies apply in
    /// the order they are added, each to the weights the previous left.
    pub fn policy(mut self, policy: impl Policy + 'static) -> Self {
        self.policies.push(Arc::new(policy));
        self
    }

    /// Passive outlier ejection ([`super::eject`]): `Some(settings)` (the
    /// default is [`OutlierDetection::default`]) or `None` to keep every
    /// discovered node in rotation whatever its calls do.
    pub fn outlier_detection(mut self, outliers: Option<OutlierDetection>) -> Self {
        self.outliers = outliers;
        self
    }

    /// The URI scheme of each node's endpoint: `http` (the default) or
    /// `https` (with a TLS config from [`endpoint`](Self::endpoint)).
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.scheme = scheme.into();
        self
    }

    /// Configures every node's [`Endpoint`] (created from
    /// `scheme://network.internal`): TLS or mTLS (`tls_config` with a
    /// `ClientTlsConfig`, under this crate's `tls` feature), connect and
    /// request timeouts, HTTP/2 keepalive, a concurrency limit per node, …
    /// A node whose endpoint the template rejects is left out with a warning.
    pub fn endpoint(
        mut self,
        template: impl Fn(Endpoint) -> Result<Endpoint, tonic::transport::Error> + Send + Sync + 'static,
    ) -> Self {
        self.template = Some(Arc::new(template));
        self
    }

    /// How long a call (or [`WeightedChannel::ready`]) waits for a matching
    /// node when there is none, before failing with [`NoNodes`]
    /// (`UNAVAILABLE`); `Duration::ZERO` fails at once.
    pub fn wait_for_nodes(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The channel, holding the nodes discovery shows now, and a task that
    /// keeps it current from discovery's events until the last clone of the
    /// channel is dropped. Must be called within a tokio runtime.
    pub fn build(self) -> WeightedChannel {
        let (count, _) = watch::channel(0);
        let (outlier_events, _) = broadcast::channel(64);
        let label = self.selector.to_string();
        let nodes = Arc::new(Nodes {
            selector: self.selector,
            label,
            scheme: self.scheme,
            template: self.template,
            rotation: Mutex::new(Rotation {
                picker: Picker::default(),
                ejector: self.outliers.map(Ejector::new),
                policies: self.policies,
                next_reweigh: None,
                unhealthy: HashSet::new(),
            }),
            count,
            outlier_events,
        });
        // `events` starts with the current nodes, queued when it is called:
        // taking them now (without waiting) makes the first call see them.
        let mut events = self.discovery.events();
        while let Some(Some(event)) = events.next().now_or_never() {
            nodes.apply(event, Seen::AtStart);
        }
        let feeder = tokio::spawn({
            let nodes = Arc::clone(&nodes);
            async move {
                while let Some(event) = events.next().await {
                    nodes.apply(event, Seen::Now);
                }
            }
        });
        #[allow(unused_mut)] // health checking adds a task
        let mut tasks = vec![feeder.abort_handle()];
        #[cfg(feature = "health-check")]
        if let Some(health_check) = self.health_check {
            tasks.push(tokio::spawn(check_health(Arc::clone(&nodes), health_check)).abort_handle());
        }
        WeightedChannel { nodes, wait: self.wait, feeder: Arc::new(Feeder(tasks)) }
    }
}

/// Checks every node's health every interval, for as long as the channel lives.
#[cfg(feature = "health-check")]
async fn check_health(nodes: Arc<Nodes>, health_check: super::HealthCheck) {
    loop {
        tokio::time::sleep(health_check.interval).await;
        let current: Vec<(Arc<str>, Channel)> =
            nodes.lock().picker.entries().map(|(key, node)| (Arc::clone(key), node.channel.clone())).collect();
        let probes = current.into_iter().map(|(key, channel)| {
            let health_check = &health_check;
            async move { (key, health_check.probe(channel).await) }
        });
        for (key, healthy) in futures::future::join_all(probes).await {
            nodes.set_health(&key, healthy);
        }
    }
}

/// Stops the channel's tasks (feeder, health checks) when the last clone goes.
struct Feeder(Vec<tokio::task::AbortHandle>);

impl Drop for Feeder {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// When the channel learnt of a node.
#[derive(Clone, Copy)]
enum Seen {
    /// In the view discovery showed when the channel was built: warm already.
    AtStart,
    /// Later.
    Now,
}

/// A node's connection, the address it was made for, and what policies see.
#[derive(Clone)]
struct NodeChannel {
    uri: String,
    channel: Channel,
    node: Arc<ServiceNode>,
    /// The node's own weight, before policies.
    base_weight: i64,
    /// When this channel first saw it (`None`: when it was built).
    first_seen: Option<tokio::time::Instant>,
}

/// The nodes, their outlier state and the policies over them, changed together.
struct Rotation {
    picker: Picker<NodeChannel>,
    ejector: Option<Ejector>,
    policies: Vec<Arc<dyn Policy>>,
    /// When a policy wants the weights computed again.
    next_reweigh: Option<tokio::time::Instant>,
    /// Nodes whose last active health check failed.
    unhealthy: HashSet<Arc<str>>,
}

impl Rotation {
    /// True when neither outlier ejection nor a health check took `key` out.
    fn healthy(&self, key: &str) -> bool {
        !self.unhealthy.contains(key) && !self.ejector.as_ref().is_some_and(|e| e.is_ejected(key))
    }

    fn remove(&mut self, key: &str) {
        self.picker.remove(key);
        self.unhealthy.remove(key);
        if let Some(ejector) = &mut self.ejector {
            ejector.forget(key);
        }
    }

    /// Runs the policies over the nodes and sets the weights picking uses.
    fn reweigh(&mut self, now: tokio::time::Instant) {
        if self.policies.is_empty() {
            return;
        }
        let mut candidates: Vec<Candidate<'_>> = self
            .picker
            .entries()
            .map(|(key, n)| Candidate {
                node: &n.node,
                weight: n.base_weight,
                healthy: self.healthy(key),
                age: n.first_seen.map_or(Duration::MAX, |seen| now.saturating_duration_since(seen)),
            })
            .collect();
        for policy in &self.policies {
            policy.apply(&mut candidates);
        }
        let refresh = self.policies.iter().filter_map(|p| p.refresh_after(&candidates)).min();
        let weights: Vec<(Arc<str>, i64)> =
            self.picker.entries().zip(&candidates).map(|((key, _), c)| (Arc::clone(key), c.weight)).collect();
        for (key, weight) in weights {
            self.picker.set_weight(&key, weight);
        }
        self.next_reweigh = refresh.map(|after| now + after);
    }
}

/// The balanced nodes, shared by every clone of a channel and its feeder.
struct Nodes {
    selector: Selector,
    /// The selector as a metrics label.
    label: String,
    scheme: String,
    template: Option<Arc<EndpointTemplate>>,
    rotation: Mutex<Rotation>,
    /// Number of nodes in rotation, for callers waiting for one.
    count: watch::Sender<usize>,
    outlier_events: broadcast::Sender<OutlierEvent>,
}

impl Nodes {
    fn lock(&self) -> MutexGuard<'_, Rotation> {
        // A panic while holding the lock cannot leave the rotation invalid: continue with it.
        self.rotation.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn apply(&self, event: DiscoveryEvent, seen: Seen) {
        let now = tokio::time::Instant::now();
        let mut rotation = self.lock();
        let Rotation { picker, ejector, .. } = &mut *rotation;
        match event {
            // A draining node finishes its calls and takes no new ones.
            DiscoveryEvent::Up { key, node } if self.selector.matches(&node) && !node.draining => {
                let uri = format!("{}://{}", self.scheme, node.network.internal);
                let weight = effective_weight(&node);
                let first_seen = match seen {
                    Seen::AtStart => None,
                    Seen::Now => Some(now),
                };
                if let Some(known) = picker.get(&key).filter(|n| n.uri == uri) {
                    let updated = NodeChannel { node, base_weight: weight, ..known.clone() };
                    picker.upsert(key, weight, updated);
                } else {
                    match self.connect(&uri, &node) {
                        Ok(channel) => picker.upsert(
                            key,
                            weight,
                            NodeChannel { uri, channel, node, base_weight: weight, first_seen },
                        ),
                        Err(reason) => {
                            tracing::warn!(%key, address = %node.network.internal, %reason, "leaving out a node");
                            rotation.remove(&key);
                        }
                    }
                }
            }
            DiscoveryEvent::Up { key, .. } | DiscoveryEvent::Down { key, .. } => rotation.remove(&key),
            // Reset: forget everything; the current nodes follow as `Up`.
            _ => {
                picker.clear();
                if let Some(ejector) = ejector {
                    ejector.clear();
                }
                rotation.unhealthy.clear();
            }
        }
        rotation.reweigh(now);
        self.count.send_replace(rotation.picker.pickable());
        self.publish_ejected(&rotation);
    }

    /// A lazily connecting channel to `uri`, or why the node cannot be called.
    fn connect(&self, uri: &str, node: &ServiceNode) -> Result<Channel, String> {
        let endpoint = Endpoint::from_shared(uri.to_owned()).map_err(|e| format!("not a valid address: {e}"))?;
        if endpoint.uri().port().is_none() {
            // Without a port the call would go to the scheme's default port
            // (80, 443), never where a gRPC server of the fleet listens.
            return Err(format!("`{}` has no port", node.network.internal));
        }
        let endpoint = match &self.template {
            Some(template) => template(endpoint).map_err(|e| format!("the endpoint template refused it: {e}"))?,
            None => endpoint,
        };
        Ok(endpoint.connect_lazy())
    }

    /// The next node in rotation (ejected ones left out): its key and channel.
    fn pick(&self) -> Option<(Arc<str>, Channel)> {
        let now = tokio::time::Instant::now();
        let mut rotation = self.lock();
        let returned = rotation.ejector.as_mut().map(|e| e.release(now)).unwrap_or_default();
        let changed = !returned.is_empty();
        for event in returned {
            self.report(event);
        }
        if changed || rotation.next_reweigh.is_some_and(|at| at <= now) {
            rotation.reweigh(now);
        }
        let Rotation { picker, ejector, unhealthy, .. } = &mut *rotation;
        let picked = picker
            .pick_where(|key| !unhealthy.contains(key) && !ejector.as_ref().is_some_and(|e| e.is_ejected(key)))
            .map(owned);
        // Every node left is ejected or unhealthy (the others went): calling one beats
        // failing every call, as Envoy's panic mode does.
        let picked = picked.or_else(|| picker.pick_where(|_| true).map(owned));
        self.publish_ejected(&rotation);
        picked
    }

    /// Records a call's outcome on the node `key`.
    fn record(&self, key: &Arc<str>, failed: bool) {
        let mut rotation = self.lock();
        let nodes = rotation.picker.len();
        let Some(ejector) = &mut rotation.ejector else { return };
        let now = tokio::time::Instant::now();
        if let Some(event) = ejector.record(key, failed, nodes, now) {
            self.report(event);
            rotation.reweigh(now);
            self.publish_ejected(&rotation);
        }
    }

    /// Records a health check's verdict on `key`.
    #[cfg(feature = "health-check")]
    fn set_health(&self, key: &Arc<str>, healthy: bool) {
        let mut rotation = self.lock();
        if rotation.picker.get(key).is_none() {
            return; // left meanwhile
        }
        let changed =
            if healthy { rotation.unhealthy.remove(&**key) } else { rotation.unhealthy.insert(Arc::clone(key)) };
        if changed {
            tracing::info!(selector = %self.selector, %key, healthy, "health check changed a node's state");
            rotation.reweigh(tokio::time::Instant::now());
        }
    }

    fn report(&self, event: OutlierEvent) {
        match &event {
            OutlierEvent::Ejected { key, failures, duration } => {
                tracing::warn!(selector = %self.selector, %key, failures, ?duration, "ejecting a failing node");
                metrics::counter!("registry_balance_ejections_total", "selector" => self.label.clone()).increment(1);
            }
            OutlierEvent::Returned { key } => {
                tracing::info!(selector = %self.selector, %key, "an ejected node takes calls again");
            }
        }
        // Nobody listening is fine.
        let _ = self.outlier_events.send(event);
    }

    fn publish_ejected(&self, rotation: &Rotation) {
        let ejected = rotation.ejector.as_ref().map_or(0, Ejector::ejected);
        #[allow(clippy::cast_precision_loss)] // a node count
        metrics::gauge!("registry_balance_ejected_nodes", "selector" => self.label.clone()).set(ejected as f64);
    }

    /// Waits up to `wait` for a node; the next node's key and channel.
    async fn pick_within(&self, wait: Duration) -> Result<(Arc<str>, Channel), NoNodes> {
        let mut count = self.count.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(channel) = self.pick() {
                return Ok(channel);
            }
            let appeared = tokio::time::timeout_at(deadline, count.wait_for(|n| *n > 0)).await;
            if !matches!(appeared, Ok(Ok(_))) {
                return self.pick().ok_or_else(|| NoNodes { selector: self.selector.clone(), waited: wait });
            }
        }
    }
}

/// A tonic transport that balances calls across discovered nodes by weight
/// (use it wherever a generated client takes a `Channel`). Cheap to clone;
/// clones share the nodes and the rotation. Build it with
/// [`ChannelBuilder`] or [`channel`](super::channel).
///
/// A call made while no node matches waits for one (see
/// [`ChannelBuilder::wait_for_nodes`]) and then fails with `UNAVAILABLE`
/// naming the selector ([`NoNodes`]).
#[derive(Clone)]
pub struct WeightedChannel {
    nodes: Arc<Nodes>,
    wait: Duration,
    feeder: Arc<Feeder>,
}

impl std::fmt::Debug for WeightedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightedChannel")
            .field("selector", &self.nodes.selector)
            .field("nodes", &self.nodes.lock().picker.len())
            .finish()
    }
}

impl WeightedChannel {
    /// A builder for a channel over the nodes `selector` picks from `discovery`.
    pub fn builder(discovery: Arc<dyn Discovery>, selector: Selector) -> ChannelBuilder {
        ChannelBuilder::new(discovery, selector)
    }

    /// The nodes calls are balanced across now, by discovery key, with the
    /// weight each gets.
    pub fn weights(&self) -> std::collections::HashMap<Arc<str>, i64> {
        self.nodes.lock().picker.weights()
    }

    /// The nodes ejected now (by discovery key), whose ejection has not yet
    /// been seen to end by a pick.
    pub fn ejected(&self) -> Vec<Arc<str>> {
        let rotation = self.nodes.lock();
        let Some(ejector) = &rotation.ejector else { return Vec::new() };
        rotation.picker.weights().into_keys().filter(|key| ejector.is_ejected(key)).collect()
    }

    /// Ejections and returns from now on (see [`OutlierEvent`]); a receiver
    /// that falls behind loses the oldest.
    pub fn outlier_events(&self) -> broadcast::Receiver<OutlierEvent> {
        self.nodes.outlier_events.subscribe()
    }

    /// Waits until at least one node matches (within the channel's wait for
    /// nodes); [`NoNodes`] otherwise. Calls wait the same way on their own:
    /// this is for start-up checks and readiness probes.
    pub async fn ready(&self) -> Result<(), NoNodes> {
        self.nodes.pick_within(self.wait).await.map(|_| ())
    }

    /// The node the next call would go to, advancing the rotation as a call
    /// does (ejections, health and policies included); `None` with no node.
    /// For callers that send by other means than this channel (another
    /// protocol to the same fleet) and for measuring the pick.
    pub fn pick(&self) -> Option<Arc<ServiceNode>> {
        let (key, _) = self.nodes.pick()?;
        self.nodes.lock().picker.get(&key).map(|n| Arc::clone(&n.node))
    }

    /// What the channel selects.
    pub fn selector(&self) -> &Selector {
        &self.nodes.selector
    }
}

impl Service<http::Request<Body>> for WeightedChannel {
    type Response = http::Response<Body>;
    type Error = StdError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each node's channel has its own buffer; readiness is awaited per call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let picked = self.nodes.pick();
        let nodes = Arc::clone(&self.nodes);
        let wait = self.wait;
        let feeder = Arc::clone(&self.feeder);
        Box::pin(async move {
            // Discovery stays fed while a call made from a temporary clone waits.
            let _feeder = feeder;
            let (key, mut channel) = match picked {
                Some(picked) => picked,
                None => nodes.pick_within(wait).await.map_err(tonic::Status::from)?,
            };
            let outcome = match futures::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                Ok(()) => channel.call(request).await,
                Err(e) => Err(e),
            };
            nodes.record(&key, outcome.as_ref().map_or(true, answered_unavailable));
            Ok(outcome?)
        })
    }
}

/// True when a response is gRPC `UNAVAILABLE` in its headers (a
/// trailers-only answer: how servers and proxies report it without a body).
fn answered_unavailable(response: &http::Response<Body>) -> bool {
    response.headers().get("grpc-status").is_some_and(|status| status.as_bytes() == b"14")
}

fn owned((key, node): (&Arc<str>, &NodeChannel)) -> (Arc<str>, Channel) {
    (Arc::clone(key), node.channel.clone())
}
