//! RBAC: each mode works with exactly its Role from `deploy/rbac/<mode>.yaml`,
//! and without it every write and the watch are `PermissionDenied` naming the
//! verb and the resource.
//!
//! Each test starts its own server (or uses `KUBECONFIG`'s cluster), creates
//! a namespace and a ServiceAccount, applies the manifest as written (only
//! the namespace and the subject are filled in), and gets a token through
//! the TokenRequest API; the backend then connects with that token alone.
// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use conformance::Runner;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use conformance::fixtures::{PROPAGATION, conf, eventually, leases_for, meta, method, method_absent, node, unique};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{ListParams, PostParams};
use registry_core::{Discoverer, Discovery, Error, Register, Registrar};
use registry_kubernetes::{KubernetesConfig, KubernetesStore, Mode};
use registry_testenv::kube::KubeServer;

/// Applies `deploy/rbac/<mode>.yaml` in `namespace`, bound to ServiceAccount `account`.
async fn apply_manifest(server: &KubeServer, mode: Mode, namespace: &str, account: &str) -> anyhow::Result<()> {
    let path = support::rbac_manifest(mode);
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let roles: Api<Role> = Api::namespaced(server.client(), namespace);
    let bindings: Api<RoleBinding> = Api::namespaced(server.client(), namespace);
    let mut kinds = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let mut value: serde_json::Value = serde::Deserialize::deserialize(document)?;
        value["metadata"]["namespace"] = namespace.into();
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "Role" => {
                roles.create(&PostParams::default(), &serde_json::from_value(value)?).await?;
            }
            "RoleBinding" => {
                for subject in value["subjects"].as_array_mut().into_iter().flatten() {
                    subject["namespace"] = namespace.into();
                    subject["name"] = account.into();
                }
                bindings.create(&PostParams::default(), &serde_json::from_value(value)?).await?;
            }
            other => anyhow::bail!("unexpected kind {other} in {}", path.display()),
        }
        kinds.push(kind);
    }
    anyhow::ensure!(kinds == ["Role", "RoleBinding"], "{} holds {kinds:?}", path.display());
    Ok(())
}

/// A store that authenticates as ServiceAccount `account` only.
async fn store_as(
    server: &KubeServer,
    mode: Mode,
    namespace: &str,
    account: &str,
    pod: Option<String>,
) -> anyhow::Result<KubernetesStore> {
    server.create_service_account(namespace, account).await?;
    let token = server.service_account_token(namespace, account).await?;
    let kubeconfig = server.token_kubeconfig(&format!("{namespace}-{account}"), &token)?;
    let config = KubernetesConfig::new(mode).with_kubeconfig(kubeconfig).with_pod_name(pod);
    Ok(KubernetesStore::connect(config).await?)
}

/// The running Pod a registrar of `mode` runs in (none for `configmap`).
async fn pod_for(server: &KubeServer, mode: Mode, namespace: &str) -> anyhow::Result<Option<String>> {
    if mode == Mode::ConfigMap {
        return Ok(None);
    }
    let pod = unique("pod");
    server.running_pod(namespace, &pod).await?;
    Ok(Some(pod))
}

/// Install, discover, keep alive, uninstall — as the mode's ServiceAccount.
async fn role_is_enough(mode: Mode) -> anyhow::Result<()> {
    let server = support::server().await;
    let namespace = unique("rbac");
    server.create_namespace(&namespace).await?;
    apply_manifest(&server, mode, &namespace, "registry").await?;
    let pod = pod_for(&server, mode, &namespace).await?;
    let store = store_as(&server, mode, &namespace, "registry", pod.clone()).await?;
    let env = unique("env");
    let discoverer = Discoverer::new(&store, &env, conf(&namespace))?;
    discoverer.watcher().await?;
    let registrar = Registrar::new(&store, meta(&env, "guarded"), conf(&namespace))?;
    let installed = registrar.install(node("t.Rbac", &["Call"])).await?;
    let keepalive = tokio::spawn({
        let r = registrar.clone();
        async move { r.sustain_lease().await }
    });
    let m = method("t.Rbac", "Call");
    eventually(PROPAGATION, "visible", || leases_for(&discoverer, &m) == [installed.lease_id]).await?;
    // Heartbeats work under the Role too: still there after 2 TTLs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    anyhow::ensure!(leases_for(&discoverer, &m) == [installed.lease_id], "node lost while its keepalive ran");
    anyhow::ensure!(!keepalive.is_finished(), "keepalive ended: {:?}", keepalive.await);
    if mode == Mode::Lease {
        // `pods: get` lets the Lease point at its Pod.
        let leases: Api<Lease> = Api::namespaced(server.client(), &namespace);
        let all = leases.list(&ListParams::default()).await?;
        let owners: Vec<String> = all
            .items
            .iter()
            .flat_map(|l| l.metadata.owner_references.iter().flatten())
            .map(|o| o.name.clone())
            .collect();
        anyhow::ensure!(owners == [pod.clone().unwrap_or_default()], "ownerReferences {owners:?}");
    }
    registrar.uninstall().await?;
    keepalive.await??;
    eventually(PROPAGATION, "gone after uninstall", || method_absent(&discoverer, &m)).await?;
    discoverer.unwatch();
    Ok(())
}

/// Without the Role, install and watch are refused with the verb and resource named.
async fn no_role_is_permission_denied(mode: Mode, resource: &str) -> anyhow::Result<()> {
    let server = support::server().await;
    let namespace = unique("rbac");
    server.create_namespace(&namespace).await?;
    let pod = pod_for(&server, mode, &namespace).await?;
    let store = store_as(&server, mode, &namespace, "nobody", pod).await?;
    let env = unique("env");
    let registrar = Registrar::new(&store, meta(&env, "intruder"), conf(&namespace))?;
    match registrar.install(node("t.Rbac", &["Call"])).await {
        Err(Error::PermissionDenied { message, .. }) => {
            anyhow::ensure!(
                message.contains(&format!("resource \"{resource}\"")) && message.contains("cannot "),
                "message does not name verb and resource: {message}"
            );
            eprintln!("{mode} install without Role: {message}");
        }
        other => anyhow::bail!("install without Role: expected PermissionDenied, got {other:?}"),
    }
    let discoverer = Discoverer::new(&store, &env, conf(&namespace))?;
    match discoverer.watcher().await {
        Err(Error::PermissionDenied { message, .. }) => {
            anyhow::ensure!(
                message.contains(&format!("cannot list resource \"{resource}\"")),
                "message does not name verb and resource: {message}"
            );
        }
        other => anyhow::bail!("watch without Role: expected PermissionDenied, got {other:?}"),
    }
    discoverer.unwatch();
    Ok(())
}

async fn lease_role_is_enough() -> anyhow::Result<()> {
    role_is_enough(Mode::Lease).await
}

async fn configmap_role_is_enough() -> anyhow::Result<()> {
    role_is_enough(Mode::ConfigMap).await
}

async fn pod_role_is_enough() -> anyhow::Result<()> {
    role_is_enough(Mode::Pod).await
}

async fn lease_without_role_is_permission_denied() -> anyhow::Result<()> {
    no_role_is_permission_denied(Mode::Lease, "leases").await
}

async fn configmap_without_role_is_permission_denied() -> anyhow::Result<()> {
    no_role_is_permission_denied(Mode::ConfigMap, "configmaps").await
}

async fn pod_without_role_is_permission_denied() -> anyhow::Result<()> {
    no_role_is_permission_denied(Mode::Pod, "pods").await
}

fn main() -> ExitCode {
    Runner::new()
        .test("lease_role_is_enough", KubeServer::available(), lease_role_is_enough)
        .test("configmap_role_is_enough", KubeServer::available(), configmap_role_is_enough)
        .test("pod_role_is_enough", KubeServer::available(), pod_role_is_enough)
        .test(
            "lease_without_role_is_permission_denied",
            KubeServer::available(),
            lease_without_role_is_permission_denied,
        )
        .test(
            "configmap_without_role_is_permission_denied",
            KubeServer::available(),
            configmap_without_role_is_permission_denied,
        )
        .test("pod_without_role_is_permission_denied", KubeServer::available(), pod_without_role_is_permission_denied)
        .run()
}
