//! Install, discover, uninstall.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use registry_core::store::Scope;
use registry_core::{Discovery, DiscoveryEvent, DrainingNodes, Error, Register};

use super::World;
use crate::Backend;
use crate::fixtures::{PROPAGATION, eventually, leases_for, meta, method, method_absent, node};

/// A node is discoverable by every method it declares, and the discovered
/// node equals the installed one field for field.
pub async fn install_then_discover_by_every_method<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    let disc = w.discoverer().await?;
    let inst = w.start("orders", node("shop.Orders", &["Create", "Get", "List"])).await?;
    for name in ["Create", "Get", "List"] {
        let m = method("shop.Orders", name);
        eventually(PROPAGATION, &format!("{m} visible"), || !leases_for(&*disc, &m).is_empty()).await?;
        let found = disc.get_service(&m)?;
        anyhow::ensure!(found.len() == 1, "{m}: expected one node, got {}", found.len());
        let got = &*found[0];
        let want = &inst.node;
        anyhow::ensure!(got.meta == want.meta, "meta differs: {:?} vs {:?}", got.meta, want.meta);
        anyhow::ensure!(got.methods == want.methods, "methods differ");
        anyhow::ensure!(got.network == want.network && got.kernel == want.kernel, "network/kernel differ");
        anyhow::ensure!(got.lease_id == want.lease_id && got.proto_count == want.proto_count, "ids differ");
        anyhow::ensure!(got.registered_at_ms == want.registered_at_ms, "registered_at_ms differs");
    }
    anyhow::ensure!(method_absent(&*disc, &method("shop.Orders", "Delete")), "undeclared method found");
    let app = disc.get_app("orders")?;
    anyhow::ensure!(app.len() == 1, "get_app: {} nodes", app.len());
    anyhow::ensure!(disc.apps().iter().any(|a| &**a == "orders"), "apps() lacks orders");
    inst.stop().await?;
    w.cleanup().await?;
    Ok(())
}

/// After `uninstall`, the node is gone from discovery within the propagation bound.
pub async fn uninstall_disappears_promptly<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    let disc = w.discoverer().await?;
    let inst = w.start("cart", node("shop.Cart", &["Add"])).await?;
    let m = method("shop.Cart", "Add");
    eventually(PROPAGATION, "installed node visible", || !leases_for(&*disc, &m).is_empty()).await?;
    inst.stop().await?;
    // Well under one TTL: removal is an explicit delete, not an expiry.
    eventually(Duration::from_millis(1500), "uninstalled node gone", || method_absent(&*disc, &m)).await?;
    anyhow::ensure!(matches!(disc.get_app("cart"), Err(Error::NodeNotFound { .. })), "app still listed");
    w.cleanup().await?;
    Ok(())
}

/// `uninstall` before `install`, and twice after it, succeeds; re-install after uninstall works.
pub async fn uninstall_is_idempotent<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    let disc = w.discoverer().await?;
    let r = w.registrar("idem").await?;
    r.uninstall().await?;
    r.install(node("t.Idem", &["A"])).await?;
    r.uninstall().await?;
    r.uninstall().await?;
    let m = method("t.Idem", "A");
    eventually(PROPAGATION, "gone after uninstall", || method_absent(&*disc, &m)).await?;
    let again = r.install(node("t.Idem", &["A"])).await?;
    eventually(PROPAGATION, "back after re-install", || leases_for(&*disc, &m) == [again.lease_id]).await?;
    r.uninstall().await?;
    w.cleanup().await?;
    Ok(())
}

/// A discoverer started on an empty env is ready, answers not-found, then sees the first install.
pub async fn discovery_started_before_anything_exists<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    let disc = w.discoverer().await?;
    let m = method("t.Early", "Ping");
    anyhow::ensure!(method_absent(&*disc, &m), "expected MethodNotFound on an empty env");
    anyhow::ensure!(disc.apps().is_empty(), "empty env lists apps");
    let inst = w.start("early", node("t.Early", &["Ping"])).await?;
    eventually(PROPAGATION, "first install visible", || leases_for(&*disc, &m) == [inst.node.lease_id]).await?;
    inst.stop().await?;
    w.cleanup().await?;
    Ok(())
}

/// The event stream reports the install as `Up` and the uninstall as `Down`.
pub async fn events_report_up_and_down<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    let disc = w.discoverer().await?;
    let mut events = disc.events();
    let inst = w.start("evented", node("t.Ev", &["A"])).await?;
    let lease = inst.node.lease_id;
    anyhow::ensure!(next_event_of(&mut events, lease, true).await, "no Up event for the install");
    inst.stop().await?;
    anyhow::ensure!(next_event_of(&mut events, lease, false).await, "no Down event for the uninstall");
    w.cleanup().await?;
    Ok(())
}

/// Waits up to [`PROPAGATION`] for an `Up` (or `Down`) event of `lease`.
async fn next_event_of(events: &mut BoxStream<'static, DiscoveryEvent>, lease: i64, up: bool) -> bool {
    let found = tokio::time::timeout(PROPAGATION, async {
        while let Some(event) = events.next().await {
            match (&event, up) {
                (DiscoveryEvent::Up { node, .. }, true) | (DiscoveryEvent::Down { node, .. }, false)
                    if node.lease_id == lease =>
                {
                    return true;
                }
                _ => {}
            }
        }
        false
    })
    .await;
    matches!(found, Ok(true))
}

/// Invalid names and TTLs are typed errors naming the field; nothing is written.
pub async fn invalid_names_are_rejected<B: Backend>(b: &B) -> anyhow::Result<()> {
    let w = World::new(b).await?;
    let conf = crate::fixtures::conf(&w.namespace);
    let field = |r: registry_core::Result<registry_core::Registrar>| match r {
        Err(Error::InvalidConfig { field, .. }) => Some(field),
        _ => None,
    };
    anyhow::ensure!(field(b.registrar(meta(&w.env, ""), conf.clone()).await) == Some("meta.app_id"));
    anyhow::ensure!(field(b.registrar(meta(&w.env, "a/b"), conf.clone()).await) == Some("meta.app_id"));
    anyhow::ensure!(field(b.registrar(meta("", "app"), conf.clone()).await) == Some("meta.env"));
    // A name no backend accepts: a control character (`Bad_Env` is fine: the
    // Go framework and every store accept it).
    anyhow::ensure!(field(b.registrar(meta("bad\nenv", "app"), conf.clone()).await) == Some("meta.env"));
    let low_ttl = conf.clone().with_ttl_floor(Duration::from_secs(10));
    anyhow::ensure!(field(b.registrar(meta(&w.env, "app"), low_ttl).await) == Some("conf.ttl"));
    let disc = b.discoverer("No/Env", conf).await;
    anyhow::ensure!(
        matches!(disc, Err(Error::InvalidConfig { field: "meta.env", .. })),
        "discoverer accepted a bad env"
    );
    w.cleanup().await?;
    Ok(())
}

/// `drain` keeps the instance registered and discoverable with its draining
/// mark, through heartbeats past one TTL; `get_service` stops answering it
/// (the other instance only; both, serving first, with
/// [`DrainingNodes::Last`]); `undrain` clears it; the changes arrive as
/// events.
pub async fn drain_is_seen_and_undone<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    let disc = w.discoverer().await?;
    let last = w.discoverer().await?;
    last.set_draining_nodes(DrainingNodes::Last);
    let mut events = disc.events();
    let inst = w.start("drainer", node("shop.Drain", &["Call"])).await?;
    let other = w.start("drainer", node("shop.Drain", &["Call"])).await?;
    let (lease, other_lease) = (inst.node.lease_id, other.node.lease_id);
    let m = method("shop.Drain", "Call");
    let draining = |disc: &dyn Discovery| {
        disc.get_app("drainer").ok().map(|n| {
            let mut marks: Vec<(i64, bool)> = n.iter().map(|x| (x.lease_id, x.draining)).collect();
            marks.sort();
            marks
        })
    };
    let marks = |drained: bool| {
        let mut want = vec![(lease, drained), (other_lease, false)];
        want.sort();
        Some(want)
    };
    eventually(PROPAGATION, "installed nodes visible", || draining(&*disc) == marks(false)).await?;
    eventually(PROPAGATION, "both nodes served", || leases_for(&*disc, &m).len() == 2).await?;
    inst.registrar.drain().await?;
    eventually(PROPAGATION, "draining mark visible", || draining(&*disc) == marks(true)).await?;
    anyhow::ensure!(
        leases_for(&*disc, &m) == [other_lease],
        "get_service answers a draining node: {:?}",
        leases_for(&*disc, &m)
    );
    eventually(PROPAGATION, "draining mark visible (Last)", || draining(&*last) == marks(true)).await?;
    anyhow::ensure!(
        leases_for(&*last, &m) == [other_lease, lease],
        "DrainingNodes::Last: serving first, then draining: {:?}",
        leases_for(&*last, &m)
    );
    let saw_drain = tokio::time::timeout(PROPAGATION, async {
        while let Some(event) = events.next().await {
            if matches!(&event, DiscoveryEvent::Up { node, .. } if node.lease_id == lease && node.draining) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    anyhow::ensure!(saw_drain, "no Up event with the draining mark");
    // Heartbeats keep the mark (and the registration) for longer than a TTL.
    tokio::time::sleep(crate::fixtures::TTL + crate::fixtures::TTL / 2).await;
    anyhow::ensure!(draining(&*disc) == marks(true), "draining mark lost after heartbeats: {:?}", draining(&*disc));
    anyhow::ensure!(leases_for(&*disc, &m) == [other_lease], "after heartbeats: {:?}", leases_for(&*disc, &m));
    // The last serving instance drains too: no answer but the typed error.
    other.registrar.drain().await?;
    eventually(PROPAGATION, "every node draining", || {
        matches!(disc.get_service(&m), Err(Error::AllDraining { draining: 2, .. }))
    })
    .await?;
    eventually(PROPAGATION, "Last still answers them", || leases_for(&*last, &m).len() == 2).await?;
    inst.registrar.undrain().await?;
    eventually(PROPAGATION, "draining mark cleared", || leases_for(&*disc, &m) == [lease]).await?;
    other.stop().await?;
    inst.stop().await?;
    w.cleanup().await?;
    Ok(())
}

/// An operator's drain (`Store::operator`, what `registryctl drain` does)
/// marks another process's instance draining; the instance's own writes —
/// heartbeats past a TTL, installing again, its own drain and undrain, and
/// installs racing the operator's writes — never undo the mark or lose
/// their own change; only the operator's undrain clears it; an unknown
/// instance is `InstanceNotFound`.
pub async fn operator_drain_survives_the_owner<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    let disc = w.discoverer().await?;
    let inst = w.start("held", node("shop.Held", &["Call"])).await?;
    let lease = inst.node.lease_id;
    let m = method("shop.Held", "Call");
    eventually(PROPAGATION, "installed node served", || leases_for(&*disc, &m) == [lease]).await?;
    let op = b.operator(&Scope::new(w.namespace.clone(), w.env.clone())).await?;
    // (draining, drained_by_operator, methods)
    let state = |disc: &dyn Discovery| {
        disc.get_app("held")
            .ok()
            .and_then(|n| n.first().map(|x| (x.draining, x.drained_by_operator, x.served_methods().count())))
    };
    op.set_drained("held", lease, true).await?;
    eventually(PROPAGATION, "operator mark visible", || state(&*disc) == Some((true, true, 1))).await?;
    anyhow::ensure!(
        matches!(disc.get_service(&m), Err(Error::AllDraining { .. })),
        "get_service answers an instance an operator drained"
    );
    op.set_drained("held", lease, true).await?; // idempotent

    // The owner's writes: install again, its own drain and undrain, heartbeats.
    inst.registrar.install(node("shop.Held", &["Call"])).await?;
    inst.registrar.drain().await?;
    inst.registrar.undrain().await?;
    tokio::time::sleep(crate::fixtures::TTL + crate::fixtures::TTL / 2).await;
    anyhow::ensure!(
        state(&*disc) == Some((true, true, 1)),
        "the owner's writes undid the operator's mark: {:?}",
        state(&*disc)
    );

    // Installs racing the operator's writes: each side's change lands.
    let mut methods = vec!["Call"];
    for (round, name) in ["Two", "Three", "Four"].into_iter().enumerate() {
        methods.push(name);
        let drained = round % 2 == 1;
        let (installed, marked) =
            tokio::join!(inst.registrar.install(node("shop.Held", &methods)), op.set_drained("held", lease, drained));
        installed?;
        marked?;
        let want = Some((drained, drained, methods.len()));
        eventually(PROPAGATION, &format!("race round {round}: both writes visible"), || state(&*disc) == want)
            .await
            .map_err(|e| anyhow::anyhow!("{e}: {:?}", state(&*disc)))?;
    }

    op.set_drained("held", lease, false).await?;
    eventually(PROPAGATION, "operator mark cleared", || leases_for(&*disc, &m) == [lease]).await?;
    anyhow::ensure!(state(&*disc) == Some((false, false, 4)), "after undrain: {:?}", state(&*disc));
    let missing = op.set_drained("held", lease.wrapping_add(1), true).await;
    anyhow::ensure!(matches!(missing, Err(Error::InstanceNotFound { .. })), "unknown instance: {missing:?}");
    inst.stop().await?;
    w.cleanup().await?;
    Ok(())
}
