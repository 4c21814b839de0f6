//! The one error type of the library.
//!
//! Adapters map their client's errors into these variants at the edge
//! (`error.rs` in each backend crate); only core decides what is retried
//! ([`Error::is_transient`], [`Error::needs_relist`]).

use std::time::Duration;

/// Boxed source error from a backend client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in registration and discovery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No live node serves this gRPC method (in this namespace and env).
    #[error("no node serves method `{method}`")]
    MethodNotFound {
        /// The method asked for.
        method: String,
    },
    /// No live node of this app exists.
    #[error("no node of app `{app_id}`")]
    NodeNotFound {
        /// The app asked for.
        app_id: String,
    },
    /// Every node serving this method is draining, and the discoverer
    /// excludes draining nodes ([`crate::DrainingNodes::Exclude`]).
    #[error("every node serving method `{method}` is draining ({draining} draining)")]
    AllDraining {
        /// The method asked for.
        method: String,
        /// How many draining nodes serve it.
        draining: usize,
    },
    /// No record of this instance (app id and lease id) is in the store.
    #[error("no record of instance `{app_id}/{lease_id}`")]
    InstanceNotFound {
        /// The instance's app.
        app_id: String,
        /// The instance's lease id.
        lease_id: i64,
    },
    /// A configuration value or name is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The field, e.g. `meta.app_id`, `conf.ttl`, `url`.
        field: &'static str,
        /// Why, naming the value where it helps.
        reason: String,
    },
    /// A record is larger than the backend can store.
    #[error("{what} is too large: {size} bytes, limit {limit} bytes")]
    TooLarge {
        /// What was too large (e.g. `node JSON`, `ConfigMap ff-registry-prod`).
        what: String,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The backend could not be reached or did not answer in time.
    #[error("{backend} is unavailable: {source}")]
    BackendUnavailable {
        /// Backend name (`etcd`, `consul`, `kubernetes`, `memory`).
        backend: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The backend refused the credentials or the action.
    #[error("{backend} denied permission: {message}")]
    PermissionDenied {
        /// Backend name.
        backend: &'static str,
        /// The backend's own message (never contains secrets).
        message: String,
    },
    /// The instance's lease or record is gone from the store (expired during an
    /// outage, revoked, deleted by someone else). The registrar re-creates it.
    #[error("{backend}: lease of this instance is gone")]
    LeaseExpired {
        /// Backend name.
        backend: &'static str,
    },
    /// A change stream's resume point is no longer available (etcd compaction,
    /// Kubernetes 410 Gone, a lagging in-memory subscriber): relist.
    #[error("{backend}: change stream resume point {revision} is gone; relisting")]
    ResumeLost {
        /// Backend name.
        backend: &'static str,
        /// The revision that could not be resumed from.
        revision: u64,
    },
    /// A write lost an optimistic-concurrency race more times than allowed.
    #[error("{backend}: write conflict on {what} after {attempts} attempts")]
    Conflict {
        /// Backend name.
        backend: &'static str,
        /// The contended object.
        what: String,
        /// Attempts made.
        attempts: u32,
    },
    /// Discovery has not finished its first full listing yet.
    #[error("discovery is not ready yet (first listing not complete)")]
    NotReady,
    /// The keepalive gave up after `attempts` consecutive failures (`max_retry`).
    #[error("keepalive gave up after {attempts} consecutive failures: {last}")]
    GaveUp {
        /// Consecutive failures.
        attempts: u32,
        /// The last failure.
        #[source]
        last: Box<Error>,
    },
    /// A node could not be encoded.
    #[error("cannot encode node: {reason}")]
    Encode {
        /// The encoder's message.
        reason: String,
    },
    /// An operation did not finish in time.
    #[error("{backend}: {operation} timed out after {after:?}")]
    Timeout {
        /// Backend name.
        backend: &'static str,
        /// What timed out.
        operation: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// Any other backend error, with the client's error as source.
    #[error("{backend}: {message}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// What failed.
        message: String,
        /// The client's error, if any.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// Shorthand for [`Error::InvalidConfig`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidConfig { field, reason: reason.into() }
    }

    /// Shorthand for [`Error::BackendUnavailable`].
    pub fn unavailable(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::BackendUnavailable { backend, source: source.into() }
    }

    /// Shorthand for [`Error::Backend`] without a source.
    pub fn backend(backend: &'static str, message: impl Into<String>) -> Self {
        Error::Backend { backend, message: message.into(), source: None }
    }

    /// True when retrying the same call later may succeed (the backend is
    /// down, slow, or a write raced). Permission, configuration and size errors
    /// are not transient: retrying them only hides the problem.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::BackendUnavailable { .. }
                | Error::Timeout { .. }
                | Error::Conflict { .. }
                | Error::LeaseExpired { .. }
                | Error::ResumeLost { .. }
                | Error::Backend { .. }
        )
    }

    /// A copy of this error for a second caller: the same variant and
    /// message, with the source (which cannot be cloned) turned into text.
    pub fn duplicate(&self) -> Error {
        match self {
            Error::MethodNotFound { method } => Error::MethodNotFound { method: method.clone() },
            Error::NodeNotFound { app_id } => Error::NodeNotFound { app_id: app_id.clone() },
            Error::AllDraining { method, draining } => {
                Error::AllDraining { method: method.clone(), draining: *draining }
            }
            Error::InstanceNotFound { app_id, lease_id } => {
                Error::InstanceNotFound { app_id: app_id.clone(), lease_id: *lease_id }
            }
            Error::InvalidConfig { field, reason } => Error::InvalidConfig { field, reason: reason.clone() },
            Error::TooLarge { what, size, limit } => Error::TooLarge { what: what.clone(), size: *size, limit: *limit },
            Error::BackendUnavailable { backend, source } => {
                Error::BackendUnavailable { backend, source: source.to_string().into() }
            }
            Error::PermissionDenied { backend, message } => {
                Error::PermissionDenied { backend, message: message.clone() }
            }
            Error::LeaseExpired { backend } => Error::LeaseExpired { backend },
            Error::ResumeLost { backend, revision } => Error::ResumeLost { backend, revision: *revision },
            Error::Conflict { backend, what, attempts } => {
                Error::Conflict { backend, what: what.clone(), attempts: *attempts }
            }
            Error::NotReady => Error::NotReady,
            Error::GaveUp { attempts, last } => Error::GaveUp { attempts: *attempts, last: Box::new(last.duplicate()) },
            Error::Encode { reason } => Error::Encode { reason: reason.clone() },
            Error::Timeout { backend, operation, after } => Error::Timeout { backend, operation, after: *after },
            Error::Backend { backend, message, source } => Error::Backend {
                backend,
                message: message.clone(),
                source: source.as_ref().map(|s| s.to_string().into()),
            },
        }
    }

    /// True when a change stream cannot resume and must list from scratch.
    pub fn needs_relist(&self) -> bool {
        matches!(self, Error::ResumeLost { .. })
    }
}
