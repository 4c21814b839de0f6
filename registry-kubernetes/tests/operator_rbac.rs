//! `deploy/rbac/operator.yaml` proven minimal, like the mode Roles
//! (`tests/rbac.rs`): for each storage mode, its rule of the operator Role
//! is enough for what `registryctl drain` and `watch` do (a discoverer's list
//! and watch, the mark), and with any one verb of it removed they fail
//! naming that verb and the resource (`PermissionDenied`; a refused watch
//! shows in the discoverer's health).
// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::ExitCode;

use anyhow::Context;
use conformance::Runner;
use conformance::fixtures::{PROPAGATION, conf, eventually, leases_for, meta, method, node, unique};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::PostParams;
use registry_core::store::{Scope, Store};
use registry_core::{Discoverer, Discovery, Error, Register, Registrar};
use registry_kubernetes::{KubernetesConfig, KubernetesStore, Mode};
use registry_testenv::kube::KubeServer;

/// The rule of `deploy/rbac/operator.yaml`'s Role for `resource`.
fn operator_rule(resource: &str) -> anyhow::Result<serde_json::Value> {
    let path = support::rbac_manifest(Mode::Lease).with_file_name("operator.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value: serde_json::Value = serde::Deserialize::deserialize(document)?;
        if value["kind"] != "Role" {
            continue;
        }
        for rule in value["rules"].as_array().into_iter().flatten() {
            if rule["resources"].as_array().is_some_and(|r| r.iter().any(|r| r == resource)) {
                return Ok(rule.clone());
            }
        }
    }
    anyhow::bail!("no rule for {resource} in {}", path.display())
}

/// A store in `mode` that authenticates as a new ServiceAccount whose Role
/// holds `rule` only.
async fn operator_store(
    server: &KubeServer,
    mode: Mode,
    namespace: &str,
    rule: serde_json::Value,
) -> anyhow::Result<KubernetesStore> {
    let account = unique("operator");
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": { "name": account, "namespace": namespace }, "rules": [rule],
    }))?;
    Api::<Role>::namespaced(server.client(), namespace).create(&PostParams::default(), &role).await?;
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": { "name": account, "namespace": namespace },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account },
        "subjects": [{ "kind": "ServiceAccount", "name": account, "namespace": namespace }],
    }))?;
    Api::<RoleBinding>::namespaced(server.client(), namespace).create(&PostParams::default(), &binding).await?;
    server.create_service_account(namespace, &account).await?;
    let token = server.service_account_token(namespace, &account).await?;
    let kubeconfig = server.token_kubeconfig(&format!("{namespace}-{account}"), &token)?;
    Ok(KubernetesStore::connect(KubernetesConfig::new(mode).with_kubeconfig(kubeconfig).with_pod_name(None)).await?)
}

/// What `registryctl drain` and `watch` do: list the env, mark the instance
/// and follow the change on the watch, then unmark it.
async fn drain(store: &KubernetesStore, namespace: &str, env: &str, app: &str, lease_id: i64) -> anyhow::Result<()> {
    let discoverer = Discoverer::new(store, env, conf(namespace))?;
    let result = drain_watched(store, &discoverer, namespace, env, app, lease_id).await;
    discoverer.unwatch();
    result
}

async fn drain_watched(
    store: &KubernetesStore,
    discoverer: &Discoverer,
    namespace: &str,
    env: &str,
    app: &str,
    lease_id: i64,
) -> anyhow::Result<()> {
    discoverer.watcher().await?;
    let operator = store.operator(&Scope::new(namespace, env))?;
    operator.set_drained(app, lease_id, true).await?;
    let marked = || discoverer.snapshot().all_nodes().iter().any(|n| n.drained_by_operator);
    let stream_error = || discoverer.health().sources.iter().find_map(|s| s.last_error.clone());
    eventually(PROPAGATION, "the mark seen on the watch, or the watch failed", || marked() || stream_error().is_some())
        .await?;
    if let Some(error) = stream_error().filter(|_| !marked()) {
        anyhow::bail!("watch: {error}");
    }
    operator.set_drained(app, lease_id, false).await?;
    Ok(())
}

async fn operator_role_is_minimal(mode: Mode, resource: &str) -> anyhow::Result<()> {
    let server = support::server().await;
    let namespace = unique("oprbac");
    server.create_namespace(&namespace).await?;
    let admin = support::store(&server, mode).await?;
    let admin = match mode {
        Mode::ConfigMap => admin,
        _ => {
            let pod = unique("pod");
            server.running_pod(&namespace, &pod).await?;
            admin.with_pod_name(pod)
        }
    };
    let env = unique("env");
    let registrar = Registrar::new(&admin, meta(&env, "drained"), conf(&namespace))?;
    let installed = registrar.install(node("t.Op", &["Call"])).await?;
    let keepalive = tokio::spawn({
        let r = registrar.clone();
        async move { r.sustain_lease().await }
    });
    let watcher = Discoverer::new(&admin, &env, conf(&namespace))?;
    watcher.watcher().await?;
    let m = method("t.Op", "Call");
    eventually(PROPAGATION, "instance visible", || leases_for(&watcher, &m) == [installed.lease_id]).await?;

    let rule = operator_rule(resource)?;
    let operator = operator_store(&server, mode, &namespace, rule.clone()).await?;
    drain(&operator, &namespace, &env, "drained", installed.lease_id)
        .await
        .context("the operator rule is not enough")?;

    let verbs: Vec<String> =
        rule["verbs"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect();
    for verb in &verbs {
        let mut fewer = rule.clone();
        fewer["verbs"] = verbs.iter().filter(|v| *v != verb).cloned().collect();
        let operator = operator_store(&server, mode, &namespace, fewer).await?;
        match drain(&operator, &namespace, &env, "drained", installed.lease_id).await {
            Err(error) => {
                let message = format!("{error:#}");
                anyhow::ensure!(
                    message.contains(&format!("cannot {verb} resource \"{resource}\"")),
                    "{mode} without {verb}: the refusal does not name it: {message}"
                );
                let typed = error.downcast_ref::<Error>().is_none_or(|e| matches!(e, Error::PermissionDenied { .. }));
                anyhow::ensure!(typed, "{mode} without {verb}: not PermissionDenied: {message}");
                eprintln!("{mode} operator without {verb}: {message}");
            }
            Ok(()) => anyhow::bail!("{mode}: drained without `{verb}` on {resource}: the verb is not needed"),
        }
    }
    watcher.unwatch();
    registrar.uninstall().await?;
    keepalive.await??;
    Ok(())
}

fn main() -> ExitCode {
    Runner::new()
        .test("lease_operator_role_is_minimal", KubeServer::available(), || {
            operator_role_is_minimal(Mode::Lease, "leases")
        })
        .test("configmap_operator_role_is_minimal", KubeServer::available(), || {
            operator_role_is_minimal(Mode::ConfigMap, "configmaps")
        })
        .test("pod_operator_role_is_minimal", KubeServer::available(), || operator_role_is_minimal(Mode::Pod, "pods"))
        .run()
}
