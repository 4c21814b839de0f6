//! Local test servers for `bench` when no `--url` is given: started from the
//! test-server cache (`scripts/install-test-servers.sh`), or the user's
//! servers named by `ETCD_ENDPOINTS`, `CONSUL_HTTP_ADDR`, `KUBECONFIG`.

use std::any::Any;
use std::sync::Arc;

use conformance::env::kube::KubeServer;

/// A backend's URL, and whatever keeps its local server alive.
pub struct Target {
    /// URL to connect to.
    pub url: String,
    /// Keeps a spawned server running until dropped.
    _server: Option<Box<dyn Any + Send>>,
    /// The Kubernetes API server, whose namespaces must exist before use.
    kube: Option<Arc<KubeServer>>,
}

impl Target {
    fn url(url: String) -> Self {
        Self { url, _server: None, kube: None }
    }

    /// Creates `namespace` where the backend needs it to exist (Kubernetes).
    pub async fn prepare_namespace(&self, namespace: &str) -> anyhow::Result<()> {
        if let Some(kube) = &self.kube {
            kube.create_namespace(namespace).await?;
        }
        Ok(())
    }
}

/// Resolves `--backend` (and an optional `--url`) to a target, starting a
/// local server from the test-server cache when needed.
pub async fn resolve(backend: &str, url: Option<String>) -> anyhow::Result<Target> {
    if let Some(url) = url {
        return Ok(Target::url(url));
    }
    match backend {
        "memory" => Ok(Target::url("memory://bench".into())),
        "etcd" => {
            let server = conformance::env::etcd::EtcdServer::start().await?;
            let url = format!("etcd://{}", server.endpoints().join(","));
            Ok(Target { url, _server: Some(Box::new(server)), kube: None })
        }
        "consul" => {
            let server = conformance::env::consul::ConsulServer::start().await?;
            let host = server.address().trim_start_matches("http://").to_owned();
            let url = match server.token() {
                Some(token) => format!("consul://{token}@{host}"),
                None => format!("consul://{host}"),
            };
            Ok(Target { url, _server: Some(Box::new(server)), kube: None })
        }
        "kubernetes-lease" | "kubernetes-configmap" => {
            let mode = backend.trim_start_matches("kubernetes-");
            let server = KubeServer::shared().await?;
            let url = format!("kubernetes://?mode={mode}&kubeconfig={}", server.kubeconfig().display());
            Ok(Target { url, _server: None, kube: Some(server) })
        }
        other => anyhow::bail!(
            "backend `{other}` is not one of memory, etcd, consul, kubernetes-lease, kubernetes-configmap \
             (kubernetes-pod needs one Pod per registrar: run it with --url inside a cluster)"
        ),
    }
}
