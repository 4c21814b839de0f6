//! What the crate's own benches and tests need from its insides (feature
//! `testing`, not part of the API): a synthetic fleet, and the index writer
//! the criterion bench drives directly.

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
