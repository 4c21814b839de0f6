//! The [`Discovery`] trait and its change events.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::{Health, Nodes, Result, ServiceIndex, ServiceNode};

/// Finds nodes by gRPC method from a local cache kept current by the
/// backend's change stream.
///
/// Semantics every backend honours (proved by the conformance suite):
/// - [`get_service`](Discovery::get_service) answers from the local cache:
///   no I/O, no locks, no copy of node data; nodes of every app that serves
///   the method, newest registration first; only nodes that declare the
///   method; never a draining node ([`ServiceNode::draining`]) unless the
///   discoverer was told to add them after the serving ones
///   ([`DrainingNodes::Last`]).
/// - [`watcher`](Discovery::watcher) starts following the backend's change
///   stream (etcd watch, Consul blocking queries, Kubernetes watch) and returns
///   once the first full listing is in the cache. If that first listing
///   fails, it returns the error and keeps retrying in the background (call
///   [`wait_ready`](Discovery::wait_ready) to wait for it). While the
///   backend is unreachable, discovery keeps serving its last view.
/// - Dead instances disappear: on their store's own expiry, or — for stores
///   without one — when no heartbeat was observed for one TTL on the
///   discoverer's monotonic clock (writer clock skew does not matter) and,
///   for a reader that reports progress, the store confirmed the view after
///   that (a silently dead stream hides no one).
/// - Records that do not parse, belong to another env, or are otherwise
///   foreign are skipped and counted ([`skipped`](Discovery::skipped)),
///   never fatal and never hiding other nodes.
/// - [`unwatch`](Discovery::unwatch) stops following promptly; the last view stays.
/// - [`health`](Discovery::health) says, per source, how far the view can be
///   trusted: time since the store last confirmed it, whether the change
///   stream is healthy, resyncs, and `stale`. A stream whose connection
///   died silently is detected within its reader's bound (etcd and Consul:
///   2 s of silence plus the request timeout, 7 s with the defaults;
///   Kubernetes: 2 s of silence plus a 5 s probe of the API server, 7 s) and
///   resumed without user action.
/// - A listing never empties a non-empty view unless the rule says so
///   ([`EmptyProtection`](crate::conf::EmptyProtection)).
#[async_trait]
pub trait Discovery: Send + Sync {
    /// Nodes serving `method` (`/pkg.Service/Method`), newest first: the
    /// serving ones only ([`DrainingNodes::Exclude`], the default) or the
    /// serving ones then the draining ones ([`DrainingNodes::Last`]).
    ///
    /// Errors: [`Error::MethodNotFound`](crate::Error::MethodNotFound) when
    /// no node declares the method, [`Error::AllDraining`](crate::Error::AllDraining)
    /// when every node that does is draining (and draining nodes are
    /// excluded), [`Error::NotReady`](crate::Error::NotReady) before the
    /// first listing. A successful answer is never empty.
    fn get_service(&self, method: &str) -> Result<Nodes>;

    /// Nodes of `app_id`: serving ones newest first, then draining ones
    /// (whatever [`DrainingNodes`] says: this is the inventory view), or
    /// [`Error::NodeNotFound`](crate::Error::NodeNotFound).
    fn get_app(&self, app_id: &str) -> Result<Nodes>;

    /// App ids with at least one live node, sorted.
    fn apps(&self) -> Vec<Arc<str>>;

    /// The whole current view.
    fn snapshot(&self) -> Arc<ServiceIndex>;

    /// Starts following changes; returns when the cache is ready (see the trait docs).
    async fn watcher(&self) -> Result<()>;

    /// Waits until the first full listing is in the cache.
    async fn wait_ready(&self);

    /// Stops following changes. Idempotent; the last view stays readable.
    fn unwatch(&self);

    /// A stream of changes: first the current nodes as [`DiscoveryEvent::Up`],
    /// then every change. A subscriber that falls behind gets
    /// [`DiscoveryEvent::Reset`] followed by the current nodes again.
    fn events(&self) -> BoxStream<'static, DiscoveryEvent>;

    /// Records skipped so far because they were malformed or foreign.
    fn skipped(&self) -> u64;

    /// How current the view is, per source (see [`crate::health`]'s figures
    /// in [`Health`]). Cheap: no I/O.
    fn health(&self) -> Health;
}

/// Whether [`Discovery::get_service`] answers draining nodes
/// ([`ServiceNode::draining`]: instances shutting down, or drained by an
/// operator).
///
/// Set per discoverer with `DiscoveryOptions::with_draining_nodes` or at
/// any time with [`Discoverer::set_draining_nodes`](crate::Discoverer::set_draining_nodes).
/// Either way a lookup stays one hash-map probe without allocation: the
/// index keeps every list serving-first, and the serving part is a view of
/// the same allocation ([`Nodes::serving`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DrainingNodes {
    /// Never answer a draining node (the default): a caller picking from the
    /// answer sends no new call to an instance that is shutting down.
    #[default]
    Exclude,
    /// Answer the serving nodes first, then the draining ones (newest first
    /// each): for callers that prefer a draining node to no node at all (a
    /// draining instance still serves until it stops).
    Last,
}

/// A change seen by discovery.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum DiscoveryEvent {
    /// A node appeared or changed.
    Up {
        /// Stable key of the instance in its store.
        key: Arc<str>,
        /// The node.
        node: Arc<ServiceNode>,
    },
    /// A node left (uninstalled, expired, or its record became invalid).
    Down {
        /// Stable key of the instance in its store.
        key: Arc<str>,
        /// The node as last seen.
        node: Arc<ServiceNode>,
    },
    /// The subscriber missed events: forget everything; the current nodes follow as `Up`.
    Reset,
}
