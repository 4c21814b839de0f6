//! Weighted tonic load balancing over discovered nodes.
//!
//! [`channel`] turns a [`Discovery`] plus a [`Selector`] into a
//! [`WeightedChannel`]: a tonic-compatible transport (use it wherever a
//! generated client takes a `Channel`) that sends each call to one of the
//! matching nodes' `network.internal` addresses in proportion to their
//! `weight`, and follows discovery: a node that drains, uninstalls or expires
//! stops receiving new calls; a new one starts receiving them.
//!
//! # Why our own balancer
//!
//! tonic's `Channel::balance_channel` and tower's `p2c::Balance` pick among
//! endpoints without weights (power of two random choices on load), and no
//! maintained crate balances tower services by static weight. Picking is a
//! few lines: **smooth weighted round robin** (the nginx algorithm). Every
//! node's running score grows by its weight on each pick, the highest score
//! wins and gives back the total, so a 3:1 split sends exactly 3 of every 4
//! calls to the heavier node, interleaved rather than in bursts, with no
//! randomness to make a test or a small fleet uneven. Each node keeps one
//! lazily connected tonic [`Channel`] (HTTP/2, reconnecting on its own).
//!
//! # Weights
//!
//! A node's [`ServiceNode::weight`] is its share. A weight ≤ 0 counts as
//! [`DEFAULT_WEIGHT`]: the Go framework writes `0` for a node whose weight was
//! never set, and such a node must not be starved. To take a node out of
//! rotation, uninstall it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::StreamExt;
use registry_core::{DEFAULT_WEIGHT, Discovery, DiscoveryEvent, ServiceNode};
use tonic::body::Body;
use tonic::codegen::{Service, StdError, http};
use tonic::transport::{Channel, Endpoint};

/// Which discovered nodes to balance across.
#[derive(Clone, Debug)]
pub enum Selector {
    /// Nodes that serve this gRPC method (`/pkg.Service/Method`).
    Method(String),
    /// Nodes of this app.
    App(String),
}

impl Selector {
    fn matches(&self, node: &ServiceNode) -> bool {
        match self {
            Selector::Method(m) => node.serves(m),
            Selector::App(a) => &node.meta.app_id == a,
        }
    }
}

/// The call went nowhere: discovery has no node for the selector right now.
#[derive(Debug, thiserror::Error)]
#[error("no discovered node to send the call to")]
pub struct NoNodes;

/// One balanced node.
struct Slot {
    key: Arc<str>,
    uri: String,
    weight: i64,
    /// Smooth weighted round robin score.
    score: i64,
    channel: Channel,
}

/// Smooth weighted round robin over the current nodes.
#[derive(Default)]
struct Picker {
    slots: Vec<Slot>,
}

impl Picker {
    /// The index of the next node.
    fn pick_index(&mut self) -> Option<usize> {
        let mut total = 0;
        for slot in &mut self.slots {
            slot.score += slot.weight;
            total += slot.weight;
        }
        // The first highest score wins, so ties go in insertion order.
        let best =
            (0..self.slots.len()).reduce(|b, i| if self.slots[i].score > self.slots[b].score { i } else { b })?;
        self.slots[best].score -= total;
        Some(best)
    }

    fn pick(&mut self) -> Option<Channel> {
        self.pick_index().map(|i| self.slots[i].channel.clone())
    }

    /// Adds a node, or updates its address and weight.
    fn upsert(&mut self, key: Arc<str>, uri: String, weight: i64) -> Result<(), tonic::transport::Error> {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.key == key) {
            if slot.uri == uri {
                slot.weight = weight;
                return Ok(());
            }
            slot.channel = Endpoint::from_shared(uri.clone())?.connect_lazy();
            slot.uri = uri;
            slot.weight = weight;
            return Ok(());
        }
        let channel = Endpoint::from_shared(uri.clone())?.connect_lazy();
        self.slots.push(Slot { key, uri, weight, score: 0, channel });
        Ok(())
    }

    fn remove(&mut self, key: &str) {
        self.slots.retain(|s| &*s.key != key);
    }

    fn weights(&self) -> HashMap<Arc<str>, i64> {
        self.slots.iter().map(|s| (Arc::clone(&s.key), s.weight)).collect()
    }
}

/// The weight a balancer gives `node`: its `weight`, or [`DEFAULT_WEIGHT`] when ≤ 0.
pub fn effective_weight(node: &ServiceNode) -> i64 {
    if node.weight > 0 { node.weight } else { DEFAULT_WEIGHT }
}

/// A tonic transport that balances calls across discovered nodes by weight.
/// Cheap to clone; clones share the nodes and the rotation.
#[derive(Clone, Default)]
pub struct WeightedChannel {
    picker: Arc<Mutex<Picker>>,
}

impl std::fmt::Debug for WeightedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightedChannel").field("nodes", &self.lock().slots.len()).finish()
    }
}

impl WeightedChannel {
    fn lock(&self) -> MutexGuard<'_, Picker> {
        // A panic while holding the lock cannot leave the rotation invalid: continue with it.
        self.picker.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The nodes calls are balanced across now, by discovery key, with the
    /// weight each gets.
    pub fn weights(&self) -> HashMap<Arc<str>, i64> {
        self.lock().weights()
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
        let picked = self.lock().pick();
        Box::pin(async move {
            let mut channel = picked.ok_or(NoNodes)?;
            futures::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
            Ok(channel.call(request).await?)
        })
    }
}

/// A [`WeightedChannel`] across the nodes `selector` picks from `discovery`,
/// kept current by its events. `scheme` is `http` or `https`. Nodes whose
/// address does not form a valid URI are skipped with a warning.
///
/// The returned task ends at the first discovery event after every clone of
/// the channel is dropped.
pub fn channel(
    discovery: Arc<dyn Discovery>,
    selector: Selector,
    scheme: &'static str,
) -> (WeightedChannel, tokio::task::JoinHandle<()>) {
    let channel = WeightedChannel::default();
    let feeder = Arc::downgrade(&channel.picker);
    let task = tokio::spawn(async move {
        let mut events = discovery.events();
        while let Some(event) = events.next().await {
            let Some(picker) = feeder.upgrade() else { return };
            let mut picker = picker.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match event {
                // A draining node finishes its calls and takes no new ones.
                DiscoveryEvent::Up { key, node } if selector.matches(&node) && !node.draining => {
                    let uri = format!("{scheme}://{}", node.network.internal);
                    if let Err(e) = picker.upsert(Arc::clone(&key), uri, effective_weight(&node)) {
                        tracing::warn!(%key, address = %node.network.internal, error = %e, "skipping node with an invalid address");
                        picker.remove(&key);
                    }
                }
                DiscoveryEvent::Up { key, .. } | DiscoveryEvent::Down { key, .. } => picker.remove(&key),
                // Reset: forget everything; the current nodes follow as `Up`.
                _ => picker.slots.clear(),
            }
        }
    });
    (channel, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picker(weights: &[i64]) -> Picker {
        let mut picker = Picker::default();
        for (i, w) in weights.iter().enumerate() {
            let key: Arc<str> = Arc::from(format!("n{i}"));
            // Channels are lazy: nothing connects in this test.
            picker.upsert(key, format!("http://127.0.0.1:{}", 1000 + i), *w).expect("valid uri");
        }
        picker
    }

    fn shares(picker: &mut Picker, calls: usize) -> Vec<usize> {
        let mut counts = vec![0; picker.slots.len()];
        for _ in 0..calls {
            counts[picker.pick_index().expect("a node")] += 1;
        }
        counts
    }

    #[tokio::test]
    async fn smooth_weighted_round_robin_splits_exactly_and_interleaves() {
        let mut p = picker(&[300, 100]);
        assert_eq!(shares(&mut p, 4000), [3000, 1000]);
        let mut p = picker(&[5, 1, 1]);
        assert_eq!(shares(&mut p, 7), [5, 1, 1]);
        // Interleaved, not in bursts: the heavy node never runs 5 in a row.
        let mut p = picker(&[5, 1, 1]);
        let order: Vec<usize> = (0..7).map(|_| p.pick_index().expect("a node")).collect();
        assert_eq!(order, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[tokio::test]
    async fn empty_picker_picks_nothing() {
        assert!(Picker::default().pick_index().is_none());
    }

    #[test]
    fn non_positive_weight_counts_as_default() {
        let mut node = ServiceNode { weight: 0, ..Default::default() };
        assert_eq!(effective_weight(&node), DEFAULT_WEIGHT);
        node.weight = -5;
        assert_eq!(effective_weight(&node), DEFAULT_WEIGHT);
        node.weight = 7;
        assert_eq!(effective_weight(&node), 7);
    }
}
