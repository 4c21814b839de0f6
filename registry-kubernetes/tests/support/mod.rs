//! Test fixtures shared by the Kubernetes test binaries: stores on the test
//! server, Pods moved to `Running` without a kubelet, RBAC manifests.
// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use anyhow::Context;
use conformance::env::kube::KubeServer;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use registry_kubernetes::{KubernetesConfig, KubernetesStore, Mode};

/// The scheduling gate that keeps test Pods away from schedulers and kubelets
/// (a user's kind cluster would otherwise try to run them).
pub const GATE: &str = "registry.fireflycore.io/test-no-kubelet";

/// A store in `mode` on `server`, through its admin kubeconfig.
pub async fn store(server: &KubeServer, mode: Mode) -> registry_core::Result<KubernetesStore> {
    KubernetesStore::connect(KubernetesConfig::new(mode).with_kubeconfig(server.kubeconfig()).with_pod_name(None)).await
}

/// Creates Pod `name` in `namespace` and sets its phase to `Running` through
/// the status subresource (there is no kubelet).
pub async fn running_pod(client: &Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    create_pod(client, namespace, name, serde_json::json!({}), serde_json::json!({})).await?;
    set_phase(client, namespace, name, "Running").await
}

/// Creates Pod `name` with extra `labels` and `annotations` (not yet running).
pub async fn create_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    labels: serde_json::Value,
    annotations: serde_json::Value,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": labels, "annotations": annotations },
        "spec": {
            "containers": [{ "name": "app", "image": "registry.invalid/app:test" }],
            "automountServiceAccountToken": false,
            "schedulingGates": [{ "name": GATE }],
        }
    }))?;
    pods.create(&PostParams::default(), &pod).await.with_context(|| format!("create Pod {namespace}/{name}"))?;
    Ok(())
}

/// Sets a Pod's `status.phase` through the status subresource.
pub async fn set_phase(client: &Client, namespace: &str, name: &str, phase: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let status = serde_json::json!({ "status": { "phase": phase } });
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("set Pod {namespace}/{name} phase {phase}"))?;
    Ok(())
}

/// `deploy/rbac/<mode>.yaml` of this repository.
pub fn rbac_manifest(mode: Mode) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy").join("rbac").join(format!("{}.yaml", mode.as_str()))
}
