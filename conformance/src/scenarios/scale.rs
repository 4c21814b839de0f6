//! Many instances, large nodes.

use futures::future::try_join_all;
use registry_core::{Discovery, GrpcServices, Register};

use super::World;
use crate::Backend;
use crate::fixtures::{PROPAGATION, eventually, method, node};

/// 50 instances installed at once are all visible.
pub async fn fifty_concurrent_installs_all_visible<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    let disc = w.discoverer().await?;
    let mut registrars = Vec::new();
    for _ in 0..50 {
        registrars.push(w.registrar("crowd").await?);
    }
    let installed = try_join_all(registrars.iter().map(|r| r.install(node("t.Crowd", &["Join"])))).await?;
    let mut want: Vec<i64> = installed.iter().map(|n| n.lease_id).collect();
    want.sort_unstable();
    want.dedup();
    anyhow::ensure!(want.len() == 50, "lease ids are not unique: {} distinct", want.len());
    let m = method("t.Crowd", "Join");
    eventually(PROPAGATION * 2, "all 50 visible", || {
        let mut got: Vec<i64> =
            disc.get_service(&m).map(|n| n.iter().map(|n| n.lease_id).collect()).unwrap_or_default();
        got.sort_unstable();
        got == want
    })
    .await?;
    try_join_all(registrars.iter().map(|r| r.uninstall())).await?;
    w.cleanup().await?;
    Ok(())
}

/// A node with 500 methods round-trips exactly.
pub async fn large_node_round_trips<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    let disc = w.discoverer().await?;
    let names: Vec<String> = (0..500).map(|i| format!("Operation{i:03}WithAReasonablyLongName")).collect();
    let big = GrpcServices::new().service("big.v1.EnormousService", &names)?.into_node();
    let inst = w.start("big", big).await?;
    let last = method("big.v1.EnormousService", "Operation499WithAReasonablyLongName");
    eventually(PROPAGATION, "large node visible", || disc.get_service(&last).is_ok()).await?;
    let got = disc.get_service(&last)?;
    anyhow::ensure!(got[0].methods == inst.node.methods, "methods differ after the round trip");
    anyhow::ensure!(got[0].methods.len() == 500, "{} methods", got[0].methods.len());
    inst.stop().await?;
    w.cleanup().await?;
    Ok(())
}
