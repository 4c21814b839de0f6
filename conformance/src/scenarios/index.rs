//! Ordering and the method index.

use registry_core::Register;

use super::World;
use crate::Backend;
use crate::fixtures::{PROPAGATION, eventually, leases_for, method, method_absent, node};

/// Two instances of one app are both returned, the newer registration first —
/// both for a discoverer that saw them arrive and for one that lists them later.
pub async fn two_instances_newest_first<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    let early = w.discoverer().await?;
    let m = method("t.Pair", "Get");
    let first = w.start("pair", node("t.Pair", &["Get"])).await?;
    eventually(PROPAGATION, "first visible", || leases_for(&*early, &m) == [first.node.lease_id]).await?;
    // Registration timestamps have millisecond resolution; keep them apart.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = w.start("pair", node("t.Pair", &["Get"])).await?;
    let want = [second.node.lease_id, first.node.lease_id];
    eventually(PROPAGATION, "newest first (watching)", || leases_for(&*early, &m) == want).await?;
    let late = w.discoverer().await?;
    eventually(PROPAGATION, "newest first (fresh listing)", || leases_for(&*late, &m) == want).await?;
    first.stop().await?;
    second.stop().await?;
    w.cleanup().await?;
    Ok(())
}

/// Re-installing with other methods moves the index; when the last provider
/// of a method leaves, the method is not found.
pub async fn method_index_follows_nodes<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    let disc = w.discoverer().await?;
    let (old, new) = (method("t.Idx", "Old"), method("t.Idx", "New"));
    let inst = w.start("indexed", node("t.Idx", &["Old"])).await?;
    eventually(PROPAGATION, "old method visible", || !leases_for(&*disc, &old).is_empty()).await?;
    let updated = inst.registrar.install(node("t.Idx", &["New"])).await?;
    anyhow::ensure!(updated.lease_id == inst.node.lease_id, "re-install changed the instance identity");
    eventually(PROPAGATION, "new method visible", || leases_for(&*disc, &new) == [updated.lease_id]).await?;
    eventually(PROPAGATION, "old method gone", || method_absent(&*disc, &old)).await?;
    let other = w.start("indexed-2", node("t.Idx", &["New"])).await?;
    eventually(PROPAGATION, "second provider visible", || leases_for(&*disc, &new).len() == 2).await?;
    inst.stop().await?;
    eventually(PROPAGATION, "one provider left", || leases_for(&*disc, &new) == [other.node.lease_id]).await?;
    other.stop().await?;
    eventually(PROPAGATION, "last provider gone", || method_absent(&*disc, &new)).await?;
    w.cleanup().await?;
    Ok(())
}
