//! Names the Go framework accepts, on a real API server: env `Prod` and app
//! `Orders_X` (captured from the Go framework in
//! `conformance/interop/go-framework/`) register and are discovered in lease
//! and configmap mode, stored under object names slugged with a hash; the
//! namespace `shop_v2`, which cannot be a Kubernetes namespace, is a typed
//! `InvalidConfig` naming `conf.namespace`.
// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use conformance::Runner;
use conformance::fixtures::{PROPAGATION, conf, eventually, leases_for, meta, method, node, unique};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use registry_core::{Discoverer, Discovery, Error, Register, Registrar};
use registry_kubernetes::{DEFAULT_PREFIX, Mode};
use registry_kubernetes::{configmap_key, configmap_name, lease_name};
use registry_testenv::kube::KubeServer;
use std::process::ExitCode;

async fn go_env_and_app_names_register_and_are_discovered() -> anyhow::Result<()> {
    let server = support::server().await;
    let namespace = unique("go-names");
    server.create_namespace(&namespace).await.unwrap();
    let (env, app) = ("Prod", "Orders_X");
    let create = method("shop.v1.Orders", "Create");

    for mode in [Mode::Lease, Mode::ConfigMap] {
        let store = support::store(&server, mode).await.unwrap();
        let discoverer = Discoverer::new(&store, env, conf(&namespace)).unwrap();
        discoverer.watcher().await.unwrap();
        // The lowercase env is another env: its own ConfigMap, other labels.
        let lower = Discoverer::new(&store, "prod", conf(&namespace)).unwrap();
        lower.watcher().await.unwrap();

        let registrar = Registrar::new(&store, meta(env, app), conf(&namespace)).unwrap();
        let installed = registrar.install(node("shop.v1.Orders", &["Create", "Get", "List"])).await.unwrap();
        eventually(PROPAGATION, &format!("{mode}: served"), || {
            leases_for(&discoverer, &create) == [installed.lease_id]
        })
        .await
        .unwrap();
        let found = discoverer.get_app(app).unwrap();
        let found = &found[0];
        assert_eq!(found.meta, installed.meta, "{mode}");
        assert_eq!((found.meta.env.as_str(), found.meta.app_id.as_str()), (env, app), "{mode}");
        assert_eq!(found.methods, installed.methods, "{mode}");
        assert_eq!(
            (found.network.clone(), found.kernel.clone()),
            (installed.network.clone(), installed.kernel.clone())
        );
        assert_eq!(found.weight, installed.weight, "{mode}");

        // Stored under valid, hash-slugged object names; the exact names in labels and keys.
        match mode {
            Mode::Lease => {
                let name = lease_name(env, app, installed.lease_id);
                assert!(name.starts_with("prod-") && name.contains(".orders-x-"), "{name}");
                let lease = Api::<Lease>::namespaced(server.client(), &namespace).get(&name).await.unwrap();
                let labels = lease.metadata.labels.unwrap_or_default();
                assert_eq!(labels.get(&format!("{DEFAULT_PREFIX}/env")).map(String::as_str), Some(env));
                assert_eq!(labels.get(&format!("{DEFAULT_PREFIX}/app")).map(String::as_str), Some(app));
            }
            _ => {
                let name = configmap_name(env);
                assert!(name.starts_with("ff-registry-prod-"), "{name}");
                let map = Api::<ConfigMap>::namespaced(server.client(), &namespace).get(&name).await.unwrap();
                let key = configmap_key(app, installed.lease_id).unwrap();
                assert!(map.data.unwrap_or_default().contains_key(&key), "{mode}: no key {key} in {name}");
            }
        }
        assert!(lower.apps().is_empty(), "{mode}: env prod sees env Prod's node");
        assert_eq!(discoverer.skipped() + lower.skipped(), 0, "{mode}: records skipped");

        registrar.uninstall().await.unwrap();
        eventually(PROPAGATION, &format!("{mode}: gone"), || leases_for(&discoverer, &create).is_empty())
            .await
            .unwrap();
        discoverer.unwatch();
        lower.unwatch();
    }

    // `shop_v2` is a valid namespace for the Go framework, not for Kubernetes.
    for mode in [Mode::Lease, Mode::ConfigMap] {
        let store = support::store(&server, mode).await.unwrap();
        let errors = [
            Registrar::new(&store, meta(env, app), conf("shop_v2")).map(drop).unwrap_err(),
            Discoverer::new(&store, env, conf("shop_v2")).map(drop).unwrap_err(),
        ];
        for err in errors {
            match err {
                Error::InvalidConfig { field, reason } => {
                    assert_eq!(field, "conf.namespace", "{mode}");
                    assert!(reason.contains("shop_v2"), "{mode}: {reason}");
                }
                other => panic!("{mode}: expected InvalidConfig, got {other:?}"),
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    Runner::new()
        .test(
            "go_env_and_app_names_register_and_are_discovered",
            KubeServer::available(),
            go_env_and_app_names_register_and_are_discovered,
        )
        .run()
}
