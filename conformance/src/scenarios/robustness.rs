//! Bad records and stopping.

use std::time::{Duration, Instant};

use registry_core::Discovery;

use super::World;
use crate::Backend;
use crate::fixtures::{PROPAGATION, eventually, leases_for, meta, method, method_absent, node};

/// Records that do not parse, or belong to another env, are skipped and
/// counted, and never hide the good nodes.
pub async fn foreign_and_malformed_entries_ignored<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    w.put_foreign("garbage", "{not json").await?;
    let mut stranger = node("t.Foreign", &["Steal"]);
    stranger.meta = meta("some-other-env", "stranger");
    stranger.lease_id = 42;
    w.put_foreign("stranger", &serde_json::to_string(&stranger)?).await?;
    let disc = w.discoverer().await?;
    let good = w.start("good", node("t.Good", &["Ok"])).await?;
    let m = method("t.Good", "Ok");
    eventually(PROPAGATION, "good node visible", || leases_for(&*disc, &m) == [good.node.lease_id]).await?;
    anyhow::ensure!(method_absent(&*disc, &method("t.Foreign", "Steal")), "foreign-env node served");
    eventually(PROPAGATION, "bad records counted", || disc.skipped() >= 2).await?;
    // A bad record written while watching is skipped too.
    let before = disc.skipped();
    w.put_foreign("garbage-2", "[1,2,3]").await?;
    eventually(PROPAGATION, "late bad record counted", || disc.skipped() > before).await?;
    anyhow::ensure!(leases_for(&*disc, &m) == [good.node.lease_id], "good node lost after a bad record");
    good.stop().await?;
    w.cleanup().await?;
    Ok(())
}

/// `unwatch` returns promptly and the cache stops changing; the last view stays readable.
pub async fn unwatch_stops_promptly<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    let disc = w.discoverer().await?;
    let first = w.start("watched", node("t.Unw", &["A"])).await?;
    let m = method("t.Unw", "A");
    eventually(PROPAGATION, "visible", || !leases_for(&*disc, &m).is_empty()).await?;
    let start = Instant::now();
    disc.unwatch();
    anyhow::ensure!(start.elapsed() < Duration::from_millis(100), "unwatch took {:?}", start.elapsed());
    let second = w.start("watched", node("t.Unw", &["A"])).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    anyhow::ensure!(leases_for(&*disc, &m) == [first.node.lease_id], "cache changed after unwatch");
    first.stop().await?;
    second.stop().await?;
    w.cleanup().await?;
    Ok(())
}
