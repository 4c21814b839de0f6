//! [`World`]: one scenario's namespace and env, its registrars and discoverers.

use std::sync::{Arc, Mutex};

use registry_core::store::Scope;
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
    /// What [`World::put_foreign`] wrote: scope and name.
    foreign: Vec<(Scope, String)>,
}

/// The namespaces scenarios used, by backend (its address): the runner
/// checks after the suite that each is empty ([`namespaces_of`]).
static USED: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());

/// The namespaces that worlds on the backend at `backend` used.
pub(crate) fn namespaces_of(backend: usize) -> Vec<String> {
    let used = USED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    used.iter().filter(|(b, _)| *b == backend).map(|(_, ns)| ns.clone()).collect()
}

impl<'a, B: Backend> World<'a, B> {
    /// A fresh namespace (prepared on the backend) and env.
    pub async fn new(backend: &'a B) -> anyhow::Result<Self> {
        let namespace = unique("ns");
        USED.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((std::ptr::from_ref(backend) as usize, namespace.clone()));
        backend.prepare_namespace(&namespace).await?;
        Ok(Self {
            backend,
            namespace,
            env: unique("env"),
            registrars: Vec::new(),
            discoverers: Vec::new(),
            foreign: Vec::new(),
        })
    }

    /// Writes a foreign record in this world's scope ([`Backend::put_foreign`]);
    /// [`cleanup`](Self::cleanup) removes it.
    pub async fn put_foreign(&mut self, name: &str, value: &str) -> anyhow::Result<()> {
        let scope = Scope::new(self.namespace.clone(), self.env.clone());
        self.foreign.push((scope.clone(), name.to_owned()));
        self.backend.put_foreign(&scope, name, value).await
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

    /// Removes everything this world wrote: uninstalls every registrar
    /// (crashed ones too), stops every discoverer, removes the foreign
    /// records and releases the namespace ([`Backend::release_namespace`]).
    /// Goes through all of it, then fails with what could not be removed:
    /// a suite pointed at someone's cluster must leave nothing behind.
    pub async fn cleanup(self) -> anyhow::Result<()> {
        let mut failures = Vec::new();
        for d in &self.discoverers {
            d.unwatch();
        }
        for r in &self.registrars {
            if let Err(e) = r.uninstall().await {
                failures.push(format!("uninstalling {}: {e}", r.meta().app_id));
            }
        }
        for (scope, name) in &self.foreign {
            if let Err(e) = self.backend.remove_foreign(scope, name).await {
                failures.push(format!("removing foreign record {name}: {e:#}"));
            }
        }
        if let Err(e) = self.backend.release_namespace(&self.namespace).await {
            failures.push(format!("releasing namespace {}: {e:#}", self.namespace));
        }
        anyhow::ensure!(failures.is_empty(), "cleanup of namespace {} failed: {}", self.namespace, failures.join("; "));
        Ok(())
    }
}
