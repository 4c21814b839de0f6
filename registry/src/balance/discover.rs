//! [`DiscoverNodes`]: the discovered nodes of a [`Selector`] as a
//! `tower::discover::Discover` stream, the ecosystem's integration point
//! (tower's `p2c::Balance`, tonic's `Channel::balance_channel`, `tonic-xds`).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use futures::stream::BoxStream;
use registry_core::{Discovery, DiscoveryEvent, ServiceNode};
use tower::discover::Change;

use super::Selector;

/// The nodes `selector` picks from a [`Discovery`], as tower
/// [`Change`]s keyed by the instance's discovery key: first an
/// `Insert` for every node discovery shows now, then `Insert` for a node
/// that appears or whose address, weight or identity changed, and `Remove`
/// for one that leaves, stops matching or starts draining. The value is the
/// node itself (address, `weight`, `meta.version`, `network.sn`), so a
/// consumer turns it into the service it balances — see
/// [`map_service`](Self::map_service).
///
/// It implements `tower::discover::Discover` (any `TryStream` of `Change`s
/// does). When discovery tells a subscriber that fell behind to start over
/// ([`DiscoveryEvent::Reset`]), every known node is removed and the current
/// ones inserted again.
///
/// tower's power-of-two-choices balancer over it:
///
/// ```no_run
/// # async fn demo(discovery: std::sync::Arc<dyn registry::Discovery>) -> Result<(), Box<dyn std::error::Error>> {
/// use registry::balance::{DiscoverNodes, Selector};
/// use tonic::transport::Endpoint;
/// use tower::load::{CompleteOnResponse, PendingRequests};
///
/// let nodes = DiscoverNodes::new(&*discovery, Selector::method("/helloworld.Greeter/SayHello"));
/// let services = nodes.map_service(|node| {
///     let channel = Endpoint::from_shared(format!("http://{}", node.network.internal))?.connect_lazy();
///     Ok::<_, tonic::transport::Error>(PendingRequests::new(channel, CompleteOnResponse::default()))
/// });
/// let balance = tower::balance::p2c::Balance::new(services);
/// // tonic clients need a cloneable transport: buffer the balancer.
/// type Request = tonic::codegen::http::Request<tonic::body::Body>;
/// let transport: tower::buffer::Buffer<Request, _> = tower::buffer::Buffer::new(balance, 1024);
/// // let mut client = GreeterClient::new(transport);
/// # Ok(()) }
/// ```
///
/// tonic's own balanced channel, fed from it:
///
/// ```no_run
/// # async fn demo(discovery: std::sync::Arc<dyn registry::Discovery>) -> Result<(), Box<dyn std::error::Error>> {
/// use futures::StreamExt;
/// use registry::balance::{DiscoverNodes, Selector};
/// use tonic::transport::{Channel, Endpoint, channel};
/// use tower::discover::Change;
///
/// let (balanced, changes) = Channel::balance_channel::<std::sync::Arc<str>>(64);
/// let mut nodes = DiscoverNodes::new(&*discovery, Selector::app("greeter"));
/// tokio::spawn(async move {
///     while let Some(Ok(change)) = nodes.next().await {
///         let change = match change {
///             Change::Insert(key, node) => match Endpoint::from_shared(format!("http://{}", node.network.internal)) {
///                 // tonic has its own `Change` type for `balance_channel`.
///                 Ok(endpoint) => channel::Change::Insert(key, endpoint),
///                 Err(_) => continue,
///             },
///             Change::Remove(key) => channel::Change::Remove(key),
///         };
///         if changes.send(change).await.is_err() {
///             return; // the channel is gone
///         }
///     }
/// });
/// // let mut client = GreeterClient::new(balanced);
/// # Ok(()) }
/// ```
pub struct DiscoverNodes {
    events: BoxStream<'static, DiscoveryEvent>,
    selector: Selector,
    /// The nodes handed out, as last inserted.
    known: HashMap<Arc<str>, Arc<ServiceNode>>,
    /// Changes decided but not yet handed out.
    pending: VecDeque<Change<Arc<str>, Arc<ServiceNode>>>,
}

impl std::fmt::Debug for DiscoverNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoverNodes").field("selector", &self.selector).field("known", &self.known.len()).finish()
    }
}

impl DiscoverNodes {
    /// The changes of the nodes `selector` picks from `discovery`, starting
    /// with the nodes it shows now.
    pub fn new(discovery: &dyn Discovery, selector: Selector) -> Self {
        Self { events: discovery.events(), selector, known: HashMap::new(), pending: VecDeque::new() }
    }

    /// The same changes with each inserted node turned into a service by
    /// `make` (a node `make` refuses is skipped with a warning, and removed
    /// if an earlier version of it was inserted).
    pub fn map_service<S, E, F>(self, mut make: F) -> impl Stream<Item = Result<Change<Arc<str>, S>, Infallible>>
    where
        F: FnMut(&ServiceNode) -> Result<S, E>,
        E: std::fmt::Display,
    {
        futures::StreamExt::filter_map(self, move |change| {
            let mapped = match change {
                Ok(Change::Insert(key, node)) => match make(&node) {
                    Ok(service) => Some(Ok(Change::Insert(key, service))),
                    Err(error) => {
                        tracing::warn!(%key, address = %node.network.internal, %error, "leaving out a node");
                        Some(Ok(Change::Remove(key)))
                    }
                },
                Ok(Change::Remove(key)) => Some(Ok(Change::Remove(key))),
                Err(never) => match never {},
            };
            std::future::ready(mapped)
        })
    }

    /// What the stream selects.
    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    fn apply(&mut self, event: DiscoveryEvent) {
        match event {
            DiscoveryEvent::Up { key, node } if self.selector.matches(&node) && !node.draining => {
                let changed = self.known.get(&key).is_none_or(|known| !same_endpoint(known, &node));
                if changed {
                    self.known.insert(Arc::clone(&key), Arc::clone(&node));
                    self.pending.push_back(Change::Insert(key, node));
                }
            }
            DiscoveryEvent::Up { key, .. } | DiscoveryEvent::Down { key, .. } => {
                if self.known.remove(&key).is_some() {
                    self.pending.push_back(Change::Remove(key));
                }
            }
            // Reset: the current nodes follow as `Up`.
            _ => {
                for (key, _) in self.known.drain() {
                    self.pending.push_back(Change::Remove(key));
                }
            }
        }
    }
}

/// True when a consumer has nothing to redo: heartbeats change a node's
/// stamps, not where or how much it serves.
fn same_endpoint(a: &ServiceNode, b: &ServiceNode) -> bool {
    a.network == b.network && a.weight == b.weight && a.meta == b.meta
}

impl Stream for DiscoverNodes {
    type Item = Result<Change<Arc<str>, Arc<ServiceNode>>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match self.events.as_mut().poll_next(cx) {
                Poll::Ready(Some(event)) => self.apply(event),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use registry_core::Meta;

    fn node(app: &str, addr: &str, weight: i64) -> Arc<ServiceNode> {
        let mut node = ServiceNode { weight, ..Default::default() };
        node.meta = Meta::new("dev", app, "v1");
        node.network.internal = addr.to_owned();
        Arc::new(node)
    }

    fn up(key: &str, node: Arc<ServiceNode>) -> DiscoveryEvent {
        DiscoveryEvent::Up { key: Arc::from(key), node }
    }

    fn changes(events: Vec<DiscoveryEvent>) -> Vec<String> {
        let mut nodes = DiscoverNodes {
            events: futures::stream::iter(events).boxed(),
            selector: Selector::app("a"),
            known: HashMap::new(),
            pending: VecDeque::new(),
        };
        let mut seen = Vec::new();
        while let Some(Some(Ok(change))) = nodes.next().now_or_never() {
            seen.push(match change {
                Change::Insert(key, node) => format!("+{key}@{}w{}", node.network.internal, node.weight),
                Change::Remove(key) => format!("-{key}"),
            });
        }
        seen
    }

    use futures::FutureExt;

    #[test]
    fn inserts_once_per_endpoint_and_removes_what_leaves() {
        let a1 = node("a", "127.0.0.1:1", 100);
        let seen = changes(vec![
            up("k1", Arc::clone(&a1)),
            up("k2", node("b", "127.0.0.1:2", 100)),
            // A heartbeat: same endpoint, no change handed out.
            up("k1", Arc::clone(&a1)),
            up("k1", node("a", "127.0.0.1:1", 300)),
            DiscoveryEvent::Down { key: Arc::from("k1"), node: a1 },
        ]);
        assert_eq!(seen, ["+k1@127.0.0.1:1w100", "+k1@127.0.0.1:1w300", "-k1"]);
    }

    #[test]
    fn draining_removes_and_reset_starts_over() {
        let mut draining = (*node("a", "127.0.0.1:1", 100)).clone();
        draining.draining = true;
        let seen = changes(vec![
            up("k1", node("a", "127.0.0.1:1", 100)),
            up("k2", node("a", "127.0.0.1:2", 100)),
            up("k1", Arc::new(draining)),
            DiscoveryEvent::Reset,
            up("k2", node("a", "127.0.0.1:2", 100)),
        ]);
        assert_eq!(seen, ["+k1@127.0.0.1:1w100", "+k2@127.0.0.1:2w100", "-k1", "-k2", "+k2@127.0.0.1:2w100"]);
    }
}
