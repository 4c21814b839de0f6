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
    /// reader's clock.
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
    /// How liveness is judged.
    pub liveness: Liveness,
}

impl RawRecord {
    /// A store-managed record whose stamp is its value.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self { key: key.into(), value: value.into(), stamp: None, liveness: Liveness::StoreManaged }
    }

    /// Sets the stamp.
    pub fn with_stamp(mut self, stamp: impl Into<String>) -> Self {
        self.stamp = Some(stamp.into());
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
}

/// The change source of a discoverer.
pub trait StoreReader: Send + Sync + 'static {
    /// A stream that never ends on its own: it lists, streams changes, and
    /// recovers from errors itself (reporting them as [`StoreEvent::Error`]).
    /// Dropping it stops all work.
    fn events(&self) -> BoxStream<'static, StoreEvent>;
}

/// A full listing and the revision it was taken at.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// Every record in scope.
    pub records: Vec<RawRecord>,
    /// Resume point: changes after it are streamed by [`ListWatch::watch`].
    pub revision: u64,
}

/// A batch of changes from [`ListWatch::watch`].
#[derive(Clone, Debug)]
pub enum WatchUpdate {
    /// Incremental changes, and the revision they bring the view to.
    Changes {
        /// Upserts and deletes, in order.
        changes: Vec<Change>,
        /// New resume point.
        revision: u64,
    },
    /// A complete new listing (stores whose change stream answers with full
    /// sets, like Consul's blocking queries).
    Replace(Listing),
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
}

/// A store with list and watch, driven by core's state machine
/// ([`crate::list_watch::ListWatchReader`]).
#[async_trait]
pub trait ListWatch: Send + Sync + 'static {
    /// Backend name for errors.
    fn kind(&self) -> &'static str;

    /// Lists every record in scope.
    async fn list(&self) -> Result<Listing>;

    /// Streams changes strictly after `revision`. Returns (or yields)
    /// [`Error::ResumeLost`](crate::Error::ResumeLost) when that revision is
    /// no longer available; any other error makes core back off and resume
    /// from the last revision it saw.
    async fn watch(&self, revision: u64) -> Result<BoxStream<'static, Result<WatchUpdate>>>;
}
