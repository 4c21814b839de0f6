//! tonic load balancing over discovered nodes.
//!
//! [`channel`] turns a [`Discovery`] plus a [`Selector`] into a tonic
//! [`Channel`] that balances across the matching nodes' `network.internal`
//! addresses and follows discovery: a node that uninstalls or expires stops
//! receiving requests; a new one starts receiving them. Under the hood it is
//! tonic's `Channel::balance_channel`, fed with `Change`s (tonic's form of `tower::discover::Change`).

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use registry_core::{Discovery, DiscoveryEvent, ServiceNode};
use tonic::transport::channel::Change;
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

/// A channel balancing across the nodes `selector` picks from `discovery`,
/// kept current by its events. `scheme` is `http` or `https`. Nodes whose
/// address does not form a valid URI are skipped with a warning.
///
/// The returned task ends when the channel is dropped.
pub fn channel(
    discovery: Arc<dyn Discovery>,
    selector: Selector,
    scheme: &'static str,
) -> (Channel, tokio::task::JoinHandle<()>) {
    let (channel, changes) = Channel::balance_channel::<Arc<str>>(64);
    let task = tokio::spawn(async move {
        let mut events = discovery.events();
        let mut live: HashMap<Arc<str>, String> = HashMap::new();
        while let Some(event) = events.next().await {
            let sent = match event {
                DiscoveryEvent::Up { key, node } if selector.matches(&node) => {
                    let uri = format!("{scheme}://{}", node.network.internal);
                    if live.get(&key) == Some(&uri) {
                        continue;
                    }
                    match Endpoint::from_shared(uri.clone()) {
                        Ok(endpoint) => {
                            live.insert(Arc::clone(&key), uri);
                            changes.send(Change::Insert(key, endpoint)).await
                        }
                        Err(e) => {
                            tracing::warn!(%key, address = %node.network.internal, error = %e, "skipping node with an invalid address");
                            continue;
                        }
                    }
                }
                DiscoveryEvent::Up { key, .. } | DiscoveryEvent::Down { key, .. } => {
                    if live.remove(&key).is_none() {
                        continue;
                    }
                    changes.send(Change::Remove(key)).await
                }
                _ => {
                    // Reset: forget everything; the current nodes follow as `Up`.
                    let mut result = Ok(());
                    for (key, _) in live.drain() {
                        result = result.and(changes.send(Change::Remove(key)).await);
                    }
                    result
                }
            };
            if sent.is_err() {
                // The channel was dropped.
                return;
            }
        }
    });
    (channel, task)
}
