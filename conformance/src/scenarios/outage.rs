//! Backend outage and recovery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use registry_core::{Register, RetryHooks};

use super::World;
use crate::Backend;
use crate::fixtures::{PROPAGATION, TTL, conf, eventually, leases_for, method, node};

/// How long the server stays down: longer than one TTL.
pub const DOWN_FOR: Duration = Duration::from_secs(5);

/// Consecutive keepalive failures after which the survivor's registration
/// is reported lost: well within [`DOWN_FOR`] (retries are at most TTL/4 apart).
const MAX_RETRY: u32 = 3;

/// The server is stopped for longer than a TTL, then restarted on the same
/// data and ports: discovery keeps serving its last view meanwhile, the
/// keepalive's retry hooks fire, the registration is reported lost once
/// `max_retry` is passed but the keepalive goes on (the default), the
/// registration is back within one TTL of the server's return, and
/// discovery follows again.
pub async fn outage_then_recovery<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    let disc = w.discoverer().await?;
    let m = method("t.Outage", "Survive");
    let survivor_conf = conf(&w.namespace).with_max_retry(MAX_RETRY);
    let inst = w.start_with("survivor", node("t.Outage", &["Survive"]), survivor_conf).await?;
    let lost = Arc::new(AtomicU32::new(0));
    let retries = Arc::new(AtomicU32::new(0));
    let recovered_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    inst.registrar.set_hooks(
        RetryHooks::new()
            .before_retry({
                let retries = Arc::clone(&retries);
                move |_| {
                    retries.fetch_add(1, Ordering::SeqCst);
                }
            })
            .on_lost({
                let lost = Arc::clone(&lost);
                move |_| {
                    lost.fetch_add(1, Ordering::SeqCst);
                }
            })
            .after_recovery({
                let at = Arc::clone(&recovered_at);
                move |_| {
                    if let Ok(mut at) = at.lock() {
                        at.get_or_insert_with(Instant::now);
                    }
                }
            }),
    );
    eventually(PROPAGATION, "visible before the outage", || !leases_for(&*disc, &m).is_empty()).await?;

    b.stop_server().await?;
    let down_until = Instant::now() + DOWN_FOR;
    while Instant::now() < down_until {
        anyhow::ensure!(!leases_for(&*disc, &m).is_empty(), "discovery dropped its last view during the outage");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = retries.load(Ordering::SeqCst);
    anyhow::ensure!(failed >= MAX_RETRY, "only {failed} keepalive failures during the outage");
    anyhow::ensure!(lost.load(Ordering::SeqCst) == 1, "registration lost not reported once after {failed} failures");
    anyhow::ensure!(!inst.keepalive.is_finished(), "keepalive gave up during the outage");

    b.start_server().await?;
    let back_at = Instant::now();
    eventually(TTL + Duration::from_millis(500), "keepalive recovered (after_recovery hook)", || {
        recovered_at.lock().map(|a| a.is_some()).unwrap_or(false)
    })
    .await?;
    let recovered = recovered_at.lock().ok().and_then(|a| *a).unwrap_or(back_at);
    let took = recovered.saturating_duration_since(back_at);
    anyhow::ensure!(took <= TTL, "registration came back {took:?} after the server, more than one TTL");
    anyhow::ensure!(!inst.keepalive.is_finished(), "keepalive ended during the outage");
    let current = inst.registrar.node().map(|n| n.lease_id).unwrap_or_default();
    eventually(PROPAGATION * 2, "discovery follows after recovery", || leases_for(&*disc, &m) == [current]).await?;
    inst.stop().await?;
    w.cleanup().await?;
    Ok(())
}
