//! The conformance suite on a real Consul agent (`consul agent -dev` on
//! loopback, or the user's agent from `CONSUL_HTTP_ADDR`), once per layout:
//! `consul` (the Go framework's single service per env, the default) and
//! `consul-per-app` (one service per app, `?layout=per-app`).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::process::ExitCode;

use async_trait::async_trait;
use conformance::{Backend, Runner, ServerUse, Unavailable};
use registry_consul::{ConsulConfig, ConsulStore, Layout, META_VALUE_LIMIT};
use registry_core::store::{Scope, Store};
use registry_testenv::consul::{self, ConsulServer};
use tokio::sync::Mutex;

/// Which layout a suite runs.
trait LayoutChoice: Send + Sync + 'static {
    const LAYOUT: Layout;
}

struct Single;
impl LayoutChoice for Single {
    const LAYOUT: Layout = Layout::Single;
}

struct PerApp;
impl LayoutChoice for PerApp {
    const LAYOUT: Layout = Layout::PerApp;
}

/// A Consul agent and a store connected to it, in layout `L`.
struct Consul<L> {
    server: Mutex<ConsulServer>,
    store: ConsulStore,
    /// What `put_foreign` wrote, by KV key: the agent service's id and the session.
    foreign: std::sync::Mutex<HashMap<String, (String, String)>>,
    layout: PhantomData<L>,
}

fn unavailable(reason: impl std::fmt::Display) -> Unavailable {
    Unavailable::StartFailed { server: "consul".into(), reason: reason.to_string() }
}

/// The store configuration for `server`.
fn config(server: &ConsulServer, layout: Layout) -> ConsulConfig {
    let config = ConsulConfig::new(server.address()).with_layout(layout);
    match server.token() {
        Some(token) => config.with_token(token),
        None => config,
    }
}

impl<L> Consul<L> {
    /// One request of the test glue, failing on any status but 200.
    async fn call(&self, method: &str, path: &str, body: &str) -> anyhow::Result<String> {
        let (status, answer) = self.server.lock().await.request(method, path, Some(body)).await?;
        anyhow::ensure!(status == 200, "{method} {path}: HTTP {status}: {answer}");
        Ok(answer)
    }
}

#[async_trait]
impl<L: LayoutChoice> Backend for Consul<L> {
    fn store(&self) -> &dyn Store {
        &self.store
    }

    fn available() -> Result<(), Unavailable> {
        consul::available()
    }

    fn dedicated_available() -> Result<(), Unavailable> {
        consul::local_available()
    }

    async fn start(server: ServerUse) -> Result<Self, Unavailable> {
        let server = match server {
            ServerUse::Shared => ConsulServer::start().await?,
            ServerUse::Dedicated => ConsulServer::start_local().await?,
        };
        let store = ConsulStore::connect(config(&server, L::LAYOUT)).await.map_err(unavailable)?;
        Ok(Consul { server: Mutex::new(server), store, foreign: Default::default(), layout: PhantomData })
    }

    /// Two foreign entries per call, both where discovery of `scope` looks:
    /// a service instance of another owner under the scope's service name
    /// (single layout; per-app: the service of an app named `name`) with
    /// `value` as its `node` meta when it fits, and a KV entry
    /// `<prefix><name>` = `value` (per-app: an entry beside the app
    /// folders), held by a session named like the service.
    /// [`remove_foreign`](Backend::remove_foreign) removes all three.
    async fn put_foreign(&self, scope: &Scope, name: &str, value: &str) -> anyhow::Result<()> {
        let mut meta = serde_json::json!({ "owner": "someone-else" });
        if value.len() <= META_VALUE_LIMIT {
            meta["node"] = value.into();
        }
        let service_name = match L::LAYOUT {
            Layout::PerApp => ConsulStore::app_service_name(scope, name),
            _ => ConsulStore::service_name(scope),
        };
        let id = format!("foreign-{service_name}-{name}");
        let service = serde_json::json!({
            "ID": id,
            "Name": service_name,
            "Meta": meta,
            "Check": { "CheckID": format!("service:{id}"), "TTL": "60s", "Status": "passing", "DeregisterCriticalServiceAfter": "1m" },
        });
        self.call("PUT", "/v1/agent/service/register", &service.to_string()).await?;
        let session = serde_json::json!({ "Name": id, "TTL": "60s", "Behavior": "delete" });
        let session = self.call("PUT", "/v1/session/create", &session.to_string()).await?;
        let session: serde_json::Value = serde_json::from_str(&session)?;
        let session = session["ID"].as_str().ok_or_else(|| anyhow::anyhow!("no session ID in {session}"))?;
        let key = format!("{}{name}", scope.key_prefix());
        self.foreign
            .lock()
            .map_err(|_| anyhow::anyhow!("lock poisoned"))?
            .insert(key.clone(), (id, session.to_owned()));
        let acquired = self.call("PUT", &format!("/v1/kv/{key}?acquire={session}"), value).await?;
        anyhow::ensure!(acquired.trim() == "true", "foreign KV entry {key} not written: {acquired}");
        Ok(())
    }

    async fn remove_foreign(&self, scope: &Scope, name: &str) -> anyhow::Result<()> {
        let key = format!("{}{name}", scope.key_prefix());
        let written = self.foreign.lock().map_err(|_| anyhow::anyhow!("lock poisoned"))?.remove(&key);
        let (id, session) = written.ok_or_else(|| anyhow::anyhow!("no foreign record {key} was written"))?;
        self.call("PUT", &format!("/v1/agent/service/deregister/{id}"), "").await?;
        self.call("PUT", &format!("/v1/session/destroy/{session}"), "").await?;
        self.call("DELETE", &format!("/v1/kv/{key}"), "").await?;
        Ok(())
    }

    /// KV keys under `<namespace>/`, agent services named `<namespace>-…`
    /// (both layouts), and sessions whose name mentions the namespace (ours
    /// are named after the service id, `<namespace>-…`; the foreign ones
    /// `foreign-<namespace>-…`).
    async fn leftovers(&self, namespace: &str) -> anyhow::Result<Option<Vec<String>>> {
        let mut left = Vec::new();
        let (status, keys) =
            self.server.lock().await.request("GET", &format!("/v1/kv/{namespace}/?keys"), None).await?;
        match status {
            200 => {
                let keys: Vec<String> = serde_json::from_str(&keys)?;
                left.extend(keys.into_iter().map(|k| format!("kv {k}")));
            }
            404 => {}
            status => anyhow::bail!("GET /v1/kv/{namespace}/?keys: HTTP {status}: {keys}"),
        }
        let services: HashMap<String, serde_json::Value> =
            serde_json::from_str(&self.call("GET", "/v1/agent/services", "").await?)?;
        let prefix = format!("{namespace}-");
        for (id, service) in services {
            if service["Service"].as_str().is_some_and(|name| name.starts_with(&prefix)) {
                left.push(format!("service {id}"));
            }
        }
        let sessions: Vec<serde_json::Value> = serde_json::from_str(&self.call("GET", "/v1/session/list", "").await?)?;
        for session in sessions {
            if session["Name"].as_str().is_some_and(|name| name.contains(namespace)) {
                left.push(format!("session {} ({})", session["ID"], session["Name"]));
            }
        }
        Ok(Some(left))
    }

    async fn stop_server(&self) -> anyhow::Result<()> {
        Ok(self.server.lock().await.stop()?)
    }

    async fn start_server(&self) -> anyhow::Result<()> {
        Ok(self.server.lock().await.restart().await?)
    }
}

fn main() -> ExitCode {
    Runner::new().suite::<Consul<Single>>("consul").suite::<Consul<PerApp>>("consul-per-app").run()
}
