//! The per-app layout (`?layout=per-app`) on a real agent: the names Consul
//! can serve are checked before anything is written, services whose names
//! collide across scopes never mix, and each app is its own Consul service
//! while the single-service layout keeps `<namespace>-<env>`.
// Test code: failed expectations panic.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;

use conformance::Runner;
use conformance::fixtures::{PROPAGATION, conf, eventually, leases_for, meta, method, node, unique};
use registry_consul::{ConsulConfig, ConsulStore, Layout};
use registry_core::store::Scope;
use registry_core::{Discoverer, Discovery, Error, Register, Registrar};
use registry_testenv::consul::{self, ConsulServer};

async fn store(server: &ConsulServer, layout: Layout) -> ConsulStore {
    let config = ConsulConfig::new(server.address()).with_layout(layout);
    let config = match server.token() {
        Some(token) => config.with_token(token),
        None => config,
    };
    ConsulStore::connect(config).await.expect("connected")
}

fn field(result: registry_core::Result<impl Sized>) -> &'static str {
    match result {
        Err(Error::InvalidConfig { field, .. }) => field,
        Err(other) => panic!("expected InvalidConfig, got {other:?}"),
        Ok(_) => panic!("expected InvalidConfig, got a value"),
    }
}

async fn names_consul_cannot_serve_are_refused() -> anyhow::Result<()> {
    let server = ConsulServer::start().await.expect("agent");
    let per_app = store(&server, Layout::PerApp).await;
    let single = store(&server, Layout::Single).await;
    let namespace = unique("ns");
    let env = unique("env");
    // `_` is a valid name for core and the single-service layout ...
    assert!(Registrar::new(&single, meta(&env, "orders_v2"), conf(&namespace)).is_ok());
    // ... but not in a per-app service name.
    assert_eq!(field(Registrar::new(&per_app, meta(&env, "orders_v2"), conf(&namespace))), "meta.app_id");
    assert_eq!(field(Discoverer::new(&per_app, "pr.od", conf(&namespace))), "meta.env");
    assert_eq!(field(Discoverer::new(&per_app, &env, conf("shop_ns"))), "conf.namespace");
    // `<namespace>-<env>-<app_id>` at most 63 bytes.
    let room = 63 - namespace.len() - env.len() - 2;
    assert!(Registrar::new(&per_app, meta(&env, &"a".repeat(room)), conf(&namespace)).is_ok());
    assert_eq!(field(Registrar::new(&per_app, meta(&env, &"a".repeat(room + 1)), conf(&namespace))), "meta.app_id");
    Ok(())
}

/// `<ns>-<env>-<app>` is ambiguous when names contain `-`: env `e-x` app `d`
/// and env `e` app `x-d` are both the service `<ns>-e-x-d`, and so is the
/// namespace split `<ns>-e` env `x` app `d`. Each discoverer lists only its own.
async fn colliding_service_names_never_mix() -> anyhow::Result<()> {
    let server = ConsulServer::start().await.expect("agent");
    let store = store(&server, Layout::PerApp).await;
    let ns = unique("ns");
    let ns_longer = format!("{ns}-e");
    let scopes = [(ns.clone(), "e-x", "d"), (ns.clone(), "e", "x-d"), (ns_longer.clone(), "x", "d")];
    let names: Vec<String> =
        scopes.iter().map(|(n, e, a)| ConsulStore::app_service_name(&Scope::new(n.clone(), *e), a)).collect();
    assert!(names.iter().all(|n| *n == names[0]), "one service name for all three: {names:?}");

    let mut registrars = Vec::new();
    let mut leases = Vec::new();
    for (namespace, env, app) in &scopes {
        let registrar = Registrar::new(&store, meta(env, app), conf(namespace)).expect("registrar");
        leases.push(registrar.install(node("t.Clash", &["Call"])).await.expect("installed").lease_id);
        registrars.push(registrar);
    }
    let m = method("t.Clash", "Call");
    for ((namespace, env, _), lease) in scopes.iter().zip(&leases) {
        let discoverer = Discoverer::new(&store, env, conf(namespace)).expect("discoverer");
        discoverer.watcher().await.expect("watching");
        eventually(PROPAGATION, "own instance visible", || leases_for(&discoverer, &m) == [*lease]).await?;
        // Another scope's instance under the same service name stays invisible.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(leases_for(&discoverer, &m), [*lease], "{namespace}/{env}");
        discoverer.unwatch();
    }
    for registrar in registrars {
        registrar.uninstall().await.expect("uninstalled");
    }
    Ok(())
}

/// Each app is its own Consul service in the per-app layout; the
/// single-service layout keeps every instance under `<namespace>-<env>`.
async fn each_app_is_its_own_service() -> anyhow::Result<()> {
    let server = ConsulServer::start().await.expect("agent");
    let namespace = unique("ns");
    let env = unique("env");
    let scope = Scope::new(namespace.clone(), env.clone());
    let services = || async {
        let (status, body) = server.request("GET", "/v1/catalog/services", None).await.expect("catalog");
        assert_eq!(status, 200, "{body}");
        let all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&body).expect("json");
        let mut ours: Vec<String> = all.keys().filter(|name| name.starts_with(&namespace)).cloned().collect();
        ours.sort();
        ours
    };
    let per_app = store(&server, Layout::PerApp).await;
    let mut registrars = Vec::new();
    for app in ["cart", "orders"] {
        let registrar = Registrar::new(&per_app, meta(&env, app), conf(&namespace)).expect("registrar");
        registrar.install(node("t.Own", &["A"])).await.expect("installed");
        registrars.push(registrar);
    }
    // The agent syncs its services to the catalog in the background: wait for it.
    let settled = |want: Vec<String>| {
        let services = &services;
        async move {
            let deadline = std::time::Instant::now() + PROPAGATION;
            loop {
                let got = services().await;
                if got == want || std::time::Instant::now() > deadline {
                    return got;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    let want = vec![ConsulStore::app_service_name(&scope, "cart"), ConsulStore::app_service_name(&scope, "orders")];
    assert_eq!(settled(want.clone()).await, want);
    for registrar in registrars.drain(..) {
        registrar.uninstall().await.expect("uninstalled");
    }
    let single = store(&server, Layout::Single).await;
    let registrar = Registrar::new(&single, meta(&env, "cart"), conf(&namespace)).expect("registrar");
    registrar.install(node("t.Own", &["A"])).await.expect("installed");
    let want = vec![ConsulStore::service_name(&scope)];
    assert_eq!(settled(want.clone()).await, want);
    registrar.uninstall().await.expect("uninstalled");
    Ok(())
}

fn main() -> ExitCode {
    Runner::new()
        .test("names_consul_cannot_serve_are_refused", consul::available(), names_consul_cannot_serve_are_refused)
        .test("colliding_service_names_never_mix", consul::available(), colliding_service_names_never_mix)
        .test("each_app_is_its_own_service", consul::available(), each_app_is_its_own_service)
        .run()
}
