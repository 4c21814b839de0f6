//! [`ConsulStore`]: the store-trait implementation.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use futures::StreamExt;
use futures::stream::BoxStream;
use registry_core::list_watch::ListWatchReader;
use registry_core::store::{
    ListWatch, Listing, Malformed, RawRecord, Scope, Store, StoreReader, StoreWriter, WatchUpdate,
};
use registry_core::{Error, Result, ServiceNode};

use crate::agent::{Agent, Block, HealthEntry, HealthService, KvEntry, ServiceRegistration, TtlCheck, go_duration};
use crate::config::ConsulConfig;
use crate::error::{self, KIND};

/// Largest KV value Consul accepts by default (`kv_max_value_size`, 512 KiB).
pub const KV_VALUE_LIMIT: usize = 512 * 1024;
/// Largest service-meta value Consul accepts (bytes; Consul says "characters").
pub const META_VALUE_LIMIT: usize = 512;
/// Consul's floor for `DeregisterCriticalServiceAfter`: shorter values are
/// raised to it by the agent (with a warning), so we ask for it directly.
pub const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);

/// Shortest pause between two blocking rounds that brought nothing new, so a
/// misbehaving index can never turn the watch into a busy loop.
const IDLE_ROUND: Duration = Duration::from_millis(50);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held; a poisoned one still holds valid data.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The shared client: typed agent calls plus `rs-consul` for KV writes, over one HTTP client.
struct Client {
    agent: Agent,
    kv: rs_consul::Consul,
    config: ConsulConfig,
}

impl Client {
    fn token(&self) -> Option<&str> {
        self.config.token.as_deref()
    }

    fn datacenter(&self) -> &str {
        self.config.datacenter.as_deref().unwrap_or("")
    }

    /// Runs an `rs-consul` call with the request deadline (rs-consul's KV calls have none).
    async fn bounded<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, rs_consul::ConsulError>>,
    ) -> Result<T, KvFailure> {
        match tokio::time::timeout(self.config.request_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(rs_consul::ConsulError::UnexpectedResponseCode(code, body)))
                if error::is_invalid_session(code.as_u16(), body.as_deref().unwrap_or("")) =>
            {
                Err(KvFailure::InvalidSession)
            }
            Ok(Err(e)) => Err(KvFailure::Other(error::from_rs_consul(operation, e, self.token()))),
            Err(_) => Err(KvFailure::Other(error::timeout(operation, self.config.request_timeout))),
        }
    }

    /// `PUT /v1/kv/<key>?acquire=<session>` (rs-consul): `true` when acquired.
    async fn kv_acquire(&self, key: &str, value: &str, session: &str) -> Result<bool, KvFailure> {
        let request = rs_consul::CreateOrUpdateKeyRequest {
            key,
            acquire: session,
            datacenter: self.datacenter(),
            ..Default::default()
        };
        let (acquired, _) =
            self.bounded("write KV record", self.kv.create_or_update_key(request, value.as_bytes().to_vec())).await?;
        Ok(acquired)
    }

    /// `DELETE /v1/kv/<key>` (rs-consul).
    async fn kv_delete(&self, key: &str) -> Result<()> {
        let request = rs_consul::DeleteKeyRequest { key, datacenter: self.datacenter(), ..Default::default() };
        self.bounded("delete KV record", self.kv.delete_key(request)).await.map(drop).map_err(KvFailure::into_error)
    }
}

/// Why a KV write failed.
enum KvFailure {
    /// The session no longer exists.
    InvalidSession,
    /// Anything else.
    Other(Error),
}

impl KvFailure {
    fn into_error(self) -> Error {
        match self {
            KvFailure::InvalidSession => Error::backend(KIND, "KV write refused: session is gone"),
            KvFailure::Other(e) => e,
        }
    }
}

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
        format!("{}-{}", scope.namespace, scope.env)
    }

    /// Service ID of one instance: `<namespace>-<env>-<app_id>-<lease_id>`.
    pub fn service_id(scope: &Scope, app_id: &str, lease_id: i64) -> String {
        format!("{}-{}-{app_id}-{lease_id}", scope.namespace, scope.env)
    }
}

impl Store for ConsulStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn writer(&self, scope: &Scope) -> Result<Arc<dyn StoreWriter>> {
        Ok(Arc::new(ConsulWriter { client: Arc::clone(&self.client), scope: scope.clone(), held: Mutex::new(None) }))
    }

    fn reader(&self, scope: &Scope) -> Result<Arc<dyn StoreReader>> {
        let source = ConsulReader {
            shared: Arc::new(ReaderShared {
                client: Arc::clone(&self.client),
                scope: scope.clone(),
                service: Self::service_name(scope),
                prefix: scope.key_prefix(),
            }),
        };
        Ok(Arc::new(ListWatchReader::new(Arc::new(source))))
    }
}

// ---------------------------------------------------------------- writing

/// Names of one instance's objects.
struct Ids {
    service_id: String,
    check_id: String,
    key: String,
}

/// What the writer holds for its current instance.
struct Held {
    lease_id: i64,
    /// Session holding the KV entry; `None` until one was acquired.
    session: Option<String>,
}

struct ConsulWriter {
    client: Arc<Client>,
    scope: Scope,
    held: Mutex<Option<Held>>,
}

/// `host:port` (or `[v6]:port`) split for the service's Address/Port.
fn address_and_port(internal: &str) -> (Option<String>, Option<u16>) {
    let Some((host, port)) = internal.rsplit_once(':') else { return (None, None) };
    let Ok(port) = port.parse::<u16>() else { return (None, None) };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() { (None, Some(port)) } else { (Some(host.to_owned()), Some(port)) }
}

impl ConsulWriter {
    fn ids(&self, node: &ServiceNode) -> Ids {
        let service_id = ConsulStore::service_id(&self.scope, &node.meta.app_id, node.lease_id);
        Ids {
            check_id: format!("service:{service_id}"),
            key: self.scope.record_key(&node.meta.app_id, node.lease_id),
            service_id,
        }
    }

    /// `go_json`: the Go-shaped node ([`ServiceNode::to_go_json`]), put into
    /// meta `node` when it fits.
    fn registration(&self, node: &ServiceNode, go_json: &str, ttl: Duration, ids: &Ids) -> ServiceRegistration {
        let mut meta = BTreeMap::from([
            ("app_id".to_owned(), node.meta.app_id.clone()),
            ("env".to_owned(), node.meta.env.clone()),
            ("version".to_owned(), node.meta.version.clone()),
            ("namespace".to_owned(), self.scope.namespace.clone()),
        ]);
        if go_json.len() <= META_VALUE_LIMIT {
            meta.insert("node".to_owned(), go_json.to_owned());
        }
        let tags = [&node.meta.app_id, &node.meta.version].into_iter().filter(|t| !t.is_empty()).cloned().collect();
        let (address, port) = address_and_port(&node.network.internal);
        ServiceRegistration {
            id: ids.service_id.clone(),
            name: ConsulStore::service_name(&self.scope),
            tags,
            meta,
            address,
            port,
            check: TtlCheck {
                check_id: ids.check_id.clone(),
                name: "registry heartbeat".to_owned(),
                notes: "passed every TTL/2 by the registry keepalive; its KV record is bound to it".to_owned(),
                ttl: go_duration(ttl),
                status: "passing".to_owned(),
                deregister_critical_service_after: go_duration((ttl * 3).max(MIN_DEREGISTER_AFTER)),
            },
        }
    }

    /// The session held for `lease_id`: `None` when this writer holds another
    /// instance (or none), `Some(None)` when it holds this one without a session.
    fn held_session(&self, lease_id: i64) -> Option<Option<String>> {
        lock(&self.held).as_ref().filter(|h| h.lease_id == lease_id).map(|h| h.session.clone())
    }

    fn hold(&self, lease_id: i64, session: Option<String>) {
        *lock(&self.held) = Some(Held { lease_id, session });
    }

    /// Writes `json` to the instance's KV key under a session bound to its
    /// check (`session`, or a new one), and returns the session used.
    async fn write_record(&self, ids: &Ids, json: &str, session: Option<String>) -> Result<String> {
        let client = &self.client;
        let mut session = match session {
            Some(s) => s,
            None => client.agent.create_session(&ids.service_id, &ids.check_id).await?,
        };
        const ATTEMPTS: u32 = 3;
        for _ in 0..ATTEMPTS {
            match client.kv_acquire(&ids.key, json, &session).await {
                Ok(true) => return Ok(session),
                // Another session (an earlier one of this instance) holds the
                // key, which only this instance writes: take it over.
                Ok(false) => client.kv_delete(&ids.key).await?,
                Err(KvFailure::InvalidSession) => {
                    session = client.agent.create_session(&ids.service_id, &ids.check_id).await?;
                }
                Err(KvFailure::Other(e)) => return Err(e),
            }
        }
        Err(Error::Conflict { backend: KIND, what: format!("KV key {}", ids.key), attempts: ATTEMPTS })
    }

    /// Removes an earlier instance of this writer (its lease expired and core
    /// granted a new one), best effort: it expires by itself anyway.
    async fn forget(&self, app_id: &str, held: Held) {
        let service_id = ConsulStore::service_id(&self.scope, app_id, held.lease_id);
        if let Err(e) = self.client.agent.deregister_service(&service_id).await {
            tracing::debug!(service_id, error = %e, "could not deregister the previous instance; it expires by itself");
        }
        if let Some(session) = held.session
            && let Err(e) = self.client.agent.destroy_session(&session).await
        {
            tracing::debug!(service_id, error = %e, "could not destroy the previous session");
        }
    }
}

#[async_trait]
impl StoreWriter for ConsulWriter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn grant(&self, _ttl: Duration) -> Result<i64> {
        Ok(registry_core::store::next_instance_id())
    }

    async fn put(&self, node: &ServiceNode, ttl: Duration) -> Result<()> {
        let json = node.to_json()?;
        if json.len() > KV_VALUE_LIMIT {
            return Err(Error::TooLarge { what: "node JSON".into(), size: json.len(), limit: KV_VALUE_LIMIT });
        }
        let ids = self.ids(node);
        let previous = {
            let mut held = lock(&self.held);
            match held.as_ref() {
                Some(h) if h.lease_id != node.lease_id => held.take(),
                _ => None,
            }
        };
        if let Some(previous) = previous {
            self.forget(&node.meta.app_id, previous).await;
        }
        let session = self.held_session(node.lease_id).flatten();
        // Held before the first call: should a later step fail, `renew`
        // finds the instance and completes it.
        self.hold(node.lease_id, session.clone());
        let go_json = node.to_go_json()?;
        self.client.agent.register_service(&self.registration(node, &go_json, ttl, &ids)).await?;
        let session = self.write_record(&ids, &json, session).await?;
        self.hold(node.lease_id, Some(session));
        Ok(())
    }

    async fn renew(&self, node: &ServiceNode, _ttl: Duration) -> Result<()> {
        let Some(session) = self.held_session(node.lease_id) else {
            return Err(Error::LeaseExpired { backend: KIND });
        };
        let ids = self.ids(node);
        self.client.agent.pass_check(&ids.check_id).await?;
        let alive = match &session {
            Some(session) => self.client.agent.session_exists(session).await?,
            None => false,
        };
        if !alive {
            // The check was critical for a moment (a pause longer than the
            // TTL) and Consul released the KV record with the session; the
            // service itself is still registered and passing again.
            tracing::info!(service_id = %ids.service_id, "KV record was released; writing it again");
            let json = node.to_json()?;
            let session = self.write_record(&ids, &json, None).await?;
            self.hold(node.lease_id, Some(session));
        }
        Ok(())
    }

    async fn remove(&self, node: &ServiceNode) -> Result<()> {
        let ids = self.ids(node);
        let session = {
            let mut held = lock(&self.held);
            match held.as_ref() {
                Some(h) if h.lease_id == node.lease_id => held.take().and_then(|h| h.session),
                _ => None,
            }
        };
        self.client.agent.deregister_service(&ids.service_id).await?;
        self.client.kv_delete(&ids.key).await?;
        if let Some(session) = session {
            self.client.agent.destroy_session(&session).await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- reading

/// The indexes of both halves of a view: the reader's resume point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Indexes {
    health: u64,
    kv: u64,
}

/// Both halves as last read.
struct View {
    health: Vec<HealthEntry>,
    kv: Vec<KvEntry>,
    at: Indexes,
}

struct ReaderShared {
    client: Arc<Client>,
    scope: Scope,
    service: String,
    prefix: String,
}

struct ConsulReader {
    shared: Arc<ReaderShared>,
}

impl ReaderShared {
    /// Reads both halves now (no blocking).
    async fn fetch(&self) -> Result<View> {
        let agent = &self.client.agent;
        let ((health, health_index), (kv, kv_index)) =
            tokio::try_join!(agent.health_passing(&self.service, None), agent.kv_list(&self.prefix, None))?;
        Ok(View { health, kv, at: Indexes { health: health_index, kv: kv_index } })
    }

    /// A listing of `view`, resumable from its indexes.
    fn listing(&self, view: &View) -> Listing<Indexes> {
        let (records, malformed) = join(&self.scope, &self.prefix, &view.health, &view.kv);
        Listing { records, malformed, resume: view.at }
    }
}

#[async_trait]
impl ListWatch for ConsulReader {
    fn kind(&self) -> &'static str {
        KIND
    }

    type Resume = Indexes;

    async fn list(&self) -> Result<Listing<Indexes>> {
        let view = self.shared.fetch().await?;
        Ok(self.shared.listing(&view))
    }

    /// Blocking queries from `from`. The watch starts with a fresh read of
    /// both halves, answered at once when its indexes differ from `from` (or
    /// went backwards: the agent restarted with fresh state).
    async fn watch(&self, from: Indexes) -> Result<BoxStream<'static, Result<WatchUpdate<Indexes>>>> {
        let watch = Watch::new(Arc::clone(&self.shared), from);
        let stream = futures::stream::unfold(Some(watch), |state| async move {
            let mut watch = state?;
            match watch.next().await {
                Ok(listing) => Some((Ok(WatchUpdate::Replace(listing)), Some(watch))),
                // Core backs off and calls `watch` again; this stream ends.
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok(stream.boxed())
    }
}

/// Which half answered a blocking round.
enum Answer {
    Health(Vec<HealthEntry>, u64),
    Kv(Vec<KvEntry>, u64),
}

/// A blocking query in flight.
type Pending<T> = Pin<Box<dyn Future<Output = Result<(Vec<T>, u64)>> + Send>>;

/// One watch stream's state.
///
/// Both blocking queries stay in flight across rounds: when one half
/// answers, only that half is asked again, so the other's request is never
/// abandoned (an abandoned blocking query would stay parked in the agent
/// until its wait ran out, and cost a new connection).
struct Watch {
    shared: Arc<ReaderShared>,
    /// Indexes of the listing core already has, until the first read.
    known: Option<Indexes>,
    view: Option<View>,
    health: Option<Pending<HealthEntry>>,
    kv: Option<Pending<KvEntry>>,
}

impl Watch {
    fn new(shared: Arc<ReaderShared>, known: Indexes) -> Self {
        Self { shared, known: Some(known), view: None, health: None, kv: None }
    }

    fn block_health(&self, index: u64) -> Pending<HealthEntry> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let block = Block { index, wait: shared.client.config.watch_wait };
            shared.client.agent.health_passing(&shared.service, Some(block)).await
        })
    }

    fn block_kv(&self, index: u64) -> Pending<KvEntry> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let block = Block { index, wait: shared.client.config.watch_wait };
            shared.client.agent.kv_list(&shared.prefix, Some(block)).await
        })
    }

    /// The next changed listing.
    async fn next(&mut self) -> Result<Listing<Indexes>> {
        let shared = Arc::clone(&self.shared);
        loop {
            let Some(at) = self.view.as_ref().map(|v| v.at) else {
                self.health = None;
                self.kv = None;
                let view = shared.fetch().await?;
                let unchanged = self.known.take() == Some(view.at);
                let listing = (!unchanged).then(|| shared.listing(&view));
                self.view = Some(view);
                match listing {
                    Some(listing) => return Ok(listing),
                    None => continue,
                }
            };
            if self.health.is_none() {
                self.health = Some(self.block_health(at.health));
            }
            if self.kv.is_none() {
                self.kv = Some(self.block_kv(at.kv));
            }
            let started = Instant::now();
            let answer = match (self.health.as_mut(), self.kv.as_mut()) {
                (Some(health), Some(kv)) => tokio::select! {
                    answer = health => answer.map(|(entries, index)| Answer::Health(entries, index)),
                    answer = kv => answer.map(|(entries, index)| Answer::Kv(entries, index)),
                },
                // Both were set just above.
                _ => continue,
            };
            // A finished future is never polled again.
            match &answer {
                Ok(Answer::Health(..)) => self.health = None,
                Ok(Answer::Kv(..)) => self.kv = None,
                Err(_) => {}
            }
            let answer = answer?;
            let (index, previous) = match &answer {
                Answer::Health(_, index) => (*index, at.health),
                Answer::Kv(_, index) => (*index, at.kv),
            };
            if index == 0 || index < previous {
                // The index went backwards (the agent restarted with fresh
                // state) or is missing: read both halves again.
                tracing::debug!(service = %shared.service, index, previous, "Consul index reset; reading again");
                self.view = None;
                pace(started).await;
                continue;
            }
            let Some(view) = self.view.as_mut() else { continue };
            let changed = match answer {
                Answer::Health(entries, index) => {
                    let changed = entries != view.health;
                    view.at.health = index;
                    view.health = entries;
                    changed
                }
                Answer::Kv(entries, index) => {
                    let changed = entries != view.kv;
                    view.at.kv = index;
                    view.kv = entries;
                    changed
                }
            };
            if changed {
                return Ok(shared.listing(view));
            }
            // The wait ran out, or something outside our entries moved the index.
            pace(started).await;
        }
    }
}

/// Keeps blocking rounds that brought nothing at least [`IDLE_ROUND`] apart.
async fn pace(started: Instant) {
    let elapsed = started.elapsed();
    if elapsed < IDLE_ROUND {
        tokio::time::sleep(IDLE_ROUND - elapsed).await;
    }
}

// ---------------------------------------------------------------- joining

/// `<app_id>/<lease_id>` below the prefix.
fn instance_of(relative: &str) -> Option<(&str, i64)> {
    let (app_id, lease) = relative.split_once('/')?;
    if app_id.is_empty() || lease.contains('/') {
        return None;
    }
    Some((app_id, lease.parse().ok()?))
}

fn meta_of<'a>(service: &'a HealthService) -> impl Fn(&str) -> Option<&'a str> + 'a {
    move |key| service.meta.as_ref().and_then(|m| m.get(key)).map(String::as_str)
}

/// True when a service instance's meta places it in `scope` (the namespace
/// meta is absent on nodes written by the Go framework).
fn in_scope(scope: &Scope, service: &HealthService) -> bool {
    let meta = meta_of(service);
    meta("env") == Some(scope.env.as_str()) && meta("namespace").is_none_or(|ns| ns == scope.namespace)
}

/// Joins the passing service instances and the KV entries of a scope into records.
///
/// - KV entry `<app_id>/<lease_id>` held by a session, whose service
///   instance is passing → the KV value, under the service ID;
/// - passing instance of the Go framework (no `namespace` meta) whose `env`
///   meta is the reader's env → its `node` meta (a Go reader's rule);
/// - passing instance of ours whose KV entry is not written yet → nothing yet
///   (its `node` meta is the Go-shaped copy, without our fields);
/// - KV entry whose instance is not passing → nothing (it is expiring);
/// - anything else under the prefix or the service name → a [`Malformed`]
///   entry core skips and counts.
fn join(scope: &Scope, prefix: &str, health: &[HealthEntry], kv: &[KvEntry]) -> (Vec<RawRecord>, Vec<Malformed>) {
    let passing: HashMap<&str, &HealthService> = health.iter().map(|e| (e.service.id.as_str(), &e.service)).collect();
    let mut used: HashSet<&str> = HashSet::new();
    let mut records = Vec::with_capacity(health.len());
    let mut malformed = Vec::new();
    for entry in kv {
        let relative = entry.key.strip_prefix(prefix).unwrap_or(&entry.key);
        if relative.is_empty() || relative.ends_with('/') {
            // A folder entry (the UI creates them): not a record.
            continue;
        }
        let ours = instance_of(relative).filter(|_| entry.session.is_some());
        let Some((app_id, lease_id)) = ours else {
            let reason = format!("KV entry `{}` is not `<app_id>/<lease_id>` held by a registry session", entry.key);
            malformed.push(Malformed::new(format!("kv:{}", entry.key), reason));
            continue;
        };
        let service_id = ConsulStore::service_id(scope, app_id, lease_id);
        let Some((id, service)) = passing.get_key_value(service_id.as_str()) else { continue };
        if !in_scope(scope, service) {
            continue;
        }
        used.insert(id);
        let value = match entry.value.as_deref().map(|v| base64::engine::general_purpose::STANDARD.decode(v)) {
            None => String::new(),
            Some(Ok(bytes)) => match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(_) => {
                    malformed.push(Malformed::new(service_id, format!("KV entry `{}` is not UTF-8", entry.key)));
                    continue;
                }
            },
            Some(Err(e)) => {
                malformed.push(Malformed::new(service_id, format!("KV entry `{}` is not base64: {e}", entry.key)));
                continue;
            }
        };
        records.push(RawRecord::new(service_id, value));
    }
    for entry in health {
        let service = &entry.service;
        if used.contains(service.id.as_str()) {
            continue;
        }
        let meta = meta_of(service);
        let ours = meta("namespace").is_some();
        let go_node = meta("node").filter(|n| !n.is_empty() && !ours);
        if let Some(node) = go_node {
            if meta("env") == Some(scope.env.as_str()) {
                records.push(RawRecord::new(service.id.clone(), node));
            }
            // Another env under the same service name: not this reader's.
        } else if in_scope(scope, service) && meta("app_id").is_some_and(|a| !a.is_empty()) {
            // Registered, KV record not written yet (or being rewritten by `renew`).
        } else {
            let reason = format!(
                "service instance `{}` of `{}` on node `{}` has no registry meta and no KV record",
                service.id, service.service, entry.node.node
            );
            malformed.push(Malformed::new(service.id.clone(), reason));
        }
    }
    (records, malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::HealthNode;

    fn scope() -> Scope {
        Scope::new("ns", "dev")
    }

    fn service(id: &str, meta: &[(&str, &str)]) -> HealthEntry {
        HealthEntry {
            node: HealthNode { node: "n1".into() },
            service: HealthService {
                id: id.into(),
                service: "ns-dev".into(),
                meta: Some(meta.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            },
        }
    }

    fn kv(key: &str, value: &str, session: Option<&str>) -> KvEntry {
        KvEntry {
            key: key.into(),
            value: Some(base64::engine::general_purpose::STANDARD.encode(value)),
            session: session.map(str::to_owned),
            modify_index: 7,
        }
    }

    fn records(health: &[HealthEntry], kv: &[KvEntry]) -> Vec<(String, String)> {
        let mut out: Vec<_> = join(&scope(), "ns/dev/", health, kv).0.into_iter().map(|r| (r.key, r.value)).collect();
        out.sort();
        out
    }

    fn malformed(health: &[HealthEntry], kv: &[KvEntry]) -> Vec<Malformed> {
        join(&scope(), "ns/dev/", health, kv).1
    }

    const OURS: &[(&str, &str)] = &[("app_id", "app"), ("env", "dev"), ("namespace", "ns")];

    #[test]
    fn passing_instance_with_kv_record_is_listed_from_kv() {
        let got = records(&[service("ns-dev-app-1", OURS)], &[kv("ns/dev/app/1", "{\"a\":1}", Some("s"))]);
        assert_eq!(got, [("ns-dev-app-1".to_owned(), "{\"a\":1}".to_owned())]);
    }

    #[test]
    fn kv_record_without_passing_instance_is_hidden() {
        assert!(records(&[], &[kv("ns/dev/app/1", "{}", Some("s"))]).is_empty());
    }

    #[test]
    fn go_instance_uses_node_meta_and_ours_waits_for_kv() {
        let go = [("app_id", "app"), ("env", "dev"), ("node", "{\"n\":1}")];
        let mut ours_with_node = OURS.to_vec();
        ours_with_node.push(("node", "{\"go\":1}"));
        let got = records(
            &[
                service("ns-dev-app-1-8fa20388-6adf-4c21-8087-4f0e63c59c6e", &go),
                service("ns-dev-app-2", OURS),
                service("ns-dev-app-3", &ours_with_node),
            ],
            &[],
        );
        assert_eq!(got, [("ns-dev-app-1-8fa20388-6adf-4c21-8087-4f0e63c59c6e".to_owned(), "{\"n\":1}".to_owned())]);
    }

    #[test]
    fn go_instance_of_another_env_is_not_listed() {
        let go = [("app_id", "app"), ("env", "staging"), ("node", "{\"n\":1}")];
        assert!(records(&[service("ns-dev-app-1-x", &go)], &[]).is_empty());
    }

    #[test]
    fn foreign_entries_are_reported_malformed_not_records() {
        let health = [service("web-1", &[("owner", "someone")])];
        let kv = [kv("ns/dev/garbage", "{not json", None), kv("ns/dev/app/1", "{}", None), kv("ns/dev/", "", None)];
        assert!(records(&health, &kv).is_empty());
        let got = malformed(&health, &kv);
        let mut keys: Vec<&str> = got.iter().map(|m| m.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["kv:ns/dev/app/1", "kv:ns/dev/garbage", "web-1"], "{got:?}");
        assert!(got.iter().all(|m| !m.reason.is_empty()));
    }

    #[test]
    fn instances_of_another_namespace_with_the_same_service_name_are_not_joined() {
        let other = [("app_id", "app"), ("env", "dev"), ("namespace", "ns2")];
        let (health, kv) = ([service("ns-dev-app-1", &other)], [kv("ns/dev/app/1", "{}", Some("s"))]);
        assert!(records(&health, &kv).is_empty());
        assert_eq!(malformed(&health, &kv).len(), 1);
    }

    #[test]
    fn address_and_port_are_split() {
        assert_eq!(address_and_port("10.0.0.1:9000"), (Some("10.0.0.1".into()), Some(9000)));
        assert_eq!(address_and_port("[::1]:9000"), (Some("::1".into()), Some(9000)));
        assert_eq!(address_and_port(":9000"), (None, Some(9000)));
        assert_eq!(address_and_port("nonsense"), (None, None));
    }
}
