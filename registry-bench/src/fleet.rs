//! The fleet: `--instances` of the library's own registrars
//! ([`registry_core::Registrar`]) sharing one connection per side, each with its
//! keepalive task, their heartbeat writes and failed heartbeats counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use registry::{Meta, Register, Registry, RetryHooks, ServiceConf, ServiceNode};
use registry_core::Registrar;
use registry_core::store::{Scope, StoreWriter};

use crate::target::Target;
use crate::{ENV, node};

/// Apps of the fleet are named `fleet-<i>`.
pub const FLEET_PREFIX: &str = "fleet-";
/// Attempts of one fleet member's install.
const INSTALL_ATTEMPTS: u32 = 5;

/// Counts the fleet's heartbeat writes.
#[derive(Default)]
pub struct Writes {
    pub renewed: AtomicU64,
}

/// A [`StoreWriter`] that counts successful renewals.
struct CountingWriter {
    inner: Arc<dyn StoreWriter>,
    writes: Arc<Writes>,
}

#[async_trait]
impl StoreWriter for CountingWriter {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn grant(&self, ttl: Duration) -> registry::Result<i64> {
        self.inner.grant(ttl).await
    }
    async fn put(&self, node: &ServiceNode, ttl: Duration) -> registry::Result<()> {
        self.inner.put(node, ttl).await
    }
    async fn renew(&self, node: &ServiceNode, ttl: Duration) -> registry::Result<()> {
        let result = self.inner.renew(node, ttl).await;
        if result.is_ok() {
            self.writes.renewed.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
    async fn remove(&self, node: &ServiceNode) -> registry::Result<()> {
        self.inner.remove(node).await
    }
    fn needs_heartbeats(&self) -> bool {
        self.inner.needs_heartbeats()
    }
}

/// A registrar of the fleet and its keepalive task.
type Member = (Arc<dyn Register>, tokio::task::JoinHandle<registry::Result<()>>);

/// The fleet: its registrars and their keepalive tasks.
pub struct Fleet {
    members: Vec<Member>,
    /// Its heartbeat writes.
    pub writes: Arc<Writes>,
    /// Its failed heartbeats (keepalive retries).
    pub failed: Arc<AtomicU64>,
    /// Installs that failed and were tried again while the fleet started.
    pub install_retries: u64,
}

impl Fleet {
    /// Installs `instances` registrars over `sides` in turn, `concurrency` at once.
    pub async fn start(
        concurrency: usize,
        target: &Target,
        sides: &[&Registry],
        conf: &ServiceConf,
        instances: usize,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!sides.is_empty(), "a fleet needs a side to register on");
        let writes = Arc::new(Writes::default());
        let failed = Arc::new(AtomicU64::new(0));
        let install_retries = Arc::new(AtomicU64::new(0));
        let apps = (instances / 10).max(8);
        let scope = Scope::new(conf.namespace.clone(), ENV);
        let mut members = Vec::with_capacity(instances);
        let mut pending = FuturesUnordered::new();
        for i in 0..instances {
            let meta = Meta::new(ENV, format!("{FLEET_PREFIX}{}", i % apps), "v1");
            let side = sides[i % sides.len()];
            let registrar: Arc<dyn Register> = if target.pods() {
                target.registrar(side, meta, conf.clone()).await?.registrar
            } else {
                let writer = CountingWriter { inner: side.store().writer(&scope)?, writes: Arc::clone(&writes) };
                Arc::new(Registrar::from_writer(Arc::new(writer), meta, conf.clone())?)
            };
            let counter = Arc::clone(&failed);
            registrar.set_hooks(RetryHooks::new().before_retry(move |_| {
                counter.fetch_add(1, Ordering::Relaxed);
            }));
            let method = format!("M{}", i % apps);
            let retried = Arc::clone(&install_retries);
            pending.push(async move {
                // An install that fails is tried again, as a restarting process would (counted).
                let mut attempt = 1;
                loop {
                    match registrar.install(node("fleet.Svc", &method)).await {
                        Ok(_) => return Ok(registrar),
                        Err(e) if attempt < INSTALL_ATTEMPTS => {
                            tracing::warn!(error = %e, attempt, "fleet install failed; trying again");
                            retried.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                            attempt += 1;
                        }
                        Err(e) => return Err(anyhow::Error::new(e).context("installing the fleet")),
                    }
                }
            });
            while pending.len() >= concurrency.max(1) {
                if let Some(installed) = pending.next().await {
                    members.push(keep(installed?));
                }
            }
        }
        while let Some(installed) = pending.next().await {
            members.push(keep(installed?));
        }
        Ok(Self { members, writes, failed, install_retries: install_retries.load(Ordering::Relaxed) })
    }

    /// Uninstalls the fleet, `concurrency` at once.
    pub async fn stop(self, concurrency: usize) {
        let mut removals = FuturesUnordered::new();
        for (registrar, keepalive) in self.members {
            removals.push(async move {
                let _ = registrar.uninstall().await;
                let _ = keepalive.await;
            });
            while removals.len() >= concurrency.max(1) {
                removals.next().await;
            }
        }
        while removals.next().await.is_some() {}
    }
}

fn keep(registrar: Arc<dyn Register>) -> Member {
    let keepalive = tokio::spawn({
        let r = Arc::clone(&registrar);
        async move { r.sustain_lease().await }
    });
    (registrar, keepalive)
}
