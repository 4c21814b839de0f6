//! The adapter contract: what a backend implements.
//!
//! A backend is a [`Store`] that hands out a [`StoreWriter`] (this
//! instance's record: grant, put, renew, remove) and a [`StoreReader`] (a
//! stream of [`StoreEvent`]s for one namespace and env). Everything else —
//! validation, heartbeat cadence, retries and hooks, parsing, skipping bad
//! records, the index, expiry, event fan-out — is core's
//! ([`crate::Registrar`], [`crate::Discoverer`]).
//!
//! Most backends implement [`ListWatch`] (list with a resume point, stream
//! changes from it) and get their [`StoreReader`] from
//! [`crate::list_watch::ListWatchReader`], core's list/watch state machine
//! (resume after a broken stream, relist when the resume point is gone,
//! capped backoff while the backend is down). A backend whose client already
//! has that machinery (kube-runtime's `watcher`) maps its events to
//! [`StoreEvent`]s directly.
//!
//! A store that keeps dead heartbeat records (Kubernetes ConfigMap entries
//! and Leases) can also hand out a [`Reap`] capability
//! ([`StoreReader::reaper`]): core decides *when* a record is long dead, on
//! its own expiry clock, and the adapter deletes it with the store's
//! precondition so that a live record is never deleted.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::{Result, ServiceNode};

/// Which namespace and env a reader or writer works in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    /// Namespace (validated by [`Store::validate`]).
    pub namespace: String,
    /// Environment (validated by [`Store::validate`]).
    pub env: String,
}

impl Scope {
    /// A scope.
    pub fn new(namespace: impl Into<String>, env: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), env: env.into() }
    }

    /// The Go framework's key prefix of the scope's records, `<namespace>/<env>/`.
    ///
    /// The trailing slash matters: the Go reader lists `<namespace>/<env>`
    /// and so also sees env `production` when it asks for `prod`; we do not.
    pub fn key_prefix(&self) -> String {
        format!("{}/{}/", self.namespace, self.env)
    }

    /// The Go framework's key of an instance, `<namespace>/<env>/<app_id>/<lease_id>`
    /// (etcd keys, Consul KV keys, the embedded store's keys).
    pub fn record_key(&self, app_id: &str, lease_id: i64) -> String {
        format!("{}/{}/{app_id}/{lease_id}", self.namespace, self.env)
    }
}

/// A process-unique instance id, for stores without server-granted leases:
/// nanoseconds since the Unix epoch at first use, then counting up, like the
/// Go framework's ids — unique across restarts in practice, and increasing.
pub fn next_instance_id() -> i64 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicI64, Ordering};
    static NEXT: OnceLock<AtomicI64> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX / 2))
            .unwrap_or(1);
        AtomicI64::new(nanos.max(1))
    });
    next.fetch_add(1, Ordering::Relaxed)
}

/// How the facade, `registryctl` and the conformance runner know a backend:
/// its name, the URL schemes it answers to, and how to connect from a URL.
/// Every backend crate exports one as `BACKEND`; adding a backend to the
/// facade is one line in its list.
#[derive(Clone, Copy)]
pub struct BackendSpec {
    /// Short name (`etcd`), also the cargo feature of the `registry` crate.
    pub name: &'static str,
    /// URL schemes (`etcd`, `etcds`), lowercase.
    pub schemes: &'static [&'static str],
    /// Connects from a full URL of one of `schemes`.
    pub connect: ConnectFn,
}

/// Connects a [`BackendSpec`]'s store from a URL.
pub type ConnectFn = fn(String) -> futures::future::BoxFuture<'static, Result<Arc<dyn Store>>>;

impl std::fmt::Debug for BackendSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendSpec").field("name", &self.name).field("schemes", &self.schemes).finish()
    }
}

/// A backend: hands out writers and readers scoped to a namespace and env.
pub trait Store: Send + Sync + 'static {
    /// Short backend name for errors and logs (`etcd`, `consul`, `kubernetes`, `memory`).
    fn kind(&self) -> &'static str;

    /// Checks the names a registrar (`app_id` given) or discoverer of `scope`
    /// would use, naming the first invalid field (`conf.namespace`,
    /// `meta.env`, `meta.app_id`). The default accepts every name the Go
    /// framework accepts ([`crate::conf::validate_names`]); a store whose
    /// server is stricter (Kubernetes) enforces its own rules.
    fn validate(&self, scope: &Scope, app_id: Option<&str>) -> Result<()> {
        crate::conf::validate_names(&scope.namespace, &scope.env, app_id)
    }

    /// The writer for one registering instance in `scope`.
    fn writer(&self, scope: &Scope) -> Result<Arc<dyn StoreWriter>>;

    /// The change source for a discoverer of `scope`.
    fn reader(&self, scope: &Scope) -> Result<Arc<dyn StoreReader>>;

    /// Operator actions on the records of `scope` (`registryctl drain`; see
    /// [`crate::operator`]). The default: not supported, an error naming
    /// the backend.
    fn operator(&self, scope: &Scope) -> Result<Arc<dyn crate::operator::Operator>> {
        let _ = scope;
        Err(crate::Error::backend(self.kind(), "this backend offers no operator actions (drain, undrain)"))
    }
}

/// Writes one instance's record. Called only by [`crate::Registrar`], which
/// serialises calls (never two at once for one writer).
#[async_trait]
pub trait StoreWriter: Send + Sync + 'static {
    /// Backend name for errors and logs.
    fn kind(&self) -> &'static str;

    /// Allocates the instance's lease id (etcd: grants a server lease of
    /// `ttl`; elsewhere a process-unique id such as a nanosecond timestamp).
    /// Called before the first [`put`](Self::put) and again after
    /// [`Error::LeaseExpired`](crate::Error::LeaseExpired).
    async fn grant(&self, ttl: Duration) -> Result<i64>;

    /// Creates or replaces the record of `node` (its `lease_id` is the granted id).
    async fn put(&self, node: &ServiceNode, ttl: Duration) -> Result<()>;

    /// Heartbeat: keeps the record alive. `node` carries a fresh `run_date`
    /// and `renewed_at_ms`; heartbeat-based stores rewrite the record with it,
    /// lease-based stores may ignore it. Returns
    /// [`Error::LeaseExpired`](crate::Error::LeaseExpired) when the record or
    /// lease is gone, and core re-grants and re-puts.
    async fn renew(&self, node: &ServiceNode, ttl: Duration) -> Result<()>;

    /// Removes the record. Removing a record that is already gone succeeds.
    async fn remove(&self, node: &ServiceNode) -> Result<()>;

    /// Whether the record needs [`renew`](Self::renew) calls to stay alive.
    /// A store whose liveness is the platform's (Kubernetes EndpointSlices,
    /// where the kubelet's readiness decides) returns `false`, and the
    /// registrar's `sustain_lease` then only waits for the uninstall.
    /// Default `true`.
    fn needs_heartbeats(&self) -> bool {
        true
    }
}

/// How a record's liveness is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// The store removes dead records itself (etcd lease, Consul TTL check,
    /// Pod phase, in-memory lease): a record is live while it is listed.
    StoreManaged,
    /// The store keeps dead records (Kubernetes ConfigMap / Lease): the record
    /// is live while its [`RawRecord::stamp`] keeps changing. Core hides it
    /// when no new stamp was observed for `window` (default: the node's `ttl`
    /// field, else the discoverer's TTL), measured on the discoverer's own
    /// monotonic clock — never by comparing the writer's timestamps with the
    /// reader's clock. When the reader reports progress
    /// ([`StoreReader::max_silence`]), the record is hidden only once the
    /// source confirmed the view after the window ran out: a silent stream
    /// may be a dead connection, not a dead instance.
    Heartbeat {
        /// Explicit window, e.g. a Lease's `leaseDurationSeconds`.
        window: Option<Duration>,
    },
}

/// One record as the store holds it, not yet parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// Unique key of the record within its scope (the store's own key).
    pub key: String,
    /// The node JSON.
    pub value: String,
    /// Changes on every write of the record (etcd `mod_revision`, Kubernetes
    /// `renewTime`, …); `None` means "compare `value`".
    pub stamp: Option<String>,
    /// The store's version of the object holding the record (a Kubernetes
    /// `resourceVersion`), for a [`Reap`] precondition. Not a sign of life:
    /// a new version with the same stamp does not renew the record.
    pub version: Option<String>,
    /// How liveness is judged.
    pub liveness: Liveness,
    /// An operator marked the record drained, in a place the store keeps
    /// beside the record rather than in `value` (see [`crate::operator`]);
    /// discovery then reports the node draining and `drained_by_operator`.
    /// Not a sign of life: a change of the mark alone renews nothing.
    pub drained_by_operator: bool,
}

impl RawRecord {
    /// A 64-bit digest of what makes this write distinct: the stamp when the
    /// store has one, else the value. Heartbeat liveness compares digests,
    /// never writers' clocks.
    pub fn stamp_digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        match &self.stamp {
            Some(stamp) => stamp.hash(&mut hasher),
            None => self.value.hash(&mut hasher),
        }
        hasher.finish()
    }

    /// A store-managed record whose stamp is its value.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            stamp: None,
            version: None,
            liveness: Liveness::StoreManaged,
            drained_by_operator: false,
        }
    }

    /// Sets the operator's mark kept beside the record (see
    /// [`RawRecord::drained_by_operator`]).
    pub fn with_drained_by_operator(mut self, drained: bool) -> Self {
        self.drained_by_operator = drained;
        self
    }

    /// Sets the stamp.
    pub fn with_stamp(mut self, stamp: impl Into<String>) -> Self {
        self.stamp = Some(stamp.into());
        self
    }

    /// Sets the store's version (see [`RawRecord::version`]).
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Sets the liveness rule.
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = liveness;
        self
    }
}

/// What a [`StoreReader`] reports.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreEvent {
    /// A full listing begins: the records up to [`StoreEvent::Synced`] replace
    /// the whole view, swapped in at once (the last view keeps serving until then).
    Reset,
    /// A record was created or changed.
    Upsert(RawRecord),
    /// A record is gone.
    Delete {
        /// Its key.
        key: String,
    },
    /// An entry under the prefix that the adapter cannot even turn into a
    /// record (e.g. an undecodable ConfigMap key): skipped and counted.
    Malformed {
        /// The store's key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A listing is complete (after [`StoreEvent::Reset`]); the first one
    /// makes discovery ready.
    Synced,
    /// The stream hit an error and is retrying; discovery keeps its last view.
    Error(crate::Error),
    /// The change stream is alive and the view is current as of now, with
    /// nothing new: an etcd progress report, a Consul blocking query that
    /// answered unchanged or a liveness probe the agent answered. Discovery
    /// counts it as a confirmation ([`crate::SourceHealth::since_confirmed`])
    /// and as the end of a break in the stream.
    Progress,
}

/// The change source of a discoverer.
pub trait StoreReader: Send + Sync + 'static {
    /// A stream that never ends on its own: it lists, streams changes, and
    /// recovers from errors itself (reporting them as [`StoreEvent::Error`]).
    /// Dropping it stops all work.
    fn events(&self) -> BoxStream<'static, StoreEvent>;

    /// Optional capability of stores that keep dead heartbeat records: deletes
    /// records core has judged long dead (see [`Reap`]). Default: none —
    /// dead records are only hidden.
    fn reaper(&self) -> Option<Arc<dyn Reap>> {
        None
    }

    /// The longest this reader's stream stays silent while it is healthy:
    /// it reports [`StoreEvent::Progress`] (or a change) at least this
    /// often. Discovery reports the source stale when nothing came for
    /// longer. `None` (the default): the reader never reports progress, so
    /// silence is not a sign of staleness.
    ///
    /// A reader that states a bound also changes how heartbeat records
    /// ([`Liveness::Heartbeat`]) expire: only after the source confirmed the
    /// view past their window, and an outage counts from the last
    /// confirmation (the silence before a break is reported was unobserved).
    fn max_silence(&self) -> Option<Duration> {
        None
    }

    /// The health of the sources behind this reader, for readers that merge
    /// other discoveries ([`crate::merged_discovery`]); `None` (the default)
    /// for a reader of one store, whose health the discoverer tracks itself.
    fn sources_health(&self) -> Option<Vec<crate::SourceHealth>> {
        None
    }
}

/// How many heartbeat windows without a new stamp make a record long dead
/// (see [`Reap::reap_after`]).
pub const DEFAULT_REAP_AFTER: u32 = 3;

/// Deletes heartbeat records that core has judged long dead.
///
/// The [`crate::Discoverer`] decides, on the same monotonic clock that hides
/// expired records: a [`Liveness::Heartbeat`] record whose window the record
/// states itself (the Liveness window, or the node's `ttl`; never the
/// discoverer's default, which may be shorter than a foreign writer's
/// heartbeat) and that showed no new stamp for
/// [`reap_after`](Self::reap_after) windows is handed to
/// [`reap`](Self::reap) — never while the change stream is broken or a
/// relisting is in progress (the outage does not count against the record),
/// and at most once per observed stamp. Outcomes are counted in
/// [`crate::telemetry::REAPS`].
#[async_trait]
pub trait Reap: Send + Sync + 'static {
    /// How many heartbeat windows without a new stamp make a record long dead
    /// (default [`DEFAULT_REAP_AFTER`]; 0 counts as 1).
    fn reap_after(&self) -> u32 {
        DEFAULT_REAP_AFTER
    }

    /// Deletes exactly the version of `record` core last observed (as the
    /// reader reported it: its value, stamp and [`RawRecord::version`]),
    /// with the store's precondition, so that a record renewed in the
    /// meantime is never deleted.
    ///
    /// Returns `Ok` when the record is gone (deleted now, or already gone),
    /// [`Error::Conflict`](crate::Error::Conflict) when the precondition
    /// failed (the record changed: harmless, its new write restarts its
    /// clock), any other error when the delete failed.
    async fn reap(&self, record: &RawRecord) -> Result<()>;
}

/// An entry under the scope's prefix that the adapter cannot even turn into
/// a record (a foreign key, an undecodable value): core skips and counts it,
/// and it never hides the other records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// The store's key of the entry.
    pub key: String,
    /// Why it is not a record.
    pub reason: String,
}

impl Malformed {
    /// A malformed entry.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { key: key.into(), reason: reason.into() }
    }
}

/// A full listing and the point to resume watching from.
#[derive(Clone, Debug)]
pub struct Listing<R> {
    /// Every record in scope.
    pub records: Vec<RawRecord>,
    /// Entries in scope that are not records.
    pub malformed: Vec<Malformed>,
    /// Resume point: changes after it are streamed by [`ListWatch::watch`].
    pub resume: R,
}

impl<R> Listing<R> {
    /// A listing of `records` (and no malformed entries) taken at `resume`.
    pub fn new(records: Vec<RawRecord>, resume: R) -> Self {
        Self { records, malformed: Vec::new(), resume }
    }
}

/// A batch of changes from [`ListWatch::watch`].
#[derive(Clone, Debug)]
pub enum WatchUpdate<R> {
    /// Incremental changes, and the resume point they bring the view to.
    Changes {
        /// Upserts, deletes and malformed entries, in order.
        changes: Vec<Change>,
        /// New resume point.
        resume: R,
    },
    /// A complete new listing (stores whose change stream answers with full
    /// sets, like Consul's blocking queries).
    Replace(Listing<R>),
    /// Nothing changed, and the store confirmed that the stream is alive and
    /// current (see [`StoreEvent::Progress`]); the resume point stays.
    Progress,
}

/// One incremental change.
#[derive(Clone, Debug)]
pub enum Change {
    /// Created or changed.
    Upsert(RawRecord),
    /// Removed.
    Delete {
        /// Its key.
        key: String,
    },
    /// Written, but not a record: skipped and counted (and whatever record
    /// the key held before is gone).
    Malformed(Malformed),
}

/// A store with list and watch, driven by core's state machine
/// ([`crate::list_watch::ListWatchReader`]).
#[async_trait]
pub trait ListWatch: Send + Sync + 'static {
    /// The store's own resume point, opaque to core: etcd a revision, Consul
    /// the pair of blocking-query indexes, Kubernetes a resourceVersion.
    type Resume: Clone + std::fmt::Debug + Send + Sync + 'static;

    /// Backend name for errors.
    fn kind(&self) -> &'static str;

    /// Lists every record in scope. Core bounds the call with its list
    /// deadline ([`crate::list_watch::DEFAULT_LIST_TIMEOUT`]).
    async fn list(&self) -> Result<Listing<Self::Resume>>;

    /// Streams changes strictly after `from`. Returns (or yields)
    /// [`Error::ResumeLost`](crate::Error::ResumeLost) when that point is no
    /// longer available; any other error makes core back off and resume
    /// from the last point it saw.
    async fn watch(&self, from: Self::Resume) -> Result<BoxStream<'static, Result<WatchUpdate<Self::Resume>>>>;

    /// The longest an open watch stays silent while it is healthy (see
    /// [`StoreReader::max_silence`]); `None` by default.
    fn max_silence(&self) -> Option<Duration> {
        None
    }
}
