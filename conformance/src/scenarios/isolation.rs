//! Env and namespace isolation.

use std::time::Duration;

use registry_core::Discovery;

use super::World;
use crate::Backend;
use crate::fixtures::{PROPAGATION, TTL, eventually, leases_for, method, method_absent, node};

/// A discoverer sees only its own env — including an env whose name is a
/// prefix of another (`prod` never sees `production`).
pub async fn env_isolation<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    let base = w.env.clone();
    let longer = format!("{base}x");
    let mine = w.discoverer().await?;
    let theirs = w.discoverer_of(&longer).await?;
    let m = method("t.Iso", "Call");
    let inst = w.start("iso", node("t.Iso", &["Call"])).await?;
    eventually(PROPAGATION, "visible in own env", || !leases_for(&*mine, &m).is_empty()).await?;
    // Give a leak time to show, then check the other env stayed empty.
    tokio::time::sleep(TTL / 2).await;
    anyhow::ensure!(method_absent(&*theirs, &m), "env {longer} sees a node of env {base}");
    anyhow::ensure!(theirs.apps().is_empty(), "env {longer} lists apps of env {base}");
    inst.stop().await?;
    w.cleanup().await?;
    Ok(())
}

/// A discoverer of another namespace, same env name, sees nothing.
pub async fn namespace_isolation<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut a = World::new(b).await?;
    let mut other = World::new(b).await?;
    other.env = a.env.clone();
    let theirs = other.discoverer().await?;
    let mine = a.discoverer().await?;
    let m = method("t.Ns", "Call");
    let inst = a.start("ns-app", node("t.Ns", &["Call"])).await?;
    eventually(PROPAGATION, "visible in own namespace", || !leases_for(&*mine, &m).is_empty()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    anyhow::ensure!(method_absent(&*theirs, &m), "another namespace sees the node");
    inst.stop().await?;
    a.cleanup().await?;
    other.cleanup().await?;
    Ok(())
}
