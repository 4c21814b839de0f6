//! Maps what the HTTP stack and Consul answer to [`registry_core::Error`].
//!
//! Precise mapping, so that core alone decides what is retried:
//! - the agent cannot be reached (refused, reset, DNS) → `BackendUnavailable`;
//!   no answer in time → `Timeout`;
//! - HTTP 403, `ACL not found`, `Permission denied` → `PermissionDenied`
//!   (the message is Consul's own text, with the token scrubbed from it should
//!   it ever appear);
//! - HTTP 413 and `Value is too long` → `TooLarge`;
//! - `No cluster leader`, `No path to datacenter`, HTTP 429/502/503/504 →
//!   `BackendUnavailable` (the agent answers, the cluster behind it does not);
//! - an unknown TTL check on check pass → `LeaseExpired` (decided by the
//!   caller, see [`is_unknown_check`]);
//! - anything else → `Backend` with the status and Consul's message.

use std::fmt;
use std::time::Duration;

use registry_core::Error;

/// Backend name in errors and logs.
pub(crate) const KIND: &str = "consul";

/// Largest KV value Consul accepts by default (`kv_max_value_size`, 512 KiB).
pub const KV_VALUE_LIMIT: usize = 512 * 1024;
/// Largest service-meta value Consul accepts (bytes; Consul says "characters").
pub const META_VALUE_LIMIT: usize = 512;
/// Consul's floor for `DeregisterCriticalServiceAfter`: shorter values are
/// raised to it by the agent (with a warning), so we ask for it directly.
pub const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);

/// Longest piece of a Consul answer quoted in an error.
const MAX_QUOTE: usize = 300;

/// A transport failure (the source of `BackendUnavailable`): what was being
/// done and the client's error chain, flattened to text.
#[derive(Debug)]
pub(crate) struct Transport {
    operation: &'static str,
    detail: String,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.operation, self.detail)
    }
}

impl std::error::Error for Transport {}

/// The error chain of `err` as one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Removes `token` from `text` (Consul does not echo tokens, but a proxy in
/// front of it might) and shortens it.
pub(crate) fn scrub(text: &str, token: Option<&str>) -> String {
    let mut text = text.trim().to_owned();
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        text = text.replace(token, "<redacted>");
    }
    if text.len() > MAX_QUOTE {
        let mut end = MAX_QUOTE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// The agent could not be reached.
pub(crate) fn transport(operation: &'static str, err: &dyn std::error::Error, token: Option<&str>) -> Error {
    Error::unavailable(KIND, Transport { operation, detail: scrub(&chain(err), token) })
}

/// No answer within `after`.
pub(crate) fn timeout(operation: &'static str, after: Duration) -> Error {
    Error::Timeout { backend: KIND, operation, after }
}

/// True when Consul's answer to a check pass means the check does not exist
/// (Consul 1.8: `CheckID "…" does not have associated TTL`; later versions:
/// `Unknown check ID "…"`).
pub(crate) fn is_unknown_check(status: u16, body: &str) -> bool {
    (status == 404 || status == 500)
        && (body.contains("does not have associated TTL")
            || body.contains("Unknown check")
            || body.contains("Unknown service"))
}

/// True when a KV acquire failed because the session is gone.
pub(crate) fn is_invalid_session(status: u16, body: &str) -> bool {
    status == 500 && body.to_ascii_lowercase().contains("invalid session")
}

/// True when a session could not be created because its checks are not (yet)
/// in the catalog or not passing: the agent has not synced the registration yet.
pub(crate) fn is_session_check_pending(status: u16, body: &str) -> bool {
    status == 500
        && (body.contains("Missing check") || body.contains("Missing node") || body.contains("in critical state"))
}

/// Numbers in Consul's "too large" message (`Request body(600000 bytes) too large, max size: 524288 bytes`).
fn sizes_in(body: &str) -> (usize, usize) {
    let numbers: Vec<usize> =
        body.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect();
    match numbers.as_slice() {
        [size, limit, ..] => (*size, *limit),
        [limit] => (0, *limit),
        [] => (0, 0),
    }
}

/// Consul answered `status` with `body` to `operation`.
pub(crate) fn status(operation: &'static str, status: u16, body: &str, token: Option<&str>) -> Error {
    let message = scrub(body, token);
    if status == 403 || body.contains("ACL not found") || body.contains("Permission denied") {
        return Error::PermissionDenied { backend: KIND, message: format!("{operation}: {message}") };
    }
    if status == 413 || body.contains("too large") {
        let (size, limit) = sizes_in(body);
        return Error::TooLarge { what: format!("{operation} request"), size, limit };
    }
    if body.contains("Value is too long") {
        return Error::TooLarge { what: format!("{operation}: service meta value"), size: 0, limit: 512 };
    }
    let cluster_down = ["No cluster leader", "No path to datacenter", "rpc error", "connection refused", "EOF"]
        .iter()
        .any(|needle| body.contains(needle));
    if matches!(status, 429 | 502 | 503 | 504) || cluster_down {
        let detail = format!("HTTP {status}: {message}");
        return Error::unavailable(KIND, Transport { operation, detail });
    }
    Error::Backend { backend: KIND, message: format!("{operation}: HTTP {status}: {message}"), source: None }
}

/// An answer that did not decode.
pub(crate) fn decode(operation: &'static str, err: &dyn std::error::Error) -> Error {
    Error::Backend {
        backend: KIND,
        message: format!("{operation}: cannot decode Consul's answer: {err}"),
        source: None,
    }
}

/// Maps an error of the `rs-consul` client.
pub(crate) fn from_rs_consul(operation: &'static str, err: rs_consul::ConsulError, token: Option<&str>) -> Error {
    use rs_consul::ConsulError as E;
    match err {
        E::UnexpectedResponseCode(code, body) => status(operation, code.as_u16(), body.as_deref().unwrap_or(""), token),
        E::SyncUnexpectedResponseCode(code, body) => status(operation, code, &body, token),
        E::TimeoutExceeded(after) => timeout(operation, after),
        E::ResponseError(e) => transport(operation, &e, token),
        E::InvalidResponse(e) => transport(operation, &e, token),
        E::SyncIoError(e) => transport(operation, &e, token),
        E::UReqError(e) => transport(operation, &e, token),
        other => Error::Backend {
            backend: KIND,
            message: format!("{operation}: {}", scrub(&other.to_string(), token)),
            source: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_errors_are_permission_denied_without_the_token() {
        let e = status("register service", 403, "ACL not found", Some("s3cret"));
        assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
        let e = status("kv put", 500, "rpc error: Permission denied for s3cret", Some("s3cret"));
        assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
        assert!(!format!("{e} {e:?}").contains("s3cret"));
    }

    #[test]
    fn size_errors_are_too_large() {
        let body = "Request body(600000 bytes) too large, max size: 524288 bytes. See https://…";
        match status("kv put", 413, body, None) {
            Error::TooLarge { size: 600000, limit: 524288, .. } => {}
            other => panic!("{other:?}"),
        }
        let meta = "Invalid Service Meta: Couldn't load metadata pair ('node', 'xx'): Value is too long (limit: 512 characters)";
        assert!(matches!(status("register service", 400, meta, None), Error::TooLarge { limit: 512, .. }));
    }

    #[test]
    fn unknown_check_is_recognised() {
        assert!(is_unknown_check(500, r#"CheckID "service:x" does not have associated TTL"#));
        assert!(is_unknown_check(404, r#"Unknown check ID "service:x""#));
        assert!(!is_unknown_check(500, "No cluster leader"));
    }

    #[test]
    fn leaderless_cluster_is_unavailable() {
        assert!(matches!(status("health", 500, "No cluster leader", None), Error::BackendUnavailable { .. }));
        assert!(matches!(status("health", 500, "something odd", None), Error::Backend { .. }));
    }

    #[test]
    fn scrub_shortens_on_a_char_boundary() {
        let long = "é".repeat(400);
        let short = scrub(&long, None);
        assert!(short.len() <= MAX_QUOTE + '…'.len_utf8());
    }
}
