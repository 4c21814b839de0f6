//! [`merged_discovery`]: one discovery over several others (the "read from
//! both" step of a migration). A decorator: the result is an ordinary
//! [`Discoverer`] — lock-free lookups, events, readiness — fed by the
//! sources' change events instead of a store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::{BoxStream, select_all};
use tokio::sync::mpsc;

use crate::store::{RawRecord, Scope, StoreEvent, StoreReader};
use crate::{Discoverer, Discovery, DiscoveryEvent, Error, Result, ServiceNode};

/// Identity of an instance across backends, `app_id@network.internal`: the
/// same process registered on etcd and on Kubernetes has different lease ids
/// (so different [`crate::app_lease_key`]s) but the same app and address.
/// `app_id/lease_id` when the node has no internal address.
pub fn cross_backend_identity(node: &ServiceNode) -> String {
    if node.network.internal.is_empty() {
        format!("{}/{}", node.meta.app_id, node.lease_id)
    } else {
        format!("{}@{}", node.meta.app_id, node.network.internal)
    }
}

/// A discoverer of the union of `sources` (all of one env): nodes are
/// de-duplicated by [`cross_backend_identity`] — when several sources list one
/// instance, the earliest source in `sources` wins — and every source's
/// changes are followed. `namespace` and `env` name the merged view (`env` must be the
/// sources' env); `window` is unused for expiry (sources expire their own
/// nodes) but kept for the discoverer's defaults.
///
/// Starting it (`watcher()`) starts the sources too.
pub fn merged_discovery(
    sources: Vec<Arc<dyn Discovery>>,
    namespace: impl Into<String>,
    env: impl Into<String>,
    window: Duration,
) -> Result<Discoverer> {
    if sources.is_empty() {
        return Err(Error::invalid("merge.sources", "at least one discovery is needed"));
    }
    Ok(Discoverer::from_reader(Arc::new(MergedReader { sources }), Scope::new(namespace, env), window))
}

struct MergedReader {
    sources: Vec<Arc<dyn Discovery>>,
}

impl StoreReader for MergedReader {
    fn events(&self) -> BoxStream<'static, StoreEvent> {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(merge_sources(self.sources.clone(), tx));
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }

    /// The merged view is as current as its sources: their health, in order.
    fn sources_health(&self) -> Option<Vec<crate::SourceHealth>> {
        Some(self.sources.iter().flat_map(|s| s.health().sources).collect())
    }
}

/// Who holds each identity, by source index.
#[derive(Default)]
struct Holdings {
    by_identity: HashMap<String, BTreeMap<usize, Arc<ServiceNode>>>,
}

impl Holdings {
    fn chosen(&self, identity: &str) -> Option<&Arc<ServiceNode>> {
        self.by_identity.get(identity).and_then(|h| h.values().next())
    }

    fn add(&mut self, source: usize, node: Arc<ServiceNode>) -> String {
        let identity = cross_backend_identity(&node);
        self.by_identity.entry(identity.clone()).or_default().insert(source, node);
        identity
    }

    fn remove(&mut self, source: usize, identity: &str) {
        if let Some(holders) = self.by_identity.get_mut(identity) {
            holders.remove(&source);
            if holders.is_empty() {
                self.by_identity.remove(identity);
            }
        }
    }

    fn drop_source(&mut self, source: usize) -> Vec<String> {
        let held: Vec<String> =
            self.by_identity.iter().filter(|(_, h)| h.contains_key(&source)).map(|(k, _)| k.clone()).collect();
        for identity in &held {
            self.remove(source, identity);
        }
        held
    }
}

/// The record for `identity` as it should now be, or its deletion.
fn record_of(holdings: &Holdings, identity: &str) -> StoreEvent {
    match holdings.chosen(identity).map(|n| n.to_json()) {
        Some(Ok(json)) => StoreEvent::Upsert(RawRecord::new(identity, json)),
        Some(Err(e)) => StoreEvent::Malformed { key: identity.to_owned(), reason: e.to_string() },
        None => StoreEvent::Delete { key: identity.to_owned() },
    }
}

async fn merge_sources(sources: Vec<Arc<dyn Discovery>>, tx: mpsc::Sender<StoreEvent>) {
    for source in &sources {
        if let Err(e) = source.watcher().await {
            // The source keeps retrying on its own; merge what the others have.
            if tx.send(StoreEvent::Error(e)).await.is_err() {
                return;
            }
        }
    }
    let mut streams = select_all(
        sources.iter().enumerate().map(|(i, s)| s.events().map(move |e| (i, e)).boxed()).collect::<Vec<_>>(),
    );
    let mut holdings = Holdings::default();
    for (i, source) in sources.iter().enumerate() {
        for node in source.snapshot().all_nodes() {
            holdings.add(i, node);
        }
    }
    let mut initial = vec![StoreEvent::Reset];
    initial.extend(holdings.by_identity.keys().map(|id| record_of(&holdings, id)));
    initial.push(StoreEvent::Synced);
    for event in initial {
        if tx.send(event).await.is_err() {
            return;
        }
    }
    loop {
        let next = tokio::select! {
            _ = tx.closed() => return,
            next = streams.next() => next,
        };
        let Some((source, event)) = next else { return };
        let touched: Vec<String> = match event {
            DiscoveryEvent::Up { node, .. } => vec![holdings.add(source, node)],
            DiscoveryEvent::Down { node, .. } => {
                let identity = cross_backend_identity(&node);
                holdings.remove(source, &identity);
                vec![identity]
            }
            _ => {
                // The source's subscriber lagged: take its current view again.
                let mut touched = holdings.drop_source(source);
                for node in sources[source].snapshot().all_nodes() {
                    touched.push(holdings.add(source, node));
                }
                touched
            }
        };
        for identity in touched {
            if tx.send(record_of(&holdings, &identity)).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
#[cfg(feature = "memory")]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use crate::{GrpcServices, Meta, Network, Register, Registrar, ServiceConf};

    fn conf() -> ServiceConf {
        ServiceConf::default().with_ttl_floor(Duration::from_secs(2)).with_ttl(Duration::from_secs(2))
    }

    fn registrar(store: &MemoryStore, addr: &str) -> Registrar {
        let conf = conf().with_network(Network { internal: addr.into(), ..Default::default() });
        Registrar::new(store, Meta::new("dev", "app", "v1"), conf).expect("valid")
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn union_deduplicated_by_instance_identity() {
        let (old, new) = (MemoryStore::new(), MemoryStore::new());
        let sources: Vec<Arc<dyn Discovery>> = vec![
            Arc::new(Discoverer::new(&old, "dev", conf()).expect("valid")),
            Arc::new(Discoverer::new(&new, "dev", conf()).expect("valid")),
        ];
        let merged = merged_discovery(sources, "default", "dev", Duration::from_secs(2)).expect("valid");
        let node = || GrpcServices::new().service("t.S", ["M"]).expect("valid").into_node();
        // One process on both backends, one only on the old, one only on the new.
        let both_old = registrar(&old, "10.0.0.1:1");
        let both_new = registrar(&new, "10.0.0.1:1");
        let only_old = registrar(&old, "10.0.0.2:1");
        let only_new = registrar(&new, "10.0.0.3:1");
        for r in [&both_old, &both_new, &only_old, &only_new] {
            r.install(node()).await.expect("installed");
        }
        merged.watcher().await.expect("ready");
        settle().await;
        let addrs = |d: &Discoverer| -> Vec<String> {
            let mut a: Vec<String> = d
                .get_service("/t.S/M")
                .map(|n| n.iter().map(|n| n.network.internal.clone()).collect())
                .unwrap_or_default();
            a.sort();
            a
        };
        assert_eq!(addrs(&merged), ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"]);
        // Leaving one backend keeps the instance while the other still lists it.
        both_old.uninstall().await.expect("uninstalled");
        settle().await;
        assert_eq!(addrs(&merged), ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"]);
        both_new.uninstall().await.expect("uninstalled");
        only_old.uninstall().await.expect("uninstalled");
        settle().await;
        assert_eq!(addrs(&merged), ["10.0.0.3:1"]);
        only_new.uninstall().await.expect("uninstalled");
    }
}
