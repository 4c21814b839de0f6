//! The conformance suite on a real etcd: the shared scenarios run against a
//! local etcd started for this run (or the cluster in `ETCD_ENDPOINTS`), and
//! the outage scenario against an etcd of its own that it kills and restarts
//! on the same ports and data dir.

use std::process::ExitCode;
use std::time::Duration;

use async_trait::async_trait;
use conformance::{Backend, Runner, ServerUse, Unavailable};
use registry_core::store::{Scope, Store};
use registry_etcd::{EtcdConfig, EtcdStore};
use registry_testenv::etcd::{self, EtcdServer};
use tokio::sync::Mutex;

/// An etcd server and a store connected to it.
struct Etcd {
    server: Mutex<EtcdServer>,
    store: EtcdStore,
}

fn start_failed(reason: impl ToString) -> Unavailable {
    Unavailable::StartFailed { server: "etcd".into(), reason: reason.to_string() }
}

#[async_trait]
impl Backend for Etcd {
    fn store(&self) -> &dyn Store {
        &self.store
    }

    fn available() -> Result<(), Unavailable> {
        etcd::available()
    }

    fn dedicated_available() -> Result<(), Unavailable> {
        etcd::local_available()
    }

    async fn start(server: ServerUse) -> Result<Self, Unavailable> {
        let server = match server {
            ServerUse::Shared => EtcdServer::start().await?,
            // Stopped and restarted by the scenario: never the user's cluster.
            ServerUse::Dedicated => EtcdServer::start_local().await?,
        };
        let config = EtcdConfig::new(server.endpoints()).with_request_timeout(Duration::from_secs(2));
        let store = EtcdStore::connect(config).await.map_err(start_failed)?;
        Ok(Etcd { server: Mutex::new(server), store })
    }

    async fn put_foreign(&self, scope: &Scope, name: &str, value: &str) -> anyhow::Result<()> {
        // A plain put, no lease: what another writer (or a human with etcdctl) leaves behind.
        let key = format!("{}{name}", scope.key_prefix());
        self.store.client().put(key, value, None).await?;
        Ok(())
    }

    async fn remove_foreign(&self, scope: &Scope, name: &str) -> anyhow::Result<()> {
        self.store.client().delete(format!("{}{name}", scope.key_prefix()), None).await?;
        Ok(())
    }

    async fn leftovers(&self, namespace: &str) -> anyhow::Result<Option<Vec<String>>> {
        let options = etcd_client::GetOptions::new().with_prefix().with_keys_only();
        let listing = self.store.client().get(format!("{namespace}/"), Some(options)).await?;
        Ok(Some(listing.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect()))
    }

    async fn stop_server(&self) -> anyhow::Result<()> {
        Ok(self.server.lock().await.stop()?)
    }

    async fn start_server(&self) -> anyhow::Result<()> {
        Ok(self.server.lock().await.restart().await?)
    }
}

fn main() -> ExitCode {
    Runner::new().suite::<Etcd>("etcd").run()
}
