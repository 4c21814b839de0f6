//! What the crate's own benches and tests need from its insides (feature
//! `testing`, not part of the API): a synthetic fleet, the index writer
//! the criterion bench drives directly, and raw access to the embedded store
//! for the conformance suite's cleanup check.

pub use crate::index::{IndexWriter, Recency};

use crate::{Meta, Network, ServiceNode};

/// Node `n` of app `app`, serving `methods` methods of `/fleet.App<app>/Method<i>`.
pub fn fleet_node(app: usize, n: usize, methods: usize) -> ServiceNode {
    let lease_id = i64::try_from(app * 1_000_000 + n).unwrap_or(i64::MAX);
    ServiceNode {
        proto_count: 1,
        lease_id,
        run_date: "2025-01-01 00:00:00".into(),
        methods: (0..methods).map(|i| (format!("/fleet.App{app}/Method{i}"), true)).collect(),
        network: Network {
            sn: "default".into(),
            internal: format!("10.{}.{}.{}:9000", app / 250, app % 250, n),
            external: String::new(),
        },
        meta: Meta::new("bench", format!("app-{app}"), "v1"),
        registered_at_ms: Some(lease_id),
        ..Default::default()
    }
}

/// An index of `apps` × `nodes` nodes, each serving `methods` methods.
pub fn fleet_index(apps: usize, nodes: usize, methods: usize) -> IndexWriter {
    let mut writer = IndexWriter::new();
    for a in 0..apps {
        for n in 0..nodes {
            let node = fleet_node(a, n, methods);
            let recency = Recency::of(&node, 0);
            writer.upsert(&format!("bench/app-{a}/{n}"), node, recency);
        }
    }
    writer.publish();
    writer
}

/// The keys `store` holds under `prefix` (the conformance suite's check that
/// a scenario left nothing behind).
#[cfg(feature = "memory")]
pub fn memory_keys(store: &crate::memory::MemoryStore, prefix: &str) -> crate::Result<Vec<String>> {
    store.keys_under(prefix)
}

/// Deletes `key` from `store`, whatever wrote it (a scenario removing the
/// raw records it wrote with [`MemoryStore::put_raw`](crate::memory::MemoryStore::put_raw)).
#[cfg(feature = "memory")]
pub fn memory_delete(store: &crate::memory::MemoryStore, key: &str) -> crate::Result<()> {
    store.delete_raw(key)
}
