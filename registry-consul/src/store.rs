//! [`ConsulStore`]: the store-trait implementation; [`crate::writer`] and
//! [`crate::reader`] do the writing and reading.
//!
//! **Writing** (one [`StoreWriter`] per registering instance):
//! - `grant` allocates a process-unique, time-based lease id (no server call:
//!   Consul's liveness is the TTL check created by `put`);
//! - `put` registers the agent service `<namespace>-<env>` with ID
//!   `<namespace>-<env>-<app_id>-<lease_id>`, tags `[app_id, version]`, meta
//!   `app_id`, `env`, `version`, `namespace` and — when it fits Consul's
//!   512-byte meta value limit — `node`, the node JSON with the Go
//!   framework's fields only ([`ServiceNode::to_go_json`]), the one place a Go
//!   reader looks (see the crate docs for when a Go reader sees a Rust node);
//!   a TTL check
//!   `service:<id>` (TTL = the registrar's TTL, initially passing,
//!   `DeregisterCriticalServiceAfter` = 3×TTL but at least one minute,
//!   Consul's own floor); then writes the full node JSON to KV
//!   `<namespace>/<env>/<app_id>/<lease_id>`, acquired by a session bound to
//!   `serfHealth` and the service check with `Behavior=delete`, so the entry
//!   vanishes when the check goes critical;
//! - `renew` passes the TTL check (an unknown check is `LeaseExpired`: core
//!   registers again) and, when the session is gone (the check went critical
//!   for a moment), writes the KV record again under a new session;
//! - `remove` deregisters the service, deletes the KV entry and destroys the
//!   session.
//!
//! **Reading**: blocking queries on `/v1/health/service/<name>?passing=true`
//! and `/v1/kv/<namespace>/<env>/?recurse`, joined: an instance is listed
//! while its service is passing, with the node JSON from KV; an instance
//! without our `namespace` meta (written by the Go framework) is listed from
//! its `node` meta when its `env` meta is the reader's env, as Go readers do.
//! Every answer is a full set, handed to core as
//! [`WatchUpdate::Replace`]; core's [`ListWatchReader`] retries with backoff
//! and keeps the last view while the agent is away.

use std::sync::Arc;

use registry_core::Result;
use registry_core::list_watch::ListWatchReader;
use registry_core::store::{Scope, Store, StoreReader, StoreWriter};

use crate::agent::Agent;
use crate::client::Client;
use crate::config::{ConsulConfig, Layout};
use crate::error::KIND;
use crate::names;
use crate::per_app::PerAppReader;
use crate::reader::{ConsulReader, ReaderShared};
use crate::writer::ConsulWriter;

/// The Consul backend. Cheap to clone; clones share one HTTP client.
///
/// ```no_run
/// # async fn demo() -> registry_core::Result<()> {
/// use registry_consul::{ConsulConfig, ConsulStore};
/// use registry_core::{Meta, Registrar, ServiceConf};
///
/// let store = ConsulStore::connect(ConsulConfig::from_env()).await?;
/// let registrar = Registrar::new(&store, Meta::new("prod", "greeter", "v1"), ServiceConf::default())?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConsulStore {
    client: Arc<Client>,
}

impl std::fmt::Debug for ConsulStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulStore").field("config", &self.client.config).finish()
    }
}

impl ConsulStore {
    /// Connects to the agent of `config`: validates the configuration, asks
    /// the agent for its leader (`BackendUnavailable` when the agent cannot
    /// be reached, `Timeout` when it does not answer) and, when a token is
    /// set and ACLs are enabled, checks the token (`PermissionDenied` when
    /// Consul does not know it; the error never contains the token).
    pub async fn connect(config: ConsulConfig) -> Result<ConsulStore> {
        config.validate()?;
        let http = crate::agent::https_client(&config)?;
        let agent = Agent::new(&config, http.clone())?;
        let kv_config =
            rs_consul::Config { address: config.base().to_owned(), token: config.token.clone(), ..Default::default() };
        let kv = rs_consul::ConsulBuilder::new(kv_config).with_https_client(http).build();
        let leader = agent.leader().await?;
        if leader.is_empty() {
            tracing::warn!(address = %config.address, "the Consul cluster has no leader yet; writes will be retried");
        }
        if config.token.is_some() {
            agent.check_token().await?;
        }
        Ok(ConsulStore { client: Arc::new(Client { agent, kv, config }) })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ConsulConfig {
        &self.client.config
    }

    /// Consul service name of a scope: `<namespace>-<env>` (the Go framework's).
    pub fn service_name(scope: &Scope) -> String {
        names::service_name(scope)
    }

    /// Consul service name of an app in the [`Layout::PerApp`] layout:
    /// `<namespace>-<env>-<app_id>` (readers tell scopes that share a name
    /// apart by the instances' `namespace` and `env` meta).
    pub fn app_service_name(scope: &Scope, app_id: &str) -> String {
        names::app_service_name(scope, app_id)
    }

    /// Service ID of one instance: `<namespace>-<env>-<app_id>-<lease_id>`.
    pub fn service_id(scope: &Scope, app_id: &str, lease_id: i64) -> String {
        names::service_id(scope, app_id, lease_id)
    }
}

impl Store for ConsulStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    /// Core's name rules ([`registry_core::conf::validate_names`]); in the
    /// [`Layout::PerApp`] layout also Consul's rules for a service name its
    /// DNS interface serves — letters, digits and `-` only, at most 63 bytes
    /// for `<namespace>-<env>-<app_id>` (a discoverer, which has no app id,
    /// checks that `<namespace>-<env>-` leaves room for one character) —
    /// refused with [`Error::InvalidConfig`](registry_core::Error::InvalidConfig)
    /// naming the field.
    fn validate(&self, scope: &Scope, app_id: Option<&str>) -> Result<()> {
        registry_core::conf::validate_names(&scope.namespace, &scope.env, app_id)?;
        if self.client.config.layout == Layout::PerApp {
            names::validate_per_app(scope, app_id)?;
        }
        Ok(())
    }

    fn writer(&self, scope: &Scope) -> Result<Arc<dyn StoreWriter>> {
        Ok(Arc::new(ConsulWriter::new(Arc::clone(&self.client), scope.clone())))
    }

    fn reader(&self, scope: &Scope) -> Result<Arc<dyn StoreReader>> {
        let client = Arc::clone(&self.client);
        Ok(match client.config.layout {
            Layout::Single => {
                let source = ConsulReader::new(ReaderShared::new(client, scope, names::service_name(scope)));
                Arc::new(ListWatchReader::new(Arc::new(source)))
            }
            Layout::PerApp => Arc::new(ListWatchReader::new(Arc::new(PerAppReader::new(client, scope)))),
        })
    }

    fn operator(&self, scope: &Scope) -> Result<Arc<dyn registry_core::operator::Operator>> {
        Ok(Arc::new(crate::operator::ConsulOperator::new(Arc::clone(&self.client), scope.clone())))
    }
}
