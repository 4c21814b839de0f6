//! Test fixtures shared by the Kubernetes test binaries: stores on the test
//! server and RBAC manifests (Pods: `KubeServer::running_pod`).
// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use registry_kubernetes::{KubernetesConfig, KubernetesStore, Mode};
use registry_testenv::kube::KubeServer;

/// The test server (whether one can be had is the runner's question:
/// tests that call this are added with `KubeServer::available()`).
pub async fn server() -> KubeServer {
    KubeServer::start().await.unwrap_or_else(|e| panic!("kube-apiserver did not start: {e}"))
}

/// A store in `mode` on `server`, through its admin kubeconfig.
pub async fn store(server: &KubeServer, mode: Mode) -> registry_core::Result<KubernetesStore> {
    KubernetesStore::connect(KubernetesConfig::new(mode).with_kubeconfig(server.kubeconfig()).with_pod_name(None)).await
}

/// `deploy/rbac/<mode>.yaml` of this repository.
pub fn rbac_manifest(mode: Mode) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy").join("rbac").join(format!("{}.yaml", mode.as_str()))
}
