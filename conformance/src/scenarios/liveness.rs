//! Keepalive and crash expiry.

use std::time::{Duration, Instant};

use super::World;
use crate::Backend;
use crate::fixtures::{PROPAGATION, TTL, eventually, leases_for, method, method_absent, node};

/// With `sustain_lease` running, the node stays visible for more than 3×TTL.
pub async fn keepalive_holds_past_three_ttls<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    let disc = w.discoverer().await?;
    let m = method("t.Alive", "Beat");
    let inst = w.start("alive", node("t.Alive", &["Beat"])).await?;
    eventually(PROPAGATION, "visible", || !leases_for(&*disc, &m).is_empty()).await?;
    let until = Instant::now() + TTL * 3 + TTL / 2;
    while Instant::now() < until {
        anyhow::ensure!(
            leases_for(&*disc, &m) == [inst.node.lease_id],
            "node vanished while its keepalive ran (after {:?})",
            until.saturating_duration_since(Instant::now())
        );
        anyhow::ensure!(!inst.keepalive.is_finished(), "keepalive ended early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    inst.stop().await?;
    w.cleanup().await?;
    Ok(())
}

/// When the keepalive stops without `uninstall` (a crash), the node is still
/// served right after the crash and gone within TTL + 2 s.
pub async fn crashed_instance_expires_within_ttl<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    let disc = w.discoverer().await?;
    let m = method("t.Crash", "Boom");
    let inst = w.start("crashy", node("t.Crash", &["Boom"])).await?;
    eventually(PROPAGATION, "visible", || !leases_for(&*disc, &m).is_empty()).await?;
    // Let a heartbeat or two happen so the crash lands mid-lease.
    tokio::time::sleep(TTL).await;
    inst.keepalive.abort();
    let crashed_at = Instant::now();
    b.crashed(&inst.registrar).await?;
    anyhow::ensure!(!leases_for(&*disc, &m).is_empty(), "node vanished before its lease could have run out");
    let took = eventually(TTL + Duration::from_secs(2), "crashed node expired", || method_absent(&*disc, &m)).await?;
    tracing::info!(
        expiry_ms = took.as_millis() as u64,
        since_crash_ms = crashed_at.elapsed().as_millis() as u64,
        "crash expiry"
    );
    w.cleanup().await?;
    Ok(())
}
