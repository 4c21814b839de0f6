//! [`World`]: one scenario's namespace and env, its registrars and discoverers.

use std::sync::Arc;

use registry_core::{Discoverer, Discovery, Register, Registrar, ServiceConf, ServiceNode};
use tokio::task::JoinHandle;

use crate::Backend;
use crate::fixtures::{conf, meta, unique};

/// A running instance: its registrar, the node as installed, and its keepalive task.
pub struct Instance {
    /// The registrar.
    pub registrar: Registrar,
    /// The node as `install` returned it.
    pub node: ServiceNode,
    /// The `sustain_lease` task.
    pub keepalive: JoinHandle<registry_core::Result<()>>,
}

impl Instance {
    /// Uninstalls and waits for the keepalive to end.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.registrar.uninstall().await?;
        self.keepalive.await??;
        Ok(())
    }
}

/// A scenario's own namespace and env on one backend.
pub struct World<'a, B: Backend> {
    /// The backend.
    pub backend: &'a B,
    /// Random namespace.
    pub namespace: String,
    /// Random env.
    pub env: String,
    registrars: Vec<Registrar>,
    discoverers: Vec<Arc<Discoverer>>,
}

impl<'a, B: Backend> World<'a, B> {
    /// A fresh namespace (prepared on the backend) and env.
    pub async fn new(backend: &'a B) -> anyhow::Result<Self> {
        let namespace = unique("ns");
        backend.prepare_namespace(&namespace).await?;
        Ok(Self { backend, namespace, env: unique("env"), registrars: Vec::new(), discoverers: Vec::new() })
    }

    /// A registrar for `app` in this world.
    pub async fn registrar(&mut self, app: &str) -> anyhow::Result<Registrar> {
        let registrar = self.backend.registrar(meta(&self.env, app), conf(&self.namespace)).await?;
        self.registrars.push(registrar.clone());
        Ok(registrar)
    }

    /// Installs `node` as a new instance of `app` and starts its keepalive.
    pub async fn start(&mut self, app: &str, node: ServiceNode) -> anyhow::Result<Instance> {
        let conf = conf(&self.namespace);
        self.start_with(app, node, conf).await
    }

    /// [`start`](Self::start) with a configuration of the caller's (in this world's namespace).
    pub async fn start_with(&mut self, app: &str, node: ServiceNode, conf: ServiceConf) -> anyhow::Result<Instance> {
        let registrar = self.backend.registrar(meta(&self.env, app), conf).await?;
        self.registrars.push(registrar.clone());
        let node = registrar.install(node).await?;
        let keepalive = tokio::spawn({
            let r = registrar.clone();
            async move { r.sustain_lease().await }
        });
        Ok(Instance { registrar, node, keepalive })
    }

    /// A discoverer of this world's env, watching and ready.
    pub async fn discoverer(&mut self) -> anyhow::Result<Arc<Discoverer>> {
        let env = self.env.clone();
        self.discoverer_of(&env).await
    }

    /// A discoverer of `env` in this world's namespace, watching and ready.
    pub async fn discoverer_of(&mut self, env: &str) -> anyhow::Result<Arc<Discoverer>> {
        let discoverer = Arc::new(self.backend.discoverer(env, conf(&self.namespace)).await?);
        discoverer.watcher().await?;
        self.discoverers.push(Arc::clone(&discoverer));
        Ok(discoverer)
    }

    /// Best-effort cleanup: uninstall every registrar, stop every discoverer.
    pub async fn cleanup(self) {
        for r in &self.registrars {
            let _ = r.uninstall().await;
        }
        for d in &self.discoverers {
            d.unwatch();
        }
    }
}
