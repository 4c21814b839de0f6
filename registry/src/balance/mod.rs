//! Weighted tonic load balancing over discovered nodes.
//!
//! [`channel`] (or [`ChannelBuilder`] for TLS, timeouts and the wait for
//! nodes) turns a [`Discovery`] plus a [`Selector`] into a
//! [`WeightedChannel`]: a tonic-compatible transport (use it wherever a
//! generated client takes a `Channel`) that sends each call to one of the
//! matching nodes' `network.internal` addresses in proportion to their
//! `weight`, and follows discovery: a node that drains, uninstalls or expires
//! stops receiving new calls; a new one starts receiving them.
//!
//! - The channel starts from the nodes discovery shows when it is built: a
//!   call made right after `watcher()` returned sees them.
//! - A call made while no node matches waits for one up to
//!   [`ChannelBuilder::wait_for_nodes`] ([`DEFAULT_WAIT_FOR_NODES`]), then
//!   fails with gRPC `UNAVAILABLE` naming the selector ([`NoNodes`]), so a
//!   client's retry policy retries it. [`WeightedChannel::ready`] waits the
//!   same way without a call.
//! - A node registered without a port in its address is left out with a
//!   warning (a call would go to port 80).
//! - A node whose calls fail in a row (it cannot be reached, or answers
//!   `UNAVAILABLE`) is ejected for a backoff period ([`eject`]: Envoy's
//!   consecutive gateway failures, gRFC A50), never more than a share of the
//!   nodes; a registration that outlives its server stops costing calls.
//! - With the `health-check` feature, nodes can be checked actively through
//!   `grpc.health.v1` (`health_check`, gRFC A17).
//! - Routing policies compose over the node set ([`policy`]): a version
//!   subset, an exact canary split, zone preference with spill-over, slow
//!   start.
//!
//! [`DiscoverNodes`] offers the same nodes as a `tower::discover::Discover`
//! stream for the ecosystem's balancers (tower's `p2c::Balance`, tonic's
//! `Channel::balance_channel`).
//!
//! # Picking: smooth weighted round robin
//!
//! tonic's `Channel::balance_channel` and tower's `p2c::Balance` pick among
//! endpoints without weights (power of two random choices on load), and no
//! maintained crate balances tower services by static weight. Picking is a
//! few lines: **smooth weighted round robin** (the nginx algorithm), exact
//! over every window of the total weight: a 3:1 split sends exactly 3 of
//! every 4 calls to the heavier node, interleaved rather than in bursts. Each
//! node keeps one lazily connected tonic [`Channel`](tonic::transport::Channel)
//! (HTTP/2, reconnecting on its own).
//!
//! # Weights
//!
//! A node's [`ServiceNode::weight`](registry_core::ServiceNode::weight) is its
//! share. A weight ≤ 0 counts as [`DEFAULT_WEIGHT`](registry_core::DEFAULT_WEIGHT):
//! the Go framework writes `0` for a node whose weight was never set, and
//! such a node must not be starved. To take a node out of rotation, drain or
//! uninstall it.

mod channel;
mod discover;
pub mod eject;
#[cfg(feature = "health-check")]
#[cfg_attr(docsrs, doc(cfg(feature = "health-check")))]
pub mod health_check;
mod picker;
pub mod policy;
mod selector;

use std::sync::Arc;

use registry_core::Discovery;

pub use channel::{ChannelBuilder, DEFAULT_WAIT_FOR_NODES, NoNodes, WeightedChannel};
pub use discover::DiscoverNodes;
pub use eject::{OutlierDetection, OutlierEvent};
#[cfg(feature = "health-check")]
pub use health_check::HealthCheck;
pub use picker::effective_weight;
pub use policy::{CanarySplit, Policy, SlowStart, VersionSubset, ZonePreference};
pub use selector::Selector;

/// A [`WeightedChannel`] across the nodes `selector` picks from `discovery`,
/// kept current by its events; `scheme` is `http` or `https`. Shorthand for
/// `ChannelBuilder::new(discovery, selector).scheme(scheme).build()`: use
/// the builder for TLS, timeouts and the wait for nodes. Must be called
/// within a tokio runtime.
pub fn channel(discovery: Arc<dyn Discovery>, selector: Selector, scheme: &str) -> WeightedChannel {
    ChannelBuilder::new(discovery, selector).scheme(scheme).build()
}
