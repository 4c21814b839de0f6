//! The bench's target: the server at `--url`, or a local one started from the
//! test-server cache (`scripts/install-test-servers.sh`), or the user's
//! servers named by `ETCD_ENDPOINTS`, `CONSUL_HTTP_ADDR`, `KUBECONFIG`.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use registry::{Meta, Register, Registry, ServiceConf};
use registry_testenv::kube::KubeServer;

/// A backend's URL, and whatever keeps its local server alive.
pub struct Target {
    /// URL to connect to.
    pub url: String,
    /// Where the fleet registers, spread over these in turn; empty: at `url`.
    pub fleet_urls: Vec<String>,
    /// Keeps a spawned server running until dropped.
    _server: Option<Box<dyn Any + Send>>,
    /// The Kubernetes API server, whose namespaces must exist before use.
    kube: Option<Arc<KubeServer>>,
    /// `pod` mode: every registrar runs in a Pod of its own.
    pods: bool,
    next_pod: AtomicU64,
}

/// One registering instance and, in `pod` mode, its Pod.
pub struct Instance {
    /// The registrar.
    pub registrar: Arc<dyn Register>,
    pod: Option<(String, String)>,
}

impl Target {
    fn url(url: String) -> Self {
        Self::new(url, None, None, false)
    }

    fn new(url: String, server: Option<Box<dyn Any + Send>>, kube: Option<Arc<KubeServer>>, pods: bool) -> Self {
        Self { url, fleet_urls: Vec::new(), _server: server, kube, pods, next_pod: AtomicU64::new(0) }
    }

    /// A registrar on `side`; in `pod` mode, in a new Running Pod of its own
    /// (there is no kubelet: the bench plays its part).
    pub async fn registrar(&self, side: &Registry, meta: Meta, conf: ServiceConf) -> anyhow::Result<Instance> {
        let (Some(kube), true) = (&self.kube, self.pods) else {
            return Ok(Instance { registrar: side.registrar(meta, conf)?, pod: None });
        };
        let pod = format!("bench-{}", self.next_pod.fetch_add(1, Ordering::Relaxed));
        kube.running_pod(&conf.namespace, &pod).await?;
        let own = registry::connect(format!("{}&pod={pod}", self.url)).await?;
        Ok(Instance { registrar: own.registrar(meta, conf.clone())?, pod: Some((conf.namespace, pod)) })
    }

    /// Whether every registrar runs in a Pod of its own (`pod` mode).
    pub fn pods(&self) -> bool {
        self.kube.is_some() && self.pods
    }

    /// The instance crashed: in `pod` mode its Pod stops running, as the kubelet would report.
    pub async fn crashed(&self, instance: &Instance) -> anyhow::Result<()> {
        if let (Some(kube), Some((namespace, pod))) = (&self.kube, &instance.pod) {
            kube.set_pod_phase(namespace, pod, "Failed").await?;
        }
        Ok(())
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
/// local server from the test-server cache when needed
/// ([`registry_testenv::local`] knows which server each name needs).
pub async fn resolve(backend: &str, url: Option<String>) -> anyhow::Result<Target> {
    if let Some(url) = url {
        return Ok(Target::url(url));
    }
    let local = registry_testenv::local::start(backend).await?;
    let (url, kube, pods) = (local.url.clone(), local.kube.clone(), local.pods);
    let fleet_urls = local.fleet_urls.clone();
    Ok(Target { fleet_urls, ..Target::new(url, Some(Box::new(local)), kube, pods) })
}
