//! Maps `etcd-client` errors to [`registry_core::Error`], precisely: core
//! alone decides what is retried, so an auth failure must not look like an
//! outage, and a lost lease must not look like a generic failure.
//!
//! | etcd / transport                                              | ours |
//! |---------------------------------------------------------------|------|
//! | connection refused, reset, closed stream, `Unavailable`, `no leader` | [`Error::BackendUnavailable`] |
//! | our deadline, tonic's request timeout, `DeadlineExceeded` (`etcdserver: request timed out`) | [`Error::Timeout`] |
//! | `authentication failed, invalid user ID or password`, `permission denied`, `invalid auth token` | [`Error::PermissionDenied`] with etcd's message |
//! | `requested lease not found`, keepalive answered with TTL 0     | [`Error::LeaseExpired`] |
//! | `mvcc: required revision has been compacted`, watch `compact_revision` / canceled | [`Error::ResumeLost`] |
//! | `request is too large`, `ResourceExhausted`                    | [`Error::TooLarge`] |
//! | bad endpoint URI or arguments                                  | [`Error::InvalidConfig`] |
//! | anything else                                                  | [`Error::Backend`] with the client's error as source |

use std::future::Future;
use std::time::Duration;

use registry_core::Error;

/// Backend name in errors and logs.
pub(crate) const KIND: &str = "etcd";

/// etcd's default `--max-request-bytes` (1.5 MiB): the limit named in
/// [`Error::TooLarge`] when the server refuses a request as too large.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// One call to etcd: what it is (for messages) and how long it may take.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call {
    pub(crate) operation: &'static str,
    pub(crate) limit: Duration,
}

impl Call {
    pub(crate) const fn new(operation: &'static str, limit: Duration) -> Self {
        Self { operation, limit }
    }

    /// Runs `fut` within the call's deadline and maps its error.
    pub(crate) async fn run<T>(
        self,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> registry_core::Result<T> {
        match tokio::time::timeout(self.limit, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.map(e)),
            Err(_) => Err(self.timed_out()),
        }
    }

    /// The error for a call that did not finish within its deadline.
    pub(crate) fn timed_out(self) -> Error {
        Error::Timeout { backend: KIND, operation: self.operation, after: self.limit }
    }

    /// Maps a client error raised by this call.
    pub(crate) fn map(self, e: etcd_client::Error) -> Error {
        use etcd_client::Error as E;
        match e {
            E::GRpcStatus(status) => self.map_status(status),
            E::TransportError(_) | E::IoError(_) => Error::unavailable(KIND, e),
            E::LeaseKeepAliveError(ref message) if is_lease_not_found(message) => Error::LeaseExpired { backend: KIND },
            E::LeaseKeepAliveError(_) | E::WatchError(_) => Error::unavailable(KIND, e),
            E::InvalidArgs(_) | E::InvalidUri(_) | E::EndpointError(_) | E::InvalidMetadataValue(_) => {
                Error::invalid("etcd endpoints", e.to_string())
            }
            other => self.generic(other.to_string(), Box::new(other)),
        }
    }

    fn map_status(self, status: tonic::Status) -> Error {
        use tonic::Code;
        let message = status.message().to_owned();
        if let Some(error) = classify_message(&message) {
            return error;
        }
        match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => Error::PermissionDenied { backend: KIND, message },
            Code::DeadlineExceeded => self.timed_out(),
            // tonic's own per-request timeout (`ConnectOptions::with_timeout`).
            Code::Cancelled if message == "Timeout expired" => self.timed_out(),
            Code::ResourceExhausted => too_large(),
            Code::OutOfRange if message.contains("compacted") => Error::ResumeLost { backend: KIND, revision: 0 },
            // `Cancelled` and `Unknown` are what a connection that breaks
            // mid-call turns into (h2 reset, broken pipe).
            Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Aborted => {
                Error::unavailable(KIND, etcd_client::Error::GRpcStatus(status))
            }
            _ => self.generic(message, Box::new(etcd_client::Error::GRpcStatus(status))),
        }
    }

    fn generic(self, message: String, source: registry_core::BoxError) -> Error {
        Error::Backend { backend: KIND, message: format!("{} failed: {message}", self.operation), source: Some(source) }
    }
}

/// Errors recognised by etcd's message, whatever gRPC code carries them
/// (etcd sends auth failures as `InvalidArgument`, for one).
fn classify_message(message: &str) -> Option<Error> {
    let denied = [
        "authentication failed",
        "invalid user ID or password",
        "permission denied",
        "invalid auth token",
        "user name is empty",
        "user name not found",
    ];
    if denied.iter().any(|d| message.contains(d)) {
        return Some(Error::PermissionDenied { backend: KIND, message: message.to_owned() });
    }
    if is_lease_not_found(message) {
        return Some(Error::LeaseExpired { backend: KIND });
    }
    if message.contains("required revision has been compacted") {
        return Some(Error::ResumeLost { backend: KIND, revision: 0 });
    }
    if message.contains("request is too large") || message.contains("message larger than max") {
        return Some(too_large());
    }
    None
}

/// Names, in a [`Error::PermissionDenied`], the permission the call needed
/// (etcd says only "permission denied"): `permission` is, e.g., "read
/// permission on the key prefix `shop/prod/`". Other errors pass unchanged.
pub(crate) fn needing(error: Error, permission: impl FnOnce() -> String) -> Error {
    match error {
        Error::PermissionDenied { backend, message } if message.contains("permission denied") => {
            Error::PermissionDenied { backend, message: format!("{message}: needs {}", permission()) }
        }
        other => other,
    }
}

fn is_lease_not_found(message: &str) -> bool {
    message.contains("lease not found")
}

fn too_large() -> Error {
    // The size is filled in by the caller that knows the record (`put`).
    Error::TooLarge { what: "etcd request".into(), size: 0, limit: DEFAULT_MAX_REQUEST_BYTES }
}

/// The error a canceled watch reports: compaction (or any cancel, which
/// leaves the resume point unknown) means relist; refused credentials are
/// [`Error::PermissionDenied`].
pub(crate) fn watch_canceled(reason: &str, compact_revision: i64, from: u64) -> Error {
    if compact_revision > 0 {
        return Error::ResumeLost { backend: KIND, revision: from };
    }
    match classify_message(reason) {
        Some(Error::ResumeLost { .. }) | None => Error::ResumeLost { backend: KIND, revision: from },
        Some(other) => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Call {
        Call::new("put", Duration::from_secs(1))
    }

    fn status(code: tonic::Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
    }

    #[test]
    fn wrong_password_is_permission_denied_with_etcds_message() {
        let message = "etcdserver: authentication failed, invalid user ID or password";
        let e = call().map(status(tonic::Code::InvalidArgument, message));
        assert!(matches!(&e, Error::PermissionDenied { message: m, .. } if m == message), "{e:?}");
        assert!(!e.is_transient());
    }

    #[test]
    fn missing_lease_is_lease_expired() {
        let e = call().map(status(tonic::Code::NotFound, "etcdserver: requested lease not found"));
        assert!(matches!(e, Error::LeaseExpired { .. }), "{e:?}");
        let e = call().map(etcd_client::Error::LeaseKeepAliveError("lease not found".into()));
        assert!(matches!(e, Error::LeaseExpired { .. }), "{e:?}");
    }

    #[test]
    fn compaction_is_resume_lost() {
        let e = call().map(status(tonic::Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted"));
        assert!(e.needs_relist(), "{e:?}");
        assert!(watch_canceled("", 17, 3).needs_relist());
        assert!(watch_canceled("etcdserver: no leader", 0, 3).needs_relist());
        assert!(matches!(watch_canceled("etcdserver: permission denied", 0, 3), Error::PermissionDenied { .. }));
    }

    #[test]
    fn oversized_request_is_too_large() {
        let e = call().map(status(tonic::Code::InvalidArgument, "etcdserver: request is too large"));
        assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
        let e = call().map(status(tonic::Code::ResourceExhausted, "grpc: received message larger than max"));
        assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
    }

    #[test]
    fn outage_is_unavailable_and_deadline_is_timeout() {
        let e = call().map(status(tonic::Code::Unavailable, "etcdserver: no leader"));
        assert!(matches!(e, Error::BackendUnavailable { .. }), "{e:?}");
        let e = call().map(status(tonic::Code::DeadlineExceeded, "etcdserver: request timed out"));
        assert!(matches!(e, Error::Timeout { operation: "put", .. }), "{e:?}");
        let e = call().map(status(tonic::Code::Cancelled, "Timeout expired"));
        assert!(matches!(e, Error::Timeout { operation: "put", .. }), "{e:?}");
        let e = call().map(status(tonic::Code::Cancelled, "h2 stream reset"));
        assert!(matches!(e, Error::BackendUnavailable { .. }), "{e:?}");
    }

    #[test]
    fn other_errors_keep_their_source() {
        let e = call().map(status(tonic::Code::FailedPrecondition, "etcdserver: something new"));
        assert!(matches!(&e, Error::Backend { source: Some(_), .. }), "{e:?}");
        assert!(e.to_string().contains("something new"), "{e}");
    }
}
